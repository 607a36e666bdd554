//! ACM (Certificate Manager): reading the certificates a swarm's listeners are given, so a
//! bad one is refused before any stack is made.

use aws_sdk_acm::Client;

use super::{describe, error_code, AwsError};

/// What tyrell checks of a certificate: its status (`ISSUED`, `PENDING_VALIDATION`,
/// `EXPIRED`, ... as ACM spells it) and the names it covers (its domain name first, then
/// the subject alternative names, wildcards as written, e.g. `*.example.org`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub arn: String,
    pub status: String,
    pub names: Vec<String>,
}

impl Certificate {
    /// Whether the certificate is valid for the DNS name `host`: an exact name, or a
    /// wildcard `*.D` matching exactly one label in front of `D` (RFC 6125 §6.4.3, the
    /// rule TLS clients such as rustls apply). Compared without case.
    pub fn covers(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.names.iter().any(|n| {
            let n = n.to_ascii_lowercase();
            match n.strip_prefix("*.") {
                Some(rest) => host.split_once('.').is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
                None => n == host,
            }
        })
    }
}

/// The certificate `arn` in the client's region; `None` when ACM there does not know it
/// (`ResourceNotFoundException`, also what a certificate of another region gives).
pub async fn certificate(acm: &Client, arn: &str) -> Result<Option<Certificate>, AwsError> {
    match acm.describe_certificate().certificate_arn(arn).send().await {
        Ok(out) => {
            let Some(c) = out.certificate() else { return Ok(None) };
            let mut names: Vec<String> = c.domain_name().map(str::to_string).into_iter().collect();
            for n in c.subject_alternative_names() {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
            Ok(Some(Certificate {
                arn: arn.to_string(),
                status: c.status().map(|s| s.as_str().to_string()).unwrap_or_default(),
                names,
            }))
        }
        Err(e) if matches!(error_code(&e), Some("ResourceNotFoundException")) => Ok(None),
        Err(e) => Err(describe(&format!("cannot read certificate {arn}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Certificate {
        Certificate { arn: "a".into(), status: "ISSUED".into(), names: names.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn names_and_wildcards() {
        let c = cert(&["mqtt.swarm1.example.org", "*.example.net"]);
        assert!(c.covers("mqtt.swarm1.example.org"));
        assert!(c.covers("MQTT.swarm1.example.org"));
        assert!(c.covers("mqtt.example.net"));
        assert!(!c.covers("example.net"), "a wildcard needs a label");
        assert!(!c.covers("a.b.example.net"), "a wildcard covers one label only");
        assert!(!c.covers("swarm1.example.org"));
    }
}
