//! The emulator's load balancers as local proxies that follow its state.
//!
//! Every ELBv2 load balancer of the followed region gets an address in the cloud namespace
//! ([`address`]: 169.254.172.N on its `lo`) that its DNS name resolves to inside the boxes,
//! and each listener port a proxy there, plus one on host loopback (`127.0.0.1:PORT`,
//! listed by `tyrell-local status`) for the operator:
//!
//! * an **application** load balancer proxies HTTP per request (hyper): listener rules by
//!   priority (`path-pattern`, `host-header`), then the default action; `forward` picks a
//!   target group by weight (smooth weighted round robin, so 1,000 requests split exactly
//!   as the weights say), `fixed-response` and `redirect` answer as ELB does; a target
//!   that cannot be reached gives 502, one that does not answer within the idle timeout
//!   (60 s) 504; `X-Forwarded-For/-Proto/-Port` are added.
//! * a **network** load balancer relays TCP per connection (whatever the listener's
//!   protocol reads: the emulator's base stack uses HTTP for it).
//!
//! Within a target group the proxy round-robins over the targets whose health checks pass,
//! and, as ELB does when none pass, over all registered targets (fail open).
//!
//! **Health checks** are real: each registered target is checked at the target group's
//! protocol, port and path, at its interval and timeout, and moves `initial` → `healthy`
//! after `HealthyThresholdCount` passes, → `unhealthy` after `UnhealthyThresholdCount`
//! failures, with ELB's reason codes (`Target.Timeout`, `Target.ResponseCodeMismatch`,
//! `Target.FailedHealthChecks`). Source: "Health checks for your target groups", Elastic
//! Load Balancing User Guide. The emulator reports every registered target `healthy` at
//! once, so the local cloud's AWS endpoint ([`crate::front`]) answers
//! `DescribeTargetHealth` with what the checks found, and the runner tells the Auto
//! Scaling group what one with `HealthCheckType: ELB` would learn: `SetInstanceHealth`
//! `Unhealthy` when a target's checks fail (once the group's `HealthCheckGracePeriod`
//! from the instance's launch has passed), `Healthy` again when they pass; `initial`
//! changes nothing. `tyrell traffic`'s gate reads both. HTTPS/TLS listeners are not
//! served (logged once); HTTPS health checks are made in plain HTTP.
//!
//! Sockets for targets are opened on a thread that entered the cloud namespace (the
//! proxies' own runtime), so the host never routes to a box.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;

use crate::net;

/// The address of the `n`-th load balancer (from 0) in the cloud namespace.
pub fn address(n: usize) -> Option<Ipv4Addr> {
    (n < 80 * 254).then(|| Ipv4Addr::new(169, 254, 172 + (n / 254) as u8, (n % 254) as u8 + 1))
}

/// How long an ALB waits for a target's answer (its default idle timeout).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an NLB waits to connect to a target.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A load balancer's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Layer 7, per request.
    Application,
    /// Layer 4, per connection.
    Network,
}

/// A listener action, as the proxies carry it out.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Forward to target groups, by weight (ARN, weight 0..=999).
    Forward(Vec<(String, u32)>),
    /// A fixed response.
    Fixed {
        /// HTTP status.
        status: u16,
        /// `Content-Type`.
        content_type: String,
        /// The body.
        body: String,
    },
    /// A redirect; `#{host}`, `#{port}`, `#{path}`, `#{query}`, `#{protocol}` as ELB keeps them.
    Redirect {
        /// 301 or 302.
        status: u16,
        /// `HTTP`, `HTTPS` or `#{protocol}`.
        protocol: String,
        /// Port or `#{port}`.
        port: String,
        /// Host or `#{host}`.
        host: String,
        /// Path or `#{path}`.
        path: String,
        /// Query or `#{query}`.
        query: String,
    },
    /// What the proxy does not do (authenticate-*): answered 501.
    Unsupported(String),
}

/// A listener rule: every condition must match.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Lower first.
    pub priority: i64,
    /// `path-pattern` values (any matches); empty = no path condition.
    pub paths: Vec<String>,
    /// `host-header` values (any matches); empty = no host condition.
    pub hosts: Vec<String>,
    /// A condition the proxy cannot evaluate: the rule never matches.
    pub unsupported: Option<String>,
    /// What it does.
    pub action: Action,
}

/// A listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// Its ARN.
    pub arn: String,
    /// Its port.
    pub port: u16,
    /// `HTTP`, `HTTPS`, `TCP`, `TLS`, …
    pub protocol: String,
    /// The default action.
    pub default: Action,
    /// Rules, by priority.
    pub rules: Vec<Rule>,
}

/// A load balancer.
#[derive(Debug, Clone, PartialEq)]
pub struct Lb {
    /// Its ARN.
    pub arn: String,
    /// Its name.
    pub name: String,
    /// Its DNS name (lowercase).
    pub dns: String,
    /// Application or network.
    pub kind: Kind,
    /// Its listeners.
    pub listeners: Vec<Listener>,
}

/// A target group's health check.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// `HTTP`, `HTTPS` or `TCP`.
    pub protocol: String,
    /// A port, or `None` for the traffic port.
    pub port: Option<u16>,
    /// The HTTP path.
    pub path: String,
    /// Between checks.
    pub interval: Duration,
    /// For one check.
    pub timeout: Duration,
    /// Passes in a row to become healthy.
    pub healthy: u32,
    /// Failures in a row to become unhealthy.
    pub unhealthy: u32,
    /// Success codes: `200`, `200-299`, `200,202`.
    pub matcher: String,
}

