//! Bee regions (docs/MULTI-REGION.md 6): a swarm's bee fleets in a region other than its
//! home region. Adding one makes, in order, a VPC peering from the bee region's VPC to the
//! home VPC (requested there, accepted at home: the emulator's CloudFormation cannot make a
//! cross-region peering, see the module's tests and MULTI-REGION.md 9), the bee-region
//! stack there (`roles/bee-region`: the route home, the bees' security group, an instance
//! role reading the home broker password) and the bee-link stack at home (`roles/bee-link`:
//! the route back and the broker NLB's one rule for that region's private /17). Removing
//! undoes it in reverse, refused while bee versions live there.
//!
//! Every function takes the home region's engine (`self`) and the bee region's (`there`),
//! both from one `Clouds`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Serialize;

use super::model::{Network, Region};
use super::{admin_cidrs_param, tags, validate, Engine, TAG_ROLE, TAG_STACK};
use crate::aws::cfn::{self, StackInfo, StackSpec};
use crate::aws::ec2;
use crate::names::{bee_link_stack, bee_region_stack, TAG_BEE_REGION, TAG_HOME_REGION};

/// The tag role of a bee-region stack.
pub const ROLE: &str = "bee-region";
/// The tag role of a bee-link stack.
pub const LINK_ROLE: &str = "bee-link";

/// A swarm's bee region as listed: where it is, its network and the peering to home.
#[derive(Debug, Clone, Serialize)]
pub struct BeeRegion {
    pub swarm: String,
    /// The bee region.
    pub region: Region,
    /// The swarm's home region.
    pub home_region: String,
    pub status: String,
    pub vpc_id: String,
    pub vpc_cidr: String,
    pub peering: String,
    /// Where its bees connect: `host:port`, TLS.
    pub broker: String,
}

impl From<&StackInfo> for BeeRegion {
    fn from(s: &StackInfo) -> BeeRegion {
        let o = |k: &str| s.output(k).unwrap_or_default().to_string();
        BeeRegion {
            swarm: s.tag(TAG_STACK).unwrap_or_default().to_string(),
            region: s.region.clone(),
            home_region: s.tag(TAG_HOME_REGION).unwrap_or_default().to_string(),
            status: s.status.as_str().to_string(),
            vpc_id: o("VpcId"),
            vpc_cidr: o("VpcCidr"),
            peering: o("PeeringConnectionId"),
            broker: format!("{}:{}", o("BrokerHost"), o("BrokerPort")),
        }
    }
}

/// Whether two IPv4 CIDR blocks share an address. Errors: either is not a CIDR.
pub fn overlap(a: &str, b: &str) -> Result<bool, validate::Invalid> {
    let range = |c: &str| -> Result<(u32, u32), validate::Invalid> {
        let len = validate::cidr(c)?;
        let ip: Ipv4Addr = c.split('/').next().unwrap_or_default().parse().map_err(|_| validate::Invalid(c.into()))?;
        let start = u32::from(ip);
        let size = if len == 0 { u32::MAX } else { (1u32 << (32 - len)) - 1 };
        Ok((start, start + size))
    };
    let (a0, a1) = range(a)?;
    let (b0, b1) = range(b)?;
    Ok(a0 <= b1 && b0 <= a1)
}

