//! Traffic: which version of a role is live, and moving it to another version without
//! downtime. Every switch is gated on health, optionally goes in weighted canary steps
//! (ALB), can be rolled back, and holds a per-swarm-and-role lock in SSM so that two
//! operators never switch the same role at once.
//!
//! Invariants (see docs/ARCHITECTURE.md "Traffic"):
//! * the active version is read back from AWS: the listener's weights (ALB/NLB roles) or
//!   the `tyrell:active` tag on the Auto Scaling group (the others);
//! * every listener change is one atomic `ModifyListener` whose targets include a version
//!   that passed the gate, so an interrupted switch never leaves the role without one;
//! * the lock records the switch's intent (from, to), so a re-run finishes or undoes it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::Error;
use super::fleet::{stack_name, VersionInfo};
use super::library::{Manifest, Via};
use super::{validate, Engine, TAG_ACTIVE, TAG_ROLE, TAG_STACK};
use crate::aws::{asg, cfn, elb, ssm};

pub use crate::names::TAG_INACTIVE_SINCE;

/// How often health is looked at while waiting for the gate or during a bake, at most.
const POLL: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Health: observations and the pure decisions over them.

/// What the load balancer says about one instance.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetView {
    /// The role has no target group (no inbound traffic).
    NoTargetGroup,
    /// The instance is not (yet) registered in the version's target group.
    NotRegistered,
    /// Its target health state and, when not healthy, the reason.
    State { state: String, reason: Option<String> },
}

/// One instance of a version, as the gate sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceHealth {
    pub id: String,
    /// Auto Scaling lifecycle state: `Pending`, `InService`, `Terminating`, ...
    pub lifecycle: String,
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
fn leaving(lifecycle: &str) -> bool {
    lifecycle.starts_with("Terminat") || lifecycle.starts_with("Detach") || lifecycle.starts_with("Standby")
}

