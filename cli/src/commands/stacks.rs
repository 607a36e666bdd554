//! `tyrell stacks`: base stacks.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{key_values, table, Printed};
use crate::engine::base::{next_steps, Base, CreateBase};
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
        after_help = "Examples:\n  tyrell stacks create -v vpc-0abc1234 swarm1\n  tyrell stacks create -v vpc-0abc1234 --allow-cidr 203.0.113.0/24 \\\n      --certificate-arn arn:aws:acm:eu-west-1:123456789012:certificate/... swarm1\n\nOnly the load balancer's port is open to the world; --allow-cidr admits an admin range (SSH)\nto the instances. Prefer `aws ssm start-session`: every instance runs the SSM agent."
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
        /// Metrics box whose InfluxDB this swarm's indexers write to (default: the one in the VPC, if any)
        #[arg(long, value_name = "NAME")]
        metrics: Option<String>,
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

pub async fn run(e: &mut Engine, a: StacksArgs) -> anyhow::Result<Printed> {
    Ok(match a.cmd.unwrap_or(StacksCmd::List) {
        StacksCmd::Create { name, vpc, allow_cidr, certificate_arn, metrics } => {
            let b = e
                .create_base(&CreateBase { name, vpc_id: vpc, allow_cidrs: allow_cidr, certificate_arn, metrics })
                .await?;
            Printed::new(serde_json::to_value(&b)?, key_values(&next_steps(&b, &e.aws.region)))
        }
        StacksCmd::List => {
            let swarms = e.swarms().await?;
            let mut list = Vec::new();
            let mut rows = Vec::new();
            for w in &swarms {
                let b = &w.base;
                let mut roles = BTreeMap::new();
                let mut cells = Vec::new();
                for (role, vs) in &w.roles {
                    let active = vs.iter().find(|v| v.active).map(|v| v.version.clone());
                    cells.push(format!(
                        "{role}:{}{}",
                        vs.len(),
                        active.as_ref().map(|a| format!(" ({a})")).unwrap_or_default()
                    ));
                    roles.insert(
                        role.clone(),
                        json!({ "versions": vs.iter().map(|v| &v.version).collect::<Vec<_>>(), "active": active }),
                    );
                }
                let vpc = b.parameters.get("VpcId").cloned().unwrap_or_default();
                rows.push(vec![b.name.clone(), vpc.clone(), b.status.as_str().to_string(), cells.join("  ")]);
                list.push(json!({ "name": b.name, "vpc_id": vpc, "status": b.status.as_str(), "roles": roles }));
            }
            let text = if rows.is_empty() {
                "no base stacks (create one with: tyrell stacks create -v VPC_ID NAME)".into()
            } else {
                table(&["NAME", "VPC", "STATUS", "VERSIONS (ACTIVE)"], &rows)
            };
            Printed::new(json!({ "stacks": list }), text)
        }
        StacksCmd::Describe { name } => {
            let s = e.base(&name).await?;
            let b = Base::from(&s);
            let mut pairs = next_steps(&b, &e.aws.region);
            let versions = e.swarm_versions(&name).await?;
            pairs.push((
                "versions".into(),
                if versions.is_empty() {
                    "none yet (e.g. tyrell bees create -a AMI_ID NAME)".into()
                } else {
                    versions
                        .iter()
                        .map(|v| format!("{} [{}]", v.name, v.tag(TAG_ROLE).unwrap_or("?")))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ));
            let mut j = serde_json::to_value(&b)?;
            j["versions"] = json!(versions.iter().map(|v| &v.name).collect::<Vec<_>>());
            Printed::new(j, key_values(&pairs))
        }
        StacksCmd::Remove { name, all } => {
            let removed = e.remove_base(&name, all).await?;
            Printed::new(json!({ "removed": removed }), format!("removed {}", removed.join(", ")))
        }
    })
}
