//! Base stacks: the static resources of one swarm (security groups, load balancers,
//! queue, bucket, instance roles) and its secrets in SSM.

use std::collections::BTreeMap;

use super::error::Error;
use super::model::{Base, Secrets, Swarm};
use super::values::SwarmName;
use super::{admin_cidrs_param, generate_secret, tags, validate, Engine, TAG_ROLE, TAG_STACK};
use crate::aws::cfn::{self, StackInfo, StackSpec, StackStatus};
use crate::aws::{acm, ec2, s3, sqs, ssm};

pub const ROLE: &str = "base";

/// `tyrell stacks create`, as asked.
pub struct CreateBase {
    pub name: SwarmName,
    pub vpc_id: String,
    pub allow_cidrs: Vec<String>,
    pub certificate_arn: Option<String>,
    /// The broker NLB's TLS listener (8883): an ACM certificate of this region, `ISSUED`,
    /// covering `broker_dns_name` (docs/MULTI-REGION.md 8.1). `None`: the brokers end TLS
    /// on 8883 themselves, with the swarm's own CA (made by the first broker box).
    pub broker_certificate_arn: Option<String>,
    /// The name on `broker_certificate_arn` the clients connect to and verify (a CNAME to
    /// the NLB's DNS name, kept by the operator). Required with, and only with, it.
    pub broker_dns_name: Option<String>,
    /// A metrics box to accept this swarm's indexers; `None` picks the one in the VPC, if any.
    pub metrics: Option<String>,
}

impl Engine {
    pub async fn create_base(&mut self, req: &CreateBase) -> anyhow::Result<Base> {
        validate::vpc(&req.vpc_id)?;
        for c in &req.allow_cidrs {
            validate::admin_cidr(c)?;
        }
        let admin = admin_cidrs_param(&req.allow_cidrs)?;
        if let Some(arn) = &req.certificate_arn {
            validate::certificate_arn("--certificate-arn", arn)?;
        }
        match (&req.broker_certificate_arn, &req.broker_dns_name) {
            (Some(_), None) => crate::refuse!(
                Invalid,
                "--broker-certificate-arn needs --broker-dns-name: the name on the certificate that the swarm's clients connect to and verify"
            ),
            (None, Some(_)) => crate::refuse!(
                Invalid,
                "--broker-dns-name needs --broker-certificate-arn: without a certificate the broker has no TLS listener to name"
            ),
            (Some(arn), Some(dns)) => {
                validate::dns_name("--broker-dns-name", dns)?;
                self.check_certificate("--broker-certificate-arn", arn, Some(dns)).await?;
            }
            (None, None) => {}
        }
        if let Some(arn) = &req.certificate_arn {
            self.check_certificate("--certificate-arn", arn, None).await?;
        }
        self.ensure_free(&req.name).await?;
        let vpc = ec2::vpc(&self.aws.ec2, &req.vpc_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("VPC {} does not exist in {}", req.vpc_id, self.region())))?;
        let subnets = ec2::subnets(&self.aws.ec2, &vpc.id).await?;
        let public: Vec<_> = subnets.iter().filter(|s| s.public).collect();
        let mut private: Vec<_> = subnets.iter().filter(|s| !s.public).collect();
        let azs: std::collections::BTreeSet<_> = public.iter().map(|s| &s.az).collect();
        if azs.len() < 2 {
            crate::refuse!(
            Invalid,
            "VPC {} needs public subnets in at least 2 availability zones for the load balancer (found {} in {}); `tyrell network create` makes such a VPC",
            vpc.id,
            public.len(),
            azs.len()
        );
        }
        if private.is_empty() {
            self.report.step(&format!("VPC {} has no private subnets: instances go in the public ones", vpc.id));
            private = public.clone();
        }
        let metrics_sg = self.metrics_for(&vpc.id, req.metrics.as_deref()).await?;

