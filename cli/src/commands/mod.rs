//! The command line: one module per noun. Parses intent, calls the engine, prints. No
//! SDK types here.

pub mod builds;
pub mod fleet;
pub mod local;
pub mod metrics;
pub mod network;
pub mod output;
pub mod plan;
pub mod roles;
pub mod stacks;
pub mod traffic;

use std::time::Duration;

use clap::{Args, FromArgMatches, Parser, Subcommand};

use crate::aws::cfn::WaitOptions;
use crate::aws::{Clouds, Target};
use crate::engine::library::Library;
use crate::engine::Engine;
use output::{Format, InFlight, Printed, StderrReporter};

const AFTER_HELP: &str = "\
A swarm, start to finish:
  tyrell network create swarm-net                  # a VPC; prints its vpc id
  tyrell stacks create -v vpc-0abc1234 swarm1      # the swarm's base stack
  tyrell brokers create -a latest swarm1           # a version of each role (prints it);
  tyrell routers create -a latest -s 2 swarm1      #   -a takes an AMI id, latest or latest:V
  tyrell bees create -a latest -s 5 swarm1
  tyrell indexers create -a latest swarm1
  tyrell workers create -a latest swarm1
  tyrell traffic brokers swarm1 --version VERSION  # put the broker behind the NLB
  tyrell traffic elb swarm1 --router VERSION       # put the routers behind the ALB
                                                   #   (until then it answers 503)
  tyrell stacks describe swarm1                    # URL, broker, queue, secrets
  tyrell routers create -a latest swarm1           # a release: a new version, then
  tyrell traffic elb swarm1 --router NEW --canary 10,50 --bake 300
  tyrell traffic elb swarm1 --rollback             # if it misbehaves
  tyrell stacks remove swarm1 --all                # everything, versions first
                                                   #   (refused while the archive holds data)

The same swarm from one file (docs/PLAN.md):
  tyrell plan swarm1.toml                          # what would change; changes nothing
  tyrell up swarm1.toml                            # make it so (new versions, gated switches)
  tyrell down swarm1.toml                          # remove it

Encrypted by default: MQTT is TLS on 8883 (the brokers' own CA, or the NLB with
--broker-certificate-arn), Grafana HTTPS; the ALB is HTTP until --certificate-arn (a loud
warning says so). docs/MULTI-REGION.md 8.

AWS credentials, region and endpoint come from the standard AWS chain (AWS_PROFILE,
AWS_REGION, AWS_ENDPOINT_URL, SSO, instance roles); the global options override them.
Results go to stdout (--output json for scripts: shapes in docs/JSON.md); progress goes to
stderr.";

#[derive(Parser, Debug)]
#[command(name = "tyrell", version, about = "Deploy and operate a ping swarm on AWS with blue-green releases", after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(flatten)]
    pub verbose: Verbose,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// AWS region (default: the AWS chain, e.g. AWS_REGION or your profile's region)
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// AWS profile from ~/.aws/config (default: AWS_PROFILE or "default")
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// Send every AWS call to this endpoint, e.g. a local emulator (default: AWS_ENDPOINT_URL)
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Result format on stdout
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Longest wait for any one AWS operation, e.g. 900, 15m, 1h
    #[arg(long, global = true, value_parser = parse_duration, default_value = "30m", value_name = "DURATION")]
    pub timeout: Duration,
    /// More logging on stderr (info and AWS call count; twice: debug; three times: trace)
    #[arg(long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `-v` before the command: short for --verbose. (After the command it cannot be global:
/// `stacks create -v` and `metrics create -v` take the VPC id.)
#[derive(Args, Debug, Clone)]
pub struct Verbose {
    /// More logging on stderr, as --verbose; give it before the command: tyrell -v stacks ...
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    pub v: u8,
}