/// A target group with its registered targets.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetGroup {
    /// Its ARN.
    pub arn: String,
    /// Its name.
    pub name: String,
    /// The traffic port.
    pub port: u16,
    /// `HTTP`, `HTTPS`, `TCP`, `TLS`, `UDP`, `TCP_UDP`.
    pub protocol: String,
    /// Its health check.
    pub check: HealthCheck,
    /// Registered targets: (instance id, port).
    pub targets: Vec<(String, u16)>,
}

/// What the emulator says about the region's load balancers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// Load balancers by ARN.
    pub lbs: BTreeMap<String, Lb>,
    /// Target groups by ARN.
    pub groups: BTreeMap<String, TargetGroup>,
}

fn sdk<E: std::error::Error + Send + Sync + 'static, R: std::fmt::Debug>(
    what: &str,
) -> impl FnOnce(aws_sdk_elasticloadbalancingv2::error::SdkError<E, R>) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("{what} failed: {}", aws_sdk_elasticloadbalancingv2::error::DisplayErrorContext(e))
}

fn action(a: &aws_sdk_elasticloadbalancingv2::types::Action) -> Action {
    use aws_sdk_elasticloadbalancingv2::types::{ActionTypeEnum as T, RedirectActionStatusCodeEnum as R};
    match a.r#type() {
        Some(T::Forward) => {
            let mut out: Vec<(String, u32)> = a
                .forward_config()
                .map(|f| {
                    f.target_groups()
                        .iter()
                        .filter_map(|t| {
                            Some((t.target_group_arn()?.to_string(), t.weight().unwrap_or(1).clamp(0, 999) as u32))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if out.is_empty() {
                if let Some(tg) = a.target_group_arn() {
                    out.push((tg.to_string(), 1));
                }
            }
            Action::Forward(out)
        }
        Some(T::FixedResponse) => {
            let f = a.fixed_response_config();
            Action::Fixed {
                status: f.and_then(|f| f.status_code()).and_then(|s| s.parse().ok()).unwrap_or(503),
                content_type: f.and_then(|f| f.content_type()).unwrap_or("text/plain").to_string(),
                body: f.and_then(|f| f.message_body()).unwrap_or_default().to_string(),
            }
        }
        Some(T::Redirect) => {
            let r = a.redirect_config();
            let s = |v: Option<&str>, d: &str| v.unwrap_or(d).to_string();
            Action::Redirect {
                status: if r.and_then(|r| r.status_code()) == Some(&R::Http301) { 301 } else { 302 },
                protocol: s(r.and_then(|r| r.protocol()), "#{protocol}"),
                port: s(r.and_then(|r| r.port()), "#{port}"),
                host: s(r.and_then(|r| r.host()), "#{host}"),
                path: s(r.and_then(|r| r.path()), "/#{path}"),
                query: s(r.and_then(|r| r.query()), "#{query}"),
            }
        }
        other => Action::Unsupported(other.map(|t| t.as_str().to_string()).unwrap_or_default()),
    }
}

/// How a listener's traffic is carried: per connection (layer 4) for a network load
/// balancer, and for any listener that forwards to a TCP/TLS/UDP target group (the
/// emulator reads every load balancer made by CloudFormation as `application`, and the
/// base stack gives its NLB listener the protocol HTTP there); per request otherwise.
pub fn layer(lb: &Lb, l: &Listener, groups: &BTreeMap<String, TargetGroup>) -> Kind {
    let tcp = |arn: &String| {
        groups.get(arn).is_some_and(|g| matches!(g.protocol.as_str(), "TCP" | "TLS" | "UDP" | "TCP_UDP"))
    };
    match &l.default {
        _ if lb.kind == Kind::Network => Kind::Network,
        Action::Forward(f) if f.iter().any(|(arn, _)| tcp(arn)) => Kind::Network,
        _ => Kind::Application,
    }
}

/// Reads the region's load balancers, listeners, rules and target groups from the emulator.
pub async fn read(elb: &aws_sdk_elasticloadbalancingv2::Client) -> anyhow::Result<View> {
    use aws_sdk_elasticloadbalancingv2::types::LoadBalancerTypeEnum;
    let mut view = View::default();
    let mut pages = elb.describe_load_balancers().into_paginator().send();
    while let Some(page) = pages.next().await {
        for l in page.map_err(sdk("DescribeLoadBalancers"))?.load_balancers() {
            let kind = match l.r#type() {
                Some(LoadBalancerTypeEnum::Network) => Kind::Network,
                Some(LoadBalancerTypeEnum::Application) => Kind::Application,
                _ => continue,
            };
            let arn = l.load_balancer_arn().unwrap_or_default().to_string();
            let mut listeners = Vec::new();
            let out =
                elb.describe_listeners().load_balancer_arn(&arn).send().await.map_err(sdk("DescribeListeners"))?;
            for li in out.listeners() {
                let Some(port) = li.port().and_then(|p| u16::try_from(p).ok()) else { continue };
                let larn = li.listener_arn().unwrap_or_default().to_string();
                let default = li.default_actions().first().map(action).unwrap_or(Action::Unsupported("none".into()));
                let mut rules = Vec::new();
                if kind == Kind::Application {
                    let r = elb.describe_rules().listener_arn(&larn).send().await.map_err(sdk("DescribeRules"))?;
                    for rule in r.rules() {
                        if rule.is_default() == Some(true) {
                            continue;
                        }
                        let Some(priority) = rule.priority().and_then(|p| p.parse().ok()) else { continue };
                        let mut rl = Rule {
                            priority,
                            paths: vec![],
                            hosts: vec![],
                            unsupported: None,
                            action: rule.actions().first().map(action).unwrap_or(Action::Unsupported("none".into())),
                        };
                        for c in rule.conditions() {
                            let values = |cfg: Option<&[String]>| -> Vec<String> {
                                let v = cfg.map(<[String]>::to_vec).unwrap_or_default();
                                if v.is_empty() {
                                    c.values().to_vec()
                                } else {
                                    v
                                }
                            };
                            match c.field() {
                                Some("path-pattern") => {
                                    rl.paths.extend(values(c.path_pattern_config().map(|p| p.values())))
                                }
                                Some("host-header") => {
                                    rl.hosts.extend(values(c.host_header_config().map(|h| h.values())))
                                }
                                other => rl.unsupported = Some(other.unwrap_or("?").to_string()),
                            }
                        }
                        rules.push(rl);
                    }
                    rules.sort_by_key(|r| r.priority);
                }
                listeners.push(Listener {
                    arn: larn,
                    port,
                    protocol: li.protocol().map(|p| p.as_str().to_string()).unwrap_or_default(),
                    default,
                    rules,
                });
            }
            listeners.sort_by_key(|l| l.port);
            view.lbs.insert(
                arn.clone(),
                Lb {
                    arn,
                    name: l.load_balancer_name().unwrap_or_default().to_string(),
                    dns: l.dns_name().unwrap_or_default().to_ascii_lowercase(),
                    kind,
                    listeners,
                },
            );
        }
    }
    let mut pages = elb.describe_target_groups().into_paginator().send();
    while let Some(page) = pages.next().await {
        for g in page.map_err(sdk("DescribeTargetGroups"))?.target_groups() {
            let arn = g.target_group_arn().unwrap_or_default().to_string();
            let port = g.port().and_then(|p| u16::try_from(p).ok()).unwrap_or(80);
            let traffic = g.protocol().map(|p| p.as_str().to_ascii_uppercase()).unwrap_or_else(|| "TCP".into());
            let protocol = g
                .health_check_protocol()
                .or(g.protocol())
                .map(|p| p.as_str().to_ascii_uppercase())
                .unwrap_or_else(|| "TCP".into());
            let http = protocol.starts_with("HTTP");
            let secs =
                |v: Option<i32>, d: u64| Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(d).max(1));
            let check = HealthCheck {
                port: g.health_check_port().and_then(|p| p.parse().ok()),
                path: g.health_check_path().unwrap_or("/").to_string(),
                interval: secs(g.health_check_interval_seconds(), 30),
                timeout: secs(g.health_check_timeout_seconds(), if http { 5 } else { 10 }),
                healthy: g.healthy_threshold_count().unwrap_or(5).clamp(1, 10) as u32,
                unhealthy: g.unhealthy_threshold_count().unwrap_or(2).clamp(1, 10) as u32,
                matcher: g.matcher().and_then(|m| m.http_code()).unwrap_or("200").to_string(),
                protocol,
            };
            let th = elb
                .describe_target_health()
                .target_group_arn(&arn)
                .send()
                .await
                .map_err(sdk("DescribeTargetHealth"))?;
            let mut targets: Vec<(String, u16)> = th
                .target_health_descriptions()
                .iter()
                .filter_map(|d| {
                    let t = d.target()?;
                    Some((t.id()?.to_string(), t.port().and_then(|p| u16::try_from(p).ok()).unwrap_or(port)))
                })
                .collect();
            targets.sort();
            targets.dedup();
            view.groups.insert(
                arn.clone(),
                TargetGroup {
                    arn,
                    name: g.target_group_name().unwrap_or_default().to_string(),
                    port,
                    protocol: traffic,
                    check,
                    targets,
                },
            );
        }
    }
    Ok(view)
}

/// Whether `path` matches an ELB path pattern (`*` any run of characters, `?` one;
/// case-sensitive). Source: "Listener rules for your Application Load Balancer",
/// path conditions.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    wildcard(pattern.as_bytes(), path.as_bytes())
}

