//! RFC 3339 timestamps, always in UTC (`Z`).

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// `t` in UTC to the second: `2026-11-23T10:00:00Z` (tags, locks, metadata).
pub fn seconds(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    // Formatting a UTC time of year 0..=9999 cannot fail; the fallback keeps it total.
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Now, as [`seconds`].
pub fn now_seconds() -> String {
    seconds(OffsetDateTime::now_utc())
}

/// `t` in UTC with exactly three fraction digits: `2026-11-23T10:00:00.123Z` (the ping
/// record's `ts`).
pub fn millis(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses any RFC 3339 timestamp (any offset); `None` when it is not one.
pub fn parse(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn forms() {
        assert_eq!(seconds(datetime!(2026-11-23 10:00:00.987 UTC)), "2026-11-23T10:00:00Z");
        assert_eq!(seconds(datetime!(2026-11-23 12:00:00 +02:00)), "2026-11-23T10:00:00Z");
        assert_eq!(millis(datetime!(2026-11-23 10:00:00.123 UTC)), "2026-11-23T10:00:00.123Z");
        assert_eq!(parse("2026-11-23T11:00:00+01:00"), Some(datetime!(2026-11-23 10:00:00 UTC)));
        assert_eq!(parse("yesterday"), None);
        let now = now_seconds();
        assert_eq!(parse(&now).map(seconds), Some(now));
    }
}
