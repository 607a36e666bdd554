//! Input validation: everything an operator types is checked here, before the first call
//! that changes anything in AWS. Each error is one sentence saying what is wrong and what
//! is expected.

use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct Invalid(pub String);

fn bad(msg: String) -> Result<(), Invalid> {
    Err(Invalid(msg))
}

/// Network, swarm and metrics-box names: they become CloudFormation stack names and the
/// prefix of every resource name, so they are short, lowercase and DNS-safe. 2-28
/// characters: the fleet template's `Swarm` parameter (`^[a-z][a-z0-9-]{0,27}[a-z0-9]$`)
/// takes no one-letter name, so a one-letter swarm could never hold a version.
pub fn name(kind: &str, s: &str) -> Result<(), Invalid> {
    let ok = s.len() >= 2
        && s.len() <= 28
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && !s.contains("--")
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        bad(format!(
            "invalid {kind} name {s:?}: use 2-28 lowercase letters, digits and single hyphens, starting with a letter and not ending with a hyphen"
        ))
    }
}

/// Role version ids: what `--version` accepts and what tyrell generates.
pub fn version(s: &str) -> Result<(), Invalid> {
    if !s.is_empty() && s.len() <= 16 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        Ok(())
    } else {
        bad(format!("invalid version {s:?}: use 1-16 lowercase letters and digits (e.g. v2 or 20261123a)"))
    }
}

fn hex_id(kind: &str, prefix: &str, s: &str) -> Result<(), Invalid> {
    let ok = s.strip_prefix(prefix).is_some_and(|h| {
        (h.len() == 8 || h.len() == 17) && h.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    });
    if ok {
        Ok(())
    } else {
        bad(format!("invalid {kind} {s:?}: expected {prefix} followed by 8 or 17 lowercase hex digits"))
    }
}

pub fn ami(s: &str) -> Result<(), Invalid> {
    hex_id("AMI id", "ami-", s)
}

pub fn vpc(s: &str) -> Result<(), Invalid> {
    hex_id("VPC id", "vpc-", s)
}

/// An IPv4 CIDR block `a.b.c.d/n` with no host bits set; returns the prefix length.
pub fn cidr(s: &str) -> Result<u8, Invalid> {
    let err = || Invalid(format!("invalid CIDR {s:?}: expected an IPv4 block like 10.0.0.0/16"));
    let (ip, len) = s.split_once('/').ok_or_else(err)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| err())?;
    let len: u8 = len.parse().map_err(|_| err())?;
    if len > 32 {
        return Err(err());
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    if u32::from(ip) & !mask != 0 {
        return Err(Invalid(format!(
            "invalid CIDR {s:?}: host bits are set (did you mean {}/{len}?)",
            Ipv4Addr::from(u32::from(ip) & mask)
        )));
    }
    Ok(len)
}

/// A VPC's CIDR: a /16 (the network template cuts fixed /20 and /19 subnets from it).
pub fn vpc_cidr(s: &str) -> Result<(), Invalid> {
    let len = cidr(s)?;
    if len == 16 {
        Ok(())
    } else {
        bad(format!("invalid network CIDR {s:?}: a tyrell network is a /16 block, e.g. 10.0.0.0/16"))
    }
}

/// An ACM certificate ARN in shape (`arn:<partition>:acm:...`); whether ACM holds it is
/// asked of ACM (`Engine::check_certificate`). `what` names the option or key.
pub fn certificate_arn(what: &str, s: &str) -> Result<(), Invalid> {
    if s.starts_with("arn:") && s.contains(":acm:") {
        Ok(())
    } else {
        bad(format!("invalid {what} {s:?}: expected an ACM certificate ARN (arn:aws:acm:...)"))
    }
}

/// A DNS host name a TLS client connects to and checks against a certificate: lowercase
/// labels of letters, digits and inner hyphens, 1-63 characters each, at least two labels,
/// a letter-only last label, 253 characters at most (RFC 1035 §2.3.1, RFC 1123 §2.1; the
/// same pattern as the base template's `BrokerDnsName`). `what` names the option.
pub fn dns_name(what: &str, s: &str) -> Result<(), Invalid> {
    let labels: Vec<&str> = s.split('.').collect();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let last_ok = labels.last().is_some_and(|l| l.len() >= 2 && l.bytes().all(|b| b.is_ascii_lowercase()));
    if s.len() <= 253 && labels.len() >= 2 && labels.iter().all(|l| label_ok(l)) && last_ok {
        Ok(())
    } else {
        bad(format!("invalid {what} {s:?}: expected a lowercase DNS name like mqtt.swarm1.example.org"))
    }
}

