//! Elastic Load Balancing v2: where a listener sends its traffic.

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
