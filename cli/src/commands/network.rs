//! `tyrell network`

use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{key_values, table, Printed};
use crate::engine::network::{CreateNetwork, Network};
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

fn rows(nets: &[Network]) -> Vec<Vec<String>> {
    nets.iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.vpc_id.clone(),
                n.cidr.clone(),
                n.public_subnets.join(","),
                n.private_subnets.join(","),
                n.status.clone(),
            ]
        })
        .collect()
}

const HEADERS: &[&str] = &["NAME", "VPC", "CIDR", "PUBLIC SUBNETS", "PRIVATE SUBNETS", "STATUS"];

pub async fn run(e: &mut Engine, a: NetworkArgs) -> anyhow::Result<Printed> {
    Ok(match a.cmd.unwrap_or(NetworkCmd::List) {
        NetworkCmd::Create { name, cidr, azs, no_nat } => {
            let n = e.create_network(&CreateNetwork { name, cidr, azs, nat: !no_nat }).await?;
            Printed::new(serde_json::to_value(&n)?, n.vpc_id.clone())
        }
        NetworkCmd::List => {
            let nets = e.networks().await?;
            let text = if nets.is_empty() {
                "no networks (create one with: tyrell network create NAME)".into()
            } else {
                table(HEADERS, &rows(&nets))
            };
            Printed::new(json!({ "networks": nets }), text)
        }
        NetworkCmd::Describe { name } => {
            let n = e.network(&name).await?;
            let text = key_values(&[
                ("name".into(), n.name.clone()),
                ("status".into(), n.status.clone()),
                ("vpc".into(), n.vpc_id.clone()),
                ("cidr".into(), n.cidr.clone()),
                ("public subnets".into(), n.public_subnets.join(", ")),
                ("private subnets".into(), n.private_subnets.join(", ")),
                ("next".into(), format!("tyrell stacks create -v {} SWARM", n.vpc_id)),
            ]);
            Printed::new(serde_json::to_value(&n)?, text)
        }
        NetworkCmd::Remove { name } => {
            let n = e.remove_network(&name).await?;
            Printed::new(
                json!({ "removed": n.name, "vpc_id": n.vpc_id }),
                format!("removed network {} ({})", n.name, n.vpc_id),
            )
        }
    })
}
