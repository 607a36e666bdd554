//! The real `tyrell-worker` refuses settings out of range at start: one sentence naming the
//! setting (flag and environment variable) and its range on stderr, exit code 2, no panic —
//! whether the value comes from a flag or from the environment (the systemd unit's way).

mod common;

use std::process::Command;
use std::time::Duration;

use common::Worker;

/// (flag, environment variable, a bad value, the range the refusal must state)
const BAD: &[(&str, &str, &str, &str)] = &[
    ("--receivers", "TYRELL_RECEIVERS", "0", "from 1 to 64"),
    ("--receivers", "TYRELL_RECEIVERS", "many", "from 1 to 64"),
    ("--wait-seconds", "TYRELL_WAIT_SECONDS", "21", "from 0 to 20"),
    ("--wait-seconds", "TYRELL_WAIT_SECONDS", "-1", "from 0 to 20"),
    ("--visibility-timeout", "TYRELL_VISIBILITY_TIMEOUT", "0", "from 2 to 43200"),
    ("--visibility-timeout", "TYRELL_VISIBILITY_TIMEOUT", "1", "from 2 to 43200"),
    ("--visibility-timeout", "TYRELL_VISIBILITY_TIMEOUT", "43201", "from 2 to 43200"),
    ("--flush-bytes", "TYRELL_FLUSH_BYTES", "0", "from 1048576 to 134217728"),
    ("--flush-bytes", "TYRELL_FLUSH_BYTES", "99999999999999999999999", "from 1048576 to 134217728"),
    ("--flush-seconds", "TYRELL_FLUSH_SECONDS", "inf", "from 0 to 900"),
    ("--flush-seconds", "TYRELL_FLUSH_SECONDS", "1e30", "from 0 to 900"),
    ("--flush-seconds", "TYRELL_FLUSH_SECONDS", "NaN", "from 0 to 900"),
    ("--flush-seconds", "TYRELL_FLUSH_SECONDS", "-0.5", "from 0 to 900"),
    ("--uploads", "TYRELL_UPLOADS", "0", "from 1 to 64"),
    ("--shutdown-seconds", "TYRELL_SHUTDOWN_SECONDS", "18446744073709551615", "from 1 to 3600"),
    ("--shutdown-seconds", "TYRELL_SHUTDOWN_SECONDS", "0", "from 1 to 3600"),
    ("--stats-seconds", "TYRELL_STATS_SECONDS", "0", "from 1 to 86400"),
];

/// The worker with required settings that lead nowhere: it must refuse before any AWS call.
fn worker() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tyrell-worker"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TYRELL_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["--queue-url", "http://127.0.0.1:9/queue/none", "--bucket", "none", "--worker-id", "w"])
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// Runs the worker (at most 15 s, else the test fails with its log) and checks the refusal.
fn assert_refused(cmd: Command, flag: &str, env: &str, bad: &str, range: &str) {
    let mut w = Worker::start(cmd);
    let status = w.wait(Duration::from_secs(15));
    let log = w.log_text();
    assert_eq!(status.code(), Some(2), "{flag}={bad} must be refused with exit code 2, got {status}; log:\n{log}");
    assert!(!log.contains("panicked"), "{flag}={bad}: a panic:\n{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "{flag}={bad}: one sentence, got:\n{log}");
    let want = format!("tyrell-worker: {flag} ({env}) must be ");
    assert!(lines[0].starts_with(&want), "{flag}={bad}: {:?} should start with {want:?}", lines[0]);
    assert!(lines[0].contains(range) && lines[0].contains(&format!("{bad:?}")), "{flag}={bad}: {}", lines[0]);
}

#[test]
fn out_of_range_flags_are_refused_at_start() {
    for &(flag, env, bad, range) in BAD {
        let mut cmd = worker();
        cmd.arg(format!("{flag}={bad}"));
        assert_refused(cmd, flag, env, bad, range);
    }
}

#[test]
fn out_of_range_environment_settings_are_refused_at_start() {
    for &(flag, env, bad, range) in BAD {
        let mut cmd = worker();
        cmd.env(env, bad);
        assert_refused(cmd, flag, env, bad, range);
    }
}

#[test]
fn names_too_long_for_s3_keys_are_refused_at_start() {
    let mut cmd = worker();
    cmd.args(["--prefix", &"p".repeat(1000)]);
    let mut w = Worker::start(cmd);
    let status = w.wait(Duration::from_secs(15));
    let log = w.log_text();
    assert_eq!(status.code(), Some(2), "{log}");
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.starts_with("tyrell-worker: --prefix, --stack and --worker-id") && log.contains("1024"), "{log}");
}
