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
//!
//! By concern: [`health`] (observations, gate and bake), [`plan`] (shift strategies, the
//! weights of each step, from/to), [`lock`] (the SSM lock), [`state`] (what the boxes
//! report of the swarm state they hold), [`switch`] (the driver). This
//! module shows a role's routing.

pub mod health;
pub mod lock;
pub mod plan;
pub mod state;
pub mod switch;

use serde::Serialize;

use super::error::Error;
use super::library::{Manifest, Via};
use super::model::{Region, VersionInfo, VersionKey};
use super::Engine;
use crate::aws::asg;
use crate::names::OUT_ASG;

pub use crate::names::TAG_INACTIVE_SINCE;
use health::{assess, leaving};
pub use lock::Held;
pub use plan::{Shift, Target};
pub use switch::SwitchRequest;

/// One version of a role as `tyrell traffic` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionTraffic {
    pub version: String,
    /// Whole percent; the versions' weights add up to 100, any traffic shows as at least 1.
    pub weight: i32,
    /// The share exactly as the listener sets it, percent with one decimal (999/1: 99.9
    /// and 0.1); the versions' shares add up to 100.
    pub share: f64,
    /// The raw weight in the listener's default action (`null` for roles without one).
    pub listener_weight: Option<i32>,
    /// The listener rules that forward to it, e.g. `rule 10: path /legacy/*`.
    pub rules: Vec<String>,
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
    /// The region of the swarm's stacks (and its lock).
    pub region: Region,
    pub via: Via,
    pub active: Option<String>,
    pub versions: Vec<VersionTraffic>,
    pub lock: Option<Held>,
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

    /// The routing of a role in a swarm: each version's weight and health, and the lock.
    pub async fn traffic(&self, m: &Manifest, swarm: &str) -> anyhow::Result<TrafficState> {
        self.fleet_home(swarm, &m.security_group_output).await?;
        let mut versions = Vec::new();
        for v in self.versions(m, Some(swarm)).await? {
            let (o, _) = self.observe(&v).await?;
            let a = assess(&o);
            let total = o.instances.iter().filter(|i| !leaving(&i.lifecycle)).count();
            versions.push(VersionTraffic {
                version: v.version.clone(),
                weight: v.weight,
                share: f64::from(v.share_tenths) / 10.0,
                listener_weight: m.traffic.listener.is_some().then_some(v.forward),
                rules: v.rules.clone(),
                desired: v.desired,
                healthy: a.ready,
                total,
                info: v,
            });
        }
        let active = versions.iter().filter(|v| v.info.active).max_by_key(|v| v.weight).map(|v| v.version.clone());
        let lock = self.read_lock(swarm, &m.role).await?;
        Ok(TrafficState {
            role: m.role.clone(),
            swarm: swarm.to_string(),
            region: self.region().clone(),
            via: m.traffic.via,
            active,
            versions,
            lock,
        })
    }

    /// The version `--rollback` returns to: the one that stopped being active most recently
    /// (tag `tyrell:inactive-since`), else the newest version older than the active one.
    pub async fn previous(&self, versions: &[VersionInfo]) -> anyhow::Result<Option<VersionKey>> {
        let mut best: Option<(String, VersionKey)> = None;
        for v in versions.iter().filter(|v| v.forward == 0) {
            let Some(name) = v.stack.output(OUT_ASG) else { continue };
            if let Some(g) = asg::group(&self.aws.asg, name).await? {
                if let Some(t) = g.tags.get(TAG_INACTIVE_SINCE) {
                    if best.as_ref().is_none_or(|(b, _)| t > b) {
                        best = Some((t.clone(), v.key()));
                    }
                }
            }
        }
        if let Some((_, v)) = best {
            return Ok(Some(v));
        }
        let active = versions.iter().position(|v| v.active);
        Ok(active.and_then(|i| versions[..i].last()).map(VersionInfo::key))
    }
}
