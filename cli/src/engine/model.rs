//! The engine's shared views: what the listings show of networks, swarms (base stacks),
//! metrics boxes and role versions, and the key that names a version. Every view knows
//! the region it lives in. The kinds of stack (`base`, `fleet`, `metrics`, `network`)
//! build and read these; none of them imports another for its views.

use serde::Serialize;

use crate::aws::cfn::StackInfo;
pub use crate::aws::{Account, Region};
use crate::names::{secret_param, BROKER_PASSWORD, GRAFANA_PASSWORD, ROUTER_TOKEN};

/// What names a role version uniquely. Stack names are unique only per region, so two
/// regions may each run `swarm1`'s router version `v1`: they are two versions.
/// Displayed `swarm/region/role/version`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionKey {
    pub swarm: String,
    pub region: Region,
    pub role: String,
    pub version: String,
}

impl std::fmt::Display for VersionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}/{}", self.swarm, self.region, self.role, self.version)
    }
}

/// Comma-joined stack outputs (subnet ids) as a list; empty entries dropped.
pub fn split_list(s: Option<&str>) -> Vec<String> {
    s.unwrap_or_default().split(',').filter(|x| !x.is_empty()).map(str::to_string).collect()
}

/// A network stack (one VPC).
#[derive(Debug, Clone, Serialize)]
pub struct Network {
    pub name: String,
    /// The region its stack lives in.
    pub region: Region,
    pub status: String,
    pub vpc_id: String,
    pub cidr: String,
    pub public_subnets: Vec<String>,
    pub private_subnets: Vec<String>,
}

impl From<&StackInfo> for Network {
    fn from(s: &StackInfo) -> Network {
        Network {
            name: s.name.clone(),
            region: s.region.clone(),
            status: s.status.as_str().to_string(),
            vpc_id: s.output("VpcId").unwrap_or_default().into(),
            cidr: s.output("VpcCidr").or(s.parameters.get("Cidr").map(String::as_str)).unwrap_or_default().into(),
            public_subnets: split_list(s.output("PublicSubnetIds")),
            private_subnets: split_list(s.output("PrivateSubnetIds")),
        }
    }
}

/// The secrets a swarm's boxes read at boot, by SSM parameter name.
///
/// JSON (`stacks create`/`describe`): `[broker_password, router_token]`, the array it
/// has always been.
#[derive(Debug, Clone, PartialEq)]
pub struct Secrets {
    /// The MQTT broker's password (`/tyrell/<swarm>/broker-password`).
    pub broker_password: String,
    /// The router's API token (`/tyrell/<swarm>/router-token`).
    pub router_token: String,
}

impl Secrets {
    /// A swarm's secret parameter names.
    pub fn of(swarm: &str) -> Secrets {
        Secrets {
            broker_password: secret_param(swarm, BROKER_PASSWORD),
            router_token: secret_param(swarm, ROUTER_TOKEN),
        }
    }

    /// Both names, broker password first.
    pub fn names(&self) -> [String; 2] {
        [self.broker_password.clone(), self.router_token.clone()]
    }
}

impl Serialize for Secrets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

/// A swarm as listed: its base stack and, per role, its versions (oldest first).
pub struct Swarm {
    pub base: StackInfo,
    pub roles: Vec<(String, Vec<VersionInfo>)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Base {
    pub name: String,
    /// The region its stack lives in.
    pub region: Region,
    /// The account that owns it, when its stack's ARN says (always on AWS).
    pub account: Option<Account>,
    pub status: String,
    pub vpc_id: String,
    pub url: String,
    pub broker: String,
    pub queue_url: String,
    pub dead_letter_queue_url: String,
    pub bucket: String,
    pub secrets: Secrets,
    pub metrics_security_group: Option<String>,
}

impl From<&StackInfo> for Base {
    fn from(s: &StackInfo) -> Base {
        let o = |k: &str| s.output(k).unwrap_or_default().to_string();
        Base {
            name: s.name.clone(),
            region: s.region.clone(),
            account: s.account.clone(),
            status: s.status.as_str().to_string(),
            vpc_id: s.parameters.get("VpcId").cloned().unwrap_or_default(),
            url: o("AlbUrl"),
            broker: format!("{}:{}", o("BrokerHost"), o("BrokerPort")),
            queue_url: o("QueueUrl"),
            dead_letter_queue_url: o("DeadLetterQueueUrl"),
            bucket: o("BucketName"),
            secrets: Secrets::of(&s.name),
            metrics_security_group: s.parameters.get("MetricsSecurityGroupId").filter(|x| !x.is_empty()).cloned(),
        }
    }
}

/// A metrics box (InfluxDB + Grafana) stack.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsBox {
    pub name: String,
    /// The region its stack lives in.
    pub region: Region,
    pub status: String,
    pub vpc_id: String,
    pub instance_id: String,
    pub private_ip: String,
    pub security_group: String,
    pub grafana_url: String,
    pub influx_url: String,
    pub grafana_password_param: String,
}

