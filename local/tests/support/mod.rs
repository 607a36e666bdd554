//! What the local cloud's end-to-end tests share.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

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
