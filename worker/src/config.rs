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
    /// Key prefix inside the bucket (records under PREFIX/YYYY/MM/DD/HH/, malformed
    /// messages under PREFIX/errors/YYYY/MM/DD/HH/).
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
    /// Receive calls kept in flight at once (each asks for 10 messages).
    #[arg(long, env = "TYRELL_RECEIVERS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub receivers: u16,
    /// Long-poll wait of each receive, seconds (0..=20).
    #[arg(long, env = "TYRELL_WAIT_SECONDS", default_value_t = 20, value_parser = clap::value_parser!(i32).range(0..=20))]
    pub wait_seconds: i32,
    /// Visibility timeout asked for on receive and renewed while a message is held, seconds.
    #[arg(long, env = "TYRELL_VISIBILITY_TIMEOUT", default_value_t = 120, value_parser = clap::value_parser!(i32).range(1..=43200))]
    pub visibility_timeout: i32,
    /// Flush when this many bytes of records are buffered (Firehose's default: 5 MiB).
    #[arg(long, env = "TYRELL_FLUSH_BYTES", default_value_t = 5 * 1024 * 1024)]
    pub flush_bytes: usize,
    /// Flush when the oldest buffered record has waited this long, seconds (fractions allowed).
    #[arg(long, env = "TYRELL_FLUSH_SECONDS", default_value_t = 60.0)]
    pub flush_seconds: f64,
    /// S3 PUTs in flight at once.
    #[arg(long, env = "TYRELL_UPLOADS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub uploads: u16,
    /// After SIGTERM/SIGINT, give up flushing after this many seconds (what is not
    /// deleted by then is redelivered to another run: duplicated, never lost).
    #[arg(long, env = "TYRELL_SHUTDOWN_SECONDS", default_value_t = 30)]
    pub shutdown_seconds: u64,
    /// Log the counters this often, seconds.
    #[arg(long, env = "TYRELL_STATS_SECONDS", default_value_t = 60)]
    pub stats_seconds: u64,
}

impl Config {
    pub fn flush_age(&self) -> Duration {
        Duration::from_secs_f64(self.flush_seconds.max(0.0))
    }

    pub fn visibility(&self) -> Duration {
        Duration::from_secs(self.visibility_timeout as u64)
    }

    /// The prefix without surrounding slashes ("" when none).
    pub fn key_prefix(&self) -> &str {
        self.prefix.trim_matches('/')
    }

    /// The worker name used in object keys.
    pub fn worker_name(&self) -> String {
        let name = match &self.worker_id {
            Some(id) => id.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "worker".into()),
        };
        sanitize(name.trim())
    }

    /// Buffered plus in-flight record bytes above which receiving pauses.
    pub fn max_held_bytes(&self) -> usize {
        self.flush_bytes.saturating_mul(3).max(record::MAX_MESSAGE_BYTES * 20)
    }
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
}
