//! Command line and environment: every flag can also be set from a `TYRELL_*` variable,
//! so the systemd unit configures the worker with an `EnvironmentFile=`.

use std::time::Duration;

use clap::Parser;

/// Drains ping records from an SQS queue into hour-partitioned gzip NDJSON objects in S3.
///
/// AWS region, credentials and endpoint come from the standard AWS chain
/// (`AWS_REGION`, `AWS_PROFILE`, `AWS_ENDPOINT_URL`, instance role, ...).
#[derive(Parser, Debug, Clone)]
#[command(name = "tyrell-worker", version, about, long_about = None, args_override_self = true)]
pub struct Config {
    /// The queue to drain.
    #[arg(long, env = "TYRELL_QUEUE_URL")]
    pub queue_url: String,
    /// The archive bucket.
    #[arg(long, env = "TYRELL_BUCKET")]
    pub bucket: String,
    /// Key prefix inside the bucket (records under PREFIX/YYYY/MM/DD/HH/; lines set aside
    /// and malformed messages under PREFIX/errors/YYYY/MM/DD/HH/).
    #[arg(long, env = "TYRELL_PREFIX", default_value = "")]
    pub prefix: String,
    /// Exit 0 once the queue is empty and everything is flushed (the scheduled run);
    /// without it the worker runs until SIGTERM/SIGINT.
    #[arg(long, env = "TYRELL_DRAIN")]
    pub drain: bool,
    /// The swarm name, first part of every object name.
    #[arg(long, env = "TYRELL_STACK", default_value = "tyrell")]
    pub stack: String,
    /// This worker's name in object names (default: the host name).
    #[arg(long, env = "TYRELL_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Receive calls kept in flight at once (each asks for 10 messages), 1..=64.
    #[arg(long, allow_negative_numbers = true, env = "TYRELL_RECEIVERS", default_value_t = 4, value_parser = whole::<u16>(&RECEIVERS))]
    pub receivers: u16,
    /// Long-poll wait of each receive, seconds, 0..=20 (SQS's range).
    #[arg(long, allow_negative_numbers = true, env = "TYRELL_WAIT_SECONDS", default_value_t = 20, value_parser = whole::<i32>(&WAIT_SECONDS))]
    pub wait_seconds: i32,
    /// Visibility timeout asked for on receive and renewed while a message is held, seconds,
    /// 2..=43200 (SQS's maximum; the renewal at half-life needs at least 2).
    #[arg(long, allow_negative_numbers = true, env = "TYRELL_VISIBILITY_TIMEOUT", default_value_t = 120, value_parser = whole::<i32>(&VISIBILITY_TIMEOUT))]
    pub visibility_timeout: i32,
    /// Flush when this many bytes of records are buffered, 1 MiB..=128 MiB (Firehose's
    /// range; its default: 5 MiB).
    #[arg(long, allow_negative_numbers = true, env = "TYRELL_FLUSH_BYTES", default_value_t = 5 * 1024 * 1024, value_parser = whole::<usize>(&FLUSH_BYTES))]
    pub flush_bytes: usize,
    /// Flush when the oldest buffered record has waited this long, seconds (fractions
    /// allowed), 0..=900 (Firehose's range).
    #[arg(long, allow_negative_numbers = true, env = "TYRELL_FLUSH_SECONDS", default_value_t = 60.0, value_parser = seconds(&FLUSH_SECONDS))]
    pub flush_seconds: f64,
    /// S3 PUTs in flight at once, 1..=64.
    #[arg(long, allow_negative_numbers = true, env = "TYRELL_UPLOADS", default_value_t = 4, value_parser = whole::<u16>(&UPLOADS))]
    pub uploads: u16,
    /// After SIGTERM/SIGINT, give up flushing after this many seconds (what is not
    /// deleted by then is redelivered to another run: duplicated, never lost), 1..=3600.
    #[arg(long, allow_negative_numbers = true, env = "TYRELL_SHUTDOWN_SECONDS", default_value_t = 30, value_parser = whole::<u64>(&SHUTDOWN_SECONDS))]
    pub shutdown_seconds: u64,
    /// Log the counters this often, seconds, 1..=86400.
    #[arg(long, allow_negative_numbers = true, env = "TYRELL_STATS_SECONDS", default_value_t = 60, value_parser = whole::<u64>(&STATS_SECONDS))]
    pub stats_seconds: u64,
}

