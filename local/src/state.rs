//! What a cloud's runner made, on disk (`<state>/<cloud>/`), written *before* each thing
//! is made so that `down` finds it after any crash:
//!
//! * `runner.json`: the runner's pid and start time;
//! * `boxes/<instance>.json`: one [`BoxRecord`] per box (namespace, veth, nspawn pid);
//! * `seeds/<instance>/`: the box's NoCloud seed; `consoles/<instance>.log`: its console.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::{cmd, paths};

/// The state directory of one cloud.
pub fn dir(cloud: &str) -> PathBuf {
    paths::state().join(cloud)
}

/// One box, as the runner made it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BoxRecord {
    /// The instance id (`i-…`).
    pub instance: String,
    /// Role and version (the instance's `tyrell:role` / `tyrell:version` tags, else its AMI's).
    pub role: String,
    /// See `role`.
    pub version: String,
    /// The AMI.
    pub ami: String,
    /// The private IP.
    pub ip: Ipv4Addr,
    /// The hostname.
    pub hostname: String,
    /// The box's network namespace.
    pub netns: String,
    /// The nspawn machine name.
    pub machine: String,
    /// The nspawn process, once started, with its start time (pid reuse guard).
    pub pid: Option<u32>,
    /// See `pid`.
    pub pid_start: Option<u64>,
    /// `starting`, `booted`, `failed`, `stopped`.
    pub state: String,
    /// Why it failed, with the tail of its console.
    pub error: Option<String>,
    /// Seconds from start to systemd's `running`/`degraded`.
    pub boot_seconds: Option<f64>,
    /// `Terminating:Wait` while its instance has terminated and its group's termination
    /// lifecycle hook holds the box (it drains); `None` otherwise.
    #[serde(default)]
    pub lifecycle: Option<String>,
}

impl BoxRecord {
    /// Whether the recorded nspawn process is still that process.
    pub fn process_alive(&self) -> bool {
        match (self.pid, self.pid_start) {
            (Some(p), Some(t)) => cmd::alive(p) && cmd::start_time(p) == Some(t),
            _ => false,
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Saves a box record.
pub fn save_box(cloud: &str, b: &BoxRecord) -> anyhow::Result<()> {
    let d = dir(cloud).join("boxes");
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    write_atomic(&d.join(format!("{}.json", b.instance)), &serde_json::to_vec_pretty(b)?)
}

/// Every box record of a cloud (unreadable ones are skipped with a warning).
pub fn boxes(cloud: &str) -> Vec<BoxRecord> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir(cloud).join("boxes")) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&p).map_err(anyhow::Error::from).and_then(|b| Ok(serde_json::from_slice(&b)?)) {
                Ok(b) => out.push(b),
                Err(e) => tracing::warn!("skipping {}: {e}", p.display()),
            }
        }
    }
    out.sort_by(|a: &BoxRecord, b| (&a.role, &a.instance).cmp(&(&b.role, &b.instance)));
    out
}

/// Forgets a box (its record, seed and console).
pub fn forget_box(cloud: &str, instance: &str) {
    if !paths::valid_id(instance) {
        return;
    }
    let d = dir(cloud);
    let _ = std::fs::remove_file(d.join("boxes").join(format!("{instance}.json")));
    let _ = std::fs::remove_dir_all(d.join("seeds").join(instance));
}

/// Saves the load balancers' proxies and targets' health (`lbs.json`) for `status`.
pub fn save_lbs(cloud: &str, s: &crate::lb::Status) -> anyhow::Result<()> {
    write_atomic(&dir(cloud).join("lbs.json"), &serde_json::to_vec_pretty(s)?)
}

/// The load balancers' proxies and targets' health as the runner last saved them.
pub fn lbs(cloud: &str) -> serde_json::Value {
    std::fs::read(dir(cloud).join("lbs.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"load_balancers": [], "targets": []}))
}

/// The AWS endpoint the runner serves for tyrell (`http://127.0.0.1:PORT`), see `front`.
pub fn aws_endpoint(cloud: &str) -> Option<String> {
    std::fs::read_to_string(dir(cloud).join("aws-endpoint"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Records the AWS endpoint the runner serves.
pub fn save_aws_endpoint(cloud: &str, url: &str) -> anyhow::Result<()> {
    write_atomic(&dir(cloud).join("aws-endpoint"), url.as_bytes())
}

/// The runner of a cloud.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Runner {
    /// Its pid.
    pub pid: u32,
    /// Its start time (pid reuse guard).
    pub start: u64,
    /// The emulator it follows.
    pub endpoint: String,
}

/// Records the current process as the cloud's runner.
pub fn save_runner(cloud: &str, endpoint: &str) -> anyhow::Result<()> {
    let d = dir(cloud);
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    let pid = std::process::id();
    let r = Runner { pid, start: cmd::start_time(pid).unwrap_or(0), endpoint: endpoint.to_string() };
    write_atomic(&d.join("runner.json"), &serde_json::to_vec_pretty(&r)?)
}

/// The cloud's runner, if one is recorded and still alive.
pub fn runner(cloud: &str) -> Option<Runner> {
    let b = std::fs::read(dir(cloud).join("runner.json")).ok()?;
    let r: Runner = serde_json::from_slice(&b).ok()?;
    (cmd::alive(r.pid) && cmd::start_time(r.pid) == Some(r.start)).then_some(r)
}