impl From<&StackInfo> for MetricsBox {
    fn from(s: &StackInfo) -> MetricsBox {
        let o = |k: &str| s.output(k).unwrap_or_default().to_string();
        MetricsBox {
            name: s.name.clone(),
            region: s.region.clone(),
            status: s.status.as_str().to_string(),
            vpc_id: s.parameters.get("VpcId").cloned().unwrap_or_default(),
            instance_id: o("InstanceId"),
            private_ip: o("PrivateIp"),
            security_group: o("SecurityGroupId"),
            grafana_url: o("GrafanaUrl"),
            influx_url: o("InfluxUrl"),
            grafana_password_param: secret_param(&s.name, GRAFANA_PASSWORD),
        }
    }
}

/// One version of one role in one swarm, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub role: String,
    pub swarm: String,
    /// The region its stack lives in.
    pub region: Region,
    pub version: String,
    pub stack_name: String,
    pub status: String,
    pub ami: String,
    pub instance_type: String,
    pub desired: i32,
    pub in_service: usize,
    pub created: String,
    pub active: bool,
    /// Share of traffic in whole percent (ALB/NLB roles), or 100/0 for the active/inactive
    /// versions of the rest; the shares add up to 100 and a version with any traffic shows
    /// at least 1 ([`super::fleet::apportion`]).
    pub weight: i32,
    /// The weight the listener's default action gives this version's target group, as
    /// set (ALB/NLB roles; 0 when it is not among the targets), or 1/0 for the
    /// active/inactive versions of the rest. Decisions read this, never the percentage.
    #[serde(skip)]
    pub forward: i32,
    /// Share of traffic in tenths of a percent (the shares add up to 1000).
    #[serde(skip)]
    pub share_tenths: i32,
    /// The listener rules (other than the default action) that forward to this version,
    /// e.g. `rule 10: path /legacy/*`.
    #[serde(skip)]
    pub rules: Vec<String>,
    #[serde(skip)]
    pub stack: StackInfo,
}

impl VersionInfo {
    /// What names this version uniquely: (swarm, region, role, version).
    pub fn key(&self) -> VersionKey {
        VersionKey {
            swarm: self.swarm.clone(),
            region: self.region.clone(),
            role: self.role.clone(),
            version: self.version.clone(),
        }
    }

    /// Its schedule as the stack was given it (`ScaleUpCron`, `ScaleDownCron`,
    /// `ScaleUpSize`), whether or not it is on the group now; `None`: no schedule.
    pub fn schedule(&self) -> Option<(String, String, i32)> {
        let p = &self.stack.parameters;
        let up = p.get("ScaleUpCron").filter(|c| !c.is_empty())?;
        let down = p.get("ScaleDownCron").cloned().unwrap_or_default();
        let size = p.get("ScaleUpSize").and_then(|n| n.parse().ok()).unwrap_or(1);
        Some((up.clone(), down, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_is_keyed_by_swarm_region_role_and_version() {
        let eu: Region = "eu-west-1".parse().unwrap();
        let us: Region = "us-east-1".parse().unwrap();
        let key = |r: &Region| VersionKey {
            swarm: "sw".into(),
            region: r.clone(),
            role: "router".into(),
            version: "v1".into(),
        };
        assert_ne!(key(&eu), key(&us));
        assert_eq!(key(&eu).to_string(), "sw/eu-west-1/router/v1");
    }
}
