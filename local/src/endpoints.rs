//! AWS from inside a box, unmodified: the regional endpoint names resolve (resolver at
//! [`net::DNS`]) to [`ENDPOINTS`] in the cloud namespace, where `stunnel` terminates
//! HTTPS with a certificate from the local CA and hands the stream over a unix socket (a
//! file: it crosses namespaces) to the runner, which relays it to the emulator on host
//! loopback. The boxes trust the CA through a CA bundle bound over the image's at boot.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::{cmd, net, paths};

/// Where the AWS endpoint names resolve, on the cloud namespace's `lo`.
pub const ENDPOINTS: Ipv4Addr = Ipv4Addr::new(169, 254, 171, 1);

/// The local CA (made once, kept in the cache so every image and box trusts one CA).
pub fn ensure_ca() -> anyhow::Result<(PathBuf, PathBuf)> {
    let d = paths::cache().join("ca");
    let (key, crt) = (d.join("ca.key"), d.join("ca.crt"));
    if key.is_file() && crt.is_file() {
        return Ok((key, crt));
    }
    std::fs::create_dir_all(&d)?;
    let mut c = cmd::new(
        "openssl",
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=tyrell-local CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    c.arg("-keyout").arg(&key).arg("-out").arg(&crt);
    cmd::run(c, Duration::from_secs(60))?;
    Ok((key, crt))
}

/// The AWS regions whose endpoint names the certificate covers (a box calls the region
/// its user data names, whatever region the runner follows).
pub const REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ca-central-1",
    "ca-west-1",
    "sa-east-1",
    "mx-central-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "ap-east-1",
    "ap-south-1",
    "ap-south-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-7",
    "me-south-1",
    "me-central-1",
    "il-central-1",
    "af-south-1",
];

/// The names the endpoint certificate covers: every regional endpoint name of
/// [`REGIONS`] and `region`, S3's virtual-host names, and the global ones.
pub fn cert_names(region: &str) -> Vec<String> {
    let mut names = vec!["*.amazonaws.com".to_string(), "*.s3.amazonaws.com".to_string()];
    for r in REGIONS.iter().copied().chain([region]) {
        for n in [format!("*.{r}.amazonaws.com"), format!("*.s3.{r}.amazonaws.com")] {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names
}

/// Makes the endpoint certificate for `region` in `dir`, signed by the local CA.
pub fn make_cert(dir: &Path, region: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (ca_key, ca_crt) = ensure_ca()?;
    std::fs::create_dir_all(dir)?;
    let (key, csr, crt, ext) =
        (dir.join("server.key"), dir.join("server.csr"), dir.join("server.crt"), dir.join("san.ext"));
    let sans: Vec<String> = cert_names(region).iter().map(|n| format!("DNS:{n}")).collect();
    std::fs::write(&ext, format!("subjectAltName={}\nextendedKeyUsage=serverAuth\n", sans.join(",")))?;
    let t = Duration::from_secs(60);
    let p = |x: &Path| x.display().to_string();
    cmd::run(
        cmd::new(
            "openssl",
            [
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=amazonaws.com",
                "-keyout",
                &p(&key),
                "-out",
                &p(&csr),
            ],
        ),
        t,
    )?;
    cmd::run(
        cmd::new(
            "openssl",
            [
                "x509",
                "-req",
                "-in",
                &p(&csr),
                "-CA",
                &p(&ca_crt),
                "-CAkey",
                &p(&ca_key),
                "-CAcreateserial",
                "-days",
                "825",
                "-extfile",
                &p(&ext),
                "-out",
                &p(&crt),
            ],
        ),
        t,
    )?;
    Ok((key, crt))
}

/// The CA bundle a box of this image gets: the image's own bundle plus the local CA.
pub fn bundle_for(rootfs: &Path, out: &Path) -> anyhow::Result<()> {
    let (_, ca) = ensure_ca()?;
    let mut b = std::fs::read(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap_or_default();
    if !b.ends_with(b"\n") && !b.is_empty() {
        b.push(b'\n');
    }
    b.extend(std::fs::read(&ca).context("cannot read the local CA")?);
    std::fs::write(out, b).with_context(|| format!("cannot write {}", out.display()))
}

/// Starts stunnel inside the cloud namespace: TLS on [`ENDPOINTS`]:443 → `socket`.
pub fn start_tls(
    cloud: &str,
    dir: &Path,
    key: &Path,
    crt: &Path,
    socket: &Path,
) -> anyhow::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    if !["/usr/bin/stunnel", "/usr/bin/stunnel4", "/bin/stunnel"].iter().any(|p| Path::new(p).is_file()) {
        return Err(cmd::not_installed("stunnel"));
    }
    let conf = dir.join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\noutput = {}\n[aws]\naccept = {ENDPOINTS}:443\nconnect = {}\ncert = {}\nkey = {}\n",
            dir.join("stunnel.log").display(),
            socket.display(),
            crt.display(),
            key.display()
        ),
    )?;
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", cloud, "stunnel"]).arg(&conf).stdin(std::process::Stdio::null());
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    c.spawn().map_err(|e| if e.kind() == std::io::ErrorKind::NotFound { cmd::not_installed("ip") } else { e.into() })
}

/// Relays every connection on the unix socket to the emulator.
pub async fn relay(socket: PathBuf, emulator: SocketAddr) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(&socket);
    let l =
        tokio::net::UnixListener::bind(&socket).with_context(|| format!("cannot listen on {}", socket.display()))?;
    loop {
        let (mut inbound, _) = l.accept().await?;
        tokio::spawn(async move {
            if let Ok(mut out) = tokio::net::TcpStream::connect(emulator).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            }
        });
    }
}

