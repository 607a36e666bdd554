//! The verbs every role noun (`bees`, `routers`, ...) shares: one implementation for all.

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{key_values, table, Outcome, Printed};
use crate::engine::error::Error;
use crate::engine::fleet::{share, CreateVersion, Plan, Pruning, ScheduleChoice};
use crate::engine::library::Manifest;
use crate::engine::model::VersionInfo;
use crate::engine::values::{AmiRef, SwarmName, Version};
use crate::engine::Engine;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct FleetArgs {
    #[command(subcommand)]
    cmd: Option<FleetCmd>,
    /// List only this swarm's versions
    stack: Option<String>,
    /// Anything after the swarm: a mistyped command (`tyrell bees diff swarm1`).
    #[arg(hide = true, num_args = 0.., allow_hyphen_values = true)]
    rest: Vec<String>,
}

/// The verbs every role noun takes, for the error about a mistyped one.
const VERBS: &str = "create, list, scale, remove, prune";

#[derive(Subcommand, Debug)]
enum FleetCmd {
    /// Create a new version (stack SWARM-ROLE-VERSION): launch template + Auto Scaling group
    Create {
        /// The swarm (base stack) to deploy into
        stack: SwarmName,
        /// The AMI to run: an id, `latest` (the newest build of the role, see `tyrell builds`) or `latest:VERSION`
        #[arg(short = 'a', long = "ami")]
        ami: AmiRef,
        /// Instance type (default: the role's)
        #[arg(short = 't', long = "type")]
        instance_type: Option<String>,
        /// Number of instances, 0-500 (default: the role's)
        #[arg(short = 's', long = "size")]
        size: Option<i32>,
        /// Version id (default: generated from the time, e.g. v261123101500)
        #[arg(long)]
        version: Option<Version>,
        /// Scheduled scaling: cron (5 fields, UTC) that scales the version up to --scale-up-size,
        /// replacing the role's default schedule; needs --scale-down
        #[arg(long, value_name = "CRON", conflicts_with_all = ["no_schedule", "schedule"], requires = "scale_down")]
        scale_up: Option<String>,
        /// Cron (5 fields, UTC) that scales the version back to 0
        #[arg(long, value_name = "CRON", conflicts_with_all = ["no_schedule", "schedule"], requires = "scale_up")]
        scale_down: Option<String>,
        /// Instances the --scale-up schedule asks for (default 1)
        #[arg(long, value_name = "N", requires = "scale_up", default_value_t = 1)]
        scale_up_size: i32,
        /// The three schedule settings in one: "UP_CRON,DOWN_CRON,SIZE" (cron fields without
        /// commas; use --scale-up/--scale-down for cron lists such as "1,31 * * * *")
        #[arg(long, value_name = "UP,DOWN,SIZE", conflicts_with = "no_schedule")]
        schedule: Option<String>,
        /// No scheduled scaling, even if the role has a default
        #[arg(long)]
        no_schedule: bool,
        /// Validate and print the plan (parameters, tags, user data) without creating anything
        #[arg(long)]
        dry_run: bool,
    },
    /// List versions (same as giving no subcommand)
    List { stack: Option<String> },
    /// Set a version's number of instances
    Scale {
        stack: SwarmName,
        version: Version,
        /// Number of instances, 0-500
        size: i32,
    },
    /// Remove a version (the active one only with --force)
    Remove {
        stack: SwarmName,
        version: Version,
        /// Remove it even if it is the active version
        #[arg(long)]
        force: bool,
    },
    /// Remove the oldest inactive versions, keeping the newest N of them and the active one
    Prune {
        stack: SwarmName,
        #[arg(long, default_value_t = 2)]
        keep: usize,
    },
}

pub fn after_help(m: &Manifest) -> String {
    format!(
        "Examples:\n  tyrell {n} create -a ami-0123abcd -s 2 swarm1     # prints the new version\n  tyrell {n} swarm1                                # versions, sizes, which is active\n  tyrell {n} scale swarm1 VERSION 4\n  tyrell {n} remove swarm1 VERSION\n  tyrell {n} prune swarm1 --keep 2\n\nDefaults for {r}: type {t}, size {s}.",
        n = m.noun,
        r = m.role,
        t = m.instance_type,
        s = m.size
    )
}

