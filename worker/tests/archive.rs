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
    // Messages none of whose lines can be read: archived whole.
    let bad: Vec<(String, Encoding)> = vec![
        ("!!! not base64 !!!".into(), Encoding::GzipBase64),
        ("aGVsbG8gd29ybGQ=".into(), Encoding::GzipBase64), // base64 of "hello world": not gzip
        ("\n\n".into(), Encoding::Ndjson),
    ];
    // A good record and a truncated line: only the truncated line is set aside.
    let extra = serde_json::to_string(&records("x", 1, "2026-11-23T10:00:00", Duration::ZERO)[0]).unwrap();
    let partial = (format!("{extra}\n{{\"id\": truncated\n"), Encoding::Ndjson);
    let mut msgs = bodies(&good, 20);
    for (i, b) in bad.iter().chain([&partial]).enumerate() {
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
    assert_eq!(counts.len(), 201, "every good record archived, the one beside the truncated line too");
    assert!(counts.values().all(|&n| n == 1), "each once");
    let errors = f.objects("errors/").await;
    assert_eq!(
        errors.len(),
        5,
        "one error object per malformed message: {:?}",
        errors.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    let mut archived_bodies = HashSet::new();
    let mut set_aside = Vec::new();
    for (key, bytes) in &errors {
        assert!(key.starts_with("errors/") && key.ends_with(".json") && key.split('/').count() == 6, "{key}");
        let env: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        assert!(!env["reason"].as_str().unwrap().is_empty(), "{env}");
        assert!(env["message_id"].is_string());
        match env["body"].as_str() {
            Some(body) => {
                archived_bodies.insert(body.to_string());
            }
            None => set_aside
                .extend(env["lines"].as_array().unwrap().iter().map(|l| l["raw"].as_str().unwrap().to_string())),
        }
    }
    assert_eq!(set_aside, ["{\"id\": truncated"], "only the bad line is set aside, not its good neighbour");
    for (body, _) in &bad {
        assert!(archived_bodies.contains(body), "raw body {body:?} archived untouched");
    }
    assert!(archived_bodies.contains("(zstd)"));
    let dlq = f.dlq_url.clone().unwrap();
    assert_eq!(f.depth(&f.queue_url).await, (0, 0), "malformed messages are deleted once archived");
    assert_eq!(f.depth(&dlq).await, (0, 0), "nothing needed the dead-letter queue");
    let c = w.exit_counters();
    assert_eq!(
        (c["malformed"].as_u64(), c["set_aside"].as_u64(), c["records"].as_u64()),
        (Some(4), Some(1), Some(201))
    );
}

/// One NDJSON line: a record with the given id and `ts`.
fn line(id: &str, ts: &str) -> String {
    let mut r = records(id, 1, "2026-11-23T10:00:00", Duration::ZERO).remove(0);
    (r.id, r.ts) = (id.to_string(), ts.to_string());
    serde_json::to_string(&r).unwrap()
}

#[tokio::test]
async fn one_bad_line_spoils_only_itself() {
    let f = Fixture::new(30, Some(3)).await;
    // The message from the field: two good records and one whose ts has a +00:00 offset,
    // which is valid RFC 3339 (§5.6) and belongs to 11:00 UTC.
    let field = [
        line("f1", "2026-11-23T10:15:00.000Z"),
        line("f2", "2026-11-23T10:45:00.000Z"),
        line("f3", "2026-11-23T11:30:00.000+00:00"),
    ]
    .join("\n");
    // Two good records (one an hour ahead of UTC) and one line that is not RFC 3339 (hour
    // 25), gzip-compressed as the indexer sends them: only that line is set aside.
    let bad_line = line("b3", "2026-11-23T25:30:00.000+00:00");
    let mixed = format!(
        "{}\n{bad_line}\n{}\n",
        line("b1", "2026-11-23T10:20:00.000Z"),
        line("b2", "2026-11-23T12:50:00.000+01:00")
    );
    f.send(&[(field, Encoding::Ndjson), (record::encode_body(&mixed, Encoding::GzipBase64), Encoding::GzipBase64)])
        .await;

    let mut w = Worker::start(f.worker(&["--drain"]));
    let status = w.wait(Duration::from_secs(60));
    assert!(status.success(), "worker failed: {status}\n{}", w.log_text());

    let mut where_: Vec<(String, String)> = Vec::new();
    for (key, recs) in f.archived("").await {
        let (dir, first) = split_key("", &key);
        for r in &recs {
            where_.push((r.id.clone(), dir.to_string()));
        }
        // The key's first-ts is the earliest record in UTC, whatever offsets the lines carry.
        let utc = |ts: &str| {
            let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).unwrap();
            t.to_offset(time::UtcOffset::UTC)
        };
        let t = recs.iter().map(|r| utc(&r.ts)).min().unwrap();
        let utc = format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        assert_eq!(utc, first, "first-ts of {key}");
    }
    where_.sort();
    let ten = "2026/11/23/10/".to_string();
    let eleven = "2026/11/23/11/".to_string();
    assert_eq!(
        where_,
        [
            ("b1".to_string(), ten.clone()),
            ("b2".to_string(), eleven.clone()),
            ("f1".to_string(), ten.clone()),
            ("f2".to_string(), ten),
            ("f3".to_string(), eleven),
        ],
        "every good record once, in its UTC hour; the bad line in none"
    );

    let errors = f.objects("errors/").await;
    assert_eq!(errors.len(), 1, "{:?}", errors.iter().map(|e| &e.0).collect::<Vec<_>>());
    let env: serde_json::Value = serde_json::from_slice(&errors[0].1).unwrap();
    assert!(env.get("body").is_none(), "not the whole body: {env}");
    let lines = env["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{env}");
    assert_eq!((lines[0]["line"].as_u64(), lines[0]["raw"].as_str()), (Some(2), Some(bad_line.as_str())));
    let reason = lines[0]["reason"].as_str().unwrap();
    assert!(reason.contains("not an RFC 3339 date-time") && reason.contains("25:30"), "{reason}");
    assert!(env["reason"].as_str().unwrap().contains(reason), "{env}");
    assert_eq!(env["encoding"], "gzip+base64");

    assert_eq!(f.depth(&f.queue_url).await, (0, 0), "both messages deleted once everything was stored");
    assert_eq!(f.depth(f.dlq_url.as_ref().unwrap()).await, (0, 0));
    let c = w.exit_counters();
    assert_eq!(
        (c["records"].as_u64(), c["set_aside"].as_u64(), c["malformed"].as_u64(), c["deleted"].as_u64()),
        (Some(5), Some(1), Some(0), Some(2))
    );
}

