//! The names tyrell writes into AWS and reads back: its tags, its stack and parameter
//! names, the fleet template's outputs. A leaf module: every layer may use it, and it
//! uses none of them.

use std::collections::BTreeMap;

/// On every stack and AMI tyrell makes: the role (`base`, `network`, `bee`, ...).
pub const TAG_ROLE: &str = "tyrell:role";
/// On every stack: the swarm (or network / metrics box) it belongs to.
pub const TAG_STACK: &str = "tyrell:stack";
/// On role version stacks and AMIs: the version id.
pub const TAG_VERSION: &str = "tyrell:version";
/// On an Auto Scaling group: `true` on the active version of a role without inbound traffic.
pub const TAG_ACTIVE: &str = "tyrell:active";
/// On everything tyrell makes: `tyrell`.
pub const TAG_BUILT_BY: &str = "tyrell:built-by";
/// On an Auto Scaling group: when its version stopped being the active one (RFC 3339),
/// which tells `--rollback` where to go back to.
pub const TAG_INACTIVE_SINCE: &str = "tyrell:inactive-since";
/// On subnets of a tyrell network: `public` or `private`.
pub const TAG_TIER: &str = "tyrell:tier";

/// Output of a role version stack (roles/fleet/template.yaml): its Auto Scaling group's name.
pub const OUT_ASG: &str = "AutoScalingGroupName";
/// Output of a role version stack with inbound traffic: its target group's ARN.
pub const OUT_TARGET_GROUP: &str = "TargetGroupArn";

/// The stack of one role version: `<swarm>-<role>-<version>` (unique per region).
pub fn stack_name(swarm: &str, role: &str, version: &str) -> String {
    format!("{swarm}-{role}-{version}")
}

/// A swarm's bee-region stack in a region other than its home region: `<swarm>-region`
/// (docs/MULTI-REGION.md 6.2; one per swarm and region).
pub fn bee_region_stack(swarm: &str) -> String {
    format!("{swarm}-region")
}

/// The home region's side of one bee region: `<swarm>-link-<bee region>`.
pub fn bee_link_stack(swarm: &str, region: &str) -> String {
    format!("{swarm}-link-{region}")
}

/// Tag on a bee-region stack (and its VPC peering) naming the swarm's home region.
pub const TAG_HOME_REGION: &str = "tyrell:home-region";

/// Tag on a bee-link stack naming its bee region.
pub const TAG_BEE_REGION: &str = "tyrell:bee-region";

/// The SSM parameter holding one of a swarm's (or metrics box's) secrets:
/// `/tyrell/<owner>/<what>`.
pub fn secret_param(owner: &str, what: &str) -> String {
    format!("/tyrell/{owner}/{what}")
}

/// `what` of the SecureString where a swarm's brokers keep their TLS key, certificate and
/// CA certificate (PEM, in that order), when they end the clients' TLS themselves: made
/// once by the first broker box, create-only (roles/broker/cloud-init.yaml,
/// docs/MULTI-REGION.md 8.1). Deleted with the swarm.
pub const BROKER_TLS: &str = "broker-tls";
/// `what` of the String parameter with a swarm's broker CA certificate (PEM), which the
/// clients trust (`BROKER_CA_PARAM`). Written by the broker boxes; deleted with the swarm.
pub const BROKER_CA: &str = "broker-ca";

/// A swarm's broker TLS parameters, `[/tyrell/<swarm>/broker-tls, /tyrell/<swarm>/broker-ca]`
/// ([`BROKER_TLS`], [`BROKER_CA`]): what `stacks create` clears when an earlier swarm of the
/// name left them and `stacks remove` deletes.
pub fn broker_tls_params(swarm: &str) -> [String; 2] {
    [BROKER_TLS, BROKER_CA].map(|w| secret_param(swarm, w))
}

/// The SSM parameter of a role's traffic lock in a swarm: `/tyrell/<swarm>/locks/<role>`.
pub fn lock_param(swarm: &str, role: &str) -> String {
    format!("/tyrell/{swarm}/locks/{role}")
}

/// The SSM parameter (String) naming the version of a role that the last completed
/// `tyrell traffic` switch in a swarm made live: `/tyrell/<swarm>/live/<role>`. Boxes read
/// it (a broker whose version is not live moves its clients, roles/broker); removed with
/// the swarm.
pub fn live_param(swarm: &str, role: &str) -> String {
    format!("/tyrell/{swarm}/live/{role}")
}

/// The SSM parameter (String, JSON [`crate::engine::traffic::state::StateReport`]) where the boxes
/// of one role version report the swarm state they hold: `/tyrell/<swarm>/state/<role>/<version>`.
/// Brokers write it (roles/broker: the retained messages, the watch list, the
/// subscriptions) every 30 s; `tyrell traffic` checks it before moving traffic; removed with
/// the version.
pub fn state_param(swarm: &str, role: &str, version: &str) -> String {
    format!("/tyrell/{swarm}/state/{role}/{version}")
}

/// A swarm's MQTT broker password ([`secret_param`] `what`).
pub const BROKER_PASSWORD: &str = "broker-password";
/// A swarm's router API token ([`secret_param`] `what`).
pub const ROUTER_TOKEN: &str = "router-token";
/// A metrics box's Grafana admin password ([`secret_param`] `what`).
pub const GRAFANA_PASSWORD: &str = "grafana-password";

/// Tags of a stack tyrell creates: role, stack (swarm, network or box name), built-by,
/// and the version for a role version.
pub fn tags(role: &str, stack: &str, version: Option<&str>) -> BTreeMap<String, String> {
    let mut t = BTreeMap::from([
        (TAG_ROLE.to_string(), role.to_string()),
        (TAG_STACK.to_string(), stack.to_string()),
        (TAG_BUILT_BY.to_string(), "tyrell".to_string()),
    ]);
    if let Some(v) = version {
        t.insert(TAG_VERSION.to_string(), v.to_string());
    }
    t
}