/// The longest `--timeout` or `--bake`: one day. Nothing tyrell waits for takes longer
/// (CloudFormation's own stack timeout is counted in minutes); a bigger number is a typo.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Parses a duration in tyrell's one grammar ([`common::duration`]: `90`, `90s`, `1.5s`,
/// `250ms`, `15m`, `1h`) into `min..=max`; `what` names the flag in the error, which is one
/// sentence: the grammar's complaint, or the range.
pub fn duration_in(what: &str, s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    match common::duration::parse(s) {
        Ok(d) if d >= min && d <= max => Ok(d),
        Ok(_) => Err(format!(
            "{what} {s} is out of range: give {} to {}",
            common::duration::format(min),
            common::duration::format(max)
        )),
        Err(e) => Err(format!("invalid {what}: {e}")),
    }
}

/// `--timeout`: `90`, `90s`, `15m`, `1h` ([`duration_in`]); 1 second to [`MAX_WAIT`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duration_in("--timeout", s, Duration::from_secs(1), MAX_WAIT)
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Networks: a VPC with public and private subnets (lists them without a subcommand)
    Network(network::NetworkArgs),
    /// Base stacks: the static resources of a swarm (lists them without a subcommand)
    Stacks(stacks::StacksArgs),
    /// Metrics boxes: InfluxDB + Grafana, one per VPC (lists them without a subcommand)
    Metrics(metrics::MetricsArgs),
    /// The role definitions tyrell deploys, and their rendered cloud-init
    Roles(roles::RolesArgs),
    /// Blue-green traffic: show which version of a role is live, or switch, canary, roll back
    Traffic(traffic::TrafficArgs),
    /// Role AMIs baked by Packer: create, list, remove (lists them without a subcommand)
    Builds(builds::BuildsArgs),
    /// A local cloud whose boxes really boot: up, status, down (runs tyrell-local)
    Local(local::LocalArgs),
    /// What `up` would change to make AWS match a plan file (changes nothing)
    Plan(plan::PlanArgs),
    /// Make AWS match a plan file: networks, metrics, base stack, role versions, gated switches
    Up(plan::UpArgs),
    /// Remove what a plan file made (refused while the swarm holds data, unless told)
    Down(plan::DownArgs),
}

/// What to run: a static command, or a role noun (`bees`, `routers`, ...).
pub enum Invocation {
    Static(Command),
    Fleet(String, fleet::FleetArgs),
}

/// Builds the full command line: the static nouns, plus one noun per role manifest.
pub fn command(lib: &Library) -> clap::Command {
    // `--help` (not `-h`) adds the exit codes, generated from the classes themselves.
    let mut cmd = <Cli as clap::CommandFactory>::command()
        .after_long_help(format!("{AFTER_HELP}\n\n{}", crate::engine::error::exit_codes_help().trim_end()));
    for m in lib.roles() {
        let sub = clap::Command::new(m.noun.clone())
            .about(format!("{} (lists versions without a subcommand)", m.about))
            .after_help(fleet::after_help(m));
        cmd = cmd.subcommand(<fleet::FleetArgs as Args>::augment_args(sub));
    }
    // The role names and shift strategies `traffic` takes come from the role manifests and
    // the `Shift` strategy itself, never a hand-written list.
    let aliases: Vec<String> = lib
        .roles()
        .iter()
        .flat_map(|m| m.traffic.aliases.iter().map(move |a| format!("{a} (the {})", m.noun)))
        .collect();
    let nouns: Vec<&str> = lib.roles().iter().map(|m| m.noun.as_str()).collect();
    let role_help = match aliases.is_empty() {
        true => format!("Which role: a role noun: {}", nouns.join(", ")),
        false => format!("Which role: {}, or a role noun: {}", aliases.join(", "), nouns.join(", ")),
    };
    let shift_help = format!(
        "How traffic moves once the gate passes: {} (weighted steps: ALB only)",
        crate::engine::traffic::plan::SHIFT_FORMS
    );
    // `mut_args` edits in place: `mut_arg` would move a positional behind the others.
    cmd.mut_subcommand("traffic", |t| {
        t.mut_args(|a| match a.get_id().as_str() {
            "role" => a.help(role_help.clone()),
            "shift" => a.help(shift_help.clone()),
            _ => a,
        })
    })
}

