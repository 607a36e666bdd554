//! Plans: how a switch shifts traffic (its [`Shift`] strategy), the weights of each step,
//! and from which version to which. Pure: unit-tested without AWS.

use std::collections::BTreeMap;
use std::str::FromStr;

use super::lock::Intent;

/// How traffic moves from the live version to the new one once the gate passes.
///
/// On the command line (`--shift`): `all-at-once`, `steps:10,50` or `linear:25`;
/// `--canary 10,50` is `steps:10,50`. Weighted steps need the ALB; every strategy ends
/// with all traffic on the new version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Shift {
    /// One step: all traffic moves once the gate passes (the default).
    #[default]
    AllAtOnce,
    /// Weighted steps at these percentages to the new version (1-99, ascending), each held
    /// for `--bake` while health is watched, then 100%.
    Steps(Vec<u8>),
    /// Equal steps of this many percent (1-50): `linear:25` is 25, 50, 75, then 100.
    Linear(u8),
}

/// How to write a strategy, for error messages and `--help`.
pub const SHIFT_FORMS: &str = "all-at-once, steps:PCT,PCT... (e.g. steps:10,50) or linear:PCT (e.g. linear:25)";

impl FromStr for Shift {
    type Err = String;

    /// `all-at-once`, `steps:10,50`, `linear:25`; the steps are checked ([`Shift::steps`]).
    fn from_str(s: &str) -> Result<Shift, String> {
        let (name, arg) = s.split_once(':').map_or((s, None), |(n, a)| (n, Some(a)));
        let pct =
            |p: &str| p.trim().parse::<u8>().map_err(|_| format!("invalid --shift {s:?}: {p:?} is not a percentage"));
        let shift = match (name, arg) {
            ("all-at-once", None) => Shift::AllAtOnce,
            ("steps", Some(list)) => Shift::Steps(list.split(',').map(pct).collect::<Result<_, _>>()?),
            ("linear", Some(p)) => Shift::Linear(pct(p)?),
            _ => return Err(format!("invalid --shift {s:?}: use {SHIFT_FORMS}")),
        };
        shift.steps()?;
        Ok(shift)
    }
}

impl std::fmt::Display for Shift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shift::AllAtOnce => write!(f, "all-at-once"),
            Shift::Steps(s) => {
                write!(f, "steps:{}", s.iter().map(u8::to_string).collect::<Vec<_>>().join(","))
            }
            Shift::Linear(p) => write!(f, "linear:{p}"),
        }
    }
}

impl Shift {
    /// The weighted steps below 100%, in order (empty: all at once); checked.
    pub fn steps(&self) -> Result<Vec<u8>, String> {
        match self {
            Shift::AllAtOnce => Ok(Vec::new()),
            Shift::Steps(steps) => {
                if let Some(bad) = steps.iter().find(|p| !(1..=99).contains(*p)) {
                    return Err(format!(
                        "invalid canary step {bad} (--canary or --shift steps:): steps are percentages from 1 to 99, e.g. --canary 10,50"
                    ));
                }
                if steps.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(
                        "invalid canary steps (--canary or --shift steps:): steps must go up, e.g. --canary 10,50"
                            .into(),
                    );
                }
                Ok(steps.clone())
            }
            Shift::Linear(p) if (1..=50).contains(p) => Ok((1..).map(|i| i * *p).take_while(|x| *x < 100).collect()),
            Shift::Linear(p) => Err(format!("invalid --shift linear:{p}: the step is a percentage from 1 to 50")),
        }
    }

    /// Whether it moves traffic in weighted steps (which only the ALB can).
    pub fn is_weighted(&self) -> bool {
        *self != Shift::AllAtOnce
    }
}

