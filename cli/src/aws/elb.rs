//! Elastic Load Balancing v2: where a listener sends its traffic.

pub use aws_sdk_elasticloadbalancingv2::types::TargetHealthStateEnum as TargetState;
use aws_sdk_elasticloadbalancingv2::Client;

use super::{describe, AwsError};

/// The target groups a listener's default action forwards to, with their weights
/// (a plain forward counts as weight 1 to one group; a fixed response as none).
pub async fn listener_weights(elb: &Client, listener_arn: &str) -> Result<Vec<(String, i32)>, AwsError> {
    let out = elb
        .describe_listeners()
        .listener_arns(listener_arn)
        .send()
        .await
        .map_err(|e| describe(&format!("cannot read listener {listener_arn}"), e))?;
    let mut weights = Vec::new();
    for l in out.listeners() {
        for a in l.default_actions() {
            if let Some(fc) = a.forward_config() {
                for t in fc.target_groups() {
                    weights.push((t.target_group_arn().unwrap_or_default().to_string(), t.weight().unwrap_or(1)));
                }
            } else if let Some(tg) = a.target_group_arn() {
                weights.push((tg.to_string(), 1));
            }
        }
    }
    Ok(weights)
}

/// Points a listener's default action at target groups, in one atomic `ModifyListener`:
/// one group is a plain forward, several a weighted forward (ALB only; weights 0-999).
pub async fn forward(elb: &Client, listener_arn: &str, targets: &[(String, i32)]) -> Result<(), AwsError> {
    use aws_sdk_elasticloadbalancingv2::types::{Action, ActionTypeEnum, ForwardActionConfig, TargetGroupTuple};
    let action = match targets {
        [(tg, _)] => Action::builder().r#type(ActionTypeEnum::Forward).target_group_arn(tg).build(),
        _ => {
            let config = targets.iter().fold(ForwardActionConfig::builder(), |c, (tg, w)| {
                c.target_groups(TargetGroupTuple::builder().target_group_arn(tg).weight(*w).build())
            });
            Action::builder().r#type(ActionTypeEnum::Forward).forward_config(config.build()).build()
        }
    };
    elb.modify_listener()
        .listener_arn(listener_arn)
        .default_actions(action)
        .send()
        .await
        .map_err(|e| describe(&format!("cannot change where listener {listener_arn} forwards"), e))?;
    Ok(())
}

/// The health of one registered target, as the load balancer sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetHealth {
    pub id: String,
    /// `initial`, `healthy`, `unhealthy`, `unused`, `draining`, `unavailable` (the SDK enum).
    pub state: TargetState,
    /// The reason code and description, when not healthy.
    pub reason: Option<String>,
}

pub async fn target_health(elb: &Client, target_group_arn: &str) -> Result<Vec<TargetHealth>, AwsError> {
    let out = elb
        .describe_target_health()
        .target_group_arn(target_group_arn)
        .send()
        .await
        .map_err(|e| describe(&format!("cannot read the target health of {target_group_arn}"), e))?;
    Ok(out
        .target_health_descriptions()
        .iter()
        .map(|d| {
            let h = d.target_health();
            let reason = match (h.and_then(|h| h.reason()), h.and_then(|h| h.description())) {
                (Some(r), Some(d)) => Some(format!("{}: {d}", r.as_str())),
                (Some(r), None) => Some(r.as_str().to_string()),
                (None, Some(d)) => Some(d.to_string()),
                (None, None) => None,
            };
            TargetHealth {
                id: d.target().and_then(|t| t.id()).unwrap_or_default().to_string(),
                state: h.and_then(|h| h.state()).cloned().unwrap_or_else(|| TargetState::from("")),
                reason,
            }
        })
        .collect())
}

/// One listener rule (not the default action): its priority, what it matches, and the
/// target groups it forwards to with their weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub priority: String,
    /// The conditions, e.g. `path /legacy/*` (`; ` between several).
    pub matches: String,
    pub targets: Vec<(String, i32)>,
}

/// A listener's rules other than the default one (every page read).
pub async fn listener_rules(elb: &Client, listener_arn: &str) -> Result<Vec<Rule>, AwsError> {
    let mut rules = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let out = elb
            .describe_rules()
            .listener_arn(listener_arn)
            .set_marker(marker.clone())
            .send()
            .await
            .map_err(|e| describe(&format!("cannot read the rules of listener {listener_arn}"), e))?;
        for r in out.rules().iter().filter(|r| r.is_default() != Some(true)) {
            let matches = r
                .conditions()
                .iter()
                .map(|c| {
                    let mut values: Vec<String> = c.values().to_vec();
                    if let Some(p) = c.path_pattern_config() {
                        values.extend(p.values().iter().cloned());
                    }
                    if let Some(h) = c.host_header_config() {
                        values.extend(h.values().iter().cloned());
                    }
                    values.sort();
                    values.dedup();
                    let field = match c.field().unwrap_or_default() {
                        "path-pattern" => "path",
                        "host-header" => "host",
                        other => other,
                    };
                    format!("{field} {}", values.join(","))
                })
                .collect::<Vec<_>>()
                .join("; ");
            let mut targets = Vec::new();
            for a in r.actions() {
                if let Some(fc) = a.forward_config().filter(|fc| !fc.target_groups().is_empty()) {
                    for t in fc.target_groups() {
                        targets.push((t.target_group_arn().unwrap_or_default().to_string(), t.weight().unwrap_or(1)));
                    }
                } else if let Some(tg) = a.target_group_arn() {
                    targets.push((tg.to_string(), 1));
                }
            }
            rules.push(Rule { priority: r.priority().unwrap_or_default().to_string(), matches, targets });
        }
        marker = out.next_marker().map(str::to_string);
        if marker.is_none() {
            return Ok(rules);
        }
    }
}
