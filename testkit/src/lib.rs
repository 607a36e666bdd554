//! Test support shared by every crate of the workspace.
//!
//! * [`Emulator`]: the local AWS emulator (`moto_server` from the project venv), one per
//!   test process on a free loopback port, shared by the tests of that process. Tests
//!   isolate themselves by using [`unique`] names, never by resetting it.
//! * [`bin`]: the path of a workspace binary (built by `cargo build --workspace --bins`).
//! * [`free_port`], [`wait_for_port`].
//! * [`throttle::ThrottlingProxy`]: a proxy in front of the emulator answering chosen
//!   calls with AWS's throttling errors.
//!
//! Nothing here skips: a missing tool fails the test with the command that installs it.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod proc;
pub mod servers;
pub mod throttle;

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit lives in the workspace").to_path_buf()
}

/// A copy of the repository's role definitions (roles/ and templates/, when there is one)
/// in a temporary directory, for a test to change and hand to tyrell as
/// `TYRELL_ROLES_DIR=<dir>/roles`; removed when the returned guard is dropped.
pub fn roles_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = workspace_root();
    for sub in ["roles", "templates"] {
        if root.join(sub).exists() {
            copy_dir(&root.join(sub), &dir.path().join(sub));
        }
    }
    dir
}

/// Copies the directory tree `from` to `to` (created), files and subdirectories.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("cannot create {}: {e}", to.display()));
    for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("cannot read {}: {e}", from.display())).flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap_or_else(|e| panic!("cannot copy {}: {e}", p.display()));
        }
    }
}

/// The project virtualenv made by `scripts/setup`.
pub fn venv() -> PathBuf {
    workspace_root().join(".venv")
}

/// A tool installed in the project venv, or a failure that says how to install it.
pub fn venv_tool(name: &str) -> PathBuf {
    let p = venv().join("bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup (it installs the emulator, cfn-lint and checkov into .venv)",
        p.display()
    );
    p
}

/// A program from the system (Debian packages), or a failure that says how to install it.
pub fn system_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/sbin", "/usr/bin"]) {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed: run scripts/setup (it installs mosquitto, influxdb, cloud-init and packer from Debian)")
}

/// Cargo's target directory for this build.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// The path of a binary of this workspace (`tyrell`, `tyrell-worker`, `bee`, ...), built by
/// `cargo build --workspace --bins` (scripts/test does that before the tests).
pub fn bin(name: &str) -> PathBuf {
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let p = target_dir().join(profile).join(name);
    assert!(
        p.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins` (scripts/test does this)",
        p.display()
    );
    p
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().unwrap().port()
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A name unique to this test run: `prefix` plus a short random suffix (lowercase, so it
/// is valid as a stack, bucket and queue name).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}{:x}{n}", (nanos ^ std::process::id().rotate_left(16)) & 0xfffff)
}

/// The local AWS emulator.
pub struct Emulator {
    pub url: String,
    pub port: u16,
    pub region: String,
    _guard: proc::Guard,
}

impl Emulator {
    /// The emulator of this test process, started on first use.
    pub fn shared() -> &'static Emulator {
        static E: OnceLock<Emulator> = OnceLock::new();
        E.get_or_init(Emulator::start)
    }

    /// Starts a new emulator on a free port and waits until it answers.
    pub fn start() -> Emulator {
        let moto = venv_tool("moto_server");
        let port = free_port();
        let log = std::env::temp_dir().join(format!("moto-{port}.log"));
        let mut cmd = Command::new(moto);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let guard = proc::Guard::spawn(cmd, &log);
        assert!(
            wait_for_port(port, Duration::from_secs(30)),
            "moto_server did not start on port {port}: see {}",
            log.display()
        );
        Emulator { url: format!("http://127.0.0.1:{port}"), port, region: "us-east-1".into(), _guard: guard }
    }

    /// Environment that points a process (tyrell, the worker, the swarm programs) at the
    /// emulator through the standard AWS chain, with retries off so faults show as
    /// themselves.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_REGION", self.region.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_MAX_ATTEMPTS", "1".into()),
        ]
    }

    /// Applies [`Emulator::env`] to a command, clearing AWS settings it might inherit.
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        for k in
            ["AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"]
        {
            cmd.env_remove(k);
        }
        cmd.envs(self.env())
    }

    /// SDK configuration for the emulator.
    pub async fn sdk(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.url)
            .region(aws_config::Region::new(self.region.clone()))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new("testing", "testing", None, None, "testkit"))
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .load()
            .await
    }

    pub async fn cloudformation(&self) -> aws_sdk_cloudformation::Client {
        aws_sdk_cloudformation::Client::new(&self.sdk().await)
    }
    pub async fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.sdk().await)
    }
    pub async fn autoscaling(&self) -> aws_sdk_autoscaling::Client {
        aws_sdk_autoscaling::Client::new(&self.sdk().await)
    }
    pub async fn elb(&self) -> aws_sdk_elasticloadbalancingv2::Client {
        aws_sdk_elasticloadbalancingv2::Client::new(&self.sdk().await)
    }
    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk().await)
    }
    pub async fn ssm(&self) -> aws_sdk_ssm::Client {
        aws_sdk_ssm::Client::new(&self.sdk().await)
    }
    pub async fn s3(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::from(&self.sdk().await).force_path_style(true).build();
        aws_sdk_s3::Client::from_conf(conf)
    }
}
