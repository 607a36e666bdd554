//! The worker's record check, alone: `decode_checked` over NDJSON (the fast path of
//! `check.rs`, serde for lines it is not sure of) beside serde_json reading the same lines
//! as `RecordView` (what deciding every line with serde would cost), in the same run.
//!
//! Run: `cargo bench -p tyrell-record --bench check` (TYRELL_BENCH_LINES, default 20000,
//! lines shaped as worker/benches/drive.py's, ~304 B). Prints ns per record (the best of
//! 15 passes, so a busy machine moves it less) for each.

use std::time::Instant;

fn main() {
    let n: usize = std::env::var("TYRELL_BENCH_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let mut text = String::new();
    for i in 0..n {
        let a = 1.0 + (i % 5) as f64;
        let s = [a, 2.5, 3.25];
        let avg = s.iter().sum::<f64>() / 3.0;
        let sd = (s.iter().map(|x| (x - avg) * (x - avg)).sum::<f64>() / 3.0).sqrt();
        text.push_str(&format!(
            "{{\"schema\":2,\"id\":\"b-{i}\",\"ts\":\"2026-11-23T10:{:02}:{:02}.{:03}Z\",\"stack\":\"swarm1\",\
             \"region\":\"eu-west-1\",\"agent\":\"bee-{}\",\"target\":\"host{}.example.org\",\"status\":\"ok\",\
             \"loss\":0.0,\"rtt_ms\":{{\"min\":{},\"avg\":{},\"max\":3.25,\"stddev\":{},\"p50\":2.5,\"p90\":3.25,\
             \"p99\":3.25,\"jitter\":1.0}},\"error\":null}}\n",
            (i / 60) % 60,
            i % 60,
            i % 1000,
            i % 7,
            i % 13,
            a.min(2.5),
            avg,
            sd
        ));
    }
    let best = |f: &dyn Fn() -> usize| {
        (0..15)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(std::hint::black_box(f()), n);
                t.elapsed().as_nanos() as f64 / n as f64
            })
            .fold(f64::MAX, f64::min)
    };
    let fast = best(&|| tyrell_record::decode_checked(&text, tyrell_record::Encoding::Ndjson).unwrap().lines.len());
    let serde = best(&|| {
        text.lines()
            .filter(|l| serde_json::from_str::<tyrell_record::RecordView>(l).is_ok_and(|r| r.validate_utc().is_ok()))
            .count()
    });
    println!("{n} records of {} B on average", text.len() / n);
    println!("decode_checked (fast path)      {fast:8.0} ns/record");
    println!("serde_json RecordView + validate {serde:7.0} ns/record  (same run)");
}
