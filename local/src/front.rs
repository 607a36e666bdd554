//! The AWS endpoint the local cloud hands to tyrell (`AWS_ENDPOINT_URL` from `up`): a
//! pass-through to the emulator that answers one thing from the local cloud's own
//! knowledge. The emulator reports every registered target `healthy` the moment it is
//! registered; ELB reports `initial` until the target's health checks pass. So
//! `DescribeTargetHealth` answers carry the health the load balancers' proxies measured
//! ([`crate::lb`]): `initial` (`Elb.RegistrationInProgress` for a target not checked yet,
//! `Elb.InitialHealthChecking`), `healthy`, or `unhealthy` with ELB's reason code. Every
//! other request and answer passes unchanged (the emulator does not check signatures).

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::lb::{full, Body, Health};

/// What the local cloud knows of a target's health: (target group ARN, instance, port).
pub type HealthOf = Arc<dyn Fn(&str, &str, u16) -> Option<Health> + Send + Sync>;

/// The `TargetGroupArn` of a `DescribeTargetHealth` query-protocol request body, if it is one.
pub fn target_health_request(body: &[u8]) -> Option<String> {
    let mut action = false;
    let mut arn = None;
    for (k, v) in form_urlencoded::parse(body) {
        match k.as_ref() {
            "Action" => action = v == "DescribeTargetHealth",
            "TargetGroupArn" => arn = Some(v.into_owned()),
            _ => {}
        }
    }
    if action {
        arn
    } else {
        None
    }
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let a = s.find(open)? + open.len();
    let b = s[a..].find(close)? + a;
    Some(&s[a..b])
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Rewrites each `<TargetHealth>` of a `DescribeTargetHealth` XML answer with `health(id,
/// port)` (a target the local cloud has not checked yet reads `initial`,
/// `Elb.RegistrationInProgress`). Answers it cannot read are returned unchanged.
pub fn rewrite(xml: &str, health: impl Fn(&str, u16) -> Option<Health>) -> String {
    let Some(start) = xml.find("<TargetHealthDescriptions>") else { return xml.to_string() };
    let Some(end) = xml.find("</TargetHealthDescriptions>") else { return xml.to_string() };
    let inner = &xml[start + "<TargetHealthDescriptions>".len()..end];
    let mut out = String::with_capacity(xml.len() + 256);
    out.push_str(&xml[..start + "<TargetHealthDescriptions>".len()]);
    for (i, member) in inner.split("</member>").enumerate() {
        if i > 0 {
            out.push_str("</member>");
        }
        let target = between(member, "<Target>", "</Target>");
        let id = target.and_then(|t| between(t, "<Id>", "</Id>"));
        let port = target.and_then(|t| between(t, "<Port>", "</Port>")).and_then(|p| p.trim().parse().ok());
        // Only the emulator's `healthy` is replaced: its other answers (`unused` for a
        // target not registered or not running, `draining`) are already what ELB says.
        let emulator_healthy = between(member, "<TargetHealth>", "</TargetHealth>")
            .and_then(|t| between(t, "<State>", "</State>"))
            .is_some_and(|s| s.trim() == "healthy");
        let (Some(id), Some(port), true) = (id, port, emulator_healthy) else {
            out.push_str(member);
            continue;
        };
        let h = health(id, port).unwrap_or_else(|| Health {
            state: "initial".into(),
            reason: Some("Elb.RegistrationInProgress".into()),
            description: "Target registration is in progress".into(),
            ..Health::default()
        });
        let mut th = format!("<TargetHealth><State>{}</State>", escape(&h.state));
        if let Some(r) = &h.reason {
            th.push_str(&format!("<Reason>{}</Reason>", escape(r)));
        }
        if !h.description.is_empty() {
            th.push_str(&format!("<Description>{}</Description>", escape(&h.description)));
        }
        th.push_str("</TargetHealth>");
        match (member.find("<TargetHealth>"), member.find("</TargetHealth>")) {
            (Some(a), Some(b)) => {
                out.push_str(&member[..a]);
                out.push_str(&th);
                out.push_str(&member[b + "</TargetHealth>".len()..]);
            }
            _ => {
                out.push_str(member);
                out.push_str(&th);
            }
        }
    }
    out.push_str(&xml[end..]);
    out
}

async fn handle(
    client: Client<HttpConnector, Body>,
    upstream: SocketAddr,
    health: HealthOf,
    req: Request<Incoming>,
) -> Result<Response<Body>, hyper::Error> {
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let tg = if parts.method == hyper::Method::POST { target_health_request(&body) } else { None };
    let pq = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    parts.uri = match format!("http://{upstream}{pq}").parse() {
        Ok(u) => u,
        Err(_) => return Ok(status(400, "bad request target")),
    };
    let resp = match client.request(Request::from_parts(parts, full(body))).await {
        Ok(r) => r,
        Err(e) => return Ok(status(502, &format!("the emulator at {upstream} did not answer: {e}"))),
    };
    let Some(tg) = tg else { return Ok(resp.map(|b| b.boxed())) };
    let (mut parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    if !parts.status.is_success() {
        return Ok(Response::from_parts(parts, full(bytes)));
    }
    let xml = rewrite(&String::from_utf8_lossy(&bytes), |id, port| health(&tg, id, port));
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, full(xml)))
}

fn status(code: u16, msg: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{msg}\n")));
    *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    r
}

/// Serves the front endpoint on `listener` (host loopback) until the process ends.
/// `region` is the region the runner follows: target groups of other regions (whose
/// targets it does not check) pass through unchanged.
pub async fn serve(listener: tokio::net::TcpListener, upstream: SocketAddr, region: String, health: HealthOf) {
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let health: HealthOf = {
        let inner = health.clone();
        let marker = format!(":elasticloadbalancing:{region}:");
        Arc::new(move |tg: &str, id: &str, port: u16| {
            if tg.contains(&marker) {
                inner(tg, id, port)
            } else {
                Some(Health { state: "healthy".into(), reason: None, description: String::new(), ..Health::default() })
            }
        })
    };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("the AWS endpoint cannot accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (client, health) = (client.clone(), health.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(client.clone(), upstream, health.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_request() {
        let b =
            b"Action=DescribeTargetHealth&Version=2015-12-01&TargetGroupArn=arn%3Aaws%3Aelasticloadbalancing%3Atg%2Fx";
        assert_eq!(target_health_request(b).as_deref(), Some("arn:aws:elasticloadbalancing:tg/x"));
        assert_eq!(target_health_request(b"Action=DescribeTargetGroups&TargetGroupArn=x"), None);
        assert_eq!(target_health_request(b"\xff\xfe"), None);
    }

    #[test]
    fn rewrites_each_target() {
        let xml = "<DescribeTargetHealthResponse><DescribeTargetHealthResult><TargetHealthDescriptions>\
<member><Target><Id>i-1</Id><Port>8080</Port></Target><HealthCheckPort>8080</HealthCheckPort><TargetHealth><State>healthy</State></TargetHealth></member>\
<member><Target><Id>i-2</Id><Port>8080</Port></Target><TargetHealth><State>healthy</State></TargetHealth></member>\
</TargetHealthDescriptions></DescribeTargetHealthResult></DescribeTargetHealthResponse>";
        let out = rewrite(xml, |id, _| {
            (id == "i-1").then(|| Health {
                state: "unhealthy".into(),
                reason: Some("Target.Timeout".into()),
                description: "Request timed out".into(),
                ..Health::default()
            })
        });
        assert!(out.contains("<Id>i-1</Id><Port>8080</Port></Target><HealthCheckPort>8080</HealthCheckPort><TargetHealth><State>unhealthy</State><Reason>Target.Timeout</Reason><Description>Request timed out</Description></TargetHealth></member>"), "{out}");
        assert!(out.contains("<Id>i-2</Id><Port>8080</Port></Target><TargetHealth><State>initial</State><Reason>Elb.RegistrationInProgress</Reason>"), "{out}");
        assert!(
            out.ends_with("</TargetHealthDescriptions></DescribeTargetHealthResult></DescribeTargetHealthResponse>")
        );
        assert_eq!(rewrite("<Error/>", |_, _| None), "<Error/>");
        let unused = "<TargetHealthDescriptions><member><Target><Id>i-3</Id><Port>80</Port></Target><TargetHealth><State>unused</State><Reason>Target.NotRegistered</Reason></TargetHealth></member></TargetHealthDescriptions>";
        assert_eq!(rewrite(unused, |_, _| None), unused, "the emulator's non-healthy answers pass unchanged");
    }
}
