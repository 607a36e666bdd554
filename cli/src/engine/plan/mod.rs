//! Plans: a swarm described in one TOML file ([`file`], docs/PLAN.md), compared with what
//! AWS has ([`plan`]: what would change, changing nothing), converged ([`up`]: through the
//! same engine paths as the single commands — `network create`, `metrics create`,
//! `stacks create`, `ROLE create`, `traffic ROLE --version`, gated), and removed ([`down`]).
//!
//! Order (`up`): networks (every region) → metrics box → base stack → new role versions →
//! traffic switches, the switches in the plan's dependency order (`after`) → per bee
//! region: the bee region (peering, bee-region and bee-link stacks, as `tyrell stacks
//! add-region`), its bee version, its switch. A changed image, instance type or size of a
//! role is a new version and a gated switch to it (blue/green), never an in-place change
//! of the live one. Everything is validated — the file, the images resolving in their
//! regions, names being free, stacks being tyrell's — before the first mutating call, and
//! a plan `up` cannot finish (an in-place stack update it does not make) is refused whole
//! before anything changes.
//!
//! Diffs are computed from `DescribeStacks` (parameters) and `GetTemplate` (template
//! bodies), not from a CloudFormation change set: creating a change set is itself a write
//! (`CreateChangeSet`), and `plan` makes none.

pub mod diff;
pub mod file;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

pub use file::{parse, Desired};
use file::{MetricsWant, NetworkWant, Place, RoleWant};

use super::base::CreateBase;
use super::error::Error;
use super::fleet::{stack_name, CreateVersion, ScheduleChoice};
use super::metrics::CreateMetrics;
use super::model::{Base, MetricsBox, Network, VersionInfo};
use super::network::CreateNetwork;
use super::traffic::plan::Shift;
use super::traffic::{SwitchRequest, Target};
use super::values::{AmiRef, Version};
use super::{admin_cidrs_param, Engine, TAG_ROLE, TAG_STACK};
use crate::aws::cfn::{self, StackInfo};
use crate::aws::{ec2, s3, sqs, Region};

/// What a change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A stack to create.
    Create,
    /// A stack whose parameters or template differ; for a role, a new version (blue/green).
    Update,
    /// A stack to remove (`down`, `plan --down`).
    Remove,
    /// A gated traffic switch to a version.
    Switch,
}

impl Action {
    /// The word shown in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Remove => "remove",
            Action::Switch => "switch",
        }
    }
}

/// One parameter's value before and after (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// One change a plan makes, as `plan` shows it and `up` / `down` report it.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub action: Action,
    /// `network`, `metrics`, `base`, `version` (a role version stack), `traffic` (a switch).
    pub kind: &'static str,
    /// The stack's name; for a switch, the role.
    pub name: String,
    pub region: Region,
    /// One line: what it is, or what moves.
    pub what: String,
    /// Parameters that change (an update), by name.
    pub parameters: BTreeMap<String, Diff>,
    /// The template's changed lines (`-` old, `+` new), empty when it is the same.
    pub template: Vec<String>,
    /// Why `up` cannot make this change (then it refuses the whole plan, changing nothing).
    pub blocked: Option<String>,
}

impl Change {
    fn new(action: Action, kind: &'static str, name: &str, region: &Region, what: String) -> Change {
        Change {
            action,
            kind,
            name: name.to_string(),
            region: region.clone(),
            what,
            parameters: BTreeMap::new(),
            template: Vec::new(),
            blocked: None,
        }
    }
}

/// One step of `up`, in order, with what it needs (resolved while planning).
#[derive(Debug, Clone)]
enum Step {
    Network(NetworkWant),
    Metrics {
        want: MetricsWant,
        ami: String,
    },
    Base {
        metrics: Option<String>,
    },
    /// Parameters of stack `name` to change in place ([`IN_PLACE`]); a value `(the security
    /// group of the new metrics box M)` is read from M once it is made. `keep`: every
    /// parameter the stack has (the others stay as they are).
    Update {
        name: String,
        set: BTreeMap<String, String>,
        keep: Vec<String>,
    },
    /// A bee region of the swarm in `region`, on the plan's network there.
    BeeRegion {
        region: Region,
        network: String,
    },
    Version {
        region: Region,
        role: String,
        ami: String,
        instance_type: String,
        size: i32,
        version: Option<Version>,
    },
    /// To `version`, or (`None`) to the version this `up` created for the role (in `region`).
    Switch {
        region: Region,
        role: String,
        version: Option<String>,
        size: i32,
        shift: Shift,
        bake: std::time::Duration,
        retire: bool,
    },
}

/// What `plan` found: the changes `up` would make (or `down` would, with `--down`), in
/// order, what already matches, and notes.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub file: String,
    pub swarm: String,
    /// The home region.
    pub region: Region,
    pub changes: Vec<Change>,
    /// What already matches the plan, one line each (`network swarm1-net`).
    pub unchanged: Vec<String>,
    /// What the plan holds that tyrell does not apply (the bees' watch list), one line each.
    pub notes: Vec<String>,
    #[serde(skip)]
    steps: Vec<Step>,
}

impl Planned {
    /// Adds a change and, unless it is blocked, the step that makes it.
    fn push(&mut self, c: Change, step: Option<Step>) {
        self.changes.push(c);
        self.steps.extend(step);
    }

    /// The first change `up` cannot make, with why.
    pub fn blocked(&self) -> Option<String> {
        self.changes.iter().find_map(|c| c.blocked.clone())
    }
}

/// A stack `name` of tyrell role `role`, if it exists; a stack of that name that is not
/// tyrell's (or of another role) is refused, at `place`.
async fn own(e: &Engine, name: &str, role: &str, place: &Place) -> anyhow::Result<Option<StackInfo>> {
    match cfn::get(&e.aws.cfn, name).await? {
        None => Ok(None),
        Some(s) if s.tag(TAG_ROLE) == Some(role) => Ok(Some(s)),
        Some(s) => crate::refuse!(
            Exists,
            "{place}: a stack named {name} exists in {} and is not a tyrell {role} ({}): rename it in the plan",
            e.region(),
            s.tag(TAG_ROLE).map_or("not tyrell's".to_string(), |r| format!("a tyrell {r}"))
        ),
    }
}

