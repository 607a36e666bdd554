//! CloudFormation stacks as plain data: read one or list tyrell's, create, delete.

use std::collections::BTreeMap;

pub use aws_sdk_cloudformation::types::StackStatus;
use aws_sdk_cloudformation::types::{Capability, OnFailure, Parameter, Tag};
use aws_sdk_cloudformation::Client;

use crate::aws::{arn_place, describe, Account, AwsError, Region};

/// A stack as tyrell sees it. Stack names are unique only per region and account, so a
/// stack is known by (`account`, `region`, `name`); `id` is its ARN.
#[derive(Debug, Clone)]
pub struct StackInfo {
    pub name: String,
    pub id: String,
    /// The region it lives in (from its ARN, else the client's).
    pub region: Region,
    /// The account that owns it (from its ARN), if the ARN says.
    pub account: Option<Account>,
    /// CloudFormation's status (the SDK enum; `as_str()` is AWS's spelling).
    pub status: StackStatus,
    pub reason: Option<String>,
    pub created: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, String>,
    pub parameters: BTreeMap<String, String>,
}

impl StackInfo {
    pub fn tag(&self, k: &str) -> Option<&str> {
        self.tags.get(k).map(String::as_str)
    }
    pub fn output(&self, k: &str) -> Option<&str> {
        self.outputs.get(k).map(String::as_str)
    }
}

/// The region a client talks to; an empty name only for a client built without one,
/// which [`crate::aws::Aws`] never makes.
fn client_region(cfn: &Client) -> Region {
    cfn.config().region().and_then(|r| r.as_ref().parse().ok()).unwrap_or_else(Region::unnamed)
}

fn to_info(s: &aws_sdk_cloudformation::types::Stack, region: &Region) -> StackInfo {
    let id = s.stack_id().unwrap_or_default().to_string();
    let (arn_region, account) = arn_place(&id);
    StackInfo {
        name: s.stack_name().unwrap_or_default().to_string(),
        region: arn_region.unwrap_or_else(|| region.clone()),
        account,
        id,
        status: s.stack_status().cloned().unwrap_or_else(|| StackStatus::from("")),
        reason: s.stack_status_reason().map(str::to_string),
        created: s.creation_time().map(|t| t.to_string()),
        tags: s
            .tags()
            .iter()
            .map(|t| (t.key().unwrap_or_default().into(), t.value().unwrap_or_default().into()))
            .collect(),
        outputs: s
            .outputs()
            .iter()
            .map(|o| (o.output_key().unwrap_or_default().into(), o.output_value().unwrap_or_default().into()))
            .collect(),
        parameters: s
            .parameters()
            .iter()
            .map(|p| (p.parameter_key().unwrap_or_default().into(), p.parameter_value().unwrap_or_default().into()))
            .collect(),
    }
}

