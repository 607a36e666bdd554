//! The names tyrell writes into AWS and reads back: its tags. A leaf module: every layer
//! may use it, and it uses none of them.

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
