//! `tyrell metrics`: the metrics box.

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{key_values, table, Outcome, Printed};
use crate::engine::metrics::CreateMetrics;
use crate::engine::model::MetricsBox;
use crate::engine::values::AmiRef;
use crate::engine::Engine;

/// `tyrell metrics [create|list|remove]` (no subcommand: list).
#[derive(Args, Debug)]
pub struct MetricsArgs {
    #[command(subcommand)]
    cmd: Option<MetricsCmd>,
}

#[derive(Subcommand, Debug)]
enum MetricsCmd {
    /// Create a metrics box (InfluxDB + Grafana) in a VPC; swarms created after it send their indexers' writes to it
    #[command(
        after_help = "Example:\n  tyrell metrics create -v vpc-0abc1234 -a ami-0123abcd --allow-cidr 203.0.113.0/24 metrics1\n\nGrafana serves HTTPS to --allow-cidr only: through a load balancer (443) with --certificate-arn,\nelse itself on 3000 with a self-signed certificate made on the box, whose PEM it puts in SSM\n/tyrell/NAME/grafana-certificate; InfluxDB (8086) admits only the indexers of swarms in the VPC."
    )]
    Create {
        /// The metrics box's name, also its stack's: 2-28 lowercase letters, digits and single hyphens, starting with a letter
        name: String,
        /// The VPC to put it in (`tyrell network create` prints one): its indexers' swarms must be in it
        #[arg(short = 'v', long = "vpc")]
        vpc: String,
        /// The metrics AMI: an id, `latest` (the newest metrics build, see `tyrell builds`) or `latest:VERSION`
        #[arg(short = 'a', long = "ami")]
        ami: AmiRef,
        /// EC2 instance type of the box
        #[arg(short = 't', long = "type", default_value = "t3.small")]
        instance_type: String,
        /// Admin address range allowed to Grafana (repeatable, up to 4)
        #[arg(long = "allow-cidr", value_name = "CIDR")]
        allow_cidr: Vec<String>,
        /// Serve Grafana through a load balancer of its own with this ACM certificate (HTTPS on 443, HTTP redirects); without it Grafana serves HTTPS on 3000 with a self-signed certificate
        #[arg(long, value_name = "ARN")]
        certificate_arn: Option<String>,
    },
    /// List metrics boxes
    List,
    /// Remove a metrics box (refused while a swarm sends to it)
    Remove {
        /// The metrics box's name
        name: String,
    },
}

/// `metrics create`: the box, as `key: value` lines.
#[derive(Serialize)]
#[serde(transparent)]
pub struct Created(pub MetricsBox);

impl Outcome for Created {
    fn render(&self) -> String {
        let m = &self.0;
        key_values(&[
            ("name".into(), m.name.clone()),
            ("instance".into(), m.instance_id.clone()),
            ("private ip".into(), m.private_ip.clone()),
            ("grafana".into(), m.grafana_url.clone()),
            ("grafana password".into(), format!("SSM {}", m.grafana_password_param)),
            ("influxdb".into(), m.influx_url.clone()),
        ])
    }
}

/// `metrics` / `metrics list`.
#[derive(Serialize)]
pub struct List {
    /// The boxes of the region.
    pub metrics: Vec<MetricsBox>,
}

impl Outcome for List {
    fn render(&self) -> String {
        if self.metrics.is_empty() {
            return "no metrics boxes".into();
        }
        let rows: Vec<Vec<String>> = self
            .metrics
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    m.region.to_string(),
                    m.vpc_id.clone(),
                    m.instance_id.clone(),
                    m.private_ip.clone(),
                    m.grafana_url.clone(),
                    m.status.clone(),
                ]
            })
            .collect();
        table(&["NAME", "REGION", "VPC", "INSTANCE", "PRIVATE IP", "GRAFANA", "STATUS"], &rows)
    }
}

/// `metrics remove`: the box's name.
#[derive(Serialize)]
pub struct Removed {
    /// The removed box's name.
    pub removed: String,
}

impl Outcome for Removed {
    fn render(&self) -> String {
        format!("removed metrics box {}", self.removed)
    }
}

/// Runs a `tyrell metrics` command in `e`'s region.
pub async fn run(e: &mut Engine, a: MetricsArgs) -> anyhow::Result<Printed> {
    match a.cmd.unwrap_or(MetricsCmd::List) {
        MetricsCmd::Create { name, vpc, ami, instance_type, allow_cidr, certificate_arn } => {
            let req = CreateMetrics { name, vpc_id: vpc, ami, instance_type, allow_cidrs: allow_cidr, certificate_arn };
            Printed::of(&Created(e.create_metrics(&req).await?))
        }
        MetricsCmd::List => Printed::of(&List { metrics: e.metrics_boxes().await? }),
        MetricsCmd::Remove { name } => Printed::of(&Removed { removed: e.remove_metrics(&name).await?.name }),
    }
}
