//! `tyrell stacks`: base stacks.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{key_values, table, InFlight, Outcome, Printed, StderrReporter};
use crate::engine::base::{next_steps, CreateBase};
use crate::engine::bee_region::BeeRegion;
use crate::engine::model::{Base, Region};
use crate::engine::values::SwarmName;
use crate::engine::{Engine, TAG_ROLE};

#[derive(Args, Debug)]
pub struct StacksArgs {
    #[command(subcommand)]
    cmd: Option<StacksCmd>,
}

#[derive(Subcommand, Debug)]
enum StacksCmd {
    /// Create a swarm's base stack in a VPC: security groups, ALB, broker NLB, queue, bucket, instance roles, secrets
    #[command(
        after_help = "Examples:\n  tyrell stacks create -v vpc-0abc1234 swarm1\n  tyrell stacks create -v vpc-0abc1234 --allow-cidr 203.0.113.0/24 \\\n      --certificate-arn arn:aws:acm:eu-west-1:123456789012:certificate/... \\\n      --broker-certificate-arn arn:aws:acm:eu-west-1:123456789012:certificate/... \\\n      --broker-dns-name mqtt.swarm1.example.org swarm1\n\nMQTT is TLS (8883) with or without --broker-certificate-arn.\nOnly the load balancer's port is open to the world; --allow-cidr admits an admin range (SSH)\nto the instances. Prefer `aws ssm start-session`: every instance runs the SSM agent."
    )]
    Create {
        /// Swarm name (the base stack's name, prefix of every version stack)
        name: SwarmName,
        /// The VPC to deploy into (see `tyrell network`)
        #[arg(short = 'v', long = "vpc")]
        vpc: String,
        /// Admin address range allowed SSH to the instances (repeatable, up to 4)
        #[arg(long = "allow-cidr", value_name = "CIDR")]
        allow_cidr: Vec<String>,
        /// Serve HTTPS on 443 with this ACM certificate (HTTP then redirects)
        #[arg(long, value_name = "ARN")]
        certificate_arn: Option<String>,
        /// Have the broker NLB end MQTT's TLS on 8883 with this ACM certificate, which every
        /// client verifies (needs --broker-dns-name). Without it MQTT is TLS too: the brokers
        /// end it with the swarm's own CA, made by the first broker box (docs/MULTI-REGION.md 8.1)
        #[arg(long, value_name = "ARN")]
        broker_certificate_arn: Option<String>,
        /// The name on --broker-certificate-arn the clients connect to (make it a CNAME to the
        /// NLB's DNS name, shown by `stacks describe`)
        #[arg(long, value_name = "NAME")]
        broker_dns_name: Option<String>,
        /// Metrics box whose InfluxDB this swarm's indexers write to (default: the one in the VPC, if any)
        #[arg(long, value_name = "NAME")]
        metrics: Option<String>,
    },
    /// Add a bee region to a swarm: a VPC peering from NETWORK (in --bee-region) to the home VPC, the bee-region stack there and its link stack here
    #[command(
        name = "add-region",
        after_help = "Example:\n  tyrell network create --region eu-west-1 --cidr 10.1.0.0/16 bees-eu\n  tyrell stacks add-region swarm1 --bee-region eu-west-1 --network bees-eu\n  tyrell bees create --region eu-west-1 -a ami-0123abcd swarm1\n\nThe bees there reach the broker over TLS through a VPC peering; the network\nneeds a NAT gateway and a CIDR apart from the home VPC's and every other bee region's.\nSee docs/MULTI-REGION.md."
    )]
    AddRegion {
        /// The swarm (its base stack is in this, the home, region)
        name: SwarmName,
        /// The region the bees go to
        #[arg(long, value_name = "REGION")]
        bee_region: Region,
        /// A tyrell network in that region (with a NAT gateway)
        #[arg(long, value_name = "NAME")]
        network: String,
        /// Admin address range allowed SSH to those bees (repeatable, up to 4)
        #[arg(long = "allow-cidr", value_name = "CIDR")]
        allow_cidr: Vec<String>,
    },
    /// Remove a swarm's bee region (refused while bee versions live there)
    #[command(name = "remove-region")]
    RemoveRegion {
        name: SwarmName,
        #[arg(long, value_name = "REGION")]
        bee_region: Region,
    },
    /// List base stacks with the versions of each role and which one is active
    List,
    /// What an operator needs next: URL, broker endpoint, queue, bucket, secret names, shell access
    Describe { name: SwarmName },
    /// Remove a base stack (refused while role versions exist, unless --all removes them first)
    Remove {
        name: SwarmName,
        /// Remove every role version of the swarm first, then the base stack
        #[arg(long)]
        all: bool,
    },
}

/// `stacks create`: the base stack, rendered as what an operator needs next.
#[derive(Serialize)]
#[serde(transparent)]
pub struct Created {
    pub base: Base,
}

impl Outcome for Created {
    fn render(&self) -> String {
        key_values(&next_steps(&self.base))
    }
}

/// One role's versions in `stacks list`: ids oldest first, and the active one.
#[derive(Serialize)]
pub struct RoleVersions {
    pub versions: Vec<String>,
    pub active: Option<String>,
}

/// One swarm in `stacks list`.
#[derive(Serialize)]
pub struct SwarmRow {
    pub name: String,
    /// The region its base stack lives in.
    pub region: Region,
    pub vpc_id: String,
    pub status: String,
    /// By role name.
    pub roles: BTreeMap<String, RoleVersions>,
}

