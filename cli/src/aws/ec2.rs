//! EC2: VPCs and subnets (read-only), and this account's images (AMIs).

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, Tag};
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
    // Every page: a VPC may have more subnets than one answer holds.
    let mut all = Vec::new();
    let mut pages =
        ec2.describe_subnets().filters(Filter::builder().name("vpc-id").values(vpc_id).build()).into_paginator().send();
    while let Some(page) = pages.next().await {
        let out = page.map_err(|e| describe(&format!("cannot list the subnets of {vpc_id}"), e))?;
        all.extend(out.subnets().iter().cloned());
    }
    let mut subnets: Vec<Subnet> = all
        .iter()
        .map(|s| {
            let tier = s.tags().iter().find(|t| t.key() == Some(crate::names::TAG_TIER)).and_then(|t| t.value());
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

/// An image (AMI) owned by this account.
#[derive(Debug, Clone)]
pub struct Image {
    pub id: String,
    /// The region it lives in (AMIs are regional): the client's.
    pub region: super::Region,
    pub name: String,
    pub state: String,
    /// ISO 8601, e.g. `2026-11-23T10:15:00.000Z` (sorts as time).
    pub created: String,
    pub tags: BTreeMap<String, String>,
    /// EBS snapshots behind the image (deleted with it).
    pub snapshots: Vec<String>,
}

fn to_image(i: &aws_sdk_ec2::types::Image, region: &super::Region) -> Image {
    Image {
        id: i.image_id().unwrap_or_default().into(),
        region: region.clone(),
        name: i.name().unwrap_or_default().into(),
        state: i.state().map(|s| s.as_str().to_string()).unwrap_or_default(),
        created: i.creation_date().unwrap_or_default().into(),
        tags: i
            .tags()
            .iter()
            .map(|t| (t.key().unwrap_or_default().into(), t.value().unwrap_or_default().into()))
            .collect(),
        snapshots: i
            .block_device_mappings()
            .iter()
            .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
            .collect(),
    }
}

/// The region a client talks to (see [`super::Region`]).
fn client_region(ec2: &Client) -> super::Region {
    ec2.config().region().and_then(|r| r.as_ref().parse().ok()).unwrap_or_else(super::Region::unnamed)
}

/// Images owned by this account (`Owners=self`) carrying every given tag with its value.
pub async fn own_images(ec2: &Client, tags: &[(&str, &str)]) -> Result<Vec<Image>, AwsError> {
    let mut req = ec2.describe_images().owners("self");
    for (k, v) in tags {
        req = req.filters(Filter::builder().name(format!("tag:{k}")).values(*v).build());
    }
    // Every page (DescribeImages pages once MaxResults is set, as the paginator does).
    let region = client_region(ec2);
    let mut images = Vec::new();
    let mut pages = req.into_paginator().send();
    while let Some(page) = pages.next().await {
        let out = page.map_err(|e| describe("cannot list this account's images", e))?;
        images.extend(out.images().iter().map(|i| to_image(i, &region)));
    }
    // Filter again here: the tag filters are an optimisation, not a contract.
    Ok(images
        .into_iter()
        .filter(|i| tags.iter().all(|(k, v)| i.tags.get(*k).map(String::as_str) == Some(*v)))
        .collect())
}

/// One image owned by this account, or `None`.
pub async fn own_image(ec2: &Client, ami: &str) -> Result<Option<Image>, AwsError> {
    match ec2.describe_images().owners("self").image_ids(ami).send().await {
        Ok(out) => Ok(out.images().iter().map(|i| to_image(i, &client_region(ec2))).find(|i| i.id == ami)),
        Err(e) if error_code(&e).is_some_and(|c| c.starts_with("InvalidAMIID")) => Ok(None),
        Err(e) => Err(describe(&format!("cannot look up image {ami}"), e)),
    }
}

/// Adds (or overwrites) tags on a resource.
pub async fn tag(ec2: &Client, id: &str, tags: &BTreeMap<String, String>) -> Result<(), AwsError> {
    let tags: Vec<Tag> = tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
    ec2.create_tags()
        .resources(id)
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| describe(&format!("cannot tag {id}"), e))?;
    Ok(())
}

/// Deregisters an image, then deletes its snapshots (which would otherwise go on costing).
pub async fn deregister(ec2: &Client, image: &Image) -> Result<(), AwsError> {
    ec2.deregister_image()
        .image_id(&image.id)
        .send()
        .await
        .map_err(|e| describe(&format!("cannot deregister image {}", image.id), e))?;
    for s in &image.snapshots {
        ec2.delete_snapshot()
            .snapshot_id(s)
            .send()
            .await
            .map_err(|e| describe(&format!("deregistered image {} but cannot delete its snapshot {s}", image.id), e))?;
    }
    Ok(())
}

/// Requests a VPC peering from `vpc` (this client's region) to `peer_vpc` in `peer_region`
/// (same account), tagged with `tags`; returns its id (`pcx-...`). It waits for
/// [`accept_peering`] in the peer region.
pub async fn request_peering(
    ec2: &Client,
    vpc: &str,
    peer_vpc: &str,
    peer_region: &str,
    tags: &BTreeMap<String, String>,
) -> Result<String, AwsError> {
    let spec = aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(aws_sdk_ec2::types::ResourceType::VpcPeeringConnection)
        .set_tags(Some(tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()))
        .build();
    let out = ec2
        .create_vpc_peering_connection()
        .vpc_id(vpc)
        .peer_vpc_id(peer_vpc)
        .peer_region(peer_region)
        .tag_specifications(spec)
        .send()
        .await
        .map_err(|e| describe(&format!("cannot request a VPC peering from {vpc} to {peer_vpc} in {peer_region}"), e))?;
    Ok(out.vpc_peering_connection().and_then(|p| p.vpc_peering_connection_id()).unwrap_or_default().to_string())
}

/// Accepts a VPC peering; `ec2` must be the accepter's (the peer VPC's) region.
pub async fn accept_peering(ec2: &Client, id: &str) -> Result<(), AwsError> {
    ec2.accept_vpc_peering_connection()
        .vpc_peering_connection_id(id)
        .send()
        .await
        .map_err(|e| describe(&format!("cannot accept VPC peering {id}"), e))?;
    Ok(())
}

/// Deletes a VPC peering; one already gone is fine.
pub async fn delete_peering(ec2: &Client, id: &str) -> Result<(), AwsError> {
    match ec2.delete_vpc_peering_connection().vpc_peering_connection_id(id).send().await {
        Ok(_) => Ok(()),
        Err(e) if error_code(&e).is_some_and(|c| c.starts_with("InvalidVpcPeeringConnectionID")) => Ok(()),
        Err(e) => Err(describe(&format!("cannot delete VPC peering {id}"), e)),
    }
}