#[tokio::test]
async fn counters_tell_what_sqs_did_when_some_deletes_fail() {
    let f = Fixture::new(30, None).await;
    // Ten messages the worker takes and holds (nothing flushes for 5 minutes) ...
    let first = records("p", 100, "2026-11-23T09:00:00", Duration::from_secs(1));
    f.send(&bodies(&first, 10)).await;
    let mut w = Worker::start(f.worker(&["--flush-seconds", "300"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.depth(&f.queue_url).await != (0, 10) {
        assert!(Instant::now() < deadline, "worker never took the messages; log:\n{}", w.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ... are purged behind its back, so their receipt handles no longer delete anything;
    // five more arrive and are held too. One flush then stores all 15 messages' records and
    // sends 15 deletes in batches of 10 and 5: SQS fails the 10 purged entries one by one.
    f.sqs.purge_queue().queue_url(&f.queue_url).send().await.unwrap();
    let second = records("q", 50, "2026-11-23T09:30:00", Duration::from_secs(1));
    f.send(&bodies(&second, 10)).await;
    while f.depth(&f.queue_url).await != (0, 5) {
        assert!(Instant::now() < deadline, "worker never took the new messages; log:\n{}", w.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.signal(libc::SIGTERM);
    assert!(w.wait(Duration::from_secs(20)).success(), "{}", w.log_text());

    assert_eq!(f.id_counts("").await.len(), 150, "every record stored before any delete");
    assert_eq!(f.depth(&f.queue_url).await, (0, 0));
    let c = w.exit_counters();
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("no counter {k}: {c:?}"));
    assert_eq!((n("records"), n("messages"), n("deleted"), n("undeleted")), (150, 15, 5, 10));
    assert_eq!(n("sqs_delete"), 2, "one call per 10 entries");
    assert_eq!(n("errors"), 10, "each failed entry is an error, nothing else failed");
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
    // A 10 s visibility timeout and a 24 s buffer: without renewals the second worker would
    // receive (and archive) the first one's messages again. Renewals come at half-life, so
    // a loaded machine has 5 s of margin. (5 s timeouts — 2.5 s of margin — failed once on
    // 2 cores while the local cloud's lane compiled and booted boxes beside it: one message
    // renewed late, 10 records archived twice; 2 s timeouts failed more often.)
    let f = Fixture::new(10, None).await;
    let recs = records("v", 500, "2026-11-23T08:00:00", Duration::from_millis(10));
    f.send(&bodies(&recs, 10)).await;
    let knobs = ["--visibility-timeout", "10", "--flush-seconds", "24"];
    let mut a = Worker::start(f.worker(&knobs));
    let mut cmd = f.worker(&knobs);
    cmd.args(["--worker-id", "w2"]);
    let mut b = Worker::start(cmd);
    let deadline = Instant::now() + Duration::from_secs(75);
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

#[tokio::test]
async fn schema_1_2_and_later_lines_are_archived_as_sent() {
    let f = Fixture::new(30, Some(3)).await;
    // Schema 1 (the original swarm's form: no schema, none of the new fields); schema 2 with
    // every field; a later schema with a field this build does not know.
    let v1 = r#"{"id":"s1","ts":"2026-11-23T10:00:00.123Z","stack":"s","region":"r","agent":"bee-1","target":"example.org","status":"ok","loss":0.1,"rtt_ms":{"min":1.0,"avg":1.5,"max":2.0,"stddev":0.3},"error":null}"#;
    let v2 = r#"{"schema":2,"id":"s2","ts":"2026-11-23T10:00:01.000Z","stack":"s","region":"r","agent":"bee-1","target":"example.org","status":"ok","loss":0.0,"rtt_ms":{"min":1.0,"avg":1.5,"max":2.0,"stddev":0.3,"p50":1.4,"p90":1.9,"p99":2.0,"jitter":0.2},"error":null,"sent":10,"ttl":57,"addr":"93.184.215.14","resolve_ms":3.2,"late_ms":0.4,"clock_synced":true}"#;
    let v3 = r#"{"schema":3,"id":"s3","ts":"2026-11-23T10:00:02.000Z","stack":"s","region":"r","agent":"bee-1","target":"example.org","status":"ok","loss":0.0,"rtt_ms":null,"error":null,"hops":[1,2,3]}"#;
    let body = format!("{v1}\n{v2}\n{v3}\n");
    f.send(&[(record::encode_body(&body, Encoding::GzipBase64), Encoding::GzipBase64)]).await;

    let mut w = Worker::start(f.worker(&["--drain"]));
    let status = w.wait(Duration::from_secs(60));
    assert!(status.success(), "worker failed: {status}\n{}", w.log_text());
    let objects: Vec<_> = f.objects("").await.into_iter().filter(|(k, _)| k.ends_with(".ndjson.gz")).collect();
    assert_eq!(objects.len(), 1, "one hour, one object");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::MultiGzDecoder::new(&objects[0].1[..]), &mut text).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(lines, [v1, v2, v3], "every line archived byte for byte, unknown fields included");
    let schemas: Vec<u32> = f.archived("").await.remove(0).1.iter().map(|r| r.schema).collect();
    assert_eq!(schemas.len(), 3);
    assert!(schemas.contains(&1) && schemas.contains(&2) && schemas.contains(&3), "{schemas:?}");
    assert_eq!(w.exit_counters()["set_aside"].as_u64(), Some(0));
}
