//! Rendering: a role's cloud-init (handlebars, strict) from the values of its swarm, and
//! the CloudFormation template that carries it as user data.

use base64::Engine as _;
use handlebars::{Handlebars, RenderErrorReason};
use serde::Serialize;

use super::library::Library;

/// The values a cloud-init template may use (docs/ARCHITECTURE.md, "Cloud-init
/// rendering"). Names of secrets only, never their values.
#[derive(Debug, Clone, Serialize)]
pub struct Vars {
    pub region: String,
    pub stack: String,
    pub role: String,
    pub version: String,
    /// Where the swarm's MQTT clients connect: the base stack's `BrokerHost` (the name on
    /// the ACM certificate when the NLB ends TLS, else the NLB's DNS name, which the
    /// brokers' own certificate carries).
    pub broker_host: String,
    /// The clients' MQTT port (`BrokerPort`: 8883; 1883 only for a base stack made before
    /// TLS was the default and without a broker certificate).
    pub broker_port: u16,
    /// `"true"` when the clients use TLS and verify the broker's certificate (`BrokerTls`),
    /// else `"false"` (a base stack made before TLS was the default).
    pub broker_tls: String,
    /// The SSM parameter with the swarm's broker CA certificate (PEM) that the clients
    /// trust (`BROKER_CA_PARAM`): `/tyrell/<swarm>/broker-ca`, its ARN in a bee region
    /// (`BrokerCaParamArn`); empty when the NLB ends TLS with an ACM certificate (the
    /// clients then verify against the system roots).
    pub broker_ca_param: String,
    /// The SSM SecureString where the brokers keep their TLS key, certificate and CA
    /// (`/tyrell/<swarm>/broker-tls`, made by the first broker box); empty when the NLB
    /// ends TLS.
    pub broker_tls_param: String,
    /// The broker NLB's own DNS name (`BrokerNlbHost`), where a new broker reads the
    /// announcements, on `broker_nlb_port`.
    pub broker_nlb_host: String,
    /// The NLB port a broker reads the announcements on (`BrokerNlbPort`: 8883 with the
    /// brokers' own TLS, 1883 plain beside a TLS-ending NLB's listener).
    pub broker_nlb_port: u16,
    /// The port mosquitto listens on in plain text, for the other brokers' bridges and
    /// its own tools ([`BROKER_PORT`]); the NLB forwards to it only when it ends TLS.
    pub broker_listen_port: u16,
    pub queue_url: String,
    pub bucket: String,
    pub metrics_host: String,
    pub router_port: u16,
    pub broker_password_param: String,
    pub router_token_param: String,
    pub grafana_password_param: String,
    /// The SSM parameter naming the role's live version, written by `tyrell traffic` at
    /// the end of each switch ([`crate::names::live_param`]).
    pub live_param: String,
    /// The SSM parameter where this version's boxes report the swarm state they hold
    /// ([`crate::names::state_param`]).
    pub state_param: String,
}

pub const ROUTER_PORT: u16 = 8080;
/// mosquitto's plain MQTT port (IANA "mqtt"): the brokers' bridges and own tools.
pub const BROKER_PORT: u16 = 1883;
/// MQTT over TLS (IANA "secure-mqtt"): the clients' port on the broker NLB.
pub const BROKER_TLS_PORT: u16 = 8883;

impl Vars {
    /// Example values, for `tyrell roles render` and the template checks.
    pub fn sample(role: &str) -> Vars {
        Vars {
            region: "eu-west-1".into(),
            stack: "swarm1".into(),
            role: role.into(),
            version: "v261123101500".into(),
            broker_host: "swarm1-broker-0123456789.elb.eu-west-1.amazonaws.com".into(),
            broker_port: BROKER_TLS_PORT,
            broker_tls: "true".into(),
            broker_ca_param: secret_param("swarm1", "broker-ca"),
            broker_tls_param: secret_param("swarm1", "broker-tls"),
            broker_nlb_host: "swarm1-broker-0123456789.elb.eu-west-1.amazonaws.com".into(),
            broker_nlb_port: BROKER_TLS_PORT,
            broker_listen_port: BROKER_PORT,
            queue_url: "https://sqs.eu-west-1.amazonaws.com/123456789012/swarm1-pings".into(),
            bucket: "swarm1-archive-123456789012".into(),
            metrics_host: "10.0.1.10".into(),
            router_port: ROUTER_PORT,
            broker_password_param: secret_param("swarm1", "broker-password"),
            router_token_param: secret_param("swarm1", "router-token"),
            grafana_password_param: secret_param("metrics", "grafana-password"),
            live_param: crate::names::live_param("swarm1", role),
            state_param: crate::names::state_param("swarm1", role, "v261123101500"),
        }
    }
}

pub use crate::names::secret_param;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("role {0} has no cloud-init template (roles/{0}/cloud-init.yaml)")]
    NoCloudInit(String),
    #[error("cannot render roles/{role}/cloud-init.yaml: {reason}")]
    Template { role: String, reason: String },
    #[error("roles/{0}/template.yaml must hold exactly one `UserData: \"{{{{user_data}}}}\"` placeholder")]
    NoPlaceholder(String),
    #[error("unknown variable {0:?} (known: {1})")]
    UnknownVar(String, String),
    #[error("the rendered cloud-init of role {role} is {bytes} bytes, over EC2's user data limit of {max} bytes (16 KB before base64): shorten roles/{role}/cloud-init.yaml or move content into the AMI (packer/scripts)", max = USER_DATA_MAX_BYTES)]
    UserDataTooLarge { role: String, bytes: usize },
}

