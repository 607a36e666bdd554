//! The engine's typed errors: the recurring ways a command is refused or fails, each of a
//! [`Class`] with its own process exit code, so scripts can tell "not there" from "in use"
//! from "AWS said no" without reading the sentence.
//!
//! Engine code returns `anyhow::Result`; a typed error travels inside it (also under any
//! `.context(...)`), and `main` asks [`class_of`] for the exit code. Raise one with
//! [`refuse!`](crate::refuse) (`refuse!(NotFound, "there is no {what} named {name}")`) or
//! `Err(Error::NotFound(...))?`.

use crate::aws::cfn::WaitError;
use crate::aws::AwsError;

use super::render::RenderError;
use super::validate::Invalid;

/// What kind of failure ended a command; each has its own exit code ([`Class::code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Anything not classified below (a Packer build that failed, a broken template...).
    Other,
    /// The command line is wrong: clap's usage errors, and values the engine refuses
    /// (names, ids, sizes, option combinations, region or profile).
    Usage,
    /// What the command names does not exist (stack, version, AMI, VPC, build).
    NotFound,
    /// What the command would create already exists.
    Exists,
    /// Refused because something uses it or it holds data: removing would break or lose it.
    InUse,
    /// Another switch of the same role holds the traffic lock.
    Locked,
    /// A version failed its health gate or bake (traffic stayed or went back), or a stack
    /// is not in a usable state.
    Unhealthy,
    /// An AWS call failed or AWS could not be reached, or a CloudFormation operation
    /// failed or did not finish within --timeout.
    Aws,
    /// Ctrl-C (SIGINT): tyrell stopped waiting; AWS may go on.
    Interrupted,
}

impl Class {
    /// Every class, in exit-code order.
    pub const ALL: [Class; 9] = [
        Class::Other,
        Class::Usage,
        Class::NotFound,
        Class::Exists,
        Class::InUse,
        Class::Locked,
        Class::Unhealthy,
        Class::Aws,
        Class::Interrupted,
    ];

    /// The process exit code (0 is success).
    pub fn code(self) -> u8 {
        match self {
            Class::Other => 1,
            Class::Usage => 2,
            Class::NotFound => 3,
            Class::Exists => 4,
            Class::InUse => 5,
            Class::Locked => 6,
            Class::Unhealthy => 7,
            Class::Aws => 8,
            Class::Interrupted => 130,
        }
    }

    /// One line for `tyrell --help`'s EXIT CODES and docs/ARCHITECTURE.md.
    pub fn meaning(self) -> &'static str {
        match self {
            Class::Other => "any other failure (e.g. a Packer build that failed)",
            Class::Usage => "usage or bad input: options, names, ids, sizes, region or profile",
            Class::NotFound => "not found: the named stack, version, AMI, VPC or build does not exist",
            Class::Exists => "already exists: the stack, version or build to create is there",
            Class::InUse => "in use: refused because something uses it or it holds data",
            Class::Locked => "locked: another switch of the role holds its traffic lock",
            Class::Unhealthy => "unhealthy: the health gate or a bake refused the switch, or a stack is not ready",
            Class::Aws => {
                "AWS failed: a call was refused or AWS was unreachable, or a stack operation failed or timed out"
            }
            Class::Interrupted => "interrupted (Ctrl-C): tyrell stopped waiting, AWS may go on",
        }
    }
}

/// The `EXIT CODES` section of `tyrell --help`.
pub fn exit_codes_help() -> String {
    let mut s = String::from("EXIT CODES:\n  0    success\n");
    for c in Class::ALL {
        s.push_str(&format!("  {:<4} {}\n", c.code(), c.meaning()));
    }
    s
}

/// A typed engine error: one sentence (unchanged from the `bail!` it replaces) and its class.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input the engine refuses ([`Class::Usage`]).
    #[error("{0}")]
    Invalid(String),
    /// [`Class::NotFound`].
    #[error("{0}")]
    NotFound(String),
    /// [`Class::Exists`].
    #[error("{0}")]
    Exists(String),
    /// [`Class::InUse`]: in use, or would lose data.
    #[error("{0}")]
    InUse(String),
    /// [`Class::Locked`].
    #[error("{0}")]
    Locked(String),
    /// [`Class::Unhealthy`]: the gate or a bake refused, or a stack is not ready.
    #[error("{0}")]
    Unhealthy(String),
}

impl Error {
    /// This error's class.
    pub fn class(&self) -> Class {
        match self {
            Error::Invalid(_) => Class::Usage,
            Error::NotFound(_) => Class::NotFound,
            Error::Exists(_) => Class::Exists,
            Error::InUse(_) => Class::InUse,
            Error::Locked(_) => Class::Locked,
            Error::Unhealthy(_) => Class::Unhealthy,
        }
    }
}

/// The class of a command's error: that of the outermost typed error in its chain
/// (engine [`Error`], [`Invalid`], [`AwsError`], CloudFormation [`WaitError`],
/// [`RenderError`]); [`Class::Other`] when there is none.
pub fn class_of(e: &anyhow::Error) -> Class {
    for cause in e.chain() {
        if let Some(x) = cause.downcast_ref::<Error>() {
            return x.class();
        }
        if cause.downcast_ref::<Invalid>().is_some() {
            return Class::Usage;
        }
        if let Some(x) = cause.downcast_ref::<AwsError>() {
            return match x {
                AwsError::NoRegion | AwsError::BadRegion(_) | AwsError::NoProfile { .. } => Class::Usage,
                AwsError::Api(_) | AwsError::Throttled(_) => Class::Aws,
            };
        }
        if cause.downcast_ref::<WaitError>().is_some() {
            return Class::Aws;
        }
        if let Some(x) = cause.downcast_ref::<RenderError>() {
            return match x {
                RenderError::UnknownVar(..) => Class::Usage,
                RenderError::NoCloudInit(_) => Class::NotFound,
                _ => Class::Other,
            };
        }
    }
    Class::Other
}

/// Returns early from a function returning `anyhow::Result` with a typed engine error of
/// the given [`Error`] variant and a `format!` message:
/// `refuse!(NotFound, "there is no {what} named {name}")`.
#[macro_export]
macro_rules! refuse {
    ($kind:ident, $($arg:tt)+) => {
        return Err($crate::engine::error::Error::$kind(format!($($arg)+)).into())
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_keep_clap_and_sigint() {
        let codes: Vec<u8> = Class::ALL.iter().map(|c| c.code()).collect();
        let mut uniq = codes.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), codes.len(), "{codes:?}");
        assert_eq!(Class::Usage.code(), 2, "clap exits 2 on usage errors");
        assert_eq!(Class::Other.code(), 1);
        assert_eq!(Class::Interrupted.code(), 130);
    }

    #[test]
    fn the_outermost_typed_error_decides_even_under_context() {
        let e: anyhow::Error = Error::Locked("held".into()).into();
        assert_eq!(class_of(&e.context("while switching")), Class::Locked);
        assert_eq!(class_of(&anyhow::anyhow!("plain")), Class::Other);
        assert_eq!(class_of(&Invalid("bad".into()).into()), Class::Usage);
        assert_eq!(class_of(&AwsError::Api("x: y".into()).into()), Class::Aws);
        assert_eq!(class_of(&AwsError::NoRegion.into()), Class::Usage);
        // The message is the sentence, unchanged.
        assert_eq!(Error::NotFound("there is no network named n".into()).to_string(), "there is no network named n");
    }
}
