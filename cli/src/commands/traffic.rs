//! `tyrell traffic`: show a role's routing, or move its live traffic to another version.

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::output::{table, Outcome, Printed};
use super::{duration_in, MAX_WAIT};
use crate::engine::library::Via;
use crate::engine::traffic::switch::Switched;
use crate::engine::traffic::{Held, Shift, SwitchRequest, Target, TrafficState};
use crate::engine::values::{SwarmName, Version};
use crate::engine::Engine;

const AFTER_HELP: &str = "\
Examples:
  tyrell traffic elb swarm1                              # each router version: weight, healthy/total
  tyrell traffic elb swarm1 --router v261123101500       # gate, then 100% to it
  tyrell traffic elb swarm1 --router v261123101500 --canary 10,50 --bake 300
  tyrell traffic elb swarm1 --router v261123101500 --shift linear:25   # 25, 50, 75, 100%
  tyrell traffic elb swarm1 --rollback                   # back to the version before
  tyrell traffic elb swarm1 --router v261123101500 --retire   # and scale the old one to 0
  tyrell traffic brokers swarm1 --version v261123101500  # behind the NLB: one step
  tyrell traffic workers swarm1 --version v261123101500  # no inbound traffic: tag moves
  tyrell --timeout 10m traffic bees swarm1 --version v261123101500

A switch first brings the new version to the live version's capacity (or -s N) and waits,
up to --timeout, until every desired instance is InService and Healthy in its Auto Scaling
group and healthy in its target group; if not, nothing moves and the failing instances are
named. Traffic then moves by --shift: all at once (the default), in the --canary steps, or
in equal linear steps (ALB only). Weighted steps hold for --bake while watching health, and go back to the old version
if it drops. The old version keeps running (ALB/NLB roles) for --rollback unless --retire;
roles without inbound traffic always scale the old version to 0 (kept for --rollback).

One switch per swarm and role at a time: a lock in SSM (/tyrell/SWARM/locks/ROLE) names its
holder. A lock whose process died on this host is taken over; re-running an interrupted
switch finishes it (or --rollback undoes it). --force-unlock breaks anyone's lock.";

#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct TrafficArgs {
    /// Which role (the help lists the role nouns and `[traffic] aliases` of roles/*/role.toml)
    role: String,
    /// The swarm (base stack)
    stack: SwarmName,
    /// Switch to this version
    #[arg(long, visible_alias = "router", value_name = "VERSION", conflicts_with = "rollback")]
    version: Option<Version>,
    /// Switch back to the version that was active before
    #[arg(long)]
    rollback: bool,
    /// Instances for the new version (default: as many as the live version has)
    #[arg(short = 's', long = "size", value_name = "N")]
    size: Option<i32>,
    /// Shift in weighted steps (percent to the new version), e.g. 10,50 (ALB only); the
    /// same as --shift steps:10,50
    #[arg(long, value_delimiter = ',', value_name = "PCT,PCT", value_parser = clap::value_parser!(u8).range(1..=99), conflicts_with = "shift")]
    canary: Vec<u8>,
    /// How traffic moves once the gate passes (the help lists `plan::SHIFT_FORMS`)
    #[arg(long, value_name = "STRATEGY", value_parser = clap::builder::ValueParser::new(parse_shift), default_value = "all-at-once")]
    shift: Shift,
    /// How long to hold each canary step while watching health, e.g. 300, 5m (0: no hold)
    #[arg(long, value_parser = parse_bake, default_value = "60", value_name = "DURATION")]
    bake: Duration,
    /// After a successful switch, scale the old version to 0 instances
    #[arg(long)]
    retire: bool,
    /// Break the role's switch lock, whoever holds it (then switch, if a version is given)
    #[arg(long)]
    force_unlock: bool,
}

/// `--shift`: a [`Shift`] strategy.
fn parse_shift(s: &str) -> Result<Shift, String> {
    s.parse()
}

/// `--bake`: 0 (no hold) to [`MAX_WAIT`].
fn parse_bake(s: &str) -> Result<Duration, String> {
    duration_in("--bake", s, Duration::ZERO, MAX_WAIT)
}

/// `traffic ROLE SWARM`: each version's weight and health, the active one, the lock.
#[derive(Serialize)]
#[serde(transparent)]
pub struct Shown {
    pub state: TrafficState,
    /// The role's CLI noun, for the hint when there are no versions.
    #[serde(skip)]
    pub noun: String,
}