impl Engine {
    /// Adds bee region `there` to swarm `swarm` (whose base stack is in this engine's
    /// region) on network stack `network` of that region. Refused before any change when:
    /// the regions are the same; the swarm has no base stack here or its broker has no TLS
    /// (`BrokerTls` not `true`, made before TLS was the default: bees from another region
    /// connect over TLS only); the
    /// network is missing, has no NAT gateway or lacks the route-table outputs (made before
    /// them); its CIDR overlaps the home VPC or another bee region of the swarm; the
    /// region is already added. A failure after the peering removes what it made.
    pub async fn add_bee_region(
        &mut self,
        there: &mut Engine,
        swarm: &str,
        network: &str,
        allow_cidrs: &[String],
    ) -> anyhow::Result<BeeRegion> {
        validate::name("swarm", swarm)?;
        validate::name("network", network)?;
        for c in allow_cidrs {
            validate::admin_cidr(c)?;
        }
        let admin = admin_cidrs_param(allow_cidrs)?;
        let (home, r) = (self.region().clone(), there.region().clone());
        if home == r {
            crate::refuse!(
                Invalid,
                "{r} is swarm {swarm}'s home region: its bees there use the base stack; a bee region is another region"
            );
        }
        let base = self.base(swarm).await?;
        if base.output("BrokerTls") != Some("true") {
            crate::refuse!(
                Invalid,
                "swarm {swarm}'s broker has no TLS listener (its base stack was made by a tyrell older than TLS by default, without --broker-certificate-arn): bees in another region connect over TLS only; re-create the swarm"
            );
        }
        let o = |k: &str| -> anyhow::Result<String> {
            Ok(base.output(k).ok_or_else(|| anyhow::anyhow!("base stack {swarm} has no output {k}"))?.to_string())
        };
        let (home_vpc, home_cidr) = (base.parameters.get("VpcId").cloned().unwrap_or_default(), o("VpcCidr")?);
        let home_net = self
            .networks_stacks()
            .await?
            .into_iter()
            .find(|s| s.output("VpcId") == Some(home_vpc.as_str()))
            .ok_or_else(|| {
                anyhow::anyhow!("swarm {swarm}'s VPC {home_vpc} is not a tyrell network in {home}: the home side of the peering needs its route table")
            })?;
        let need = |s: &StackInfo, k: &str| -> anyhow::Result<String> {
            match s.output(k) {
                Some(v) => Ok(v.to_string()),
                None => crate::refuse!(
                    Invalid,
                    "network {} in {} has no output {k} (made by an older tyrell): re-create it to peer it",
                    s.name,
                    s.region
                ),
            }
        };
        let home_rtb = need(&home_net, "PrivateRouteTableId")?;
        let home_private = need(&home_net, "PrivateCidr")?;

        let net = there.existing(network, super::network::ROLE, "network").await?;
        let view = Network::from(&net);
        if net.parameters.get("NatGateway").map(String::as_str) != Some("true") {
            crate::refuse!(
                Invalid,
                "network {network} in {r} has no NAT gateway: bees there need one for the pings and AWS APIs (tyrell network create --nat-gateway true)"
            );
        }
        let (rtb, private) = (need(&net, "PrivateRouteTableId")?, need(&net, "PrivateCidr")?);
        if overlap(&view.cidr, &home_cidr)? {
            crate::refuse!(Invalid, "network {network} ({}) overlaps swarm {swarm}'s home VPC ({home_cidr}): peered VPCs need distinct ranges, e.g. 10.N.0.0/16 per region", view.cidr);
        }
        for link in self.bee_links(swarm).await? {
            let other = link.output("BeeVpcCidr").unwrap_or_default();
            if link.tag(TAG_BEE_REGION) == Some(r.to_string().as_str()) {
                crate::refuse!(Exists, "swarm {swarm} already has bee region {r} (stack {})", link.name);
            }
            if !other.is_empty() && overlap(&view.cidr, other)? {
                crate::refuse!(
                    Invalid,
                    "network {network} ({}) overlaps the VPC of swarm {swarm}'s bee region {} ({other})",
                    view.cidr,
                    link.tag(TAG_BEE_REGION).unwrap_or("?")
                );
            }
        }
        let (region_name, link_name) = (bee_region_stack(swarm), bee_link_stack(swarm, &r.to_string()));
        there.ensure_free(&region_name).await?;
        self.ensure_free(&link_name).await?;

        let mut region_tags = tags(ROLE, swarm, None);
        region_tags.insert(TAG_HOME_REGION.into(), home.to_string());
        let mut link_tags = tags(LINK_ROLE, swarm, None);
        link_tags.insert(TAG_BEE_REGION.into(), r.to_string());
        let region_spec = |pcx: &str| StackSpec {
            name: region_name.clone(),
            template: String::new(),
            parameters: BTreeMap::from([
                ("Swarm".into(), swarm.to_string()),
                ("HomeRegion".into(), home.to_string()),
                ("HomeVpcCidr".into(), home_cidr.clone()),
                ("HomePrivateCidr".into(), home_private.clone()),
                ("VpcId".into(), view.vpc_id.clone()),
                ("VpcCidr".into(), view.cidr.clone()),
                ("PrivateRouteTableId".into(), rtb.clone()),
                ("PrivateSubnetIds".into(), view.private_subnets.join(",")),
                ("PeeringConnectionId".into(), pcx.to_string()),
                ("BrokerPasswordParamArn".into(), base.output("BrokerPasswordParamArn").unwrap_or_default().into()),
                // A base stack made before BrokerCaParamArn (its TLS by the NLB, checked
                // above): the bees do not read it; the password's ARN keeps the pattern.
                (
                    "BrokerCaParamArn".into(),
                    base.output("BrokerCaParamArn")
                        .or(base.output("BrokerPasswordParamArn"))
                        .unwrap_or_default()
                        .into(),
                ),
                ("BrokerTlsBy".into(), base.output("BrokerTlsBy").unwrap_or("nlb").into()),
                ("BrokerHost".into(), base.output("BrokerHost").unwrap_or_default().into()),
                ("BrokerPort".into(), base.output("BrokerPort").unwrap_or_default().into()),
                ("AdminCidrs".into(), admin.clone()),
            ]),
            tags: region_tags.clone(),
        };
        let mut check = region_spec("pcx-0");
        check.template = there.lib.template(ROLE)?.to_string();
        super::limits::check_stack(&check)?;

        there.report.step(&format!("requesting a VPC peering from {} ({r}) to {home_vpc} ({home})", view.vpc_id));
        let pcx =
            ec2::request_peering(&there.aws.ec2, &view.vpc_id, &home_vpc, &home.to_string(), &region_tags).await?;
        let made = async {
            self.report.step(&format!("accepting VPC peering {pcx} in {home}"));
            ec2::accept_peering(&self.aws.ec2, &pcx).await?;
            let mut spec = region_spec(&pcx);
            spec.template = there.lib.template(ROLE)?.to_string();
            let stack = there.create_stack(&spec).await?;
            let link = StackSpec {
                name: link_name.clone(),
                template: self.lib.template(LINK_ROLE)?.to_string(),
                parameters: BTreeMap::from([
                    ("HomePrivateRouteTableId".into(), home_rtb.clone()),
                    ("PeeringConnectionId".into(), pcx.clone()),
                    ("BeeVpcCidr".into(), view.cidr.clone()),
                    ("BeePrivateCidr".into(), private.clone()),
                    ("NlbSecurityGroupId".into(), o("NlbSecurityGroupId")?),
                ]),
                tags: link_tags.clone(),
            };
            if let Err(e) = self.create_stack(&link).await {
                let _ = there.delete_stack(&stack).await;
                return Err(e);
            }
            Ok(stack)
        }
        .await;
        match made {
            Ok(stack) => Ok(BeeRegion::from(&stack)),
            Err(e) => {
                // Nothing half-made: the peering goes with the stacks that failed.
                let _ = ec2::delete_peering(&there.aws.ec2, &pcx).await;
                Err(e)
            }
        }
    }

