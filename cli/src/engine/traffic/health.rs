//! Health: what the gate and a bake look at (observations of a version's instances) and
//! the pure decisions over them, plus the engine's polling loops that apply them.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::aws::asg::{self, LifecycleState};
use crate::aws::elb::{self, TargetState};
use crate::engine::model::VersionInfo;
use crate::engine::Engine;
use crate::names::{OUT_ASG, OUT_TARGET_GROUP};

/// How often health is looked at while waiting for the gate or during a bake, at most.
const POLL: Duration = Duration::from_secs(5);

/// What the load balancer says about one instance.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetView {
    /// The role has no target group (no inbound traffic).
    NoTargetGroup,
    /// The instance is not (yet) registered in the version's target group.
    NotRegistered,
    /// Its target health state and, when not healthy, the reason.
    State { state: TargetState, reason: Option<String> },
}

/// One instance of a version, as the gate sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceHealth {
    pub id: String,
    /// Auto Scaling lifecycle state: `Pending`, `InService`, `Terminating`, ...
    pub lifecycle: LifecycleState,
    /// Auto Scaling health: `Healthy` / `Unhealthy`.
    pub health: String,
    pub target: TargetView,
}

/// One look at a version: its desired capacity and its instances.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    pub desired: i32,
    pub instances: Vec<InstanceHealth>,
}

/// The verdict on one observation.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// Instances `InService` and `Healthy` in the group and `healthy` in the target group.
    pub ready: usize,
    pub desired: usize,
    /// Instances that are not ready (and why), and missing instances.
    pub problems: Vec<String>,
}

impl Assessment {
    /// Every desired instance is ready.
    pub fn ok(&self) -> bool {
        self.ready >= self.desired
    }

    pub fn summary(&self) -> String {
        if self.problems.is_empty() {
            format!("{}/{} ready", self.ready, self.desired)
        } else {
            format!("{}/{} ready; {}", self.ready, self.desired, self.problems.join("; "))
        }
    }
}

/// Instances on their way out: neither counted nor blamed.
pub(super) fn leaving(lifecycle: &LifecycleState) -> bool {
    use LifecycleState as L;
    matches!(
        lifecycle,
        L::Terminating
            | L::TerminatingWait
            | L::TerminatingProceed
            | L::Terminated
            | L::Detaching
            | L::Detached
            | L::Standby
    )
}

/// Judges one observation: which instances are ready, and what is wrong with the others.
pub fn assess(o: &Observation) -> Assessment {
    let mut ready = 0;
    let mut present = 0;
    let mut problems = Vec::new();
    for i in o.instances.iter().filter(|i| !leaving(&i.lifecycle)) {
        present += 1;
        let mut why = Vec::new();
        if i.lifecycle != LifecycleState::InService || i.health != asg::HEALTHY {
            why.push(format!("{}/{} in its Auto Scaling group", i.lifecycle.as_str(), i.health));
        }
        match &i.target {
            TargetView::NoTargetGroup => {}
            TargetView::NotRegistered => why.push("not registered in the target group".into()),
            TargetView::State { state: TargetState::Healthy, .. } => {}
            TargetView::State { state, reason } => why.push(match reason {
                Some(r) => format!("target {} ({r})", state.as_str()),
                None => format!("target {}", state.as_str()),
            }),
        }
        if why.is_empty() {
            ready += 1;
        } else {
            problems.push(format!("{}: {}", i.id, why.join(", ")));
        }
    }
    let desired = o.desired.max(0) as usize;
    if present < desired {
        problems.push(format!("{present} of {desired} desired instance(s) launched"));
    }
    Assessment { ready, desired, problems }
}

/// The gate's decision after one observation.
#[derive(Debug, Clone, PartialEq)]
pub enum GateStep {
    /// Every desired instance is ready: traffic may move.
    Open,
    /// Not yet: look again.
    Wait,
    /// Out of time: these instances failed, and why.
    Failed(Vec<String>),
}

/// Pure: the gate's decision on an observation made `elapsed` after it started.
pub fn gate_step(o: &Observation, elapsed: Duration, timeout: Duration) -> GateStep {
    let a = assess(o);
    if a.ok() {
        GateStep::Open
    } else if elapsed >= timeout {
        GateStep::Failed(a.problems)
    } else {
        GateStep::Wait
    }
}

