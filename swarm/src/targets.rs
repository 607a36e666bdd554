//! The `watch` payload: the list of targets to ping.
//!
//! Accepted forms (the original swarm's, plus JSON): host names or addresses separated
//! by whitespace (`example.org 192.0.2.1 ::1`), or a JSON array of strings. An empty
//! payload means "no targets" (it is also how a retained message is cleared).
//! A payload that is not UTF-8, a JSON value that is not an array of strings, or any
//! entry that is not a host name or IP address is malformed: the whole payload is
//! rejected so a typo never silently shrinks the swarm's work.

use std::net::IpAddr;

/// Upper bound on the targets one `watch` may carry (a bad publish must not exhaust a bee).
pub const MAX_TARGETS: usize = 100_000;

/// Parses a `watch` payload into its distinct targets, in order of first appearance.
pub fn parse_watch(payload: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8".to_string())?;
    let trimmed = text.trim();
    let raw: Vec<String> = if trimmed.starts_with('[') {
        serde_json::from_str::<Vec<String>>(trimmed).map_err(|e| format!("not a JSON array of strings: {e}"))?
    } else {
        trimmed.split_whitespace().map(str::to_string).collect()
    };
    if raw.len() > MAX_TARGETS {
        return Err(format!("{} targets, more than the limit of {MAX_TARGETS}", raw.len()));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for t in raw {
        let t = t.trim().to_string();
        validate_target(&t)?;
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

/// A target is an IPv4/IPv6 address or an RFC 1123 host name. It also becomes the last
/// level of the `ping/<target>` topic, so it can never hold `/`, `+`, `#` or spaces.
pub fn validate_target(t: &str) -> Result<(), String> {
    if t.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !t.is_empty()
        && t.len() <= 253
        && t.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{t:?} is not a host name or IP address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn canonical_payload() {
        let t = vec!["a".to_string(), "::1".to_string()];
        assert_eq!(parse_watch(watch_payload(&t).as_bytes()).unwrap(), t);
    }
}