/// Whether `host` matches an ELB host pattern (case-insensitive, `*` and `?`).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.split(':').next().unwrap_or(host);
    wildcard(pattern.to_ascii_lowercase().as_bytes(), host.to_ascii_lowercase().as_bytes())
}

fn wildcard(p: &[u8], s: &[u8]) -> bool {
    // Iterative glob with one backtrack point.
    let (mut pi, mut si, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// The action a request takes: the first rule (by priority) whose conditions all match,
/// else the default action. Also a key naming which action it was (for the weights' state).
pub fn route<'a>(l: &'a Listener, path: &str, host: &str) -> (&'a Action, String) {
    for r in &l.rules {
        if r.unsupported.is_some() {
            continue;
        }
        let p = r.paths.is_empty() || r.paths.iter().any(|p| path_matches(p, path));
        let h = r.hosts.is_empty() || r.hosts.iter().any(|p| host_matches(p, host));
        if p && h {
            return (&r.action, format!("{}#{}", l.arn, r.priority));
        }
    }
    (&l.default, l.arn.clone())
}

/// Smooth weighted round robin (nginx's): picks an index of `weights` so that any run of
/// sum(weights) picks gives each exactly its weight. `current` keeps the state between
/// calls (resized when the weights change). `None` when every weight is 0.
pub fn pick_weighted(current: &mut Vec<i64>, weights: &[u32]) -> Option<usize> {
    if current.len() != weights.len() {
        *current = vec![0; weights.len()];
    }
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    for (c, w) in current.iter_mut().zip(weights) {
        *c += i64::from(*w);
    }
    let best = (0..weights.len()).max_by_key(|i| (current[*i], std::cmp::Reverse(*i)))?;
    current[best] -= total;
    Some(best)
}

/// A target's health, as ELB reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// `initial`, `healthy`, `unhealthy`.
    pub state: String,
    /// ELB's reason code when not healthy.
    pub reason: Option<String>,
    /// What the last check saw.
    pub description: String,
    #[serde(skip)]
    pub(crate) passes: u32,
    #[serde(skip)]
    pub(crate) failures: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: "initial".into(),
            reason: Some("Elb.InitialHealthChecking".into()),
            description: "Initial health checks in progress".into(),
            passes: 0,
            failures: 0,
        }
    }
}