/// `stacks` / `stacks list`.
#[derive(Serialize)]
pub struct List {
    pub stacks: Vec<SwarmRow>,
}

impl Outcome for List {
    fn render(&self) -> String {
        if self.stacks.is_empty() {
            return "no base stacks (create one with: tyrell stacks create -v VPC_ID NAME)".into();
        }
        let rows: Vec<Vec<String>> = self
            .stacks
            .iter()
            .map(|w| {
                let cells: Vec<String> = w
                    .roles
                    .iter()
                    .map(|(role, r)| {
                        let active = r.active.as_ref().map(|a| format!(" ({a})")).unwrap_or_default();
                        format!("{role}:{}{active}", r.versions.len())
                    })
                    .collect();
                vec![w.name.clone(), w.region.to_string(), w.vpc_id.clone(), w.status.clone(), cells.join("  ")]
            })
            .collect();
        table(&["NAME", "REGION", "VPC", "STATUS", "VERSIONS (ACTIVE)"], &rows)
    }
}

/// `stacks describe`: the base stack and its role version stacks.
#[derive(Serialize)]
pub struct Described {
    #[serde(flatten)]
    pub base: Base,
    /// Stack names of the swarm's role versions.
    pub versions: Vec<String>,
    /// (stack, role) of each version, for the text.
    #[serde(skip)]
    pub roles: Vec<(String, String)>,
}

impl Outcome for Described {
    fn render(&self) -> String {
        let mut pairs = next_steps(&self.base);
        pairs.push((
            "versions".into(),
            if self.roles.is_empty() {
                "none yet (e.g. tyrell bees create -a AMI_ID NAME)".into()
            } else {
                self.roles.iter().map(|(name, role)| format!("{name} [{role}]")).collect::<Vec<_>>().join(", ")
            },
        ));
        key_values(&pairs)
    }
}

/// `stacks add-region`: the bee region made.
#[derive(Serialize)]
#[serde(transparent)]
pub struct RegionAdded(pub BeeRegion);

impl Outcome for RegionAdded {
    fn render(&self) -> String {
        let b = &self.0;
        key_values(&[
            ("swarm".into(), b.swarm.clone()),
            ("bee region".into(), b.region.to_string()),
            ("home region".into(), b.home_region.clone()),
            ("vpc".into(), format!("{} ({})", b.vpc_id, b.vpc_cidr)),
            ("peering".into(), b.peering.clone()),
            ("broker".into(), format!("{} (TLS)", b.broker)),
            ("next".into(), format!("tyrell bees create --region {} -a AMI_ID {}", b.region, b.swarm)),
        ])
    }
}

/// `stacks remove`: every stack removed, role versions first, the base stack last.
#[derive(Serialize)]
pub struct Removed {
    pub removed: Vec<String>,
}

impl Outcome for Removed {
    fn render(&self) -> String {
        format!("removed {}", self.removed.join(", "))
    }
}

pub async fn run(e: &mut Engine, a: StacksArgs) -> anyhow::Result<Printed> {
    match a.cmd.unwrap_or(StacksCmd::List) {
        StacksCmd::Create {
            name,
            vpc,
            allow_cidr,
            certificate_arn,
            broker_certificate_arn,
            broker_dns_name,
            metrics,
        } => {
            let req = CreateBase {
                name,
                vpc_id: vpc,
                allow_cidrs: allow_cidr,
                certificate_arn,
                broker_certificate_arn,
                broker_dns_name,
                metrics,
            };
            let base = e.create_base(&req).await?;
            Printed::of(&Created { base })
        }
        StacksCmd::List => {
            let stacks = e
                .swarms()
                .await?
                .into_iter()
                .map(|w| SwarmRow {
                    region: w.base.region.clone(),
                    vpc_id: w.base.parameters.get("VpcId").cloned().unwrap_or_default(),
                    status: w.base.status.as_str().to_string(),
                    name: w.base.name,
                    roles: w
                        .roles
                        .into_iter()
                        .map(|(role, vs)| {
                            let active = vs.iter().find(|v| v.active).map(|v| v.version.clone());
                            (role, RoleVersions { versions: vs.into_iter().map(|v| v.version).collect(), active })
                        })
                        .collect(),
                })
                .collect();
            Printed::of(&List { stacks })
        }
        StacksCmd::Describe { name } => {
            let base = Base::from(&e.base(&name).await?);
            let versions = e.swarm_versions(&name).await?;
            Printed::of(&Described {
                base,
                versions: versions.iter().map(|v| v.name.clone()).collect(),
                roles: versions.iter().map(|v| (v.name.clone(), v.tag(TAG_ROLE).unwrap_or("?").to_string())).collect(),
            })
        }
        StacksCmd::AddRegion { name, bee_region, network, allow_cidr } => {
            let mut there = e.elsewhere(&bee_region, Box::new(StderrReporter::new(InFlight::default())));
            Printed::of(&RegionAdded(e.add_bee_region(&mut there, &name, &network, &allow_cidr).await?))
        }
        StacksCmd::RemoveRegion { name, bee_region } => {
            let mut there = e.elsewhere(&bee_region, Box::new(StderrReporter::new(InFlight::default())));
            Printed::of(&Removed { removed: e.remove_bee_region(&mut there, &name).await? })
        }
        StacksCmd::Remove { name, all } => Printed::of(&Removed { removed: e.remove_base(&name, all).await? }),
    }
}