pub fn parse(lib: &Library, matches: &clap::ArgMatches) -> Result<(Global, Invocation), clap::Error> {
    let mut global = Global::from_arg_matches(matches)?;
    global.verbose += Verbose::from_arg_matches(matches)?.v;
    if let Some((name, sub)) = matches.subcommand() {
        if let Some(m) = lib.roles().iter().find(|m| m.noun == name) {
            return Ok((global, Invocation::Fleet(m.role.clone(), fleet::FleetArgs::from_arg_matches(sub)?)));
        }
    }
    let cli = Cli::from_arg_matches(matches)?;
    Ok((global, Invocation::Static(cli.command)))
}

/// Connects to AWS (lazily, per command: `roles` needs no AWS at all).
pub async fn engine(global: &Global, lib: Library, in_flight: InFlight) -> anyhow::Result<Engine> {
    let clouds = Clouds::connect(&Target {
        region: global.region.clone(),
        profile: global.profile.clone(),
        endpoint_url: global.endpoint_url.clone(),
    })
    .await?;
    let home = clouds.home().clone();
    Ok(Engine::new(
        &clouds,
        &home,
        lib,
        WaitOptions::with_timeout(global.timeout),
        Box::new(StderrReporter::new(in_flight)),
    ))
}

/// Runs one command; its reporter keeps what AWS is doing in `in_flight` (for `main`'s
/// Ctrl-C summary). Returns what to print and how many AWS calls it made.
pub async fn run(
    global: &Global,
    lib: Library,
    inv: Invocation,
    in_flight: InFlight,
) -> anyhow::Result<(Printed, Option<crate::aws::Calls>)> {
    let inv = match inv {
        Invocation::Static(Command::Roles(r)) => return Ok((roles::run(&lib, r)?, None)),
        Invocation::Static(Command::Plan(a)) => {
            return plan_command(global, lib, in_flight, plan::PlanCommand::Plan(a)).await
        }
        Invocation::Static(Command::Up(a)) => {
            return plan_command(global, lib, in_flight, plan::PlanCommand::Up(a)).await
        }
        Invocation::Static(Command::Down(a)) => {
            return plan_command(global, lib, in_flight, plan::PlanCommand::Down(a)).await
        }
        other => other,
    };
    let mut e = engine(global, lib, in_flight).await?;
    let printed = match inv {
        Invocation::Static(Command::Network(a)) => network::run(&mut e, a).await?,
        Invocation::Static(Command::Stacks(a)) => stacks::run(&mut e, a).await?,
        Invocation::Static(Command::Metrics(a)) => metrics::run(&mut e, a).await?,
        Invocation::Static(Command::Builds(a)) => builds::run(&mut e, global, a).await?,
        Invocation::Static(Command::Traffic(a)) => traffic::run(&mut e, a).await?,
        Invocation::Static(
            Command::Roles(_) | Command::Local(_) | Command::Plan(_) | Command::Up(_) | Command::Down(_),
        ) => unreachable!("handled above"),
        Invocation::Fleet(role, a) => fleet::run(&mut e, &role, a).await?,
    };
    Ok((printed, Some(e.aws.calls())))
}

/// `plan`, `up`, `down`: engines per region of the plan file ([`plan::run`]).
async fn plan_command(
    global: &Global,
    lib: Library,
    in_flight: InFlight,
    cmd: plan::PlanCommand,
) -> anyhow::Result<(Printed, Option<crate::aws::Calls>)> {
    let (printed, calls) = plan::run(global, lib, in_flight, cmd).await?;
    Ok((printed, Some(calls)))
}
