//! `tyrell metrics`: the metrics box.

use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{key_values, table, Printed};
use crate::engine::metrics::CreateMetrics;
use crate::engine::values::AmiRef;
use crate::engine::Engine;

#[derive(Args, Debug)]
pub struct MetricsArgs {
    #[command(subcommand)]
    cmd: Option<MetricsCmd>,
}

#[derive(Subcommand, Debug)]
enum MetricsCmd {
    /// Create a metrics box (InfluxDB + Grafana) in a VPC; swarms created after it send their indexers' writes to it
    #[command(
        after_help = "Example:\n  tyrell metrics create -v vpc-0abc1234 -a ami-0123abcd --allow-cidr 203.0.113.0/24 metrics1\n\nGrafana (3000) admits only --allow-cidr; InfluxDB (8086) only the indexers of swarms in the VPC."
    )]
    Create {
        name: String,
        #[arg(short = 'v', long = "vpc")]
        vpc: String,
        /// The metrics AMI: an id, `latest` (the newest metrics build, see `tyrell builds`) or `latest:VERSION`
        #[arg(short = 'a', long = "ami")]
        ami: AmiRef,
        #[arg(short = 't', long = "type", default_value = "t3.small")]
        instance_type: String,
        /// Admin address range allowed to Grafana (repeatable, up to 4)
        #[arg(long = "allow-cidr", value_name = "CIDR")]
        allow_cidr: Vec<String>,
    },
    /// List metrics boxes
    List,
    /// Remove a metrics box (refused while a swarm sends to it)
    Remove { name: String },
}

pub async fn run(e: &mut Engine, a: MetricsArgs) -> anyhow::Result<Printed> {
    Ok(match a.cmd.unwrap_or(MetricsCmd::List) {
        MetricsCmd::Create { name, vpc, ami, instance_type, allow_cidr } => {
            let m = e
                .create_metrics(&CreateMetrics { name, vpc_id: vpc, ami, instance_type, allow_cidrs: allow_cidr })
                .await?;
            let text = key_values(&[
                ("name".into(), m.name.clone()),
                ("instance".into(), m.instance_id.clone()),
                ("private ip".into(), m.private_ip.clone()),
                ("grafana".into(), m.grafana_url.clone()),
                ("grafana password".into(), format!("SSM {}", m.grafana_password_param)),
                ("influxdb".into(), m.influx_url.clone()),
            ]);
            Printed::new(serde_json::to_value(&m)?, text)
        }
        MetricsCmd::List => {
            let ms = e.metrics_boxes().await?;
            let rows: Vec<Vec<String>> = ms
                .iter()
                .map(|m| {
                    vec![
                        m.name.clone(),
                        m.vpc_id.clone(),
                        m.instance_id.clone(),
                        m.private_ip.clone(),
                        m.grafana_url.clone(),
                        m.status.clone(),
                    ]
                })
                .collect();
            let text = if rows.is_empty() {
                "no metrics boxes".into()
            } else {
                table(&["NAME", "VPC", "INSTANCE", "PRIVATE IP", "GRAFANA", "STATUS"], &rows)
            };
            Printed::new(json!({ "metrics": ms }), text)
        }
        MetricsCmd::Remove { name } => {
            let m = e.remove_metrics(&name).await?;
            Printed::new(json!({ "removed": m.name }), format!("removed metrics box {}", m.name))
        }
    })
}
