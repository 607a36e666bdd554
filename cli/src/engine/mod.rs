//! The deployer's logic, over the role definitions and a few domain types. Talks to AWS
//! only through `crate::aws`; prints nothing itself (progress goes to a [`Reporter`]).

pub mod base;
pub mod bee_region;
pub mod builds;
pub mod error;
pub mod fleet;
pub mod library;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod network;
pub mod plan;
pub mod render;
pub mod traffic;
pub mod validate;
pub mod values;

use crate::aws::cfn::{self, Op, StackInfo, StackSpec, WaitOptions};
use crate::aws::{Aws, Clouds, Region};
use library::Library;

pub use crate::names::{tags, TAG_ACTIVE, TAG_BUILT_BY, TAG_ROLE, TAG_STACK, TAG_VERSION};

/// Receives progress: stack events and status (through [`cfn::Progress`]) and steps.
pub trait Reporter: cfn::Progress + Send {
    /// One line about what tyrell is doing now.
    fn step(&mut self, msg: &str);

    /// Something the operator must not miss (an insecure choice, say): shown louder than
    /// a step. The default shows it as a step beginning `WARNING:`.
    fn warn(&mut self, msg: &str) {
        self.step(&format!("WARNING: {msg}"));
    }
}

/// The deployer, working in one region: `aws` is that region's client set (from
/// [`Clouds::region`]; an engine per region shares one cache of clients).
pub struct Engine {
    pub aws: Aws,
    pub lib: Library,
    pub wait: WaitOptions,
    pub report: Box<dyn Reporter>,
    /// The configuration it came from, for engines in other regions ([`Engine::elsewhere`]).
    clouds: Clouds,
}

/// Pads admin CIDRs to the fixed four entries the templates take.
pub fn admin_cidrs_param(cidrs: &[String]) -> anyhow::Result<String> {
    if cidrs.len() > 4 {
        crate::refuse!(Invalid, "at most 4 --allow-cidr blocks are supported, got {}", cidrs.len());
    }
    let mut v = cidrs.to_vec();
    v.resize(4, String::new());
    Ok(v.join(","))
}

impl Engine {
    /// An engine working in `region`, with that region's clients from `clouds`.
    pub fn new(clouds: &Clouds, region: &Region, lib: Library, wait: WaitOptions, report: Box<dyn Reporter>) -> Engine {
        Engine { aws: clouds.region(region), lib, wait, report, clouds: clouds.clone() }
    }

    /// An engine in another region from the same configuration (one client cache, one
    /// call count, one retry budget), reporting to `report`.
    pub fn elsewhere(&self, region: &Region, report: Box<dyn Reporter>) -> Engine {
        Engine::new(&self.clouds, region, self.lib.clone(), self.wait.clone(), report)
    }

    /// The region this engine works in; every stack it lists carries it.
    pub fn region(&self) -> &Region {
        &self.aws.region
    }

    /// Creates a stack and waits for it, reporting progress; returns it complete.
    ///
    /// The spec is checked against its template's parameter constraints and
    /// CloudFormation's quotas first ([`limits::check_stack`]); callers that write
    /// anything before this (secrets) check it themselves before writing.
    pub async fn create_stack(&mut self, spec: &StackSpec) -> anyhow::Result<StackInfo> {
        limits::check_stack(spec)?;
        self.report.step(&format!("creating stack {}", spec.name));
        let id = cfn::create(&self.aws.cfn, spec).await?;
        let done = cfn::wait(&self.aws.cfn, &id, &spec.name, Op::Create, &self.wait, self.report.as_mut()).await?;
        done.ok_or_else(|| {
            crate::aws::AwsError::Api(format!("stack {} vanished after it was created", spec.name)).into()
        })
    }

    /// Deletes a stack and waits until it is gone.
    pub async fn delete_stack(&mut self, stack: &StackInfo) -> anyhow::Result<()> {
        self.report.step(&format!("removing stack {}", stack.name));
        cfn::delete(&self.aws.cfn, &stack.name).await?;
        cfn::wait(&self.aws.cfn, &stack.id, &stack.name, Op::Delete, &self.wait, self.report.as_mut()).await?;
        self.forget_reports(std::slice::from_ref(stack)).await
    }

    /// Deletes several stacks at once and waits for all of them (in parallel in AWS).
    pub async fn delete_stacks(&mut self, stacks: &[StackInfo]) -> anyhow::Result<()> {
        for s in stacks {
            self.report.step(&format!("removing stack {}", s.name));
            cfn::delete(&self.aws.cfn, &s.name).await?;
        }
        for s in stacks {
            cfn::wait(&self.aws.cfn, &s.id, &s.name, Op::Delete, &self.wait, self.report.as_mut()).await?;
        }
        self.forget_reports(stacks).await
    }

    /// Deletes what role versions' boxes reported ([`crate::names::state_param`]): it goes
    /// with the version.
    async fn forget_reports(&self, stacks: &[StackInfo]) -> anyhow::Result<()> {
        let reports: Vec<String> = stacks
            .iter()
            .filter_map(|s| Some(crate::names::state_param(s.tag(TAG_STACK)?, s.tag(TAG_ROLE)?, s.tag(TAG_VERSION)?)))
            .collect();
        crate::aws::ssm::delete(&self.aws.ssm, &reports).await?;
        Ok(())
    }

    /// A stack that must exist, be tyrell's, have the given role and be settled.
    pub async fn existing(&self, name: &str, role: &str, what: &str) -> anyhow::Result<StackInfo> {
        let s = cfn::get(&self.aws.cfn, name).await?;
        // The region named: a stack of that name in another region is not seen from here.
        let Some(s) = s else { crate::refuse!(NotFound, "there is no {what} named {name} in {}", self.region()) };
        if s.tag(TAG_ROLE) != Some(role) {
            crate::refuse!(NotFound, "stack {name} is not a tyrell {what}");
        }
        Ok(s)
    }

    /// Fails when any stack (tyrell's or not) already has this name.
    pub async fn ensure_free(&self, name: &str) -> anyhow::Result<()> {
        if let Some(s) = cfn::get(&self.aws.cfn, name).await? {
            match s.tag(TAG_ROLE) {
                Some(r) => {
                    crate::refuse!(Exists, "a tyrell {r} stack named {name} already exists ({})", s.status.as_str())
                }
                None => {
                    crate::refuse!(Exists, "a CloudFormation stack named {name} already exists and is not tyrell's")
                }
            }
        }
        Ok(())
    }
}

/// A random secret: 32 characters from two UUIDv4s (122 random bits each).
pub fn generate_secret() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())[..32].to_string()
}
