//! The local cloud's network, all of it inside network namespaces this program makes:
//!
//! * the cloud namespace (`<cloud>`, default `tyrell-cloud`): a bridge `br0` holding the
//!   boxes' gateway [`GATEWAY`], forwarding between boxes, and the addresses of the cloud's
//!   own services on `lo` ([`IMDS`], [`DNS`]). It has no link to the host: nothing a box
//!   sends can leave it.
//! * one namespace per box (`<cloud>-<instance id>`): `eth0` with the instance's private
//!   IP (/32) and a default route to the gateway, the peer of a veth whose other end is a
//!   port of `br0`.
//!
//! Processes on the host reach into the cloud namespace by opening their sockets there
//! ([`listen_tcp_in`]); the emulator stays on host loopback.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cmd;

/// The boxes' default gateway, on the cloud's bridge.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The instance metadata service's address.
pub const IMDS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The VPC resolver's link-local address (Route 53 Resolver answers there on AWS).
pub const DNS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 253);
const T: Duration = Duration::from_secs(20);

fn ip(args: &[&str]) -> anyhow::Result<String> {
    cmd::run(cmd::new("ip", args), T)
}

/// Whether a named network namespace exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Every named network namespace.
pub fn netns_list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Checks a cloud name: it prefixes namespace names.
pub fn check_cloud_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 24
        || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || !name.starts_with(|c: char| c.is_ascii_lowercase())
    {
        bail!("invalid cloud name {name:?}: up to 24 lowercase letters, digits and '-', starting with a letter");
    }
    Ok(())
}

fn sysctl(netns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    cmd::run(cmd::new("ip", ["netns", "exec", netns, "sysctl", "-q", "-w", &format!("{key}={value}")]), T)?;
    Ok(())
}

/// Makes the cloud namespace with its bridge and service addresses (idempotent).
pub fn ensure_cloud(cloud: &str) -> anyhow::Result<()> {
    check_cloud_name(cloud)?;
    if !netns_exists(cloud) {
        ip(&["netns", "add", cloud])?;
    }
    ip(&["-n", cloud, "link", "set", "lo", "up"])?;
    let links = ip(&["-n", cloud, "-o", "link", "show"])?;
    if !links.lines().any(|l| l.contains(" br0:") || l.contains(" br0@")) {
        ip(&["-n", cloud, "link", "add", "br0", "type", "bridge"])?;
    }
    ip(&["-n", cloud, "link", "set", "br0", "up"])?;
    let addrs = ip(&["-n", cloud, "-o", "-4", "addr", "show"])?;
    for (a, dev) in [(GATEWAY, "br0"), (IMDS, "lo"), (DNS, "lo"), (crate::endpoints::ENDPOINTS, "lo")] {
        if !addrs.contains(&format!("inet {a}/32")) {
            ip(&["-n", cloud, "addr", "add", &format!("{a}/32"), "dev", dev])?;
        }
    }
    sysctl(cloud, "net.ipv4.ip_forward", "1")?;
    // Boxes reach each other through the gateway; no redirects to send them elsewhere.
    sysctl(cloud, "net.ipv4.conf.all.send_redirects", "0")?;
    sysctl(cloud, "net.ipv4.conf.br0.send_redirects", "0")?;
    Ok(())
}

/// Adds a service address (a load balancer's) to the cloud namespace's `lo` (idempotent).
pub fn add_address(cloud: &str, a: Ipv4Addr) -> anyhow::Result<()> {
    let addrs = ip(&["-n", cloud, "-o", "-4", "addr", "show", "dev", "lo"])?;
    if !addrs.contains(&format!("inet {a}/32")) {
        ip(&["-n", cloud, "addr", "add", &format!("{a}/32"), "dev", "lo"])?;
    }
    Ok(())
}

/// Removes a service address from the cloud namespace's `lo`.
pub fn remove_address(cloud: &str, a: Ipv4Addr) -> anyhow::Result<()> {
    ip(&["-n", cloud, "addr", "del", &format!("{a}/32"), "dev", "lo"]).map(|_| ())
}

/// The namespace name of a box.
pub fn box_netns(cloud: &str, instance: &str) -> String {
    format!("{cloud}-{instance}")
}

/// The name of a box's veth end on the cloud's bridge (15 characters at most).
pub fn box_veth(instance: &str) -> String {
    let tail: String = instance.chars().rev().filter(|c| c.is_ascii_alphanumeric()).take(14).collect();
    format!("v{}", tail.chars().rev().collect::<String>())
}