/// A numeric setting: its flag, its environment variable, its allowed range (inclusive)
/// and where that range comes from. Every numeric setting is parsed against one of these,
/// so a value out of range is refused at start with one sentence naming the setting.
#[derive(Debug)]
pub struct Setting {
    pub flag: &'static str,
    pub env: &'static str,
    pub min: f64,
    pub max: f64,
    /// What the number counts, plural ("seconds", "bytes"); "" for a plain count.
    pub unit: &'static str,
    /// Why the range is what it is.
    pub why: &'static str,
}

impl Setting {
    /// The refusal: `--flag (ENV) must be a whole number of UNIT from MIN to MAX, not "VALUE" (WHY)`.
    fn refuse(&self, kind: &str, value: &str) -> String {
        let unit = if self.unit.is_empty() { String::new() } else { format!(" of {}", self.unit) };
        format!(
            "{} ({}) must be {kind}{unit} from {} to {}, not {value:?} ({})",
            self.flag, self.env, self.min, self.max, self.why
        )
    }
}

pub const RECEIVERS: Setting = Setting {
    flag: "--receivers",
    env: "TYRELL_RECEIVERS",
    min: 1.0,
    max: 64.0,
    unit: "",
    why: "receive calls in flight; each takes up to 10 messages",
};
pub const WAIT_SECONDS: Setting = Setting {
    flag: "--wait-seconds",
    env: "TYRELL_WAIT_SECONDS",
    min: 0.0,
    max: 20.0,
    unit: "seconds",
    why: "SQS ReceiveMessage WaitTimeSeconds allows 0 to 20",
};
/// The renewal looks at held messages every 0.5 s and renews those past half their
/// timeout, so half the timeout must span at least two looks: 2 s.
pub const VISIBILITY_TIMEOUT: Setting = Setting {
    flag: "--visibility-timeout",
    env: "TYRELL_VISIBILITY_TIMEOUT",
    min: 2.0,
    max: 43200.0,
    unit: "seconds",
    why: "SQS allows at most 43200 s, 12 hours; the renewal at half-life, checked every 0.5 s, needs at least 2 s",
};
pub const FLUSH_BYTES: Setting = Setting {
    flag: "--flush-bytes",
    env: "TYRELL_FLUSH_BYTES",
    min: 1048576.0,
    max: 134217728.0,
    unit: "bytes",
    why: "1 MiB to 128 MiB, the buffer sizes Kinesis Data Firehose allows",
};
pub const FLUSH_SECONDS: Setting = Setting {
    flag: "--flush-seconds",
    env: "TYRELL_FLUSH_SECONDS",
    min: 0.0,
    max: 900.0,
    unit: "seconds",
    why: "0 to 900 s, the buffer intervals Kinesis Data Firehose allows",
};
pub const UPLOADS: Setting =
    Setting { flag: "--uploads", env: "TYRELL_UPLOADS", min: 1.0, max: 64.0, unit: "", why: "S3 PUTs in flight" };
pub const SHUTDOWN_SECONDS: Setting = Setting {
    flag: "--shutdown-seconds",
    env: "TYRELL_SHUTDOWN_SECONDS",
    min: 1.0,
    max: 3600.0,
    unit: "seconds",
    why: "the bound on the flush after SIGTERM; systemd stops the unit after TimeoutStopSec anyway",
};
pub const STATS_SECONDS: Setting = Setting {
    flag: "--stats-seconds",
    env: "TYRELL_STATS_SECONDS",
    min: 1.0,
    max: 86400.0,
    unit: "seconds",
    why: "from every second to once a day",
};

/// A parser for a whole-number setting: refuses anything that is not a whole number in
/// `setting`'s range, with [`Setting::refuse`]'s sentence.
fn whole<T>(setting: &'static Setting) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: TryFrom<i64> + Clone + Send + Sync + 'static,
{
    move |value: &str| {
        value
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| (setting.min..=setting.max).contains(&(*n as f64)))
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| setting.refuse("a whole number", value))
    }
}

/// A parser for a setting in seconds that may have a fraction: refuses anything that is not
/// a finite number in `setting`'s range (no NaN, no infinity).
fn seconds(setting: &'static Setting) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |value: &str| {
        value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && (setting.min..=setting.max).contains(n))
            .ok_or_else(|| setting.refuse("a number", value))
    }
}

