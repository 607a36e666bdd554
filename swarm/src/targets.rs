//! The `watch` payload: the list of targets to ping.
//!
//! Accepted forms (the original swarm's, plus JSON): host names or addresses separated
//! by whitespace (`example.org 192.0.2.1 ::1`), or a JSON array of strings. An empty
//! payload means "no targets" (it is also how a retained message is cleared).
//! A payload that is not UTF-8, a JSON value that is not an array of strings, or any
//! entry that is not a host name or IP address is malformed: the whole payload is
//! rejected so a typo never silently shrinks the swarm's work.
//!
//! Every target is kept in one canonical spelling ([`canonical`]), so one address or
//! name is one target however it was written: it is pinged once, under one
//! `ping/<target>` topic, and its records carry that spelling.

use std::net::{IpAddr, Ipv6Addr};

/// Upper bound on the targets one `watch` may carry (a bad publish must not exhaust a bee).
pub const MAX_TARGETS: usize = 100_000;

/// Parses a `watch` payload into its distinct targets, each in its [`canonical`]
/// spelling, in order of first appearance (`::1 0:0:0:0:0:0:0:1` is one target, `::1`).
pub fn parse_watch(payload: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8".to_string())?;
    let trimmed = text.trim();
    // JSON only when it is JSON: `[::1] 127.0.0.1` starts with a bracket too, and is the
    // whitespace form with a bracketed IPv6 address first.
    let json = if trimmed.starts_with('[') { serde_json::from_str::<serde_json::Value>(trimmed).ok() } else { None };
    let raw: Vec<String> = match json {
        Some(v) => serde_json::from_value(v).map_err(|e| format!("not a JSON array of strings: {e}"))?,
        None => trimmed.split_whitespace().map(str::to_string).collect(),
    };
    if raw.len() > MAX_TARGETS {
        return Err(format!("{} targets, more than the limit of {MAX_TARGETS}", raw.len()));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for t in raw {
        let t = canonical(&t)?;
        if seen.insert(t.clone()) {
            out.push(t);
        }
    }
    Ok(out)
}

/// The canonical `watch` payload for a target list: space-separated (what the original
/// tools read).
pub fn watch_payload(targets: &[String]) -> String {
    targets.join(" ")
}

/// The one spelling of a target (surrounding whitespace ignored):
///
/// * an IPv6 address in its RFC 5952 text form (lowercase, leading zeros dropped, the
///   longest run of zero groups as `::`), as std's `Ipv6Addr` displays it:
///   `0000:0000::0001` and `0:0:0:0:0:0:0:1` are `::1`;
/// * an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) is the IPv4 host it maps: it is
///   written, and pinged over ICMPv4, as `192.0.2.1`;
/// * an IPv4 address as a dotted quad of decimal numbers (std's `Ipv4Addr` form);
/// * a host name (RFC 1123 labels: letters, digits, `-`, and `_` as some internal names
///   use) in lowercase without the trailing dot of a fully qualified name:
///   `Example.ORG.` is `example.org` (DNS names are case-insensitive, RFC 4343).
///
/// Refused: anything else, including a name the resolver would read as a number
/// (`127.1`, `010.0.0.1`, `2130706433`, `0x7f.1`: its last label is all digits or
/// `0x` and hex digits, which `inet_aton` takes as an IPv4 address — and no top-level
/// domain is numeric, RFC 3696 section 2): write such an address as a dotted quad.
/// The result is also the last level of the `ping/<target>` topic, so it never holds
/// `/`, `+`, `#` or spaces.
pub fn canonical(t: &str) -> Result<String, String> {
    let t = t.trim();
    if let Ok(a) = t.parse::<IpAddr>() {
        return Ok(match a {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => v6.to_string(),
            },
            IpAddr::V4(v4) => v4.to_string(),
        });
    }
    // An IPv6 literal in brackets, as URLs write it.
    if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if let Ok(v6) = inner.parse::<Ipv6Addr>() {
            return canonical(&v6.to_string());
        }
    }
    let name = t.strip_suffix('.').unwrap_or(t).to_ascii_lowercase();
    let labels_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !labels_ok {
        return Err(format!("{t:?} is not a host name or IP address"));
    }
    let last = name.rsplit('.').next().unwrap_or_default();
    let hex = last.strip_prefix("0x").is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
    if last.chars().all(|c| c.is_ascii_digit()) || hex {
        return Err(format!(
            "{t:?} is not a host name, and not an IP address in standard form: write IPv4 addresses as a dotted quad (e.g. 192.0.2.1)"
        ));
    }
    Ok(name)
}

