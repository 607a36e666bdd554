//! The one duration grammar of tyrell: every program setting (`BEE_INTERVAL=250ms`) and
//! every `tyrell` flag (`--timeout 15m`, `--bake 90s`) reads durations with [`parse`].
//!
//! Grammar: a non-negative decimal number, optionally followed by a unit, with optional
//! spaces around: `ms` (milliseconds), `s` (seconds), `m` (minutes), `h` (hours); no unit
//! means seconds. `250ms`, `0.5`, `1.5s`, `15m`, `1h`. Nothing else (no `1h30m`, no `d`).
//! [`format`] writes a duration back in the largest unit that is exact.

use std::time::Duration;

/// Parses a duration in the grammar above.
///
/// Errors (one sentence, never a panic): a missing or malformed number (also a sign,
/// `NaN`, `inf`), a unit other than `ms`, `s`, `m`, `h`, or a value too large for a
/// [`Duration`]. Callers check the range themselves, naming their setting.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 =
        num.parse().map_err(|_| format!("bad duration {s:?}: a number with ms, s, m or h (e.g. 250ms, 10s, 15m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?}: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("bad duration {s:?}: too large"))
}

/// A duration as [`parse`] reads it, in the largest exact unit: `0s`, `250ms`, `10s`,
/// `2m`, `1h`, `65535s`. Below a millisecond is rounded down.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar() {
        for (s, ms) in [
            ("250ms", 250),
            ("10s", 10_000),
            ("10", 10_000),
            ("0.5", 500),
            ("1.5s", 1500),
            ("2m", 120_000),
            ("15m", 900_000),
            ("1h", 3_600_000),
            (" 90 s ", 90_000),
            ("0", 0),
        ] {
            assert_eq!(parse(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for bad in ["", "s", "-1s", "NaN", "inf", "1d", "1h30m", "10 sec", "1e3", "99999999999999999999999h", "1.2.3s"]
        {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn format_reads_back() {
        for (ms, s) in
            [(0, "0s"), (250, "250ms"), (10_000, "10s"), (120_000, "2m"), (3_600_000, "1h"), (65_535_000, "65535s")]
        {
            let d = Duration::from_millis(ms);
            assert_eq!(format(d), s);
            assert_eq!(parse(s), Ok(d));
        }
    }
}
