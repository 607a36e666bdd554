//! Role versions ("fleets"): one generic implementation of create / list / scale /
//! remove / prune for every role, driven by the role's manifest.

use std::collections::BTreeMap;

use serde::Serialize;

use super::error::Error;
use super::library::{Manifest, Via};
use super::render::{self, Vars};
use super::values::{AmiRef, SwarmName, Version};
use super::{base, tags, validate, Engine, TAG_ACTIVE, TAG_ROLE, TAG_STACK, TAG_VERSION};
use crate::aws::cfn::{self, StackInfo, StackSpec};
use crate::aws::{asg, ec2, elb};
use crate::names::{OUT_ASG, OUT_TARGET_GROUP};

/// One version of one role in one swarm, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub role: String,
    pub swarm: String,
    pub version: String,
    pub stack_name: String,
    pub status: String,
    pub ami: String,
    pub instance_type: String,
    pub desired: i32,
    pub in_service: usize,
    pub created: String,
    pub active: bool,
    /// Share of traffic (ALB/NLB roles), or 100/0 for the active/inactive versions of the rest.
    pub weight: i32,
    #[serde(skip)]
    pub stack: StackInfo,
}

/// What `create` will do, computed without changing anything (shown by `--dry-run`).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub stack_name: String,
    pub version: String,
    pub parameters: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub user_data: String,
    /// Whether the new version becomes active on creation: the first version of a role
    /// that takes no inbound traffic.
    pub activate: bool,
    #[serde(skip)]
    pub spec: StackSpec,
}

/// `--schedule` choices at create time.
#[derive(Debug, Clone)]
pub enum ScheduleChoice {
    /// The manifest's default, if any.
    Default,
    /// No scheduled actions.
    Off,
    /// `UP_CRON,DOWN_CRON,SIZE`.
    Custom { up: String, down: String, size: i32 },
}

/// `tyrell ROLE create`, as asked.
pub struct CreateVersion {
    pub swarm: SwarmName,
    pub ami: AmiRef,
    /// Default: the role's.
    pub instance_type: Option<String>,
    /// Instances (default: the role's).
    pub size: Option<i32>,
    /// Default: generated from the time ([`new_version`]).
    pub version: Option<Version>,
    pub schedule: ScheduleChoice,
}

pub fn stack_name(swarm: &str, role: &str, version: &str) -> String {
    format!("{swarm}-{role}-{version}")
}

/// A fresh version id: `v` + UTC creation time to the second, bumped past any taken id,
/// so ids sort by creation time.
pub fn new_version(now: time::OffsetDateTime, taken: &[String]) -> String {
    let fmt = time::macros::format_description!("[year repr:last_two][month][day][hour][minute][second]");
    let mut t = now;
    loop {
        let v = format!("v{}", t.format(&fmt).expect("format a date"));
        if !taken.contains(&v) {
            return v;
        }
        t += time::Duration::seconds(1);
    }
}

fn parse_cron_choice(m: &Manifest, choice: &ScheduleChoice) -> (String, String, i32) {
    match choice {
        ScheduleChoice::Off => (String::new(), String::new(), 0),
        ScheduleChoice::Custom { up, down, size } => (up.clone(), down.clone(), *size),
        ScheduleChoice::Default => match &m.schedule {
            Some(s) => (s.scale_up.clone(), s.scale_down.clone(), s.size),
            None => (String::new(), String::new(), 0),
        },
    }
}

/// Checks a 5-field cron expression's shape (AWS evaluates the rest).
pub fn validate_cron(s: &str) -> Result<(), validate::Invalid> {
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() == 5 && fields.iter().all(|f| f.chars().all(|c| c.is_ascii_digit() || "*/,-".contains(c))) {
        Ok(())
    } else {
        Err(validate::Invalid(format!("invalid cron expression {s:?}: expected 5 fields like \"0 * * * *\" (UTC)")))
    }
}

