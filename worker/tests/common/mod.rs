//! Shared by the worker's end-to-end tests: a queue + bucket per test on the shared
//! emulator, record generators, a runner for the real `tyrell-worker` binary, and a
//! reader that gunzips what the worker stored.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use record::{Encoding, PingRecord, Rtt, Status};
use testkit::Emulator;

/// A queue (optionally with a dead-letter queue) and a bucket of its own.
pub struct Fixture {
    pub name: String,
    pub queue_url: String,
    pub dlq_url: Option<String>,
    pub bucket: String,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
}

impl Fixture {
    /// `visibility`: the queue's visibility timeout; `max_receives`: redrive to a DLQ
    /// after that many receives (`None`: no DLQ).
    pub async fn new(visibility: u32, max_receives: Option<u32>) -> Fixture {
        let emu = Emulator::shared();
        let (sqs, s3) = (emu.sqs().await, emu.s3().await);
        let name = testkit::unique("wk");
        let mut dlq_url = None;
        let mut create = sqs
            .create_queue()
            .queue_name(&name)
            .attributes(QueueAttributeName::VisibilityTimeout, visibility.to_string());
        if let Some(max) = max_receives {
            let dlq = sqs.create_queue().queue_name(format!("{name}-dlq")).send().await.unwrap();
            let dlq_url_s = dlq.queue_url().unwrap().to_string();
            let arn = sqs
                .get_queue_attributes()
                .queue_url(&dlq_url_s)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .unwrap()
                .attributes()
                .unwrap()[&QueueAttributeName::QueueArn]
                .clone();
            let policy = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max}).to_string();
            create = create.attributes(QueueAttributeName::RedrivePolicy, policy);
            dlq_url = Some(dlq_url_s);
        }
        let queue_url = create.send().await.unwrap().queue_url().unwrap().to_string();
        s3.create_bucket().bucket(&name).send().await.unwrap();
        Fixture { bucket: name.clone(), name, queue_url, dlq_url, sqs, s3 }
    }

    /// The worker binary pointed at this queue and bucket through the emulator, with the
    /// knobs that make it fast in tests (1 s polls, 0.5 s flushes, 1 s stats).
    pub fn worker(&self, extra: &[&str]) -> Command {
        self.worker_at(env!("CARGO_BIN_EXE_tyrell-worker").as_ref(), extra)
    }

    /// As [`Fixture::worker`], with another build of the worker (`program`: its path).
    pub fn worker_at(&self, program: &std::path::Path, extra: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        Emulator::shared().apply(&mut cmd);
        cmd.args(["--queue-url", &self.queue_url, "--bucket", &self.bucket, "--stack", "swarm1"])
            .args(["--worker-id", "w1", "--wait-seconds", "1", "--flush-seconds", "0.5", "--stats-seconds", "1"])
            .args(extra)
            .env("RUST_LOG", "info");
        cmd
    }

    /// Sends message bodies in batches within SQS's limits (10 entries, 256 KiB).
    pub async fn send(&self, bodies: &[(String, Encoding)]) {
        let mut rest = bodies;
        while !rest.is_empty() {
            let mut n = 0;
            let mut size = 0;
            while n < rest.len() && n < 10 && (n == 0 || size + rest[n].0.len() <= record::MAX_MESSAGE_BYTES) {
                size += rest[n].0.len();
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, (body, enc))| {
                    let mut e = SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(body);
                    if *enc != Encoding::Ndjson {
                        let attr = MessageAttributeValue::builder()
                            .data_type("String")
                            .string_value(enc.as_str())
                            .build()
                            .unwrap();
                        e = e.message_attributes(record::ENCODING_ATTRIBUTE, attr);
                    }
                    e.build().unwrap()
                })
                .collect();
            let out = self
                .sqs
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .unwrap();
            assert!(out.failed().is_empty(), "send failed: {:?}", out.failed());
        }
    }

    /// Messages in the queue: (visible, in flight).
    pub async fn depth(&self, url: &str) -> (u64, u64) {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let a = out.attributes().unwrap();
        let n = |k: QueueAttributeName| a.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
        (
            n(QueueAttributeName::ApproximateNumberOfMessages),
            n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }

    /// Every object under `prefix`: key → bytes.
    pub async fn objects(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut pages = self.s3.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            for o in page.unwrap().contents() {
                let key = o.key().unwrap().to_string();
                let body = self.s3.get_object().bucket(&self.bucket).key(&key).send().await.unwrap();
                out.push((key, body.body.collect().await.unwrap().into_bytes().to_vec()));
            }
        }
        out
    }

    /// The records of every `.ndjson.gz` object under `prefix`, by key.
    pub async fn archived(&self, prefix: &str) -> Vec<(String, Vec<PingRecord>)> {
        let mut out = Vec::new();
        for (key, bytes) in self.objects(prefix).await {
            if !key.ends_with(".ndjson.gz") {
                continue;
            }
            let mut text = String::new();
            flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_string(&mut text).unwrap();
            let lines = record::decode_body(&text, Encoding::Ndjson).unwrap();
            out.push((key, lines.into_iter().map(|l| l.record).collect()));
        }
        out
    }

    /// How many times each record id was archived.
    pub async fn id_counts(&self, prefix: &str) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for (_, records) in self.archived(prefix).await {
            for r in records {
                *counts.entry(r.id).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// `n` records named `<tag>-<i>`, `spacing` apart starting at `start` (`YYYY-MM-DDTHH:MM:SS`).
pub fn records(tag: &str, n: usize, start: &str, spacing: Duration) -> Vec<PingRecord> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let t0 = time::PrimitiveDateTime::parse(start, fmt).unwrap();
    (0..n)
        .map(|i| {
            let t = t0 + spacing * i as u32;
            PingRecord {
                id: format!("{tag}-{i}"),
                ts: format!("{}.{:03}Z", t.format(fmt).unwrap(), i % 1000),
                stack: "swarm1".into(),
                region: "eu-west-1".into(),
                agent: format!("bee-{}", i % 7),
                target: format!("host{}.example.org", i % 13),
                status: Status::Ok,
                loss: 0.0,
                rtt_ms: Rtt::from_samples(&[1.0 + (i % 5) as f64, 2.5, 3.25]),
                error: None,
                ..Default::default()
            }
        })
        .collect()
}

/// Packs records `per_message` to a body, alternating the two encodings.
pub fn bodies(records: &[PingRecord], per_message: usize) -> Vec<(String, Encoding)> {
    records
        .chunks(per_message)
        .enumerate()
        .map(|(i, chunk)| {
            let enc = if i % 2 == 0 { Encoding::GzipBase64 } else { Encoding::Ndjson };
            (record::encode_body(&record::to_ndjson(chunk), enc), enc)
        })
        .collect()
}

/// A running worker whose log (its stderr) goes to a file; killed if dropped while running,
/// and killed by the kernel if the test process dies (PR_SET_PDEATHSIG).
pub struct Worker {
    child: Child,
    pub log: PathBuf,
    pub started: Instant,
    /// Reaped by [`Worker::wait_cpu`] (not through `child`).
    reaped: bool,
}

impl Worker {
    pub fn start(mut cmd: Command) -> Worker {
        let log = std::env::temp_dir().join(format!("{}.log", testkit::unique("tyrell-worker-")));
        let file = std::fs::File::create(&log).unwrap();
        // SAFETY: prctl is async-signal-safe; it only sets a flag on the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(file).spawn().expect("start tyrell-worker");
        Worker { child, log, started: Instant::now(), reaped: false }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the worker to exit on its own, at most `limit`; panics with its log if not.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tyrell-worker did not exit within {limit:?}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the worker to exit, at most `limit`, and reaps it with wait4(2): its exit
    /// code and the CPU seconds (user + system) it used.
    pub fn wait_cpu(&mut self, limit: Duration) -> (i32, f64) {
        let deadline = Instant::now() + limit;
        let pid = self.child.id() as i32;
        loop {
            let mut status = 0;
            // SAFETY: wait4 on our own child with valid out-pointers.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            if unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) } == pid {
                self.reaped = true;
                let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
                return (code, secs(ru.ru_utime) + secs(ru.ru_stime));
            }
            if Instant::now() > deadline {
                panic!("tyrell-worker did not exit within {limit:?}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `exit` counters line of the log, as JSON fields.
    pub fn exit_counters(&self) -> serde_json::Map<String, serde_json::Value> {
        self.log_text()
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["fields"]["message"] == "exit")
            .and_then(|v| v["fields"].as_object().cloned())
            .unwrap_or_else(|| panic!("no exit line in the worker log:\n{}", self.log_text()))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.reaped && self.child.try_wait().ok().flatten().is_none() {
            self.kill();
        }
    }
}
