//! Auto Scaling: groups and their instances, and the tag that marks a role's active
//! version for roles that take no inbound traffic.

use std::collections::BTreeMap;

pub use aws_sdk_autoscaling::types::LifecycleState;
use aws_sdk_autoscaling::types::Tag;
use aws_sdk_autoscaling::Client;

use super::{describe, AwsError};

#[derive(Debug, Clone)]
pub struct Group {
    pub desired: i32,
    pub max: i32,
    pub instances: Vec<Instance>,
    pub tags: BTreeMap<String, String>,
}

/// Auto Scaling's health status of a healthy instance (the API's `HealthStatus` is a
/// plain string: `Healthy` or `Unhealthy`).
pub const HEALTHY: &str = "Healthy";

#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    /// `InService`, `Pending`, `Terminating`, ... (the SDK enum).
    pub lifecycle: LifecycleState,
    /// `Healthy` / `Unhealthy`.
    pub health: String,
}

impl Group {
    pub fn in_service(&self) -> usize {
        self.instances.iter().filter(|i| i.lifecycle == LifecycleState::InService && i.health == HEALTHY).count()
    }
}

pub async fn group(asg: &Client, name: &str) -> Result<Option<Group>, AwsError> {
    Ok(groups(asg, &[name.to_string()]).await?.remove(name))
}

/// The most group names one DescribeAutoScalingGroups call takes (its `MaxRecords`
/// limit is 100; 50 keeps each answer to one page in practice).
const NAMES_PER_CALL: usize = 50;

/// Several groups by name, in as few calls as the API allows (50 names a call, every
/// page read); groups that do not exist are absent from the map.
pub async fn groups(asg: &Client, names: &[String]) -> Result<BTreeMap<String, Group>, AwsError> {
    let mut found = BTreeMap::new();
    for chunk in names.chunks(NAMES_PER_CALL) {
        let mut pages = asg
            .describe_auto_scaling_groups()
            .set_auto_scaling_group_names(Some(chunk.to_vec()))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let out =
                page.map_err(|e| describe(&format!("cannot read Auto Scaling group(s) {}", chunk.join(", ")), e))?;
            for g in out.auto_scaling_groups() {
                found.insert(g.auto_scaling_group_name().unwrap_or_default().to_string(), to_group(g));
            }
        }
    }
    Ok(found)
}

fn to_group(g: &aws_sdk_autoscaling::types::AutoScalingGroup) -> Group {
    Group {
        desired: g.desired_capacity().unwrap_or_default(),
        max: g.max_size().unwrap_or_default(),
        instances: g
            .instances()
            .iter()
            .map(|i| Instance {
                id: i.instance_id().unwrap_or_default().into(),
                lifecycle: i.lifecycle_state().cloned().unwrap_or_else(|| LifecycleState::from("")),
                health: i.health_status().unwrap_or_default().into(),
            })
            .collect(),
        tags: g
            .tags()
            .iter()
            .map(|t| (t.key().unwrap_or_default().into(), t.value().unwrap_or_default().into()))
            .collect(),
    }
}

/// Sets (or replaces) one tag on a group, not propagated to instances.
pub async fn set_tag(asg: &Client, group: &str, key: &str, value: &str) -> Result<(), AwsError> {
    asg.create_or_update_tags()
        .tags(
            Tag::builder()
                .resource_id(group)
                .resource_type("auto-scaling-group")
                .key(key)
                .value(value)
                .propagate_at_launch(false)
                .build(),
        )
        .send()
        .await
        .map_err(|e| describe(&format!("cannot tag Auto Scaling group {group}"), e))?;
    Ok(())
}

/// Sets a group's desired capacity, raising its maximum when needed.
pub async fn set_capacity(asg: &Client, group: &str, desired: i32, max: i32) -> Result<(), AwsError> {
    asg.update_auto_scaling_group()
        .auto_scaling_group_name(group)
        .desired_capacity(desired)
        .max_size(max)
        .send()
        .await
        .map_err(|e| describe(&format!("cannot resize Auto Scaling group {group}"), e))?;
    Ok(())
}

/// One scheduled action of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct Scheduled {
    pub name: String,
    /// Cron (UTC unless `time_zone` says otherwise).
    pub recurrence: String,
    pub desired: Option<i32>,
}

/// A group's scheduled actions (every page read).
pub async fn scheduled_actions(asg: &Client, group: &str) -> Result<Vec<Scheduled>, AwsError> {
    let mut pages = asg.describe_scheduled_actions().auto_scaling_group_name(group).into_paginator().send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        let out = page.map_err(|e| describe(&format!("cannot read the scheduled actions of {group}"), e))?;
        for a in out.scheduled_update_group_actions() {
            found.push(Scheduled {
                name: a.scheduled_action_name().unwrap_or_default().to_string(),
                recurrence: a.recurrence().unwrap_or_default().to_string(),
                desired: a.desired_capacity(),
            });
        }
    }
    Ok(found)
}

/// Puts (creates or replaces) a recurring scheduled action setting a group's desired capacity.
pub async fn put_scheduled_action(
    asg: &Client,
    group: &str,
    name: &str,
    recurrence: &str,
    desired: i32,
) -> Result<(), AwsError> {
    asg.put_scheduled_update_group_action()
        .auto_scaling_group_name(group)
        .scheduled_action_name(name)
        .recurrence(recurrence)
        .time_zone("Etc/UTC")
        .desired_capacity(desired)
        .send()
        .await
        .map_err(|e| describe(&format!("cannot schedule {name} on {group}"), e))?;
    Ok(())
}

/// Deletes one scheduled action of a group.
pub async fn delete_scheduled_action(asg: &Client, group: &str, name: &str) -> Result<(), AwsError> {
    asg.delete_scheduled_action()
        .auto_scaling_group_name(group)
        .scheduled_action_name(name)
        .send()
        .await
        .map_err(|e| describe(&format!("cannot delete the scheduled action {name} of {group}"), e))?;
    Ok(())
}
