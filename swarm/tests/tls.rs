//! The bee over TLS: a mosquitto TLS listener with a certificate from a throw-away CA,
//! the bee verifying it against BROKER_CA_FILE, results readable by the original tools.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;
use testkit::servers::{temp_dir, write_password_file, Mosquitto};

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new(testkit::system_tool("openssl")).args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn bee_publishes_over_tls() {
    let dir = temp_dir("tls");
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=tyrell test CA",
            "-days",
            "1",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    );
    for f in ["server.key", "server.crt", "ca.crt"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    write_password_file(&dir.join("passwd"), USER, PASSWORD);
    let port = testkit::free_port();
    let d = dir.display();
    let conf = format!(
        "per_listener_settings false\nallow_anonymous false\npassword_file {d}/passwd\nlog_dest stderr\n\
         listener {port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n"
    );
    let broker = Mosquitto::start_with_config(&conf, port, &dir);
    let ca = dir.join("ca.crt");

    let tls_pub = |topic: &str, msg: &str| {
        let st = Command::new(testkit::system_tool("mosquitto_pub"))
            .args([
                "-h",
                "localhost",
                "-p",
                &port.to_string(),
                "-u",
                USER,
                "-P",
                PASSWORD,
                "-r",
                "-q",
                "1",
                "-t",
                topic,
                "-m",
                msg,
            ])
            .arg("--cafile")
            .arg(&ca)
            .status()
            .unwrap();
        assert!(st.success(), "mosquitto_pub over TLS failed: {}", broker.log_text());
    };
    tls_pub("watch", "127.0.0.1");

    let agent = testkit::unique("bee-tls");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bee"));
    broker_env(&mut cmd, port);
    cmd.env("BROKER_HOST", "localhost")
        .env("BROKER_TLS", "true")
        .env("BROKER_CA_FILE", &ca)
        .env("BEE_AGENT", &agent)
        .env("BEE_PROBES", "2")
        .env("BEE_INTERVAL", "1s");
    let bee = Program::start(cmd, &agent);

    let out = Command::new(testkit::system_tool("mosquitto_sub"))
        .args([
            "-h",
            "localhost",
            "-p",
            &port.to_string(),
            "-u",
            USER,
            "-P",
            PASSWORD,
            "-t",
            "ping/127.0.0.1",
            "-C",
            "1",
            "-W",
            "20",
        ])
        .arg("--cafile")
        .arg(&ca)
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    let rec: record::PingRecord =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}\nbee: {}", bee.log_text()));
    assert_eq!((rec.agent.as_str(), rec.status, rec.loss), (agent.as_str(), record::Status::Ok, 0.0));

    // Without the CA the server is not trusted: the bee keeps retrying and says why.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bee"));
    broker_env(&mut cmd, port);
    cmd.env("BROKER_HOST", "localhost").env("BROKER_TLS", "true").env("BEE_AGENT", testkit::unique("bee-untrusting"));
    let untrusting = Program::start(cmd, "bee-untrusting");
    wait_for(Duration::from_secs(10), "a TLS error in the log", || {
        untrusting.log_text().contains("cannot connect to the broker").then_some(())
    });
    assert!(testkit::servers::running(untrusting.guard.pid), "the bee must keep retrying, not exit");
}
