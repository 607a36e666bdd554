//! A throttling proxy: an HTTP proxy in front of the emulator that answers the calls a
//! rule picks the way AWS answers a call over its rate limit, and forwards the rest.
//!
//! The emulator never throttles. Point a program's `AWS_ENDPOINT_URL` at
//! [`ThrottlingProxy::url`] instead of the emulator's, and the calls the rule picks get
//! AWS's own throttling error in the protocol of the service called (AWS SDKs and Tools
//! Reference Guide, "Retry behavior"; the error shapes of the services' API references,
//! "Common errors"):
//!
//! | protocol | services | answer |
//! |---|---|---|
//! | AWS query (form body, `Action=`) | CloudFormation, Auto Scaling, ELBv2 | HTTP 400, `<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>...` |
//! | EC2 query (`Version=2016-11-15`) | EC2 | HTTP 503, `<Response><Errors><Error><Code>RequestLimitExceeded</Code>...` |
//! | JSON (`X-Amz-Target`) | SSM, SQS | HTTP 400, `{"__type":"ThrottlingException","message":"Rate exceeded"}` |
//! | REST | S3 | HTTP 503, `<Error><Code>SlowDown</Code>...` |
//!
//! Every call is recorded ([`ThrottlingProxy::calls`]) with whether it was throttled.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// One call reaching the proxy, as a rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The API action: `DescribeStacks` (query protocols' `Action=`), `GetParameter`
    /// (the part of `X-Amz-Target` after the dot), or `S3 GET` for REST calls.
    pub action: String,
    /// How many calls of this action reached the proxy, this one included (1 for the first).
    pub nth: u64,
    /// How many calls of any action reached the proxy, this one included.
    pub total: u64,
    /// The region the call was signed for: the third field of the SigV4 credential scope
    /// in its `Authorization` header (`Credential=AKID/20261130/eu-west-1/ec2/aws4_request`,
    /// AWS General Reference, "Signature Version 4"); empty when unsigned.
    pub region: String,
}

/// What the proxy did with one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub call: Call,
    /// Whether it was answered with a throttling error (else forwarded).
    pub throttled: bool,
}

type Rule = dyn Fn(&Call) -> bool + Send + Sync;

struct State {
    upstream: String,
    rule: Box<Rule>,
    seen: Mutex<Vec<Seen>>,
}

/// A running throttling proxy on a free loopback port; stops when dropped (its thread
/// ends with the test process).
pub struct ThrottlingProxy {
    /// `http://127.0.0.1:PORT`: give it as the endpoint URL.
    pub url: String,
    pub port: u16,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ThrottlingProxy {
    /// Starts a proxy forwarding to `upstream` (`http://127.0.0.1:PORT`, the emulator's
    /// [`crate::Emulator::url`]) that throttles every call for which `rule` is true.
    ///
    /// Panics when no loopback port can be bound (a test fixture, not an input).
    pub fn start(upstream: &str, rule: impl Fn(&Call) -> bool + Send + Sync + 'static) -> ThrottlingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port for the throttling proxy");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let port = listener.local_addr().expect("the proxy's address").port();
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            rule: Box::new(rule),
            seen: Mutex::new(Vec::new()),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a proxy runtime");
            rt.block_on(serve(listener, st, stopped));
        });
        ThrottlingProxy { url: format!("http://127.0.0.1:{port}"), port, state, stop: Some(stop) }
    }

    /// Every call so far, in the order they arrived.
    pub fn calls(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many calls were answered with a throttling error.
    pub fn throttled(&self) -> usize {
        self.calls().iter().filter(|s| s.throttled).count()
    }
}

impl Drop for ThrottlingProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<State>, mut stopped: tokio::sync::oneshot::Receiver<()>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = &mut stopped => return,
        };
        let Ok((stream, _)) = conn else { continue };
        let (state, client) = (state.clone(), client.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, state.clone(), client.clone()));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// The region of a request's SigV4 credential scope (see [`Call::region`]).
fn signed_region(headers: &hyper::HeaderMap) -> String {
    headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').nth(2))
        .unwrap_or_default()
        .to_string()
}

/// The service protocol of a request, for the shape of its throttling error.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Protocol {
    Query,
    Ec2,
    Json,
    Rest,
}

/// The action and protocol of a request.
fn classify(req: &hyper::http::request::Parts, body: &[u8]) -> (String, Protocol) {
    if let Some(t) = req.headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return (t.rsplit('.').next().unwrap_or(t).to_string(), Protocol::Json);
    }
    let form: BTreeMap<String, String> = String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match form.get("Action") {
        Some(a) if form.get("Version").map(String::as_str) == Some("2016-11-15") => (a.clone(), Protocol::Ec2),
        Some(a) => (a.clone(), Protocol::Query),
        None => (format!("S3 {}", req.method), Protocol::Rest),
    }
}

