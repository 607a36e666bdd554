//! Role versions ("fleets"): one generic implementation of create / list / scale /
//! remove / prune for every role, driven by the role's manifest.

use std::collections::BTreeMap;

use serde::Serialize;

use super::error::Error;
use super::library::{Manifest, Via};
use super::model::{Base, VersionInfo};
use super::render::{self, Vars};
use super::values::{AmiRef, SwarmName, Version};
use super::{tags, validate, Engine, TAG_ACTIVE, TAG_ROLE, TAG_STACK, TAG_VERSION};
use crate::aws::cfn::{self, StackInfo, StackSpec};
use crate::aws::{asg, ec2, elb};
pub use crate::names::stack_name;
use crate::names::{OUT_ASG, OUT_TARGET_GROUP};

/// Pure: splits `total` units among raw weights in proportion (largest remainder), so the
/// parts add up to `total` exactly (when any weight is above 0) and, as far as `total`
/// allows, every weight above 0 gets at least one unit. 999/1 over 1000 is 999/1; over
/// 100 it is 99/1.
pub fn apportion(weights: &[i32], total: i32) -> Vec<i32> {
    let sum: i64 = weights.iter().map(|w| i64::from((*w).max(0))).sum();
    if sum == 0 || total <= 0 {
        return vec![0; weights.len()];
    }
    let t = i64::from(total);
    let mut parts: Vec<i64> = weights.iter().map(|w| i64::from((*w).max(0)) * t / sum).collect();
    let rem = |i: usize| i64::from(weights[i].max(0)) * t % sum;
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(rem(i)), i));
    // Fewer units are left than weights with a remainder: one each, largest remainder first.
    let left = (t - parts.iter().sum::<i64>()) as usize;
    for &i in order.iter().take(left) {
        parts[i] += 1;
    }
    // A weight above 0 shown as 0 takes a unit from the largest part.
    for i in 0..weights.len() {
        if weights[i] > 0 && parts[i] == 0 {
            if let Some(big) = (0..parts.len()).filter(|&j| parts[j] > 1).max_by_key(|&j| parts[j]) {
                parts[big] -= 1;
                parts[i] += 1;
            }
        }
    }
    parts.into_iter().map(|p| p as i32).collect()
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

