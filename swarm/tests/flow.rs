//! bee → mosquitto → indexer → SQS (the emulator) and InfluxDB, with the real binaries,
//! for targets on loopback; malformed messages are skipped without crashing anyone.

mod common;

use std::collections::{BTreeSet, HashMap};
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
        // Schema 2: percentiles within the range, jitter, the reply TTL (Linux sends
        // with 64; loopback has no hop), the address, the lateness, the clock's state.
        let (p50, p90, p99, jitter) = (rtt.p50.unwrap(), rtt.p90.unwrap(), rtt.p99.unwrap(), rtt.jitter.unwrap());
        assert!(rtt.min <= p50 && p50 <= p90 && p90 <= p99 && p99 <= rtt.max && jitter >= 0.0, "{rtt:?}");
        assert_eq!(
            (r.schema, r.sent, r.ttl, r.addr.as_deref(), r.resolve_ms),
            (2, Some(3), Some(64), Some(t), None),
            "{r:?}"
        );
        assert!(r.late_ms.is_some_and(|l| (0.0..1000.0).contains(&l)), "{r:?}");
        assert_eq!(r.clock_synced, swarm::ping::clock_synced(), "{r:?}");
    }
    let bad = &latest["no-such-host.invalid"];
    assert_eq!((bad.status, bad.loss), (Status::Error, 1.0));
    assert!(bad.error.as_deref().unwrap().contains("resolve"), "{bad:?}");
    assert_eq!((bad.schema, bad.addr.as_deref(), bad.sent), (2, None, None), "{bad:?}");
    assert!(bad.resolve_ms.is_some_and(|ms| ms >= 0.0), "the time the failed lookup took: {bad:?}");
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

    // The new fields in InfluxDB.
    let q = "SELECT rtt_p50, rtt_p99, rtt_jitter, ttl, schema, sent, addr, late_ms, clock_synced FROM ping \
             WHERE target = '::1' ORDER BY time DESC LIMIT 1";
    let row = &influx.rows("tyrell", q)[0];
    assert_eq!(
        (row["ttl"].as_i64(), row["schema"].as_i64(), row["sent"].as_i64()),
        (Some(64), Some(2), Some(3)),
        "{row:?}"
    );
    assert_eq!(row["addr"], "::1");
    assert!(
        row["rtt_p50"].as_f64().unwrap() > 0.0
            && row["rtt_jitter"].as_f64().is_some()
            && row["late_ms"].as_f64().is_some()
    );
    assert!(row["clock_synced"].is_boolean(), "{row:?}");

    // Records from a second region (eu-west-1) and from an older bee without one, beside
    // the bee's (us-east-1), for the dashboard's per-region panels.
    let (eu, unplaced) = (testkit::unique("bee-eu"), testkit::unique("bee-unplaced"));
    for (agent, region, loss, rtt) in [(&eu, "eu-west-1", 0.25, 7.0), (&unplaced, "", 0.5, 3.0)] {
        let r = PingRecord {
            id: testkit::unique("rec"),
            ts: swarm::now_ts(),
            stack: "swarmtest".into(),
            region: region.into(),
            agent: agent.clone(),
            target: "127.0.0.1".into(),
            loss,
            rtt_ms: record::Rtt::from_samples(&[rtt]),
            ..Default::default()
        };
        mqtt_pub(port, "ping/127.0.0.1", &serde_json::to_vec(&r).unwrap(), false);
    }
    wait_for(Duration::from_secs(30), "the other regions' points in InfluxDB", || {
        let q = format!("SELECT count(loss) FROM ping WHERE agent = '{eu}' OR agent = '{unplaced}' GROUP BY agent");
        (influx.rows("tyrell", &q).len() == 2).then_some(())
    });

    // Every panel of the Grafana dashboard (roles/metrics/dashboard.json) asks InfluxDB
    // something it answers from what the indexer wrote: each query with Grafana's
    // variables filled in runs without error, and every `ping` panel but the one counting
    // unsynchronised clocks (which counts none when this machine's clock is synchronised)
    // finds points. `$region` is filled in as the dashboard's All (`.*`, which takes in
    // the points without a region tag) and as one region; the per-region panels show one
    // series per region, the blank one (no tag) included, and only the region chosen.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(testkit::workspace_root().join("roles/metrics/dashboard.json")).unwrap(),
    )
    .unwrap();
    let region_var = dash["templating"]["list"].as_array().unwrap().iter().find(|v| v["name"] == "region");
    assert_eq!(region_var.map(|v| &v["allValue"]), Some(&serde_json::json!(".*")), "the region variable's All");
    let grafana = |q: &str, region: &str| {
        q.replace("$target", ".*")
            .replace("$agent", ".*")
            .replace("$region", region)
            .replace("$timeFilter", "time > now() - 1h")
            .replace("$__interval", "10s")
    };
    // The regions of a query's series, and its values that are numbers.
    let series = |q: &str| -> (BTreeSet<String>, Vec<f64>) {
        let v = influx.query("tyrell", q);
        assert!(v["results"][0]["error"].is_null(), "{q}: {v}");
        let mut regions = BTreeSet::new();
        let mut values = Vec::new();
        for s in v["results"][0]["series"].as_array().into_iter().flatten() {
            regions.insert(s["tags"]["region"].as_str().unwrap_or("(no region in the grouping)").to_string());
            let rows = s["values"].as_array().unwrap();
            values.extend(rows.iter().filter_map(|r| r[1].as_f64()));
        }
        (regions, values)
    };
    let set = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let mut per_region = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        let title = &panel["title"];
        let raw = panel["targets"][0]["query"].as_str().unwrap();
        let q = grafana(raw, ".*");
        let v = influx.query("tyrell", &q);
        assert!(v["results"][0]["error"].is_null(), "{title}: {q}: {v}");
        let unsynced_only = q.contains("\"clock_synced\" = false");
        if q.contains("FROM \"ping\"") && !(unsynced_only && swarm::ping::clock_synced() == Some(true)) {
            let points = influx
                .rows("tyrell", &q)
                .iter()
                .filter(|r| r.iter().any(|(k, v)| k != "time" && v.is_number()))
                .count();
            assert!(points > 0, "{title}: no points for {q}");
        }
        if q.contains("FROM \"ping\"") {
            assert!(raw.contains("\"region\" =~ /^$region$/"), "{title}: not filtered by $region");
        }
        if raw.ends_with("GROUP BY time($__interval), \"region\" fill(null)") || raw.contains("\"region\" fill(0)") {
            per_region.push(title.as_str().unwrap().to_string());
            assert_eq!(series(&q).0, set(&["", "eu-west-1", "us-east-1"]), "{title}: {q}");
            let (regions, values) = series(&grafana(raw, "eu-west-1"));
            assert_eq!(regions, set(&["eu-west-1"]), "{title}");
            let expected = if raw.contains("rtt_avg") {
                7.0
            } else if raw.contains("\"loss\") * 100") {
                25.0
            } else {
                1.0 // the count of records
            };
            assert!(values.contains(&expected), "{title}: eu-west-1's {values:?} lack {expected}");
            assert!(values.iter().all(|v| *v == expected || *v == 0.0), "{title}: {values:?}");
        } else if q.contains("FROM \"ping\"") {
            // The other panels filter by region too: eu-west-1 alone is its one agent.
            let agents: BTreeSet<String> = influx
                .rows("tyrell", &grafana(raw, "eu-west-1"))
                .iter()
                .filter_map(|r| r.get("agent").and_then(|a| a.as_str()).map(str::to_string))
                .collect();
            assert!(agents.is_subset(&set(&[eu.as_str()])), "{title}: {agents:?}");
            if raw.contains("mean(\"rtt_avg\")") {
                assert_eq!(agents, set(&[eu.as_str()]), "{title}");
            }
        }
    }
    assert!(per_region.len() >= 2, "the dashboard's per-region panels: {per_region:?}");

    // A schema-1 record (the original swarm's form: no schema, none of the new fields)
    // still flows to SQS and to InfluxDB, as schema 1.
    let old = br#"{"id":"old-schema-1","ts":"2026-11-23T10:00:00.123Z","stack":"swarmtest","region":"r","agent":"bee-old","target":"192.0.2.9","status":"ok","loss":0.5,"rtt_ms":{"min":1.0,"avg":1.5,"max":2.0,"stddev":0.5},"error":null}"#;
    mqtt_pub(port, "ping/192.0.2.9", old, false);
    let r = wait_for(Duration::from_secs(30), "the schema-1 record in SQS", || {
        drain(&sqs).0.into_iter().find(|r| r.id == "old-schema-1")
    });
    assert_eq!((r.schema, r.loss, r.rtt_ms.unwrap().avg, r.rtt_ms.unwrap().p50, r.ttl), (1, 0.5, 1.5, None, None));
    let rows = wait_for(Duration::from_secs(30), "the schema-1 point in InfluxDB", || {
        let rows = influx.rows("tyrell", "SELECT loss, rtt_avg, schema, ttl FROM ping WHERE target = '192.0.2.9'");
        (!rows.is_empty()).then_some(rows)
    });
    assert_eq!(
        (rows[0]["loss"].as_f64(), rows[0]["rtt_avg"].as_f64(), rows[0]["schema"].as_i64()),
        (Some(0.5), Some(1.5), Some(1))
    );
    assert!(rows[0]["ttl"].is_null(), "{:?}", rows[0]);

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