fn schedule_choice(
    schedule: Option<String>,
    up_down: Option<(String, String, i32)>,
    off: bool,
) -> anyhow::Result<ScheduleChoice> {
    if off {
        return Ok(ScheduleChoice::Off);
    }
    if let Some((up, down, size)) = up_down {
        return Ok(ScheduleChoice::Custom { up, down, size });
    }
    let Some(s) = schedule else { return Ok(ScheduleChoice::Default) };
    if s.split(',').count() > 3 {
        crate::refuse!(
            Invalid,
            "invalid --schedule {s:?}: it holds more than three comma-separated parts, so a cron list cannot be told from the separators; give --scale-up CRON --scale-down CRON --scale-up-size N instead"
        )
    }
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [up, down, size] = parts.as_slice() else {
        crate::refuse!(
            Invalid,
            "invalid --schedule {s:?}: expected \"UP_CRON,DOWN_CRON,SIZE\", e.g. \"0 * * * *,30 * * * *,2\""
        )
    };
    let size: i32 =
        size.parse().map_err(|_| Error::Invalid(format!("invalid --schedule size {size:?}: expected a number")))?;
    Ok(ScheduleChoice::Custom { up: up.to_string(), down: down.to_string(), size })
}

/// `ROLE create`: the new version, rendered as its id.
#[derive(Serialize)]
#[serde(transparent)]
pub struct Created(pub VersionInfo);

impl Outcome for Created {
    fn render(&self) -> String {
        self.0.version.clone()
    }
}

/// `ROLE create --dry-run`: the plan (parameters, tags, user data), nothing created.
#[derive(Serialize)]
pub struct Planned {
    #[serde(flatten)]
    pub plan: Plan,
    /// Always `true`.
    pub dry_run: bool,
}

impl Outcome for Planned {
    fn render(&self) -> String {
        let p = &self.plan;
        let mut pairs: Vec<(String, String)> =
            vec![("stack".into(), p.stack_name.clone()), ("version".into(), p.version.clone())];
        pairs.extend(p.parameters.iter().map(|(k, v)| (format!("parameter {k}"), v.clone())));
        pairs.extend(p.tags.iter().map(|(k, v)| (format!("tag {k}"), v.clone())));
        format!("{}\nuser data:\n{}", key_values(&pairs), p.user_data)
    }
}

/// `ROLE` / `ROLE list [SWARM]`: the role's versions, by swarm, oldest first.
#[derive(Serialize)]
pub struct List {
    pub role: String,
    pub versions: Vec<VersionInfo>,
    #[serde(skip)]
    pub noun: String,
}

impl Outcome for List {
    fn render(&self) -> String {
        if self.versions.is_empty() {
            return format!("no {} versions (create one with: tyrell {} create -a AMI_ID SWARM)", self.role, self.noun);
        }
        let rows: Vec<Vec<String>> = self
            .versions
            .iter()
            .map(|v| {
                vec![
                    v.swarm.clone(),
                    v.region.to_string(),
                    v.version.clone(),
                    v.ami.clone(),
                    v.instance_type.clone(),
                    format!("{} / {}", v.desired, v.in_service),
                    v.created.clone(),
                    if v.active {
                        format!("yes ({}%)", share(v.share_tenths))
                    } else if v.forward > 0 {
                        format!("{}%", share(v.share_tenths))
                    } else if !v.rules.is_empty() {
                        format!("by {}", v.rules.join(", "))
                    } else {
                        String::new()
                    },
                ]
            })
            .collect();
        table(&["SWARM", "REGION", "VERSION", "AMI", "TYPE", "DESIRED / IN SERVICE", "CREATED", "ACTIVE"], &rows)
    }
}

/// `ROLE scale`: the version at its new size.
#[derive(Serialize)]
#[serde(transparent)]
pub struct Scaled(pub VersionInfo);

impl Outcome for Scaled {
    fn render(&self) -> String {
        format!("{} {} now wants {} instance(s)", self.0.role, self.0.version, self.0.desired)
    }
}