/// A `CommaDelimitedList` parameter as AWS shows it, `a,b,,`: the emulator (moto) shows
/// one as a Python list, `['a', 'b', '', '']`, which is read back to that form here.
fn list_value(v: &str) -> String {
    match v.strip_prefix("['").and_then(|x| x.strip_suffix("']")) {
        Some(inner) => inner.split("', '").collect::<Vec<_>>().join(","),
        None if v == "[]" => String::new(),
        None => v.to_string(),
    }
}

/// Parameter differences: every key of `want` whose value differs from `have`'s.
fn param_diff(have: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> BTreeMap<String, Diff> {
    want.iter()
        .filter(|(k, v)| have.get(*k).map(|h| list_value(h)).as_ref() != Some(*v))
        .map(|(k, v)| (k.clone(), Diff { from: have.get(k).map(|h| list_value(h)), to: Some(v.clone()) }))
        .collect()
}

/// The image of `ami` for `role` in `e`'s region, resolved and checked to exist (once per
/// AMI and region: `seen` holds those checked); errors carry the plan's `place`.
async fn resolve_image(
    e: &Engine,
    role: &str,
    ami: &AmiRef,
    place: &Place,
    seen: &mut BTreeSet<(Region, String)>,
) -> anyhow::Result<String> {
    let id = e.resolve_ami(role, ami).await.map_err(|err| err.context(format!("{place}: image {ami}")))?;
    if seen.contains(&(e.region().clone(), id.clone())) {
        return Ok(id);
    }
    if !ec2::image_exists(&e.aws.ec2, &id).await? {
        crate::refuse!(NotFound, "{place}: image {ami}: AMI {id} does not exist in {}", e.region());
    }
    seen.insert((e.region().clone(), id.clone()));
    Ok(id)
}

/// The size a version is compared with: its group's desired capacity, or, for a version
/// with a schedule (which moves the group), the size it was created with.
fn size_of(v: &VersionInfo) -> i32 {
    match v.schedule() {
        Some(_) => v.stack.parameters.get("DesiredCapacity").and_then(|n| n.parse().ok()).unwrap_or(v.desired),
        None => v.desired,
    }
}

/// What `up` would change to make AWS match `d`, changing nothing (reads only). `e` works
/// in the home region; `away` holds an engine for each other region the plan names.
///
/// Errors: what would make `up` fail before it changes anything — an image that does not
/// resolve or exist, a certificate ACM does not hold as `ISSUED` (or, for the broker, that
/// does not cover `broker_dns_name`), a plan version that contradicts the running one, a stack name taken
/// by another kind of stack — each naming its place in the file; AWS.
pub async fn plan(e: &Engine, away: &BTreeMap<Region, Engine>, d: &Desired) -> anyhow::Result<Planned> {
    let home = e.region().clone();
    let mut out = Planned {
        file: d.file.clone(),
        swarm: d.swarm.to_string(),
        region: home.clone(),
        changes: Vec::new(),
        unchanged: Vec::new(),
        notes: Vec::new(),
        steps: Vec::new(),
    };
    let engine_for = |r: &Region| engine_of(e, away, r);

    let mut images = BTreeSet::new();

    // Certificates, checked with ACM here: `up` runs this plan before it changes anything,
    // so a certificate ACM would refuse stops it before the first network is made.
    if let Some(m) = &d.metrics {
        if let Some(arn) = &m.certificate_arn {
            let place = m.certificate_place.as_ref().unwrap_or(&m.place);
            e.check_certificate("certificate_arn", arn, None)
                .await
                .map_err(|err| err.context(format!("{place}: [metrics]")))?;
        }
    }
    let b = &d.base;
    for (key, arn, host, place) in [
        ("certificate_arn", &b.certificate_arn, None, &b.certificate_place),
        (
            "broker_certificate_arn",
            &b.broker_certificate_arn,
            b.broker_dns_name.as_deref(),
            &b.broker_certificate_place,
        ),
    ] {
        if let Some(arn) = arn {
            let place = place.as_ref().unwrap_or(&b.place);
            e.check_certificate(key, arn, host).await.map_err(|err| err.context(format!("{place}: [base]")))?;
        }
    }

    // Networks, in every region.
    let mut vpcs: BTreeMap<(Region, String), String> = BTreeMap::new();
    for n in &d.networks {
        let en = engine_for(&n.region)?;
        let want = BTreeMap::from([
            ("Cidr".to_string(), n.cidr.clone()),
            ("AzCount".to_string(), n.azs.to_string()),
            ("NatGateway".to_string(), n.nat.to_string()),
        ]);
        match own(en, &n.name, super::network::ROLE, &n.place).await? {
            None => out.push(
                Change::new(
                    Action::Create,
                    "network",
                    &n.name,
                    &n.region,
                    format!("VPC {} across {} AZs{}", n.cidr, n.azs, if n.nat { ", NAT gateway" } else { "" }),
                ),
                Some(Step::Network(n.clone())),
            ),
            Some(s) => {
                vpcs.insert((n.region.clone(), n.name.clone()), Network::from(&s).vpc_id);
                match stack_update(en, &s, &want, super::network::ROLE, true, &n.place, "network").await? {
                    Some((c, step)) => out.push(c, step),
                    None => out.unchanged.push(format!("network {} ({})", n.name, n.region)),
                }
            }
        }
    }
    // The metrics box.
    let mut metrics_sg: Option<String> = None;
    if let Some(m) = &d.metrics {
        let ami = resolve_image(e, super::metrics::ROLE, &m.image, &m.image_place, &mut images).await?;
        match own(e, &m.name, super::metrics::ROLE, &m.place).await? {
            None => {
                out.changes.push(Change::new(
                    Action::Create,
                    "metrics",
                    &m.name,
                    &home,
                    format!("InfluxDB + Grafana on {} ({ami}) in network {}", m.instance_type, m.network),
                ));
                out.steps.push(Step::Metrics { want: m.clone(), ami });
            }
            Some(s) => {
                metrics_sg = Some(MetricsBox::from(&s).security_group);
                let mut want = BTreeMap::from([
                    ("AmiId".to_string(), ami),
                    ("InstanceType".to_string(), m.instance_type.clone()),
                    ("AdminCidrs".to_string(), admin_cidrs_param(&m.allow_cidrs)?),
                    ("CertificateArn".to_string(), m.certificate_arn.clone().unwrap_or_default()),
                ]);
                if let Some(v) = vpcs.get(&(home.clone(), m.network.clone())) {
                    want.insert("VpcId".into(), v.clone());
                }
                // The metrics template carries rendered user data: its parameters are compared.
                match stack_update(e, &s, &want, super::metrics::ROLE, false, &m.place, "metrics box").await? {
                    Some((c, step)) => out.push(c, step),
                    None => out.unchanged.push(format!("metrics box {} ({home})", m.name)),
                }
            }
        }
    }

    // The base stack.
    let base = own(e, &d.swarm, super::base::ROLE, &d.base.place).await?;
    match &base {
        None => {
            out.changes.push(Change::new(
                Action::Create,
                "base",
                &d.swarm,
                &home,
                format!(
                    "the swarm's base stack in network {}{}",
                    d.base.network,
                    if d.base.certificate_arn.is_some() { ", HTTPS" } else { "" }
                ) + if d.base.broker_certificate_arn.is_some() {
                    ", MQTT over TLS ended by the NLB"
                } else {
                    ", MQTT over TLS ended by the brokers"
                },
            ));
            out.steps.push(Step::Base { metrics: d.metrics.as_ref().map(|m| m.name.clone()) });
        }
        Some(s) => {
            let mut want = BTreeMap::from([
                ("AdminCidrs".to_string(), admin_cidrs_param(&d.base.allow_cidrs)?),
                ("CertificateArn".to_string(), d.base.certificate_arn.clone().unwrap_or_default()),
                ("BrokerCertificateArn".to_string(), d.base.broker_certificate_arn.clone().unwrap_or_default()),
                ("BrokerDnsName".to_string(), d.base.broker_dns_name.clone().unwrap_or_default()),
            ]);
            if let Some(v) = vpcs.get(&(home.clone(), d.base.network.clone())) {
                want.insert("VpcId".into(), v.clone());
            }
            match (&d.metrics, &metrics_sg) {
                (Some(_), Some(sg)) => {
                    want.insert("MetricsSecurityGroupId".into(), sg.clone());
                }
                (Some(m), None) => {
                    want.insert(
                        "MetricsSecurityGroupId".into(),
                        format!("(the security group of the new metrics box {})", m.name),
                    );
                }
                (None, _) => {}
            }
            match stack_update(e, s, &want, super::base::ROLE, true, &d.base.place, "base stack").await? {
                Some((c, step)) => out.push(c, step),
                None => out.unchanged.push(format!("base stack {} ({home})", d.swarm)),
            }
        }
    }

    // Role versions, then switches (in dependency order).
    let listed = match &base {
        Some(_) => cfn::list_tyrell(&e.aws.cfn, None).await?,
        None => Vec::new(),
    };
    let mut switches = Vec::new();
    for r in &d.roles {
        plan_role(e, d, r, base.is_some(), &listed, &mut images, &mut out, &mut switches).await?;
    }
    for (c, s) in switches {
        out.push(c, Some(s));
    }
    if let Some(t) = d.roles.iter().find_map(|r| r.targets.as_ref()) {
        out.notes.push(format!(
            "the bees' watch list ({} target(s)) is the router's: tyrell does not set it; apply it with PUT /watch on the router (docs/PLAN.md)",
            t.len()
        ));
    }

    // Bee regions: each one's peering and stacks (as `tyrell stacks add-region`), then its
    // bee version and switch, through that region's engine (whose fleets are deployed
    // from the bee-region stack there).
    let bee_default = d.roles.iter().find(|r| r.role == "bee");
    for b in &d.bees {
        let en = engine_for(&b.region)?;
        let name = crate::names::bee_region_stack(&d.swarm);
        let region = own(en, &name, super::bee_region::ROLE, &b.place).await?;
        match &region {
            None => out.push(
                Change::new(
                    Action::Create,
                    "bee-region",
                    &name,
                    &b.region,
                    format!(
                        "bee region on network {}: a VPC peering to the home VPC, the bees' security group and role, and the broker's 8883 open to its private range (stack {} at home)",
                        b.network,
                        crate::names::bee_link_stack(&d.swarm, &b.region.to_string())
                    ),
                ),
                Some(Step::BeeRegion { region: b.region.clone(), network: b.network.clone() }),
            ),
            Some(s) => {
                let have = s.parameters.get("VpcId").cloned().unwrap_or_default();
                match vpcs.get(&(b.region.clone(), b.network.clone())) {
                    Some(want) if *want != have => {
                        let mut c = Change::new(
                            Action::Update,
                            "bee-region",
                            &name,
                            &b.region,
                            format!("bee region {}: its VPC differs from network {}'s", b.region, b.network),
                        );
                        c.parameters = BTreeMap::from([(
                            "VpcId".to_string(),
                            Diff { from: Some(have.clone()), to: Some(want.clone()) },
                        )]);
                        c.blocked = Some(format!(
                            "{}: bees.{}: the bee region is peered from VPC {have}, the plan's network {} is VPC {want}: tyrell up does not move a bee region; remove it (tyrell bees remove --region {1}; tyrell stacks remove-region {} --bee-region {1}) or name its network in the plan",
                            b.place, b.region, b.network, d.swarm
                        ));
                        out.push(c, None);
                    }
                    _ => out.unchanged.push(format!("bee region {} (network {})", b.region, b.network)),
                }
            }
        }
        let want = RoleWant {
            role: "bee".into(),
            image: b.image.clone(),
            image_place: b.image_place.clone(),
            instance_type: b.instance_type.clone(),
            size: b.size,
            version: None,
            after: Vec::new(),
            shift: Shift::AllAtOnce,
            bake: bee_default.map_or(std::time::Duration::from_secs(60), |r| r.bake),
            retire: false,
            targets: Some(b.targets.clone()),
            place: b.place.clone(),
        };
        let listed = match &region {
            Some(_) => cfn::list_tyrell(&en.aws.cfn, None).await?,
            None => Vec::new(),
        };
        let mut switches = Vec::new();
        plan_role(en, d, &want, region.is_some(), &listed, &mut images, &mut out, &mut switches).await?;
        for (c, s) in switches {
            out.push(c, Some(s));
        }
    }
    if d.bees.iter().any(|b| !b.targets.is_empty()) {
        out.notes.push(
            "the targets of [bees.REGION] are checked and shown only: the swarm has one watch list (one broker), which the bees of every region share (docs/PLAN.md)".into(),
        );
    }
    Ok(out)
}

/// Plans role `r` of the swarm in `en`'s region: its live version compared with the plan
/// (image, instance type, size), a new version when they differ or none is live, and the
/// gated switch to it (pushed to `switches`, applied after every role's versions). `base`:
/// whether the stack the region's versions are deployed from exists (the base stack at
/// home, the bee-region stack in a bee region); `listed`: that region's tyrell stacks.
#[allow(clippy::too_many_arguments)]
async fn plan_role(
    e: &Engine,
    d: &Desired,
    r: &RoleWant,
    base: bool,
    listed: &[StackInfo],
    images: &mut BTreeSet<(Region, String)>,
    out: &mut Planned,
    switches: &mut Vec<(Change, Step)>,
) -> anyhow::Result<()> {
    let home = e.region().clone();
    let m = e.manifest(&r.role)?;
    let ami = resolve_image(e, &r.role, &r.image, &r.image_place, images).await?;
    let versions = match base {
        true => e.versions_among(&m, Some(&d.swarm), listed).await?,
        false => Vec::new(),
    };
    let live = versions.iter().find(|v| v.active);
    let matches = |v: &VersionInfo| v.ami == ami && v.instance_type == r.instance_type;
    let shift = if live.is_some() { r.shift.clone() } else { Shift::AllAtOnce };
    let switch = |to: Option<String>| Step::Switch {
        region: home.clone(),
        role: r.role.clone(),
        version: to,
        size: r.size,
        shift: shift.clone(),
        bake: r.bake,
        retire: r.retire,
    };
    // The switch's change: from the live version (or nothing) to `to`.
    let switch_change = |to: &str| {
        Change::new(
            Action::Switch,
            "traffic",
            &r.role,
            &home,
            format!(
                "{} -> {to} ({} instance(s), {shift}), gated",
                live.map_or("nothing", |l| l.version.as_str()),
                r.size
            ),
        )
    };
    let named = r.version.as_ref().map(|v| v.to_string());
    let existing = named.as_ref().and_then(|n| versions.iter().find(|v| &v.version == n));
    match existing {
        Some(x) => {
            if !matches(x) {
                crate::refuse!(
                    Invalid,
                    "{}: roles.{}.version = {:?}: that version runs {} on {}, the plan says {ami} on {}: a change needs a new version id (or no `version`, to have one generated)",
                    r.place, r.role, x.version, x.ami, x.instance_type, r.instance_type
                );
            }
            if x.active && size_of(x) == r.size {
                out.unchanged.push(format!("{} {} is live ({} instance(s))", r.role, x.version, r.size));
                return Ok(());
            }
            if x.active {
                crate::refuse!(
                    Invalid,
                    "{}: roles.{}: version {} is live with {} instance(s), the plan says {}: a new size goes to a new version (blue/green): give a new version id, or no `version`",
                    r.place, r.role, x.version, size_of(x), r.size
                );
            }
            switches.push((switch_change(&x.version), switch(Some(x.version.clone()))));
        }
        None => {
            if let Some(l) = live.filter(|l| named.is_none() && matches(l) && size_of(l) == r.size) {
                let place = if home == d.region { String::new() } else { format!(" in {home}") };
                out.unchanged.push(format!("{} {} is live{place} ({} instance(s))", r.role, l.version, r.size));
                return Ok(());
            }
            // The role's cloud-init renders (and fits EC2's user data limit) with this
            // swarm's names: checked now, before anything is made.
            let mut vars = super::render::Vars::sample(&r.role);
            (vars.region, vars.stack) = (home.to_string(), d.swarm.to_string());
            super::render::cloud_init(&e.lib, &r.role, &serde_json::to_value(&vars)?)
                .map_err(|err| anyhow::Error::from(err).context(format!("{}: roles.{}", r.place, r.role)))?;
            let shown = named.clone().unwrap_or_else(|| "(new)".into());
            let stack = stack_name(&d.swarm, &r.role, &shown);
            if named.is_some() {
                if let Some(s) = cfn::get(&e.aws.cfn, &stack).await? {
                    crate::refuse!(
                        Exists,
                        "{}: roles.{}.version: stack {stack} exists and is not a {} version of swarm {} ({})",
                        r.place,
                        r.role,
                        r.role,
                        d.swarm,
                        s.tag(TAG_STACK).unwrap_or("not tyrell's")
                    );
                }
            }
            let want = BTreeMap::from([
                ("AmiId".to_string(), ami.clone()),
                ("InstanceType".to_string(), r.instance_type.clone()),
                ("DesiredCapacity".to_string(), r.size.to_string()),
            ]);
            let mut c = match live {
                Some(l) => {
                    let have = BTreeMap::from([
                        ("AmiId".to_string(), l.ami.clone()),
                        ("InstanceType".to_string(), l.instance_type.clone()),
                        ("DesiredCapacity".to_string(), size_of(l).to_string()),
                    ]);
                    let mut c = Change::new(
                        Action::Update,
                        "version",
                        &stack,
                        &home,
                        format!(
                            "{}: a new version beside the live {} (blue/green), then a gated switch",
                            r.role, l.version
                        ),
                    );
                    c.parameters = param_diff(&have, &want);
                    c
                }
                None => Change::new(
                    Action::Create,
                    "version",
                    &stack,
                    &home,
                    format!("{} version {shown}: {} x {} ({ami})", r.role, r.size, r.instance_type),
                ),
            };
            if live.is_none() {
                c.parameters = param_diff(&BTreeMap::new(), &want);
            }
            out.push(
                c,
                Some(Step::Version {
                    region: home.clone(),
                    role: r.role.clone(),
                    ami: ami.clone(),
                    instance_type: r.instance_type.clone(),
                    size: r.size,
                    version: r.version.clone(),
                }),
            );
            // A role without inbound traffic whose first version is made is active at once.
            let first_active = m.traffic.via == super::library::Via::None && live.is_none();
            if !first_active {
                switches.push((switch_change(&shown), switch(named.clone())));
            }
        }
    }
    Ok(())
}

/// The parameters `up` changes in place, per kind of stack: security group rules only
/// (admin ranges, the metrics box the swarm's indexers may reach). Every other change
/// would replace resources — the VPC (`Cidr`, `AzCount`), the load balancers' listeners
/// and with them the live versions' traffic (`CertificateArn`, a template change), the
/// metrics box and its data (`AmiId`, `InstanceType`) — and is refused.
pub const IN_PLACE: &[(&str, &[&str])] =
    &[("network", &[]), ("metrics box", &["AdminCidrs"]), ("base stack", &["AdminCidrs", "MetricsSecurityGroupId"])];

/// The update a stack needs to match `want` (its parameters) and, with
/// `compare_template`, the template of role directory `dir`; `None` when it matches.
/// With it, the step that makes it, or none when the change is blocked (not one of
/// [`IN_PLACE`], said in `blocked`). Errors: a value the template would refuse, at `place`.
async fn stack_update(
    e: &Engine,
    s: &StackInfo,
    want: &BTreeMap<String, String>,
    dir: &str,
    compare_template: bool,
    place: &Place,
    what: &str,
) -> anyhow::Result<Option<(Change, Option<Step>)>> {
    let parameters = param_diff(&s.parameters, want);
    let template = e.lib.template(dir)?;
    let lines = match compare_template {
        false => Vec::new(),
        true => match cfn::template(&e.aws.cfn, &s.name).await? {
            Some(have) => diff::lines(&have, template),
            None => Vec::new(),
        },
    };
    if parameters.is_empty() && lines.is_empty() {
        return Ok(None);
    }
    let kind = match what {
        "network" => "network",
        "metrics box" => "metrics",
        _ => "base",
    };
    let mut c = Change::new(Action::Update, kind, &s.name, &s.region, String::new());
    c.parameters = parameters;
    c.template = lines;
    let allowed = IN_PLACE.iter().find(|(w, _)| *w == what).map_or(&[][..], |(_, a)| *a);
    let mut fixed: Vec<String> = c.parameters.keys().filter(|k| !allowed.contains(&k.as_str())).cloned().collect();
    if !c.template.is_empty() {
        fixed.push("its template".into());
    }
    if !fixed.is_empty() {
        c.what = format!("{what} {}: {} differ", s.name, fixed.join(", "));
        c.blocked = Some(format!(
            "{place}: {what} {} differs from the plan in {}, which tyrell up does not change in place (it would replace the {}; up changes only {}): change the plan back, or remove and re-create the {what}",
            s.name,
            fixed.join(", "),
            match what {
                "network" => "VPC and everything in it",
                "metrics box" => "box and the data on it",
                _ => "load balancers' listeners, and with them the live versions' traffic",
            },
            if allowed.is_empty() { "nothing of a network".to_string() } else { allowed.join(" and ") }
        ));
        return Ok(Some((c, None)));
    }
    c.what = format!(
        "{what} {}: {} changed in place (UpdateStack, same template)",
        s.name,
        c.parameters.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    // What AWS would refuse is refused now: every parameter as it would be, against the
    // template's constraints (a value `up` learns later is checked as it is now).
    let mut all: BTreeMap<String, String> = s.parameters.iter().map(|(k, v)| (k.clone(), list_value(v))).collect();
    for (k, d) in &c.parameters {
        if let Some(v) = d.to.as_ref().filter(|v| !v.starts_with('(')) {
            all.insert(k.clone(), v.clone());
        }
    }
    let spec =
        cfn::StackSpec { name: s.name.clone(), template: template.to_string(), parameters: all, tags: s.tags.clone() };
    super::limits::check_stack(&spec)
        .map_err(|err| Error::Invalid(format!("{place}: {what} {}: {}", s.name, err.0)))?;
    let set = c.parameters.iter().filter_map(|(k, d)| d.to.clone().map(|v| (k.clone(), v))).collect();
    let step = Step::Update { name: s.name.clone(), set, keep: s.parameters.keys().cloned().collect() };
    Ok(Some((c, Some(step))))
}

/// The VPC id of network `name` (made earlier in this `up`, or before).
async fn vpc_of(e: &Engine, name: &str) -> anyhow::Result<String> {
    let s = cfn::get(&e.aws.cfn, name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("there is no network named {name} in {}", e.region())))?;
    Ok(Network::from(&s).vpc_id)
}

/// What `up` did.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub file: String,
    pub swarm: String,
    pub region: Region,
    /// The changes made, in order (empty: AWS already matched the plan).
    pub changes: Vec<Change>,
    /// The role versions this run created, by role (`bee (REGION)` for a bee region's).
    pub created_versions: BTreeMap<String, String>,
    /// Each switch's result with its release report (phases, timings, checks), in order.
    pub switches: Vec<super::traffic::switch::Switched>,
    pub notes: Vec<String>,
}