impl Health {
    /// Records one check's result (`Err((reason, description))` for a failure).
    pub fn record(&mut self, check: &HealthCheck, result: Result<(), (String, String)>) {
        match result {
            Ok(()) => {
                self.failures = 0;
                self.passes += 1;
                if self.state != "healthy" && self.passes >= check.healthy {
                    *self = Health { state: "healthy".into(), reason: None, description: String::new(), ..*self };
                }
            }
            Err((reason, description)) => {
                self.passes = 0;
                self.failures += 1;
                if self.state == "unhealthy" || self.failures >= check.unhealthy {
                    *self = Health { state: "unhealthy".into(), reason: Some(reason), description, ..*self };
                } else if self.state == "initial" {
                    self.description = description;
                }
            }
        }
    }
}

/// Whether an HTTP status matches an ELB matcher (`200`, `200-299`, `200,202`).
pub fn code_matches(matcher: &str, code: u16) -> bool {
    matcher.split(',').any(|part| match part.trim().split_once('-') {
        Some((a, b)) => {
            a.trim().parse::<u16>().is_ok_and(|a| a <= code) && b.trim().parse::<u16>().is_ok_and(|b| code <= b)
        }
        None => part.trim().parse::<u16>() == Ok(code),
    })
}

/// A response or request body the proxies and the AWS endpoint hand on.
pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// A body of fixed bytes.
pub(crate) fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

/// One check of a target at `addr`.
async fn check_once(
    client: &Client<HttpConnector, Body>,
    c: &HealthCheck,
    addr: SocketAddr,
) -> Result<(), (String, String)> {
    if c.protocol == "TCP" || c.protocol == "TLS" || c.protocol == "UDP" || c.protocol == "TCP_UDP" {
        return match tokio::time::timeout(c.timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(("Target.FailedHealthChecks".into(), format!("connection to {addr} failed: {e}"))),
            Err(_) => Err(("Target.Timeout".into(), format!("no connection to {addr} within {:?}", c.timeout))),
        };
    }
    let uri = format!("http://{addr}{}", if c.path.starts_with('/') { c.path.clone() } else { format!("/{}", c.path) });
    let req = match Request::get(&uri).header("user-agent", "ELB-HealthChecker/2.0").body(full("")) {
        Ok(r) => r,
        Err(e) => return Err(("Target.FailedHealthChecks".into(), format!("bad health check path: {e}"))),
    };
    let whole = async {
        let resp = client.request(req).await?;
        let code = resp.status().as_u16();
        resp.into_body().collect().await?;
        Ok::<u16, Box<dyn std::error::Error + Send + Sync>>(code)
    };
    match tokio::time::timeout(c.timeout, whole).await {
        Ok(Ok(code)) => {
            if code_matches(&c.matcher, code) {
                Ok(())
            } else {
                Err(("Target.ResponseCodeMismatch".into(), format!("Health checks failed with these codes: [{code}]")))
            }
        }
        Ok(Err(e)) => Err(("Target.FailedHealthChecks".into(), format!("request to {uri} failed: {e}"))),
        Err(_) => Err(("Target.Timeout".into(), format!("Request timed out ({uri})"))),
    }
}

/// Everything the proxies and checkers share.
pub struct Shared {
    view: RwLock<View>,
    ips: RwLock<HashMap<String, Ipv4Addr>>,
    health: Mutex<HashMap<(String, String, u16), Health>>,
    weights: Mutex<HashMap<String, Vec<i64>>>,
    turns: Mutex<HashMap<String, usize>>,
    client: Client<HttpConnector, Body>,
    /// For health checks: a new connection each time, as ELB's checks make.
    checker: Client<HttpConnector, Body>,
}

impl Shared {
    fn target_addr(&self, id: &str, port: u16) -> Option<SocketAddr> {
        self.ips.read().ok()?.get(id).map(|ip| SocketAddr::from((*ip, port)))
    }

