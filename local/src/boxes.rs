//! One box: an instance of the emulator booted from its AMI's root filesystem.
//!
//! `systemd-nspawn --boot --volatile=overlay` (writes go to a tmpfs: every boot starts from
//! the image as baked, and the image is never changed) in the box's own network namespace,
//! with the instance's hostname, its user data and meta-data in a NoCloud seed
//! (`/var/lib/cloud/seed/nocloud`), and a datasource list naming NoCloud: cloud-init then
//! runs the real user data at boot, as on EC2.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::state::{self, BoxRecord};
use crate::{net, nspawn, paths};

/// What is needed to boot one instance.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The instance id.
    pub instance: String,
    /// Its private IP.
    pub ip: Ipv4Addr,
    /// Its private DNS name (`ip-10-0-1-5.ec2.internal`); the first label is the hostname.
    pub dns_name: String,
    /// The user data, as given to RunInstances (cloud-init takes gzip too).
    pub user_data: Vec<u8>,
    /// The AMI.
    pub ami: String,
    /// The image directory (holding `rootfs/`).
    pub image: PathBuf,
    /// Role and version.
    pub role: String,
    /// See `role`.
    pub version: String,
}

/// The datasource configuration bound into every box: the NoCloud seed, and no network
/// configuration by cloud-init (the box's interface is configured from outside, as EC2's
/// DHCP would).
pub const DATASOURCE_CFG: &str = "# tyrell-local: the instance's user data and meta-data come from the NoCloud seed.\n\
datasource_list: [ NoCloud, None ]\n\
network: {config: disabled}\n";

/// The hostname for a private DNS name (its first label), or `ip-a-b-c-d`.
pub fn hostname(dns_name: &str, ip: Ipv4Addr) -> String {
    let first = dns_name.split('.').next().unwrap_or_default();
    if !first.is_empty() && first.len() <= 63 && first.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        first.to_string()
    } else {
        format!("ip-{}", ip.to_string().replace('.', "-"))
    }
}

/// The NoCloud meta-data of an instance.
pub fn meta_data(instance: &str, dns_name: &str, ip: Ipv4Addr) -> String {
    let host = if dns_name.is_empty() { hostname(dns_name, ip) } else { dns_name.to_string() };
    format!("instance-id: {instance}\nlocal-hostname: {host}\n")
}

/// The unit whose state tells whether a role's service runs on its box.
pub fn role_unit(role: &str) -> Option<&'static str> {
    match role {
        "broker" => Some("mosquitto.service"),
        "router" => Some("tyrell-router.service"),
        "bee" => Some("tyrell-bee.service"),
        "indexer" => Some("tyrell-indexer.service"),
        "worker" => Some("tyrell-worker.service"),
        "metrics" => Some("influxdb.service"),
        _ => None,
    }
}

/// A box the current process started and still holds.
#[derive(Debug)]
pub struct Running {
    /// Its record (also on disk).
    pub record: BoxRecord,
    /// The nspawn process.
    pub container: nspawn::Container,
    /// When it was started.
    pub started: Instant,
    /// Its console log.
    pub console: PathBuf,
}

/// The console log of a box.
pub fn console_path(cloud: &str, instance: &str) -> PathBuf {
    state::dir(cloud).join("consoles").join(format!("{instance}.log"))
}