/// Makes AWS match the plan: plans first ([`plan`], which validates everything), refuses
/// a plan with a blocked change before changing anything, then applies each step through
/// the engine's own paths, in order. A plan that already matches makes no mutating call.
///
/// Errors: [`plan`]'s; a blocked change ([`Error::Invalid`], naming its place); whatever
/// the single commands refuse or AWS fails with (a failed gate leaves traffic where it was).
pub async fn up(e: &mut Engine, away: &mut BTreeMap<Region, Engine>, d: &Desired) -> anyhow::Result<Applied> {
    let planned = plan(e, away, d).await?;
    if let Some(why) = planned.blocked() {
        return Err(Error::Invalid(format!("{why}; nothing was changed")).into());
    }
    let mut applied = Applied {
        file: d.file.clone(),
        swarm: d.swarm.to_string(),
        region: planned.region.clone(),
        changes: Vec::new(),
        created_versions: BTreeMap::new(),
        switches: Vec::new(),
        notes: planned.notes.clone(),
    };
    if planned.steps.is_empty() {
        return Ok(applied);
    }
    e.report.step(&format!("{}: {} change(s) to make", d.file, planned.changes.len()));
    let home = e.region().clone();
    // The versions this run made, by region and role.
    let mut versions: BTreeMap<(Region, String), String> = BTreeMap::new();
    let mut changes = planned.changes.iter().filter(|c| c.blocked.is_none());
    for step in &planned.steps {
        match step {
            Step::Network(n) => {
                let en = in_region(e, away, &n.region)?;
                en.create_network(&CreateNetwork {
                    name: n.name.clone(),
                    cidr: n.cidr.clone(),
                    azs: n.azs,
                    nat: n.nat,
                })
                .await?;
            }
            Step::BeeRegion { region, network } => {
                let there = away.get_mut(region).ok_or_else(|| anyhow::anyhow!("no engine for region {region}"))?;
                e.add_bee_region(there, &d.swarm, network, &d.base.allow_cidrs).await?;
            }
            Step::Metrics { want, ami } => {
                let vpc_id = vpc_of(e, &want.network).await?;
                e.create_metrics(&CreateMetrics {
                    name: want.name.clone(),
                    vpc_id,
                    ami: AmiRef::Id(ami.clone()),
                    instance_type: want.instance_type.clone(),
                    allow_cidrs: want.allow_cidrs.clone(),
                    certificate_arn: want.certificate_arn.clone(),
                })
                .await?;
            }
            Step::Base { metrics } => {
                let vpc_id = vpc_of(e, &d.base.network).await?;
                e.create_base(&CreateBase {
                    name: d.swarm.clone(),
                    vpc_id,
                    allow_cidrs: d.base.allow_cidrs.clone(),
                    certificate_arn: d.base.certificate_arn.clone(),
                    broker_certificate_arn: d.base.broker_certificate_arn.clone(),
                    broker_dns_name: d.base.broker_dns_name.clone(),
                    metrics: metrics.clone(),
                })
                .await?;
            }
            Step::Update { name, set, keep } => {
                let mut set = set.clone();
                if let (Some(m), Some(v)) = (&d.metrics, set.get("MetricsSecurityGroupId")) {
                    if v.starts_with('(') {
                        let made = cfn::get(&e.aws.cfn, &m.name).await?;
                        let sg = made.map(|s| MetricsBox::from(&s).security_group).unwrap_or_default();
                        set.insert("MetricsSecurityGroupId".into(), sg);
                    }
                }
                let stack = cfn::get(&e.aws.cfn, name)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("stack {name} is gone")))?;
                e.report.step(&format!(
                    "updating stack {name} in place: {}",
                    set.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
                if cfn::update_parameters(&e.aws.cfn, name, &set, keep).await? {
                    cfn::wait(&e.aws.cfn, &stack.id, name, cfn::Op::Update, &e.wait, e.report.as_mut()).await?;
                }
            }
            Step::Version { region, role, ami, instance_type, size, version } => {
                let e = in_region(e, away, region)?;
                let m = e.manifest(role)?;
                let req = CreateVersion {
                    swarm: d.swarm.clone(),
                    ami: AmiRef::Id(ami.clone()),
                    instance_type: Some(instance_type.clone()),
                    size: Some(*size),
                    version: version.clone(),
                    schedule: ScheduleChoice::Default,
                };
                let p = e.plan_version(&m, &req).await?;
                let v = e.create_version(&m, &p).await?;
                versions.insert((region.clone(), role.clone()), v.version.clone());
            }
            Step::Switch { region, role, version, size, shift, bake, retire } => {
                let e = in_region(e, away, region)?;
                let m = e.manifest(role)?;
                let to = match version.clone().or_else(|| versions.get(&(region.clone(), role.clone())).cloned()) {
                    Some(v) => v,
                    None => anyhow::bail!("no {role} version in {region} to switch to"),
                };
                let req = SwitchRequest {
                    swarm: d.swarm.clone(),
                    target: Target::Version(to),
                    size: Some(*size),
                    shift: shift.clone(),
                    bake: *bake,
                    retire: *retire,
                    force_unlock: false,
                };
                applied.switches.push(e.switch(&m, &req).await?);
            }
        }
        if let Some(c) = changes.next() {
            let mut c = c.clone();
            if let Step::Version { region, role, .. } | Step::Switch { region, role, .. } = step {
                if let Some(v) = versions.get(&(region.clone(), role.clone())) {
                    c.name = c.name.replace("(new)", v);
                    c.what = c.what.replace("(new)", v);
                }
            }
            applied.changes.push(c);
        }
    }
    applied.created_versions = versions
        .into_iter()
        .map(|((r, role), v)| (if r == home { role } else { format!("{role} ({r})") }, v))
        .collect();
    Ok(applied)
}

