//! `tyrell roles`: what tyrell can deploy, and the cloud-init it renders. Needs no AWS.

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{table, Outcome, Printed};
use crate::engine::library::{Library, Via};
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
        after_help = "Example:\n  tyrell roles render broker --set stack=swarm1 --set broker_listen_port=1884\n\nVariables: region stack role version broker_host broker_port broker_tls broker_ca_param\nbroker_tls_param broker_nlb_host broker_nlb_port broker_listen_port queue_url bucket metrics_host\nrouter_port broker_password_param router_token_param grafana_password_param"
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

/// One role of `roles list`.
#[derive(Serialize)]
pub struct RoleRow {
    pub role: String,
    pub noun: String,
    /// How it takes traffic: `alb`, `nlb` or `none`.
    pub traffic: Via,
    /// The default instance type.
    pub instance_type: String,
    #[serde(skip)]
    pub about: String,
}

/// `roles` / `roles list`.
#[derive(Serialize)]
pub struct List {
    pub roles: Vec<RoleRow>,
}

impl Outcome for List {
    fn render(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .roles
            .iter()
            .map(|m| {
                vec![
                    m.role.clone(),
                    m.noun.clone(),
                    format!("{:?}", m.traffic).to_lowercase(),
                    m.instance_type.clone(),
                    m.about.clone(),
                ]
            })
            .collect();
        table(&["ROLE", "NOUN", "TRAFFIC", "DEFAULT TYPE", "ABOUT"], &rows)
    }
}

/// `roles render ROLE`: the rendered cloud-init, printed as it is.
#[derive(Serialize)]
pub struct UserData {
    pub role: String,
    pub user_data: String,
}

impl Outcome for UserData {
    fn render(&self) -> String {
        self.user_data.clone()
    }
}

/// `roles render ROLE --template`: the CloudFormation template with the user data in it.
#[derive(Serialize)]
pub struct Template {
    pub role: String,
    pub template: String,
}

impl Outcome for Template {
    fn render(&self) -> String {
        self.template.clone()
    }
}

pub fn run(lib: &Library, a: RolesArgs) -> anyhow::Result<Printed> {
    match a.cmd.unwrap_or(RolesCmd::List) {
        RolesCmd::List => Printed::of(&List {
            roles: lib
                .roles()
                .iter()
                .map(|m| RoleRow {
                    role: m.role.clone(),
                    noun: m.noun.clone(),
                    traffic: m.traffic.via,
                    instance_type: m.instance_type.clone(),
                    about: m.about.clone(),
                })
                .collect(),
        }),
        RolesCmd::Render { role, set, template } => {
            let (dir, tpl) = match lib.role(&role) {
                Some(m) => (m.role.clone(), m.template.clone()),
                None => (role.clone(), role),
            };
            let vars = render::with_overrides(&Vars::sample(&dir), &set)?;
            let text = render::cloud_init(lib, &dir, &vars)?;
            if template {
                let cfn = render::template_with_user_data(lib, &tpl, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
                return Printed::of(&Template { role: dir, template: cfn });
            }
            Printed::of(&UserData { role: dir, user_data: text })
        }
    }
}
