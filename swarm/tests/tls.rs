//! The client programs over TLS: a mosquitto TLS listener with a certificate from a
//! throw-away CA; the bee, the router and the indexer verifying it against BROKER_CA_FILE
//! (the bee's results readable by the original tools, the router healthy on it), and each
//! of the three refusing it without that CA: it keeps retrying, says why, and never
//! connects. And the indexer's direct connections to announced brokers over TLS.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use testkit::servers::{temp_dir, write_password_file, Mosquitto};

/// A mosquitto with only a TLS listener (and a password) on 127.0.0.1, its certificate
/// for `localhost` and 127.0.0.1 signed by a throw-away CA, `dir/ca.crt`: (broker, port,
/// the CA's path).
fn tls_broker(dir: &Path) -> (Mosquitto, u16, PathBuf) {
    make_ca(dir, "ca", "tyrell test CA");
    make_server_cert(dir, "ca", "server", "DNS:localhost,IP:127.0.0.1");
    write_password_file(&dir.join("passwd"), USER, PASSWORD);
    let port = testkit::free_port();
    let d = dir.display();
    let conf = format!(
        "per_listener_settings false\nallow_anonymous false\npassword_file {d}/passwd\nlog_dest stderr\n\
         listener {port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n"
    );
    (Mosquitto::start_with_config(&conf, port, dir), port, dir.join("ca.crt"))
}

/// Whether the program's log shows it refusing the broker's certificate (and retrying).
fn refused(p: &Program) -> bool {
    let log = p.log_text();
    log.lines().any(|l| l.contains("cannot connect to the broker") && l.to_lowercase().contains("certificate"))
}

/// The status code of `GET /healthz` on 127.0.0.1:`http_port` ("" when nothing answers).
fn healthz(http_port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", http_port)) else { return String::new() };
    use std::io::{Read, Write};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace().nth(1).unwrap_or_default().to_string()
}

#[test]
fn bee_publishes_over_tls() {
    let dir = temp_dir("tls");
    let (broker, port, ca) = tls_broker(&dir);

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

/// Puts the String parameter `name` = `value` in `region` of the AWS emulator.
fn put_parameter(region: &str, name: &str, value: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let sdk = testkit::Emulator::shared().sdk().await;
        let conf =
            aws_sdk_ssm::config::Builder::from(&sdk).region(aws_sdk_ssm::config::Region::new(region.to_string()));
        let ssm = aws_sdk_ssm::Client::from_conf(conf.build());
        ssm.put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {name} in {region}: {e:?}"));
    });
}