/// Pure: during a bake, health that drops below the gate aborts the step.
pub fn bake_step(o: &Observation) -> Result<(), Vec<String>> {
    let a = assess(o);
    if a.ok() {
        Ok(())
    } else {
        Err(a.problems)
    }
}

impl Engine {
    /// One look at a version's instances: Auto Scaling state and target health.
    pub async fn observe(&self, v: &VersionInfo) -> anyhow::Result<(Observation, Option<asg::Group>)> {
        let Some(name) = v.stack.output(OUT_ASG) else {
            return Ok((Observation::default(), None));
        };
        let Some(group) = asg::group(&self.aws.asg, name).await? else {
            anyhow::bail!("{} {} has no Auto Scaling group {name}", v.role, v.version)
        };
        let targets: Option<BTreeMap<String, elb::TargetHealth>> = match v.stack.output(OUT_TARGET_GROUP) {
            Some(tg) => {
                Some(elb::target_health(&self.aws.elb, tg).await?.into_iter().map(|t| (t.id.clone(), t)).collect())
            }
            None => None,
        };
        let instances = group
            .instances
            .iter()
            .map(|i| InstanceHealth {
                id: i.id.clone(),
                lifecycle: i.lifecycle.clone(),
                health: i.health.clone(),
                target: match &targets {
                    None => TargetView::NoTargetGroup,
                    Some(t) => match t.get(&i.id) {
                        None => TargetView::NotRegistered,
                        Some(h) => TargetView::State { state: h.state.clone(), reason: h.reason.clone() },
                    },
                },
            })
            .collect();
        Ok((Observation { desired: group.desired, instances }, Some(group)))
    }

    /// Waits (up to `--timeout`) until every desired instance of a version is ready; fails
    /// naming the instances that are not, and why. Returns the check that opened it
    /// (`2/2 ready`) and how many looks it took.
    pub(super) async fn gate(&mut self, v: &VersionInfo) -> anyhow::Result<(String, usize)> {
        let start = tokio::time::Instant::now();
        let timeout = self.wait.timeout;
        let mut backoff = common::Backoff::exact(self.wait.first_delay, POLL);
        let mut last = String::new();
        let mut looks = 0;
        loop {
            let (o, _) = self.observe(v).await?;
            looks += 1;
            let shown = assess(&o).summary();
            if shown != last {
                self.report.step(&format!("gate: {} {}: {shown}", v.role, v.version));
                last = shown.clone();
            }
            match gate_step(&o, start.elapsed(), timeout) {
                GateStep::Open => return Ok((shown, looks)),
                GateStep::Failed(problems) => crate::refuse!(
                    Unhealthy,
                    "{} {} is not healthy after {}s, so traffic was not moved: {}",
                    v.role,
                    v.version,
                    timeout.as_secs(),
                    problems.join("; ")
                ),
                GateStep::Wait => {}
            }
            tokio::time::sleep(backoff.next_delay().min(timeout.saturating_sub(start.elapsed()))).await;
        }
    }

