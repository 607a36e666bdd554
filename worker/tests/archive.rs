//! The real `tyrell-worker` against the emulator: records in, gzip NDJSON objects out.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{bodies, records, Fixture, Worker};
use record::Encoding;

/// Checks a record object key: `PREFIX/YYYY/MM/DD/HH/swarm1-w1-YYYYMMDDTHHMMSSZ-UUID.ndjson.gz`,
/// returning its (hour directory, first-ts) parts.
fn split_key<'k>(prefix: &str, key: &'k str) -> (&'k str, &'k str) {
    let rest = key.strip_prefix(prefix).unwrap_or_else(|| panic!("{key} outside {prefix}"));
    let (dir, name) = rest.split_at(14);
    let d = dir.as_bytes();
    assert!(
        dir.len() == 14
            && [4, 7, 10, 13].iter().all(|&i| d[i] == b'/')
            && dir.replace('/', "").bytes().all(|b| b.is_ascii_digit()),
        "bad hour directory in {key}"
    );
    let name = name.strip_prefix("swarm1-w1-").unwrap_or_else(|| panic!("bad name in {key}"));
    let (first, uuid) = name.split_at(16);
    assert!(first.as_bytes()[8] == b'T' && first.ends_with('Z'), "bad first-ts in {key}");
    assert_eq!(uuid.len(), 1 + 36 + ".ndjson.gz".len(), "bad uuid in {key}");
    (dir, first)
}

#[tokio::test]
async fn archives_every_record_once_under_its_hour() {
    let f = Fixture::new(30, Some(5)).await;
    // 3000 records over ~2.5 hours, 15 to a message: many messages span two hours.
    let recs = records("r", 3000, "2026-11-23T10:30:00", Duration::from_secs(3));
    let msgs = bodies(&recs, 15);
    f.send(&msgs).await;

    let started = Instant::now();
    let mut w = Worker::start(f.worker(&["--drain", "--prefix", "/archive/"]));
    let status = w.wait(Duration::from_secs(90));
    assert!(status.success(), "worker failed: {status}\n{}", w.log_text());
    eprintln!("drained {} messages in {:?}", msgs.len(), started.elapsed());

    let mut seen = HashSet::new();
    let mut hours = HashSet::new();
    for (key, recs) in f.archived("archive/").await {
        let (dir, first) = split_key("archive/", &key);
        hours.insert(dir.to_string());
        for r in &recs {
            let (y, mo, d, h) = r.hour().unwrap();
            assert_eq!(format!("{y:04}/{mo:02}/{d:02}/{h:02}/"), dir, "record {} in {key}", r.id);
            assert!(seen.insert(r.id.clone()), "record {} archived twice", r.id);
        }
        let min = recs.iter().map(|r| r.ts[..19].replace(['-', ':'], "")).min().unwrap();
        assert_eq!(format!("{min}Z"), first, "first-ts of {key}");
    }
    assert_eq!(seen.len(), recs.len(), "every record archived");
    assert_eq!(hours.len(), 3, "10:30..13:00 is hours 10, 11, 12: {hours:?}");
    assert_eq!(f.depth(&f.queue_url).await, (0, 0), "every message deleted");
    let c = w.exit_counters();
    assert_eq!(
        (c["records"].as_u64(), c["deleted"].as_u64(), c["malformed"].as_u64()),
        (Some(3000), Some(200), Some(0))
    );
}

