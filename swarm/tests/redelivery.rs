//! At-least-once delivery through the indexer: a record's MQTT message is acknowledged
//! only once the record is in SQS, so when the indexer is killed (SIGKILL: no drain) with
//! records in its buffer, the broker sends them again to the restarted indexer (same
//! client id, persistent session). Real mosquitto, the AWS emulator's SQS.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use record::{PingRecord, Status};

const MAX_UNACKED: usize = 100;

fn indexer(port: u16, sqs: &Sqs, client_id: &str, linger: &str) -> Program {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_indexer"));
    testkit::Emulator::shared().apply(&mut cmd);
    broker_env(&mut cmd, port);
    cmd.env("INDEXER_CLIENT_ID", client_id)
        .env("QUEUE_URL", &sqs.url)
        .env("INDEXER_LINGER", linger)
        .env("INDEXER_MAX_UNACKED", MAX_UNACKED.to_string())
        .env("STATS_INTERVAL", "200ms");
    Program::start(cmd, "indexer")
}

/// The indexer's latest counters (from its `stats` log lines).
fn counters(p: &Program) -> Option<serde_json::Value> {
    p.log_text().lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["message"] == "stats").then(|| serde_json::from_str(v["counters"].as_str()?).ok())?
    })
}

/// Waits until the indexer received `n` records and each is either delivered or buffered;
/// returns how many are buffered (not yet in SQS, not acknowledged).
fn settled(p: &Program, n: u64) -> u64 {
    wait_for(Duration::from_secs(10), &format!("the indexer to settle with {n} records"), || {
        let c = counters(p)?;
        let (rx, done, buf) = (c["received"].as_u64()?, c["sqs_delivered"].as_u64()?, c["sqs_buffered"].as_u64()?);
        (rx == n && done + buf == n).then_some(buf)
    })
}

fn record_line(i: usize) -> String {
    let r = PingRecord {
        id: format!("redelivery-{i}"),
        ts: "2026-11-23T10:00:00.123Z".into(),
        stack: "swarmtest".into(),
        region: "us-east-1".into(),
        agent: "bee-redelivery".into(),
        target: "127.0.0.1".into(),
        status: Status::Ok,
        loss: 0.0,
        rtt_ms: None,
        error: None,
        ..Default::default()
    };
    serde_json::to_string(&r).unwrap()
}

/// Publishes records `range` on ping/127.0.0.1, QoS 1, one message a line.
fn publish(port: u16, range: std::ops::Range<usize>) {
    let mut cmd = Command::new(testkit::system_tool("mosquitto_pub"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-u", USER, "-P", PASSWORD, "-q", "1"]).args([
        "-t",
        "ping/127.0.0.1",
        "-l",
    ]);
    let mut child = cmd.stdin(std::process::Stdio::piped()).spawn().expect("mosquitto_pub");
    let mut input = String::new();
    for i in range {
        input.push_str(&record_line(i));
        input.push('\n');
    }
    use std::io::Write;
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "mosquitto_pub failed");
}

#[test]
fn records_buffered_at_a_crash_are_redelivered() {
    let t0 = Instant::now();
    let sqs = Sqs::new("redelivery");
    let broker = broker();
    let port = broker.port;
    let client_id = testkit::unique("indexer-redelivery");

    // A linger far longer than the test: only the unacknowledged-records bound sends.
    let first = indexer(port, &sqs, &client_id, "60s");
    wait_for(Duration::from_secs(10), "the indexer to connect", || {
        first.log_text().contains("connected to the broker").then_some(())
    });
    std::thread::sleep(Duration::from_millis(700)); // its subscriptions

    // More records than the broker sends unacknowledged: the indexer must not stall.
    let mut n = 2 * MAX_UNACKED + 30;
    publish(port, 0..n);
    let mut buffered = settled(&first, n as u64);
    if buffered == 0 {
        // The last request happened to take everything: leave one record in the buffer.
        publish(port, n..n + 1);
        n += 1;
        buffered = settled(&first, n as u64);
    }
    assert!(buffered > 0 && buffered < (MAX_UNACKED / 2) as u64, "buffered {buffered}");
    let mut seen: HashSet<String> = HashSet::new();
    let mut before = 0;
    wait_for(Duration::from_secs(5), "the sent records in SQS", || {
        let ids = sqs.drain(0).into_iter().flat_map(|m| m.records).map(|r| r.id).collect::<Vec<_>>();
        before += ids.len();
        seen.extend(ids);
        (seen.len() as u64 == n as u64 - buffered).then_some(())
    });

    // Crash: the buffered records were never sent nor acknowledged.
    first.guard.signal("KILL");
    wait_for(Duration::from_secs(5), "the indexer to die", || (!first.guard.alive()).then_some(()));
    assert_eq!(seen.len() as u64, n as u64 - buffered);

    // The same client id comes back: the broker sends the unacknowledged messages again.
    let second = indexer(port, &sqs, &client_id, "300ms");
    let mut after = 0;
    wait_for(Duration::from_secs(10), "every record in SQS", || {
        let ids = sqs.drain(0).into_iter().flat_map(|m| m.records).map(|r| r.id).collect::<Vec<_>>();
        after += ids.len();
        seen.extend(ids);
        (seen.len() == n).then_some(())
    });
    let expected: HashSet<String> = (0..n).map(|i| format!("redelivery-{i}")).collect();
    assert_eq!(seen, expected);
    assert!(second.log_text().contains("connected to the broker"));
    eprintln!(
        "redelivery: {n} records, {buffered} buffered at the crash; {before} in SQS before it, {after} after; took {:?}",
        t0.elapsed()
    );
}