/// S3's limit on the length of an object key, in bytes.
pub const S3_MAX_KEY_BYTES: usize = 1024;
/// The longest SQS message id (it names errors/ objects), in characters.
pub const SQS_MAX_MESSAGE_ID: usize = 100;

impl Config {
    /// Parses the command line and the environment, then [`Config::check`]s the settings
    /// that depend on each other. On any fault: one sentence on stderr and exit code 2
    /// (help and version print and exit 0) — never a panic.
    pub fn from_args() -> Config {
        let cfg = Config::try_parse().unwrap_or_else(|e| match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => e.exit(),
            // Our own parsers' sentence (a numeric setting out of range).
            clap::error::ErrorKind::ValueValidation if std::error::Error::source(&e).is_some() => {
                let reason = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
                refuse(&reason)
            }
            _ => {
                let _ = e.print();
                std::process::exit(2)
            }
        });
        if let Err(reason) = cfg.check() {
            refuse(&reason);
        }
        cfg
    }

    /// What the argument parser cannot check on one value alone: the names that end up in
    /// object keys must keep every key within S3's 1024-byte limit, and the queue and the
    /// bucket must be named. The error is one sentence naming the settings.
    pub fn check(&self) -> Result<(), String> {
        if self.queue_url.trim().is_empty() {
            return Err("--queue-url (TYRELL_QUEUE_URL) must not be empty".into());
        }
        if self.bucket.trim().is_empty() {
            return Err("--bucket (TYRELL_BUCKET) must not be empty".into());
        }
        let (stack, worker) = (sanitize(&self.stack), self.worker_name());
        let last = (9999, 12, 31, 23);
        let longest = crate::buffer::object_key(
            self.key_prefix(),
            last,
            &stack,
            &worker,
            "9999-12-31T23:59:59",
            &uuid::Uuid::nil().to_string(),
        )
        .len()
        .max(crate::buffer::error_key(self.key_prefix(), last, &stack, &worker, &"m".repeat(SQS_MAX_MESSAGE_ID)).len());
        if longest > S3_MAX_KEY_BYTES {
            return Err(format!(
                "--prefix, --stack and --worker-id (TYRELL_PREFIX, TYRELL_STACK, TYRELL_WORKER_ID) make object keys \
                 of up to {longest} bytes, more than S3's limit of {S3_MAX_KEY_BYTES}"
            ));
        }
        Ok(())
    }

    /// `--flush-seconds` as a duration (the parser keeps it finite, in 0..=900).
    pub fn flush_age(&self) -> Duration {
        Duration::from_secs_f64(self.flush_seconds.clamp(0.0, FLUSH_SECONDS.max))
    }

    /// `--visibility-timeout` as a duration.
    pub fn visibility(&self) -> Duration {
        Duration::from_secs(self.visibility_timeout.max(0) as u64)
    }

    /// The prefix without surrounding slashes ("" when none).
    pub fn key_prefix(&self) -> &str {
        self.prefix.trim_matches('/')
    }

    /// The worker name used in object keys.
    pub fn worker_name(&self) -> String {
        let name = match &self.worker_id {
            Some(id) => id.clone(),
            None => common::host_name().unwrap_or_else(|| "worker".into()),
        };
        sanitize(name.trim())
    }

    /// Buffered plus in-flight record bytes above which receiving pauses.
    pub fn max_held_bytes(&self) -> usize {
        self.flush_bytes.saturating_mul(3).max(record::MAX_MESSAGE_BYTES * 20)
    }
}

/// Prints the sentence why the worker cannot start and exits with code 2.
fn refuse(reason: &str) -> ! {
    eprintln!("tyrell-worker: {reason}");
    std::process::exit(2)
}