/// The port a role's boxes serve their load balancer on: the base stack output the role
/// names in `port_output` (role.toml), else its `port`.
fn target_port(m: &Manifest, base: &StackInfo) -> String {
    m.traffic
        .port_output
        .as_deref()
        .and_then(|k| base.output(k))
        .map_or_else(|| m.traffic.port.to_string(), str::to_string)
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
        validate::role_size(&m.role, size)?;
        let (up, down, up_size) = parse_cron_choice(m, &req.schedule);
        if !up.is_empty() {
            validate_cron(&up)?;
            validate_cron(&down)?;
            validate::role_size(&m.role, up_size)?;
        }
        // The base stack, or in a bee region the bee-region stack (docs/MULTI-REGION.md 6.3).
        let base = self.fleet_home(&req.swarm, &m.security_group_output).await?;
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
            crate::refuse!(NotFound, "AMI {} does not exist in {}", ami, self.region());
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
        // Only a role's active version carries its schedule: a version that is not active
        // on creation gets it when it becomes active (`tyrell traffic`, Engine::switch).
        let activate = m.traffic.via == Via::None && !existing.iter().any(|v| v.active);
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
            ("TargetPort".into(), if m.traffic.via == Via::None { "0".into() } else { target_port(m, &base) }),
            ("TargetProtocol".into(), m.traffic.protocol.clone()),
            ("ScaleUpCron".into(), up),
            ("ScaleDownCron".into(), down),
            ("ScaleUpSize".into(), up_size.to_string()),
            ("ScheduleNow".into(), activate.to_string()),
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
            activate,
            spec,
        })
    }

    /// The cloud-init values of a swarm, read back from its base stack and metrics box.
    pub async fn vars_for(&self, base: &StackInfo, role: &str, version: &str) -> anyhow::Result<Vars> {
        let b = Base::from(base);
        let own_tls = base.output("BrokerTlsBy") == Some("broker");
        let metrics = match &b.metrics_security_group {
            Some(sg) => self.metrics_boxes().await?.into_iter().find(|m| &m.security_group == sg),
            None => None,
        };
        Ok(Vars {
            region: self.region().to_string(),
            stack: base.name.clone(),
            role: role.into(),
            version: version.into(),
            broker_host: base.output("BrokerHost").unwrap_or_default().into(),
            broker_port: base.output("BrokerPort").and_then(|p| p.parse().ok()).unwrap_or(render::BROKER_PORT),
            broker_tls: if base.output("BrokerTls") == Some("true") { "true" } else { "false" }.into(),
            // The brokers end TLS themselves (no ACM certificate): the clients trust the
            // swarm's CA; a bee region's boxes read it in the home region, by its ARN.
            broker_ca_param: match (own_tls, base.tag(super::TAG_ROLE)) {
                (false, _) => String::new(),
                (true, Some(super::bee_region::ROLE)) => base.output("BrokerCaParamArn").unwrap_or_default().into(),
                (true, _) => crate::names::secret_param(&base.name, crate::names::BROKER_CA),
            },
            broker_tls_param: if own_tls {
                crate::names::secret_param(&base.name, crate::names::BROKER_TLS)
            } else {
                String::new()
            },
            // A base stack made before BrokerNlbHost existed: its BrokerHost is the NLB.
            broker_nlb_host: base.output("BrokerNlbHost").or(base.output("BrokerHost")).unwrap_or_default().into(),
            broker_nlb_port: base.output("BrokerNlbPort").and_then(|p| p.parse().ok()).unwrap_or(render::BROKER_PORT),
            broker_listen_port: render::BROKER_PORT,
            queue_url: b.queue_url.clone(),
            bucket: b.bucket.clone(),
            metrics_host: metrics.as_ref().map(|m| m.private_ip.clone()).unwrap_or_default(),
            router_port: render::ROUTER_PORT,
            // A bee region's boxes read the home region's parameter by its ARN.
            broker_password_param: match base.tag(super::TAG_ROLE) {
                Some(super::bee_region::ROLE) => base.output("BrokerPasswordParamArn").unwrap_or_default().into(),
                _ => b.secrets.broker_password.clone(),
            },
            router_token_param: b.secrets.router_token.clone(),
            grafana_password_param: metrics.map(|m| m.grafana_password_param).unwrap_or_default(),
            live_param: crate::names::live_param(&base.name, role),
            state_param: crate::names::state_param(&base.name, role, version),
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
            let (weights, mut rules) = self.weights(m, &w, &stacks, &groups).await?;
            let top = weights.values().copied().max().unwrap_or(0);
            let raw: Vec<i32> = stacks
                .iter()
                .map(|s| weights.get(s.tag(TAG_VERSION).unwrap_or_default()).copied().unwrap_or(0))
                .collect();
            let (percents, tenths) = (apportion(&raw, 100), apportion(&raw, 1000));
            let mut infos = Vec::new();
            for (i, s) in stacks.into_iter().enumerate() {
                let version = s.tag(TAG_VERSION).unwrap_or_default().to_string();
                let group = s.output(OUT_ASG).and_then(|g| groups.get(g));
                let forward = raw[i];
                infos.push(VersionInfo {
                    role: m.role.clone(),
                    swarm: w.clone(),
                    region: s.region.clone(),
                    stack_name: s.name.clone(),
                    status: s.status.as_str().to_string(),
                    ami: s.parameters.get("AmiId").cloned().unwrap_or_default(),
                    instance_type: s.parameters.get("InstanceType").cloned().unwrap_or_default(),
                    desired: group.as_ref().map(|g| g.desired).unwrap_or(0),
                    in_service: group.as_ref().map(|g| g.in_service()).unwrap_or(0),
                    created: s.created.clone().unwrap_or_default(),
                    active: top > 0 && forward == top,
                    weight: percents[i],
                    forward,
                    share_tenths: tenths[i],
                    rules: rules.remove(&version).unwrap_or_default(),
                    version,
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
    /// raw weights of the load balancer listener's default action for ALB/NLB roles (plus,
    /// for the ALB, the listener rules forwarding to each version), the `tyrell:active` tag
    /// on the Auto Scaling group for the rest (weight 1).
    /// (`groups`: the versions' Auto Scaling groups, already read.)
    async fn weights(
        &self,
        m: &Manifest,
        swarm: &str,
        stacks: &[StackInfo],
        groups: &BTreeMap<String, asg::Group>,
    ) -> anyhow::Result<(BTreeMap<String, i32>, BTreeMap<String, Vec<String>>)> {
        let mut w = BTreeMap::new();
        let mut by_rule: BTreeMap<String, Vec<String>> = BTreeMap::new();
        match m.traffic.listener.as_deref() {
            Some(out) => {
                let Some(base) = cfn::get(&self.aws.cfn, swarm).await? else { return Ok((w, by_rule)) };
                let Some(listener) = base.output(out) else { return Ok((w, by_rule)) };
                let forwards = elb::listener_weights(&self.aws.elb, listener).await?;
                // Rules exist on ALB listeners only.
                let rules = match m.traffic.via {
                    Via::Alb => elb::listener_rules(&self.aws.elb, listener).await?,
                    _ => Vec::new(),
                };
                for s in stacks {
                    if let (Some(tg), Some(v)) = (s.output(OUT_TARGET_GROUP), s.tag(TAG_VERSION)) {
                        let x: i32 = forwards.iter().filter(|(arn, _)| arn == tg).map(|(_, x)| *x).sum();
                        if forwards.iter().any(|(arn, _)| arn == tg) {
                            w.insert(v.to_string(), x);
                        }
                        for r in rules.iter().filter(|r| r.targets.iter().any(|(arn, _)| arn == tg)) {
                            by_rule
                                .entry(v.to_string())
                                .or_default()
                                .push(format!("rule {}: {}", r.priority, r.matches));
                        }
                    }
                }
            }
            None => {
                for s in stacks {
                    if let (Some(g), Some(v)) = (s.output(OUT_ASG), s.tag(TAG_VERSION)) {
                        if let Some(g) = groups.get(g) {
                            if g.tags.get(TAG_ACTIVE).map(String::as_str) == Some("true") {
                                w.insert(v.to_string(), 1);
                            }
                        }
                    }
                }
            }
        }
        Ok((w, by_rule))
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
        validate::role_size(&m.role, n)?;
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
        if v.forward > 0 && !force {
            crate::refuse!(
                InUse,
                "{} {version} is active in swarm {swarm} ({}% of traffic): switch to another version first (tyrell traffic ...) or pass --force",
                m.role,
                share(v.share_tenths)
            );
        }
        if !v.rules.is_empty() && !force {
            crate::refuse!(
                InUse,
                "{} {version} still gets traffic in swarm {swarm} through listener {}: change the rule first or pass --force",
                m.role,
                v.rules.join(", ")
            );
        }
        self.delete_stack(&v.stack).await?;
        Ok(v)
    }

    /// Removes the oldest versions that carry no traffic, keeping the newest `keep` of them
    /// and, always, every version the listener still forwards to (a weight above 0 in its
    /// default action, or a listener rule) and the version `--rollback` would return to.
    /// Returns the versions removed and those kept on purpose, with why.
    pub async fn prune(&mut self, m: &Manifest, swarm: &str, keep: usize) -> anyhow::Result<Pruning> {
        validate::name("swarm", swarm)?;
        self.ensure_unlocked(m, swarm).await?;
        let all = self.versions(m, Some(swarm)).await?;
        let rollback = self.previous(&all).await?;
        let mut kept = Vec::new();
        let mut idle = Vec::new();
        for v in all {
            let mut why = Vec::new();
            if v.forward > 0 {
                why.push(match m.traffic.via {
                    Via::None => "it is the active version".to_string(),
                    _ => format!(
                        "the listener forwards {}% of its traffic to it (weight {})",
                        share(v.share_tenths),
                        v.forward
                    ),
                });
            }
            if !v.rules.is_empty() {
                why.push(format!("listener {} forwards to it", v.rules.join(", ")));
            }
            if rollback.as_ref() == Some(&v.key()) {
                why.push("it is what --rollback returns to".to_string());
            }
            if why.is_empty() {
                idle.push(v);
            } else {
                let reason = why.join("; ");
                self.report.step(&format!("keeping {} {}: {reason}", m.role, v.version));
                kept.push(Kept { version: v.version, reason });
            }
        }
        let doomed: Vec<VersionInfo> = idle[..idle.len().saturating_sub(keep)].to_vec();
        let stacks: Vec<StackInfo> = doomed.iter().map(|v| v.stack.clone()).collect();
        self.delete_stacks(&stacks).await?;
        Ok(Pruning { removed: doomed.into_iter().map(|v| v.version).collect(), kept })
    }
}

/// The names tyrell gives the scheduled actions it puts on a version that becomes active
/// (those the template made on creation keep CloudFormation's names).
pub const SCALE_UP_ACTION: &str = "tyrell-scale-up";
pub const SCALE_DOWN_ACTION: &str = "tyrell-scale-down";

impl Engine {
    /// Puts a version's own schedule (its stack's `ScaleUpCron`, `ScaleDownCron`,
    /// `ScaleUpSize`) on its Auto Scaling group, unless the group has scheduled actions
    /// already. Returns what it did (`None`: nothing to do).
    pub async fn schedule_on(&mut self, v: &VersionInfo) -> anyhow::Result<Option<String>> {
        let (Some((up, down, size)), Some(group)) = (v.schedule(), v.stack.output(OUT_ASG)) else { return Ok(None) };
        if !asg::scheduled_actions(&self.aws.asg, group).await?.is_empty() {
            return Ok(None);
        }
        asg::put_scheduled_action(&self.aws.asg, group, SCALE_UP_ACTION, &up, size).await?;
        let mut what = format!("{} {} scheduled: up to {size} at \"{up}\"", v.role, v.version);
        if !down.is_empty() {
            asg::put_scheduled_action(&self.aws.asg, group, SCALE_DOWN_ACTION, &down, 0).await?;
            what.push_str(&format!(", down to 0 at \"{down}\""));
        }
        self.report.step(&what);
        Ok(Some(what))
    }

    /// Removes every scheduled action of a version's group, so that nothing brings an
    /// inactive version back. Returns what it did (`None`: it had none).
    pub async fn schedule_off(&mut self, v: &VersionInfo) -> anyhow::Result<Option<String>> {
        let Some(group) = v.stack.output(OUT_ASG) else { return Ok(None) };
        let actions = asg::scheduled_actions(&self.aws.asg, group).await?;
        if actions.is_empty() {
            return Ok(None);
        }
        for a in &actions {
            asg::delete_scheduled_action(&self.aws.asg, group, &a.name).await?;
        }
        let what = format!(
            "{} {} unscheduled: removed {}",
            v.role,
            v.version,
            actions.iter().map(|a| format!("\"{}\" ({})", a.recurrence, a.name)).collect::<Vec<_>>().join(", ")
        );
        self.report.step(&what);
        Ok(Some(what))
    }
}

/// Tenths of a percent as a percentage with one decimal: 999 is `99.9`.
pub fn share(tenths: i32) -> String {
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// What `prune` did.
#[derive(Debug, Clone, Serialize)]
pub struct Pruning {
    /// The versions removed, oldest first.
    pub removed: Vec<String>,
    /// The versions it must not remove, and why (the newest `--keep` idle ones are not listed).
    pub kept: Vec<Kept>,
}

/// A version prune keeps on purpose.
#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    pub version: String,
    /// Why: the listener still forwards to it, a listener rule does, or `--rollback` returns to it.
    pub reason: String,
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
    fn shares_add_up_and_any_traffic_shows() {
        assert_eq!(apportion(&[999, 1], 1000), vec![999, 1]);
        assert_eq!(apportion(&[999, 1], 100), vec![99, 1]);
        assert_eq!(apportion(&[1, 1, 1], 1000), vec![334, 333, 333]);
        assert_eq!(apportion(&[1, 1, 1], 100), vec![34, 33, 33]);
        assert_eq!(apportion(&[0, 50, 50], 100), vec![0, 50, 50]);
        assert_eq!(apportion(&[9999, 1, 0], 1000), vec![999, 1, 0]);
        assert_eq!(apportion(&[0, 0], 100), vec![0, 0]);
        assert_eq!(apportion(&[], 100), Vec::<i32>::new());
        for w in [vec![7, 3, 990], vec![1, 998, 1], vec![333, 333, 334], vec![5]] {
            assert_eq!(apportion(&w, 1000).iter().sum::<i32>(), 1000, "{w:?}");
            assert_eq!(apportion(&w, 100).iter().sum::<i32>(), 100, "{w:?}");
        }
        assert_eq!(
            (share(999), share(1), share(1000), share(0)),
            ("99.9".into(), "0.1".into(), "100.0".into(), "0.0".into())
        );
    }

    #[test]
    fn cron_shapes() {
        assert!(validate_cron("0 * * * *").is_ok());
        assert!(validate_cron("*/15 1-5 * * 1,3").is_ok());
        assert!(validate_cron("0 * * *").is_err());
        assert!(validate_cron("0 * * * MON").is_err());
    }
}
