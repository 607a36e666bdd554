//! The switch: lock, scale, gate, shift (in the plan's steps, baking each), record,
//! retire, unlock. The driver over health, plan and lock.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::engine::error::Error;
use crate::engine::fleet::stack_name;
use crate::engine::library::{Manifest, Via};
use crate::engine::model::VersionInfo;
use crate::engine::values::SwarmName;
use crate::engine::{validate, Engine, TAG_ACTIVE, TAG_ROLE, TAG_STACK};
use crate::names::{live_param, state_param, OUT_ASG, OUT_TARGET_GROUP};

use super::lock::*;
use super::plan::*;
use super::TAG_INACTIVE_SINCE;
use crate::aws::{asg, cfn, elb, ssm};

/// A switch as asked on the command line.
#[derive(Debug, Clone)]
pub struct SwitchRequest {
    pub swarm: SwarmName,
    pub target: Target,
    /// Capacity of the new version (default: the live version's).
    pub size: Option<i32>,
    /// How traffic moves once the gate passes.
    pub shift: Shift,
    /// How long each weighted step is held while health is watched.
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
    pub broke_lock: Option<Held>,
    /// The release report: each phase, how long it took, and the checks made.
    pub report: Report,
}

/// The release report of a switch: what moved, how long each phase took, and the
/// swarm-level checks made on the way.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The whole switch, from deciding (from, to) to the old version's last change, in
    /// seconds (one decimal).
    pub seconds: f64,
    /// In order.
    pub phases: Vec<Phase>,
}

/// One phase of a switch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phase {
    /// `scale` (the new version to its capacity), `gate`, `step` (one listener change or
    /// the tag move), `bake` (a step held while health is watched), `schedule` (scheduled
    /// actions put on the new version or taken off the old one), `old` (the old version
    /// marked inactive, scaled in).
    pub phase: &'static str,
    /// What it did, e.g. `router v2 10%, v1 90%`.
    pub what: String,
    /// How long it took, in seconds (one decimal).
    pub seconds: f64,
    /// The check it made, e.g. `2/2 ready` (gate), `health held: 2/2 ready, 7 look(s)` (bake).
    pub check: Option<String>,
}

/// A duration in seconds, to one decimal.
fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

impl Report {
    fn add(&mut self, phase: &'static str, what: String, since: tokio::time::Instant, check: Option<String>) {
        self.phases.push(Phase { phase, what, seconds: secs(since.elapsed()), check });
    }
}