    /// Removes bee region `there` of swarm `swarm`: its link stack here, its bee-region
    /// stack there, then the peering. Refused while bee versions of the swarm live there.
    pub async fn remove_bee_region(&mut self, there: &mut Engine, swarm: &str) -> anyhow::Result<Vec<String>> {
        validate::name("swarm", swarm)?;
        let r = there.region().clone();
        let region =
            there.existing(&bee_region_stack(swarm), ROLE, &format!("bee region of swarm {swarm} in {r}")).await?;
        let versions: Vec<String> = there.swarm_versions(swarm).await?.into_iter().map(|s| s.name).collect();
        if !versions.is_empty() {
            crate::refuse!(
                InUse,
                "swarm {swarm}'s bee region {r} still has bee version(s) {}: remove them first (tyrell bees remove --region {r})",
                versions.join(", ")
            );
        }
        let mut removed = Vec::new();
        if let Some(link) = cfn::get(&self.aws.cfn, &bee_link_stack(swarm, &r.to_string())).await? {
            self.delete_stack(&link).await?;
            removed.push(format!("{} ({})", link.name, link.region));
        }
        let pcx = region.output("PeeringConnectionId").map(str::to_string);
        there.delete_stack(&region).await?;
        removed.push(format!("{} ({r})", region.name));
        if let Some(pcx) = pcx {
            there.report.step(&format!("deleting VPC peering {pcx}"));
            ec2::delete_peering(&there.aws.ec2, &pcx).await?;
            removed.push(pcx);
        }
        Ok(removed)
    }