    /// A target of `tg`: round robin over the healthy ones, else over all (fail open).
    fn pick_target(&self, tg: &str) -> Option<SocketAddr> {
        let group = self.view.read().ok()?.groups.get(tg).cloned()?;
        let health = self.health.lock().ok()?;
        let known: Vec<SocketAddr> = group
            .targets
            .iter()
            .filter_map(|(id, port)| Some((id, *port, self.target_addr(id, *port)?)))
            .map(|t| t.2)
            .collect();
        let healthy: Vec<SocketAddr> = group
            .targets
            .iter()
            .filter(|(id, port)| health.get(&(tg.to_string(), id.clone(), *port)).is_some_and(|h| h.state == "healthy"))
            .filter_map(|(id, port)| self.target_addr(id, *port))
            .collect();
        drop(health);
        let pool = if healthy.is_empty() { known } else { healthy };
        if pool.is_empty() {
            return None;
        }
        let mut turns = self.turns.lock().ok()?;
        let t = turns.entry(tg.to_string()).or_insert(0);
        *t = t.wrapping_add(1);
        Some(pool[*t % pool.len()])
    }

    fn pick_group(&self, key: &str, forward: &[(String, u32)]) -> Option<String> {
        let weights: Vec<u32> = forward.iter().map(|(_, w)| *w).collect();
        let mut all = self.weights.lock().ok()?;
        let cur = all.entry(key.to_string()).or_default();
        pick_weighted(cur, &weights).map(|i| forward[i].0.clone())
    }

    fn listener(&self, lb: &str, port: u16) -> Option<Listener> {
        self.view.read().ok()?.lbs.get(lb)?.listeners.iter().find(|l| l.port == port).cloned()
    }
}

fn expand(template: &str, proto: &str, host: &str, port: u16, path: &str, query: &str) -> String {
    template
        .replace("#{protocol}", &proto.to_ascii_lowercase())
        .replace("#{host}", host)
        .replace("#{port}", &port.to_string())
        .replace("#{path}", path.trim_start_matches('/'))
        .replace("#{query}", query)
}

fn respond(status: u16, ctype: &str, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn proxy_http(
    shared: Arc<Shared>,
    lb: String,
    port: u16,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let Some(listener) = shared.listener(&lb, port) else {
        return Ok(respond(503, "text/plain", "listener removed\n".into()));
    };
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let (act, key) = route(&listener, &path, &host);
    match act.clone() {
        Action::Fixed { status, content_type, body } => Ok(respond(status, &content_type, body)),
        Action::Unsupported(t) => Ok(respond(501, "text/plain", format!("the local ALB does not do {t} actions\n"))),
        Action::Redirect { status, protocol, port: p, host: h, path: pa, query: q } => {
            let proto = if listener.protocol == "HTTPS" { "https" } else { "http" };
            let scheme = expand(&protocol, proto, &host, port, &path, &query).to_ascii_lowercase();
            let h = expand(&h, proto, &host, port, &path, &query);
            let p = expand(&p, proto, &host, port, &path, &query);
            let pa = expand(&pa, proto, &host, port, &path, &query);
            let q = expand(&q, proto, &host, port, &path, &query);
            let loc = format!("{scheme}://{h}:{p}{pa}{}", if q.is_empty() { String::new() } else { format!("?{q}") });
            let mut r = respond(status, "text/html", String::new());
            if let Ok(v) = loc.parse() {
                r.headers_mut().insert(hyper::header::LOCATION, v);
            }
            Ok(r)
        }
        Action::Forward(groups) => {
            let Some(tg) = shared.pick_group(&key, &groups) else {
                return Ok(respond(503, "text/html", "503 Service Temporarily Unavailable\n".into()));
            };
            let Some(addr) = shared.pick_target(&tg) else {
                return Ok(respond(503, "text/html", "503 Service Temporarily Unavailable\n".into()));
            };
            let pq = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
            let Ok(uri) = format!("http://{addr}{pq}").parse() else {
                return Ok(respond(400, "text/plain", "bad request target\n".into()));
            };
            *req.uri_mut() = uri;
            let h = req.headers_mut();
            let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(prev) => format!("{prev}, {}", peer.ip()),
                None => peer.ip().to_string(),
            };
            for (k, v) in [
                ("x-forwarded-for", xff),
                ("x-forwarded-proto", if listener.protocol == "HTTPS" { "https".into() } else { "http".into() }),
                ("x-forwarded-port", port.to_string()),
            ] {
                if let Ok(v) = v.parse() {
                    h.insert(k, v);
                }
            }
            let req = req.map(|b| b.boxed());
            match tokio::time::timeout(IDLE_TIMEOUT, shared.client.request(req)).await {
                Ok(Ok(resp)) => Ok(resp.map(|b| b.boxed())),
                Ok(Err(e)) => {
                    tracing::debug!("ALB {lb}:{port}: target {addr}: {e}");
                    Ok(respond(502, "text/html", "502 Bad Gateway\n".into()))
                }
                Err(_) => Ok(respond(504, "text/html", "504 Gateway Time-out\n".into())),
            }
        }
    }
}