/// AWS's answer to a throttled call in `protocol`.
fn throttling_error(protocol: Protocol, n: u64) -> Response<Full<Bytes>> {
    let id = format!("throttled-{n:08}");
    let (status, ctype, body) = match protocol {
        Protocol::Query => (
            StatusCode::BAD_REQUEST,
            "text/xml",
            format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>{id}</RequestId></ErrorResponse>"
            ),
        ),
        Protocol::Ec2 => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/xml;charset=UTF-8",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>{id}</RequestID></Response>"
            ),
        ),
        Protocol::Json => (
            StatusCode::BAD_REQUEST,
            "application/x-amz-json-1.1",
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_string(),
        ),
        Protocol::Rest => (
            StatusCode::SERVICE_UNAVAILABLE,
            "application/xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>{id}</RequestId></Error>"
            ),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", ctype.parse().expect("a content type"));
    r.headers_mut().insert("x-amzn-requestid", id.parse().expect("a request id"));
    r
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let (action, protocol) = classify(&parts, &body);
    let (call, throttle) = {
        let mut seen = state.seen.lock().unwrap_or_else(|e| e.into_inner());
        let nth = seen.iter().filter(|s| s.call.action == action).count() as u64 + 1;
        let call = Call { action, nth, total: seen.len() as u64 + 1, region: signed_region(&parts.headers) };
        let throttle = (state.rule)(&call);
        seen.push(Seen { call: call.clone(), throttled: throttle });
        (call, throttle)
    };
    if throttle {
        return Ok(throttling_error(protocol, call.total));
    }
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut up = Request::builder().method(parts.method.clone()).uri(format!("{}{path}", state.upstream));
    for (k, v) in &parts.headers {
        up = up.header(k, v);
    }
    let up = up.body(Full::new(body)).expect("a forwarded request");
    Ok(match client.request(up).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Response::from_parts(parts, Full::new(body))
        }
        Err(e) => {
            let mut r = Response::new(Full::new(Bytes::from(format!("throttling proxy: upstream failed: {e}"))));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Through the proxy, the SDK sees a throttled call as AWS's `Throttling` error (the
    /// code its retry classifier knows) and a forwarded call as the emulator's answer.
    #[test]
    fn throttles_what_the_rule_picks_in_awss_own_words() {
        let emu = crate::Emulator::shared();
        let proxy = ThrottlingProxy::start(&emu.url, |c| c.action == "DescribeStacks" && c.nth == 1);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .endpoint_url(&proxy.url)
                .region(aws_config::Region::new(emu.region.clone()))
                .credentials_provider(aws_sdk_sqs::config::Credentials::new("testing", "testing", None, None, "t"))
                .retry_config(aws_config::retry::RetryConfig::disabled())
                .load()
                .await;
            let cfn = aws_sdk_cloudformation::Client::new(&conf);
            let err = cfn.describe_stacks().send().await.expect_err("the first call is throttled");
            let code = aws_sdk_cloudformation::error::ProvideErrorMetadata::code(&err);
            assert_eq!(code, Some("Throttling"), "{err:?}");
            cfn.describe_stacks().send().await.expect("the second is forwarded");
            let ec2 = aws_sdk_ec2::Client::new(&conf);
            ec2.describe_vpcs().send().await.expect("other actions are forwarded");
        });
        let seen = proxy.calls();
        assert_eq!(seen.iter().map(|s| s.throttled).collect::<Vec<_>>(), [true, false, false]);
        assert_eq!((seen[2].call.action.as_str(), seen[2].call.nth, seen[2].call.total), ("DescribeVpcs", 1, 3));
        assert_eq!(proxy.throttled(), 1);
    }

    /// Each protocol gets AWS's code and HTTP status for it.
    #[test]
    fn each_protocol_gets_its_own_error_shape() {
        let body = |p| {
            let r = throttling_error(p, 1);
            (r.status().as_u16(), format!("{:?}", r.body()))
        };
        let (s, b) = body(Protocol::Query);
        assert!(s == 400 && b.contains("<Code>Throttling</Code>"), "{b}");
        let (s, b) = body(Protocol::Ec2);
        assert!(s == 503 && b.contains("RequestLimitExceeded"), "{b}");
        let (s, b) = body(Protocol::Json);
        assert!(s == 400 && b.contains("ThrottlingException"), "{b}");
        let (s, b) = body(Protocol::Rest);
        assert!(s == 503 && b.contains("SlowDown"), "{b}");
    }
}