/// Makes a box's namespace, linked to the cloud's bridge, with `ip` on its `eth0`. Remains
/// of an earlier box of the same instance (its namespace, its veth) are removed first.
pub fn add_box(cloud: &str, instance: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
    let ns = box_netns(cloud, instance);
    let veth = box_veth(instance);
    remove_box(cloud, instance)?;
    ip(&["netns", "add", &ns])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    // Both ends are made inside the namespaces: nothing appears on the host, ever.
    ip(&["-n", cloud, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
    ip(&["-n", cloud, "link", "set", &veth, "master", "br0", "up"])?;
    ip(&["-n", &ns, "addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", &ns, "route", "add", &format!("{GATEWAY}/32"), "dev", "eth0", "scope", "link"])?;
    ip(&["-n", &ns, "route", "add", "default", "via", &GATEWAY.to_string(), "dev", "eth0", "onlink"])?;
    ip(&["-n", cloud, "route", "replace", &format!("{addr}/32"), "dev", "br0"])?;
    Ok(())
}

/// Removes a box's namespace: every process still in it is killed first, then its veth
/// pair is deleted, then the namespace's name. The order matters: `ip netns del` only
/// removes the name, and the namespace (with the veth's cloud end, which blocks a new box
/// of the same instance with "File exists") lives on while any process is in it. Measured:
/// a SIGKILLed `systemd-nspawn` leaves its container's systemd, journald, dbus and logind
/// running in the namespace, orphaned.
pub fn remove_box(cloud: &str, instance: &str) -> anyhow::Result<()> {
    let ns = box_netns(cloud, instance);
    if netns_exists(&ns) {
        kill_all_in(&ns);
    }
    let veth = box_veth(instance);
    if netns_exists(cloud) && ip(&["-n", cloud, "link", "show", "dev", &veth]).is_ok() {
        ip(&["-n", cloud, "link", "del", "dev", &veth]).with_context(|| format!("cannot delete veth {veth}"))?;
    }
    if netns_exists(&ns) {
        ip(&["netns", "del", &ns]).with_context(|| format!("cannot remove network namespace {ns}"))?;
    }
    Ok(())
}

/// SIGKILLs every process in a named network namespace (`ip netns pids`) and waits up to
/// 10 s for them to go.
fn kill_all_in(ns: &str) {
    let pids = |ns: &str| -> Vec<u32> {
        ip(&["netns", "pids", ns])
            .map(|o| o.split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    };
    let found = pids(ns);
    if found.is_empty() {
        return;
    }
    tracing::warn!("network namespace {ns} still has {} processes: killing them", found.len());
    let start = std::time::Instant::now();
    loop {
        let left: Vec<u32> = pids(ns).into_iter().filter(|p| cmd::alive(*p)).collect();
        if left.is_empty() || start.elapsed() > Duration::from_secs(10) {
            return;
        }
        for p in left {
            cmd::signal(p, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes the cloud namespace and every box namespace named after it.
pub fn remove_cloud(cloud: &str) -> anyhow::Result<()> {
    let prefix = format!("{cloud}-i-");
    for ns in netns_list() {
        if ns.starts_with(&prefix) {
            ip(&["netns", "del", &ns]).with_context(|| format!("cannot remove network namespace {ns}"))?;
        }
    }
    if netns_exists(cloud) {
        ip(&["netns", "del", cloud]).with_context(|| format!("cannot remove network namespace {cloud}"))?;
    }
    Ok(())
}

/// Runs `f` on a thread that has entered the named network namespace: sockets it opens
/// live in that namespace for good, whichever thread uses them later.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    use std::os::fd::AsRawFd;
    let path = Path::new("/run/netns").join(netns);
    let file = std::fs::File::open(&path).with_context(|| format!("no network namespace {netns}"))?;
    let name = netns.to_string();
    std::thread::spawn(move || -> anyhow::Result<T> {
        // SAFETY: setns on this thread only (the thread ends after `f`).
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("cannot enter network namespace {name}: {}", std::io::Error::last_os_error());
        }
        Ok(f()?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread entering {netns} panicked"))?
}

/// A TCP listener bound to `addr` inside the named network namespace.
pub fn listen_tcp_in(netns: &str, addr: std::net::SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let l = in_netns(netns, move || std::net::TcpListener::bind(addr))
        .with_context(|| format!("cannot listen on {addr} in {netns}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(box_veth("i-0123456789abcdef0"), "v3456789abcdef0");
        assert!(box_veth("i-0123456789abcdef0").len() <= 15);
        assert_eq!(box_netns("tyrell-cloud", "i-1"), "tyrell-cloud-i-1");
        assert!(check_cloud_name("tyrell-cloud").is_ok());
        assert!(check_cloud_name("../x").is_err());
    }
}