/// Keeps key components to `[A-Za-z0-9._-]`, so a name never adds a path level.
pub fn sanitize(s: &str) -> String {
    let out: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    if out.is_empty() {
        "_".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_firehose_and_sqs() {
        let c = Config::try_parse_from(["tyrell-worker", "--queue-url", "q", "--bucket", "b"]).unwrap();
        assert_eq!((c.wait_seconds, c.flush_bytes, c.flush_age()), (20, 5 << 20, Duration::from_secs(60)));
        assert!(!c.drain);
        assert_eq!(c.key_prefix(), "");
        let c = Config::try_parse_from([
            "w",
            "--queue-url",
            "q",
            "--bucket",
            "b",
            "--prefix",
            "/a/b/",
            "--worker-id",
            "i 1/x",
        ])
        .unwrap();
        assert_eq!((c.key_prefix(), c.worker_name().as_str()), ("a/b", "i_1_x"));
        assert!(Config::try_parse_from(["w", "--queue-url", "q", "--bucket", "b", "--wait-seconds", "21"]).is_err());
        // A later flag overrides an earlier one (and the environment).
        let c = Config::try_parse_from(["w", "--queue-url", "q", "--bucket", "b", "--bucket", "c"]).unwrap();
        assert_eq!(c.bucket, "c");
    }

    fn parse(extra: &[&str]) -> Result<Config, String> {
        let args = [&["w", "--queue-url", "q", "--bucket", "b"][..], extra].concat();
        let c = Config::try_parse_from(args).map_err(|e| match std::error::Error::source(&e) {
            Some(s) => s.to_string(),
            None => e.to_string(),
        })?;
        c.check()?;
        Ok(c)
    }

    #[test]
    fn every_numeric_setting_takes_its_whole_range() {
        for (flag, lo, hi) in [
            ("--receivers", "1", "64"),
            ("--wait-seconds", "0", "20"),
            ("--visibility-timeout", "2", "43200"),
            ("--flush-bytes", "1048576", "134217728"),
            ("--flush-seconds", "0", "900"),
            ("--uploads", "1", "64"),
            ("--shutdown-seconds", "1", "3600"),
            ("--stats-seconds", "1", "86400"),
        ] {
            for v in [lo, hi] {
                assert!(parse(&[flag, v]).is_ok(), "{flag} {v}: {:?}", parse(&[flag, v]).err());
            }
        }
        let c = parse(&["--flush-seconds", "0.25", "--visibility-timeout", "43200"]).unwrap();
        assert_eq!((c.flush_age(), c.visibility()), (Duration::from_millis(250), Duration::from_secs(43200)));
    }

    #[test]
    fn a_value_out_of_range_is_refused_naming_the_setting_and_its_range() {
        for (flag, env, bad, range) in [
            ("--receivers", "TYRELL_RECEIVERS", "0", "from 1 to 64"),
            ("--wait-seconds", "TYRELL_WAIT_SECONDS", "21", "from 0 to 20"),
            ("--visibility-timeout", "TYRELL_VISIBILITY_TIMEOUT", "43201", "from 2 to 43200"),
            ("--visibility-timeout", "TYRELL_VISIBILITY_TIMEOUT", "1", "from 2 to 43200"),
            ("--flush-bytes", "TYRELL_FLUSH_BYTES", "0", "from 1048576 to 134217728"),
            ("--flush-seconds", "TYRELL_FLUSH_SECONDS", "inf", "from 0 to 900"),
            ("--flush-seconds", "TYRELL_FLUSH_SECONDS", "NaN", "from 0 to 900"),
            ("--flush-seconds", "TYRELL_FLUSH_SECONDS", "-1", "from 0 to 900"),
            ("--uploads", "TYRELL_UPLOADS", "65", "from 1 to 64"),
            ("--shutdown-seconds", "TYRELL_SHUTDOWN_SECONDS", "18446744073709551615", "from 1 to 3600"),
            ("--stats-seconds", "TYRELL_STATS_SECONDS", "0", "from 1 to 86400"),
            ("--stats-seconds", "TYRELL_STATS_SECONDS", "1.5", "from 1 to 86400"),
        ] {
            let err = parse(&[flag, bad]).unwrap_err();
            assert!(err.starts_with(&format!("{flag} ({env}) must be ")), "{err}");
            assert!(err.contains(range) && err.contains(&format!("{bad:?}")), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn names_that_would_make_keys_too_long_for_s3_are_refused() {
        let long = "p".repeat(900);
        let err = parse(&["--prefix", &long, "--worker-id", "w"]).unwrap_err();
        assert!(err.contains("--prefix, --stack and --worker-id") && err.contains("1024"), "{err}");
        assert!(parse(&["--prefix", &"p".repeat(800), "--worker-id", "w"]).is_ok());
        assert!(parse(&["--bucket", " "]).unwrap_err().contains("--bucket (TYRELL_BUCKET)"));
    }
}
