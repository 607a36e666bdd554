//! `tyrell plan FILE`, `tyrell up FILE`, `tyrell down FILE`: a whole swarm from one plan
//! file (docs/PLAN.md) — what would change, converging to it, removing it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::output::{table, InFlight, Outcome, Printed, StderrReporter};
use super::Global;
use crate::aws::cfn::WaitOptions;
use crate::aws::{Calls, Clouds, Region, Target};
use crate::engine::error::Error;
use crate::engine::library::Library;
use crate::engine::plan::{self, Action, Applied, Change, Desired, Planned, Removal};
use crate::engine::Engine;

const EXAMPLE: &str = r#"A plan file (docs/PLAN.md has every key):

  swarm = "swarm1"
  region = "eu-west-1"                 # the home region (default: --region / AWS_REGION)

  [networks.swarm1-net]
  cidr = "10.20.0.0/16"

  [networks.euc1-net]                  # a bee region's network (its own range)
  region = "eu-central-1"
  cidr = "10.21.0.0/16"

  [base]
  network = "swarm1-net"
  allow_cidrs = ["203.0.113.0/24"]
  broker_certificate_arn = "arn:aws:acm:eu-west-1:123456789012:certificate/..."
  broker_dns_name = "mqtt.swarm1.example.org"   # the NLB ends MQTT's TLS (default: the brokers, own CA)

  [metrics]
  name = "swarm1-metrics"
  network = "swarm1-net"
  image = "latest"

  [roles.broker]
  image = "latest"                     # an AMI id, latest or latest:VERSION
  size = 1
  [roles.router]
  image = "latest:r7"
  size = 2
  after = ["broker"]                   # switched after the broker
  shift = "steps:10,50"                # a canary once a router version is live
  [roles.bee]
  image = "ami-0b1c2d3e"
  size = 5
  targets = ["198.51.100.7", "example.org"]

  [bees.eu-central-1]                  # bees in another region, peered to the home VPC
  network = "euc1-net"
  size = 3                             # image and instance type: [roles.bee]'s"#;

const PLAN_HELP: &str = r#"Examples:
  tyrell plan swarm1.toml               # what `up` would change, changing nothing
  tyrell plan swarm1.toml -o json       # the same, for scripts
  tyrell plan swarm1.toml --down        # what `down` would remove

Each change is a stack to create, update (with its parameter and template diff, from
DescribeStacks and GetTemplate) or remove, or a gated traffic switch. A role whose image,
instance type or size differs from its live version is an update: `up` makes a new
version and switches to it (blue/green). Bad input names its place (FILE:LINE:COLUMN)."#;

const UP_HELP: &str = r#"Examples:
  tyrell up swarm1.toml                 # build or converge the swarm
  tyrell --timeout 45m up swarm1.toml   # each AWS operation may take up to 45 minutes