impl Engine {
    /// Moves a role's traffic to another version: lock, scale, gate, shift (in the
    /// strategy's steps with bakes), record, retire, unlock. See the module documentation.
    ///
    /// Errors: bad input ([`Error::Invalid`]), an unknown version ([`Error::NotFound`]),
    /// a lock held by a live switch ([`Error::Locked`]), a gate or bake that fails
    /// ([`Error::Unhealthy`]; traffic stays on, or goes back to, the old version), AWS.
    pub async fn switch(&mut self, m: &Manifest, req: &SwitchRequest) -> anyhow::Result<Switched> {
        let swarm = req.swarm.as_str();
        validate::name("swarm", swarm)?;
        if let Some(n) = req.size {
            validate::role_size(&m.role, n)?;
        }
        if req.shift.is_weighted() && m.traffic.via != Via::Alb {
            crate::refuse!(
                Invalid,
                "--canary (--shift {}) needs weighted forwarding, which only the ALB does: a {} switch is one step",
                req.shift,
                m.role
            );
        }
        req.shift.steps().map_err(Error::Invalid)?;
        let listener = self.listener(m, swarm).await?;
        if listener.is_none() {
            self.fleet_home(swarm, &m.security_group_output).await?;
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
            Some(Held::Lock(l)) if is_stale(&l, &host, pid_alive) => {
                self.report.step(&format!(
                    "taking over a stale {} traffic lock (its process {} on this host is gone): {l}",
                    m.role, l.pid
                ));
                Some(Held::Lock(l))
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
            // A rollback decides where to go once it holds the lock (switch_holding).
            to: match &req.target {
                Target::Version(v) => Some(v.clone()),
                Target::Rollback => None,
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
            Ok(Some(Held::Lock(l))) if l == me => {
                ssm::delete(&self.aws.ssm, &[name]).await.map_err(anyhow::Error::from)
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        let mut done = result?;
        released.map_err(|e| e.context(format!("{} switched to {}, but its lock stays", m.role, done.to)))?;
        done.broke_lock = prior;
        Ok(done)
    }

    /// Points `listener` and the role's `[traffic] follow` listeners (those the base stack
    /// has) at `targets` ((target group ARN, weight) pairs), the followers first. The calls
    /// are not atomic together: for a moment new connections on two listeners may reach
    /// two versions, as existing connections already do during any broker switch.
    async fn forward_all(
        &self,
        m: &Manifest,
        swarm: &str,
        listener: &str,
        targets: &[(String, i32)],
    ) -> anyhow::Result<()> {
        if !m.traffic.follow.is_empty() {
            let base = self.base(swarm).await?;
            for out in &m.traffic.follow {
                if let Some(arn) = base.output(out) {
                    elb::forward(&self.aws.elb, arn, targets).await?;
                }
            }
        }
        elb::forward(&self.aws.elb, listener, targets).await?;
        Ok(())
    }

    /// Waits (within the operation timeout) until the new version's boxes report that they
    /// hold the swarm state the live version's hold ([`super::state::carried`]); refuses
    /// ([`Error::Unhealthy`]) when they do not by then. `None` when neither reports (a role
    /// that keeps no state); a new version that reports nothing within 60 s while the live
    /// one does (an older image) is let through, and the report says so.
    async fn state_gate(
        &mut self,
        m: &Manifest,
        swarm: &str,
        from: Option<&str>,
        to: &str,
    ) -> anyhow::Result<Option<String>> {
        use super::state::{carried, Carried, StateReport};
        let read = |v: String| {
            let ssm = self.aws.ssm.clone();
            let name = state_param(swarm, &m.role, &v);
            async move { Ok::<_, anyhow::Error>(ssm::get_string(&ssm, &name).await?.and_then(|t| StateReport::parse(&t))) }
        };
        let old = match from {
            Some(f) => read(f.to_string()).await?,
            None => None,
        };
        let start = tokio::time::Instant::now();
        let timeout = self.wait.timeout;
        let mut said = String::new();
        loop {
            let new = read(to.to_string()).await?;
            let why = match carried(&m.role, to, new.as_ref(), old.as_ref()) {
                Carried::Yes(check) => return Ok(Some(check)),
                Carried::Unreported(_) if old.is_none() => return Ok(None),
                Carried::Unreported(check) if start.elapsed() >= timeout.min(Duration::from_secs(60)) => {
                    return Ok(Some(format!("{check}; the live one reports, so the state carried is unknown")))
                }
                Carried::Unreported(why) | Carried::No(why) => why,
            };
            if start.elapsed() >= timeout {
                crate::refuse!(
                    Unhealthy,
                    "{why} after {}s, so traffic was not moved (its boxes report to {} every 30 s)",
                    timeout.as_secs(),
                    state_param(swarm, &m.role, to)
                );
            }
            if why != said {
                self.report.step(&format!("state: {why}; waiting"));
                said = why;
            }
            tokio::time::sleep(Duration::from_secs(5).min(timeout.saturating_sub(start.elapsed()))).await;
        }
    }

    /// Under the lock: reads the state, decides (from, to), records that intent in the lock.
    async fn switch_holding(
        &mut self,
        m: &Manifest,
        req: &SwitchRequest,
        listener: Option<&str>,
        prior: Option<&Held>,
        me: &mut Lock,
        description: &str,
    ) -> anyhow::Result<Switched> {
        let swarm = req.swarm.as_str();
        let versions = self.versions(m, Some(swarm)).await?;
        let weights: BTreeMap<String, i32> = versions.iter().map(|v| (v.version.clone(), v.forward)).collect();
        // A lock taken but killed before its intent was written (or unreadable) tells nothing.
        let intent = prior.and_then(Held::intent);
        let previous = match (&req.target, intent) {
            (Target::Rollback, None) => self.previous(&versions).await?,
            _ => None,
        };
        let (from, to) = choose(&req.target, intent, &weights, previous.as_ref().map(|k| k.version.as_str()))
            .map_err(|e| Error::NotFound(format!("cannot roll back {} in swarm {swarm}: {e}", m.role)))?;
        // Undoing an interrupted switch (going back to the version it came from): the
        // version it was going to never became the live one, so it does not become what
        // --rollback returns to either.
        let undo = intent.is_some_and(|p| p.from.is_some() && p.from == Some(to.as_str()));
        me.from = from.clone();
        me.to = Some(to.clone());
        let name = lock_param(swarm, &m.role);
        ssm::put_string(&self.aws.ssm, &name, &serde_json::to_string(me)?, description, true).await?;
        self.switch_locked(m, req, listener, &versions, from, to, undo).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn switch_locked(
        &mut self,
        m: &Manifest,
        req: &SwitchRequest,
        listener: Option<&str>,
        versions: &[VersionInfo],
        from: Option<String>,
        to: String,
        undo: bool,
    ) -> anyhow::Result<Switched> {
        let swarm = req.swarm.as_str();
        let started = tokio::time::Instant::now();
        let mut report = Report::default();
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
            v.stack.output(OUT_TARGET_GROUP).map(str::to_string).ok_or_else(|| {
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
            (Some(_), Some(_)) => shift_plan(&req.shift, new.weight, old_tg.is_some())
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
            let t = tokio::time::Instant::now();
            new = self.scale_version(m, swarm, &to, capacity).await?;
            report.add("scale", format!("{} {to} from {was} to {capacity} instance(s)", m.role), t, None);
        }
        self.report.in_flight(Some(interrupted("before moving any traffic")));
        let t = tokio::time::Instant::now();
        match self.gate(&new).await {
            Ok((check, looks)) => report.add(
                "gate",
                format!("{} {to}: every desired instance ready ({looks} look(s))", m.role),
                t,
                Some(check),
            ),
            Err(e) => {
                if capacity != was {
                    self.report.step(&format!("gate failed: returning {} {to} to {was} instance(s)", m.role));
                    self.scale_version(m, swarm, &to, was).await?;
                }
                return Err(e);
            }
        }

        // 1b. The swarm state the new version's boxes hold (brokers: what their bridge
        //     carried over), against the live version's, before anything moves.
        let t = tokio::time::Instant::now();
        match self.state_gate(m, swarm, from.as_deref(), &to).await {
            Ok(Some(check)) => {
                report.add("state", format!("{} {to}: the swarm state it holds", m.role), t, Some(check))
            }
            Ok(None) => {}
            Err(e) => {
                if capacity != was {
                    self.report.step(&format!("state check failed: returning {} {to} to {was} instance(s)", m.role));
                    self.scale_version(m, swarm, &to, was).await?;
                }
                return Err(e);
            }
        }

        // 2. Shift.
        let mut steps = Vec::new();
        match (listener, &new_tg) {
            (Some(listener), Some(new_tg)) => {
                for (i, pct) in plan.iter().enumerate() {
                    let t = tokio::time::Instant::now();
                    let targets = split(old_tg.as_deref(), new_tg, *pct);
                    self.forward_all(m, swarm, listener, &targets).await?;
                    self.report.in_flight(Some(interrupted(&format!("at {pct}%"))));
                    steps.push(*pct);
                    let rest = match (&from, *pct) {
                        (Some(f), p) if p < 100 => format!(", {f} {}%", 100 - p),
                        _ => String::new(),
                    };
                    self.report.step(&format!("step {}/{}: {} {to} {pct}%{rest}", i + 1, plan.len(), m.role));
                    report.add("step", format!("{} {to} {pct}%{rest}", m.role), t, None);
                    if *pct < 100 {
                        let t = tokio::time::Instant::now();
                        let held = self.hold_step(&new, req.bake).await?;
                        if let Ok(check) = &held {
                            report.add(
                                "bake",
                                format!("{} {to} at {pct}% for {}s", m.role, req.bake.as_secs()),
                                t,
                                Some(check.clone()),
                            );
                        }
                        if let Err(problems) = held {
                            // `shift_plan` makes steps below 100% only when there is an old version.
                            if let Some(back) = old_tg.as_deref() {
                                self.forward_all(m, swarm, listener, &[(back.to_string(), 1)]).await?;
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
                let t = tokio::time::Instant::now();
                let group = new.stack.output(OUT_ASG).unwrap_or_default().to_string();
                asg::set_tag(&self.aws.asg, &group, TAG_ACTIVE, "true").await?;
                self.report.step(&format!("{} {to} is now the active version", m.role));
                report.add("step", format!("{} {to} tagged {TAG_ACTIVE}=true", m.role), t, None);
                steps.push(100);
            }
        }

        // What is live, where the boxes can read it (a broker of another version moves its
        // clients to this one: roles/broker).
        let t = tokio::time::Instant::now();
        let live = live_param(swarm, &m.role);
        let about = format!("tyrell: the live {} version of swarm {swarm}", m.role);
        ssm::put_string(&self.aws.ssm, &live, &to, &about, true).await?;
        report.add("live", format!("{live} = {to}"), t, None);

        // The schedule goes with the active version: on the new one (its own, from its
        // stack), then off the old one, so nothing brings an inactive version back.
        let t = tokio::time::Instant::now();
        if let Some(what) = self.schedule_on(&new).await? {
            report.add("schedule", what, t, None);
        }
        if let Some(old) = &old {
            let t = tokio::time::Instant::now();
            if let Some(what) = self.schedule_off(old).await? {
                report.add("schedule", what, t, None);
            }
        }

        // 3. The old version: marked for --rollback, and scaled in when asked (always for
        //    roles without inbound traffic: two versions would do the same work twice).
        let mut retired = false;
        if let Some(old) = &old {
            let t = tokio::time::Instant::now();
            let mut did = Vec::new();
            let group = old.stack.output(OUT_ASG).unwrap_or_default().to_string();
            if listener.is_none() {
                asg::set_tag(&self.aws.asg, &group, TAG_ACTIVE, "false").await?;
                did.push(format!("tagged {TAG_ACTIVE}=false"));
            }
            // An undone switch's target was never the live version: --rollback keeps
            // returning to the version that was live before.
            if undo {
                did.push("not marked for --rollback (the switch to it was undone)".to_string());
            } else {
                asg::set_tag(&self.aws.asg, &group, TAG_INACTIVE_SINCE, &now_rfc3339()).await?;
                did.push(format!("tagged {TAG_INACTIVE_SINCE} (--rollback returns to it)"));
            }
            if req.retire || listener.is_none() {
                if old.desired > 0 {
                    self.report.step(&format!("scaling {} {} to 0 (kept for --rollback)", m.role, old.version));
                    self.scale_version(m, swarm, &old.version, 0).await?;
                    did.push(format!("scaled from {} to 0", old.desired));
                }
                retired = true;
            }
            report.add("old", format!("{} {}: {}", m.role, old.version, did.join(", ")), t, None);
        }
        report.seconds = secs(started.elapsed());
        Ok(Switched { role: m.role.clone(), swarm: swarm.into(), from, to, steps, retired, broke_lock: None, report })
    }
}