/// Judges one observation: which instances are ready, and what is wrong with the others.
pub fn assess(o: &Observation) -> Assessment {
    let mut ready = 0;
    let mut present = 0;
    let mut problems = Vec::new();
    for i in o.instances.iter().filter(|i| !leaving(&i.lifecycle)) {
        present += 1;
        let mut why = Vec::new();
        if i.lifecycle != "InService" || i.health != "Healthy" {
            why.push(format!("{}/{} in its Auto Scaling group", i.lifecycle, i.health));
        }
        match &i.target {
            TargetView::NoTargetGroup => {}
            TargetView::NotRegistered => why.push("not registered in the target group".into()),
            TargetView::State { state, .. } if state == "healthy" => {}
            TargetView::State { state, reason } => why.push(match reason {
                Some(r) => format!("target {state} ({r})"),
                None => format!("target {state}"),
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

// ---------------------------------------------------------------------------------------
// Plans: which weights, from where to where.

/// The weights (percent to the new version) to go through, in order, from the new
/// version's current share: the canary steps above it, then 100.
///
/// `has_old`: whether a live version exists to share the traffic with. Without one (a
/// role's first release) a canary step cannot be made: the listener forwards to one
/// target group, so "20%" would really be 100%. That is refused here, before anything
/// moves, rather than reported as a step that did not happen.
pub fn shift_plan(canary: &[u8], current: i32, has_old: bool) -> Result<Vec<i32>, String> {
    let steps = canary_steps(canary, current)?;
    if !has_old && steps.iter().any(|p| *p < 100) {
        return Err("this is the role's first release: there is no live version to share traffic with, so --canary cannot apply; switch without --canary (all traffic moves once the gate passes)".into());
    }
    Ok(steps)
}

/// The weights (percent to the new version) to go through, in order, from the new
/// version's current share: the canary steps above it, then 100.
pub fn canary_steps(canary: &[u8], current: i32) -> Result<Vec<i32>, String> {
    if let Some(bad) = canary.iter().find(|p| !(1..=99).contains(*p)) {
        return Err(format!("invalid --canary step {bad}: steps are percentages from 1 to 99, e.g. --canary 10,50"));
    }
    if canary.windows(2).any(|w| w[0] >= w[1]) {
        return Err("invalid --canary: steps must go up, e.g. --canary 10,50".into());
    }
    let mut steps: Vec<i32> = canary.iter().map(|p| *p as i32).filter(|p| *p > current).collect();
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
    prior: Option<&Lock>,
    weights: &BTreeMap<String, i32>,
    previous: Option<&str>,
) -> Result<(Option<String>, String), String> {
    let top_other = |to: &str| {
        weights.iter().filter(|(v, w)| v.as_str() != to && **w > 0).max_by_key(|(_, w)| **w).map(|(v, _)| v.clone())
    };
    match (target, prior) {
        (Target::Version(v), Some(p)) if &p.to == v => Ok((p.from.clone(), v.clone())),
        (Target::Version(v), Some(p)) if p.from.as_ref() == Some(v) => Ok((Some(p.to.clone()), v.clone())),
        (Target::Version(v), _) => Ok((top_other(v), v.clone())),
        (Target::Rollback, Some(p)) if p.rollback => Ok((p.from.clone(), p.to.clone())),
        (Target::Rollback, Some(p)) => match &p.from {
            Some(f) => Ok((Some(p.to.clone()), f.clone())),
            None => Err(format!("the interrupted switch to {} had no earlier version to roll back to", p.to)),
        },
        (Target::Rollback, None) => match previous {
            Some(prev) => Ok((top_other(prev), prev.to_string())),
            None => Err("there is no earlier version to roll back to".into()),
        },
    }
}

// ---------------------------------------------------------------------------------------
// The lock.

/// The lock of one role's traffic in one swarm: an SSM parameter created with
/// `Overwrite=false` (atomic), holding who switches what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lock {
    /// `user@host`.
    pub holder: String,
    pub host: String,
    pub pid: u32,
    /// RFC 3339, UTC.
    pub since: String,
    pub from: Option<String>,
    pub to: String,
    #[serde(default)]
    pub rollback: bool,
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
            self.to
        )
    }
}

pub fn lock_param(swarm: &str, role: &str) -> String {
    format!("/tyrell/{swarm}/locks/{role}")
}

/// Pure: a lock is stale when its holder ran on this host and that process is gone.
/// A holder on another host cannot be checked from here: only `--force-unlock` breaks it.
pub fn is_stale(lock: &Lock, host: &str, alive: impl Fn(u32) -> bool) -> bool {
    lock.host == host && !alive(lock.pid)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether a process of this host is alive (Linux: /proc; elsewhere assume it is).
fn pid_alive(pid: u32) -> bool {
    !std::path::Path::new("/proc/self").exists() || std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Engine: show, switch, unlock.

/// One version of a role as `tyrell traffic` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionTraffic {
    pub version: String,
    pub weight: i32,
    pub desired: i32,
    pub healthy: usize,
    pub total: usize,
    #[serde(skip)]
    pub info: VersionInfo,
}

/// A role's routing in one swarm.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficState {
    pub role: String,
    pub swarm: String,
    pub via: Via,
    pub active: Option<String>,
    pub versions: Vec<VersionTraffic>,
    pub lock: Option<Lock>,
}

/// A switch as asked on the command line.
#[derive(Debug, Clone)]
pub struct SwitchRequest {
    pub swarm: String,
    pub target: Target,
    /// Capacity of the new version (default: the live version's).
    pub size: Option<i32>,
    pub canary: Vec<u8>,
    pub bake: Duration,
    pub retire: bool,
    pub force_unlock: bool,
}

/// What a switch did.
#[derive(Debug, Clone, Serialize)]
pub struct Switched {
    pub role: String,
    pub swarm: String,
    pub from: Option<String>,
    pub to: String,
    /// The weights (percent to `to`) set, in order.
    pub steps: Vec<i32>,
    /// The old version was scaled to zero.
    pub retired: bool,
    /// A lock that was taken over or broken on the way.
    pub broke_lock: Option<Lock>,
}

impl Engine {
    /// The role `tyrell traffic NAME` means: a role name or noun, or a role's
    /// `[traffic] aliases` (`elb` for the routers).
    pub fn traffic_role(&self, name: &str) -> anyhow::Result<Manifest> {
        Ok(self.lib.traffic_role(name).cloned().ok_or_else(|| {
            let names: Vec<&str> = self
                .lib
                .roles()
                .iter()
                .flat_map(|m| m.traffic.aliases.iter().map(String::as_str).chain([m.noun.as_str()]))
                .collect();
            Error::Invalid(format!("unknown traffic target {name:?}: use one of {}", names.join(", ")))
        })?)
    }

    /// The listener in front of a role, from the base stack (`None`: no inbound traffic).
    async fn listener(&self, m: &Manifest, swarm: &str) -> anyhow::Result<Option<String>> {
        let Some(output) = m.traffic.listener.as_deref() else { return Ok(None) };
        let base = self.base(swarm).await?;
        let arn = base.output(output).ok_or_else(|| anyhow::anyhow!("base stack {swarm} has no output {output}"))?;
        Ok(Some(arn.to_string()))
    }

    /// One look at a version's instances: Auto Scaling state and target health.
    pub async fn observe(&self, v: &VersionInfo) -> anyhow::Result<(Observation, Option<asg::Group>)> {
        let Some(name) = v.stack.output("AutoScalingGroupName") else {
            return Ok((Observation::default(), None));
        };
        let Some(group) = asg::group(&self.aws.asg, name).await? else {
            anyhow::bail!("{} {} has no Auto Scaling group {name}", v.role, v.version)
        };
        let targets: Option<BTreeMap<String, elb::TargetHealth>> = match v.stack.output("TargetGroupArn") {
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

    /// The routing of a role in a swarm: each version's weight and health, and the lock.
    pub async fn traffic(&self, m: &Manifest, swarm: &str) -> anyhow::Result<TrafficState> {
        self.base(swarm).await?;
        let mut versions = Vec::new();
        for v in self.versions(m, Some(swarm)).await? {
            let (o, _) = self.observe(&v).await?;
            let a = assess(&o);
            let total = o.instances.iter().filter(|i| !leaving(&i.lifecycle)).count();
            versions.push(VersionTraffic {
                version: v.version.clone(),
                weight: v.weight,
                desired: v.desired,
                healthy: a.ready,
                total,
                info: v,
            });
        }
        let active = versions.iter().filter(|v| v.info.active).max_by_key(|v| v.weight).map(|v| v.version.clone());
        let lock = self.read_lock(swarm, &m.role).await?;
        Ok(TrafficState { role: m.role.clone(), swarm: swarm.to_string(), via: m.traffic.via, active, versions, lock })
    }

    async fn read_lock(&self, swarm: &str, role: &str) -> anyhow::Result<Option<Lock>> {
        let name = lock_param(swarm, role);
        // Unreadable: someone else's format; it still locks, and names itself.
        Ok(ssm::get_string(&self.aws.ssm, &name).await?.map(|text| {
            serde_json::from_str(&text).unwrap_or(Lock {
                holder: format!("unknown ({text})"),
                host: String::new(),
                pid: 0,
                since: "?".into(),
                from: None,
                to: "?".into(),
                rollback: false,
            })
        }))
    }

    /// Fails while a switch of the role holds its lock (removing versions then could take
    /// away the one being switched to).
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
    pub async fn unlock(&mut self, m: &Manifest, swarm: &str) -> anyhow::Result<Option<Lock>> {
        validate::name("swarm", swarm)?;
        let lock = self.read_lock(swarm, &m.role).await?;
        if let Some(l) = &lock {
            self.report.step(&format!("breaking the {} traffic lock of swarm {swarm}: {l}", m.role));
            ssm::delete(&self.aws.ssm, &[lock_param(swarm, &m.role)]).await?;
        }
        Ok(lock)
    }

    /// The version `--rollback` returns to: the one that stopped being active most recently
    /// (tag `tyrell:inactive-since`), else the newest version older than the active one.
    pub async fn previous(&self, versions: &[VersionInfo]) -> anyhow::Result<Option<String>> {
        let mut best: Option<(String, String)> = None;
        for v in versions.iter().filter(|v| v.weight == 0) {
            let Some(name) = v.stack.output("AutoScalingGroupName") else { continue };
            if let Some(g) = asg::group(&self.aws.asg, name).await? {
                if let Some(t) = g.tags.get(TAG_INACTIVE_SINCE) {
                    if best.as_ref().is_none_or(|(b, _)| t > b) {
                        best = Some((t.clone(), v.version.clone()));
                    }
                }
            }
        }
        if let Some((_, v)) = best {
            return Ok(Some(v));
        }
        let active = versions.iter().position(|v| v.active);
        Ok(active.and_then(|i| versions[..i].last()).map(|v| v.version.clone()))
    }

    /// Moves a role's traffic to another version: lock, scale, gate, shift (in canary
    /// steps with bakes), record, retire, unlock. See the module documentation.
    pub async fn switch(&mut self, m: &Manifest, req: &SwitchRequest) -> anyhow::Result<Switched> {
        let swarm = req.swarm.as_str();
        validate::name("swarm", swarm)?;
        if let Some(n) = req.size {
            validate::size(n)?;
        }
        if !req.canary.is_empty() && m.traffic.via != Via::Alb {
            crate::refuse!(
                Invalid,
                "--canary needs weighted forwarding, which only the ALB does: a {} switch is one step",
                m.role
            );
        }
        canary_steps(&req.canary, 0).map_err(Error::Invalid)?;
        let listener = self.listener(m, swarm).await?;
        if listener.is_none() {
            self.base(swarm).await?;
        }
        if let Target::Version(v) = &req.target {
            validate::version(v)?;
            let s = cfn::get(&self.aws.cfn, &stack_name(swarm, &m.role, v)).await?;
            if !s.is_some_and(|s| s.tag(TAG_STACK) == Some(swarm) && s.tag(TAG_ROLE) == Some(m.role.as_str())) {
                self.version_info(m, swarm, v).await?; // fails, saying where it is instead
            }
        }

        // The lock: a live holder refuses now; a dead one (or --force-unlock) hands over its intent.
        let name = lock_param(swarm, &m.role);
        let host = host_name();
        let prior = match self.read_lock(swarm, &m.role).await? {
            None => None,
            Some(l) if req.force_unlock => {
                self.report.step(&format!("--force-unlock: breaking the {} traffic lock of swarm {swarm}: {l}", m.role));
                Some(l)
            }
            Some(l) if is_stale(&l, &host, pid_alive) => {
                self.report.step(&format!(
                    "taking over a stale {} traffic lock (its process {} on this host is gone): {l}",
                    m.role, l.pid
                ));
                Some(l)
            }
            Some(l) => crate::refuse!(
                Locked,
                "another {} switch in swarm {swarm} is in progress, {l}; if that process is gone, re-run with --force-unlock",
                m.role
            ),
        };
        if prior.is_some() {
            ssm::delete(&self.aws.ssm, std::slice::from_ref(&name)).await?;
        }
        let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "?".into());
        let mut me = Lock {
            holder: format!("{user}@{host}"),
            host,
            pid: std::process::id(),
            since: now_rfc3339(),
            from: None,
            to: match &req.target {
                Target::Version(v) => v.clone(),
                Target::Rollback => "?".into(),
            },
            rollback: req.target == Target::Rollback,
        };
        let description = format!("tyrell traffic lock: {} in swarm {swarm}", m.role);
        if !ssm::put_string(&self.aws.ssm, &name, &serde_json::to_string(&me)?, &description, false).await? {
            let other = self.read_lock(swarm, &m.role).await?.map(|l| l.to_string()).unwrap_or_default();
            crate::refuse!(Locked, "another {} switch in swarm {swarm} took the lock first, {other}", m.role);
        }
        let result = self.switch_holding(m, req, listener.as_deref(), prior.as_ref(), &mut me, &description).await;
        self.report.in_flight(None);
        // Release only our own lock (someone may have broken it and taken it since); a
        // failure to release never hides the switch's own error.
        let released = match self.read_lock(swarm, &m.role).await {
            Ok(Some(l)) if l == me => ssm::delete(&self.aws.ssm, &[name]).await.map_err(anyhow::Error::from),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        let mut done = result?;
        released.map_err(|e| e.context(format!("{} switched to {}, but its lock stays", m.role, done.to)))?;
        done.broke_lock = prior;
        Ok(done)
    }

    /// Under the lock: reads the state, decides (from, to), records that intent in the lock.
    async fn switch_holding(
        &mut self,
        m: &Manifest,
        req: &SwitchRequest,
        listener: Option<&str>,
        prior: Option<&Lock>,
        me: &mut Lock,
        description: &str,
    ) -> anyhow::Result<Switched> {
        let swarm = req.swarm.as_str();
        let versions = self.versions(m, Some(swarm)).await?;
        let weights: BTreeMap<String, i32> = versions.iter().map(|v| (v.version.clone(), v.weight)).collect();
        // A lock taken but killed before its intent was written (or unreadable) tells nothing.
        let intent = prior.filter(|l| l.to != "?");
        let previous = match (&req.target, intent) {
            (Target::Rollback, None) => self.previous(&versions).await?,
            _ => None,
        };
        let (from, to) = choose(&req.target, intent, &weights, previous.as_deref())
            .map_err(|e| Error::NotFound(format!("cannot roll back {} in swarm {swarm}: {e}", m.role)))?;
        me.from = from.clone();
        me.to = to.clone();
        let name = lock_param(swarm, &m.role);
        ssm::put_string(&self.aws.ssm, &name, &serde_json::to_string(me)?, description, true).await?;
        self.switch_locked(m, req, listener, &versions, from, to).await
    }

    async fn switch_locked(
        &mut self,
        m: &Manifest,
        req: &SwitchRequest,
        listener: Option<&str>,
        versions: &[VersionInfo],
        from: Option<String>,
        to: String,
    ) -> anyhow::Result<Switched> {
        let swarm = req.swarm.as_str();
        let find = |v: &str| versions.iter().find(|x| x.version == v).cloned();
        let mut new =
            find(&to).ok_or_else(|| Error::NotFound(format!("swarm {swarm} has no {} version {to}", m.role)))?;
        let old = match &from {
            Some(f) => {
                Some(find(f).ok_or_else(|| Error::NotFound(format!("swarm {swarm} has no {} version {f}", m.role)))?)
            }
            None => None,
        };
        let tg = |v: &VersionInfo| -> anyhow::Result<String> {
            v.stack.output("TargetGroupArn").map(str::to_string).ok_or_else(|| {
                anyhow::anyhow!(
                    "{} {} has no target group (stack {} has no output TargetGroupArn)",
                    m.role,
                    v.version,
                    v.stack_name
                )
            })
        };
        let (new_tg, old_tg) = match listener {
            Some(_) => (Some(tg(&new)?), old.as_ref().map(tg).transpose()?),
            None => (None, None),
        };
        // The shift's weights are decided before anything changes: a first release with
        // --canary is refused here (the lock is released by the caller).
        let plan = match (listener, &new_tg) {
            (Some(_), Some(_)) => shift_plan(&req.canary, new.weight, old_tg.is_some())
                .map_err(|e| Error::Invalid(format!("cannot switch {} in swarm {swarm} to {to}: {e}", m.role)))?,
            _ => vec![100],
        };
        let was = new.desired;
        let capacity = req.size.unwrap_or(old.as_ref().map(|o| o.desired).unwrap_or(was));
        if listener.is_some() && capacity < 1 {
            crate::refuse!(
                Invalid,
                "{} {to} would get no instances: a version behind a load balancer needs at least one (-s N)",
                m.role
            );
        }
        self.report.step(&format!(
            "switching {} in swarm {swarm}: {} -> {to} ({capacity} instance(s))",
            m.role,
            from.as_deref().unwrap_or("nothing")
        ));

        let interrupted = |at: &str| {
            format!(
                "the {} switch {} -> {to} in swarm {swarm} stopped {at}, its lock left behind: re-run the same command to finish it, or --rollback to undo it",
                m.role,
                from.as_deref().unwrap_or("nothing")
            )
        };

        // 1. Capacity, then the gate.
        if capacity != was {
            new = self.scale_version(m, swarm, &to, capacity).await?;
        }
        self.report.in_flight(Some(interrupted("before moving any traffic")));
        if let Err(e) = self.gate(&new).await {
            if capacity != was {
                self.report.step(&format!("gate failed: returning {} {to} to {was} instance(s)", m.role));
                self.scale_version(m, swarm, &to, was).await?;
            }
            return Err(e);
        }

        // 2. Shift.
        let mut steps = Vec::new();
        match (listener, &new_tg) {
            (Some(listener), Some(new_tg)) => {
                for (i, pct) in plan.iter().enumerate() {
                    let targets = split(old_tg.as_deref(), new_tg, *pct);
                    elb::forward(&self.aws.elb, listener, &targets).await?;
                    self.report.in_flight(Some(interrupted(&format!("at {pct}%"))));
                    steps.push(*pct);
                    let rest = match (&from, *pct) {
                        (Some(f), p) if p < 100 => format!(", {f} {}%", 100 - p),
                        _ => String::new(),
                    };
                    self.report.step(&format!("step {}/{}: {} {to} {pct}%{rest}", i + 1, plan.len(), m.role));
                    if *pct < 100 {
                        if let Err(problems) = self.hold_step(&new, req.bake).await? {
                            // `shift_plan` makes steps below 100% only when there is an old version.
                            if let Some(back) = old_tg.as_deref() {
                                elb::forward(&self.aws.elb, listener, &[(back.to_string(), 1)]).await?;
                            }
                            crate::refuse!(
                                Unhealthy,
                                "{} {to} became unhealthy during the {pct}% step ({}); traffic is back on {}",
                                m.role,
                                problems.join("; "),
                                from.as_deref().unwrap_or("the old version")
                            );
                        }
                    }
                }
                if plan.is_empty() {
                    self.report.step(&format!("{} {to} already takes all the traffic", m.role));
                }
            }
            _ => {
                let group = new.stack.output("AutoScalingGroupName").unwrap_or_default().to_string();
                asg::set_tag(&self.aws.asg, &group, TAG_ACTIVE, "true").await?;
                self.report.step(&format!("{} {to} is now the active version", m.role));
                steps.push(100);
            }
        }

        // 3. The old version: marked for --rollback, and scaled in when asked (always for
        //    roles without inbound traffic: two versions would do the same work twice).
        let mut retired = false;
        if let Some(old) = &old {
            let group = old.stack.output("AutoScalingGroupName").unwrap_or_default().to_string();
            if listener.is_none() {
                asg::set_tag(&self.aws.asg, &group, TAG_ACTIVE, "false").await?;
            }
            asg::set_tag(&self.aws.asg, &group, TAG_INACTIVE_SINCE, &now_rfc3339()).await?;
            if req.retire || listener.is_none() {
                if old.desired > 0 {
                    self.report.step(&format!("scaling {} {} to 0 (kept for --rollback)", m.role, old.version));
                    self.scale_version(m, swarm, &old.version, 0).await?;
                }
                retired = true;
            }
        }
        Ok(Switched { role: m.role.clone(), swarm: swarm.into(), from, to, steps, retired, broke_lock: None })
    }

    /// Waits (up to `--timeout`) until every desired instance of a version is ready; fails
    /// naming the instances that are not, and why.
    async fn gate(&mut self, v: &VersionInfo) -> anyhow::Result<()> {
        let start = tokio::time::Instant::now();
        let timeout = self.wait.timeout;
        let mut delay = self.wait.first_delay;
        let mut last = String::new();
        loop {
            let (o, _) = self.observe(v).await?;
            let shown = assess(&o).summary();
            if shown != last {
                self.report.step(&format!("gate: {} {}: {shown}", v.role, v.version));
                last = shown;
            }
            match gate_step(&o, start.elapsed(), timeout) {
                GateStep::Open => return Ok(()),
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
            tokio::time::sleep(delay.min(timeout.saturating_sub(start.elapsed()))).await;
            delay = (delay * 2).min(POLL);
        }
    }

    /// Holds a step for `bake`, watching the new version's health; `Err` with the problems
    /// as soon as it drops.
    async fn hold_step(&mut self, v: &VersionInfo, bake: Duration) -> anyhow::Result<Result<(), Vec<String>>> {
        if bake.is_zero() {
            return Ok(Ok(()));
        }
        self.report.step(&format!("baking {}s, watching {} {}", bake.as_secs(), v.role, v.version));
        let start = tokio::time::Instant::now();
        loop {
            let (o, _) = self.observe(v).await?;
            if let Err(problems) = bake_step(&o) {
                return Ok(Err(problems));
            }
            let left = bake.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(Ok(()));
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
            lifecycle: lifecycle.into(),
            health: health.into(),
            target: match target {
                None => TargetView::NoTargetGroup,
                Some("-") => TargetView::NotRegistered,
                Some(s) => TargetView::State {
                    state: s.into(),
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

    #[test]
    fn canary_steps_go_up_and_end_at_100() {
        assert_eq!(canary_steps(&[], 0).unwrap(), vec![100]);
        assert_eq!(canary_steps(&[10, 50], 0).unwrap(), vec![10, 50, 100]);
        // A re-run after an interruption at 10% carries on from there.
        assert_eq!(canary_steps(&[10, 50], 10).unwrap(), vec![50, 100]);
        assert_eq!(canary_steps(&[10, 50], 100).unwrap(), Vec::<i32>::new());
        assert!(canary_steps(&[50, 10], 0).is_err());
        assert!(canary_steps(&[0], 0).is_err());
        assert!(canary_steps(&[100], 0).is_err());
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
        let e = shift_plan(&[20], 0, false).unwrap_err();
        assert!(e.contains("first release") && e.contains("--canary"), "{e}");
        assert_eq!(shift_plan(&[], 0, false).unwrap(), vec![100]);
        assert_eq!(shift_plan(&[20], 0, true).unwrap(), vec![20, 100]);
        // An interrupted first release already at 100%: nothing left to shift, nothing refused.
        assert_eq!(shift_plan(&[20], 100, false).unwrap(), Vec::<i32>::new());
    }

    fn lock(from: Option<&str>, to: &str, rollback: bool) -> Lock {
        Lock {
            holder: "ann@box".into(),
            host: "box".into(),
            pid: 42,
            since: "2026-11-23T17:00:00Z".into(),
            from: from.map(str::to_string),
            to: to.into(),
            rollback,
        }
    }

    #[test]
    fn choose_finishes_or_undoes_an_interrupted_switch() {
        let w = BTreeMap::from([("v1".to_string(), 50), ("v2".to_string(), 50), ("v0".to_string(), 0)]);
        let v = |s: &str| Target::Version(s.into());
        let some = |s: &str| Some(s.to_string());
        let p = lock(Some("v1"), "v2", false);
        assert_eq!(choose(&v("v2"), Some(&p), &w, None), Ok((some("v1"), "v2".into())));
        assert_eq!(choose(&v("v1"), Some(&p), &w, None), Ok((some("v2"), "v1".into())));
        assert_eq!(choose(&Target::Rollback, Some(&p), &w, None), Ok((some("v2"), "v1".into())));
        let r = lock(Some("v2"), "v1", true);
        assert_eq!(choose(&Target::Rollback, Some(&r), &w, None), Ok((some("v2"), "v1".into())));
        // No interruption: from the version with the most traffic.
        let w = BTreeMap::from([("v1".to_string(), 100), ("v2".to_string(), 0)]);
        assert_eq!(choose(&v("v2"), None, &w, None), Ok((some("v1"), "v2".into())));
        assert_eq!(choose(&Target::Rollback, None, &w, Some("v0")), Ok((some("v1"), "v0".into())));
        assert!(choose(&Target::Rollback, None, &w, None).is_err());
        // The first activation comes from nothing.
        assert_eq!(choose(&v("v2"), None, &BTreeMap::new(), None), Ok((None, "v2".into())));
    }

    #[test]
    fn only_a_dead_process_on_this_host_makes_a_stale_lock() {
        let l = lock(Some("v1"), "v2", false);
        assert!(is_stale(&l, "box", |_| false));
        assert!(!is_stale(&l, "box", |_| true));
        assert!(!is_stale(&l, "other", |_| false));
        let text = serde_json::to_string(&l).unwrap();
        assert_eq!(serde_json::from_str::<Lock>(&text).unwrap(), l);
        assert_eq!(l.to_string(), "held by ann@box (pid 42) since 2026-11-23T17:00:00Z, switching v1 -> v2");
    }
}
