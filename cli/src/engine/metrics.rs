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

/// The role's name: `roles/metrics/`, the stacks' `tyrell:role` tag, the AMI builds'.
pub const ROLE: &str = "metrics";

/// `what` ([`secret_param`]) of the SSM String where a metrics box puts the PEM of the
/// self-signed certificate its Grafana serves HTTPS with (made on the box at first boot by
/// `tyrell-grafana-tls`, packer/scripts/role-metrics.sh): `/tyrell/<box>/grafana-certificate`.
/// Public, not a secret; an operator verifies Grafana against it (docs/MULTI-REGION.md
/// 8.5). roles/metrics/cloud-init.yaml names it as `/tyrell/{{stack}}/grafana-certificate`;
/// the box's instance role may write it alone (`GrafanaCertificateParam`); `metrics
/// remove` deletes it after the stack.
pub const GRAFANA_CERTIFICATE: &str = "grafana-certificate";

/// The SSM parameter holding the PEM of the Grafana certificate of metrics box `name`
/// ([`GRAFANA_CERTIFICATE`]).
pub fn grafana_certificate_param(name: &str) -> String {
    secret_param(name, GRAFANA_CERTIFICATE)
}

/// The line `metrics create` prints without `--certificate-arn`: Grafana serves HTTPS
/// itself at `url` with a self-signed certificate, whose PEM is in `param`, and the
/// command that fetches it (to verify Grafana with, e.g. `curl --cacert`).
pub fn self_signed_note(name: &str, url: &str, region: &str, param: &str) -> String {
    format!(
        "metrics box {name}: Grafana serves HTTPS at {url} with a self-signed certificate made on the box; once it has booted, its PEM is in SSM {param}: aws ssm get-parameter --region {region} --name {param} --query Parameter.Value --output text > grafana.pem"
    )
}

/// `tyrell metrics create`, as asked.
pub struct CreateMetrics {
    /// The box's name, also its stack's.
    pub name: String,
    /// The VPC it goes in.
    pub vpc_id: String,
    /// The metrics AMI (an id or a build to resolve).
    pub ami: AmiRef,
    /// Its EC2 instance type.
    pub instance_type: String,
    /// The admin address ranges Grafana admits (up to 4).
    pub allow_cidrs: Vec<String>,
    /// An ACM certificate of this region, `ISSUED`, for an ALB of the box's own (HTTPS on
    /// 443, and 80 redirecting), reachable from `allow_cidrs` only, which reaches Grafana
    /// over HTTPS (docs/MULTI-REGION.md 8.5). `None`: no ALB; Grafana serves HTTPS on 3000
    /// to `allow_cidrs` with the self-signed certificate made on the box
    /// ([`grafana_certificate_param`]). Grafana serves HTTPS either way.
    pub certificate_arn: Option<String>,
}

impl Engine {
    /// Creates a metrics box: its Grafana password (an SSM SecureString made first), then
    /// its stack. Without a certificate it says, through the reporter, where Grafana's
    /// self-signed certificate is published and how to fetch it.
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
        let certificate = grafana_certificate_param(&req.name);
        let mut vars = Vars::sample(ROLE);
        vars.region = self.region().to_string();
        vars.stack = req.name.clone();
        vars.version = String::new();
        vars.grafana_password_param = password.clone();
        // The ALB's own HTTPS; Grafana serves HTTPS either way (the cloud-init does not
        // read it).
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
                ("GrafanaCertificateParam".into(), certificate.clone()),
                ("CertificateArn".into(), req.certificate_arn.clone().unwrap_or_default()),
                ("PublicSubnetIds".into(), public.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(",")),
            ]),
            tags: tags(ROLE, &req.name, None),
        };
        super::limits::check_stack(&spec)?;
        let created = !ssm::exists(&self.aws.ssm, &password).await?;
        if created {
            self.report.step(&format!("generating secret {password} (SSM SecureString)"));
            ssm::put_secret(&self.aws.ssm, &password, &generate_secret(), &format!("tyrell metrics box {}", req.name))
                .await?;
        }
        match self.create_stack(&spec).await {
            Ok(s) => {
                let m = MetricsBox::from(&s);
                if req.certificate_arn.is_none() {
                    let note = self_signed_note(&req.name, &m.grafana_url, &self.region().to_string(), &certificate);
                    self.report.step(&note);
                }
                Ok(m)
            }
            Err(e) => {
                // A box that booted before its stack failed may have published its
                // certificate; the name is free again, so is the parameter.
                let mut gone = vec![certificate];
                if created {
                    gone.push(password);
                }
                let _ = ssm::delete(&self.aws.ssm, &gone).await;
                Err(e)
            }
        }
    }

    /// The metrics boxes of this region.
    pub async fn metrics_boxes(&self) -> anyhow::Result<Vec<MetricsBox>> {
        Ok(cfn::list_tyrell(&self.aws.cfn, Some(ROLE)).await?.iter().map(MetricsBox::from).collect())
    }

    /// Removes a metrics box; refuses while a swarm's base stack admits its indexers to it.
    /// Its Grafana password and certificate parameters go after the stack (the box wrote
    /// the certificate's until it was terminated).
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
        ssm::delete(&self.aws.ssm, &[m.grafana_password_param.clone(), grafana_certificate_param(&m.name)]).await?;
        Ok(m)
    }
}
