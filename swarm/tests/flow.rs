//! bee → mosquitto → indexer → SQS (the emulator) and InfluxDB, with the real binaries,
//! for targets on loopback; malformed messages are skipped without crashing anyone.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use record::{Encoding, PingRecord, Status};
use testkit::servers::Influxd;

fn indexer(port: u16, sqs: &Sqs, influx: &Influxd) -> Program {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_indexer"));
    testkit::Emulator::shared().apply(&mut cmd);
    broker_env(&mut cmd, port);
    cmd.env("INDEXER_CLIENT_ID", testkit::unique("indexer"))
        .env("QUEUE_URL", &sqs.url)
        .env("INFLUX_URL", influx.url())
        .env("INFLUX_DB", "tyrell")
        .env("INDEXER_LINGER", "300ms")
        .env("STATS_INTERVAL", "2s");
    Program::start(cmd, "indexer")
}

#[test]
fn bee_to_sqs_and_influxdb_on_loopback() {
    let t0 = Instant::now();
    let sqs = Sqs::new("pings");
    let broker = broker();
    let influx = Influxd::start();
    let port = broker.port;

    // The retained target list the bee finds when it connects (space-separated, as the
    // original tools publish it), including a name that never resolves.
    mqtt_pub(port, "watch", b"127.0.0.1 127.0.0.2 ::1 no-such-host.invalid", true);
    let indexer = indexer(port, &sqs, &influx);
    let agent = testkit::unique("bee-flow");
    let bee = bee(port, &agent);

    // Every target shows up in SQS: loopback answers, the bad name is an error record.
    let mut latest: HashMap<String, PingRecord> = HashMap::new();
    let mut messages = 0;
    wait_for(Duration::from_secs(60), "records of all four targets in SQS", || {
        let (recs, n) = drain(&sqs);
        messages += n;
        for r in recs {
            latest.insert(r.target.clone(), r);
        }
        (latest.len() == 4).then_some(())
    });
    for t in ["127.0.0.1", "127.0.0.2", "::1"] {
        let r = &latest[t];
        assert_eq!(
            (r.status, r.loss, r.agent.as_str(), r.stack.as_str()),
            (Status::Ok, 0.0, agent.as_str(), "swarmtest"),
            "{r:?}"
        );
        let rtt = r.rtt_ms.expect("loopback answers");
        assert!(rtt.min > 0.0 && rtt.min <= rtt.avg && rtt.avg <= rtt.max && rtt.max < 100.0, "{rtt:?}");
    }
    let bad = &latest["no-such-host.invalid"];
    assert_eq!((bad.status, bad.loss), (Status::Error, 1.0));
    assert!(bad.error.as_deref().unwrap().contains("resolve"), "{bad:?}");
    assert!(messages >= 1);

    // The same results in InfluxDB, tagged by target and agent.
    let rows = wait_for(Duration::from_secs(30), "points in InfluxDB", || {
        let rows = influx.rows("tyrell", "SELECT last(loss), last(rtt_avg) FROM ping GROUP BY target, agent");
        (rows.len() == 4).then_some(rows)
    });
    for row in &rows {
        assert_eq!(row["agent"], agent.as_str());
        let target = row["target"].as_str().unwrap();
        if target == "no-such-host.invalid" {
            assert_eq!(row["last"], 1.0);
        } else {
            assert_eq!(row["last"], 0.0, "{row:?}");
            assert!(row["last_1"].as_f64().unwrap() > 0.0, "{row:?}");
        }
    }

    // Malformed messages are logged and skipped; nobody crashes.
    mqtt_pub(port, "ping/127.0.0.1", b"this is not json", false);
    mqtt_pub(port, "ping/127.0.0.1", br#"{"id":"x","agent":"a"}"#, false);
    mqtt_pub(port, "watch", b"127.0.0.1 bad/target", true);
    mqtt_pub(port, "watch", b"[1, 2]", true);
    wait_for(Duration::from_secs(10), "the indexer to log the malformed messages", || {
        (indexer.log_text().matches("malformed ping message skipped").count() >= 2).then_some(())
    });
    wait_for(Duration::from_secs(10), "the bee to log the malformed watch payloads", || {
        (bee.log_text().matches("malformed watch payload skipped").count() >= 2).then_some(())
    });
    // ... and the bee kept its targets: fresh results keep flowing for all of them.
    let mut fresh = std::collections::HashSet::new();
    wait_for(Duration::from_secs(20), "fresh records after the malformed messages", || {
        fresh.extend(drain(&sqs).0.into_iter().map(|r| r.target));
        (fresh.len() == 4).then_some(())
    });
    assert!(
        testkit::servers::running(bee.guard.pid) && testkit::servers::running(indexer.guard.pid),
        "bee or indexer died"
    );
    assert!(broker.alive());

    // A valid new list replaces the old one.
    mqtt_pub(port, "watch", br#"["127.0.0.3"]"#, true);
    std::thread::sleep(Duration::from_secs(3));
    drain(&sqs);
    let mut after = std::collections::HashSet::new();
    wait_for(Duration::from_secs(20), "records of the new target only", || {
        after.extend(drain(&sqs).0.into_iter().map(|r| r.target));
        after.contains("127.0.0.3").then_some(())
    });
    assert_eq!(after.into_iter().collect::<Vec<_>>(), vec!["127.0.0.3".to_string()]);
    eprintln!("flow test took {:?}", t0.elapsed());
}

/// (records, messages) taken from the queue, each message checked to be in the indexer's
/// default encoding and within the SQS limit.
fn drain(sqs: &Sqs) -> (Vec<PingRecord>, usize) {
    let got = sqs.drain(1);
    for m in &got {
        assert_eq!(m.encoding, Encoding::GzipBase64, "the indexer's default encoding");
        assert!(m.body_len <= record::MAX_MESSAGE_BYTES);
    }
    let n = got.len();
    (got.into_iter().flat_map(|m| m.records).collect(), n)
}