impl Engine {
    /// Resolves a role by name or noun.
    pub fn manifest(&self, role: &str) -> anyhow::Result<Manifest> {
        Ok(self.lib.role(role).cloned().ok_or_else(|| {
            Error::Invalid(format!(
                "unknown role {role:?} (roles: {})",
                self.lib.roles().iter().map(|m| m.role.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?)
    }

    /// Everything `create` needs, validated, with the user data rendered; changes nothing.
    pub async fn plan_version(&self, m: &Manifest, req: &CreateVersion) -> anyhow::Result<Plan> {
        let ami = self.resolve_ami(&m.role, &req.ami).await?;
        validate::ami(&ami)?;
        let instance_type = req.instance_type.clone().unwrap_or_else(|| m.instance_type.clone());
        validate::instance_type(&instance_type)?;
        let size = req.size.unwrap_or(m.size);
        validate::size(size)?;
        let (up, down, up_size) = parse_cron_choice(m, &req.schedule);
        if !up.is_empty() {
            validate_cron(&up)?;
            validate_cron(&down)?;
            validate::size(up_size)?;
        }
        let base = self.base(&req.swarm).await?;
        let existing = self.versions(m, Some(&req.swarm)).await?;
        let taken: Vec<String> = existing.iter().map(|v| v.version.clone()).collect();
        let version = match &req.version {
            Some(v) => {
                if taken.iter().any(|t| t == v.as_str()) {
                    crate::refuse!(Exists, "{} version {v} already exists in swarm {}", m.role, req.swarm);
                }
                v.to_string()
            }
            None => new_version(time::OffsetDateTime::now_utc(), &taken),
        };
        let name = stack_name(&req.swarm, &m.role, &version);
        self.ensure_free(&name).await?;
        if !ec2::image_exists(&self.aws.ec2, &ami).await? {
            crate::refuse!(NotFound, "AMI {} does not exist in {}", ami, self.aws.region);
        }

        let vars = self.vars_for(&base, &m.role, &version).await?;
        let user_data = render::cloud_init(&self.lib, &m.role, &serde_json::to_value(&vars)?)?;
        let template =
            render::template_with_user_data(&self.lib, &m.template, &user_data).map_err(|e| anyhow::anyhow!("{e}"))?;
        let out = |k: &str| -> anyhow::Result<String> {
            base.output(k)
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("base stack {} has no output {k}", base.name))
        };
        let mut parameters = BTreeMap::from([
            ("Swarm".into(), req.swarm.to_string()),
            ("Role".into(), m.role.clone()),
            ("Version".into(), version.clone()),
            ("AmiId".into(), ami),
            ("InstanceType".into(), instance_type),
            ("DesiredCapacity".into(), size.to_string()),
            ("MaxSize".into(), m.max_size.max(size).max(up_size).to_string()),
            ("VpcId".into(), base.parameters.get("VpcId").cloned().unwrap_or_default()),
            ("SubnetIds".into(), out("PrivateSubnetIds")?),
            ("SecurityGroupId".into(), out(&m.security_group_output)?),
            ("InstanceProfileArn".into(), out(&m.instance_profile_output)?),
            ("TargetPort".into(), if m.traffic.via == Via::None { "0".into() } else { m.traffic.port.to_string() }),
            ("TargetProtocol".into(), m.traffic.protocol.clone()),
            ("ScaleUpCron".into(), up),
            ("ScaleDownCron".into(), down),
            ("ScaleUpSize".into(), up_size.to_string()),
            ("DrainSeconds".into(), m.drain_seconds.to_string()),
        ]);
        // Only a role with an HTTP health check sends one: an empty path breaks the
        // template's AllowedPattern ^/.*$, which AWS (not the emulator) enforces.
        if !m.traffic.health_check_path.is_empty() {
            parameters.insert("HealthCheckPath".into(), m.traffic.health_check_path.clone());
        }
        let tags = tags(&m.role, &req.swarm, Some(&version));
        let spec = StackSpec { name: name.clone(), template, parameters: parameters.clone(), tags: tags.clone() };
        // `--dry-run` shows only what AWS would take.
        super::limits::check_stack(&spec)?;
        Ok(Plan {
            stack_name: name.clone(),
            version,
            parameters: parameters.clone(),
            tags: tags.clone(),
            user_data,
            activate: m.traffic.via == Via::None && !existing.iter().any(|v| v.active),
            spec,
        })
    }

    /// The cloud-init values of a swarm, read back from its base stack and metrics box.
    pub async fn vars_for(&self, base: &StackInfo, role: &str, version: &str) -> anyhow::Result<Vars> {
        let b = base::Base::from(base);
        let metrics = match &b.metrics_security_group {
            Some(sg) => self.metrics_boxes().await?.into_iter().find(|m| &m.security_group == sg),
            None => None,
        };
        Ok(Vars {
            region: self.aws.region.clone(),
            stack: base.name.clone(),
            role: role.into(),
            version: version.into(),
            broker_host: base.output("BrokerHost").unwrap_or_default().into(),
            broker_port: base.output("BrokerPort").and_then(|p| p.parse().ok()).unwrap_or(render::BROKER_PORT),
            queue_url: b.queue_url.clone(),
            bucket: b.bucket.clone(),
            metrics_host: metrics.as_ref().map(|m| m.private_ip.clone()).unwrap_or_default(),
            router_port: render::ROUTER_PORT,
            broker_password_param: b.secrets.broker_password.clone(),
            router_token_param: b.secrets.router_token.clone(),
            grafana_password_param: metrics.map(|m| m.grafana_password_param).unwrap_or_default(),
        })
    }

    /// Creates a version. The first version of a role that takes no inbound traffic
    /// becomes its active version at once (it is doing the work already).
    pub async fn create_version(&mut self, m: &Manifest, plan: &Plan) -> anyhow::Result<VersionInfo> {
        let stack = self.create_stack(&plan.spec).await?;
        if plan.activate {
            if let Some(g) = stack.output(OUT_ASG) {
                self.report
                    .step(&format!("{} {} is the first {} version: marking it active", m.role, plan.version, m.role));
                asg::set_tag(&self.aws.asg, g, TAG_ACTIVE, "true").await?;
            }
        }
        let swarm = stack.tag(TAG_STACK).unwrap_or_default().to_string();
        self.version_info(m, &swarm, &plan.version).await
    }

    /// Versions of a role, in one swarm or all, oldest first, with their traffic state.
    pub async fn versions(&self, m: &Manifest, swarm: Option<&str>) -> anyhow::Result<Vec<VersionInfo>> {
        let listed = cfn::list_tyrell(&self.aws.cfn, Some(&m.role)).await?;
        self.versions_among(m, swarm, &listed).await
    }

    /// [`Engine::versions`] among stacks already listed (any roles; others are skipped).
    pub async fn versions_among(
        &self,
        m: &Manifest,
        swarm: Option<&str>,
        listed: &[StackInfo],
    ) -> anyhow::Result<Vec<VersionInfo>> {
        let stacks: Vec<StackInfo> = listed
            .iter()
            .filter(|s| s.tag(TAG_ROLE) == Some(m.role.as_str()) && swarm.is_none_or(|w| s.tag(TAG_STACK) == Some(w)))
            .cloned()
            .collect();
        let mut by_swarm: BTreeMap<String, Vec<StackInfo>> = BTreeMap::new();
        for s in stacks {
            by_swarm.entry(s.tag(TAG_STACK).unwrap_or_default().to_string()).or_default().push(s);
        }
        // Every version's Auto Scaling group in one batch (50 names a call), shared by
        // the weights of roles without a listener: a call per version costs 60 calls
        // for 60 versions.
        let names: Vec<String> =
            by_swarm.values().flatten().filter_map(|s| s.output(OUT_ASG).map(str::to_string)).collect();
        let groups = asg::groups(&self.aws.asg, &names).await?;
        let mut out = Vec::new();
        for (w, stacks) in by_swarm {
            let weights = self.weights(m, &w, &stacks, &groups).await?;
            let top = weights.values().copied().max().unwrap_or(0);
            let mut infos = Vec::new();
            for s in stacks {
                let version = s.tag(TAG_VERSION).unwrap_or_default().to_string();
                let group = s.output(OUT_ASG).and_then(|g| groups.get(g));
                let weight = weights.get(&version).copied().unwrap_or(0);
                infos.push(VersionInfo {
                    role: m.role.clone(),
                    swarm: w.clone(),
                    version,
                    stack_name: s.name.clone(),
                    status: s.status.as_str().to_string(),
                    ami: s.parameters.get("AmiId").cloned().unwrap_or_default(),
                    instance_type: s.parameters.get("InstanceType").cloned().unwrap_or_default(),
                    desired: group.as_ref().map(|g| g.desired).unwrap_or(0),
                    in_service: group.as_ref().map(|g| g.in_service()).unwrap_or(0),
                    created: s.created.clone().unwrap_or_default(),
                    active: top > 0 && weight == top,
                    weight,
                    stack: s,
                });
            }
            // Versions sort by creation time (generated ids are time-ordered too).
            infos.sort_by(|a, b| {
                (a.created.as_str(), a.version.as_str()).cmp(&(b.created.as_str(), b.version.as_str()))
            });
            out.extend(infos);
        }
        Ok(out)
    }

    /// The traffic weight of each version of a role in a swarm, read back from AWS: the
    /// load balancer listener for ALB/NLB roles, the `tyrell:active` tag on the Auto
    /// Scaling group for the rest.
    /// (`groups`: the versions' Auto Scaling groups, already read.)
    async fn weights(
        &self,
        m: &Manifest,
        swarm: &str,
        stacks: &[StackInfo],
        groups: &BTreeMap<String, asg::Group>,
    ) -> anyhow::Result<BTreeMap<String, i32>> {
        let mut w = BTreeMap::new();
        match m.traffic.listener.as_deref() {
            Some(out) => {
                let Some(base) = cfn::get(&self.aws.cfn, swarm).await? else { return Ok(w) };
                let Some(listener) = base.output(out) else { return Ok(w) };
                let forwards = elb::listener_weights(&self.aws.elb, listener).await?;
                let total: i32 = forwards.iter().map(|(_, x)| *x).sum();
                for s in stacks {
                    if let (Some(tg), Some(v)) = (s.output(OUT_TARGET_GROUP), s.tag(TAG_VERSION)) {
                        if let Some((_, x)) = forwards.iter().find(|(arn, _)| arn == tg) {
                            w.insert(v.to_string(), if total > 0 { x * 100 / total } else { 0 });
                        }
                    }
                }
            }
            None => {
                for s in stacks {
                    if let (Some(g), Some(v)) = (s.output(OUT_ASG), s.tag(TAG_VERSION)) {
                        if let Some(g) = groups.get(g) {
                            if g.tags.get(TAG_ACTIVE).map(String::as_str) == Some("true") {
                                w.insert(v.to_string(), 100);
                            }
                        }
                    }
                }
            }
        }
        Ok(w)
    }

    /// One existing version.
    pub async fn version_info(&self, m: &Manifest, swarm: &str, version: &str) -> anyhow::Result<VersionInfo> {
        validate::name("swarm", swarm)?;
        validate::version(version)?;
        let all = self.versions(m, Some(swarm)).await?;
        match all.into_iter().find(|v| v.version == version) {
            Some(v) => Ok(v),
            None => {
                // Say whether it exists in another swarm: the likely mistake.
                let elsewhere: Vec<String> = cfn::list_tyrell(&self.aws.cfn, Some(&m.role))
                    .await?
                    .iter()
                    .filter(|s| s.tag(TAG_VERSION) == Some(version))
                    .filter_map(|s| s.tag(TAG_STACK).map(str::to_string))
                    .collect();
                if elsewhere.is_empty() {
                    crate::refuse!(NotFound, "swarm {swarm} has no {} version {version}", m.role)
                }
                crate::refuse!(
                    NotFound,
                    "swarm {swarm} has no {} version {version} (it belongs to swarm {})",
                    m.role,
                    elsewhere.join(", ")
                )
            }
        }
    }

    /// Sets a version's number of instances through the Auto Scaling API. (Not a stack
    /// update: that would take minutes on AWS, and an update may rewrite the group's tags,
    /// among them the `tyrell:active` marker.)
    pub async fn scale_version(
        &mut self,
        m: &Manifest,
        swarm: &str,
        version: &str,
        n: i32,
    ) -> anyhow::Result<VersionInfo> {
        validate::size(n)?;
        let v = self.version_info(m, swarm, version).await?;
        let group = v
            .stack
            .output(OUT_ASG)
            .ok_or_else(|| anyhow::anyhow!("stack {} has no Auto Scaling group", v.stack_name))?;
        let current = asg::group(&self.aws.asg, group)
            .await?
            .ok_or_else(|| anyhow::anyhow!("Auto Scaling group {group} is gone"))?;
        self.report.step(&format!("scaling {} {version} from {} to {n} instance(s)", m.role, current.desired));
        asg::set_capacity(&self.aws.asg, group, n, current.max.max(n)).await?;
        self.version_info(m, swarm, version).await
    }

    /// Removes a version; the active one only with `force`.
    pub async fn remove_version(
        &mut self,
        m: &Manifest,
        swarm: &str,
        version: &str,
        force: bool,
    ) -> anyhow::Result<VersionInfo> {
        let v = self.version_info(m, swarm, version).await?;
        if !force {
            self.ensure_unlocked(m, swarm).await?;
        }
        if v.weight > 0 && !force {
            crate::refuse!(
                InUse,
                "{} {version} is active in swarm {swarm} ({}% of traffic): switch to another version first (tyrell traffic ...) or pass --force",
                m.role,
                v.weight
            );
        }
        self.delete_stack(&v.stack).await?;
        Ok(v)
    }

    /// Removes the oldest versions that carry no traffic, keeping the newest `keep` of them
    /// and, always, the version `--rollback` would return to.
    pub async fn prune(&mut self, m: &Manifest, swarm: &str, keep: usize) -> anyhow::Result<Vec<VersionInfo>> {
        validate::name("swarm", swarm)?;
        self.ensure_unlocked(m, swarm).await?;
        let all = self.versions(m, Some(swarm)).await?;
        let rollback = self.previous(&all).await?;
        if let Some(r) = &rollback {
            self.report.step(&format!("keeping {} {r}: it is what --rollback returns to", m.role));
        }
        let idle: Vec<VersionInfo> =
            all.into_iter().filter(|v| v.weight == 0 && Some(&v.version) != rollback.as_ref()).collect();
        let doomed: Vec<VersionInfo> = idle[..idle.len().saturating_sub(keep)].to_vec();
        let stacks: Vec<StackInfo> = doomed.iter().map(|v| v.stack.clone()).collect();
        self.delete_stacks(&stacks).await?;
        Ok(doomed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_time_ordered_and_unique() {
        let t = time::macros::datetime!(2026-11-23 10:15:00 UTC);
        assert_eq!(new_version(t, &[]), "v261123101500");
        assert_eq!(new_version(t, &["v261123101500".into()]), "v261123101501");
        assert!(validate::version(&new_version(t, &[])).is_ok());
        assert!(new_version(t, &[]) < new_version(t + time::Duration::hours(30), &[]));
    }

    #[test]
    fn cron_shapes() {
        assert!(validate_cron("0 * * * *").is_ok());
        assert!(validate_cron("*/15 1-5 * * 1,3").is_ok());
        assert!(validate_cron("0 * * *").is_err());
        assert!(validate_cron("0 * * * MON").is_err());
    }
}
