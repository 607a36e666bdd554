//! The instance metadata service at 169.254.169.254, inside the cloud namespace. IMDSv2
//! only: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1–21600)
//! returns a token bound to the caller's address; every other request needs it in
//! `X-aws-ec2-metadata-token` (none or a wrong one: 401). The caller is identified by its
//! source address, the box's private IP.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// What the metadata service knows of one instance.
#[derive(Debug, Clone, Default)]
pub struct Instance {
    /// `i-…`.
    pub id: String,
    /// The AMI.
    pub ami: String,
    /// e.g. `t3.micro`.
    pub instance_type: String,
    /// e.g. `us-east-1a`.
    pub az: String,
    /// Its private IP.
    pub ip: Option<Ipv4Addr>,
    /// `ip-10-0-1-5.ec2.internal`.
    pub dns_name: String,
    /// The raw user data.
    pub user_data: Vec<u8>,
    /// RFC 3339 launch time.
    pub launched: String,
    /// The instance profile's role name (credentials are served under it).
    pub role_name: String,
}

/// Looks up an instance's Auto Scaling lifecycle state (e.g. `InService`,
/// `Terminating:Wait`); `None` when it is in no group.
pub type LifecycleLookup =
    Arc<dyn Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>> + Send + Sync>;

/// The metadata service's shared state.
#[derive(Clone)]
pub struct Imds {
    /// Instances by private IP (the runner keeps it current).
    pub instances: Arc<RwLock<HashMap<Ipv4Addr, Instance>>>,
    tokens: Arc<RwLock<HashMap<String, (Ipv4Addr, Instant)>>>,
    /// The region.
    pub region: String,
    /// Credentials handed to boxes (the emulator accepts any).
    pub access_key: String,
    /// See `access_key`.
    pub secret_key: String,
    lifecycle: LifecycleLookup,
}

/// The account id the emulator uses.
pub const ACCOUNT: &str = "123456789012";

/// What a box's target lifecycle state is for an Auto Scaling lifecycle state (as EC2's
/// `autoscaling/target-lifecycle-state` reports it).
pub fn target_lifecycle_state(asg_state: &str) -> &'static str {
    if asg_state.starts_with("Terminat") {
        "Terminated"
    } else if asg_state.contains("Standby") {
        "Standby"
    } else if asg_state.starts_with("Detach") {
        "Detached"
    } else if asg_state.starts_with("Warmed:Hibernated") {
        "Warmed:Hibernated"
    } else if asg_state.starts_with("Warmed:Running") {
        "Warmed:Running"
    } else if asg_state.starts_with("Warmed") {
        "Warmed:Stopped"
    } else {
        "InService"
    }
}

impl Imds {
    /// A service with no instances yet.
    pub fn new(region: String, lifecycle: LifecycleLookup) -> Imds {
        Imds {
            instances: Arc::default(),
            tokens: Arc::default(),
            region,
            access_key: std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "testing".into()),
            secret_key: std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "testing".into()),
            lifecycle,
        }
    }

    /// Serves on `listener` (made with [`crate::net::listen_tcp_in`]) until the task ends.
    pub async fn serve(self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        let l = tokio::net::TcpListener::from_std(listener)?;
        let app = axum::Router::new().fallback(handle).with_state(self);
        axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
        Ok(())
    }

    fn instance(&self, ip: Ipv4Addr) -> Option<Instance> {
        self.instances.read().ok()?.get(&ip).cloned()
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [("content-type", "text/plain")], body.into()).into_response()
}

fn unauthorized() -> Response {
    text(StatusCode::UNAUTHORIZED, "")
}