/// The weights (percent to the new version) to go through, in order, from the new
/// version's current share: the strategy's steps above it, then 100.
///
/// `has_old`: whether a live version exists to share the traffic with. Without one (a
/// role's first release) a weighted step cannot be made: the listener forwards to one
/// target group, so "20%" would really be 100%. That is refused here, before anything
/// moves, rather than reported as a step that did not happen.
pub fn shift_plan(shift: &Shift, current: i32, has_old: bool) -> Result<Vec<i32>, String> {
    let steps = shift_steps(shift, current)?;
    if !has_old && steps.iter().any(|p| *p < 100) {
        return Err(format!("this is the role's first release: there is no live version to share traffic with, so --canary (--shift {shift}) cannot apply; switch without --canary (all traffic moves once the gate passes)"));
    }
    Ok(steps)
}

/// The weights (percent to the new version) to go through, in order, from the new
/// version's current share: the strategy's steps above it, then 100.
pub fn shift_steps(shift: &Shift, current: i32) -> Result<Vec<i32>, String> {
    let mut steps: Vec<i32> = shift.steps()?.into_iter().map(i32::from).filter(|p| *p > current).collect();
    if current < 100 {
        steps.push(100);
    }
    Ok(steps)
}

/// The listener's targets at `pct` percent to the new version.
pub fn split(from_tg: Option<&str>, to_tg: &str, pct: i32) -> Vec<(String, i32)> {
    match from_tg {
        Some(f) if pct < 100 => vec![(f.to_string(), 100 - pct), (to_tg.to_string(), pct)],
        _ => vec![(to_tg.to_string(), 1)],
    }
}

/// What a switch is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Version(String),
    /// Back to the version that was active before.
    Rollback,
}