/// EC2's limit on user data: "User data is limited to 16 KB, in raw form, before it is
/// base64-encoded" (Amazon EC2 User Guide, "Run commands when you launch an EC2
/// instance with user data input"). A launch template with more fails only when
/// CloudFormation creates it, so tyrell refuses it while rendering.
pub const USER_DATA_MAX_BYTES: usize = 16_384;

/// Renders `roles/<role>/cloud-init.yaml` with `vars`. Strict: a variable the template
/// names but `vars` lacks is an error, not an empty string.
pub fn cloud_init(lib: &Library, role: &str, vars: &serde_json::Value) -> Result<String, RenderError> {
    let src = lib.cloud_init(role).ok_or_else(|| RenderError::NoCloudInit(role.into()))?;
    let err = |reason: String| RenderError::Template { role: role.into(), reason };
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    let files: std::sync::Arc<std::collections::BTreeMap<String, String>> =
        std::sync::Arc::new(lib.files_under("roles/").map(|(p, c)| (p.to_string(), c.to_string())).collect());
    // {{file "roles/metrics/dashboard.json"}}: another file of the role definitions, as it is;
    // {{script "roles/broker/tyrell-broker-bridge"}}: a shell script without its comment
    // lines and blank lines ([`strip_script`]), so its documentation stays in the
    // repository and does not count against the user data limit.
    for (name, strip) in [("file", false), ("script", true)] {
        let files = files.clone();
        hb.register_helper(
            name,
            Box::new(
                move |h: &handlebars::Helper,
                      _: &Handlebars,
                      _: &handlebars::Context,
                      _: &mut handlebars::RenderContext,
                      out: &mut dyn handlebars::Output| {
                    let path = h
                        .param(0)
                        .and_then(|p| p.value().as_str())
                        .ok_or(RenderErrorReason::ParamNotFoundForIndex(name, 0))?;
                    let text = files
                        .get(path)
                        .ok_or_else(|| RenderErrorReason::Other(format!("no file {path} in the role definitions")))?;
                    if strip {
                        out.write(&strip_script(text))?;
                    } else {
                        out.write(text)?;
                    }
                    Ok(())
                },
            ),
        );
    }
    // {{indent 6 (file "...")}}: every line but the first indented, for YAML block scalars.
    hb.register_helper(
        "indent",
        Box::new(
            |h: &handlebars::Helper,
             _: &Handlebars,
             _: &handlebars::Context,
             _: &mut handlebars::RenderContext,
             out: &mut dyn handlebars::Output| {
                let n = h
                    .param(0)
                    .and_then(|p| p.value().as_u64())
                    .ok_or(RenderErrorReason::ParamNotFoundForIndex("indent", 0))?;
                let text = h
                    .param(1)
                    .and_then(|p| p.value().as_str())
                    .ok_or(RenderErrorReason::ParamNotFoundForIndex("indent", 1))?;
                let pad = " ".repeat(n as usize);
                out.write(&text.lines().collect::<Vec<_>>().join(&format!("\n{pad}")))?;
                Ok(())
            },
        ),
    );
    let text = hb.render_template(src, vars).map_err(|e| err(e.to_string()))?;
    if !text.starts_with("#cloud-config\n") {
        return Err(err("the rendered file must start with a #cloud-config line".into()));
    }
    if text.len() > USER_DATA_MAX_BYTES {
        return Err(RenderError::UserDataTooLarge { role: role.into(), bytes: text.len() });
    }
    Ok(text)
}

/// A shell script without its full-line comments (a `#` after optional blanks) and blank
/// lines, its first line (`#!`) kept. A script so inlined must not need such lines inside
/// a here-document.
pub fn strip_script(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if i > 0 && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Merges `key=value` overrides into `vars`; only known keys may be set.
pub fn with_overrides(vars: &Vars, sets: &[(String, String)]) -> Result<serde_json::Value, RenderError> {
    let mut v = serde_json::to_value(vars).expect("vars serialise");
    let map = v.as_object_mut().unwrap();
    for (k, val) in sets {
        let Some(slot) = map.get_mut(k) else {
            return Err(RenderError::UnknownVar(k.clone(), map.keys().cloned().collect::<Vec<_>>().join(", ")));
        };
        *slot = match slot {
            serde_json::Value::Number(_) => val.parse::<u64>().map(Into::into).unwrap_or_else(|_| val.clone().into()),
            _ => val.clone().into(),
        };
    }
    Ok(v)
}

/// The CloudFormation template `roles/<dir>/template.yaml` with its `{{user_data}}`
/// placeholder replaced by the base64 of `user_data`.
pub fn template_with_user_data(
    lib: &Library,
    dir: &str,
    user_data: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let tpl = lib.template(dir)?;
    // Only the quoted value `UserData: "{{user_data}}"`: the bare word may appear in prose.
    const PLACEHOLDER: &str = "\"{{user_data}}\"";
    if tpl.matches(PLACEHOLDER).count() != 1 {
        return Err(Box::new(RenderError::NoPlaceholder(dir.into())));
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(user_data);
    Ok(tpl.replace(PLACEHOLDER, &format!("\"{b64}\"")))
}

#[cfg(test)]
mod tests {
    use super::strip_script;

    #[test]
    fn a_stripped_script_keeps_its_shebang_and_code_only() {
        let s = "#!/bin/bash\n# what it does\n\nset -u\n  # indented comment\necho '# not a comment' # trailing\n";
        assert_eq!(strip_script(s), "#!/bin/bash\nset -u\necho '# not a comment' # trailing\n");
    }
}