/// Starts booting a box: records it, makes its namespace and seed, starts nspawn. Does
/// not wait for the boot (see [`check_booted`]).
pub fn start(cloud: &str, spec: &Spec) -> anyhow::Result<Running> {
    anyhow::ensure!(paths::valid_id(&spec.instance), "invalid instance id {:?}", spec.instance);
    let rootfs = spec.image.join("rootfs");
    anyhow::ensure!(rootfs.is_dir(), "image {} has no rootfs", spec.image.display());
    let host = hostname(&spec.dns_name, spec.ip);
    let mut record = BoxRecord {
        instance: spec.instance.clone(),
        role: spec.role.clone(),
        version: spec.version.clone(),
        ami: spec.ami.clone(),
        ip: spec.ip,
        hostname: host.clone(),
        netns: net::box_netns(cloud, &spec.instance),
        machine: format!("tl-{}", spec.instance),
        pid: None,
        pid_start: None,
        state: "starting".into(),
        error: None,
        boot_seconds: None,
        lifecycle: None,
    };
    state::save_box(cloud, &record)?;
    net::add_box(cloud, &spec.instance, spec.ip)?;

    let d = state::dir(cloud);
    let seed = d.join("seeds").join(&spec.instance);
    let nocloud = seed.join("nocloud");
    std::fs::create_dir_all(&nocloud).with_context(|| format!("cannot create {}", nocloud.display()))?;
    std::fs::write(nocloud.join("user-data"), &spec.user_data)?;
    std::fs::write(nocloud.join("meta-data"), meta_data(&spec.instance, &spec.dns_name, spec.ip))?;
    std::fs::write(seed.join("90-tyrell-local.cfg"), DATASOURCE_CFG)?;
    std::fs::write(seed.join("resolv.conf"), format!("nameserver {}\n", net::DNS))?;
    crate::endpoints::bundle_for(&rootfs, &seed.join("ca-certificates.crt"))?;
    let consoles = d.join("consoles");
    std::fs::create_dir_all(&consoles)?;
    let console = console_path(cloud, &spec.instance);
    let _ = std::fs::remove_file(&console);

    let args = vec![
        "-D".to_string(),
        rootfs.display().to_string(),
        "--boot".to_string(),
        "--volatile=overlay".to_string(),
        format!("--network-namespace-path=/run/netns/{}", record.netns),
        format!("--hostname={host}"),
        format!("--uuid={}", uuid::Uuid::new_v4()),
        "--link-journal=no".to_string(),
        "--resolv-conf=off".to_string(),
        "--timezone=off".to_string(),
        format!("--bind-ro={}:/var/lib/cloud/seed/nocloud", nocloud.display()),
        format!("--bind-ro={}:/etc/cloud/cloud.cfg.d/90-tyrell-local.cfg", seed.join("90-tyrell-local.cfg").display()),
        format!("--bind-ro={}:/etc/resolv.conf", seed.join("resolv.conf").display()),
        format!("--bind-ro={}:/etc/ssl/certs/ca-certificates.crt", seed.join("ca-certificates.crt").display()),
    ];
    let container = nspawn::spawn(&record.machine, &args, &console)?;
    let pid = container.child.id();
    record.pid = Some(pid);
    record.pid_start = crate::cmd::start_time(pid);
    state::save_box(cloud, &record)?;
    Ok(Running { record, container, started: Instant::now(), console })
}

/// What one look at a starting box found.
#[derive(Debug)]
pub enum Boot {
    /// systemd finished starting up (the record is `booted`).
    Booted,
    /// Still booting.
    Booting,
    /// nspawn stopped before the box booted: the reason, with the console's tail. The record
    /// is left as it was: the caller starts the box again or marks it failed ([`mark_failed`]).
    Exited(String),
}

/// One look at a starting box (see [`Boot`]); an error (the record becomes `failed`, with
/// the console's tail) when `within` passed.
pub fn check_booted(cloud: &str, b: &mut Running, within: Duration) -> anyhow::Result<Boot> {
    if b.record.state == "booted" {
        return Ok(Boot::Booted);
    }
    if let Some(status) = b.container.child.try_wait()? {
        return Ok(Boot::Exited(format!(
            "box {} ({} {}) stopped while booting ({status}); its console:\n{}",
            b.record.instance,
            b.record.role,
            b.record.ip,
            nspawn::console_tail(&b.console, 20)
        )));
    }
    if let Some(l) = nspawn::leader(b.container.child.id()) {
        if let Ok(o) =
            crate::cmd::output(nspawn::exec_cmd(l, &["systemctl", "is-system-running"]), Duration::from_secs(10))
        {
            let s = o.stdout.trim();
            if s == "running" || s == "degraded" {
                b.record.state = "booted".into();
                b.record.boot_seconds = Some(b.started.elapsed().as_secs_f64());
                state::save_box(cloud, &b.record)?;
                return Ok(Boot::Booted);
            }
        }
    }
    if b.started.elapsed() > within {
        let why = format!(
            "box {} ({} {}) did not finish booting within {}s; its console:\n{}",
            b.record.instance,
            b.record.role,
            b.record.ip,
            within.as_secs(),
            nspawn::console_tail(&b.console, 20)
        );
        mark_failed(cloud, b, &why)?;
        anyhow::bail!(why)
    }
    Ok(Boot::Booting)
}