    /// Holds a step for `bake`, watching the new version's health; `Err` with the problems
    /// as soon as it drops, else the check it held (`health held: 1/1 ready, 4 looks`).
    pub(super) async fn hold_step(
        &mut self,
        v: &VersionInfo,
        bake: Duration,
    ) -> anyhow::Result<Result<String, Vec<String>>> {
        if bake.is_zero() {
            return Ok(Ok("no bake (--bake 0)".into()));
        }
        self.report.step(&format!("baking {}s, watching {} {}", bake.as_secs(), v.role, v.version));
        let start = tokio::time::Instant::now();
        let mut looks = 0;
        loop {
            let (o, _) = self.observe(v).await?;
            looks += 1;
            if let Err(problems) = bake_step(&o) {
                return Ok(Err(problems));
            }
            let left = bake.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(Ok(format!("health held: {}, {looks} look(s)", assess(&o).summary())));
            }
            tokio::time::sleep(left.min(POLL)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, lifecycle: &str, health: &str, target: Option<&str>) -> InstanceHealth {
        InstanceHealth {
            id: id.into(),
            lifecycle: LifecycleState::from(lifecycle),
            health: health.into(),
            target: match target {
                None => TargetView::NoTargetGroup,
                Some("-") => TargetView::NotRegistered,
                Some(s) => TargetView::State {
                    state: TargetState::from(s),
                    reason: (s != "healthy").then(|| "Target.FailedHealthChecks: Health checks failed".into()),
                },
            },
        }
    }

    fn obs(desired: i32, instances: Vec<InstanceHealth>) -> Observation {
        Observation { desired, instances }
    }

    /// Feeds a gate a sequence of (seconds since start, observation); returns its steps.
    fn run_gate(seq: Vec<(u64, Observation)>, timeout: u64) -> Vec<GateStep> {
        let mut out = Vec::new();
        for (t, o) in seq {
            let s = gate_step(&o, Duration::from_secs(t), Duration::from_secs(timeout));
            let stop = s != GateStep::Wait;
            out.push(s);
            if stop {
                break;
            }
        }
        out
    }

    #[test]
    fn gate_opens_once_every_desired_instance_is_ready() {
        let steps = run_gate(
            vec![
                (0, obs(2, vec![])),
                (
                    2,
                    obs(
                        2,
                        vec![
                            inst("i-1", "Pending", "Healthy", Some("-")),
                            inst("i-2", "Pending", "Healthy", Some("-")),
                        ],
                    ),
                ),
                (
                    4,
                    obs(
                        2,
                        vec![
                            inst("i-1", "InService", "Healthy", Some("initial")),
                            inst("i-2", "InService", "Healthy", Some("initial")),
                        ],
                    ),
                ),
                (
                    6,
                    obs(
                        2,
                        vec![
                            inst("i-1", "InService", "Healthy", Some("healthy")),
                            inst("i-2", "InService", "Healthy", Some("initial")),
                        ],
                    ),
                ),
                (
                    8,
                    obs(
                        2,
                        vec![
                            inst("i-1", "InService", "Healthy", Some("healthy")),
                            inst("i-2", "InService", "Healthy", Some("healthy")),
                        ],
                    ),
                ),
            ],
            60,
        );
        assert_eq!(steps, vec![GateStep::Wait, GateStep::Wait, GateStep::Wait, GateStep::Wait, GateStep::Open]);
    }

    #[test]
    fn gate_fails_at_the_timeout_naming_instances_and_reasons() {
        let sick = obs(
            2,
            vec![
                inst("i-1", "InService", "Healthy", Some("healthy")),
                inst("i-2", "InService", "Unhealthy", Some("unhealthy")),
            ],
        );
        let steps = run_gate(vec![(0, sick.clone()), (5, sick.clone()), (10, sick)], 10);
        assert_eq!(steps.len(), 3);
        let GateStep::Failed(p) = &steps[2] else { panic!("{steps:?}") };
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("i-2: InService/Unhealthy in its Auto Scaling group, target unhealthy ("), "{p:?}");
        assert!(p[0].contains("Target.FailedHealthChecks"), "{p:?}");
    }

    #[test]
    fn gate_counts_missing_instances_and_ignores_leaving_ones() {
        let a = assess(&obs(
            3,
            vec![inst("i-1", "InService", "Healthy", None), inst("i-9", "Terminating", "Unhealthy", None)],
        ));
        assert_eq!((a.ready, a.desired, a.ok()), (1, 3, false));
        assert_eq!(a.problems, vec!["1 of 3 desired instance(s) launched".to_string()]);
        // No target group (bees, workers): the Auto Scaling group alone decides.
        assert!(assess(&obs(1, vec![inst("i-1", "InService", "Healthy", None)])).ok());
        // Zero desired (a worker fleet between runs) is vacuously ready.
        assert!(assess(&obs(0, vec![])).ok());
        // Registered nowhere is not ready.
        let a = assess(&obs(1, vec![inst("i-1", "InService", "Healthy", Some("-"))]));
        assert_eq!(a.problems, vec!["i-1: not registered in the target group".to_string()]);
        // A replacement beyond the desired count: ready enough.
        assert!(assess(&obs(
            1,
            vec![inst("i-1", "InService", "Healthy", Some("healthy")), inst("i-2", "Pending", "Healthy", Some("-"))]
        ))
        .ok());
    }

    #[test]
    fn bake_aborts_when_health_drops() {
        let good = obs(1, vec![inst("i-1", "InService", "Healthy", Some("healthy"))]);
        let bad = obs(1, vec![inst("i-1", "InService", "Healthy", Some("unhealthy"))]);
        let seq = [good.clone(), good, bad];
        let verdicts: Vec<bool> = seq.iter().map(|o| bake_step(o).is_ok()).collect();
        assert_eq!(verdicts, vec![true, true, false]);
    }
}
