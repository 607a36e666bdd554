//! The bee's RTT and loss against a link whose truth is known (issue 13, item 1): the real
//! `bee` (fed its target through the retained `watch` on a real mosquitto) and iputils
//! `ping`, in the same run, against the same target of a user-space reflector
//! (`support/reflector.rs`: a TUN device answering after known delays, dropping with a
//! known probability). Both results are printed side by side; the bounds are the issue's:
//!
//! * a fixed 20 ms delay: average within ±0.5 ms of 20 ms;
//! * 20 ms with 5 ms of (normal) jitter: standard deviation within 15% of 5 ms;
//! * 10% random loss over 1,000 probes: loss inside the binomial 99% interval
//!   (n = 1000, p = 0.1: 76..=125 lost, computed below).
//!
//! `ping` is checked against the same bounds: if it fails them, the link (not the bee) is
//! off, and the message says so. Needs root (TUN device, ICMP) and iputils `ping`.

mod common;
#[path = "support/reflector.rs"]
mod reflector;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use record::{PingRecord, Status};
use reflector::{LinkSpec, Reflector};

/// What iputils `ping` printed at the end.
#[derive(Debug, Default)]
struct PingSummary {
    sent: u32,
    received: u32,
    avg: f64,
    mdev: f64,
}

impl PingSummary {
    fn loss(&self) -> f64 {
        1.0 - f64::from(self.received) / f64::from(self.sent.max(1))
    }
}

/// iputils `ping` (not busybox's or inetutils', whose options and output differ).
fn iputils_ping() -> std::path::PathBuf {
    let how = "iputils ping is required: apt-get install iputils-ping (scripts/setup installs it)";
    let out = Command::new("ping").arg("-V").output().unwrap_or_else(|e| panic!("cannot run ping ({e}): {how}"));
    let v = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(v.contains("iputils"), "`ping -V` says {v:?}, not iputils: {how}");
    "ping".into()
}

fn parse_ping(out: &str) -> PingSummary {
    let mut s = PingSummary::default();
    for line in out.lines() {
        if let Some((a, rest)) = line.split_once(" packets transmitted, ") {
            s.sent = a.trim().parse().unwrap_or(0);
            s.received = rest.split(' ').next().and_then(|r| r.parse().ok()).unwrap_or(0);
        }
        if let Some(v) = line.strip_prefix("rtt min/avg/max/mdev = ") {
            // "20.1/20.2/20.4/0.1 ms" or, with several probes in flight, "... ms, pipe 3".
            let v = v.split(" ms").next().unwrap_or("");
            let f: Vec<f64> = v.split('/').filter_map(|x| x.parse().ok()).collect();
            if let [_, avg, _, mdev] = f[..] {
                (s.avg, s.mdev) = (avg, mdev);
            }
        }
    }
    assert!(s.sent > 0, "cannot read ping's summary:\n{out}");
    s
}

/// The smallest interval [lo, hi] of lost-probe counts that holds at least 99% of the
/// binomial(n, p) distribution, 0.5% cut from each tail.
fn binomial_99(n: u32, p: f64) -> (u32, u32) {
    let mut pmf = (1.0 - p).powi(n as i32);
    let mut cdf = 0.0;
    let (mut lo, mut hi) = (None, None);
    for k in 0..=n {
        cdf += pmf;
        if lo.is_none() && cdf > 0.005 {
            lo = Some(k);
        }
        if hi.is_none() && cdf >= 0.995 {
            hi = Some(k);
            break;
        }
        pmf *= f64::from(n - k) / f64::from(k + 1) * p / (1.0 - p);
    }
    (lo.unwrap_or(0), hi.unwrap_or(n))
}

/// One case: a reflector with `link`, a broker, the bee doing one round of `probes` probes
/// spread over `interval`, and `ping -c probes -i ping_interval` at the same time.
struct Case {
    name: &'static str,
    link: LinkSpec,
    probes: u16,
    interval: &'static str,
    ping_interval: &'static str,
}

struct Outcome {
    bee: PingRecord,
    ping: PingSummary,
    /// What the reflector did to the first `probes` probes of a sender (each sender meets
    /// the same sequence): `None` dropped, else the delay in ms.
    injected: Vec<Option<f64>>,
}

fn stats(ms: &[f64]) -> (f64, f64) {
    let n = ms.len().max(1) as f64;
    let avg = ms.iter().sum::<f64>() / n;
    (avg, (ms.iter().map(|x| (x - avg).powi(2)).sum::<f64>() / n).sqrt())
}

