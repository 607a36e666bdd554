//! The programs that run on the swarm's boxes, and what they share.
//!
//! * `bee` ([`ping`]): pings every target of the retained `watch` list with ICMP echo and
//!   publishes one [`record::PingRecord`] per target and round on `ping/<target>`.
//! * `indexer` ([`sink`], [`sqs`], [`influx`]): takes `ping/+` through an MQTT 5 shared
//!   subscription and delivers the records to SQS (packed many to a message) and InfluxDB.
//! * `router` ([`router`]): the HTTP API behind the load balancer.
//!
//! The MQTT contract (kept from the original Python swarm) lives in [`topics`] and
//! [`targets`]; configuration, secrets and logging in [`config`]; the connection in [`mqtt`].

pub mod config;
pub mod influx;
pub mod mqtt;
pub mod ping;
pub mod router;
pub mod share;
pub mod sink;
pub mod sqs;
pub mod stats;
pub mod targets;
pub mod topics;

/// Exponential backoff with jitter, for reconnecting and retrying (`Backoff::new`: up to
/// 25 % jitter), shared with the other crates.
pub use common::Backoff;

/// Now as RFC 3339 UTC with milliseconds (`2026-11-23T10:00:00.123Z`), the record's `ts`.
pub fn now_ts() -> String {
    format_ts(time::OffsetDateTime::now_utc())
}

/// A time as the record's `ts` form, RFC 3339 UTC with milliseconds.
pub fn format_ts(t: time::OffsetDateTime) -> String {
    common::rfc3339::millis(t)
}

/// Milliseconds since the epoch of a record timestamp (RFC 3339).
pub fn ts_millis(ts: &str) -> Option<i64> {
    let t = common::rfc3339::parse(ts)?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// This machine's host name (for default client ids and agent names); `localhost` when
/// the system does not say.
pub fn hostname() -> String {
    common::host_name().unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_record_shaped() {
        let ts = now_ts();
        assert!(record::hour_of(&ts).is_some(), "{ts}");
        assert_eq!(ts_millis("2026-11-23T10:00:00.123Z"), Some(1_795_428_000_123));
        assert_eq!(format_ts(time::macros::datetime!(2026-11-23 10:00:00.123 UTC)), "2026-11-23T10:00:00.123Z");
    }
}