/// The engine of `region` to read with: the home engine `e`, or the one in `away`.
fn engine_of<'a>(e: &'a Engine, away: &'a BTreeMap<Region, Engine>, region: &Region) -> anyhow::Result<&'a Engine> {
    if e.region() == region {
        return Ok(e);
    }
    away.get(region).ok_or_else(|| anyhow::anyhow!("no engine for region {region}"))
}

/// The engine of `region` to change with: the home engine `e`, or the one in `away`.
fn in_region<'a>(
    e: &'a mut Engine,
    away: &'a mut BTreeMap<Region, Engine>,
    region: &Region,
) -> anyhow::Result<&'a mut Engine> {
    if e.region() == region {
        return Ok(e);
    }
    away.get_mut(region).ok_or_else(|| anyhow::anyhow!("no engine for region {region}"))
}

/// What `down` would remove, or removed, and what it kept on purpose.
#[derive(Debug, Clone, Serialize)]
pub struct Removal {
    pub file: String,
    pub swarm: String,
    pub region: Region,
    /// The removals, in order: the swarm's role versions and base stack (and its
    /// secrets), the metrics box, the networks.
    pub changes: Vec<Change>,
    /// Archived objects deleted from the swarm's bucket (`--delete-archive`).
    pub deleted_objects: usize,
    /// What it keeps, and why (used by another swarm, not made by `up`).
    pub kept: Vec<String>,
}