#[tokio::test]
async fn malformed_messages_go_to_errors_and_never_block() {
    let f = Fixture::new(30, Some(3)).await;
    let good = records("g", 200, "2026-11-23T10:00:00", Duration::from_millis(100));
    let line = serde_json::to_string(&good[0]).unwrap();
    let bad: Vec<(String, Encoding)> = vec![
        ("!!! not base64 !!!".into(), Encoding::GzipBase64),
        ("aGVsbG8gd29ybGQ=".into(), Encoding::GzipBase64), // base64 of "hello world": not gzip
        (format!("{line}\n{{\"id\": truncated\n"), Encoding::Ndjson),
        ("\n\n".into(), Encoding::Ndjson),
    ];
    let mut msgs = bodies(&good, 20);
    for (i, b) in bad.iter().enumerate() {
        msgs.insert(i * 3, b.clone());
    }
    f.send(&msgs).await;
    // An encoding nobody knows.
    let attr =
        aws_sdk_sqs::types::MessageAttributeValue::builder().data_type("String").string_value("zstd").build().unwrap();
    f.sqs
        .send_message()
        .queue_url(&f.queue_url)
        .message_body("(zstd)")
        .message_attributes(record::ENCODING_ATTRIBUTE, attr)
        .send()
        .await
        .unwrap();

    let mut w = Worker::start(f.worker(&["--drain"]));
    let status = w.wait(Duration::from_secs(60));
    assert!(status.success(), "worker failed: {status}\n{}", w.log_text());

    let counts = f.id_counts("").await;
    assert_eq!(counts.len(), 200, "every good record archived");
    assert!(counts.values().all(|&n| n == 1), "each once");
    let errors = f.objects("errors/").await;
    assert_eq!(
        errors.len(),
        5,
        "one error object per malformed message: {:?}",
        errors.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    let mut archived_bodies = HashSet::new();
    for (key, bytes) in &errors {
        assert!(key.starts_with("errors/") && key.ends_with(".json") && key.split('/').count() == 6, "{key}");
        let env: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        assert!(!env["reason"].as_str().unwrap().is_empty(), "{env}");
        assert!(env["message_id"].is_string());
        archived_bodies.insert(env["body"].as_str().unwrap().to_string());
    }
    for (body, _) in &bad {
        assert!(archived_bodies.contains(body), "raw body {body:?} archived untouched");
    }
    assert!(archived_bodies.contains("(zstd)"));
    let dlq = f.dlq_url.clone().unwrap();
    assert_eq!(f.depth(&f.queue_url).await, (0, 0), "malformed messages are deleted once archived");
    assert_eq!(f.depth(&dlq).await, (0, 0), "nothing needed the dead-letter queue");
}

#[tokio::test]
async fn a_message_that_cannot_be_archived_reaches_the_dead_letter_queue() {
    let f = Fixture::new(1, Some(2)).await;
    f.send(&[("{not json".into(), Encoding::Ndjson)]).await;
    // A bucket that does not exist: every PUT of the error object fails.
    // The shortest visibility timeout the worker accepts, so the message comes back quickly.
    let mut cmd = f.worker(&["--visibility-timeout", "2"]);
    cmd.args(["--bucket", "no-such-bucket-here"]);
    let mut w = Worker::start(cmd);
    let dlq = f.dlq_url.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(45);
    while f.depth(&dlq).await.0 == 0 {
        assert!(Instant::now() < deadline, "message never reached the DLQ; log:\n{}", w.log_text());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    w.signal(libc::SIGTERM);
    assert!(w.wait(Duration::from_secs(15)).success(), "{}", w.log_text());
    assert_eq!(f.depth(&f.queue_url).await, (0, 0));
    assert!(w.exit_counters()["errors"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn sigterm_flushes_what_is_buffered_and_exits() {
    let f = Fixture::new(30, None).await;
    let recs = records("t", 600, "2026-11-23T23:59:00", Duration::from_millis(200));
    f.send(&bodies(&recs, 20)).await;
    // Nothing would flush for 5 minutes on its own.
    let mut w = Worker::start(f.worker(&["--flush-seconds", "300"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.depth(&f.queue_url).await != (0, 30) {
        assert!(Instant::now() < deadline, "worker never took the messages; log:\n{}", w.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(f.archived("").await.is_empty(), "nothing flushed before the signal");
    let term = Instant::now();
    w.signal(libc::SIGTERM);
    let status = w.wait(Duration::from_secs(20));
    eprintln!("exited {:?} after SIGTERM", term.elapsed());
    assert!(status.success(), "{status}\n{}", w.log_text());
    let counts = f.id_counts("").await;
    assert_eq!(counts.len(), 600);
    assert!(counts.values().all(|&n| n == 1));
    // 23:59:00 + 600 × 0.2 s crosses midnight: two days, two hours.
    let keys: HashSet<String> = f.archived("").await.into_iter().map(|(k, _)| k[..14].to_string()).collect();
    assert_eq!(keys, HashSet::from(["2026/11/23/23/".to_string(), "2026/11/24/00/".to_string()]));
    assert_eq!(f.depth(&f.queue_url).await, (0, 0));
}

#[tokio::test]
async fn held_messages_stay_invisible_to_a_second_worker() {
    // A 5 s visibility timeout and a 12 s buffer: without renewals the second worker would
    // receive (and archive) the first one's messages again. (Renewals come at half-life, so
    // a loaded machine still has 2.5 s of margin; 2 s timeouts proved flaky under load.)
    let f = Fixture::new(5, None).await;
    let recs = records("v", 500, "2026-11-23T08:00:00", Duration::from_millis(10));
    f.send(&bodies(&recs, 10)).await;
    let knobs = ["--visibility-timeout", "5", "--flush-seconds", "12"];
    let mut a = Worker::start(f.worker(&knobs));
    let mut cmd = f.worker(&knobs);
    cmd.args(["--worker-id", "w2"]);
    let mut b = Worker::start(cmd);
    let deadline = Instant::now() + Duration::from_secs(45);
    while f.depth(&f.queue_url).await != (0, 0) {
        assert!(Instant::now() < deadline, "queue never drained; logs:\n{}\n{}", a.log_text(), b.log_text());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for w in [&mut a, &mut b] {
        w.signal(libc::SIGTERM);
        assert!(w.wait(Duration::from_secs(20)).success(), "{}", w.log_text());
    }
    let counts = f.id_counts("").await;
    assert_eq!(counts.len(), 500);
    let dups: usize = counts.values().map(|n| n - 1).sum();
    assert_eq!(dups, 0, "no record archived twice");
    let renewals: u64 = [&a, &b].iter().map(|w| w.exit_counters()["sqs_visibility"].as_u64().unwrap()).sum();
    assert!(renewals > 0, "held messages had their visibility renewed");
}

#[tokio::test]
async fn drain_exits_at_once_on_an_empty_queue() {
    let f = Fixture::new(30, None).await;
    let mut w = Worker::start(f.worker(&["--drain"]));
    let status = w.wait(Duration::from_secs(20));
    assert!(status.success(), "{}", w.log_text());
    assert!(w.started.elapsed() < Duration::from_secs(10));
    assert!(f.objects("").await.is_empty());
}
