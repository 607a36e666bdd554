//! What the local cloud's end-to-end tests share.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Fails (never skips) when a tool the local cloud needs is missing, saying how to install it.
pub fn require_tools() {
    for (tool, pkg) in
        [("mmdebstrap", "mmdebstrap"), ("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux")]
    {
        let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"].iter().any(|d| Path::new(d).join(tool).exists());
        assert!(found, "{tool} is not installed: run scripts/local-setup (apt-get install {pkg})");
    }
    // SAFETY: getuid has no side effects.
    assert_eq!(unsafe { libc::getuid() }, 0, "the local cloud tests need root (namespaces, systemd-nspawn)");
}

/// Where these tests' images go: one directory per test process under
/// /var/tmp/tyrell-local-tests, whose older entries (from earlier runs, whose process
/// could not remove them: a static is never dropped) are removed first, unless a process
/// that made them is still running.
pub fn images_dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let root = Path::new("/var/tmp/tyrell-local-tests");
        std::fs::create_dir_all(root).unwrap();
        for e in std::fs::read_dir(root).unwrap().flatten() {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok();
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let d = root.join(std::process::id().to_string());
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// Runs `c`; fails with its output unless it succeeds; its stdout.
pub fn ok(mut c: Command) -> String {
    let o: Output = c.output().expect("run tyrell-local");
    assert!(
        o.status.success(),
        "{c:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One HTTP/1.1 request on a fresh connection: (status, body), or the I/O error.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: alb\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, buf.split_once("\r\n\r\n").map(|b| b.1.to_string()).unwrap_or_default()))
}

pub const REGION: &str = "eu-west-1";
pub const SWARM: &str = "swarm1";

/// A local cloud started with `tyrell local up`; `tyrell local down` when dropped.
pub struct Cloud {
    pub name: String,
    pub env: Vec<(String, String)>,
}

pub fn tyrell_bin() -> PathBuf {
    testkit::bin("tyrell")
}

impl Cloud {
    pub fn up() -> Cloud {
        require_tools();
        let name = testkit::unique("tsw");
        let mut c = Command::new(tyrell_bin());
        c.args(["local", "up", "--cloud", &name]);
        c.env("AWS_REGION", REGION).env("TYRELL_LOCAL_IMAGES", images_dir());
        for k in ["AWS_ENDPOINT_URL", "AWS_PROFILE", "TYRELL_LOCAL_CLOUD"] {
            c.env_remove(k);
        }
        let out = c.output().expect("run tyrell local up");
        assert!(out.status.success(), "tyrell local up failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let env: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect();
        assert!(env.iter().any(|(k, _)| k == "AWS_ENDPOINT_URL"), "up printed no environment: {env:?}");
        Cloud { name, env }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(tyrell_bin());
        c.args(args).env("TYRELL_LOCAL_IMAGES", images_dir()).env_remove("AWS_PROFILE");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run tyrell")
    }

    /// Runs tyrell; fails with its output unless it succeeds; its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "tyrell {args:?} failed ({}):\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    pub fn status(&self) -> Value {
        let o = self.run(&["local", "status", "--json"]);
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
    }

    pub fn exec(&self, instance: &str, argv: &[&str]) -> String {
        let mut args = vec!["local", "exec", instance, "--"];
        args.extend_from_slice(argv);
        self.ok(&args)
    }

    /// The runner's log (`tyrell-local`'s state directory: TYRELL_LOCAL_STATE, else
    /// /run/tyrell-local), as text; empty when unreadable.
    pub fn runner_log(&self) -> String {
        let state = std::env::var_os("TYRELL_LOCAL_STATE").unwrap_or_else(|| "/run/tyrell-local".into());
        std::fs::read_to_string(std::path::Path::new(&state).join(&self.name).join("runner.log")).unwrap_or_default()
    }

    /// What a failed wait prints: one line per box (instance, role, version, address,
    /// state, service, boot seconds, error), then the last 12 lines of each box's journal.
    pub fn report(&self) -> String {
        let s = self.status();
        let boxes = s["boxes"].as_array().cloned().unwrap_or_default();
        let mut out = String::from("boxes:\n");
        for b in &boxes {
            out += &format!(
                "  {} {} {} {} {} {} {:.0}s {}\n",
                b["instance"].as_str().unwrap_or("?"),
                b["role"].as_str().unwrap_or("?"),
                b["version"].as_str().unwrap_or("?"),
                b["ip"].as_str().unwrap_or("?"),
                b["state"].as_str().unwrap_or("?"),
                b["service"].as_str().unwrap_or("?"),
                b["boot_seconds"].as_f64().unwrap_or(0.0),
                b["error"].as_str().unwrap_or("")
            );
        }
        for b in &boxes {
            let id = b["instance"].as_str().unwrap_or("?");
            let o = self.run(&["local", "logs", id, "-n", "12"]);
            out +=
                &format!("--- {id} ({}):\n{}", b["role"].as_str().unwrap_or("?"), String::from_utf8_lossy(&o.stdout));
        }
        out
    }

    pub fn boxes(&self, role: &str) -> Vec<Value> {
        let s = self.status();
        s["boxes"].as_array().cloned().unwrap_or_default().into_iter().filter(|b| b["role"] == role).collect()
    }

    /// The host address of the ALB's (or NLB's) listener proxy.
    pub fn lb_local(&self, name_part: &str) -> String {
        let s = self.status();
        let lb = s["load_balancers"]
            .as_array()
            .and_then(|a| a.iter().find(|l| l["name"].as_str().unwrap_or("").contains(name_part)).cloned());
        lb.unwrap_or_else(|| panic!("no load balancer {name_part} in {s}"))["listeners"][0]["local"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn sdk(&self) -> aws_config::SdkConfig {
        let get = |k: &str| self.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .endpoint_url(get("AWS_ENDPOINT_URL"))
                .region(aws_config::Region::new(REGION))
                .credentials_provider(aws_sdk_ssm::config::Credentials::new("testing", "testing", None, None, "t"))
                .load(),
        )
    }
}

impl Cloud {
    /// The swarm's router API token, read from SSM as an operator would.
    pub fn router_token(&self) -> String {
        let ssm = aws_sdk_ssm::Client::new(&self.sdk());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let p = rt
            .block_on(ssm.get_parameter().name(format!("/tyrell/{SWARM}/router-token")).with_decryption(true).send())
            .expect("the router token in SSM");
        p.parameter().and_then(|p| p.value()).unwrap().to_string()
    }

    /// PUTs the watch list `list` through the ALB (`alb`, its host proxy) with `token`.
    /// The local ALB follows a listener change at the runner's next look at the emulator (as
    /// ELB applies one within seconds), so until then the base stack's fixed response — "no
    /// active router version" — may still answer: retried for 60 s; anything else but 200
    /// fails at once.
    pub fn put_watch(&self, alb: &str, token: &str, list: &str, ctx: impl Fn() -> String) {
        let auth = format!("Bearer {token}");
        wait("the ALB forwarding to the routers takes the watch list", Duration::from_secs(60), ctx, || {
            let (code, body) = http(alb, "PUT", "/watch", &[("Authorization", &auth)], list).ok()?;
            if code == 503 && body.contains("no active router version") {
                return None;
            }
            assert_eq!(code, 200, "PUT /watch through the ALB: {body}");
            Some(())
        });
    }
}

/// A steady request load through the ALB: `GET /pings/latest` every `every` until
/// [`RequestLoad::stop`], counting the requests sent and the ones that did not answer 200.
pub struct RequestLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl RequestLoad {
    pub fn start(alb: &str, every: Duration) -> RequestLoad {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (halt, alb) = (stop.clone(), alb.to_string());
        let thread = std::thread::spawn(move || {
            let (mut sent, mut errors) = (0, Vec::new());
            while !halt.load(Ordering::SeqCst) {
                sent += 1;
                match http(&alb, "GET", "/pings/latest", &[], "") {
                    Ok((200, _)) => {}
                    other => errors.push(format!("{other:?}")),
                }
                std::thread::sleep(every);
            }
            (sent, errors)
        });
        RequestLoad { stop, thread }
    }

    /// Ends the load: (requests sent, the failures as they were seen).
    pub fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().expect("the request load thread")
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.run(&["local", "down", "--cloud", &self.name]);
    }
}

/// Polls `f` until it gives a value; fails after `within` saying what was awaited and `ctx()`.
pub fn wait<T>(what: &str, within: Duration, ctx: impl Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            eprintln!("{what}: {:.1}s", start.elapsed().as_secs_f64());
            return v;
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}\n{}", ctx());
        std::thread::sleep(Duration::from_millis(500));
    }
}
