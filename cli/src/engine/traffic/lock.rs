//! The lock of one role's traffic in one swarm: an SSM parameter
//! (`/tyrell/<swarm>/locks/<role>`, String) created with `Overwrite=false` (atomic: the
//! loser gets `ParameterAlreadyExists`), holding who switches what and the switch's intent.

use serde::{Deserialize, Deserializer, Serialize};

use crate::aws::ssm;
use crate::engine::library::Manifest;
use crate::engine::{validate, Engine};

/// A lock as tyrell writes it: JSON `{holder, host, pid, since, from, to, rollback}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lock {
    /// `user@host`.
    pub holder: String,
    pub host: String,
    pub pid: u32,
    /// RFC 3339, UTC.
    pub since: String,
    /// The version the switch comes from (`None`: a first activation, or not decided yet).
    pub from: Option<String>,
    /// The version the switch goes to; `None` until the switch has decided (a `--rollback`
    /// reads the versions first). Locks of older tyrell releases wrote `"?"` for that.
    #[serde(deserialize_with = "undecided_as_none")]
    pub to: Option<String>,
    #[serde(default)]
    pub rollback: bool,
}

/// `"?"` (older releases' "not decided yet") and `null` both read as `None`.
fn undecided_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| s != "?"))
}

/// What an interrupted switch set out to do, read from its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intent<'a> {
    pub from: Option<&'a str>,
    pub to: &'a str,
    pub rollback: bool,
}

impl Lock {
    /// The switch's (from, to), once it had decided them.
    pub fn intent(&self) -> Option<Intent<'_>> {
        self.to.as_deref().map(|to| Intent { from: self.from.as_deref(), to, rollback: self.rollback })
    }
}

impl std::fmt::Display for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "held by {} (pid {}) since {}, {} {} -> {}",
            self.holder,
            self.pid,
            self.since,
            if self.rollback { "rolling back" } else { "switching" },
            self.from.as_deref().unwrap_or("nothing"),
            self.to.as_deref().unwrap_or("(not decided yet)")
        )
    }
}

/// What the lock parameter holds, when it exists.
#[derive(Debug, Clone, PartialEq)]
pub enum Held {
    /// A lock tyrell wrote.
    Lock(Lock),
    /// A value tyrell cannot read (someone else's format): it still locks, and is shown as is.
    Unreadable(String),
}

impl Held {
    /// Parses the parameter's value.
    pub fn parse(text: &str) -> Held {
        serde_json::from_str(text).map(Held::Lock).unwrap_or_else(|_| Held::Unreadable(text.to_string()))
    }

    /// The interrupted switch's intent, when the lock is readable and had one.
    pub fn intent(&self) -> Option<Intent<'_>> {
        match self {
            Held::Lock(l) => l.intent(),
            Held::Unreadable(_) => None,
        }
    }
}

/// JSON: the lock's object, or `{"unreadable": "<the parameter's value>"}`.
impl Serialize for Held {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Held::Lock(l) => l.serialize(s),
            Held::Unreadable(text) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("unreadable", text)?;
                m.end()
            }
        }
    }
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Held::Lock(l) => l.fmt(f),
            Held::Unreadable(text) => write!(f, "held by an unknown holder (a value tyrell cannot read: {text})"),
        }
    }
}

pub use crate::names::lock_param;

/// Pure: a lock is stale when its holder ran on this host and that process is gone.
/// A holder on another host (or an unreadable lock, [`Held::Unreadable`]) cannot be
/// checked from here: only `--force-unlock` breaks it.
pub fn is_stale(lock: &Lock, host: &str, alive: impl Fn(u32) -> bool) -> bool {
    lock.host == host && !alive(lock.pid)
}

/// This host's name, as locks record it ([`common::host_name`]; `unknown-host` when the
/// system does not say).
pub fn host_name() -> String {
    common::host_name().unwrap_or_else(|| "unknown-host".into())
}