fn run(case: &Case) -> Outcome {
    let t0 = Instant::now();
    let ping = iputils_ping();
    let link = Reflector::start(vec![case.link], 0x7e11_0013);
    let target = link.target(0).to_string();
    let broker = broker();
    let port = broker.port;
    mqtt_pub(port, "watch", target.as_bytes(), true);

    // The record of the bee's first round (a round takes `interval` plus the probe
    // timeout, so the subscriber is listening long before it is published).
    let topic = format!("ping/{target}");
    let sub = std::thread::spawn(move || mqtt_sub(port, &topic, 1, 30));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bee"));
    broker_env(&mut cmd, port);
    cmd.env("BEE_AGENT", testkit::unique("bee-acc"))
        .env("BEE_PROBES", case.probes.to_string())
        .env("BEE_INTERVAL", case.interval)
        .env("BEE_PROBE_TIMEOUT", "500ms")
        .env("STATS_INTERVAL", "0");
    let bee = Program::start(cmd, "bee-acc");
    let ping_start = Instant::now();
    let out = Command::new(ping)
        .args(["-n", "-q", "-c", &case.probes.to_string(), "-i", case.ping_interval, "-W", "1", &target])
        .output()
        .expect("run ping");
    let ping = parse_ping(&String::from_utf8_lossy(&out.stdout));
    let ping_secs = ping_start.elapsed().as_secs_f64();
    let lines = sub.join().expect("subscriber");
    let line = lines.first().unwrap_or_else(|| panic!("no record from the bee in 30 s; its log:\n{}", bee.log_text()));
    let bee_rec: PingRecord = serde_json::from_str(line.split_once(' ').map_or("", |(_, p)| p)).expect("a record");
    drop(bee);
    let injected = link.draws(0, usize::from(case.probes));
    let seen = link.seen(0);

    let got: Vec<f64> = injected.iter().flatten().copied().collect();
    let (inj_avg, inj_sd) = stats(&got);
    let inj_loss = 1.0 - got.len() as f64 / injected.len() as f64;
    let rtt = bee_rec.rtt_ms.unwrap_or(record::Rtt {
        min: f64::NAN,
        avg: f64::NAN,
        max: f64::NAN,
        stddev: f64::NAN,
        p50: None,
        p90: None,
        p99: None,
        jitter: None,
    });
    eprintln!(
        "\n== {}: link {:?} via {} {} (reflector SCHED_FIFO: {}), {} probes each, {:.1} s ==\n\
         {:<26} {:>10} {:>10} {:>8}\n\
         {:<26} {:>10.3} {:>10.3} {:>7.1}%\n\
         {:<26} {:>10.3} {:>10.3} {:>7.1}%\n\
         {:<26} {:>10.3} {:>10.3} {:>7.1}%\n\
         (reflector: {} requests, {} dropped, both senders; replies late by {:.0} µs on average, {} µs at worst; ping ran {:.1} s)",
        case.name,
        case.link,
        link.ifname,
        target,
        link.realtime,
        case.probes,
        t0.elapsed().as_secs_f64(),
        "",
        "avg ms",
        "stddev ms",
        "loss",
        "injected (first probes)",
        inj_avg,
        inj_sd,
        100.0 * inj_loss,
        "bee record",
        rtt.avg,
        rtt.stddev,
        100.0 * bee_rec.loss,
        "iputils ping",
        ping.avg,
        ping.mdev,
        100.0 * ping.loss(),
        seen.requests,
        seen.dropped,
        seen.late_us_sum as f64 / seen.replies.max(1) as f64,
        seen.late_us_max,
        ping_secs,
    );
    assert_eq!(bee_rec.status, Status::Ok, "{bee_rec:?}");
    Outcome { bee: bee_rec, ping, injected }
}

#[test]
fn fixed_delay_average_within_half_a_millisecond() {
    let case = Case {
        name: "fixed 20 ms",
        link: LinkSpec { delay: Duration::from_millis(20), jitter: Duration::ZERO, loss: 0.0 },
        probes: 100,
        interval: "1s",
        ping_interval: "0.01",
    };
    let o = run(&case);
    let avg = o.bee.rtt_ms.expect("answers").avg;
    assert!((o.ping.avg - 20.0).abs() <= 0.5, "the link is off: ping's average is {} ms", o.ping.avg);
    assert!((avg - 20.0).abs() <= 0.5, "the bee's average {avg} ms is not within 20 ± 0.5 ms (ping: {})", o.ping.avg);
    assert_eq!(o.bee.loss, 0.0, "no loss on this link");
    assert_eq!(o.injected.len(), 100);
}

#[test]
fn jitter_standard_deviation_within_15_percent() {
    let case = Case {
        name: "20 ms, 5 ms jitter (normal)",
        link: LinkSpec { delay: Duration::from_millis(20), jitter: Duration::from_millis(5), loss: 0.0 },
        probes: 200,
        interval: "2s",
        ping_interval: "0.01",
    };
    let o = run(&case);
    let sd = o.bee.rtt_ms.expect("answers").stddev;
    assert!((o.ping.mdev - 5.0).abs() <= 0.75, "the link is off: ping's mdev is {} ms", o.ping.mdev);
    assert!((sd - 5.0).abs() <= 0.75, "the bee's stddev {sd} ms is not within 5 ms ± 15% (ping: {})", o.ping.mdev);
    assert_eq!(o.bee.loss, 0.0, "no loss on this link");
}

#[test]
fn random_loss_inside_the_binomial_99_percent_interval() {
    let case = Case {
        name: "10% loss",
        // A short delay: with several probes in flight, iputils ping paces itself slower
        // than `-i` (5 s instead of 1 s for 1,000 probes at 1 ms over a 5 ms link).
        link: LinkSpec { delay: Duration::from_micros(500), jitter: Duration::ZERO, loss: 0.1 },
        probes: 1000,
        interval: "1s",
        ping_interval: "0.001",
    };
    let (lo, hi) = binomial_99(1000, 0.1);
    assert_eq!((lo, hi), (76, 125), "binomial(1000, 0.1), 0.5% cut from each tail");
    let o = run(&case);
    let lost = (o.bee.loss * 1000.0).round() as u32;
    let ping_lost = o.ping.sent - o.ping.received;
    eprintln!("binomial 99% interval: {lo}..={hi} lost of 1000; bee lost {lost}, ping {ping_lost}");
    assert_eq!(o.ping.sent, 1000);
    assert!((lo..=hi).contains(&ping_lost), "the link is off: ping lost {ping_lost} of 1000");
    assert!((lo..=hi).contains(&lost), "the bee lost {lost} of 1000, outside {lo}..={hi} (ping: {ping_lost})");
}
