//! `tyrell roles`: what tyrell can deploy, and the cloud-init it renders. Needs no AWS.

use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{table, Printed};
use crate::engine::library::Library;
use crate::engine::render::{self, Vars};

#[derive(Args, Debug)]
pub struct RolesArgs {
    #[command(subcommand)]
    cmd: Option<RolesCmd>,
}

#[derive(Subcommand, Debug)]
enum RolesCmd {
    /// List the roles (one per directory under roles/)
    List,
    /// Print a role's rendered cloud-init, with example values or the ones given
    #[command(
        after_help = "Example:\n  tyrell roles render broker --set stack=swarm1 --set broker_port=1884\n\nVariables: region stack role version broker_host broker_port queue_url bucket metrics_host\nrouter_port broker_password_param router_token_param grafana_password_param"
    )]
    Render {
        /// A role name (bee, broker, ...) or `metrics`
        role: String,
        /// Override one variable (repeatable)
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_kv)]
        set: Vec<(String, String)>,
        /// Print the CloudFormation template a version is created from, user data embedded
        #[arg(long)]
        template: bool,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

pub fn run(lib: &Library, a: RolesArgs) -> anyhow::Result<Printed> {
    Ok(match a.cmd.unwrap_or(RolesCmd::List) {
        RolesCmd::List => {
            let rows: Vec<Vec<String>> = lib
                .roles()
                .iter()
                .map(|m| {
                    vec![
                        m.role.clone(),
                        m.noun.clone(),
                        format!("{:?}", m.traffic.via).to_lowercase(),
                        m.instance_type.clone(),
                        m.about.clone(),
                    ]
                })
                .collect();
            let json = json!({ "roles": lib.roles().iter().map(|m| json!({"role": m.role, "noun": m.noun, "traffic": m.traffic.via, "instance_type": m.instance_type})).collect::<Vec<_>>() });
            Printed::new(json, table(&["ROLE", "NOUN", "TRAFFIC", "DEFAULT TYPE", "ABOUT"], &rows))
        }
        RolesCmd::Render { role, set, template } => {
            let (dir, tpl) = match lib.role(&role) {
                Some(m) => (m.role.clone(), m.template.clone()),
                None => (role.clone(), role),
            };
            let vars = render::with_overrides(&Vars::sample(&dir), &set)?;
            let text = render::cloud_init(lib, &dir, &vars)?;
            if template {
                let cfn = render::template_with_user_data(lib, &tpl, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
                return Ok(Printed::new(json!({ "role": dir, "template": cfn }), cfn));
            }
            Printed::new(json!({ "role": dir, "user_data": text }), text)
        }
    })
}
