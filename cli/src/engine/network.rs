//! Networks: one stack per VPC.

use std::collections::BTreeMap;

use super::model::Network;
use super::{tags, validate, Engine, TAG_ROLE};
use crate::aws::cfn::{self, StackSpec};

pub const ROLE: &str = "network";

pub struct CreateNetwork {
    pub name: String,
    pub cidr: String,
    pub azs: u8,
    pub nat: bool,
}

impl Engine {
    pub async fn create_network(&mut self, req: &CreateNetwork) -> anyhow::Result<Network> {
        validate::name("network", &req.name)?;
        validate::vpc_cidr(&req.cidr)?;
        if !(2..=3).contains(&req.azs) {
            crate::refuse!(Invalid, "invalid --azs {}: a network spans 2 or 3 availability zones", req.azs);
        }
        self.ensure_free(&req.name).await?;
        let spec = StackSpec {
            name: req.name.clone(),
            template: self.lib.template(ROLE)?.to_string(),
            parameters: BTreeMap::from([
                ("Cidr".into(), req.cidr.clone()),
                ("AzCount".into(), req.azs.to_string()),
                ("NatGateway".into(), req.nat.to_string()),
            ]),
            tags: tags(ROLE, &req.name, None),
        };
        let s = self.create_stack(&spec).await?;
        Ok(Network::from(&s))
    }

    pub async fn networks(&self) -> anyhow::Result<Vec<Network>> {
        Ok(cfn::list_tyrell(&self.aws.cfn, Some(ROLE)).await?.iter().map(Network::from).collect())
    }

    pub async fn network(&self, name: &str) -> anyhow::Result<Network> {
        validate::name("network", name)?;
        Ok(Network::from(&self.existing(name, ROLE, "network").await?))
    }

    /// Removes a network; refuses while a base stack or metrics box lives in its VPC.
    pub async fn remove_network(&mut self, name: &str) -> anyhow::Result<Network> {
        validate::name("network", name)?;
        let stack = self.existing(name, ROLE, "network").await?;
        let net = Network::from(&stack);
        let users: Vec<String> = cfn::list_tyrell(&self.aws.cfn, None)
            .await?
            .into_iter()
            .filter(|s| s.tag(TAG_ROLE) != Some(ROLE) && s.parameters.get("VpcId") == Some(&net.vpc_id))
            .map(|s| format!("{} ({})", s.name, s.tag(TAG_ROLE).unwrap_or("?")))
            .collect();
        if !users.is_empty() {
            crate::refuse!(
                InUse,
                "network {name} is still used by {}: remove them first (tyrell stacks remove NAME --all, tyrell metrics remove NAME)",
                users.join(", ")
            );
        }
        self.delete_stack(&stack).await?;
        Ok(net)
    }
}
