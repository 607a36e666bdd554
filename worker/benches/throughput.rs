//! Benchmark: ≥ 1 million records through the real (release) `tyrell-worker` and the
//! emulator. Prints records per second, worker CPU seconds per million records, and the
//! AWS cost per million records at list prices, next to Firehose and one PUT per message.
//!
//! The emulator slows down with queue depth, so the records are packed ~1000 to a message
//! (as the indexer does) and fed while keeping the queue shallow. Throughput is therefore
//! bounded by the emulator; the worker's own cost is measured from its counted API calls
//! and its CPU time (wait4 rusage).
//!
//! Beside the worker's CPU it prints, measured in the same run on the same bodies, what
//! the unavoidable part costs alone in this process: base64 + gunzip of every body and gzip
//! of the NDJSON into 5 MiB objects, at the worker's level ([`record::GZIP_LEVEL`]) and at
//! zlib's default level 6 (the level before issue 13) with the ratio each gives; and
//! base64 + gunzip alone (the worker passes a message's gzip through when it can).
//!
//! Run: `cargo bench -p tyrell-worker --bench throughput` (TYRELL_BENCH_RECORDS to change
//! the count; TYRELL_BENCH_WORKER=path runs another worker build, e.g. an older one).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use base64::Engine as _;

use common::{records, Fixture, Worker};
use record::Encoding;

const SQS_PER_REQUEST: f64 = 0.40 / 1e6;
const S3_PER_PUT: f64 = 0.005 / 1000.0;
const FIREHOSE_PER_GB: f64 = 0.029;
const FIREHOSE_ROUNDING: usize = 5 * 1024;
/// SQS bills each started 64 KiB of payload as one request.
const SQS_CHUNK: usize = 64 * 1024;
/// Messages kept in the queue (visible) while feeding.
const FEED_DEPTH: u64 = 10;

/// CPU seconds this thread has used (user + system).
fn thread_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(ru.ru_utime) + s(ru.ru_stime)
}