In order: networks (every region), the metrics box, the base stack, new role versions,
the traffic switches (gated, in the order of the roles' `after`), then each bee region:
its peering and stacks (as `stacks add-region`), its bee version and switch. Everything is checked first — the
file, every image resolving, names being free — and a plan `up` cannot finish is refused
before anything changes. A second `up` of the same plan changes nothing and says so."#;

const DOWN_HELP: &str = r#"Examples:
  tyrell down swarm1.toml                       # the swarm, its bee regions, metrics box, networks
  tyrell down swarm1.toml --delete-archive      # also the archived records in S3

Bee regions go first (their bees, then peering and stacks), then the swarm, its metrics
box and its networks in every region. Refused, before anything is removed, while the
swarm's queues hold messages, while its archive bucket holds objects unless
--delete-archive says to delete them, or while it has a bee region the file does not
name. A metrics box or network that something outside the plan uses is kept (and said so)."#;

/// `tyrell plan FILE`.
#[derive(Args, Debug)]
#[command(after_help = format!("{PLAN_HELP}\n\n{EXAMPLE}"))]
pub struct PlanArgs {
    /// The plan file (TOML; docs/PLAN.md)
    file: PathBuf,
    /// Show what `tyrell down FILE` would remove instead
    #[arg(long)]
    down: bool,
    /// With --down: as `down --delete-archive` (archived objects would be deleted)
    #[arg(long, requires = "down")]
    delete_archive: bool,
}

/// `tyrell up FILE`.
#[derive(Args, Debug)]
#[command(after_help = format!("{UP_HELP}\n\n{EXAMPLE}"))]
pub struct UpArgs {
    /// The plan file (TOML; docs/PLAN.md)
    file: PathBuf,
}

/// `tyrell down FILE`.
#[derive(Args, Debug)]
#[command(after_help = DOWN_HELP)]
pub struct DownArgs {
    /// The plan file (TOML; docs/PLAN.md)
    file: PathBuf,
    /// Delete the swarm's archived ping records (every object of its S3 bucket) with it
    #[arg(long)]
    delete_archive: bool,
}

/// Which of the three.
#[derive(Debug)]
pub enum PlanCommand {
    Plan(PlanArgs),
    Up(UpArgs),
    Down(DownArgs),
}

/// One change as a table row: ACTION, KIND, NAME, REGION, WHAT.
fn row(c: &Change) -> Vec<String> {
    let mut what = c.what.clone();
    if c.blocked.is_some() {
        what.push_str(" [up refuses: see below]");
    }
    vec![c.action.as_str().to_string(), c.kind.to_string(), c.name.clone(), c.region.to_string(), what]
}

/// The parameter and template diffs of the changes that have them.
fn details(changes: &[Change]) -> String {
    let mut s = String::new();
    let shown = |c: &&Change| c.action != Action::Create && (!c.parameters.is_empty() || !c.template.is_empty());
    for c in changes.iter().filter(shown) {
        s.push_str(&format!("\n{} {} {}:\n", c.action.as_str(), c.kind, c.name));
        for (k, d) in &c.parameters {
            s.push_str(&format!(
                "  {k}: {} -> {}\n",
                d.from.as_deref().map_or("(none)".to_string(), |v| format!("{v:?}")),
                d.to.as_deref().map_or("(none)".to_string(), |v| format!("{v:?}"))
            ));
        }
        if !c.template.is_empty() {
            s.push_str(&format!("  template: {} line(s) differ\n", c.template.len()));
            for l in c.template.iter().take(40) {
                s.push_str(&format!("    {l}\n"));
            }
            if c.template.len() > 40 {
                s.push_str(&format!("    ... {} more (-o json shows all)\n", c.template.len() - 40));
            }
        }
    }
    s
}

const HEADERS: &[&str] = &["ACTION", "KIND", "NAME", "REGION", "WHAT"];

/// `tyrell plan FILE`: the changes `up` would make.
#[derive(Serialize)]
#[serde(transparent)]
pub struct Shown(pub Planned);

impl Outcome for Shown {
    fn render(&self) -> String {
        let p = &self.0;
        let mut s = if p.changes.is_empty() {
            format!("no changes: swarm {} in {} matches {}\n", p.swarm, p.region, p.file)
        } else {
            format!(
                "{}: {} change(s) to swarm {} (home region {}):\n{}",
                p.file,
                p.changes.len(),
                p.swarm,
                p.region,
                table(HEADERS, &p.changes.iter().map(row).collect::<Vec<_>>())
            )
        };
        s.push_str(&details(&p.changes));
        if !p.unchanged.is_empty() {
            s.push_str(&format!("\nunchanged: {}\n", p.unchanged.join("; ")));
        }
        for n in &p.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        for c in p.changes.iter().filter_map(|c| c.blocked.as_ref()) {
            s.push_str(&format!("up refuses: {c}\n"));
        }
        s
    }
}

/// `tyrell up FILE`: what it changed.
#[derive(Serialize)]
#[serde(transparent)]
pub struct Upped(pub Applied);

impl Outcome for Upped {
    fn render(&self) -> String {
        let a = &self.0;
        let mut s = if a.changes.is_empty() {
            format!("no changes: swarm {} in {} already matches {}\n", a.swarm, a.region, a.file)
        } else {
            format!(
                "{}: made {} change(s) to swarm {} ({}):\n{}",
                a.file,
                a.changes.len(),
                a.swarm,
                a.region,
                table(HEADERS, &a.changes.iter().map(row).collect::<Vec<_>>())
            )
        };
        for w in &a.switches {
            let phases: Vec<String> =
                w.report.phases.iter().map(|p| format!("{} {:.1}s", p.phase, p.seconds)).collect();
            s.push_str(&format!(
                "{} switch {} -> {} in {:.1}s: {}\n",
                w.role,
                w.from.as_deref().unwrap_or("nothing"),
                w.to,
                w.report.seconds,
                phases.join(", ")
            ));
        }
        for n in &a.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        s
    }
}

/// `tyrell down FILE` (and `plan --down`): what it removed (or would).
#[derive(Serialize)]
#[serde(transparent)]
pub struct Downed {
    pub removal: Removal,
    #[serde(skip)]
    pub done: bool,
}

impl Outcome for Downed {
    fn render(&self) -> String {
        let r = &self.removal;
        let verb = if self.done { "removed" } else { "would remove" };
        let mut s = if r.changes.is_empty() {
            format!("nothing to remove: swarm {} in {} has nothing of {}\n", r.swarm, r.region, r.file)
        } else {
            format!(
                "{}: {verb} {} stack(s) of swarm {} ({}):\n{}",
                r.file,
                r.changes.len(),
                r.swarm,
                r.region,
                table(HEADERS, &r.changes.iter().map(row).collect::<Vec<_>>())
            )
        };
        if r.deleted_objects > 0 {
            s.push_str(&format!("deleted {} archived object(s)\n", r.deleted_objects));
        }
        for k in &r.kept {
            s.push_str(&format!("kept: {k}\n"));
        }
        s
    }
}

/// Reads and checks a plan file. `home`: the command line's region.
fn read(file: &PathBuf, home: &Region, lib: &Library) -> anyhow::Result<Desired> {
    let shown = file.display().to_string();
    let text =
        std::fs::read_to_string(file).map_err(|e| Error::Invalid(format!("cannot read plan file {shown}: {e}")))?;
    plan::parse(&shown, &text, home, lib)
}

/// The `region` a plan file names, if it parses that far (so a plan with a region needs
/// none on the command line); anything wrong is left for [`plan::parse`] to say.
fn region_in(file: &PathBuf) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let v: toml::Table = toml::from_str(&text).ok()?;
    v.get("region")?.as_str().filter(|r| crate::aws::is_region(r)).map(str::to_string)
}