/// BROKER_CA_PARAM: the CA's certificate kept in SSM (as the broker boxes keep the swarm's
/// own CA in /tyrell/<swarm>/broker-ca). Each of the bee, the router and the indexer, with
/// the broker's CA in a parameter, connects over TLS and works (the bee's results arrive,
/// the router is healthy, the indexer is connected); with another CA in the parameter it
/// refuses the broker's certificate, says why and keeps retrying; given the parameter's
/// ARN in another region, it reads it there (the same name in its own region holds
/// another CA, which would be refused).
#[test]
fn programs_trust_the_ca_in_an_ssm_parameter() {
    let dir = temp_dir("tls-param");
    let (broker, port, ca) = tls_broker(&dir);
    make_ca(&dir, "other", "another CA");
    let (right, other) =
        (std::fs::read_to_string(&ca).unwrap(), std::fs::read_to_string(dir.join("other.crt")).unwrap());
    let swarm = testkit::unique("tlsparam");
    let (name, other_name, far) =
        (format!("/tyrell/{swarm}/broker-ca"), format!("/tyrell/{swarm}/other-ca"), format!("/tyrell/{swarm}/far-ca"));
    put_parameter("us-east-1", &name, &right);
    put_parameter("us-east-1", &other_name, &other);
    put_parameter("eu-west-1", &far, &right);
    put_parameter("us-east-1", &far, &other);
    let arn = format!("arn:aws:ssm:eu-west-1:123456789012:parameter{far}");

    let st = Command::new(testkit::system_tool("mosquitto_pub"))
        .args(["-h", "localhost", "-p", &port.to_string(), "-u", USER, "-P", PASSWORD, "-r", "-q", "1"])
        .args(["-t", "watch", "-m", "127.0.0.1", "--cafile"])
        .arg(&ca)
        .status()
        .unwrap();
    assert!(st.success(), "mosquitto_pub over TLS failed: {}", broker.log_text());

    let sqs = Sqs::new("tlsparam");
    // Every program three times: the right CA by name, another CA, the right CA by ARN.
    let variants = [("name", name.as_str(), true), ("other", other_name.as_str(), false), ("arn", arn.as_str(), true)];
    struct Run {
        what: String,
        program: Program,
        trusts: bool,
        /// The bee's agent or the indexer's client id (both are its MQTT client id).
        client_id: String,
        http_port: u16,
    }
    let mut runs = Vec::new();
    for program in ["bee", "router", "indexer"] {
        for (variant, param, trusts) in variants {
            let what = format!("{program} with BROKER_CA_PARAM {param} ({variant})");
            let client_id = testkit::unique(&format!("{program}-{variant}-"));
            let http_port = testkit::free_port();
            let mut cmd = Command::new(match program {
                "bee" => env!("CARGO_BIN_EXE_bee"),
                "router" => env!("CARGO_BIN_EXE_router"),
                _ => env!("CARGO_BIN_EXE_indexer"),
            });
            testkit::Emulator::shared().apply(&mut cmd);
            broker_env(&mut cmd, port);
            cmd.env("AWS_REGION", "us-east-1")
                .env("BROKER_HOST", "localhost")
                .env("BROKER_TLS", "true")
                .env("BROKER_CA_PARAM", param)
                .env_remove("BROKER_CA_FILE");
            match program {
                "bee" => cmd.env("BEE_AGENT", &client_id).env("BEE_PROBES", "2").env("BEE_INTERVAL", "1s"),
                "router" => cmd.env("ROUTER_LISTEN", format!("127.0.0.1:{http_port}")).env("ROUTER_TOKEN", "t"),
                _ => cmd.env("INDEXER_CLIENT_ID", &client_id).env("QUEUE_URL", &sqs.url),
            };
            runs.push(Run { what, program: Program::start(cmd, &client_id), trusts, client_id, http_port });
        }
    }

    let connected = |r: &Run| {
        if r.what.starts_with("router") {
            healthz(r.http_port) == "200"
        } else {
            broker.log_text().contains(&format!(" as {} ", r.client_id))
        }
    };
    for r in runs.iter().filter(|r| r.trusts) {
        wait_for(Duration::from_secs(30), &format!("{} connected over TLS", r.what), || connected(r).then_some(()));
    }
    // The trusting bees work: their results arrive (read over TLS with the CA file).
    let mut agents: Vec<&str> =
        runs.iter().filter(|r| r.trusts && r.what.starts_with("bee")).map(|r| r.client_id.as_str()).collect();
    wait_for(Duration::from_secs(30), "results from the trusting bees", || {
        let out = Command::new(testkit::system_tool("mosquitto_sub"))
            .args(["-h", "localhost", "-p", &port.to_string(), "-u", USER, "-P", PASSWORD])
            .args(["-t", "ping/127.0.0.1", "-C", "4", "-W", "5", "--cafile"])
            .arg(&ca)
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let rec: record::PingRecord = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            assert_eq!(rec.status, record::Status::Ok, "{line}");
            agents.retain(|a| *a != rec.agent);
        }
        agents.is_empty().then_some(())
    });
    for r in runs.iter().filter(|r| !r.trusts) {
        wait_for(Duration::from_secs(20), &format!("{}: a refusal of the certificate", r.what), || {
            refused(&r.program).then_some(())
        });
        assert!(testkit::servers::running(r.program.guard.pid), "{} keeps retrying", r.what);
        assert!(!connected(r), "{} never connected: {}", r.what, r.program.log_text());
    }
}

