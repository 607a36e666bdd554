//! Every numeric or duration setting of the real `bee`, `indexer` and `router` binaries is
//! checked at start: a value out of its range stops the program at once with one line
//! naming the setting and its allowed range, a non-zero exit code, and never a panic.
//! Values at the edges of the ranges are accepted.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A program started with a clean environment plus `env` (nothing listens on the broker
/// port: a program that passes its checks keeps trying to connect).
fn spawn(program: &str, env: &[(&str, &str)]) -> Child {
    let exe = match program {
        "bee" => env!("CARGO_BIN_EXE_bee"),
        "indexer" => env!("CARGO_BIN_EXE_indexer"),
        _ => env!("CARGO_BIN_EXE_router"),
    };
    let mut cmd = Command::new(exe);
    cmd.env_clear()
        .env("BROKER_HOST", "127.0.0.1")
        .env("BROKER_PORT", testkit::free_port().to_string())
        .env("LOG", "warn");
    match program {
        "indexer" => cmd.env("INFLUX_URL", "http://127.0.0.1:9"),
        "router" => cmd.env("ROUTER_TOKEN", "t").env("ROUTER_LISTEN", format!("127.0.0.1:{}", testkit::free_port())),
        _ => cmd.env("BEE_AGENT", "bee-settings"),
    };
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start the program")
}