        let secrets = Secrets::of(&req.name);
        let join = |v: &[&ec2::Subnet]| v.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(",");
        let spec = StackSpec {
            name: req.name.to_string(),
            template: self.lib.template(ROLE)?.to_string(),
            parameters: BTreeMap::from([
                ("VpcId".into(), vpc.id.clone()),
                ("VpcCidr".into(), vpc.cidr.clone()),
                ("PublicSubnetIds".into(), join(&public)),
                ("PrivateSubnetIds".into(), join(&private)),
                ("AdminCidrs".into(), admin),
                ("CertificateArn".into(), req.certificate_arn.clone().unwrap_or_default()),
                ("BrokerCertificateArn".into(), req.broker_certificate_arn.clone().unwrap_or_default()),
                ("BrokerDnsName".into(), req.broker_dns_name.clone().unwrap_or_default()),
                ("BrokerPasswordParam".into(), secrets.broker_password.clone()),
                ("RouterTokenParam".into(), secrets.router_token.clone()),
                ("MetricsSecurityGroupId".into(), metrics_sg.unwrap_or_default()),
            ]),
            tags: tags(ROLE, &req.name, None),
        };
        // Checked before the secrets are written: nothing is made for a stack AWS would refuse.
        super::limits::check_stack(&spec)?;
        if req.certificate_arn.is_none() {
            self.report.warn(&format!(
                "swarm {}: no --certificate-arn: the public ALB serves plain HTTP on port 80, router API tokens included; give an ACM certificate for HTTPS on 443 (HTTP then redirects)",
                req.name
            ));
        }
        if req.broker_certificate_arn.is_none() {
            let tls = crate::names::broker_tls_params(&req.name);
            self.report.step(&format!(
                "swarm {}: the brokers end MQTT's TLS on 8883 with the swarm's own CA (made by the first broker box; the clients trust {} from SSM); --broker-certificate-arn would have the NLB end it with an ACM certificate",
                req.name, tls[1]
            ));
            // Left by an earlier swarm of this name (no base stack exists: checked above):
            // a certificate for another NLB's name, which the clients would refuse.
            ssm::delete(&self.aws.ssm, &tls).await?;
        }
        let mut created = Vec::new();
        for p in &secrets.names() {
            if !ssm::exists(&self.aws.ssm, p).await? {
                self.report.step(&format!("generating secret {p} (SSM SecureString)"));
                ssm::put_secret(&self.aws.ssm, p, &generate_secret(), &format!("tyrell swarm {}", req.name)).await?;
                created.push(p.clone());
            }
        }
        match self.create_stack(&spec).await {
            Ok(s) => Ok(Base::from(&s)),
            Err(e) => {
                // Nothing half-made: the stack deleted itself (OnFailure=DELETE); so go the secrets.
                let _ = ssm::delete(&self.aws.ssm, &created).await;
                Err(e)
            }
        }
    }

    /// Refuses (before any change) a certificate that ACM of this region does not hold,
    /// that is not `ISSUED`, or (with `host`) does not cover `host`: AWS would refuse the
    /// listener half-way through the stack, or clients would refuse the broker.
    /// `flag` names the option in the sentence.
    pub(super) async fn check_certificate(&self, flag: &str, arn: &str, host: Option<&str>) -> anyhow::Result<()> {
        validate::certificate_arn(flag, arn)?;
        let region = self.region();
        let Some(c) = acm::certificate(&self.aws.acm, arn).await? else {
            crate::refuse!(
                Invalid,
                "{flag} {arn}: ACM in {region} has no such certificate (a load balancer takes a certificate of its own region only)"
            );
        };
        if c.status != "ISSUED" {
            crate::refuse!(Invalid, "{flag} {arn} is {}, not ISSUED: finish its validation in ACM first", c.status);
        }
        if let Some(h) = host {
            if !c.covers(h) {
                crate::refuse!(
                    Invalid,
                    "{flag} {arn} does not cover {h} (it names {}): clients verifying the broker would refuse it",
                    c.names.join(", ")
                );
            }
        }
        Ok(())
    }

    /// The security group of the metrics box that should accept this VPC's indexers.
    async fn metrics_for(&self, vpc: &str, name: Option<&str>) -> anyhow::Result<Option<String>> {
        let boxes = self.metrics_boxes().await?;
        let in_vpc: Vec<_> = boxes.iter().filter(|m| m.vpc_id == vpc).collect();
        match name {
            Some(n) => {
                let m = boxes
                    .iter()
                    .find(|m| m.name == n)
                    .ok_or_else(|| Error::NotFound(format!("there is no metrics box named {n}")))?;
                if m.vpc_id != vpc {
                    crate::refuse!(Invalid, "metrics box {n} is in {}, not in {vpc}", m.vpc_id);
                }
                Ok(Some(m.security_group.clone()))
            }
            None if in_vpc.len() == 1 => Ok(Some(in_vpc[0].security_group.clone())),
            None => Ok(None),
        }
    }

    pub async fn bases(&self) -> anyhow::Result<Vec<StackInfo>> {
        Ok(cfn::list_tyrell(&self.aws.cfn, Some(ROLE)).await?)
    }

    /// Every base stack with the versions of each role, from one listing of the stacks.
    pub async fn swarms(&self) -> anyhow::Result<Vec<Swarm>> {
        let all = cfn::list_tyrell(&self.aws.cfn, None).await?;
        let mut out = Vec::new();
        for b in all.iter().filter(|s| s.tag(TAG_ROLE) == Some(ROLE)) {
            let mut roles = Vec::new();
            for m in self.lib.roles() {
                roles.push((m.role.clone(), self.versions_among(m, Some(&b.name), &all).await?));
            }
            out.push(Swarm { base: b.clone(), roles });
        }
        Ok(out)
    }

    pub async fn base(&self, name: &str) -> anyhow::Result<StackInfo> {
        validate::name("swarm", name)?;
        let s = self.existing(name, ROLE, "base stack").await?;
        if !matches!(s.status, StackStatus::CreateComplete | StackStatus::UpdateComplete | StackStatus::ImportComplete)
        {
            crate::refuse!(Unhealthy, "base stack {name} is {}, not ready", s.status.as_str());
        }
        Ok(s)
    }

    /// Every role version stack of a swarm.
    pub async fn swarm_versions(&self, swarm: &str) -> anyhow::Result<Vec<StackInfo>> {
        Ok(self.swarm_versions_among(swarm, &cfn::list_tyrell(&self.aws.cfn, None).await?))
    }

    /// [`Engine::swarm_versions`] among stacks already listed in this region (`listed`,
    /// from `cfn::list_tyrell`), for a caller that needs the listing for more than this.
    pub fn swarm_versions_among(&self, swarm: &str, listed: &[StackInfo]) -> Vec<StackInfo> {
        let roles: Vec<&str> = self.lib.roles().iter().map(|m| m.role.as_str()).collect();
        listed
            .iter()
            .filter(|s| s.tag(TAG_STACK) == Some(swarm) && s.tag(TAG_ROLE).is_some_and(|r| roles.contains(&r)))
            .cloned()
            .collect()
    }

    /// Fails, naming each, when a swarm's archive bucket holds objects or its queues hold
    /// messages: removing the base stack would destroy them (or fail half-way with
    /// `BucketNotEmpty`). The sentence says how to keep or empty them.
    pub async fn ensure_no_data(&self, base: &StackInfo) -> anyhow::Result<()> {
        let b = Base::from(base);
        let mut held = Vec::new();
        let mut how = Vec::new();
        if !b.bucket.is_empty() && s3::holds_data(&self.aws.s3, &b.bucket).await? == Some(true) {
            held.push(format!("its archive bucket {} holds archived ping records", b.bucket));
            how.push(format!(
                "copy them somewhere safe (aws s3 sync s3://{0} ./{0}) and empty the bucket (aws s3 rm s3://{0} --recursive, and its old versions if versioned)",
                b.bucket
            ));
        }
        for (what, url) in [("queue", &b.queue_url), ("dead-letter queue", &b.dead_letter_queue_url)] {
            if url.is_empty() {
                continue;
            }
            if let Some(n) = sqs::messages(&self.aws.sqs, url).await?.filter(|n| *n > 0) {
                held.push(format!("its {what} holds {n} message(s) not yet archived"));
            }
        }
        if held.len() > how.len() {
            how.push(
                "let the workers drain the queues (or redrive the dead-letter queue and let them archive it)".into(),
            );
        }
        if !held.is_empty() {
            crate::refuse!(
            InUse,
            "refusing to remove swarm {}: {}; tyrell never deletes data as a side effect: {}, then run this again (nothing was removed)",
            b.name,
            held.join(", and "),
            how.join("; ")
        );
        }
        Ok(())
    }

    /// Removes a base stack (with `all`, its role versions first), then its secrets.
    /// Refused, before anything is removed, while the swarm holds data
    /// ([`Engine::ensure_no_data`]).
    pub async fn remove_base(&mut self, name: &str, all: bool) -> anyhow::Result<Vec<String>> {
        validate::name("swarm", name)?;
        let base = self.existing(name, ROLE, "base stack").await?;
        // A bee region's link stack names this swarm's NLB security group: AWS would refuse
        // to delete the group under it, half-way through.
        let links = self.bee_links(name).await?;
        if !links.is_empty() {
            let regions: Vec<&str> = links.iter().filter_map(|l| l.tag(crate::names::TAG_BEE_REGION)).collect();
            crate::refuse!(
                InUse,
                "swarm {name} still has bee region(s) {}: remove them first (tyrell stacks remove-region {name} --bee-region REGION)",
                regions.join(", ")
            );
        }
        let versions = self.swarm_versions(name).await?;
        if !versions.is_empty() && !all {
            crate::refuse!(
                InUse,
                "swarm {name} still has {} role version(s): {}; remove them first or pass --all",
                versions.len(),
                versions.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        // Data first: nothing is removed while the swarm still holds records (the
        // bucket's DeleteBucket would fail late, with every fleet already gone).
        self.ensure_no_data(&base).await?;
        let mut removed: Vec<String> = versions.iter().map(|s| s.name.clone()).collect();
        self.delete_stacks(&versions).await?;
        self.delete_stack(&base).await?;
        // Its secrets, and the live versions its switches recorded.
        let mut params = Secrets::of(name).names().to_vec();
        params.extend(crate::names::broker_tls_params(name));
        params.extend(self.lib.roles().iter().map(|m| crate::names::live_param(name, &m.role)));
        ssm::delete(&self.aws.ssm, &params).await?;
        removed.push(base.name);
        Ok(removed)
    }
}

/// What an operator needs next, for `stacks describe`.
pub fn next_steps(b: &Base) -> Vec<(String, String)> {
    let region = &b.region;
    let mut v = vec![
        ("swarm".into(), b.name.clone()),
        ("status".into(), b.status.clone()),
        ("vpc".into(), b.vpc_id.clone()),
        ("url".into(), b.url.clone()),
        ("broker".into(), b.broker.clone()),
        ("queue".into(), b.queue_url.clone()),
        ("dead-letter queue".into(), b.dead_letter_queue_url.clone()),
        ("bucket".into(), b.bucket.clone()),
        ("broker password".into(), format!("SSM {0} (aws ssm get-parameter --with-decryption --name {0})", b.secrets.broker_password)),
        ("router token".into(), format!("SSM {}", b.secrets.router_token)),
        (
            "instances".into(),
            format!("aws ec2 describe-instances --region {region} --filters Name=tag:tyrell:stack,Values={} --query 'Reservations[].Instances[].[InstanceId,Tags[?Key==`tyrell:role`]|[0].Value]'", b.name),
        ),
        ("shell on one".into(), format!("aws ssm start-session --region {region} --target INSTANCE_ID")),
    ];
    if let Some(sg) = &b.metrics_security_group {
        v.push(("metrics box security group".into(), sg.clone()));
    }
    v
}