/// The emulator's socket address from its URL (loopback, checked before).
pub fn emulator_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.trim_start_matches("http://").trim_start_matches("https://");
    let hostport = rest.split('/').next().unwrap_or_default().replace("localhost", "127.0.0.1");
    let hostport = if hostport.contains(':') { hostport } else { format!("{hostport}:80") };
    hostport.parse().with_context(|| format!("cannot read the emulator's address from {url}"))
}

/// The load balancers' DNS names (lowercase) and their proxies' addresses.
pub type LbNames = std::sync::Arc<std::sync::RwLock<std::collections::HashMap<String, Ipv4Addr>>>;

/// What the resolver answers for a name: a load balancer's proxy for its DNS name (from
/// `lbs`), the endpoints for AWS names, the address in an EC2 private DNS name, nothing else.
pub fn resolve(name: &str, lbs: &LbNames) -> Option<Ipv4Addr> {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    // Load balancers' names (`NAME-ID.REGION.elb.amazonaws.com`) are not API endpoints:
    // only a load balancer the emulator has resolves, to its proxy.
    if n.split('.').any(|l| l == "elb") {
        return lbs.read().ok()?.get(&n).copied();
    }
    if n == "amazonaws.com" || n.ends_with(".amazonaws.com") {
        return Some(ENDPOINTS);
    }
    if n.ends_with(".ec2.internal") || n.ends_with(".compute.internal") {
        let first = n.split('.').next()?;
        let ip = first.strip_prefix("ip-")?.replace('-', ".");
        return ip.parse().ok();
    }
    None
}

/// Answers one DNS query (RFC 1035): A records from [`resolve`], an empty answer for other
/// types of known names, NXDOMAIN for unknown names. `None` for what is not a query.
pub fn answer(q: &[u8], resolve: &dyn Fn(&str) -> Option<Ipv4Addr>) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 {
        return None;
    }
    let qd = u16::from_be_bytes([q[4], q[5]]);
    if qd != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let l = *q.get(i)? as usize;
        i += 1;
        if l == 0 {
            break;
        }
        if l > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + l)?).into_owned());
        i += l;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let qend = i + 4;
    q.get(i + 2..qend)?;
    let name = labels.join(".");
    let found = resolve(&name);
    let mut r = Vec::with_capacity(qend + 16);
    r.extend_from_slice(&q[0..2]);
    let rd = q[2] & 0x01;
    r.push(0x80 | 0x04 | rd); // response, authoritative, RD copied
    let rcode = if found.is_some() { 0 } else { 3 };
    r.push(0x80 | rcode); // RA, rcode
    let an: u16 = if found.is_some() && qtype == 1 { 1 } else { 0 };
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&an.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q[12..qend]);
    if let (Some(ip), 1) = (found, an) {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}

/// Serves DNS on [`net::DNS`]:53 inside the cloud namespace.
pub async fn serve_dns(cloud: &str, lbs: LbNames) -> anyhow::Result<()> {
    let s = net::in_netns(cloud, || {
        let s = std::net::UdpSocket::bind((net::DNS, 53))?;
        s.set_nonblocking(true)?;
        Ok(s)
    })?;
    let s = tokio::net::UdpSocket::from_std(s)?;
    let mut buf = [0u8; 1500];
    loop {
        let (n, from) = s.recv_from(&mut buf).await?;
        if let Some(r) = answer(&buf[..n], &|name| resolve(name, &lbs)) {
            let _ = s.send_to(&r, from).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn resolves_endpoints_and_private_names() {
        let lbs = LbNames::default();
        lbs.write().unwrap().insert("s-alb-1.us-east-1.elb.amazonaws.com".into(), Ipv4Addr::new(169, 254, 172, 1));
        let resolve = |n: &str| super::resolve(n, &lbs);
        assert_eq!(resolve("S-ALB-1.us-east-1.elb.amazonaws.com."), Some(Ipv4Addr::new(169, 254, 172, 1)));
        assert_eq!(resolve("ssm.eu-west-1.amazonaws.com."), Some(ENDPOINTS));
        assert_eq!(resolve("ip-10-0-1-5.ec2.internal"), Some(Ipv4Addr::new(10, 0, 1, 5)));
        assert_eq!(resolve("example.com"), None);
        assert_eq!(resolve("swarm1-broker-0123.elb.eu-west-1.amazonaws.com"), None);
        let r = answer(&query("ssm.us-east-1.amazonaws.com", 1), &resolve).unwrap();
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0f, 0);
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1);
        assert_eq!(&r[r.len() - 4..], &ENDPOINTS.octets());
        let r = answer(&query("example.com", 1), &resolve).unwrap();
        assert_eq!(r[3] & 0x0f, 3);
        let r = answer(&query("sqs.us-east-1.amazonaws.com", 28), &resolve).unwrap();
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 0);
        assert!(answer(&[1, 2, 3], &resolve).is_none());
        assert!(answer(&[0xff; 40], &resolve).is_none());
    }

    #[test]
    fn emulator_address() {
        assert_eq!(emulator_addr("http://127.0.0.1:5000").unwrap(), "127.0.0.1:5000".parse().unwrap());
        assert_eq!(emulator_addr("http://localhost:5000/").unwrap(), "127.0.0.1:5000".parse().unwrap());
    }
}