/// A mosquitto on 127.0.0.1 (files in a fresh directory; certificates and the password
/// file `passwd` from `certs`): a plain listener, its [`Mosquitto::port`] (what brokers
/// bridge on, and what the test publishes on), and one TLS listener per name in `tls`
/// (`certs/<name>.crt` and `.key`), whose ports come back in that order.
fn plain_and_tls_broker(certs: &Path, tls: &[&str]) -> (Mosquitto, Vec<u16>) {
    let (plain, c) = (testkit::free_port(), certs.display());
    let mut conf = format!(
        "per_listener_settings false\nallow_anonymous false\npassword_file {c}/passwd\nlog_dest stderr\n\
         connection_messages true\nlistener {plain} 127.0.0.1\n"
    );
    let ports: Vec<u16> = tls.iter().map(|_| testkit::free_port()).collect();
    for (name, port) in tls.iter().zip(&ports) {
        conf += &format!("listener {port} 127.0.0.1\ncertfile {c}/{name}.crt\nkeyfile {c}/{name}.key\n");
    }
    let broker = Mosquitto::start_with_config(&conf, plain, &temp_dir("mosq-tls"));
    for p in &ports {
        assert!(testkit::wait_for_port(*p, Duration::from_secs(10)), "no TLS listener on {p}: {}", broker.log_text());
    }
    (broker, ports)
}

