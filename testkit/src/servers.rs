//! Real servers for tests and the demo, each on free loopback ports with its files in a
//! temporary directory, running under [`crate::proc::Guard`] so it never outlives the
//! test process:
//!
//! * [`Mosquitto`]: Debian's mosquitto with a given configuration, or a ready-made one
//!   with a password file (anonymous access refused).
//! * [`Influxd`]: Debian's InfluxDB 1.x.
//! * [`http`]: a tiny blocking HTTP/1.1 client for talking to them (and to the router).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{free_port, proc::Guard, system_tool, unique, wait_for_port};

/// A fresh directory under the system temp dir, readable by the servers' own users
/// (mosquitto drops root privileges to the `mosquitto` user).
pub fn temp_dir(prefix: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&d).expect("create a temp dir");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// A running mosquitto.
pub struct Mosquitto {
    pub port: u16,
    pub dir: PathBuf,
    pub log: PathBuf,
    guard: Guard,
}

impl Mosquitto {
    /// Starts mosquitto with `config` (written as given to `dir/mosquitto.conf`) and waits
    /// until it accepts connections on `port` (the caller's `listener` line).
    pub fn start_with_config(config: &str, port: u16, dir: &Path) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, config).unwrap();
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = dir.join("mosquitto.log");
        let mut cmd = Command::new(system_tool("mosquitto"));
        cmd.arg("-c").arg(&conf);
        let guard = Guard::spawn(cmd, &log);
        assert!(
            wait_for_port(port, Duration::from_secs(10)),
            "mosquitto did not listen on {port}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Mosquitto { port, dir: dir.to_path_buf(), log, guard }
    }

    /// A broker for user `user` with `password`; anonymous clients refused; persistence on.
    pub fn start_with_password(user: &str, password: &str) -> Mosquitto {
        let dir = temp_dir("mosq");
        let pw = dir.join("passwd");
        write_password_file(&pw, user, password);
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = free_port();
        let config = format!(
            "per_listener_settings false\nallow_anonymous false\npassword_file {}\npersistence true\npersistence_location {}/\n\
             log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\nconnection_messages true\n\
             max_queued_messages 100000\nlistener {port} 127.0.0.1\n",
            pw.display(),
            data.display()
        );
        Mosquitto::start_with_config(&config, port, &dir)
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid
    }

    pub fn alive(&self) -> bool {
        running(self.guard.pid)
    }

    /// Stops mosquitto cleanly (SIGTERM: it saves its persistence file) and waits for it.
    pub fn stop(&self) {
        self.guard.signal("TERM");
        let start = Instant::now();
        while running(self.guard.pid) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The broker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Whether process `pid` is running: exists and is not a zombie (a program that exited
/// stays a zombie until its [`Guard`] is dropped, and `kill -0` still finds it).
pub fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Writes a mosquitto password file (hashed by `mosquitto_passwd`).
pub fn write_password_file(path: &Path, user: &str, password: &str) {
    let st = Command::new(system_tool("mosquitto_passwd"))
        .arg("-b")
        .arg("-c")
        .arg(path)
        .arg(user)
        .arg(password)
        .status()
        .unwrap();
    assert!(st.success(), "mosquitto_passwd failed");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// A running InfluxDB 1.x (`influxd`).
pub struct Influxd {
    pub port: u16,
    pub dir: PathBuf,
    pub log: PathBuf,
    _guard: Guard,
}

impl Influxd {
    /// Starts influxd with its data in a temp dir, HTTP on a free port, and waits for `/ping`.
    pub fn start() -> Influxd {
        let dir = temp_dir("influx");
        let (port, rpc) = (free_port(), free_port());
        let d = dir.display();
        let conf = format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n\
             [meta]\n  dir = \"{d}/meta\"\n\
             [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
             [monitor]\n  store-enabled = false\n\
             [http]\n  bind-address = \"127.0.0.1:{port}\"\n  log-enabled = false\n\
             [logging]\n  level = \"warn\"\n"
        );
        let conf_path = dir.join("influxdb.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = dir.join("influxd.log");
        let mut cmd = Command::new(system_tool("influxd"));
        cmd.arg("run").arg("-config").arg(&conf_path);
        let guard = Guard::spawn(cmd, &log);
        let start = Instant::now();
        loop {
            if wait_for_port(port, Duration::from_millis(200))
                && http("GET", port, "/ping", &[], b"").map(|r| r.0 == 204).unwrap_or(false)
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "influxd did not answer /ping on {port}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Influxd { port, dir, log, _guard: guard }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs an InfluxQL query and returns the JSON answer.
    pub fn query(&self, db: &str, q: &str) -> serde_json::Value {
        let path = format!("/query?db={}&q={}", urlencode(db), urlencode(q));
        let (code, body) = http("GET", self.port, &path, &[], b"").expect("query influxd");
        assert_eq!(code, 200, "influx query {q:?}: {body}");
        serde_json::from_str(&body).expect("influx answers JSON")
    }

    /// The rows of a query's first series as JSON objects (column name → value); empty
    /// when the query found nothing (or the database does not exist yet).
    pub fn rows(&self, db: &str, q: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let v = self.query(db, q);
        let mut out = Vec::new();
        for series in v["results"][0]["series"].as_array().into_iter().flatten() {
            let cols: Vec<String> =
                series["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
            let tags = series["tags"].as_object().cloned().unwrap_or_default();
            for row in series["values"].as_array().unwrap() {
                let mut m = tags.clone();
                for (c, v) in cols.iter().zip(row.as_array().unwrap()) {
                    m.insert(c.clone(), v.clone());
                }
                out.push(m);
            }
        }
        out
    }
}

/// Percent-encodes a query-string component.
pub fn urlencode(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// One blocking HTTP/1.1 request to 127.0.0.1:`port`; returns the status and the body.
pub fn http(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).to_string();
    let code = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {text:?}")))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
