//! Typed values at the boundary: what an operator types, checked once when the command
//! line is parsed (each type is a clap value parser through [`FromStr`]), then carried
//! as a type the engine can trust. A wrong value is a usage error (exit 2) saying what is
//! wrong and what is expected, in the words of [`validate`].

use std::fmt;
use std::str::FromStr;

use super::validate::{self, Invalid};

/// A swarm's name (its base stack's name): 2-28 lowercase letters, digits and single
/// hyphens, starting with a letter ([`validate::name`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct SwarmName(String);

impl FromStr for SwarmName {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        validate::name("swarm", s)?;
        Ok(SwarmName(s.to_string()))
    }
}

/// A role version id: 1-16 lowercase letters and digits ([`validate::version`]), e.g.
/// the generated `v261123101500`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Version(String);

impl FromStr for Version {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        validate::version(s)?;
        Ok(Version(s.to_string()))
    }
}

macro_rules! string_value {
    ($t:ident) => {
        impl $t {
            /// The value as typed.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
string_value!(SwarmName);
string_value!(Version);

/// `-a` of a create: an AMI id (`ami-` and 8 or 17 hex digits), `latest` (the newest
/// build of the role) or `latest:VERSION` (that role's build of that version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmiRef {
    /// An AMI id, shape-checked ([`validate::ami`]).
    Id(String),
    /// The newest available build of the role.
    Latest,
    /// The role's build of this version.
    LatestVersion(Version),
}

impl FromStr for AmiRef {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s.strip_prefix("latest") {
            Some("") => Ok(AmiRef::Latest),
            Some(v) if v.starts_with(':') => Ok(AmiRef::LatestVersion(v[1..].parse()?)),
            _ => {
                validate::ami(s)?;
                Ok(AmiRef::Id(s.to_string()))
            }
        }
    }
}

impl fmt::Display for AmiRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmiRef::Id(id) => f.write_str(id),
            AmiRef::Latest => f.write_str("latest"),
            AmiRef::LatestVersion(v) => write!(f, "latest:{v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_validate_says() {
        assert_eq!("swarm1".parse::<SwarmName>().unwrap().as_str(), "swarm1");
        assert!("a".parse::<SwarmName>().unwrap_err().0.contains("invalid swarm name \"a\""));
        assert_eq!("v1".parse::<Version>().unwrap().to_string(), "v1");
        assert!("V_1".parse::<Version>().unwrap_err().0.contains("invalid version"));
        assert_eq!("latest".parse::<AmiRef>(), Ok(AmiRef::Latest));
        assert_eq!("latest:w1".parse::<AmiRef>(), Ok(AmiRef::LatestVersion("w1".parse().unwrap())));
        assert!("latest:W-1".parse::<AmiRef>().unwrap_err().0.contains("invalid version \"W-1\""));
        assert_eq!("ami-0123abcd".parse::<AmiRef>(), Ok(AmiRef::Id("ami-0123abcd".into())));
        assert!("ami-0b1".parse::<AmiRef>().unwrap_err().0.contains("invalid AMI id"));
        assert!("latestx".parse::<AmiRef>().is_err());
        for s in ["latest", "latest:w1", "ami-0123abcd"] {
            assert_eq!(s.parse::<AmiRef>().unwrap().to_string(), s);
        }
    }
}
