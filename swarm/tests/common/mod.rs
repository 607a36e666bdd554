//! Helpers shared by the swarm's end-to-end tests: the real binaries against a real
//! mosquitto (and influxd, and the AWS emulator).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::proc::Guard;
use testkit::servers::Mosquitto;

pub const USER: &str = "tyrell";
pub const PASSWORD: &str = "s3cret-broker-pw";

pub fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}.log", testkit::unique(name)))
}

/// The broker environment of a swarm program.
pub fn broker_env(cmd: &mut Command, port: u16) {
    cmd.env("BROKER_HOST", "127.0.0.1")
        .env("BROKER_PORT", port.to_string())
        .env("BROKER_USERNAME", USER)
        .env("BROKER_PASSWORD", PASSWORD)
        .env("BROKER_MAX_BACKOFF", "1s")
        .env("LOG", "info");
}

/// A running swarm program and its log.
pub struct Program {
    pub guard: Guard,
    pub log: PathBuf,
}

impl Program {
    pub fn start(mut cmd: Command, name: &str) -> Program {
        let log = log_path(name);
        for k in ["TYRELL_CONFIG", "BEE_AGENT", "QUEUE_URL", "INFLUX_URL", "ROUTER_TOKEN"] {
            if std::env::var_os(k).is_some() && cmd.get_envs().all(|(e, _)| e != k) {
                cmd.env_remove(k);
            }
        }
        let guard = Guard::spawn(cmd, &log);
        Program { guard, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub fn bee(port: u16, agent: &str) -> Program {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bee"));
    broker_env(&mut cmd, port);
    cmd.env("BEE_AGENT", agent)
        .env("TYRELL_STACK", "swarmtest")
        .env("AWS_REGION", "us-east-1")
        .env("BEE_PROBES", "3")
        .env("BEE_INTERVAL", "1s")
        .env("BEE_RESOLVE_TIMEOUT", "2s")
        .env("STATS_INTERVAL", "2s");
    Program::start(cmd, agent)
}

/// Publishes with the real `mosquitto_pub` (the original swarm's tools speak plain MQTT).
pub fn mqtt_pub(port: u16, topic: &str, payload: &[u8], retain: bool) {
    let mut cmd = Command::new(testkit::system_tool("mosquitto_pub"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-u", USER, "-P", PASSWORD, "-q", "1", "-t", topic, "-s"]);
    if retain {
        cmd.arg("-r");
    }
    let mut child = cmd.stdin(std::process::Stdio::piped()).spawn().expect("mosquitto_pub");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(payload).unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "mosquitto_pub to {topic} failed");
}

/// Reads up to `count` messages from `topic` within `secs` with `mosquitto_sub` (-v:
/// "topic payload" lines).
pub fn mqtt_sub(port: u16, topic: &str, count: usize, secs: u64) -> Vec<String> {
    let out = Command::new(testkit::system_tool("mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-u", USER, "-P", PASSWORD, "-v", "-t", topic])
        .args(["-C", &count.to_string(), "-W", &secs.to_string()])
        .output()
        .expect("mosquitto_sub");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

pub fn broker() -> Mosquitto {
    Mosquitto::start_with_password(USER, PASSWORD)
}

/// Polls `f` until it returns `Some`, or fails after `within` with `what`.
pub fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < within, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A fresh queue in the emulator, read the way the worker reads it.
pub struct Sqs {
    rt: tokio::runtime::Runtime,
    client: aws_sdk_sqs::Client,
    pub url: String,
}

/// One message taken from the queue.
pub struct Received {
    pub encoding: record::Encoding,
    pub body_len: usize,
    pub records: Vec<record::PingRecord>,
}

impl Sqs {
    pub fn new(prefix: &str) -> Sqs {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let client = rt.block_on(testkit::Emulator::shared().sqs());
        let name = testkit::unique(prefix);
        let url = rt.block_on(client.create_queue().queue_name(&name).send()).unwrap().queue_url.unwrap();
        Sqs { rt, client, url }
    }

    /// Receives (and deletes) up to 10 messages, decoding each body with the record crate.
    pub fn drain(&self, wait_seconds: i32) -> Vec<Received> {
        self.rt.block_on(async {
            let out = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .wait_time_seconds(wait_seconds)
                .send()
                .await
                .unwrap();
            let mut got = Vec::new();
            for m in out.messages() {
                let enc = m
                    .message_attributes()
                    .and_then(|a| a.get(record::ENCODING_ATTRIBUTE))
                    .and_then(|v| v.string_value());
                let encoding = record::Encoding::from_attribute(enc).unwrap();
                let body = m.body().unwrap();
                let records =
                    record::decode_body(body, encoding).expect("a valid body").into_iter().map(|l| l.record).collect();
                got.push(Received { encoding, body_len: body.len(), records });
                self.client
                    .delete_message()
                    .queue_url(&self.url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
            got
        })
    }
}

/// Runs Debian's openssl in `dir`; fails the test with its stderr.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new(testkit::system_tool("openssl")).args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A throw-away CA in `dir`: `<name>.key` and `<name>.crt`, common name `cn`.
pub fn make_ca(dir: &std::path::Path, name: &str, cn: &str) {
    let (key, crt, subj) = (format!("{name}.key"), format!("{name}.crt"), format!("/CN={cn}"));
    openssl(
        dir,
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &crt, "-subj", &subj, "-days", "1"],
    );
    std::fs::set_permissions(dir.join(&crt), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
}

/// A server certificate in `dir`, `<name>.key` and `<name>.crt`, for the subject
/// alternative names `san` (e.g. `DNS:localhost,IP:127.0.0.1`), signed by the CA `<ca>`
/// made by [`make_ca`]; both files readable by mosquitto.
pub fn make_server_cert(dir: &std::path::Path, ca: &str, name: &str, san: &str) {
    let (key, csr, crt, ext) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
    openssl(
        dir,
        &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", "/CN=tyrell test broker"],
    );
    std::fs::write(dir.join(&ext), format!("subjectAltName={san}\n")).unwrap();
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "1",
            "-extfile",
            &ext,
        ],
    );
    for f in [key, crt] {
        std::fs::set_permissions(dir.join(f), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
}