/// Scale-in of an indexer (SIGTERM, as its box's tyrell-drain@ sends through systemd):
/// it gives up its shared subscription before it goes, so what is published while it
/// drains goes to the other indexer and none waits in the stopped one's session (where
/// it would be lost: its box never returns); what it held reaches SQS.
#[test]
fn a_stopped_indexer_drains_and_leaves_nothing_in_its_session() {
    let sqs = Sqs::new("drain");
    let broker = broker();
    let port = broker.port;
    // A holds what it gets (a linger longer than the test: only the drain sends it).
    let a = indexer(port, &sqs, &testkit::unique("indexer-drain-a"), "60s");
    let b = indexer(port, &sqs, &testkit::unique("indexer-drain-b"), "300ms");
    for (p, name) in [(&a, "a"), (&b, "b")] {
        wait_for(Duration::from_secs(10), &format!("indexer {name} to connect"), || {
            p.log_text().contains("connected to the broker").then_some(())
        });
    }
    std::thread::sleep(Duration::from_millis(700)); // their subscriptions

    // Fewer than A's send bound (MAX_UNACKED / 2) reach A: it holds them.
    let first = 40;
    publish(port, 0..first);
    let held = wait_for(Duration::from_secs(10), "A to hold its share", || {
        let c = counters(&a)?;
        let rx = c["received"].as_u64()?;
        (rx > 0 && c["sqs_buffered"].as_u64()? == rx).then_some(rx)
    });

    // Stop A, and keep publishing while it drains and after it is gone.
    a.guard.signal("TERM");
    let total = 400;
    publish(port, first..first + 100);
    wait_for(Duration::from_secs(30), "A to exit", || (!a.guard.alive()).then_some(()));
    publish(port, first + 100..total);

    let mut seen: HashSet<String> = HashSet::new();
    wait_for(Duration::from_secs(20), "every record in SQS", || {
        seen.extend(sqs.drain(0).into_iter().flat_map(|m| m.records).map(|r| r.id));
        (seen.len() == total).then_some(())
    });
    let expected: HashSet<String> = (0..total).map(|i| format!("redelivery-{i}")).collect();
    assert_eq!(seen, expected, "records lost in the stopped indexer's session");
    let log = a.log_text();
    assert!(log.contains("everything delivered and acknowledged"), "A's drain did not finish:\n{log}");
    assert!(b.guard.alive());
    eprintln!("drain: A held {held} of the first {first}; {total} records, 0 lost without A's return");
}

/// A release's indexers (issue 11): the old one is stopped (SIGTERM) before the new one
/// has started. With `INDEXER_HANDOVER` it keeps its shared subscription until another
/// indexer is present on the broker, so what is published meanwhile is not dropped by a
/// broker with no subscriber; every record reaches SQS.
#[test]
fn a_stopping_indexer_hands_over_to_the_next_before_giving_up_its_subscription() {
    let sqs = Sqs::new("handover");
    let broker = broker();
    let port = broker.port;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_indexer"));
    testkit::Emulator::shared().apply(&mut cmd);
    broker_env(&mut cmd, port);
    cmd.env("INDEXER_CLIENT_ID", testkit::unique("indexer-old"))
        .env("QUEUE_URL", &sqs.url)
        .env("INDEXER_LINGER", "300ms")
        .env("INDEXER_HANDOVER", "30s")
        .env("STATS_INTERVAL", "200ms");
    let old = Program::start(cmd, "indexer-old");
    wait_for(Duration::from_secs(10), "the old indexer to connect", || {
        old.log_text().contains("connected to the broker").then_some(())
    });
    std::thread::sleep(Duration::from_millis(700));
    publish(port, 0..50);
    old.guard.signal("TERM");
    // The new version starts late; meanwhile results keep coming.
    publish(port, 50..150);
    std::thread::sleep(Duration::from_secs(2));
    assert!(old.guard.alive(), "the old indexer left with nobody to take its share: {}", old.log_text());
    publish(port, 150..200);
    let new = indexer(port, &sqs, &testkit::unique("indexer-new"), "300ms");
    wait_for(Duration::from_secs(40), "the old indexer to hand over and exit", || (!old.guard.alive()).then_some(()));
    publish(port, 200..300);
    let mut seen: HashSet<String> = HashSet::new();
    wait_for(Duration::from_secs(20), "every record in SQS", || {
        seen.extend(sqs.drain(0).into_iter().flat_map(|m| m.records).map(|r| r.id));
        (seen.len() == 300).then_some(())
    });
    let log = old.log_text();
    assert!(log.contains("handed over") && log.contains("everything delivered and acknowledged"), "{log}");
    assert!(new.guard.alive());
}
