//! The client programs over TLS: a mosquitto TLS listener with a certificate from a
//! throw-away CA; the bee, the router and the indexer verifying it against BROKER_CA_FILE
//! (the bee's results readable by the original tools, the router healthy on it), and each
//! of the three refusing it without that CA: it keeps retrying, says why, and never
//! connects.

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
    let refused = |p: &Program| {
        let log = p.log_text();
        log.lines().any(|l| l.contains("cannot connect to the broker") && l.to_lowercase().contains("certificate"))
    };
    assert!(refused(&untrusting), "the bee's refusal names the certificate: {}", untrusting.log_text());

    // The router and the indexer: with the CA they connect over TLS; without it they refuse
    // the broker's certificate the same way, and the router stays unhealthy.
    let router = |name: &str, ca: Option<&std::path::Path>| {
        let http_port = testkit::free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_router"));
        broker_env(&mut cmd, port);
        cmd.env("BROKER_HOST", "localhost")
            .env("BROKER_TLS", "true")
            .env("ROUTER_LISTEN", format!("127.0.0.1:{http_port}"))
            .env("ROUTER_TOKEN", "t");
        if let Some(ca) = ca {
            cmd.env("BROKER_CA_FILE", ca);
        }
        let p = Program::start(cmd, name);
        assert!(testkit::wait_for_port(http_port, Duration::from_secs(20)), "{name} did not listen: {}", p.log_text());
        (p, http_port)
    };
    let healthz = |http_port: u16| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", http_port)).unwrap();
        use std::io::{Read, Write};
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_whitespace().nth(1).unwrap_or_default().to_string()
    };
    let (trusting, tp) = router("router-tls", Some(&ca));
    wait_for(Duration::from_secs(20), "the router with the CA healthy over TLS", || {
        (healthz(tp) == "200").then_some(())
    });
    drop(trusting);
    let (untrusting_router, up) = router("router-untrusting", None);
    wait_for(Duration::from_secs(10), "the router's TLS refusal", || refused(&untrusting_router).then_some(()));
    assert_ne!(healthz(up), "200", "a router that cannot verify its broker is not healthy");
    assert!(testkit::servers::running(untrusting_router.guard.pid), "the router keeps retrying");

    let sqs = Sqs::new("tls");
    let influx = testkit::servers::Influxd::start();
    let indexer = |name: &str, ca: Option<&std::path::Path>| {
        let id = testkit::unique(name);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_indexer"));
        testkit::Emulator::shared().apply(&mut cmd);
        broker_env(&mut cmd, port);
        cmd.env("BROKER_HOST", "localhost")
            .env("BROKER_TLS", "true")
            .env("INDEXER_CLIENT_ID", &id)
            .env("QUEUE_URL", &sqs.url)
            .env("INFLUX_URL", influx.url())
            .env("INFLUX_DB", "tyrell");
        if let Some(ca) = ca {
            cmd.env("BROKER_CA_FILE", ca);
        }
        (Program::start(cmd, name), id)
    };
    let (trusting, id) = indexer("indexer-tls", Some(&ca));
    wait_for(Duration::from_secs(20), "the indexer with the CA connected over TLS", || {
        broker.log_text().contains(&format!(" as {id} ")).then_some(())
    });
    drop(trusting);
    let (untrusting_indexer, id) = indexer("indexer-untrusting", None);
    wait_for(Duration::from_secs(10), "the indexer's TLS refusal", || refused(&untrusting_indexer).then_some(()));
    assert!(testkit::servers::running(untrusting_indexer.guard.pid), "the indexer keeps retrying");
    assert!(!broker.log_text().contains(&format!(" as {id} ")), "the untrusting indexer never connected");
}
