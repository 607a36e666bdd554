//! `tyrell builds`: role AMIs baked by Packer — bake one, list them, remove one.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{key_values, table, Outcome, Printed};
use super::Global;
use crate::engine::builds::{Build, BuildPlan, BuildRequest};
use crate::engine::Engine;

const AFTER_HELP: &str = "\
Examples:
  tyrell builds create bee                       # build a bee AMI (packer build), prints its id
  tyrell builds create router --version v2 --ssh-cidr 203.0.113.7/32
  tyrell builds create bee --dry-run             # the Packer variables and command only
  tyrell builds --role bee                       # bee AMIs, newest first, and who runs them
  tyrell bees create -a latest swarm1            # deploy the newest bee build
  tyrell bees create -a latest:v2 swarm1         # ...or the bee build of version v2
  tyrell builds remove ami-0123456789abcdef0     # refused while a stack runs it

Run `builds create` inside the tyrell repository (it uses packer/tyrell.json) after
`cargo build --release -p swarm -p tyrell-worker`. Packer must be on PATH and takes its
credentials from the AWS chain, as tyrell does: none are written anywhere.";

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, after_help = AFTER_HELP)]
pub struct BuildsArgs {
    #[command(subcommand)]
    cmd: Option<BuildsCmd>,
    /// List only this role's builds
    #[arg(long)]
    role: Option<String>,
}

#[derive(Subcommand, Debug)]
enum BuildsCmd {
    /// Build a role's AMI with Packer (packer/tyrell.json) and tag it
    #[command(after_help = AFTER_HELP)]
    Create {
        /// The role: bee, broker, indexer, router, worker or metrics
        role: String,
        /// Version id (default: generated from the time, e.g. v261123101500)
        #[arg(long)]
        version: Option<String>,
        /// Name filter of the base image (default: the template's, Debian 12 amd64)
        #[arg(long, value_name = "PATTERN")]
        base_ami_filter: Option<String>,
        /// Owner of the base image: an account id or alias (default: Debian's account)
        #[arg(long, value_name = "OWNER")]
        base_ami_owner: Option<String>,
        /// Source of Packer's temporary SSH rule (default: the template's 0.0.0.0/0; give your address)
        #[arg(long, value_name = "CIDR")]
        ssh_cidr: Option<String>,
        /// Directory holding bee, indexer, router and tyrell-worker (default: target/release of the repository)
        #[arg(long, value_name = "DIR")]
        binaries_dir: Option<PathBuf>,
        /// Packer template (default: packer/tyrell.json of the repository around the working directory)
        #[arg(long, value_name = "PATH")]
        template: Option<PathBuf>,
        /// Print the Packer variables and command without running them
        #[arg(long)]
        dry_run: bool,
        /// Bake a local image instead (a Debian root filesystem for `tyrell local`, with the
        /// same packer/scripts), registered in the emulator with a real build's tags
        #[arg(long, conflicts_with_all = ["dry_run", "base_ami_filter", "base_ami_owner", "ssh_cidr", "template"])]
        local: bool,
    },
    /// List tyrell's AMIs, newest first (same as giving no subcommand)
    List {
        /// Only this role's builds
        #[arg(long)]
        role: Option<String>,
    },
    /// Deregister an AMI and delete its snapshots (refused while a stack runs it)
    Remove { ami: String },
}

/// `builds create`: the build, rendered as its AMI id.
#[derive(Serialize)]
#[serde(transparent)]
pub struct Built(pub Build);

impl Outcome for Built {
    fn render(&self) -> String {
        self.0.ami.clone()
    }
}

/// `builds create --local`: the image tyrell-local baked, rendered as its id.
#[derive(Serialize)]
pub struct BuiltLocally {
    pub ami: String,
    pub role: String,
    /// Always `true`.
    pub local: bool,
}

impl Outcome for BuiltLocally {
    fn render(&self) -> String {
        self.ami.clone()
    }
}

/// `builds create --dry-run`: the Packer run, as `key: value` lines.
#[derive(Serialize)]
pub struct Planned {
    #[serde(flatten)]
    pub plan: BuildPlan,
    /// Always `true`.
    pub dry_run: bool,
}

impl Outcome for Planned {
    fn render(&self) -> String {
        let mut pairs = vec![("template".to_string(), self.plan.template.clone())];
        pairs.extend(self.plan.variables.iter().map(|(k, v)| (format!("variable {k}"), v.clone())));
        pairs.push(("command".into(), self.plan.command_line()));
        key_values(&pairs)
    }
}

/// `builds` / `builds list`, newest first.
#[derive(Serialize)]
pub struct List {
    pub builds: Vec<Build>,
    #[serde(skip)]
    pub role: Option<String>,
}

impl Outcome for List {
    fn render(&self) -> String {
        if self.builds.is_empty() {
            return match &self.role {
                Some(r) => format!("no {r} builds (build one with: tyrell builds create {r})"),
                None => "no builds (build one with: tyrell builds create ROLE)".into(),
            };
        }
        let rows: Vec<Vec<String>> = self
            .builds
            .iter()
            .map(|b| {
                vec![
                    b.ami.clone(),
                    b.region.to_string(),
                    b.role.clone(),
                    b.version.clone(),
                    b.created.clone(),
                    b.name.clone(),
                    if b.in_use.is_empty() { String::new() } else { b.in_use.join(", ") },
                ]
            })
            .collect();
        table(&["AMI", "REGION", "ROLE", "VERSION", "CREATED", "NAME", "IN USE BY"], &rows)
    }
}

/// `builds remove`: the AMI id, its role and version.
#[derive(Serialize)]
pub struct Removed {
    pub removed: String,
    pub role: String,
    pub version: String,
}

impl Outcome for Removed {
    fn render(&self) -> String {
        format!("removed {} ({} {})", self.removed, self.role, self.version)
    }
}

pub async fn run(e: &mut Engine, global: &Global, a: BuildsArgs) -> anyhow::Result<Printed> {
    match a.cmd.unwrap_or(BuildsCmd::List { role: a.role }) {
        BuildsCmd::Create {
            role,
            version,
            base_ami_filter,
            base_ami_owner,
            ssh_cidr,
            binaries_dir,
            template,
            dry_run,
            local,
        } => {
            if local {
                // The bake is tyrell-local's; its stdout (the AMI id) is this command's result.
                let mut args = vec!["bake".to_string(), role.clone()];
                if let Some(d) = &binaries_dir {
                    args.extend(["--binaries".into(), d.display().to_string()]);
                }
                if let Some(v) = &version {
                    args.extend(["--version".into(), v.clone()]);
                }
                let ami = super::local::output(&args, &format!("the local bake of {role}"))?;
                e.report.step(&format!("baked a local {role} image: {ami}"));
                return Printed::of(&BuiltLocally { ami, role, local: true });
            }
            let req = BuildRequest {
                role,
                version,
                template,
                binaries_dir,
                base_ami_filter,
                base_ami_owner,
                ssh_cidr,
                profile: global.profile.clone(),
            };
            let plan = e.plan_build(&req).await?;
            if dry_run {
                return Printed::of(&Planned { plan, dry_run: true });
            }
            let b = e.run_build(&plan).await?;
            e.report.step(&format!("built {} {}: {} ({})", b.role, b.version, b.ami, b.name));
            Printed::of(&Built(b))
        }
        BuildsCmd::List { role } => Printed::of(&List { builds: e.builds(role.as_deref()).await?, role }),
        BuildsCmd::Remove { ami } => {
            let b = e.remove_build(&ami).await?;
            Printed::of(&Removed { removed: b.ami, role: b.role, version: b.version })
        }
    }
}
