//! EC2: VPCs, subnets and images, read-only.

use aws_sdk_ec2::types::Filter;
use aws_sdk_ec2::Client;

use super::{describe, error_code, AwsError};

#[derive(Debug, Clone)]
pub struct Vpc {
    pub id: String,
    pub cidr: String,
}

#[derive(Debug, Clone)]
pub struct Subnet {
    pub id: String,
    pub az: String,
    pub cidr: String,
    /// `public` / `private` from the `tyrell:tier` tag, else guessed from whether the
    /// subnet gives instances public addresses.
    pub public: bool,
}

pub async fn vpc(ec2: &Client, id: &str) -> Result<Option<Vpc>, AwsError> {
    match ec2.describe_vpcs().vpc_ids(id).send().await {
        Ok(out) => Ok(out.vpcs().first().map(|v| Vpc {
            id: v.vpc_id().unwrap_or_default().into(),
            cidr: v.cidr_block().unwrap_or_default().into(),
        })),
        Err(e) if error_code(&e).is_some_and(|c| c.starts_with("InvalidVpcID")) => Ok(None),
        Err(e) => Err(describe(&format!("cannot read VPC {id}"), e)),
    }
}

pub async fn subnets(ec2: &Client, vpc_id: &str) -> Result<Vec<Subnet>, AwsError> {
    let out = ec2
        .describe_subnets()
        .filters(Filter::builder().name("vpc-id").values(vpc_id).build())
        .send()
        .await
        .map_err(|e| describe(&format!("cannot list the subnets of {vpc_id}"), e))?;
    let mut subnets: Vec<Subnet> = out
        .subnets()
        .iter()
        .map(|s| {
            let tier = s.tags().iter().find(|t| t.key() == Some("tyrell:tier")).and_then(|t| t.value());
            Subnet {
                id: s.subnet_id().unwrap_or_default().into(),
                az: s.availability_zone().unwrap_or_default().into(),
                cidr: s.cidr_block().unwrap_or_default().into(),
                public: match tier {
                    Some(t) => t == "public",
                    None => s.map_public_ip_on_launch().unwrap_or(false),
                },
            }
        })
        .collect();
    subnets.sort_by(|a, b| (a.az.as_str(), a.cidr.as_str()).cmp(&(b.az.as_str(), b.cidr.as_str())));
    Ok(subnets)
}

/// Whether an image with this id exists and can be launched by this account.
pub async fn image_exists(ec2: &Client, ami: &str) -> Result<bool, AwsError> {
    match ec2.describe_images().image_ids(ami).send().await {
        Ok(out) => Ok(out.images().iter().any(|i| i.image_id() == Some(ami))),
        Err(e) if error_code(&e).is_some_and(|c| c.starts_with("InvalidAMIID")) => Ok(false),
        Err(e) => Err(describe(&format!("cannot look up image {ami}"), e)),
    }
}
