//! What a role version's boxes report of the swarm state they hold, and the check a switch
//! makes with it before moving traffic (issue 11 items 1 and 7).
//!
//! A broker box writes its report to SSM ([`crate::names::state_param`], String, JSON) 30 s
//! after it starts and every 30 s after (roles/broker: `tyrell-broker-state report`): the
//! retained messages it holds (the `watch` list, wills, presences, announcements carried
//! over by its bridge from the live broker), how many targets its `watch` list has, the
//! subscriptions and clients it has (`$SYS/broker/subscriptions/count`,
//! `$SYS/broker/clients/connected`, mosquitto(8)). tyrell cannot reach the swarm's
//! internal broker itself; the boxes' reports are how a switch knows the new broker
//! carries the old one's state before any client moves there.

use serde::{Deserialize, Serialize};

/// One report, as the box writes it: `{"instance": "i-…", "at": RFC 3339, "retained": N,
/// "watch_targets": N, "subscriptions": N, "clients": N}`; any field may be absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateReport {
    #[serde(default)]
    pub instance: String,
    /// When the box wrote it (RFC 3339).
    #[serde(default)]
    pub at: String,
    /// Retained messages on the broker.
    pub retained: Option<u64>,
    /// Targets in its retained `watch` list (0: none).
    pub watch_targets: Option<u64>,
    /// Subscriptions on the broker (the indexers' shared ones and the clients').
    pub subscriptions: Option<u64>,
    /// Connected clients.
    pub clients: Option<u64>,
}

impl StateReport {
    /// Parses a report; `None` for one that is not this shape (shown as unreadable).
    pub fn parse(text: &str) -> Option<StateReport> {
        serde_json::from_str(text).ok()
    }

    /// One line for the release report.
    pub fn summary(&self) -> String {
        let n = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
        format!(
            "{} retained message(s), watch list of {} target(s), {} subscription(s), {} client(s) ({} at {})",
            n(self.retained),
            n(self.watch_targets),
            n(self.subscriptions),
            n(self.clients),
            self.instance,
            self.at
        )
    }
}

/// The verdict on a new version's report against the live one's.
#[derive(Debug, Clone, PartialEq)]
pub enum Carried {
    /// The new version holds what it must: the check, for the release report.
    Yes(String),
    /// Not (yet): why.
    No(String),
    /// Its boxes write no report (a role that keeps no state, an older image): the check says so.
    Unreported(String),
}

/// Whether `new` (the new version's report) carries the state `old` (the live version's)
/// holds: the `watch` list (as many targets, when the old one has any) and at least one
/// subscription when the old one has subscribers (the indexers' shared subscription must be
/// live on it before publishers move there).
pub fn carried(role: &str, version: &str, new: Option<&StateReport>, old: Option<&StateReport>) -> Carried {
    let Some(new) = new else {
        return Carried::Unreported(format!("{role} {version}: no state report (its boxes write none)"));
    };
    let want_watch = old.and_then(|o| o.watch_targets).unwrap_or(0);
    if want_watch > 0 && new.watch_targets.unwrap_or(0) != want_watch {
        return Carried::No(format!(
            "{role} {version} holds a watch list of {} target(s), the live one {want_watch}",
            new.watch_targets.unwrap_or(0)
        ));
    }
    if old.and_then(|o| o.subscriptions).unwrap_or(0) > 0 && new.subscriptions.unwrap_or(0) == 0 {
        return Carried::No(format!("{role} {version} has no subscriptions yet (the indexers' are not live on it)"));
    }
    Carried::Yes(format!("{role} {version}: {}", new.summary()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(watch: u64, subs: u64) -> StateReport {
        StateReport {
            instance: "i-1".into(),
            at: "2026-11-30T06:00:00Z".into(),
            retained: Some(watch.min(1) + 3),
            watch_targets: Some(watch),
            subscriptions: Some(subs),
            clients: Some(2),
        }
    }

    #[test]
    fn a_new_broker_must_carry_the_watch_list_and_have_subscribers() {
        assert!(matches!(carried("broker", "b2", None, Some(&r(50, 6))), Carried::Unreported(_)));
        assert!(matches!(carried("broker", "b2", Some(&r(0, 0)), None), Carried::Yes(_)), "a first broker");
        assert!(matches!(carried("broker", "b2", Some(&r(50, 3)), Some(&r(50, 6))), Carried::Yes(_)));
        let no = carried("broker", "b2", Some(&r(0, 3)), Some(&r(50, 6)));
        assert_eq!(no, Carried::No("broker b2 holds a watch list of 0 target(s), the live one 50".into()));
        assert!(matches!(carried("broker", "b2", Some(&r(50, 0)), Some(&r(50, 6))), Carried::No(_)));
        assert_eq!(StateReport::parse(r#"{"retained":4}"#).unwrap().retained, Some(4));
        assert_eq!(StateReport::parse("nope"), None);
        assert!(r(50, 6).summary().starts_with("4 retained message(s), watch list of 50 target(s)"));
    }
}