/// The part of the worker's job no implementation avoids, alone: every body base64-decoded
/// and gunzipped (to check its records), the NDJSON gzipped at `level` in 5 MiB objects
/// (the worker's flush size); with `None`, not gzipped again (a worker that passes the
/// bodies' gzip streams through). Returns (CPU seconds, NDJSON bytes, gzip bytes).
fn floor(msgs: &[(String, Encoding)], level: Option<u32>) -> (f64, usize, usize) {
    const OBJECT: usize = 5 << 20;
    let gzip = |data: &[u8]| {
        let Some(level) = level else { return 0 };
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        gz.write_all(data).unwrap();
        gz.finish().unwrap().len()
    };
    let c0 = thread_cpu();
    let (mut part, mut raw, mut packed) = (Vec::with_capacity(OBJECT * 2), 0, 0);
    for (body, _) in msgs {
        let gz = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
        flate2::read::MultiGzDecoder::new(&gz[..]).read_to_end(&mut part).unwrap();
        if part.len() >= OBJECT {
            (raw, packed) = (raw + part.len(), packed + gzip(&part));
            part.clear();
        }
    }
    if !part.is_empty() {
        (raw, packed) = (raw + part.len(), packed + gzip(&part));
    }
    (thread_cpu() - c0, raw, packed)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let n: usize = std::env::var("TYRELL_BENCH_RECORDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let f = Fixture::new(120, None).await;

    // The indexer's packing: NDJSON lines up to 256 KiB a message, gzip+base64.
    let recs = records("b", n, "2026-11-23T10:00:00", Duration::from_millis(5));
    let lines: Vec<String> = recs.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
    drop(recs);
    let record_bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let firehose_bytes: usize =
        lines.iter().map(|l| (l.len() + 1).div_ceil(FIREHOSE_ROUNDING) * FIREHOSE_ROUNDING).sum();
    let (raw, oversized) = record::pack_lines(lines.iter().map(String::as_str), record::MAX_MESSAGE_BYTES);
    assert!(oversized.is_empty());
    drop(lines);
    let msgs: Vec<(String, Encoding)> =
        raw.iter().map(|b| (record::encode_body(b, Encoding::GzipBase64), Encoding::GzipBase64)).collect();
    drop(raw);
    let body_bytes: usize = msgs.iter().map(|m| m.0.len()).sum();
    let producer_billed: usize = msgs.iter().map(|m| m.0.len().div_ceil(SQS_CHUNK)).sum();
    eprintln!("bench: {n} records in {} messages; feeding the worker...", msgs.len());

    // Production settings (5 MiB / 60 s buffers, 4 receivers), except a shorter long poll
    // so --drain notices the end of the feed sooner.
    let program = std::env::var_os("TYRELL_BENCH_WORKER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tyrell-worker").into());
    let mut cmd =
        f.worker_at(&program, &["--drain", "--wait-seconds", "3", "--flush-seconds", "60", "--stats-seconds", "10"]);
    cmd.env("RUST_LOG", "warn,tyrell_worker=info");
    let mut worker = Worker::start(cmd);
    let started = Instant::now();
    let mut sent = 0;
    while sent < msgs.len() {
        if f.depth(&f.queue_url).await.0 < FEED_DEPTH {
            let k = 10.min(msgs.len() - sent);
            f.send(&msgs[sent..sent + k]).await;
            sent += k;
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let fed = started.elapsed();
    let (code, cpu) = worker.wait_cpu(Duration::from_secs(600));
    let wall = started.elapsed();
    assert_eq!(code, 0, "worker failed; log: {}", worker.log.display());
    let c = worker.exit_counters();
    let get = |k: &str| c[k].as_u64().unwrap_or(0) as f64;

    let counts = f.id_counts("").await;
    assert_eq!(counts.len(), n, "every record archived");
    let duplicates: usize = counts.values().map(|k| k - 1).sum();

    let m = n as f64 / 1e6; // millions of records
    let gb = |b: usize| b as f64 / (1u64 << 30) as f64;
    let sqs_worker = get("sqs_billed") * SQS_PER_REQUEST / m;
    let s3_worker = get("s3_put") * S3_PER_PUT / m;
    let producer = producer_billed as f64 * SQS_PER_REQUEST / m;
    let per_message_puts = msgs.len() as f64 * S3_PER_PUT / m;
    let firehose = gb(firehose_bytes) * FIREHOSE_PER_GB / m;

    println!("tyrell-worker benchmark (release build, moto emulator, 2 shared cores)");
    println!(
        "  input       {n} records, {:.1} MB NDJSON (avg {} B/record), in {} messages of ~{} records ({:.1} MB gzip+base64, avg {:.0} KB)",
        record_bytes as f64 / 1e6,
        record_bytes / n,
        msgs.len(),
        n / msgs.len(),
        body_bytes as f64 / 1e6,
        body_bytes as f64 / msgs.len() as f64 / 1024.0
    );
    println!(
        "  throughput  {:.0} records/s over {:.1} s wall (feed took {:.1} s: bound by the emulator, not the worker)",
        n as f64 / wall.as_secs_f64(),
        wall.as_secs_f64(),
        fed.as_secs_f64()
    );
    println!(
        "  worker CPU  {cpu:.2} s = {:.2} CPU s per million records ({:.0} records per CPU second)",
        cpu / m,
        n as f64 / cpu
    );
    println!(
        "  API calls   ReceiveMessage {}, DeleteMessageBatch {}, ChangeMessageVisibilityBatch {}, GetQueueAttributes {} => {} billed SQS requests (64 KiB chunks); PutObject {}",
        get("sqs_receive"), get("sqs_delete"), get("sqs_visibility"), get("sqs_attributes"), get("sqs_billed"), get("s3_put")
    );
    println!(
        "  objects     {} objects, {:.1} MB NDJSON -> {:.1} MB gzip; {duplicates} duplicate records",
        get("objects"),
        get("bytes_in") / 1e6,
        get("bytes_out") / 1e6
    );
    let (fast_cpu, fast_in, fast_out) = floor(&msgs, Some(record::GZIP_LEVEL));
    let (six_cpu, _, six_out) = floor(&msgs, Some(6));
    let (check_cpu, _, _) = floor(&msgs, None);
    println!(
        "  same run    worker {:.2} CPU s per million records (goal: at most 1.00: {}) ({})",
        cpu / m,
        if cpu / m <= 1.0 { "met" } else { "not met" },
        program.display()
    );
    println!(
        "              beside, in this process: base64 + gunzip + gzip level {} alone {:.2} CPU s per million (ratio {:.1}); at level 6 {:.2} (ratio {:.1})",
        record::GZIP_LEVEL,
        fast_cpu / m,
        fast_in as f64 / fast_out.max(1) as f64,
        six_cpu / m,
        fast_in as f64 / six_out.max(1) as f64
    );
    println!(
        "              and base64 + gunzip alone (no gzip: what a worker passing the gzip through must still do) {:.2}",
        check_cpu / m
    );
    println!("  cost per million records at list prices (SQS $0.40/M requests, S3 $0.005/1000 PUTs, Firehose $0.029/GB in 5 KB steps):");
    println!(
        "    tyrell worker (receive + delete + PUT)   ${:.6}  (SQS ${sqs_worker:.6} + S3 ${s3_worker:.6})",
        sqs_worker + s3_worker
    );
    println!(
        "    one PUT per message instead              ${:.6}  (SQS ${sqs_worker:.6} + S3 ${per_message_puts:.6})",
        sqs_worker + per_message_puts
    );
    println!(
        "    Kinesis Data Firehose                    ${firehose:.6}  ({:.2} GB billed for {:.2} GB of records)",
        gb(firehose_bytes) / m,
        gb(record_bytes) / m
    );
    println!(
        "    (the indexer's sends, the same for both SQS paths: ${producer:.6}; SQS path total ${:.6} = {:.1}x cheaper than Firehose)",
        producer + sqs_worker + s3_worker,
        firehose / (producer + sqs_worker + s3_worker)
    );
}