/// An indexer's direct connections to announced brokers when its own connection is TLS
/// (BROKER_HOST=localhost, the NLB's name here, and the swarm's CA in BROKER_CA_FILE).
/// Every broker certificate names `localhost` only, never 127.0.0.1, the address the
/// announcements give, as on AWS (the NLB's DNS name, not the brokers' private IPs):
///
/// (a) an announced `tls_port` with the swarm's certificate: the indexer connects there
///     over TLS, verifying the certificate for BROKER_HOST, and indexes a result
///     published on that broker only;
/// (b) an announced `tls_port` with a certificate from another CA, or from the swarm's CA
///     for another name: refused, never connected;
/// (c) an announcement without `tls_port`: no connection at all (not even plain MQTT to
///     its plain `port`, which is open), and one warning, also when it is published again.
#[test]
fn indexer_links_to_announced_brokers_over_tls_verified_for_the_nlb_name() {
    let certs = temp_dir("tls-direct");
    make_ca(&certs, "ca", "tyrell swarm CA");
    make_ca(&certs, "other", "another CA");
    for (name, ca, san) in [
        ("nlb", "ca", "DNS:localhost"),
        ("broker", "ca", "DNS:localhost"),
        ("stranger", "other", "DNS:localhost"),
        ("misnamed", "ca", "DNS:elsewhere.test"),
    ] {
        make_server_cert(&certs, ca, name, san);
    }
    write_password_file(&certs.join("passwd"), USER, PASSWORD);
    // The live broker behind the "NLB", and another broker with three TLS listeners.
    let (nlb, nlb_tls) = plain_and_tls_broker(&certs, &["nlb"]);
    let (other, tls) = plain_and_tls_broker(&certs, &["broker", "stranger", "misnamed"]);
    let (good, stranger, misnamed) = (tls[0], tls[1], tls[2]);
    let announce = |id: &str, tls_port: Option<u16>| {
        let tls = tls_port.map(|p| format!(",\"tls_port\":{p}")).unwrap_or_default();
        let json = format!("{{\"host\":\"127.0.0.1\",\"port\":{}{tls},\"version\":\"vtest\"}}", other.port);
        mqtt_pub(nlb.port, &format!("tyrell/brokers/{id}"), json.as_bytes(), true);
    };
    announce("i-tls", Some(good));
    announce("i-stranger", Some(stranger));
    announce("i-misnamed", Some(misnamed));
    announce("i-plain", None);

    let sqs = Sqs::new("tls-direct");
    let id = testkit::unique("idx-tls-direct");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_indexer"));
    testkit::Emulator::shared().apply(&mut cmd);
    broker_env(&mut cmd, nlb_tls[0]);
    cmd.env("BROKER_HOST", "localhost")
        .env("BROKER_TLS", "true")
        .env("BROKER_CA_FILE", certs.join("ca.crt"))
        .env("INDEXER_CLIENT_ID", &id)
        .env("QUEUE_URL", &sqs.url)
        .env("INDEXER_LINGER", "300ms")
        .env("STATS_INTERVAL", "200ms");
    let indexer = Program::start(cmd, &id);
    let on_other = |link: &str| other.log_text().contains(&format!(" as {id}-{link} "));
    // The indexer's log lines about the broker at 127.0.0.1:`port` saying `what`.
    let says = |port: u16, what: &str| -> Vec<String> {
        let at = format!("\"127.0.0.1:{port}\"");
        indexer.log_text().lines().filter(|l| l.contains(&at) && l.contains(what)).map(str::to_string).collect()
    };

    // (a) Connected over TLS to the announced tls_port (the plain listener never sees it).
    wait_for(Duration::from_secs(20), "the direct link over TLS to the announced tls_port", || {
        (on_other("i-tls") && !says(good, "connected to the broker").is_empty()).then_some(())
    });
    assert!(nlb.log_text().contains(&format!(" as {id} ")), "the NLB link is up too");
    // Its subscriptions are in place once its presence is on that broker; a result
    // published there (not on the NLB's broker) reaches SQS.
    wait_for(Duration::from_secs(10), "the indexer's presence on the announced broker", || {
        (!mqtt_sub(other.port, &format!("indexers/alive/{id}"), 1, 1).is_empty()).then_some(())
    });
    std::thread::sleep(Duration::from_millis(700));
    let rec = record::PingRecord {
        id: testkit::unique("rec-direct"),
        ts: swarm::now_ts(),
        stack: "swarmtest".into(),
        agent: "bee-direct".into(),
        target: "127.0.0.1".into(),
        ..Default::default()
    };
    mqtt_pub(other.port, "ping/127.0.0.1", &serde_json::to_vec(&rec).unwrap(), false);
    wait_for(Duration::from_secs(20), "the result published on the announced broker in SQS", || {
        sqs.drain(1).iter().flat_map(|m| &m.records).any(|r| r.id == rec.id).then_some(())
    });

    // (b) Another CA, or the swarm's CA for another name: refused, and it says why.
    for (link, port) in [("i-stranger", stranger), ("i-misnamed", misnamed)] {
        wait_for(Duration::from_secs(20), &format!("{link}'s certificate refused"), || {
            says(port, "cannot connect to the broker")
                .iter()
                .any(|l| l.to_lowercase().contains("certificate"))
                .then_some(())
        });
    }

    // (c) No tls_port: a warning, no connection; published again (as a broker does every
    // 60 s), no second warning.
    let warned =
        || indexer.log_text().lines().filter(|l| l.contains("i-plain") && l.contains("without a tls_port")).count();
    wait_for(Duration::from_secs(10), "the warning about i-plain", || (warned() > 0).then_some(()));
    announce("i-plain", None);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(warned(), 1, "one warning per announcement: {}", indexer.log_text());

    for link in ["i-stranger", "i-misnamed", "i-plain"] {
        assert!(!on_other(link), "{link} must never connect: {}", other.log_text());
    }
    assert!(says(other.port, "connected to the broker").is_empty(), "never plain MQTT to the announced port");
    assert!(testkit::servers::running(indexer.guard.pid), "the indexer keeps running");
}