/// Waits up to `within` for the program to exit; kills it otherwise. Returns the exit
/// code (`None`: still running, or killed by a signal) and stderr.
fn finish(mut c: Child, within: Duration) -> (Option<i32>, String) {
    let start = Instant::now();
    let code = loop {
        if let Some(st) = c.try_wait().unwrap() {
            break st.code();
        }
        if start.elapsed() > within {
            let _ = c.kill();
            let _ = c.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (code, err)
}

/// (program, its environment, what the one-line error must say)
type Combo = (&'static str, &'static [(&'static str, &'static str)], &'static str);

#[test]
fn out_of_range_settings_are_refused_at_start() {
    // (program, variable, value, what the one-line error must say)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("bee", "BEE_PROBES", "0", "BEE_PROBES (--probes) must be a whole number from 1 to 1000"),
        ("bee", "BEE_PROBES", "70000", "BEE_PROBES (--probes) must be a whole number from 1 to 1000"),
        ("bee", "BEE_PROBES", "-3", "BEE_PROBES (--probes) must be a whole number from 1 to 1000"),
        ("bee", "BEE_INTERVAL", "0s", "BEE_INTERVAL (--interval) must be a duration from 100ms to 1h"),
        ("bee", "BEE_SHARE_K", "1001", "BEE_SHARE_K (--share-k) must be \"all\" or 0"),
        ("bee", "BEE_SHARE_K", "-1", "BEE_SHARE_K (--share-k) must be \"all\" or 0"),
        ("bee", "BEE_SHARE_K", "some", "BEE_SHARE_K (--share-k) must be \"all\" or 0"),
        ("bee", "BEE_ZONE", "eu west/1a", "BEE_ZONE (--zone) must be empty or 1 to 64 letters, digits and '-'"),
        (
            "bee",
            "BEE_INTERVAL",
            "99999999999999999999999s",
            "BEE_INTERVAL (--interval) must be a duration from 100ms to 1h",
        ),
        ("bee", "BEE_INTERVAL", "-1s", "BEE_INTERVAL (--interval) must be a duration from 100ms to 1h"),
        ("bee", "BEE_INTERVAL", "NaN", "BEE_INTERVAL (--interval) must be a duration from 100ms to 1h"),
        ("bee", "BEE_INTERVAL", "2h", "BEE_INTERVAL (--interval) must be a duration from 100ms to 1h"),
        ("bee", "BEE_PROBE_TIMEOUT", "0s", "BEE_PROBE_TIMEOUT (--probe-timeout) must be a duration from 1ms to 1m"),
        (
            "bee",
            "BEE_RESOLVE_TIMEOUT",
            "1e9",
            "BEE_RESOLVE_TIMEOUT (--resolve-timeout) must be a duration from 100ms to 1m",
        ),
        (
            "bee",
            "BEE_PUBLISH_QUEUE",
            "0",
            "BEE_PUBLISH_QUEUE (--publish-queue) must be a whole number from 10 to 1000000",
        ),
        (
            "bee",
            "STATS_INTERVAL",
            "1ms",
            "STATS_INTERVAL (--stats-interval) must be 0 (off) or a duration from 100ms to 24h",
        ),
        ("bee", "BROKER_PORT", "0", "BROKER_PORT (--broker-port) must be a whole number from 1 to 65535"),
        ("bee", "BROKER_PORT", "65536", "BROKER_PORT (--broker-port) must be a whole number from 1 to 65535"),
        (
            "bee",
            "BROKER_KEEP_ALIVE",
            "500ms",
            "BROKER_KEEP_ALIVE (--broker-keep-alive) must be a duration from 1s to 65535s",
        ),
        (
            "bee",
            "BROKER_KEEP_ALIVE",
            "100000s",
            "BROKER_KEEP_ALIVE (--broker-keep-alive) must be a duration from 1s to 65535s",
        ),
        (
            "bee",
            "BROKER_MAX_BACKOFF",
            "0",
            "BROKER_MAX_BACKOFF (--broker-max-backoff) must be a duration from 250ms to 1h",
        ),
        ("bee", "BROKER_HOST", "", "BROKER_HOST (--broker-host) must not be empty"),
        ("bee", "BEE_AGENT", "bee/1", "BEE_AGENT (--agent) must be 1 to 128 letters"),
        (
            "indexer",
            "INDEXER_MAX_UNACKED",
            "1",
            "INDEXER_MAX_UNACKED (--max-unacked) must be a whole number from 2 to 65535",
        ),
        (
            "indexer",
            "INDEXER_MAX_UNACKED",
            "65536",
            "INDEXER_MAX_UNACKED (--max-unacked) must be a whole number from 2 to 65535",
        ),
        (
            "indexer",
            "INDEXER_SESSION_EXPIRY",
            "-1",
            "INDEXER_SESSION_EXPIRY (--session-expiry) must be a whole number from 0 to 4294967295",
        ),
        (
            "indexer",
            "SQS_MAX_BYTES",
            "300000",
            "SQS_MAX_BYTES (--sqs-max-bytes) must be a whole number from 1024 to 262144",
        ),
        ("indexer", "INFLUX_BATCH", "0", "INFLUX_BATCH (--influx-batch) must be a whole number from 1 to 100000"),
        ("indexer", "INDEXER_BUFFER", "0", "INDEXER_BUFFER (--buffer) must be a whole number from 1 to 10000000"),
        ("indexer", "INDEXER_LINGER", "5m", "INDEXER_LINGER (--linger) must be a duration from 0s to 1m"),
        (
            "indexer",
            "INDEXER_DRAIN_TIMEOUT",
            "-5s",
            "INDEXER_DRAIN_TIMEOUT (--drain-timeout) must be a duration from 0s to 1h",
        ),
        (
            "indexer",
            "INDEXER_METRICS_ADDR",
            "127.0.0.1:0",
            "INDEXER_METRICS_ADDR (--metrics-addr) must be empty (off) or an address IP:PORT",
        ),
        (
            "indexer",
            "INFLUX_URL",
            "http://127.0.0.1:70000",
            "INFLUX_URL must be http://host:port with the port from 1 to 65535",
        ),
        (
            "indexer",
            "INFLUX_URL",
            "http://127.0.0.1:0",
            "INFLUX_URL must be http://host:port with the port from 1 to 65535",
        ),
        (
            "indexer",
            "STATS_INTERVAL",
            "48h",
            "STATS_INTERVAL (--stats-interval) must be 0 (off) or a duration from 100ms to 24h",
        ),
        ("indexer", "BROKER_PORT", "99999", "BROKER_PORT (--broker-port) must be a whole number from 1 to 65535"),
        ("router", "ROUTER_BEE_TTL", "0s", "ROUTER_BEE_TTL (--bee-ttl) must be a duration from 1s to 24h"),
        ("router", "ROUTER_BEE_TTL", "nan", "ROUTER_BEE_TTL (--bee-ttl) must be a duration from 1s to 24h"),
        (
            "router",
            "ROUTER_LISTEN",
            "127.0.0.1:70000",
            "ROUTER_LISTEN (--listen) must be an address IP:PORT with the port from 1 to 65535",
        ),
        (
            "router",
            "ROUTER_LISTEN",
            "127.0.0.1:0",
            "ROUTER_LISTEN (--listen) must be an address IP:PORT with the port from 1 to 65535",
        ),
        (
            "router",
            "BROKER_KEEP_ALIVE",
            "0s",
            "BROKER_KEEP_ALIVE (--broker-keep-alive) must be a duration from 1s to 65535s",
        ),
    ];
    // A combination: each setting in range, together impossible.
    let combos: &[Combo] = &[
        (
            "bee",
            &[("BEE_INTERVAL", "100ms"), ("BEE_PROBES", "1000")],
            "BEE_INTERVAL / BEE_PROBES (the time between two probes) must be at least 1ms, not 100ms / 1000",
        ),
        (
            "bee",
            &[("BEE_SHARE_K", "2"), ("AWS_REGION", "eu west")],
            "AWS_REGION (--region) must be empty or 1 to 64 letters, digits and '-' when BEE_SHARE_K is set",
        ),
    ];
    let mut running: Vec<(String, &str, Child)> = cases
        .iter()
        .map(|(p, k, v, want)| (format!("{p} {k}={v:?}"), *want, spawn(p, &[(k, v)])))
        .chain(combos.iter().map(|(p, env, want)| (format!("{p} {env:?}"), *want, spawn(p, env))))
        .collect();
    let mut failures = Vec::new();
    for (what, want, child) in running.drain(..) {
        let (code, err) = finish(child, Duration::from_secs(20));
        let lines: Vec<&str> = err.lines().collect();
        let ok = matches!(code, Some(c) if c != 0 && c != 101)
            && !err.contains("panicked")
            && lines.len() == 1
            && lines[0].contains(want);
        if !ok {
            failures.push(format!("{what}: exit {code:?}, stderr {err:?}\n  wanted one line with {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the bad settings were not refused properly:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn settings_at_the_edges_of_their_ranges_are_accepted() {
    // Each program must still be running (trying to reach the absent broker) after 3 s.
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "bee",
            vec![
                ("BEE_PROBES", "100"),
                ("BEE_INTERVAL", "100ms"),
                ("BEE_PROBE_TIMEOUT", "1m"),
                ("BEE_RESOLVE_TIMEOUT", "100ms"),
                ("BEE_PUBLISH_QUEUE", "10"),
                ("BEE_SHARE_K", "1000"),
                ("BEE_ZONE", "use1-az1"),
                ("STATS_INTERVAL", "0"),
                ("BROKER_PORT", "65535"),
                ("BROKER_KEEP_ALIVE", "65535s"),
                ("BROKER_MAX_BACKOFF", "1h"),
            ],
        ),
        ("bee", vec![("BEE_PROBES", "1000"), ("BEE_INTERVAL", "1h"), ("STATS_INTERVAL", "24h"), ("BEE_SHARE_K", "1")]),
        ("bee", vec![("BEE_SHARE_K", "all"), ("BEE_ZONE", "")]),
        ("bee", vec![("BEE_SHARE_K", "0")]),
        (
            "indexer",
            vec![
                ("INDEXER_MAX_UNACKED", "65535"),
                ("INDEXER_SESSION_EXPIRY", "4294967295"),
                ("SQS_MAX_BYTES", "1024"),
                ("INFLUX_BATCH", "100000"),
                ("INDEXER_BUFFER", "1"),
                ("INDEXER_LINGER", "0s"),
                ("INDEXER_DRAIN_TIMEOUT", "1h"),
                ("STATS_INTERVAL", "100ms"),
            ],
        ),
        ("router", vec![("ROUTER_BEE_TTL", "1s"), ("BROKER_KEEP_ALIVE", "1s")]),
        // An empty BROKER_CA_PARAM is not set (a swarm whose NLB ends TLS renders it empty).
        ("router", vec![("BROKER_CA_PARAM", "")]),
    ];
    let children: Vec<_> = cases.iter().map(|(p, env)| (format!("{p} {env:?}"), spawn(p, env))).collect();
    std::thread::sleep(Duration::from_secs(3));
    let mut failures = Vec::new();
    for (what, child) in children {
        let (code, err) = finish(child, Duration::ZERO);
        if code.is_some() || err.contains("panicked") {
            failures.push(format!("{what}: exited {code:?}: {err}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `BROKER_TLS=true` without `BROKER_CA_FILE` went through rumqttc's default TLS
/// configuration, which panics on an unreadable certificate store and retries forever on
/// an empty one. Now the system bundle is read at start: missing or empty, each program
/// stops with one sentence and no panic.
#[test]
fn broker_tls_without_a_readable_ca_is_refused_at_start() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let empty = empty.path().to_str().unwrap().to_string();
    for program in ["bee", "indexer", "router"] {
        for (bundle, want) in [("/nonexistent/ca.pem", "cannot be read"), (empty.as_str(), "holds no PEM certificate")]
        {
            let c = spawn(program, &[("BROKER_TLS", "true"), ("SSL_CERT_FILE", bundle)]);
            let (code, err) = finish(c, Duration::from_secs(10));
            assert!(code.is_some_and(|c| c != 0 && c != 101), "{program} with {bundle}: {code:?} {err}");
            assert!(!err.contains("panicked"), "{program}: {err}");
            assert!(err.contains("BROKER_TLS") && err.contains(want), "{program} with {bundle}: {err}");
        }
    }
}

/// BROKER_CA_PARAM (the broker's CA from SSM) is read at start; what cannot work stops each
/// program there with one sentence (the `Error:` line; the JSON log line says the same), a
/// non-zero exit and no panic: BROKER_CA_FILE and BROKER_CA_PARAM together (naming both);
/// BROKER_CA_PARAM without BROKER_TLS; a parameter that does not exist, by name or by ARN
/// in another region (naming it and the region: on the boxes systemd starts the program
/// again until the brokers made it); a parameter holding no PEM certificate.
#[test]
fn broker_ca_param_mistakes_stop_the_program_at_start() {
    let emulator = testkit::Emulator::shared();
    let swarm = testkit::unique("caparam");
    let (missing, not_pem) = (format!("/tyrell/{swarm}/broker-ca"), format!("/tyrell/{swarm}/not-a-ca"));
    let missing_arn = format!("arn:aws:ssm:eu-west-1:123456789012:parameter{missing}");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let ssm = emulator.ssm().await;
        let put = ssm.put_parameter().name(&not_pem).value("no certificate here");
        put.r#type(aws_sdk_ssm::types::ParameterType::String).send().await.unwrap();
    });
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    let ca_file = ca_file.path().to_str().unwrap().to_string();
    // (environment, what the one sentence must say)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<String>);
    let cases: Vec<Case> = vec![
        (
            vec![("BROKER_TLS", "true"), ("BROKER_CA_FILE", &ca_file), ("BROKER_CA_PARAM", &missing)],
            ["BROKER_CA_FILE (--broker-ca-file)", "BROKER_CA_PARAM (--broker-ca-param)", "are both set"]
                .map(String::from)
                .to_vec(),
        ),
        (
            vec![("BROKER_CA_PARAM", &missing)],
            ["BROKER_CA_PARAM (--broker-ca-param)", "BROKER_TLS is off"].map(String::from).to_vec(),
        ),
        (
            vec![("BROKER_TLS", "true"), ("BROKER_CA_PARAM", &missing)],
            vec![format!("SSM parameter {missing} does not exist in us-east-1")],
        ),
        (
            vec![("BROKER_TLS", "true"), ("BROKER_CA_PARAM", &missing_arn)],
            vec![format!("SSM parameter {missing_arn} does not exist in eu-west-1")],
        ),
        (
            vec![("BROKER_TLS", "true"), ("BROKER_CA_PARAM", &not_pem)],
            vec![format!("BROKER_TLS is on, but BROKER_CA_PARAM {not_pem} holds no PEM certificate")],
        ),
    ];
    let aws: Vec<(&str, String)> = emulator.env();
    let mut running = Vec::new();
    for program in ["bee", "indexer", "router"] {
        for (env, want) in &cases {
            let mut all: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
            all.extend(env.iter().copied());
            running.push((format!("{program} {env:?}"), want, spawn(program, &all)));
        }
    }
    let mut failures = Vec::new();
    for (what, want, child) in running {
        let (code, err) = finish(child, Duration::from_secs(20));
        // The log lines are JSON; the rest is what Rust's main prints for the error.
        let said: Vec<&str> = err.lines().filter(|l| !l.starts_with('{')).collect();
        let ok = matches!(code, Some(c) if c != 0 && c != 101)
            && !err.contains("panicked")
            && said.len() == 1
            && said[0].starts_with("Error: ")
            && want.iter().all(|w| said[0].contains(w));
        if !ok {
            failures.push(format!("{what}: exit {code:?}, stderr {err:?}\n  wanted one sentence with {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{} refused badly:\n{}", failures.len(), failures.join("\n"));
}
