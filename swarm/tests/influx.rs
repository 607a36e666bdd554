//! The indexer's InfluxDB writer against the real influxd (Debian's 1.x): what the line
//! protocol can carry comes back exactly as it went in, what it cannot is handled the
//! way Telegraf does, and a partial write counts only the refused points as rejected.

use std::sync::Arc;
use std::time::Duration;

use record::{PingRecord, Status};
use swarm::influx::{line, Influx, InfluxSink};
use swarm::sink::Buffer;
use testkit::servers::Influxd;

fn rec(i: usize, stack: &str, error: &str) -> PingRecord {
    PingRecord {
        id: format!("r{i}"),
        ts: format!("2026-11-23T10:00:{:02}.000Z", i),
        stack: stack.into(),
        region: format!("region {i}"),
        agent: format!("bee-{i}"),
        target: "127.0.0.1".into(),
        status: Status::Error,
        loss: 1.0,
        rtt_ms: None,
        error: Some(error.into()),
        ..Default::default()
    }
}

const LATER: i64 = 1_900_000_000_000;

#[test]
fn awkward_strings_round_trip_through_influxd() {
    let influx = Influxd::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = Influx::from_url(&influx.url(), "roundtrip").unwrap();
    rt.block_on(client.create_database()).unwrap();
    // (value, what InfluxDB must hold for it as a tag, as a string field)
    let cases: &[(&str, &str, &str)] = &[
        (r"C:\", "C:", r"C:\"), // a tag cannot end in a backslash: stripped, as Telegraf does
        (r"sw\x", r"sw\x", r"sw\x"),
        ("a b  c", "a b  c", "a b  c"),
        ("a,b", "a,b", "a,b"),
        ("a=b", "a=b", "a=b"),
        (r#"say "hi""#, r#"say "hi""#, r#"say "hi""#),
        (r"x\ y,z\=w", r"x\ y,z\=w", r"x\ y,z\=w"),
        (r#"all: \ , = " \\ end"#, r#"all: \ , = " \\ end"#, r#"all: \ , = " \\ end"#),
        // Newlines cannot be carried: written as the two characters \n, as Telegraf does.
        ("two\nlines", r"two\nlines", r"two\nlines"),
    ];
    let records: Vec<PingRecord> = cases.iter().enumerate().map(|(i, (v, _, _))| rec(i, v, v)).collect();
    let body: Vec<String> = records.iter().map(|r| line(r, LATER).unwrap()).collect();
    rt.block_on(client.write(&body.join("\n"))).unwrap_or_else(|e| panic!("write refused: {e:?}\n{}", body.join("\n")));
    let rows = influx.rows("roundtrip", r#"SELECT "error", "stack", "region", "agent" FROM ping"#);
    assert_eq!(rows.len(), cases.len(), "{rows:?}");
    for (i, (given, tag, field)) in cases.iter().enumerate() {
        let row = rows.iter().find(|r| r["agent"] == format!("bee-{i}").as_str()).expect("the point is there");
        assert_eq!(row["stack"].as_str(), Some(*tag), "tag of {given:?}");
        assert_eq!(row["error"].as_str(), Some(*field), "string field of {given:?}");
        assert_eq!(row["region"].as_str(), Some(format!("region {i}").as_str()));
    }
}

/// Runs an InfluxSink over `lines` (one write) and returns (delivered, rejected).
fn through_the_sink(rt: &tokio::runtime::Runtime, buffer: &Arc<Buffer>, lines: &[String]) -> (u64, u64) {
    let s = &buffer.stats;
    let before = (s.delivered.get(), s.rejected.get());
    for l in lines {
        buffer.push(l.clone());
    }
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while s.delivered.get() + s.rejected.get() < before.0 + before.1 + lines.len() as u64 {
            assert!(tokio::time::Instant::now() < deadline, "the sink did not account for every point");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (s.delivered.get() - before.0, s.rejected.get() - before.1)
}

#[test]
fn a_partial_write_counts_only_the_refused_points() {
    let influx = Influxd::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = Influx::from_url(&influx.url(), "partial").unwrap();
    let buffer = Arc::new(Buffer::new("influxdb", 1000));
    let sink =
        InfluxSink { influx: client.clone(), batch: 5000, linger: Duration::from_millis(200), buffer: buffer.clone() };
    rt.spawn(sink.run());
    let good = |i: usize| line(&rec(i, "s", "e"), LATER).unwrap();

    // `loss` is a float field once the first point is in.
    assert_eq!(through_the_sink(&rt, &buffer, &[good(0)]), (1, 0));
    // A field type conflict: InfluxDB stores the other two ("partial write ... dropped=1").
    let conflict = r#"ping,agent=bee-x,target=127.0.0.1,status=ok loss="lots" 1795428000000"#.to_string();
    assert_eq!(through_the_sink(&rt, &buffer, &[good(1), conflict, good(2)]), (2, 1));
    // Unparsable lines among good ones ("partial write: unable to parse ... dropped=0").
    let broken = ["ping,agent=bee-y loss= 1795428000000".to_string(), "ping,agent=bee-z,target= loss=1 5".to_string()];
    assert_eq!(through_the_sink(&rt, &buffer, &[good(3), broken[0].clone(), good(4), broken[1].clone()]), (2, 2));
    // Nothing writable: every point is rejected.
    assert_eq!(through_the_sink(&rt, &buffer, &[broken[0].clone()]), (0, 1));
    // What the counters say is what InfluxDB holds.
    let rows = influx.rows("partial", "SELECT count(loss) FROM ping");
    assert_eq!(rows[0]["count"], 5, "{rows:?}");
}

#[test]
fn answers_and_failures_are_classified() {
    use swarm::influx::WriteError;
    let influx = Influxd::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A missing database, with a body large enough (5,000 points, ~1 MB) that influxd
    // answers before it has read it all: still "no database", not a network failure.
    let missing = Influx::from_url(&influx.url(), "not_created").unwrap();
    let big: Vec<String> = (0..5000).map(|i| line(&rec(i % 60, &"s".repeat(150), "e"), LATER).unwrap()).collect();
    match rt.block_on(missing.write(&big.join("\n"))) {
        Err(WriteError::NoDatabase) => {}
        other => panic!("expected NoDatabase, got {other:?}"),
    }
    // Created, the same client writes (its connection to influxd is reused or renewed).
    rt.block_on(missing.create_database()).unwrap();
    rt.block_on(missing.write(&big[..10].join("\n"))).unwrap();
    // Nobody listening: a transient error that says why.
    let port = testkit::free_port();
    let nobody = Influx::from_url(&format!("http://127.0.0.1:{port}"), "t").unwrap();
    match rt.block_on(nobody.write(&big[0])) {
        Err(WriteError::Transient(e)) => assert!(e.contains("Connection refused"), "{e}"),
        other => panic!("expected a transient error, got {other:?}"),
    }
}