/// Pure: the switch's (from, to), given the request, the intent of an interrupted switch
/// (a stale or broken lock), the current weights and the rollback candidate.
///
/// * Re-running an interrupted switch to the same version finishes it; naming the version
///   it came from (or `--rollback`) undoes it; re-running an interrupted rollback finishes it.
/// * Otherwise the switch starts from the version with the most traffic.
pub fn choose(
    target: &Target,
    prior: Option<Intent<'_>>,
    weights: &BTreeMap<String, i32>,
    previous: Option<&str>,
) -> Result<(Option<String>, String), String> {
    let top_other = |to: &str| {
        weights.iter().filter(|(v, w)| v.as_str() != to && **w > 0).max_by_key(|(_, w)| **w).map(|(v, _)| v.clone())
    };
    let own = |s: Option<&str>| s.map(str::to_string);
    match (target, prior) {
        (Target::Version(v), Some(p)) if p.to == v => Ok((own(p.from), v.clone())),
        (Target::Version(v), Some(p)) if p.from == Some(v.as_str()) => Ok((Some(p.to.to_string()), v.clone())),
        (Target::Version(v), _) => Ok((top_other(v), v.clone())),
        (Target::Rollback, Some(p)) if p.rollback => Ok((own(p.from), p.to.to_string())),
        (Target::Rollback, Some(p)) => match p.from {
            Some(f) => Ok((Some(p.to.to_string()), f.to_string())),
            None => Err(format!("the interrupted switch to {} had no earlier version to roll back to", p.to)),
        },
        (Target::Rollback, None) => match previous {
            Some(prev) => Ok((top_other(prev), prev.to_string())),
            None => Err("there is no earlier version to roll back to".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(s: &[u8]) -> Shift {
        Shift::Steps(s.to_vec())
    }

    #[test]
    fn canary_steps_go_up_and_end_at_100() {
        assert_eq!(shift_steps(&steps(&[]), 0).unwrap(), vec![100]);
        assert_eq!(shift_steps(&Shift::AllAtOnce, 0).unwrap(), vec![100]);
        assert_eq!(shift_steps(&steps(&[10, 50]), 0).unwrap(), vec![10, 50, 100]);
        // A re-run after an interruption at 10% carries on from there.
        assert_eq!(shift_steps(&steps(&[10, 50]), 10).unwrap(), vec![50, 100]);
        assert_eq!(shift_steps(&steps(&[10, 50]), 100).unwrap(), Vec::<i32>::new());
        assert!(shift_steps(&steps(&[50, 10]), 0).is_err());
        assert!(shift_steps(&steps(&[0]), 0).is_err());
        assert!(shift_steps(&steps(&[100]), 0).is_err());
    }

    #[test]
    fn linear_goes_in_equal_steps() {
        assert_eq!(shift_steps(&Shift::Linear(25), 0).unwrap(), vec![25, 50, 75, 100]);
        assert_eq!(shift_steps(&Shift::Linear(30), 0).unwrap(), vec![30, 60, 90, 100]);
        assert_eq!(shift_steps(&Shift::Linear(50), 50).unwrap(), vec![100]);
        assert!(Shift::Linear(0).steps().is_err() && Shift::Linear(51).steps().is_err());
    }

    #[test]
    fn strategies_parse_and_print_the_same() {
        for s in ["all-at-once", "steps:10,50", "linear:25"] {
            assert_eq!(s.parse::<Shift>().unwrap().to_string(), s);
        }
        assert_eq!("steps:10,50".parse::<Shift>(), Ok(steps(&[10, 50])));
        for bad in
            ["", "steps", "steps:", "steps:50,10", "steps:0", "linear", "linear:x", "linear:60", "all", "canary:10"]
        {
            assert!(bad.parse::<Shift>().is_err(), "{bad:?}");
        }
        assert!("fast".parse::<Shift>().unwrap_err().contains("all-at-once, steps:"));
    }

    #[test]
    fn splits_always_include_the_new_version() {
        assert_eq!(split(Some("a"), "b", 10), vec![("a".into(), 90), ("b".into(), 10)]);
        assert_eq!(split(Some("a"), "b", 100), vec![("b".into(), 1)]);
        assert_eq!(split(None, "b", 10), vec![("b".into(), 1)]);
    }

    #[test]
    fn a_first_release_cannot_canary() {
        // Field report: `--canary 20` on a first release said "20%" while the listener
        // forwarded 100%, then panicked when the bake failed.
        let e = shift_plan(&steps(&[20]), 0, false).unwrap_err();
        assert!(e.contains("first release") && e.contains("--canary"), "{e}");
        assert!(shift_plan(&Shift::Linear(20), 0, false).is_err());
        assert_eq!(shift_plan(&Shift::AllAtOnce, 0, false).unwrap(), vec![100]);
        assert_eq!(shift_plan(&steps(&[20]), 0, true).unwrap(), vec![20, 100]);
        // An interrupted first release already at 100%: nothing left to shift, nothing refused.
        assert_eq!(shift_plan(&steps(&[20]), 100, false).unwrap(), Vec::<i32>::new());
    }

    fn intent<'a>(from: Option<&'a str>, to: &'a str, rollback: bool) -> Option<Intent<'a>> {
        Some(Intent { from, to, rollback })
    }

    #[test]
    fn choose_finishes_or_undoes_an_interrupted_switch() {
        let w = BTreeMap::from([("v1".to_string(), 50), ("v2".to_string(), 50), ("v0".to_string(), 0)]);
        let v = |s: &str| Target::Version(s.into());
        let some = |s: &str| Some(s.to_string());
        let p = intent(Some("v1"), "v2", false);
        assert_eq!(choose(&v("v2"), p, &w, None), Ok((some("v1"), "v2".into())));
        assert_eq!(choose(&v("v1"), p, &w, None), Ok((some("v2"), "v1".into())));
        assert_eq!(choose(&Target::Rollback, p, &w, None), Ok((some("v2"), "v1".into())));
        let r = intent(Some("v2"), "v1", true);
        assert_eq!(choose(&Target::Rollback, r, &w, None), Ok((some("v2"), "v1".into())));
        // No interruption: from the version with the most traffic.
        let w = BTreeMap::from([("v1".to_string(), 100), ("v2".to_string(), 0)]);
        assert_eq!(choose(&v("v2"), None, &w, None), Ok((some("v1"), "v2".into())));
        assert_eq!(choose(&Target::Rollback, None, &w, Some("v0")), Ok((some("v1"), "v0".into())));
        assert!(choose(&Target::Rollback, None, &w, None).is_err());
        // The first activation comes from nothing.
        assert_eq!(choose(&v("v2"), None, &BTreeMap::new(), None), Ok((None, "v2".into())));
    }
}