/// What `down` removes, checked, without removing anything: each bee region of the
/// plan (its bee versions, then the region: its stacks and peering), the swarm's role
/// versions, its base stack, the plan's metrics box and networks (every region) — each
/// only if it exists and nothing outside the plan uses it. `away`: an engine for each
/// other region the plan names.
///
/// Errors: a swarm whose queues hold messages, or whose archive bucket holds objects
/// without `delete_archive` ([`Error::InUse`], saying how to keep or empty them); a bee
/// region of the swarm the plan does not name ([`Error::InUse`]: the base stack cannot go
/// while it is peered); AWS.
pub async fn down_plan(
    e: &Engine,
    away: &BTreeMap<Region, Engine>,
    d: &Desired,
    delete_archive: bool,
) -> anyhow::Result<Removal> {
    let home = e.region().clone();
    let mut out = Removal {
        file: d.file.clone(),
        swarm: d.swarm.to_string(),
        region: home.clone(),
        changes: Vec::new(),
        deleted_objects: 0,
        kept: Vec::new(),
    };
    let engine_for = |r: &Region| engine_of(e, away, r);
    let all = cfn::list_tyrell(&e.aws.cfn, None).await?;
    // Stacks this removal takes, by region: a network they use may go too.
    let mut ours: BTreeSet<(Region, String)> = BTreeSet::new();
    // Each region's tyrell stacks, listed once (versions to remove, networks' users).
    let mut listed: BTreeMap<Region, Vec<StackInfo>> = BTreeMap::new();
    let base = own(e, &d.swarm, super::base::ROLE, &d.base.place).await?;
    if let Some(base) = &base {
        let b = Base::from(base);
        let queued = [("queue", &b.queue_url), ("dead-letter queue", &b.dead_letter_queue_url)];
        for (what, url) in queued {
            if url.is_empty() {
                continue;
            }
            if let Some(n) = sqs::messages(&e.aws.sqs, url).await?.filter(|n| *n > 0) {
                crate::refuse!(
                    InUse,
                    "refusing to remove swarm {}: its {what} holds {n} message(s) not yet archived; let the workers drain it (or redrive the dead-letter queue), then run this again (nothing was removed)",
                    d.swarm
                );
            }
        }
        if !b.bucket.is_empty() && s3::holds_data(&e.aws.s3, &b.bucket).await? == Some(true) && !delete_archive {
            crate::refuse!(
                InUse,
                "refusing to remove swarm {}: its archive bucket {} holds archived ping records, and tyrell never deletes data as a side effect: copy them somewhere safe (aws s3 sync s3://{1} ./{1}) and empty the bucket, or run `tyrell down {} --delete-archive` to delete them with the swarm (nothing was removed)",
                d.swarm,
                b.bucket,
                d.file
            );
        }
        // Bee regions first: the base stack cannot go while its NLB admits them.
        for link in e.bee_links(&d.swarm).await? {
            let r = link.tag(crate::names::TAG_BEE_REGION).unwrap_or_default().to_string();
            if !d.bees.iter().any(|b| b.region.to_string() == r) {
                crate::refuse!(
                    InUse,
                    "refusing to remove swarm {}: it has bee region {r}, which {} does not name: add a [bees.{r}] table to the plan, or remove the region first (tyrell bees remove --region {r} ...; tyrell stacks remove-region {} --bee-region {r}); nothing was removed",
                    d.swarm,
                    d.file,
                    d.swarm
                );
            }
        }
    }
    for b in &d.bees {
        let there = engine_for(&b.region)?;
        let name = crate::names::bee_region_stack(&d.swarm);
        let Some(region) = own(there, &name, super::bee_region::ROLE, &b.place).await? else { continue };
        let list = cfn::list_tyrell(&there.aws.cfn, None).await?;
        for v in there.swarm_versions_among(&d.swarm, &list) {
            ours.insert((b.region.clone(), v.name.clone()));
            out.changes.push(version_removal(&v));
        }
        listed.insert(b.region.clone(), list);
        ours.insert((b.region.clone(), region.name.clone()));
        out.changes.push(Change::new(
            Action::Remove,
            "bee-region",
            &region.name,
            &b.region,
            format!(
                "the bee region: its stack, the home link stack {} and VPC peering {}",
                crate::names::bee_link_stack(&d.swarm, &b.region.to_string()),
                region.output("PeeringConnectionId").unwrap_or("?")
            ),
        ));
    }
    if let Some(base) = &base {
        let b = Base::from(base);
        for v in all.iter().filter(|s| s.tag(TAG_STACK) == Some(d.swarm.as_str()) && s.name != d.swarm.as_str()) {
            if e.lib.role(v.tag(TAG_ROLE).unwrap_or_default()).is_some() {
                ours.insert((home.clone(), v.name.clone()));
                out.changes.push(version_removal(v));
            }
        }
        ours.insert((home.clone(), base.name.clone()));
        let mut c =
            Change::new(Action::Remove, "base", &base.name, &home, "the swarm's base stack and its secrets".into());
        if delete_archive && s3::holds_data(&e.aws.s3, &b.bucket).await? == Some(true) {
            c.what = format!(
                "the swarm's base stack and its secrets, after deleting every object of its archive bucket {}",
                b.bucket
            );
        }
        out.changes.push(c);
    }
    if let Some(m) = &d.metrics {
        if let Some(s) = own(e, &m.name, super::metrics::ROLE, &m.place).await? {
            let sg = MetricsBox::from(&s).security_group;
            let users: Vec<String> = all
                .iter()
                .filter(|b| {
                    b.tag(TAG_ROLE) == Some(super::base::ROLE) && !ours.contains(&(home.clone(), b.name.clone()))
                })
                .filter(|b| Base::from(*b).metrics_security_group.as_deref() == Some(sg.as_str()))
                .map(|b| b.name.clone())
                .collect();
            if users.is_empty() {
                ours.insert((home.clone(), s.name.clone()));
                out.changes.push(Change::new(
                    Action::Remove,
                    "metrics",
                    &s.name,
                    &home,
                    "the metrics box and its secret".into(),
                ));
            } else {
                out.kept.push(format!("metrics box {}: swarm(s) {} use it", s.name, users.join(", ")));
            }
        }
    }
    listed.insert(home.clone(), all);
    for n in &d.networks {
        let en = engine_for(&n.region)?;
        if !listed.contains_key(&n.region) {
            listed.insert(n.region.clone(), cfn::list_tyrell(&en.aws.cfn, None).await?);
        }
        if let Some(s) = own(en, &n.name, super::network::ROLE, &n.place).await? {
            let vpc = Network::from(&s).vpc_id;
            let users: Vec<String> = listed[&n.region]
                .iter()
                .filter(|x| {
                    x.tag(TAG_ROLE) != Some(super::network::ROLE) && !ours.contains(&(n.region.clone(), x.name.clone()))
                })
                .filter(|x| x.parameters.get("VpcId") == Some(&vpc))
                .map(|x| x.name.clone())
                .collect();
            if users.is_empty() {
                out.changes.push(Change::new(Action::Remove, "network", &s.name, &n.region, format!("VPC {vpc}")));
            } else {
                out.kept.push(format!("network {} ({}): still used by {}", s.name, n.region, users.join(", ")));
            }
        }
    }
    Ok(out)
}

