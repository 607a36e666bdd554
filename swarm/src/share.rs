//! Targets shared among bees (issue 13 item 3): each target is measured by `k` bees
//! instead of every bee, with no coordinator.
//!
//! Every bee computes the same answer from what it sees on the broker:
//!
//! * the retained `watch` list (the targets, [`crate::targets`]);
//! * the live bees: each bee publishes a retained presence message on
//!   `bees/alive/<agent>` ([`Presence`], [`crate::topics::alive`]) when it connects and
//!   then once per round, and clears it (an empty retained message) when it stops
//!   cleanly; its last will on `rip/agent/<agent>` (unchanged) says when it died.
//!   A bee is live in a [`View`] from its presence message until its will (or an empty
//!   presence) arrives, or until [`PRESENCE_MISSES`] of its presence periods pass without
//!   one (a will the broker lost, e.g. across a broker move).
//!
//! The assignment ([`assign`]) is rendezvous (highest-random-weight) hashing
//! (Thaler & Ravishankar, 1998) of (target, agent) with placement diversity: the
//! highest-weighted bee of each region first, then of each further availability zone,
//! then the highest weights left, until `k` bees are chosen. A bee that joins or leaves
//! therefore changes only the targets it takes or held; the others keep their bees.
//!
//! The weight function ([`weight`]) is part of the contract between bees: bees with
//! different weight functions (or different `k`) in one swarm would assign differently
//! and double or drop targets. Change it only with every bee at once.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How many bees measure each target (`BEE_SHARE_K`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareK {
    /// Every bee pings every target (the original behaviour, the default).
    All,
    /// This many bees per target, 1..=[`MAX_K`] (every live bee when fewer are live).
    K(u16),
}

/// The largest `k` accepted.
pub const MAX_K: u16 = 1000;

/// A clap value parser for `BEE_SHARE_K`: `all` or `0` (every bee pings everything),
/// or a whole number 1..=[`MAX_K`]. The error is one sentence naming the setting.
pub fn share_k(s: &str) -> Result<ShareK, String> {
    match s.trim() {
        "all" | "ALL" | "0" => Ok(ShareK::All),
        v => match v.parse::<u16>() {
            Ok(k) if (1..=MAX_K).contains(&k) => Ok(ShareK::K(k)),
            _ => Err(format!(
                "BEE_SHARE_K (--share-k) must be \"all\" or 0 (every bee pings every target) or a whole number from 1 to {MAX_K}, not {s:?}"
            )),
        },
    }
}

/// Whether a string may be an availability zone or region name (`BEE_ZONE`, the
/// presence message): empty (unknown) or 1 to 64 ASCII letters, digits and `-`
/// (`eu-west-1a`, `use1-az1`).
pub fn valid_place(s: &str) -> bool {
    s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// A clap value parser for `BEE_ZONE`: see [`valid_place`].
pub fn zone(s: &str) -> Result<String, String> {
    let v = s.trim();
    if valid_place(v) {
        Ok(v.to_string())
    } else {
        Err(format!(
            "BEE_ZONE (--zone) must be empty or 1 to 64 letters, digits and '-' (an availability zone, e.g. eu-west-1a), not {s:?}"
        ))
    }
}

/// A live bee as the assignment sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bee {
    /// The bee's agent name (its MQTT client id).
    pub agent: String,
    /// Its AWS region (`AWS_REGION`); empty when unknown (one region).
    pub region: String,
    /// Its availability zone (`BEE_ZONE`); empty when unknown (one zone).
    pub zone: String,
}

/// The retained presence message on `bees/alive/<agent>`, as JSON:
/// `{"agent":"bee-i-0abc","stack":"swarm1","region":"eu-west-1","zone":"eu-west-1a","every_ms":10000}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// The bee's agent name; must be the topic's `<agent>`.
    pub agent: String,
    /// The swarm (`TYRELL_STACK`), for people reading the broker.
    #[serde(default)]
    pub stack: String,
    /// Its region (`AWS_REGION`): empty or [`valid_place`].
    #[serde(default)]
    pub region: String,
    /// Its availability zone (`BEE_ZONE`): empty or [`valid_place`].
    #[serde(default)]
    pub zone: String,
    /// How often the bee republishes it, in milliseconds (its `BEE_INTERVAL`).
    pub every_ms: u64,
    /// The bee is handing over before it stops (`BEE_HANDOVER`): it still pings its
    /// targets, but the others no longer count it, so they take its share now; it stops
    /// once one of them has been live for a round. Absent: `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
    /// The `seq` of the last record the bee published when it sent this (see
    /// `record::PingRecord::seq`): with the `watch` list empty, its final count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// A presence is forgotten after this many of its periods (`every_ms`) without a new one.
pub const PRESENCE_MISSES: u32 = 3;