/// Records the box as `failed` with `why` (what `tyrell local status` shows).
pub fn mark_failed(cloud: &str, b: &mut Running, why: &str) -> anyhow::Result<()> {
    b.record.state = "failed".into();
    b.record.error = Some(why.to_string());
    state::save_box(cloud, &b.record)
}

/// Stops a box this process holds and removes its namespace, seed and record.
pub fn stop(cloud: &str, b: &mut Running) -> anyhow::Result<()> {
    nspawn::stop(&mut b.container, Duration::from_secs(20));
    remove_remains(cloud, &b.record)
}

/// Stops a recorded box whose nspawn this process does not hold (after a crash of its
/// runner) and removes everything recorded for it.
pub fn stop_recorded(cloud: &str, r: &BoxRecord) -> anyhow::Result<()> {
    if r.process_alive() {
        if let Some(pid) = r.pid {
            nspawn::stop_pid(pid, Duration::from_secs(20));
        }
    }
    nspawn::remove_leftovers(&r.machine);
    remove_remains(cloud, r)
}

fn remove_remains(cloud: &str, r: &BoxRecord) -> anyhow::Result<()> {
    net::remove_box(cloud, &r.instance)?;
    let _ = std::fs::remove_file(console_path(cloud, &r.instance));
    state::forget_box(cloud, &r.instance);
    Ok(())
}

/// Runs a command inside a running box (by its recorded nspawn pid).
pub fn exec(r: &BoxRecord, argv: &[&str], timeout: Duration) -> anyhow::Result<String> {
    let pid = r.pid.filter(|_| r.process_alive()).with_context(|| format!("box {} is not running", r.instance))?;
    let leader = nspawn::leader(pid).with_context(|| format!("box {} has no init", r.instance))?;
    nspawn::exec(leader, argv, timeout)
}

/// `systemctl is-active UNIT` inside a box (`active`, `inactive`, `failed`, … or `unknown`).
pub fn unit_state(r: &BoxRecord, unit: &str) -> String {
    let Some(pid) = r.pid.filter(|_| r.process_alive()) else { return "down".into() };
    let Some(leader) = nspawn::leader(pid) else { return "unknown".into() };
    crate::cmd::output(nspawn::exec_cmd(leader, &["systemctl", "is-active", unit]), Duration::from_secs(10))
        .map(|o| o.stdout.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The journal's tail of a box (for a stuck box's report), else its console's tail.
pub fn journal_tail(cloud: &str, r: &BoxRecord, lines: usize) -> String {
    match exec(r, &["journalctl", "--no-pager", "-q", "-n", &lines.to_string()], Duration::from_secs(10)) {
        Ok(j) if !j.trim().is_empty() => j,
        _ => nspawn::console_tail(&console_path(cloud, &r.instance), lines),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_seed() {
        let ip = Ipv4Addr::new(10, 0, 1, 5);
        assert_eq!(hostname("ip-10-0-1-5.ec2.internal", ip), "ip-10-0-1-5");
        assert_eq!(hostname("", ip), "ip-10-0-1-5");
        assert_eq!(hostname("bad name", ip), "ip-10-0-1-5");
        assert_eq!(
            meta_data("i-1", "ip-10-0-1-5.ec2.internal", ip),
            "instance-id: i-1\nlocal-hostname: ip-10-0-1-5.ec2.internal\n"
        );
        assert_eq!(role_unit("broker"), Some("mosquitto.service"));
        assert_eq!(role_unit("x"), None);
    }
}