async fn handle(
    State(s): State<Imds>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    _body: Bytes,
) -> Response {
    let IpAddr::V4(src) = peer.ip() else { return text(StatusCode::FORBIDDEN, "") };
    let path = uri.path().trim_end_matches('/').to_string();
    if path == "/latest/api/token" {
        if method != Method::PUT {
            return text(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        // As EC2: a token request that went through a proxy is refused.
        if headers.contains_key("x-forwarded-for") {
            return text(StatusCode::FORBIDDEN, "");
        }
        let ttl = headers
            .get("x-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let Some(ttl) = ttl.filter(|t| (1..=21600).contains(t)) else {
            return text(StatusCode::BAD_REQUEST, "");
        };
        let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        if let Ok(mut t) = s.tokens.write() {
            let now = Instant::now();
            t.retain(|_, (_, exp)| *exp > now);
            t.insert(token.clone(), (src, now + Duration::from_secs(ttl)));
        }
        return (
            StatusCode::OK,
            [("content-type", "text/plain"), ("x-aws-ec2-metadata-token-ttl-seconds", &ttl.to_string())],
            token,
        )
            .into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    let token = headers.get("x-aws-ec2-metadata-token").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let valid = s
        .tokens
        .read()
        .ok()
        .and_then(|t| t.get(token).copied())
        .is_some_and(|(ip, exp)| ip == src && exp > Instant::now());
    if !valid {
        return unauthorized();
    }
    let Some(i) = s.instance(src) else {
        return text(StatusCode::NOT_FOUND, "");
    };
    answer(&s, &i, &path).await
}

async fn answer(s: &Imds, i: &Instance, path: &str) -> Response {
    let ip = i.ip.map(|a| a.to_string()).unwrap_or_default();
    let ok = |b: String| text(StatusCode::OK, b);
    let md = path.strip_prefix("/latest/meta-data").map(|p| p.trim_start_matches('/'));
    match (path, md) {
        ("/latest", _) => ok("dynamic\nmeta-data\nuser-data".into()),
        ("/latest/user-data", _) => {
            if i.user_data.is_empty() {
                text(StatusCode::NOT_FOUND, "")
            } else {
                (StatusCode::OK, [("content-type", "application/octet-stream")], i.user_data.clone()).into_response()
            }
        }
        ("/latest/dynamic", _) => ok("instance-identity/".into()),
        ("/latest/dynamic/instance-identity", _) => ok("document".into()),
        ("/latest/dynamic/instance-identity/document", _) => {
            let doc = serde_json::json!({
                "accountId": ACCOUNT,
                "architecture": "x86_64",
                "availabilityZone": i.az,
                "imageId": i.ami,
                "instanceId": i.id,
                "instanceType": i.instance_type,
                "pendingTime": i.launched,
                "privateIp": ip,
                "region": s.region,
                "version": "2017-09-30",
            });
            (StatusCode::OK, [("content-type", "application/json")], doc.to_string()).into_response()
        }
        (_, Some("")) => ok([
            "ami-id",
            "autoscaling/",
            "hostname",
            "iam/",
            "instance-id",
            "instance-type",
            "local-hostname",
            "local-ipv4",
            "placement/",
        ]
        .join("\n")),
        (_, Some("ami-id")) => ok(i.ami.clone()),
        (_, Some("instance-id")) => ok(i.id.clone()),
        (_, Some("instance-type")) => ok(i.instance_type.clone()),
        (_, Some("local-ipv4")) => ok(ip),
        (_, Some("hostname" | "local-hostname")) => ok(i.dns_name.clone()),
        (_, Some("placement")) => ok("availability-zone\nregion".into()),
        (_, Some("placement/availability-zone")) => ok(i.az.clone()),
        (_, Some("placement/region")) => ok(s.region.clone()),
        (_, Some("iam")) => ok("info\nsecurity-credentials/".into()),
        (_, Some("iam/info")) => {
            let doc = serde_json::json!({
                "Code": "Success",
                "LastUpdated": common::rfc3339::now_seconds(),
                "InstanceProfileArn": format!("arn:aws:iam::{ACCOUNT}:instance-profile/{}", i.role_name),
                "InstanceProfileId": "AIPALOCALTYRELL0000000",
            });
            ok(doc.to_string())
        }
        (_, Some("iam/security-credentials")) => ok(i.role_name.clone()),
        (_, Some(p)) if p.strip_prefix("iam/security-credentials/") == Some(i.role_name.as_str()) => {
            let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(6);
            let doc = serde_json::json!({
                "Code": "Success",
                "LastUpdated": common::rfc3339::now_seconds(),
                "Type": "AWS-HMAC",
                "AccessKeyId": s.access_key,
                "SecretAccessKey": s.secret_key,
                "Token": "tyrell-local-session-token",
                "Expiration": common::rfc3339::seconds(expires),
            });
            ok(doc.to_string())
        }
        (_, Some("autoscaling")) => ok("target-lifecycle-state".into()),
        (_, Some("autoscaling/target-lifecycle-state")) => match (s.lifecycle)(i.id.clone()).await {
            Some(state) => ok(target_lifecycle_state(&state).into()),
            None => text(StatusCode::NOT_FOUND, ""),
        },
        _ => text(StatusCode::NOT_FOUND, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_states() {
        assert_eq!(target_lifecycle_state("InService"), "InService");
        assert_eq!(target_lifecycle_state("Pending:Wait"), "InService");
        assert_eq!(target_lifecycle_state("Terminating:Wait"), "Terminated");
        assert_eq!(target_lifecycle_state("Terminating"), "Terminated");
        assert_eq!(target_lifecycle_state("EnteringStandby"), "Standby");
        assert_eq!(target_lifecycle_state("Detaching"), "Detached");
        assert_eq!(target_lifecycle_state("Warmed:Pending"), "Warmed:Stopped");
    }
}