    /// The swarm's bee-link stacks in this (home) region, one per bee region.
    pub async fn bee_links(&self, swarm: &str) -> anyhow::Result<Vec<StackInfo>> {
        Ok(cfn::list_tyrell(&self.aws.cfn, Some(LINK_ROLE))
            .await?
            .into_iter()
            .filter(|s| s.tag(TAG_STACK) == Some(swarm))
            .collect())
    }

    /// The versions of role `m` (of swarm `swarm`, or of every swarm) in this region and in
    /// every bee region of the swarms whose bee-link stacks are here, oldest first per
    /// region, this region's first. Each version carries its region. A bee region whose
    /// stacks cannot be read fails the listing (no silent gaps).
    pub async fn versions_everywhere(
        &self,
        m: &super::library::Manifest,
        swarm: Option<&str>,
    ) -> anyhow::Result<Vec<super::model::VersionInfo>> {
        let mut all = self.versions(m, swarm).await?;
        let links: Vec<StackInfo> = cfn::list_tyrell(&self.aws.cfn, Some(LINK_ROLE))
            .await?
            .into_iter()
            .filter(|s| swarm.is_none_or(|w| s.tag(TAG_STACK) == Some(w)))
            .collect();
        let mut regions: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for l in &links {
            if let (Some(r), Some(w)) = (l.tag(TAG_BEE_REGION), l.tag(TAG_STACK)) {
                regions.entry(r.to_string()).or_default().push(w.to_string());
            }
        }
        for (r, swarms) in regions {
            let region: Region = r.parse().map_err(|e| anyhow::anyhow!("bee-link stack names region {r:?}: {e}"))?;
            let there = self.elsewhere(&region, Box::new(Quiet));
            all.extend(there.versions(m, swarm).await?.into_iter().filter(|v| swarms.contains(&v.swarm)));
        }
        Ok(all)
    }

    /// What a fleet of swarm `swarm` is deployed from in this region: its base stack, or
    /// else (a bee region) its bee-region stack when that carries the role's security
    /// group output. Errors as [`Engine::base`] when neither exists.
    pub async fn fleet_home(&self, swarm: &str, security_group_output: &str) -> anyhow::Result<StackInfo> {
        validate::name("swarm", swarm)?;
        if cfn::get(&self.aws.cfn, swarm).await?.is_none() {
            if let Some(s) = cfn::get(&self.aws.cfn, &bee_region_stack(swarm)).await? {
                if s.tag(TAG_ROLE) == Some(ROLE) && s.output(security_group_output).is_some() {
                    return Ok(s);
                }
            }
        }
        self.base(swarm).await
    }

    async fn networks_stacks(&self) -> anyhow::Result<Vec<StackInfo>> {
        Ok(cfn::list_tyrell(&self.aws.cfn, Some(super::network::ROLE)).await?)
    }
}

/// A reporter for read-only work in another region: it has nothing to report.
struct Quiet;

impl crate::aws::cfn::Progress for Quiet {
    fn event(&mut self, _: &str, _: &crate::aws::cfn::Event) {}
    fn status(&mut self, _: &str, _: &str, _: std::time::Duration) {}
}

impl super::Reporter for Quiet {
    fn step(&mut self, _: &str) {}
}

#[cfg(test)]
mod tests {
    use super::overlap;

    #[test]
    fn cidr_overlap() {
        assert!(overlap("10.0.0.0/16", "10.0.128.0/17").unwrap());
        assert!(!overlap("10.0.0.0/16", "10.1.0.0/16").unwrap());
        assert!(overlap("10.0.0.0/8", "10.200.0.0/16").unwrap());
        assert!(!overlap("10.1.0.0/16", "10.2.0.0/16").unwrap());
        assert!(overlap("0.0.0.0/0", "192.168.0.0/16").unwrap());
        assert!(overlap("10.0.0.0/x", "10.0.0.0/16").is_err());
    }
}
