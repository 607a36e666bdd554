//! The metrics box: one instance with InfluxDB and Grafana, per VPC.

use std::collections::BTreeMap;

use super::error::Error;
use super::model::{Base, MetricsBox};
use super::render::{self, Vars};
use super::values::AmiRef;
use super::{admin_cidrs_param, generate_secret, tags, validate, Engine};
use crate::aws::cfn::{self, StackSpec};
use crate::aws::{ec2, ssm};
use crate::names::{secret_param, GRAFANA_PASSWORD};

pub const ROLE: &str = "metrics";

/// `tyrell metrics create`, as asked.
pub struct CreateMetrics {
    pub name: String,
    pub vpc_id: String,
    pub ami: AmiRef,
    pub instance_type: String,
    pub allow_cidrs: Vec<String>,
    /// Grafana over HTTPS: an ACM certificate of this region, `ISSUED`, for an ALB of the
    /// box's own (443, and 80 redirecting), reachable from `allow_cidrs` only
    /// (docs/MULTI-REGION.md 8.5). `None`: plain HTTP on 3000, and a warning.
    pub certificate_arn: Option<String>,
}

impl Engine {
    pub async fn create_metrics(&mut self, req: &CreateMetrics) -> anyhow::Result<MetricsBox> {
        validate::name("metrics box", &req.name)?;
        validate::vpc(&req.vpc_id)?;
        let ami = self.resolve_ami(ROLE, &req.ami).await?;
        validate::ami(&ami)?;
        validate::instance_type(&req.instance_type)?;
        for c in &req.allow_cidrs {
            validate::admin_cidr(c)?;
        }
        let admin = admin_cidrs_param(&req.allow_cidrs)?;
        if let Some(arn) = &req.certificate_arn {
            self.check_certificate("--certificate-arn", arn, None).await?;
        }
        self.ensure_free(&req.name).await?;
        let vpc = ec2::vpc(&self.aws.ec2, &req.vpc_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("VPC {} does not exist in {}", req.vpc_id, self.region())))?;
        if !ec2::image_exists(&self.aws.ec2, &ami).await? {
            crate::refuse!(NotFound, "AMI {} does not exist in {}", ami, self.region());
        }
        let subnets = ec2::subnets(&self.aws.ec2, &vpc.id).await?;
        let subnet = subnets
            .iter()
            .find(|s| s.public)
            .or(subnets.first())
            .ok_or_else(|| Error::Invalid(format!("VPC {} has no subnets", vpc.id)))?;
        let public: Vec<&ec2::Subnet> = subnets.iter().filter(|s| s.public).collect();
        if req.certificate_arn.is_some() {
            let azs: std::collections::BTreeSet<_> = public.iter().map(|s| &s.az).collect();
            if azs.len() < 2 {
                crate::refuse!(
                    Invalid,
                    "VPC {} needs public subnets in at least 2 availability zones for Grafana's HTTPS load balancer (found {} in {}); `tyrell network create` makes such a VPC",
                    vpc.id,
                    public.len(),
                    azs.len()
                );
            }
        }
        let password = secret_param(&req.name, GRAFANA_PASSWORD);
        let mut vars = Vars::sample(ROLE);
        vars.region = self.region().to_string();
        vars.stack = req.name.clone();
        vars.version = String::new();
        vars.grafana_password_param = password.clone();
        vars.grafana_tls = req.certificate_arn.is_some().to_string();
        let user_data = render::cloud_init(&self.lib, ROLE, &serde_json::to_value(&vars)?)?;
        let template =
            render::template_with_user_data(&self.lib, ROLE, &user_data).map_err(|e| anyhow::anyhow!("{e}"))?;

        let spec = StackSpec {
            name: req.name.clone(),
            template,
            parameters: BTreeMap::from([
                ("VpcId".into(), vpc.id.clone()),
                ("SubnetId".into(), subnet.id.clone()),
                ("AmiId".into(), ami),
                ("InstanceType".into(), req.instance_type.clone()),
                ("AdminCidrs".into(), admin),
                ("GrafanaPasswordParam".into(), password.clone()),
                ("CertificateArn".into(), req.certificate_arn.clone().unwrap_or_default()),
                ("PublicSubnetIds".into(), public.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(",")),
            ]),
            tags: tags(ROLE, &req.name, None),
        };
        super::limits::check_stack(&spec)?;
        if req.certificate_arn.is_none() {
            self.report.warn(&format!(
                "metrics box {}: no --certificate-arn: Grafana serves plain HTTP on port 3000 (its admin login included); give an ACM certificate for HTTPS through a load balancer",
                req.name
            ));
        }
        let created = !ssm::exists(&self.aws.ssm, &password).await?;
        if created {
            self.report.step(&format!("generating secret {password} (SSM SecureString)"));
            ssm::put_secret(&self.aws.ssm, &password, &generate_secret(), &format!("tyrell metrics box {}", req.name))
                .await?;
        }
        match self.create_stack(&spec).await {
            Ok(s) => Ok(MetricsBox::from(&s)),
            Err(e) => {
                if created {
                    let _ = ssm::delete(&self.aws.ssm, &[password]).await;
                }
                Err(e)
            }
        }
    }

    pub async fn metrics_boxes(&self) -> anyhow::Result<Vec<MetricsBox>> {
        Ok(cfn::list_tyrell(&self.aws.cfn, Some(ROLE)).await?.iter().map(MetricsBox::from).collect())
    }

    /// Removes a metrics box; refuses while a swarm's base stack admits its indexers to it.
    pub async fn remove_metrics(&mut self, name: &str) -> anyhow::Result<MetricsBox> {
        validate::name("metrics box", name)?;
        let stack = self.existing(name, ROLE, "metrics box").await?;
        let m = MetricsBox::from(&stack);
        let users: Vec<String> = self
            .bases()
            .await?
            .iter()
            .map(Base::from)
            .filter(|b| b.metrics_security_group.as_deref() == Some(m.security_group.as_str()))
            .map(|b| b.name)
            .collect();
        if !users.is_empty() {
            crate::refuse!(InUse, "metrics box {name} is used by swarm(s) {}: remove them first", users.join(", "));
        }
        self.delete_stack(&stack).await?;
        ssm::delete(&self.aws.ssm, std::slice::from_ref(&m.grafana_password_param)).await?;
        Ok(m)
    }
}
