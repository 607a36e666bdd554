//! `tyrell network`

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{key_values, table, Outcome, Printed};
use crate::engine::model::Network;
use crate::engine::network::CreateNetwork;
use crate::engine::Engine;

#[derive(Args, Debug)]
pub struct NetworkArgs {
    #[command(subcommand)]
    cmd: Option<NetworkCmd>,
}

#[derive(Subcommand, Debug)]
enum NetworkCmd {
    /// Create a VPC with public and private subnets across AZs, an internet gateway and routes
    #[command(
        after_help = "Example:\n  tyrell network create swarm-net --cidr 10.20.0.0/16 --azs 3\n\nPrints the VPC id, which `tyrell stacks create -v` takes."
    )]
    Create {
        /// Network name (also the CloudFormation stack name)
        name: String,
        /// The VPC's address block (a /16)
        #[arg(long, default_value = "10.0.0.0/16")]
        cidr: String,
        /// Availability zones to span (2 or 3)
        #[arg(long, default_value_t = 2)]
        azs: u8,
        /// Skip the NAT gateway (instances in private subnets then have no internet access)
        #[arg(long)]
        no_nat: bool,
    },
    /// List networks
    List,
    /// Show one network
    Describe { name: String },
    /// Remove a network (refused while a base stack or metrics box uses its VPC)
    Remove { name: String },
}

const HEADERS: &[&str] = &["NAME", "REGION", "VPC", "CIDR", "PUBLIC SUBNETS", "PRIVATE SUBNETS", "STATUS"];

/// `network create`: the network; renders its VPC id (what `stacks create -v` takes).
#[derive(Serialize)]
#[serde(transparent)]
pub struct Created(pub Network);

impl Outcome for Created {
    fn render(&self) -> String {
        self.0.vpc_id.clone()
    }
}

/// `network` / `network list`.
#[derive(Serialize)]
pub struct List {
    pub networks: Vec<Network>,
}

impl Outcome for List {
    fn render(&self) -> String {
        if self.networks.is_empty() {
            return "no networks (create one with: tyrell network create NAME)".into();
        }
        let rows: Vec<Vec<String>> = self
            .networks
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    n.region.to_string(),
                    n.vpc_id.clone(),
                    n.cidr.clone(),
                    n.public_subnets.join(","),
                    n.private_subnets.join(","),
                    n.status.clone(),
                ]
            })
            .collect();
        table(HEADERS, &rows)
    }
}

/// `network describe`: the network, as `key: value` lines with the next step.
#[derive(Serialize)]
#[serde(transparent)]
pub struct Described(pub Network);

impl Outcome for Described {
    fn render(&self) -> String {
        let n = &self.0;
        key_values(&[
            ("name".into(), n.name.clone()),
            ("status".into(), n.status.clone()),
            ("vpc".into(), n.vpc_id.clone()),
            ("cidr".into(), n.cidr.clone()),
            ("public subnets".into(), n.public_subnets.join(", ")),
            ("private subnets".into(), n.private_subnets.join(", ")),
            ("next".into(), format!("tyrell stacks create -v {} SWARM", n.vpc_id)),
        ])
    }
}

/// `network remove`: the network's name and its VPC.
#[derive(Serialize)]
pub struct Removed {
    pub removed: String,
    pub vpc_id: String,
}

impl Outcome for Removed {
    fn render(&self) -> String {
        format!("removed network {} ({})", self.removed, self.vpc_id)
    }
}

pub async fn run(e: &mut Engine, a: NetworkArgs) -> anyhow::Result<Printed> {
    match a.cmd.unwrap_or(NetworkCmd::List) {
        NetworkCmd::Create { name, cidr, azs, no_nat } => {
            Printed::of(&Created(e.create_network(&CreateNetwork { name, cidr, azs, nat: !no_nat }).await?))
        }
        NetworkCmd::List => Printed::of(&List { networks: e.networks().await? }),
        NetworkCmd::Describe { name } => Printed::of(&Described(e.network(&name).await?)),
        NetworkCmd::Remove { name } => {
            let n = e.remove_network(&name).await?;
            Printed::of(&Removed { removed: n.name, vpc_id: n.vpc_id })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/JSON.md, `tyrell network remove NAME` (the emulator cannot delete a network,
    /// so tests/json.rs cannot produce this one).
    #[test]
    fn removed_serialises_to_its_documented_shape() {
        let r = Removed { removed: "net1".into(), vpc_id: "vpc-0abc1234".into() };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({ "removed": "net1", "vpc_id": "vpc-0abc1234" })
        );
        assert_eq!(r.render(), "removed network net1 (vpc-0abc1234)");
    }
}
