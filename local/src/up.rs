//! `up` / `down`: the emulator on loopback and a background runner, and the environment
//! that points tyrell at them.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::{cmd, net, paths, runner, state};

/// The emulator `up` started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Emulator {
    /// Its pid and start time.
    pub pid: u32,
    /// See `pid`.
    pub start: u64,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// The emulator's command: moto's server with the CloudFormation resource types moto lacks
/// and the swarm's templates use (`local/emulator/serve.py`), run by the project's venv.
/// Errors: the venv or the script is missing (with how to get them).
fn emulator_command() -> anyhow::Result<Command> {
    let repo = paths::repo();
    let python = repo.join(".venv/bin/python");
    let script = repo.join("local/emulator/serve.py");
    if !python.is_file() || !repo.join(".venv/bin/moto_server").is_file() {
        bail!("the AWS emulator (moto) is not installed in {}: run scripts/setup", repo.join(".venv").display())
    }
    if !script.is_file() {
        bail!("{} is missing: run tyrell local from the tyrell repository (or set TYRELL_REPO)", script.display())
    }
    let mut c = Command::new(python);
    c.arg(script);
    Ok(c)
}

/// The environment lines (`export K=V`) for an emulator on `port` and a cloud.
pub fn env_lines(endpoint: &str, cloud: &str) -> String {
    let region = crate::aws::region();
    format!(
        "export AWS_ENDPOINT_URL={endpoint}\nexport AWS_REGION={region}\nexport AWS_ACCESS_KEY_ID=testing\n\
         export AWS_SECRET_ACCESS_KEY=testing\nexport AWS_EC2_METADATA_DISABLED=true\nexport TYRELL_LOCAL_CLOUD={cloud}\n"
    )
}

fn detached(mut c: Command, log: &std::path::Path) -> anyhow::Result<u32> {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let f2 = f.try_clone()?;
    c.stdin(Stdio::null()).stdout(f).stderr(f2);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = c.spawn().with_context(|| format!("cannot start {}", cmd::describe(&c)))?;
    Ok(child.id())
}

/// Starts the emulator and a runner (or finds them running) and returns the environment.
pub fn up(cloud: &str, port: Option<u16>, endpoint: Option<String>, within: Duration) -> anyhow::Result<String> {
    net::check_cloud_name(cloud)?;
    if let Some(r) = state::runner(cloud) {
        return Ok(env_lines(&state::aws_endpoint(cloud).unwrap_or(r.endpoint), cloud));
    }
    let d = state::dir(cloud);
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    let endpoint = match endpoint {
        // An emulator the caller runs (e.g. the tests'): only the runner is started.
        Some(u) => {
            crate::aws::check_loopback(&u)?;
            u
        }
        None => {
            let port = match port {
                Some(p) => p,
                None => std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
            };
            let mut c = emulator_command()?;
            c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            let pid = detached(c, &d.join("emulator.log"))?;
            let e = Emulator { pid, start: cmd::start_time(pid).unwrap_or(0), port };
            std::fs::write(d.join("emulator.json"), serde_json::to_vec(&e)?)?;
            let start = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if start.elapsed() > within || !cmd::alive(pid) {
                    bail!(
                        "the emulator did not start on 127.0.0.1:{port}; its log:\n{}",
                        cmd::tail(&std::fs::read_to_string(d.join("emulator.log")).unwrap_or_default(), 15)
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            format!("http://127.0.0.1:{port}")
        }
    };
    let mut c = Command::new(std::env::current_exe().context("cannot find this program")?);
    c.args(["run", "--cloud", cloud]).env("AWS_ENDPOINT_URL", &endpoint);
    for (k, v) in [("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")] {
        if std::env::var(k).is_err() {
            c.env(k, v);
        }
    }
    let log = d.join("runner.log");
    let pid = detached(c, &log)?;
    let start = Instant::now();
    while !d.join("ready").exists() {
        if start.elapsed() > within || !cmd::alive(pid) {
            bail!(
                "the runner did not get ready; its log:\n{}",
                cmd::tail(&std::fs::read_to_string(&log).unwrap_or_default(), 15)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(env_lines(&state::aws_endpoint(cloud).unwrap_or(endpoint), cloud))
}

/// Stops the runner (and its boxes), removes everything the cloud made, and stops the
/// emulator if `up` started it.
pub fn down(cloud: &str) -> anyhow::Result<Vec<String>> {
    net::check_cloud_name(cloud)?;
    let emu: Option<Emulator> =
        std::fs::read(state::dir(cloud).join("emulator.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let mut said = runner::down(cloud)?;
    if let Some(e) = emu {
        if cmd::alive(e.pid) && cmd::start_time(e.pid) == Some(e.start) {
            cmd::signal(e.pid, libc::SIGTERM);
            let start = Instant::now();
            while cmd::alive(e.pid) && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(100));
            }
            if cmd::alive(e.pid) {
                cmd::signal(e.pid, libc::SIGKILL);
            }
            said.push(format!("stopped the emulator on port {}", e.port));
        }
    }
    Ok(said)
}
