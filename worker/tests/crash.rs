//! Crash safety: `kill -9` the worker at random moments while it drains; after a final
//! clean drain every record is in S3 at least once. Prints the duplicate count.

mod common;

use std::time::{Duration, Instant};

use common::{bodies, records, Fixture, Worker};

/// Kills of a running worker.
const RUNS: usize = 24;
/// The emulator slows down with queue depth: keep at most this many messages in the queue.
const MAX_DEPTH: u64 = 80;

/// A small xorshift: random kill moments without a dependency, seeded from the clock
/// (the seed is printed, so a failing sequence can be replayed with TYRELL_CRASH_SEED).
struct Rng(u64);
impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[tokio::test]
async fn kill_9_at_random_moments_loses_no_record() {
    // A short visibility timeout, so what a killed worker held comes back quickly.
    let f = Fixture::new(2, None).await;
    let recs = records("k", 20_000, "2026-11-23T10:40:00", Duration::from_millis(150));
    let msgs = bodies(&recs, 50); // 400 messages spanning 10:40..11:30
    let seed = std::env::var("TYRELL_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let knobs = ["--visibility-timeout", "2", "--flush-seconds", "0.3"];
    let started = Instant::now();
    let mut sent = 0;

    for run in 0..RUNS {
        let (visible, in_flight) = f.depth(&f.queue_url).await;
        let top_up = (MAX_DEPTH.saturating_sub(visible + in_flight) as usize).min(msgs.len() - sent);
        f.send(&msgs[sent..sent + top_up]).await;
        sent += top_up;
        let mut w = Worker::start(f.worker(&knobs));
        let life = Duration::from_millis(150 + rng.next(1500));
        tokio::time::sleep(life).await;
        w.signal(libc::SIGKILL);
        let status = w.wait(Duration::from_secs(5));
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL), "run {run}");
    }
    while sent < msgs.len() {
        let n = (msgs.len() - sent).min(MAX_DEPTH as usize);
        f.send(&msgs[sent..sent + n]).await;
        sent += n;
        if sent < msgs.len() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    // The final clean drain: waits for the killed runs' messages to become visible again.
    let mut w = Worker::start(f.worker(&[&["--drain"][..], &knobs].concat()));
    let status = w.wait(Duration::from_secs(120));
    assert!(status.success(), "final drain failed: {status}\n{}", w.log_text());

    let counts = f.id_counts("").await;
    let missing: Vec<_> = recs.iter().filter(|r| !counts.contains_key(&r.id)).map(|r| r.id.as_str()).take(10).collect();
    assert!(missing.is_empty(), "records lost: {missing:?}...");
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "crash test: {RUNS} kill -9 runs, {} records, {duplicates} duplicates ({:.2}%), wall {:?}",
        recs.len(),
        100.0 * duplicates as f64 / recs.len() as f64,
        started.elapsed()
    );
    assert_eq!(f.depth(&f.queue_url).await, (0, 0), "queue drained");
}
