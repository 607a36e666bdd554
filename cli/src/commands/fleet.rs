//! The verbs every role noun (`bees`, `routers`, ...) shares: one implementation for all.

use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{key_values, table, Printed};
use crate::engine::error::Error;
use crate::engine::fleet::{CreateVersion, ScheduleChoice, VersionInfo};
use crate::engine::library::Manifest;
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

fn rows(vs: &[VersionInfo]) -> Vec<Vec<String>> {
    vs.iter()
        .map(|v| {
            vec![
                v.swarm.clone(),
                v.version.clone(),
                v.ami.clone(),
                v.instance_type.clone(),
                format!("{} / {}", v.desired, v.in_service),
                v.created.clone(),
                if v.active {
                    format!("yes ({}%)", v.weight)
                } else if v.weight > 0 {
                    format!("{}%", v.weight)
                } else {
                    String::new()
                },
            ]
        })
        .collect()
}

fn version_json(v: &VersionInfo) -> serde_json::Value {
    serde_json::to_value(v).expect("serialise a version")
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
    Ok(match cmd {
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
                let mut pairs: Vec<(String, String)> =
                    vec![("stack".into(), plan.stack_name.clone()), ("version".into(), plan.version.clone())];
                pairs.extend(plan.parameters.iter().map(|(k, v)| (format!("parameter {k}"), v.clone())));
                pairs.extend(plan.tags.iter().map(|(k, v)| (format!("tag {k}"), v.clone())));
                let text = format!("{}\nuser data:\n{}", key_values(&pairs), plan.user_data);
                let mut j = serde_json::to_value(&plan)?;
                j["dry_run"] = json!(true);
                j["stack_name"] = json!(plan.stack_name);
                return Ok(Printed::new(j, text));
            }
            let v = e.create_version(&m, &plan).await?;
            e.report.step(&format!(
                "created {} version {} (stack {}, {} instance(s))",
                m.role, v.version, v.stack_name, v.desired
            ));
            let mut j = version_json(&v);
            j["stack_name"] = json!(v.stack_name);
            Printed::new(j, v.version.clone())
        }
        FleetCmd::List { stack } => {
            let vs = e.versions(&m, stack.as_deref()).await?;
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
            let text = if vs.is_empty() {
                format!("no {} versions (create one with: tyrell {} create -a AMI_ID SWARM)", m.role, m.noun)
            } else {
                table(&["SWARM", "VERSION", "AMI", "TYPE", "DESIRED / IN SERVICE", "CREATED", "ACTIVE"], &rows(&vs))
            };
            Printed::new(json!({ "role": m.role, "versions": vs.iter().map(version_json).collect::<Vec<_>>() }), text)
        }
        FleetCmd::Scale { stack, version, size } => {
            let v = e.scale_version(&m, &stack, &version, size).await?;
            Printed::new(version_json(&v), format!("{} {} now wants {} instance(s)", m.role, v.version, v.desired))
        }
        FleetCmd::Remove { stack, version, force } => {
            let v = e.remove_version(&m, &stack, &version, force).await?;
            Printed::new(
                json!({ "removed": v.stack_name, "version": v.version }),
                format!("removed {} {} (stack {})", m.role, v.version, v.stack_name),
            )
        }
        FleetCmd::Prune { stack, keep } => {
            let gone = e.prune(&m, &stack, keep).await?;
            let names: Vec<&str> = gone.iter().map(|v| v.version.as_str()).collect();
            let text = if names.is_empty() {
                format!("nothing to prune: at most {keep} inactive {} version(s)", m.role)
            } else {
                format!("removed {} {}", m.role, names.join(", "))
            };
            Printed::new(json!({ "removed": names }), text)
        }
    })
}