/// One stack, or `None` when it does not exist (or is fully deleted).
pub async fn get(cfn: &Client, name: &str) -> Result<Option<StackInfo>, AwsError> {
    match cfn.describe_stacks().stack_name(name).send().await {
        Ok(out) => Ok(out
            .stacks()
            .first()
            .map(|st| to_info(st, &client_region(cfn)))
            .filter(|s| s.status != StackStatus::DeleteComplete)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(describe(&format!("cannot read stack {name}"), e)),
    }
}

/// Whether AWS answered a `ValidationError` whose message holds `what`.
fn says<R>(
    e: &aws_smithy_runtime_api::client::result::SdkError<
        impl std::error::Error + aws_smithy_types::error::metadata::ProvideErrorMetadata,
        R,
    >,
    what: &str,
) -> bool {
    match e {
        aws_smithy_runtime_api::client::result::SdkError::ServiceError(se) => {
            se.err().code() == Some("ValidationError") && se.err().message().is_some_and(|m| m.contains(what))
        }
        _ => false,
    }
}

fn is_missing<R>(
    e: &aws_smithy_runtime_api::client::result::SdkError<
        impl std::error::Error + aws_smithy_types::error::metadata::ProvideErrorMetadata,
        R,
    >,
) -> bool {
    match e {
        aws_smithy_runtime_api::client::result::SdkError::ServiceError(se) => {
            se.err().code() == Some("ValidationError")
                && se.err().message().is_some_and(|m| m.contains("does not exist"))
        }
        _ => false,
    }
}

/// Every live stack carrying tag `tyrell:role` (any value when `role` is `None`).
pub async fn list_tyrell(cfn: &Client, role: Option<&str>) -> Result<Vec<StackInfo>, AwsError> {
    let mut out = Vec::new();
    let region = client_region(cfn);
    let mut pages = cfn.describe_stacks().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| describe("cannot list CloudFormation stacks", e))?;
        for s in page.stacks() {
            let info = to_info(s, &region);
            if info.status == StackStatus::DeleteComplete {
                continue;
            }
            match (info.tag(crate::names::TAG_ROLE), role) {
                (Some(r), Some(want)) if r == want => out.push(info),
                (Some(_), None) => out.push(info),
                _ => {}
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The template body a stack was last created or updated with (`GetTemplate`, stage
/// `Original`), or `None` when the stack does not exist.
pub async fn template(cfn: &Client, name: &str) -> Result<Option<String>, AwsError> {
    match cfn.get_template().stack_name(name).send().await {
        Ok(out) => Ok(out.template_body().map(str::to_string)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(describe(&format!("cannot read the template of stack {name}"), e)),
    }
}

/// Starts a parameter update of a stack: its template as it is (`UsePreviousTemplate`),
/// the parameters in `set` to their new values, every other one of `keep` as it is.
/// Returns `false` when CloudFormation says there is nothing to update.
pub async fn update_parameters(
    cfn: &Client,
    name: &str,
    set: &BTreeMap<String, String>,
    keep: &[String],
) -> Result<bool, AwsError> {
    let mut p = params(set);
    p.extend(
        keep.iter()
            .filter(|k| !set.contains_key(*k))
            .map(|k| Parameter::builder().parameter_key(k).use_previous_value(true).build()),
    );
    match cfn
        .update_stack()
        .stack_name(name)
        .use_previous_template(true)
        .set_parameters(Some(p))
        .capabilities(Capability::CapabilityIam)
        .capabilities(Capability::CapabilityNamedIam)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if says(&e, "No updates are to be performed") => Ok(false),
        Err(e) => Err(describe(&format!("CloudFormation refused to update stack {name}"), e)),
    }
}

/// What to create: a rendered template, its parameters and tags.
#[derive(Debug, Clone, Default)]
pub struct StackSpec {
    pub name: String,
    pub template: String,
    pub parameters: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
}

fn params(p: &BTreeMap<String, String>) -> Vec<Parameter> {
    p.iter().map(|(k, v)| Parameter::builder().parameter_key(k).parameter_value(v).build()).collect()
}

/// Starts creating a stack. A failed creation deletes what it made (`OnFailure=DELETE`),
/// so a bad deploy never leaves half a stack behind; the waiter reports why it failed.
pub async fn create(cfn: &Client, spec: &StackSpec) -> Result<String, AwsError> {
    let out = cfn
        .create_stack()
        .stack_name(&spec.name)
        .template_body(&spec.template)
        .set_parameters(Some(params(&spec.parameters)))
        .set_tags(Some(spec.tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()))
        .capabilities(Capability::CapabilityIam)
        .capabilities(Capability::CapabilityNamedIam)
        .on_failure(OnFailure::Delete)
        .send()
        .await
        .map_err(|e| describe(&format!("CloudFormation refused to create stack {}", spec.name), e))?;
    Ok(out.stack_id().unwrap_or(&spec.name).to_string())
}

pub async fn delete(cfn: &Client, name: &str) -> Result<(), AwsError> {
    cfn.delete_stack()
        .stack_name(name)
        .send()
        .await
        .map_err(|e| describe(&format!("CloudFormation refused to delete stack {name}"), e))?;
    Ok(())
}