async fn serve_alb(shared: Arc<Shared>, lb: String, port: u16, listener: tokio::net::TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("ALB {lb}:{port}: cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (shared, lb) = (shared.clone(), lb.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| proxy_http(shared.clone(), lb.clone(), port, peer, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn serve_nlb(shared: Arc<Shared>, lb: String, port: u16, listener: tokio::net::TcpListener) {
    loop {
        let (mut inbound, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("NLB {lb}:{port}: cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (shared, lb) = (shared.clone(), lb.clone());
        tokio::spawn(async move {
            let Some(l) = shared.listener(&lb, port) else { return };
            let target = match &l.default {
                Action::Forward(groups) => shared.pick_group(&l.arn, groups).and_then(|tg| shared.pick_target(&tg)),
                _ => None,
            };
            let Some(addr) = target else { return };
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(mut out)) => {
                    let _ = out.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
                Ok(Err(e)) => tracing::debug!("NLB {lb}:{port}: target {addr}: {e}"),
                Err(_) => tracing::debug!("NLB {lb}:{port}: target {addr}: no connection within {CONNECT_TIMEOUT:?}"),
            }
        });
    }
}

async fn check_loop(shared: Arc<Shared>, key: (String, String, u16)) {
    loop {
        let Some(check) = shared.view.read().ok().and_then(|v| v.groups.get(&key.0).map(|g| g.check.clone())) else {
            return;
        };
        let addr = shared.target_addr(&key.1, check.port.unwrap_or(key.2));
        let result = match addr {
            Some(a) => check_once(&shared.checker, &check, a).await,
            None => Err(("Target.FailedHealthChecks".into(), format!("instance {} has no address", key.1))),
        };
        if let Ok(mut h) = shared.health.lock() {
            h.entry(key.clone()).or_default().record(&check, result);
        }
        tokio::time::sleep(check.interval).await;
    }
}

/// One listener's proxies as `status` shows them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ListenerStatus {
    /// The listener port.
    pub port: u16,
    /// Where the boxes reach it (`169.254.172.N:PORT`; the LB's DNS name resolves there).
    pub address: String,
    /// Where the host reaches it (`127.0.0.1:PORT`).
    pub local: String,
}

/// A target's health as `status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TargetStatus {
    /// The target group's name.
    pub target_group: String,
    /// The instance.
    pub instance: String,
    /// The port.
    pub port: u16,
    /// Its health.
    #[serde(flatten)]
    pub health: Health,
}

/// A load balancer as `status` shows it (`<state>/<cloud>/lbs.json`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LbStatus {
    /// Its name.
    pub name: String,
    /// Its DNS name.
    pub dns: String,
    /// `application` or `network`.
    pub kind: Kind,
    /// Its listeners' proxies.
    pub listeners: Vec<ListenerStatus>,
}

/// What `lbs.json` holds.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Status {
    /// Load balancers.
    pub load_balancers: Vec<LbStatus>,
    /// Every registered target's health.
    pub targets: Vec<TargetStatus>,
}

/// A listener's proxies: what `status` shows, and the accept loops (in the namespace, on the host).
type Server = (ListenerStatus, Vec<tokio::task::JoinHandle<()>>);

/// The load balancers of one cloud: runs on its own thread inside the cloud namespace.
pub struct Lbs {
    cloud: String,
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    addrs: HashMap<String, Ipv4Addr>,
    next: usize,
    servers: HashMap<(String, u16), Server>,
    checkers: HashMap<(String, String, u16), tokio::task::JoinHandle<()>>,
    reported: HashMap<String, String>,
    names: Arc<RwLock<HashMap<String, Ipv4Addr>>>,
    skipped: std::collections::HashSet<(String, u16)>,
}