/// Whether a process of this host is alive (Linux: /proc; elsewhere assume it is).
pub fn pid_alive(pid: u32) -> bool {
    !std::path::Path::new("/proc/self").exists() || std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Now, RFC 3339 UTC to the second ([`common::rfc3339::now_seconds`]).
pub fn now_rfc3339() -> String {
    common::rfc3339::now_seconds()
}

impl Engine {
    /// The role's lock in a swarm, if any.
    pub async fn read_lock(&self, swarm: &str, role: &str) -> anyhow::Result<Option<Held>> {
        Ok(ssm::get_string(&self.aws.ssm, &lock_param(swarm, role)).await?.map(|text| Held::parse(&text)))
    }

    /// Fails ([`Locked`](super::super::error::Error::Locked)) while a switch of the role
    /// holds its lock (removing versions then could take away the one being switched to).
    pub async fn ensure_unlocked(&self, m: &Manifest, swarm: &str) -> anyhow::Result<()> {
        match self.read_lock(swarm, &m.role).await? {
            None => Ok(()),
            Some(l) => crate::refuse!(
                Locked,
                "a {} switch in swarm {swarm} is in progress, {l}; try again after it (or break a dead one with tyrell traffic {} {swarm} --force-unlock)",
                m.role,
                m.noun
            ),
        }
    }

    /// Breaks a role's lock whoever holds it; returns what it broke.
    pub async fn unlock(&mut self, m: &Manifest, swarm: &str) -> anyhow::Result<Option<Held>> {
        validate::name("swarm", swarm)?;
        let lock = self.read_lock(swarm, &m.role).await?;
        if let Some(l) = &lock {
            self.report.step(&format!("breaking the {} traffic lock of swarm {swarm}: {l}", m.role));
            ssm::delete(&self.aws.ssm, &[lock_param(swarm, &m.role)]).await?;
        }
        Ok(lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn lock(from: Option<&str>, to: &str, rollback: bool) -> Lock {
        Lock {
            holder: "ann@box".into(),
            host: "box".into(),
            pid: 42,
            since: "2026-11-23T17:00:00Z".into(),
            from: from.map(str::to_string),
            to: Some(to.into()),
            rollback,
        }
    }

    #[test]
    fn only_a_dead_process_on_this_host_makes_a_stale_lock() {
        let l = lock(Some("v1"), "v2", false);
        assert!(is_stale(&l, "box", |_| false));
        assert!(!is_stale(&l, "box", |_| true));
        assert!(!is_stale(&l, "other", |_| false));
        assert_eq!(l.to_string(), "held by ann@box (pid 42) since 2026-11-23T17:00:00Z, switching v1 -> v2");
    }

    #[test]
    fn locks_round_trip_and_an_undecided_target_is_none() {
        let l = lock(Some("v1"), "v2", false);
        let text = serde_json::to_string(&l).unwrap();
        assert_eq!(Held::parse(&text), Held::Lock(l.clone()));
        assert_eq!(l.intent(), Some(Intent { from: Some("v1"), to: "v2", rollback: false }));
        // Written before the switch decided: `null` now, `"?"` by older releases.
        for to in ["null", "\"?\""] {
            let text = format!(r#"{{"holder":"a@b","host":"b","pid":1,"since":"s","from":null,"to":{to}}}"#);
            let Held::Lock(l) = Held::parse(&text) else { panic!("{text}") };
            assert_eq!((l.to.as_deref(), l.intent()), (None, None));
            assert!(l.to_string().ends_with("nothing -> (not decided yet)"), "{l}");
        }
        let odd = Held::parse("not json");
        assert_eq!(odd, Held::Unreadable("not json".into()));
        assert_eq!(odd.intent(), None);
        assert_eq!(serde_json::to_value(&odd).unwrap(), serde_json::json!({"unreadable": "not json"}));
        assert!(odd.to_string().contains("not json"));
    }
}