/// An admin CIDR: never the whole internet.
pub fn admin_cidr(s: &str) -> Result<(), Invalid> {
    let len = cidr(s)?;
    if len == 0 {
        bad(format!("refusing --allow-cidr {s}: admin access must not be open to the whole internet; give your own address range"))
    } else {
        Ok(())
    }
}

pub fn instance_type(s: &str) -> Result<(), Invalid> {
    let ok = s.split_once('.').is_some_and(|(fam, size)| {
        !fam.is_empty()
            && !size.is_empty()
            && fam.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && size.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        bad(format!("invalid instance type {s:?}: expected a type like t3.micro or c7g.large"))
    }
}

pub const MAX_SIZE: i32 = 500;

pub fn size(n: i32) -> Result<(), Invalid> {
    if (0..=MAX_SIZE).contains(&n) {
        Ok(())
    } else {
        bad(format!("invalid size {n} (-s/--size): a fleet holds 0 to {MAX_SIZE} instances"))
    }
}

/// A size for a version of `role`: [`size`], and one box for brokers. A broker version's
/// boxes behind the NLB are not bridged to each other (tyrell-broker-bridge bridges a
/// booting broker only to those announced before it, and never the results `ping/+`), so
/// a bee on one box and a router on another would not hear each other (issue 11 item 1;
/// docs/ARCHITECTURE.md, "Broker releases").
pub fn role_size(role: &str, n: i32) -> Result<(), Invalid> {
    size(n)?;
    if role == "broker" && n > 1 {
        return bad(format!(
            "invalid size {n} for brokers (-s/--size): a broker version runs 1 box, since boxes behind one NLB are not bridged to each other and would split publishers from subscribers"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_versions_run_one_box() {
        assert!(role_size("broker", 1).is_ok() && role_size("broker", 0).is_ok() && role_size("bee", 5).is_ok());
        let e = role_size("broker", 2).unwrap_err().to_string();
        assert!(e.contains("runs 1 box") && e.contains("not bridged"), "{e}");
        assert!(role_size("bee", MAX_SIZE + 1).is_err());
    }

    #[test]
    fn names() {
        for ok in ["swarm1", "ab", "swarm-net", "s1-2"] {
            assert!(name("swarm", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "Swarm", "1swarm", "swarm-", "sw--arm", "swarm_1", "a".repeat(29).as_str(), "sw arm"] {
            assert!(name("swarm", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids() {
        assert!(ami("ami-0123abcd").is_ok());
        assert!(ami("ami-0123456789abcdef0").is_ok());
        for bad in ["ami-0b1", "ami-0123ABCD", "ami-0123abcdx", "0123abcd", "ami-0123456789abcdef"] {
            assert!(ami(bad).is_err(), "{bad}");
        }
        assert!(vpc("vpc-0abc1234").is_ok());
        assert!(vpc("vpc-0abc").is_err());
        assert!(version("v261123101500").is_ok());
        assert!(version("V1").is_err());
        assert!(version("v-1").is_err());
        assert!(version(&"a".repeat(17)).is_err());
    }

    #[test]
    fn cidrs() {
        assert_eq!(cidr("10.0.0.0/16"), Ok(16));
        assert!(cidr("10.0.0.1/16").unwrap_err().0.contains("did you mean 10.0.0.0/16"));
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/16", "x/16", "10.0.0.256/24"] {
            assert!(cidr(bad).is_err(), "{bad}");
        }
        assert!(vpc_cidr("10.0.0.0/24").is_err());
        assert!(vpc_cidr("10.1.0.0/16").is_ok());
        assert!(admin_cidr("0.0.0.0/0").is_err());
        assert!(admin_cidr("203.0.113.7/32").is_ok());
    }

    #[test]
    fn sizes_and_types() {
        assert!(size(0).is_ok() && size(MAX_SIZE).is_ok());
        assert!(size(-1).is_err() && size(MAX_SIZE + 1).is_err());
        assert!(instance_type("t3.micro").is_ok());
        assert!(instance_type("t3").is_err() && instance_type("T3.micro").is_err());
    }
}