/// The rendezvous weight of `agent` for `target`: FNV-1a (64 bit) of
/// `target`, a 0xff byte (never in UTF-8), `agent`, finished with the SplitMix64 mixer
/// so that weights of similar names are unrelated. Stable across builds and machines.
pub fn weight(target: &str, agent: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in target.bytes().chain([0xff]).chain(agent.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The bees that measure `target`: `min(k, bees.len())` distinct bees, chosen from
/// `bees` (which must not repeat an agent) by descending [`weight`] (ties by agent
/// name) in three passes — one bee per region not yet chosen, then one per (region,
/// zone) not yet chosen, then the highest weights left. Returned in the order chosen.
/// Every bee given the same `bees` (in any order) gets the same answer.
pub fn assign<'a>(target: &str, bees: &'a [Bee], k: usize) -> Vec<&'a Bee> {
    let mut ranked: Vec<(u64, &Bee)> = bees.iter().map(|b| (weight(target, &b.agent), b)).collect();
    ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.agent.cmp(&b.1.agent)));
    let k = k.min(ranked.len());
    let mut chosen: Vec<&Bee> = Vec::with_capacity(k);
    let mut regions = HashSet::new();
    let mut zones = HashSet::new();
    for pass in 0..3 {
        for &(_, b) in &ranked {
            if chosen.len() == k {
                return chosen;
            }
            if chosen.iter().any(|c| c.agent == b.agent) {
                continue;
            }
            let take = match pass {
                0 => !regions.contains(&b.region),
                1 => !zones.contains(&(&b.region, &b.zone)),
                _ => true,
            };
            if take {
                regions.insert(&b.region);
                zones.insert((&b.region, &b.zone));
                chosen.push(b);
            }
        }
    }
    chosen
}

/// The targets of `watch` that `me` measures among `bees` (`me` must be one of them):
/// all of them for [`ShareK::All`], else those whose [`assign`] includes `me`. In the
/// order of `watch`.
pub fn mine(watch: &[String], bees: &[Bee], me: &str, k: ShareK) -> Vec<String> {
    match k {
        ShareK::All => watch.to_vec(),
        ShareK::K(k) => {
            watch.iter().filter(|t| assign(t, bees, usize::from(k)).iter().any(|b| b.agent == me)).cloned().collect()
        }
    }
}

/// What one bee knows of the live bees, from the presence messages and last wills it
/// received. Itself is always live.
#[derive(Debug)]
pub struct View {
    me: Bee,
    /// Agent → (the bee, last heard, presence lifetime, first heard).
    others: BTreeMap<String, (Bee, Instant, Duration, Instant)>,
}

impl View {
    /// A view holding only `me`.
    pub fn new(me: Bee) -> View {
        View { me, others: BTreeMap::new() }
    }

    /// A message on `bees/alive/<agent>`: a presence makes (or keeps) the bee live, an
    /// empty payload (a clean stop) removes it. Returns whether the set of live bees
    /// changed; a payload that is not a [`Presence`] for this agent is `Err` (one
    /// sentence) and changes nothing.
    pub fn presence(&mut self, agent: &str, payload: &[u8], now: Instant) -> Result<bool, String> {
        if agent == self.me.agent {
            return Ok(false);
        }
        if payload.is_empty() {
            return Ok(self.others.remove(agent).is_some());
        }
        let p: Presence =
            serde_json::from_slice(payload).map_err(|e| format!("presence of {agent:?} is not valid: {e}"))?;
        if p.agent != agent || !valid_place(&p.region) || !valid_place(&p.zone) || p.every_ms == 0 {
            return Err(format!("presence of {agent:?} is not valid (agent, region, zone or every_ms)"));
        }
        if p.stopping {
            // Handing over: no longer counted, so its share goes to the others now.
            return Ok(self.others.remove(agent).is_some());
        }
        let bee = Bee { agent: p.agent, region: p.region, zone: p.zone };
        let ttl = Duration::from_millis(p.every_ms.saturating_mul(u64::from(PRESENCE_MISSES)));
        let (changed, first) = match self.others.get(agent) {
            Some((b, _, _, first)) => (*b != bee, *first),
            None => (true, now),
        };
        self.others.insert(agent.to_string(), (bee, now, ttl, first));
        Ok(changed)
    }

    /// For a bee handing over (`BEE_HANDOVER`): a live bee, not itself and not stopping,
    /// heard at or after `since` (when the hand-over began) and live for at least `round`
    /// (so it has measured a whole round), if there is one.
    pub fn successor(&self, since: Instant, now: Instant, round: Duration) -> Option<&str> {
        self.others
            .iter()
            .find(|(_, (_, seen, _, first))| *seen >= since && now.saturating_duration_since(*first) >= round)
            .map(|(a, _)| a.as_str())
    }