/// Runs `plan`, `up` or `down`: connects, reads the file, builds an engine for the home
/// region and each other region the plan names. Returns what to print and the AWS calls.
pub async fn run(
    global: &Global,
    lib: Library,
    in_flight: InFlight,
    cmd: PlanCommand,
) -> anyhow::Result<(Printed, Calls)> {
    let file = match &cmd {
        PlanCommand::Plan(a) => &a.file,
        PlanCommand::Up(a) => &a.file,
        PlanCommand::Down(a) => &a.file,
    };
    let clouds = Clouds::connect(&Target {
        region: global.region.clone().or_else(|| region_in(file)),
        profile: global.profile.clone(),
        endpoint_url: global.endpoint_url.clone(),
    })
    .await?;
    let d = read(file, clouds.home(), &lib)?;
    let wait = WaitOptions::with_timeout(global.timeout);
    let engine = |r: &Region| {
        Engine::new(&clouds, r, lib.clone(), wait.clone(), Box::new(StderrReporter::new(in_flight.clone())))
    };
    let mut home = engine(&d.region);
    let mut away: BTreeMap<Region, Engine> = BTreeMap::new();
    for r in d.networks.iter().map(|n| &n.region).chain(d.bees.iter().map(|b| &b.region)) {
        if *r != d.region && !away.contains_key(r) {
            away.insert(r.clone(), engine(r));
        }
    }
    let printed = match cmd {
        PlanCommand::Plan(a) if a.down => {
            Printed::of(&Downed { removal: plan::down_plan(&home, &away, &d, a.delete_archive).await?, done: false })?
        }
        PlanCommand::Plan(_) => Printed::of(&Shown(plan::plan(&home, &away, &d).await?))?,
        PlanCommand::Up(_) => Printed::of(&Upped(plan::up(&mut home, &mut away, &d).await?))?,
        PlanCommand::Down(a) => {
            Printed::of(&Downed { removal: plan::down(&mut home, &mut away, &d, a.delete_archive).await?, done: true })?
        }
    };
    Ok((printed, home.aws.calls()))
}