/// A target is an IPv4/IPv6 address or an RFC 1123 host name, in any spelling
/// [`canonical`] accepts.
pub fn validate_target(t: &str) -> Result<(), String> {
    canonical(t).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bracketed_ipv6_address_first_is_the_whitespace_form() {
        assert_eq!(parse_watch(b"[::1] 127.0.0.1").unwrap(), vec!["::1".to_string(), "127.0.0.1".to_string()]);
        assert_eq!(parse_watch(b"[::1]").unwrap(), vec!["::1".to_string()]);
        assert!(parse_watch(br#"["a.example", 1]"#).is_err(), "JSON that is not strings stays malformed");
        assert!(parse_watch(br#"["a.example", "b"#).is_err(), "broken JSON is not a list of targets");
    }

    #[test]
    fn both_forms() {
        assert_eq!(
            parse_watch(b" a.example  127.0.0.1\n::1 a.example ").unwrap(),
            vec!["a.example", "127.0.0.1", "::1"]
        );
        assert_eq!(parse_watch(br#"["example.org", "192.0.2.1"]"#).unwrap(), vec!["example.org", "192.0.2.1"]);
        assert!(parse_watch(b"").unwrap().is_empty());
        assert!(parse_watch(b"  ").unwrap().is_empty());
    }

    #[test]
    fn malformed_payloads_are_rejected_whole() {
        for bad in [
            &b"\xff\xfe"[..],
            b"[1,2]",
            b"[\"a\"",
            b"{\"a\":1}",
            b"good.example bad/slash",
            b"a+b",
            b"#",
            b"-x.org",
            b"a..b",
        ] {
            assert!(parse_watch(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse_watch("x ".repeat(MAX_TARGETS + 1).as_bytes()).is_err());
    }

    #[test]
    fn one_target_per_address_or_name_however_spelled() {
        assert_eq!(parse_watch(b"::1 0:0:0:0:0:0:0:1 0000:0000::0001").unwrap(), vec!["::1"]);
        assert_eq!(parse_watch(br#"["::1", "0:0:0:0:0:0:0:1", "[::1]"]"#).unwrap(), vec!["::1"]);
        assert_eq!(
            parse_watch(b"2001:DB8::1 2001:0db8:0000:0000:0000:0000:0000:0001 2001:db8:0:0::1").unwrap(),
            vec!["2001:db8::1"]
        );
        // RFC 5952: the longest run of zeros is the one compressed, lowercase hex.
        assert_eq!(canonical("2001:0db8:0:0:1:0:0:0").unwrap(), "2001:db8:0:0:1::");
        assert_eq!(canonical("2001:DB8:0:0:1:0:0:1").unwrap(), "2001:db8::1:0:0:1");
        // IPv4-mapped IPv6 is the IPv4 host; IPv4 is a dotted quad.
        assert_eq!(parse_watch(b"::ffff:127.0.0.1 127.0.0.1 ::FFFF:7f00:1").unwrap(), vec!["127.0.0.1"]);
        // ... but an IPv4-compatible (deprecated) or other IPv6 address stays IPv6.
        assert_eq!(canonical("::127.0.0.1").unwrap(), "::7f00:1");
        // Names: case-insensitive, the trailing dot of a fully qualified name dropped.
        assert_eq!(parse_watch(b"Example.ORG. example.org EXAMPLE.org").unwrap(), vec!["example.org"]);
        assert_eq!(canonical(" a.example ").unwrap(), "a.example");
        // Numbers the resolver would read as IPv4 addresses are refused, not guessed.
        for bad in ["127.1", "010.0.0.1", "127.000.000.001", "2130706433", "0x7f.1", "0x7F000001", "a.."] {
            assert!(canonical(bad).is_err(), "{bad}");
        }
        // Names that only look numeric inside are fine.
        assert_eq!(canonical("1.2.3.example").unwrap(), "1.2.3.example");
        assert_eq!(canonical("0xdead.example").unwrap(), "0xdead.example");
        // The canonical form is a fixed point.
        for t in ["::1", "127.0.0.1", "example.org", "2001:db8::1", "fe80::1"] {
            assert_eq!(canonical(t).unwrap(), t);
        }
    }

    #[test]
    fn canonical_payload() {
        let t = vec!["a".to_string(), "::1".to_string()];
        assert_eq!(parse_watch(watch_payload(&t).as_bytes()).unwrap(), t);
    }
}