impl Lbs {
    /// Starts the proxies' runtime inside the cloud namespace. `names` is the resolver's
    /// map of load balancer DNS names to addresses, kept up to date by [`Lbs::sync`].
    pub fn start(cloud: &str, names: Arc<RwLock<HashMap<String, Ipv4Addr>>>) -> anyhow::Result<Lbs> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(std::path::Path::new("/run/netns").join(cloud))
            .with_context(|| format!("no network namespace {cloud}"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let name = cloud.to_string();
        std::thread::Builder::new().name("lb-proxies".into()).spawn(move || {
            // SAFETY: setns on this thread only; every thread it spawns inherits it.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = tx.send(Err(anyhow::anyhow!(
                    "cannot enter network namespace {name}: {}",
                    std::io::Error::last_os_error()
                )));
                return;
            }
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                    return;
                }
            };
            let _ = tx.send(Ok(rt.handle().clone()));
            rt.block_on(std::future::pending::<()>());
        })?;
        let handle = rx.recv().context("the load balancers' thread stopped at start")??;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let (client, checker) = {
            let _g = handle.enter();
            (
                Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(http.clone()),
                Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(http),
            )
        };
        Ok(Lbs {
            cloud: cloud.to_string(),
            shared: Arc::new(Shared {
                view: RwLock::default(),
                ips: RwLock::default(),
                health: Mutex::default(),
                weights: Mutex::default(),
                turns: Mutex::default(),
                client,
                checker,
            }),
            handle,
            addrs: HashMap::new(),
            next: 0,
            servers: HashMap::new(),
            checkers: HashMap::new(),
            reported: HashMap::new(),
            names,
            skipped: Default::default(),
        })
    }

    /// Follows the emulator: `view` from [`read`], `ips` every instance's private IP.
    /// Starts and stops proxies and health checks, and returns the instances whose Auto
    /// Scaling health should be set now (id, `Healthy`/`Unhealthy`).
    pub fn sync(&mut self, view: View, ips: HashMap<String, Ipv4Addr>) -> Vec<(String, &'static str)> {
        if let Ok(mut i) = self.shared.ips.write() {
            *i = ips;
        }
        // Addresses and names.
        for lb in view.lbs.values() {
            if !self.addrs.contains_key(&lb.arn) {
                let Some(a) = address(self.next) else { continue };
                self.next += 1;
                if let Err(e) = net::add_address(&self.cloud, a) {
                    tracing::error!("load balancer {}: {e:#}", lb.name);
                    continue;
                }
                tracing::info!("load balancer {} ({:?}) at {a}: {}", lb.name, lb.kind, lb.dns);
                self.addrs.insert(lb.arn.clone(), a);
            }
        }
        let gone: Vec<String> = self.addrs.keys().filter(|a| !view.lbs.contains_key(*a)).cloned().collect();
        for arn in gone {
            if let Some(a) = self.addrs.remove(&arn) {
                let _ = net::remove_address(&self.cloud, a);
            }
        }
        if let Ok(mut n) = self.names.write() {
            n.clear();
            for lb in view.lbs.values() {
                if let Some(a) = self.addrs.get(&lb.arn) {
                    n.insert(lb.dns.clone(), *a);
                }
            }
        }
        if let Ok(mut v) = self.shared.view.write() {
            *v = view.clone();
        }
        // Listeners.
        let groups = &view.groups;
        let wanted: Vec<(String, u16, Kind, Ipv4Addr)> = view
            .lbs
            .values()
            .filter_map(|lb| Some((lb, *self.addrs.get(&lb.arn)?)))
            .flat_map(|(lb, a)| lb.listeners.iter().map(move |l| (lb.arn.clone(), l.port, layer(lb, l, groups), a)))
            .collect();
        self.servers.retain(|k, (_, tasks)| {
            let keep = wanted.iter().any(|w| (&w.0, w.1) == (&k.0, k.1));
            if !keep {
                tasks.iter().for_each(|t| t.abort());
            }
            keep
        });
        for (arn, port, kind, a) in wanted {
            if self.servers.contains_key(&(arn.clone(), port)) {
                continue;
            }
            let protocol = view
                .lbs
                .get(&arn)
                .and_then(|lb| lb.listeners.iter().find(|l| l.port == port))
                .map(|l| l.protocol.clone());
            if matches!(protocol.as_deref(), Some("HTTPS" | "TLS")) {
                if self.skipped.insert((arn.clone(), port)) {
                    tracing::warn!(
                        "listener {a}:{port} is {}: the local cloud does not serve TLS listeners",
                        protocol.unwrap_or_default()
                    );
                }
                continue;
            }
            match self.listen(&arn, port, kind, a) {
                Ok(s) => {
                    self.servers.insert((arn, port), s);
                }
                Err(e) => tracing::error!("load balancer listener {a}:{port}: {e:#}"),
            }
        }
        // Health checks.
        let keys: Vec<(String, String, u16)> = view
            .groups
            .values()
            .flat_map(|g| g.targets.iter().map(move |(id, p)| (g.arn.clone(), id.clone(), *p)))
            .collect();
        self.checkers.retain(|k, t| {
            let keep = keys.contains(k);
            if !keep {
                t.abort();
            }
            keep
        });
        if let Ok(mut h) = self.shared.health.lock() {
            h.retain(|k, _| keys.contains(k));
        }
        for k in keys {
            if !self.checkers.contains_key(&k) {
                let t = self.handle.spawn(check_loop(self.shared.clone(), k.clone()));
                self.checkers.insert(k, t);
            }
        }
        // What to tell the Auto Scaling groups (HealthCheckType ELB): an instance is
        // unhealthy when a target group's checks fail it, healthy again when every one
        // passes; `initial` changes nothing (the group's grace period).
        let mut now: BTreeMap<String, Option<bool>> = BTreeMap::new();
        if let Ok(h) = self.shared.health.lock() {
            for g in view.groups.values() {
                for (id, p) in &g.targets {
                    let state = h.get(&(g.arn.clone(), id.clone(), *p)).map(|h| h.state.as_str()).unwrap_or("initial");
                    let e = now.entry(id.clone()).or_insert(Some(true));
                    *e = match (*e, state) {
                        (_, "unhealthy") | (Some(false), _) => Some(false),
                        (_, "initial") | (None, _) => None,
                        _ => Some(true),
                    };
                }
            }
        }
        let mut out = Vec::new();
        for (id, ok) in now {
            let s = match ok {
                Some(true) => "Healthy",
                Some(false) => "Unhealthy",
                None => continue,
            };
            // The emulator starts every instance Healthy.
            if self.reported.get(&id).map(String::as_str).unwrap_or("Healthy") != s {
                out.push((id, s));
            }
        }
        out
    }

    /// What the health checks know of a target: (target group ARN, instance, port).
    pub fn health_of(&self) -> crate::front::HealthOf {
        let shared = self.shared.clone();
        Arc::new(move |tg: &str, id: &str, port: u16| {
            shared.health.lock().ok()?.get(&(tg.to_string(), id.to_string(), port)).cloned()
        })
    }

    /// Records that an instance's Auto Scaling health was set.
    pub fn reported(&mut self, id: &str, health: &str) {
        self.reported.insert(id.to_string(), health.to_string());
    }

    fn listen(&self, arn: &str, port: u16, kind: Kind, a: Ipv4Addr) -> anyhow::Result<Server> {
        let inside = net::listen_tcp_in(&self.cloud, (a, port).into())?;
        let host = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot listen on host loopback")?;
        host.set_nonblocking(true)?;
        let local = host.local_addr()?;
        let mut tasks = Vec::new();
        let _g = self.handle.enter();
        for l in [inside, host] {
            let l = tokio::net::TcpListener::from_std(l)?;
            let (shared, arn) = (self.shared.clone(), arn.to_string());
            tasks.push(match kind {
                Kind::Application => self.handle.spawn(serve_alb(shared, arn, port, l)),
                Kind::Network => self.handle.spawn(serve_nlb(shared, arn, port, l)),
            });
        }
        tracing::info!("listener {a}:{port} ({kind:?}) also on {local}");
        Ok((ListenerStatus { port, address: format!("{a}:{port}"), local: local.to_string() }, tasks))
    }

    /// The load balancers and targets as `status` shows them.
    pub fn status(&self) -> Status {
        let view = self.shared.view.read().map(|v| v.clone()).unwrap_or_default();
        let health = self.shared.health.lock().map(|h| h.clone()).unwrap_or_default();
        let mut st = Status::default();
        for lb in view.lbs.values() {
            let mut listeners: Vec<ListenerStatus> =
                self.servers.iter().filter(|(k, _)| k.0 == lb.arn).map(|(_, (s, _))| s.clone()).collect();
            listeners.sort_by_key(|l| l.port);
            let kind = lb.listeners.first().map(|l| layer(lb, l, &view.groups)).unwrap_or(lb.kind);
            st.load_balancers.push(LbStatus { name: lb.name.clone(), dns: lb.dns.clone(), kind, listeners });
        }
        for g in view.groups.values() {
            for (id, p) in &g.targets {
                st.targets.push(TargetStatus {
                    target_group: g.name.clone(),
                    instance: id.clone(),
                    port: *p,
                    health: health.get(&(g.arn.clone(), id.clone(), *p)).cloned().unwrap_or_default(),
                });
            }
        }
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_split_exactly() {
        let mut cur = vec![];
        let mut counts = [0u32; 2];
        for _ in 0..1000 {
            counts[pick_weighted(&mut cur, &[80, 20]).unwrap()] += 1;
        }
        assert_eq!(counts, [800, 200]);
        let mut counts = [0u32; 2];
        for _ in 0..1000 {
            counts[pick_weighted(&mut cur, &[999, 1]).unwrap()] += 1;
        }
        assert_eq!(counts, [999, 1]);
        assert_eq!(pick_weighted(&mut cur, &[0, 0]), None);
        let mut c2 = vec![];
        assert_eq!((0..10).filter(|_| pick_weighted(&mut c2, &[0, 5]) == Some(1)).count(), 10);
    }

    #[test]
    fn path_and_host_patterns() {
        assert!(path_matches("/legacy/*", "/legacy/a/b"));
        assert!(!path_matches("/legacy/*", "/legacyx"));
        assert!(path_matches("/a?c", "/abc"));
        assert!(path_matches("*", "/"));
        assert!(!path_matches("/Legacy/*", "/legacy/x"));
        assert!(host_matches("*.example.com", "API.example.com:8080"));
        assert!(!host_matches("*.example.com", "example.org"));
    }

    #[test]
    fn matchers() {
        assert!(code_matches("200", 200));
        assert!(!code_matches("200", 204));
        assert!(code_matches("200-299", 204));
        assert!(code_matches("200,302", 302));
        assert!(!code_matches("x", 200));
    }

    fn check() -> HealthCheck {
        HealthCheck {
            protocol: "HTTP".into(),
            port: None,
            path: "/".into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            healthy: 2,
            unhealthy: 2,
            matcher: "200".into(),
        }
    }

    #[test]
    fn health_follows_the_thresholds() {
        let c = check();
        let fail = || Err(("Target.Timeout".to_string(), "Request timed out".to_string()));
        let mut h = Health::default();
        assert_eq!(h.state, "initial");
        h.record(&c, Ok(()));
        assert_eq!(h.state, "initial");
        h.record(&c, Ok(()));
        assert_eq!(h.state, "healthy");
        h.record(&c, fail());
        assert_eq!(h.state, "healthy");
        h.record(&c, fail());
        assert_eq!((h.state.as_str(), h.reason.as_deref()), ("unhealthy", Some("Target.Timeout")));
        h.record(&c, Ok(()));
        assert_eq!(h.state, "unhealthy");
        h.record(&c, Ok(()));
        assert_eq!(h.state, "healthy");
        let mut h = Health::default();
        h.record(&c, fail());
        h.record(&c, fail());
        assert_eq!(h.state, "unhealthy");
    }

    #[test]
    fn rules_then_default() {
        let l = Listener {
            arn: "L".into(),
            port: 80,
            protocol: "HTTP".into(),
            default: Action::Forward(vec![("new".into(), 1)]),
            rules: vec![Rule {
                priority: 10,
                paths: vec!["/legacy/*".into()],
                hosts: vec![],
                unsupported: None,
                action: Action::Forward(vec![("old".into(), 1)]),
            }],
        };
        assert_eq!(route(&l, "/legacy/x", "h").0, &Action::Forward(vec![("old".into(), 1)]));
        assert_eq!(route(&l, "/watch", "h").0, &Action::Forward(vec![("new".into(), 1)]));
    }

    #[test]
    fn addresses() {
        assert_eq!(address(0), Some(Ipv4Addr::new(169, 254, 172, 1)));
        assert_eq!(address(254), Some(Ipv4Addr::new(169, 254, 173, 1)));
        assert!(address(100_000).is_none());
    }
}
