//! One implementation of each cross-cutting idea the tyrell crates share (cli, swarm,
//! worker, local). Small and dependency-light on purpose: only `time`.
//!
//! * [`duration`]: the one duration grammar (`250ms`, `1.5s`, `15m`, `1h`, bare seconds)
//!   every setting and flag reads, and its canonical spelling.
//! * [`Backoff`]: doubling delays up to a cap, exact or with jitter.
//! * [`error_chain`]: an error and its causes on one line.
//! * [`rfc3339`]: RFC 3339 UTC timestamps, to the second or the millisecond.
//! * [`host_name`]: this machine's host name.

pub mod duration;
pub mod rfc3339;

mod backoff;
pub use backoff::Backoff;

/// An error and its causes on one line, `outer: inner: innermost`. A cause whose text
/// repeats one already said is left out (SDK and hyper errors often wrap one message
/// twice). The SDK's and hyper's own `Display` is terse ("dispatch failure", "client
/// error (Connect)"); the useful part ("Connection refused") is in the chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !parts.contains(&s) {
            parts.push(s);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// This machine's host name: `/proc/sys/kernel/hostname`, else `/etc/hostname`, else the
/// `HOSTNAME` environment variable; trimmed. `None` when none of them says anything, so
/// each caller picks its own fallback (a lock's `unknown-host`, a client id's `localhost`).
pub fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .chain(std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn an_error_chain_is_one_line_without_repeats() {
        let leaf = E("Connection refused", None);
        let twice = E("io error", Some(Box::new(leaf)));
        let e = E("dispatch failure", Some(Box::new(E("io error", Some(Box::new(twice))))));
        assert_eq!(error_chain(&e), "dispatch failure: io error: Connection refused");
        assert_eq!(error_chain(&E("alone", None)), "alone");
    }

    #[test]
    fn this_host_has_a_name() {
        let n = host_name().expect("a Linux host says its name");
        assert!(!n.is_empty() && n == n.trim(), "{n:?}");
    }
}
