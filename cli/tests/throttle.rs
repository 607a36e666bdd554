//! AWS throttling, replayed with the testkit's throttling proxy in front of the emulator:
//! the real binary gets AWS's own throttling errors (HTTP 400 `Throttling` for
//! CloudFormation, Auto Scaling and ELBv2) for the calls a rule picks. tyrell's clients
//! share one adaptive retry budget (`aws::Clouds::connect`); a command under throttling
//! still succeeds and counts its retries, and a stack operation that finished is never
//! reported failed because a poll was throttled.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use support::*;
use testkit::throttle::ThrottlingProxy;

/// `tyrell -v ARGS` through `proxy`, with the SDK's default 3 attempts per call (the
/// tests' emulator environment turns retries off).
fn through(proxy: &ThrottlingProxy, args: &[&str]) -> std::process::Output {
    tyrell().env("AWS_ENDPOINT_URL", &proxy.url).env("AWS_MAX_ATTEMPTS", "3").arg("-v").args(args).output().unwrap()
}

/// The `-v` summary line's figures: (AWS API calls, of them retries).
fn calls(stderr: &str) -> (usize, usize) {
    let line = stderr.lines().find(|l| l.contains(" AWS API calls in ")).unwrap_or_else(|| panic!("{stderr}"));
    let num = |before: &str| -> usize {
        let head = line.split(before).next().unwrap();
        head.rsplit([' ', '(']).next().unwrap().parse().unwrap_or_else(|_| panic!("{line}"))
    };
    (num(" AWS API calls"), num(" of them retries"))
}

/// Every other request throttled (the first too): the listing is the same as without throttling, the exit
/// is 0, and `-v` counts one retry per throttled call.
#[test]
fn a_listing_under_throttling_succeeds_and_counts_its_retries() {
    let (sw, _) = swarm("th");
    for v in ["t1", "t2", "t3"] {
        create("bees", &sw, v, "0");
    }
    let calm = json(&["bees", &sw]);
    let proxy = ThrottlingProxy::start(&emulator().url, |c| c.total % 2 == 1);
    let out = through(&proxy, &["bees", &sw, "-o", "json"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed, calm, "the same listing under throttling");
    let (requests, retries) = calls(&err);
    let throttled = proxy.throttled();
    eprintln!("tyrell bees under throttling: {requests} requests, {retries} retries, {throttled} throttled");
    assert!(throttled >= 2, "the proxy throttled {throttled} calls");
    assert_eq!(retries, throttled, "one retry per throttled call: {err}");
    assert_eq!(requests, proxy.calls().len(), "every request counted: {err}");
}

/// A stack that is CREATE_COMPLETE while the waiter's polls are throttled beyond the SDK's
/// retries (4 throttled DescribeStacks after CreateStack; 3 attempts a call): the waiter
/// asks again and reports the create succeeded, instead of failing with exit 8.
#[test]
fn a_finished_create_whose_poll_was_throttled_is_reported_succeeded() {
    let created = Arc::new(AtomicBool::new(false));
    let after = Arc::new(AtomicU64::new(0));
    let (c, a) = (created.clone(), after.clone());
    let proxy = ThrottlingProxy::start(&emulator().url, move |call| {
        if call.action == "CreateStack" {
            c.store(true, Ordering::SeqCst);
        }
        call.action == "DescribeStacks" && c.load(Ordering::SeqCst) && a.fetch_add(1, Ordering::SeqCst) < 4
    });
    let net = unique("thn");
    let out = through(&proxy, &["network", "create", &net, "-o", "json"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the create is reported failed:\n{err}");
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["name"], net.as_str(), "{made}");
    assert_eq!(made["status"], "CREATE_COMPLETE", "{made}");
    assert!(created.load(Ordering::SeqCst) && after.load(Ordering::SeqCst) > 4, "the proxy throttled the polls");
    assert_eq!(proxy.throttled(), 4, "{:?}", proxy.calls());
    let (_, retries) = calls(&err);
    // The first poll's 3 attempts (2 retries) ran out; the next poll's first attempt was
    // throttled too (1 retry).
    assert_eq!(retries, 3, "{err}");
}