impl Outcome for Shown {
    fn render(&self) -> String {
        let s = &self.state;
        let rows: Vec<Vec<String>> = s
            .versions
            .iter()
            .map(|v| {
                vec![
                    v.version.clone(),
                    match v.listener_weight {
                        Some(w) => format!("{w} ({:.1}%)", v.share),
                        None => format!("{:.1}%", v.share),
                    },
                    format!("{}/{}", v.healthy, v.total),
                    v.desired.to_string(),
                    if s.active.as_ref() == Some(&v.version) { "yes".into() } else { String::new() },
                    v.rules.join(", "),
                ]
            })
            .collect();
        let how = match s.via {
            Via::Alb => "ALB listener weights",
            Via::Nlb => "NLB listener",
            Via::None => "tag tyrell:active on the Auto Scaling group",
        };
        let mut text = if rows.is_empty() {
            format!(
                "swarm {} has no {} versions (create one with: tyrell {} create -a AMI_ID {})",
                s.swarm, s.role, self.noun, s.swarm
            )
        } else {
            format!(
                "{} traffic in swarm {} ({how}):\n{}",
                s.role,
                s.swarm,
                table(&["VERSION", "WEIGHT", "HEALTHY/TOTAL", "DESIRED", "ACTIVE", "RULES"], &rows)
            )
        };
        if let Some(l) = &s.lock {
            text.push_str(&format!("\nlocked: {l}\n"));
        }
        text
    }
}

/// `traffic ROLE SWARM --force-unlock` alone: the lock it broke, if any.
#[derive(Serialize)]
pub struct Unlocked {
    pub role: String,
    pub swarm: SwarmName,
    pub broke_lock: Option<Held>,
}

impl Outcome for Unlocked {
    fn render(&self) -> String {
        match &self.broke_lock {
            Some(l) => format!("broke the {} traffic lock of swarm {}: {l}", self.role, self.swarm),
            None => format!("the {} traffic of swarm {} was not locked", self.role, self.swarm),
        }
    }
}

/// A switch (`--version V` or `--rollback`): the now active version and what was done.
#[derive(Serialize)]
pub struct Switch {
    pub active: String,
    pub switch: Switched,
}

impl Outcome for Switch {
    fn render(&self) -> String {
        let done = &self.switch;
        let mut text = format!(
            "{} in swarm {}: {} is active (was {})",
            done.role,
            done.swarm,
            done.to,
            done.from.as_deref().unwrap_or("none")
        );
        if done.retired {
            if let Some(f) = &done.from {
                text.push_str(&format!("; {f} scaled to 0"));
            }
        }
        let rows: Vec<Vec<String>> = done
            .report
            .phases
            .iter()
            .map(|p| {
                vec![
                    p.phase.to_string(),
                    p.what.clone(),
                    format!("{:.1}s", p.seconds),
                    p.check.clone().unwrap_or_default(),
                ]
            })
            .collect();
        text.push_str(&format!(
            "\nrelease report ({:.1}s in all):\n{}",
            done.report.seconds,
            table(&["PHASE", "WHAT", "TOOK", "CHECK"], &rows)
        ));
        text
    }
}

pub async fn run(e: &mut Engine, a: TrafficArgs) -> anyhow::Result<Printed> {
    let m = e.traffic_role(&a.role)?;
    let target = match (a.version, a.rollback) {
        (Some(v), _) => Some(Target::Version(v.to_string())),
        (None, true) => Some(Target::Rollback),
        (None, false) => None,
    };
    let Some(target) = target else {
        if a.force_unlock {
            let broke_lock = e.unlock(&m, &a.stack).await?;
            return Printed::of(&Unlocked { role: m.role, swarm: a.stack, broke_lock });
        }
        if a.size.is_some() || !a.canary.is_empty() || a.shift != Shift::AllAtOnce || a.retire {
            crate::refuse!(
                Invalid,
                "-s, --canary, --shift and --retire go with a switch: add --version VERSION or --rollback"
            );
        }
        return Printed::of(&Shown { state: e.traffic(&m, &a.stack).await?, noun: m.noun });
    };
    let req = SwitchRequest {
        swarm: a.stack,
        target,
        size: a.size,
        shift: if a.canary.is_empty() { a.shift } else { Shift::Steps(a.canary) },
        bake: a.bake,
        retire: a.retire,
        force_unlock: a.force_unlock,
    };
    let done = e.switch(&m, &req).await?;
    Printed::of(&Switch { active: done.to.clone(), switch: done })
}