/// The removal of role version stack `v`, in its own region.
fn version_removal(v: &StackInfo) -> Change {
    Change::new(
        Action::Remove,
        "version",
        &v.name,
        &v.region,
        format!("{} version {}", v.tag(TAG_ROLE).unwrap_or("?"), v.tag(super::TAG_VERSION).unwrap_or("?")),
    )
}

/// Removes what the plan made ([`down_plan`] first: nothing is removed when it refuses):
/// each bee region's versions and the region; with `delete_archive`, the archive bucket's
/// objects; then the swarm's versions and base stack (`stacks remove --all`), the metrics
/// box, the networks.
pub async fn down(
    e: &mut Engine,
    away: &mut BTreeMap<Region, Engine>,
    d: &Desired,
    delete_archive: bool,
) -> anyhow::Result<Removal> {
    let mut out = down_plan(e, away, d, delete_archive).await?;
    let home = e.region().clone();
    // Networks are last and independent of each other: each is tried, and the first
    // failure is returned after all were (the others' are reported).
    let mut failed: Option<anyhow::Error> = None;
    for c in out.changes.clone() {
        match c.kind {
            "version" if c.region != home => {
                let there = in_region(e, away, &c.region)?;
                if let Some(s) = cfn::get(&there.aws.cfn, &c.name).await? {
                    there.delete_stack(&s).await?;
                }
            }
            "bee-region" => {
                let there =
                    away.get_mut(&c.region).ok_or_else(|| anyhow::anyhow!("no engine for region {}", c.region))?;
                e.remove_bee_region(there, &d.swarm).await?;
            }
            "base" => {
                if delete_archive {
                    let bucket = Base::from(&e.base(&c.name).await?).bucket;
                    if !bucket.is_empty() {
                        e.report.step(&format!("--delete-archive: deleting every object of bucket {bucket}"));
                        out.deleted_objects = s3::empty(&e.aws.s3, &bucket).await?;
                    }
                }
                e.remove_base(&c.name, true).await?;
            }
            "metrics" => {
                e.remove_metrics(&c.name).await?;
            }
            "network" => {
                if let Err(err) = in_region(e, away, &c.region)?.remove_network(&c.name).await {
                    match &failed {
                        None => failed = Some(err),
                        Some(_) => e.report.warn(&format!("network {} in {}: {err:#}", c.name, c.region)),
                    }
                }
            }
            _ => {} // the home versions go with their base stack
        }
    }
    match failed {
        Some(err) => Err(err),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parameters_compare_as_aws_shows_them() {
        assert_eq!(list_value("['203.0.113.0/24', '', '', '']"), "203.0.113.0/24,,,");
        assert_eq!(list_value("['', '', '', '']"), ",,,");
        assert_eq!(list_value("[]"), "");
        assert_eq!(list_value("203.0.113.0/24,,,"), "203.0.113.0/24,,,");
        let have = BTreeMap::from([
            ("AdminCidrs".to_string(), "['', '', '', '']".to_string()),
            ("CertificateArn".to_string(), String::new()),
        ]);
        let same = BTreeMap::from([("AdminCidrs".to_string(), ",,,".to_string())]);
        assert!(param_diff(&have, &same).is_empty());
        let other = BTreeMap::from([
            ("AdminCidrs".to_string(), "192.0.2.0/24,,,".to_string()),
            ("MetricsSecurityGroupId".to_string(), "sg-1".to_string()),
        ]);
        let d = param_diff(&have, &other);
        assert_eq!(d["AdminCidrs"], Diff { from: Some(",,,".into()), to: Some("192.0.2.0/24,,,".into()) });
        assert_eq!(d["MetricsSecurityGroupId"], Diff { from: None, to: Some("sg-1".into()) });
    }
}