    /// A message on `rip/agent/<agent>`: a last will (or `reason: stopped`) removes the
    /// bee; an empty payload (the bee clearing its will as it connects) changes nothing,
    /// its presence follows. Returns whether the set of live bees changed.
    pub fn rip(&mut self, agent: &str, payload: &[u8]) -> bool {
        agent != self.me.agent && !payload.is_empty() && self.others.remove(agent).is_some()
    }

    /// Forgets bees whose presence is older than [`PRESENCE_MISSES`] periods; returns
    /// whether any was forgotten.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.others.len();
        self.others.retain(|_, (_, seen, ttl, _)| now.saturating_duration_since(*seen) <= *ttl);
        self.others.len() != before
    }

    /// Counts every known bee as heard from at `now`: for a bee cut off from the broker,
    /// which hears nobody, so that it keeps its share instead of taking every target.
    pub fn touch(&mut self, now: Instant) {
        for (_, seen, _, _) in self.others.values_mut() {
            *seen = now;
        }
    }

    /// The live bees, itself included, sorted by agent.
    pub fn bees(&self) -> Vec<Bee> {
        let mut v: Vec<Bee> = self.others.values().map(|(b, _, _, _)| b.clone()).collect();
        v.push(self.me.clone());
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bee(agent: &str, region: &str, zone: &str) -> Bee {
        Bee { agent: agent.into(), region: region.into(), zone: zone.into() }
    }

    fn targets(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.{}.{}", i / 250, i % 250 + 1)).collect()
    }

    #[test]
    fn k_settings() {
        assert_eq!(share_k("all"), Ok(ShareK::All));
        assert_eq!(share_k("0"), Ok(ShareK::All));
        assert_eq!(share_k("3"), Ok(ShareK::K(3)));
        assert_eq!(share_k("1000"), Ok(ShareK::K(1000)));
        for bad in ["-1", "1001", "two", "", "1.5"] {
            assert!(share_k(bad).unwrap_err().starts_with("BEE_SHARE_K (--share-k) must be"), "{bad}");
        }
        assert_eq!(zone("eu-west-1a").as_deref(), Ok("eu-west-1a"));
        assert_eq!(zone("").as_deref(), Ok(""));
        assert!(zone("eu west").unwrap_err().starts_with("BEE_ZONE (--zone) must be"));
        assert!(zone(&"a".repeat(65)).is_err());
    }

    #[test]
    fn k_distinct_bees_whatever_the_order() {
        let mut bees: Vec<Bee> = (0..7).map(|i| bee(&format!("bee-{i}"), "r", &format!("z{}", i % 3))).collect();
        for t in targets(200) {
            let a: Vec<String> = assign(&t, &bees, 3).iter().map(|b| b.agent.clone()).collect();
            bees.reverse();
            let b: Vec<String> = assign(&t, &bees, 3).iter().map(|b| b.agent.clone()).collect();
            assert_eq!(a, b, "{t}");
            assert_eq!(a.iter().collect::<HashSet<_>>().len(), 3);
        }
        // More k than bees: every bee.
        assert_eq!(assign("x", &bees, 50).len(), 7);
        assert_eq!(mine(&targets(5), &bees, "bee-0", ShareK::All), targets(5));
    }

    #[test]
    fn zones_then_regions_are_spread() {
        // Three zones, unequal: 4 bees in a, 1 in b, 1 in c. k = 3 → always one per zone.
        let bees = [
            bee("a1", "r", "a"),
            bee("a2", "r", "a"),
            bee("a3", "r", "a"),
            bee("a4", "r", "a"),
            bee("b1", "r", "b"),
            bee("c1", "r", "c"),
        ];
        for t in targets(300) {
            let zones: HashSet<&str> = assign(&t, &bees, 3).iter().map(|b| b.zone.as_str()).collect();
            assert_eq!(zones.len(), 3, "{t}");
            // k = 4 with 3 zones: every zone, plus one more.
            let zones: HashSet<&str> = assign(&t, &bees, 4).iter().map(|b| b.zone.as_str()).collect();
            assert_eq!(zones.len(), 3, "{t}");
        }
        // Regions before zones: k = 2 across two regions takes one bee of each.
        let bees = [bee("x1", "eu", "eu-a"), bee("x2", "eu", "eu-b"), bee("y1", "us", "us-a")];
        for t in targets(100) {
            let regions: HashSet<&str> = assign(&t, &bees, 2).iter().map(|b| b.region.as_str()).collect();
            assert_eq!(regions.len(), 2, "{t}");
        }
    }

    #[test]
    fn a_join_or_leave_moves_only_what_it_must() {
        let bees: Vec<Bee> = (0..6).map(|i| bee(&format!("bee-{i}"), "r", &format!("z{}", i % 3))).collect();
        let ts = targets(3000);
        let before: Vec<Vec<&Bee>> = ts.iter().map(|t| assign(t, &bees, 2)).collect();
        // Load: each bee holds about 2/6 of the targets.
        for b in &bees {
            let n = before.iter().filter(|s| s.contains(&b)).count();
            assert!((800..=1200).contains(&n), "{} holds {n} of 3000", b.agent);
        }
        // bee-5 leaves: only targets it held change, each loses it and gains one bee.
        let left: Vec<Bee> = bees[..5].to_vec();
        let mut moved = 0;
        for (t, old) in ts.iter().zip(&before) {
            let new = assign(t, &left, 2);
            if old.iter().any(|b| b.agent == "bee-5") {
                moved += 1;
                let kept: Vec<_> = old.iter().filter(|b| b.agent != "bee-5").collect();
                assert!(kept.iter().all(|b| new.contains(b)), "{t}: {old:?} → {new:?}");
            } else {
                assert_eq!(&new, old, "{t} did not involve bee-5");
            }
        }
        assert!(moved > 0);
        // A new bee joins its own zone: a target changes only if the newcomer takes it.
        let mut joined = bees.clone();
        joined.push(bee("bee-6", "r", "z0"));
        for (t, old) in ts.iter().zip(&before) {
            let new = assign(t, &joined, 2);
            if !new.iter().any(|b| b.agent == "bee-6") {
                assert_eq!(&new, old, "{t}");
            }
        }
    }

    #[test]
    fn the_view_follows_presence_wills_and_silence() {
        let t0 = Instant::now();
        let mut v = View::new(bee("me", "r", "a"));
        let p = |agent: &str, every_ms: u64| {
            serde_json::to_vec(&Presence {
                agent: agent.into(),
                stack: "s".into(),
                region: "r".into(),
                zone: "b".into(),
                every_ms,
                stopping: false,
                seq: None,
            })
            .unwrap()
        };
        assert_eq!(v.presence("x", &p("x", 1000), t0), Ok(true));
        assert_eq!(v.presence("x", &p("x", 1000), t0), Ok(false), "a refresh changes nothing");
        assert!(v.presence("y", &p("x", 1000), t0).is_err(), "another agent's presence");
        assert!(v.presence("y", b"{", t0).is_err());
        assert_eq!(v.bees().iter().map(|b| b.agent.as_str()).collect::<Vec<_>>(), ["me", "x"]);
        assert!(!v.rip("x", b""), "a cleared will is not a death");
        assert!(v.rip("x", br#"{"status":"dead"}"#));
        assert!(!v.rip("me", br#"{"status":"dead"}"#), "never dead to itself");
        assert_eq!(v.presence("x", &p("x", 1000), t0), Ok(true));
        assert!(!v.expire(t0 + Duration::from_millis(3000)));
        v.touch(t0 + Duration::from_millis(2000));
        assert!(!v.expire(t0 + Duration::from_millis(5000)), "touched: heard from at 2 s");
        assert!(v.expire(t0 + Duration::from_millis(5001)));
        assert_eq!(v.bees().len(), 1);
        assert_eq!(v.presence("x", &p("x", 1000), t0), Ok(true));
        assert_eq!(v.presence("x", b"", t0), Ok(true), "a clean stop");
        assert_eq!(v.bees().len(), 1);
    }

    #[test]
    fn a_handing_over_bee_waits_for_a_successor_live_for_a_round() {
        let t0 = Instant::now();
        let round = Duration::from_secs(1);
        let mut v = View::new(bee("old", "r", "a"));
        let p = |agent: &str, stopping: bool| {
            serde_json::to_vec(&Presence {
                agent: agent.into(),
                stack: "s".into(),
                region: "r".into(),
                zone: "a".into(),
                every_ms: 1000,
                stopping,
                seq: Some(3),
            })
            .unwrap()
        };
        // Another old bee handing over too is no successor, and it leaves the view.
        assert_eq!(v.presence("old2", &p("old2", false), t0), Ok(true));
        assert_eq!(v.presence("old2", &p("old2", true), t0), Ok(true));
        assert!(!String::from_utf8(p("old2", true)).unwrap().is_empty());
        assert!(!String::from_utf8(p("x", false)).unwrap().contains("stopping"), "absent when false");
        let since = t0 + Duration::from_millis(100);
        assert_eq!(v.successor(since, since, round), None);
        // A new bee: heard after the hand-over began, but not yet live for a round.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(v.presence("new", &p("new", false), t1), Ok(true));
        assert_eq!(v.successor(since, t1, round), None);
        // Its next presence, a round later: it has measured a round.
        let t2 = t1 + round;
        assert_eq!(v.presence("new", &p("new", false), t2), Ok(false));
        assert_eq!(v.successor(since, t2, round), Some("new"));
        // One last heard before the hand-over began does not count (it may be gone).
        assert_eq!(v.successor(t2 + Duration::from_millis(1), t2 + round, round), None);
    }
}