/// `ROLE remove`: the removed version's stack and id.
#[derive(Serialize)]
pub struct Removed {
    /// The stack name.
    pub removed: String,
    pub version: String,
    #[serde(skip)]
    pub role: String,
}

impl Outcome for Removed {
    fn render(&self) -> String {
        format!("removed {} {} (stack {})", self.role, self.version, self.removed)
    }
}

/// `ROLE prune`: the versions removed (oldest first), and those kept on purpose with why.
#[derive(Serialize)]
pub struct Pruned {
    #[serde(flatten)]
    pub done: Pruning,
    #[serde(skip)]
    pub role: String,
    #[serde(skip)]
    pub keep: usize,
}

impl Outcome for Pruned {
    fn render(&self) -> String {
        let mut text = if self.done.removed.is_empty() {
            format!("nothing to prune: at most {} inactive {} version(s)", self.keep, self.role)
        } else {
            format!("removed {} {}", self.role, self.done.removed.join(", "))
        };
        for k in &self.done.kept {
            text.push_str(&format!("\nkept {} {}: {}", self.role, k.version, k.reason));
        }
        text
    }
}

pub async fn run(e: &mut Engine, role: &str, a: FleetArgs) -> anyhow::Result<Printed> {
    let m = e.manifest(role)?;
    if !a.rest.is_empty() {
        let word = a.stack.as_deref().unwrap_or_default();
        crate::refuse!(
            Invalid,
            "unknown {} command {word:?}: use one of {VERBS} (tyrell {} --help), or `tyrell {} SWARM` to list a swarm's versions",
            m.noun,
            m.noun,
            m.noun
        );
    }
    let cmd = a.cmd.unwrap_or(FleetCmd::List { stack: a.stack });
    match cmd {
        FleetCmd::Create {
            stack,
            ami,
            instance_type,
            size,
            version,
            scale_up,
            scale_down,
            scale_up_size,
            schedule,
            no_schedule,
            dry_run,
        } => {
            let up_down = match (scale_up, scale_down) {
                (Some(u), Some(d)) => Some((u, d, scale_up_size)),
                _ => None,
            };
            let req = CreateVersion {
                swarm: stack,
                ami,
                instance_type,
                size,
                version,
                schedule: schedule_choice(schedule, up_down, no_schedule)?,
            };
            let plan = e.plan_version(&m, &req).await?;
            if dry_run {
                return Printed::of(&Planned { plan, dry_run: true });
            }
            let v = e.create_version(&m, &plan).await?;
            e.report.step(&format!(
                "created {} version {} (stack {}, {} instance(s))",
                m.role, v.version, v.stack_name, v.desired
            ));
            Printed::of(&Created(v))
        }
        FleetCmd::List { stack } => {
            // Every region: this one's, and each bee region of the swarms homed here.
            let vs = e.versions_everywhere(&m, stack.as_deref()).await?;
            // `tyrell bees diff`: a mistyped verb reads as a swarm name. Only an empty
            // listing needs the extra look at the base stacks to say so.
            if let Some(w) = stack.as_ref().filter(|_| vs.is_empty()) {
                if e.bases().await?.iter().all(|b| &b.name != w) {
                    crate::refuse!(
                        NotFound,
                        "there is no swarm (base stack) named {w:?}; {} commands are {VERBS} (tyrell {} --help)",
                        m.noun,
                        m.noun
                    );
                }
            }
            Printed::of(&List { role: m.role, versions: vs, noun: m.noun })
        }
        FleetCmd::Scale { stack, version, size } => {
            Printed::of(&Scaled(e.scale_version(&m, &stack, &version, size).await?))
        }
        FleetCmd::Remove { stack, version, force } => {
            let v = e.remove_version(&m, &stack, &version, force).await?;
            Printed::of(&Removed { removed: v.stack_name, version: v.version, role: m.role })
        }
        FleetCmd::Prune { stack, keep } => {
            Printed::of(&Pruned { done: e.prune(&m, &stack, keep).await?, role: m.role, keep })
        }
    }
}
