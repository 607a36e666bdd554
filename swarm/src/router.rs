//! The router's state and HTTP API, behind the load balancer (port 8080):
//!
//! | route | |
//! |---|---|
//! | `GET /healthz` | 200 while the broker connection is up, else 503 |
//! | `GET /version` | program, version, role version |
//! | `GET /targets` | the retained `watch` list |
//! | `PUT /watch` | bearer token; body: space-separated targets or a JSON array; publishes the retained list |
//! | `GET /pings/latest` | the latest record per target (`?target=x` for one) |
//! | `GET /bees` | live agents (a result within the TTL, no last will since) and dead ones |
//!
//! What a bee says about itself is not trusted for ordering or liveness: the router judges
//! by its own clock. "Latest" is the record with the latest *effective* time, its `ts`
//! clamped to when the router received it (a record cannot have been made after it
//! arrived), so a bee whose clock runs ahead cannot pin its record as the latest; such a
//! record is shown with `clock_ahead_ms` (how far its `ts` was past its arrival, when more
//! than [`CLOCK_TOLERANCE`]) and the bee is logged. Every record shown carries `received`
//! (RFC 3339, the router's clock). A bee is alive while the router *received* a result
//! from it within the TTL; `last_seen` is that receive time, `last_ts` the bee's own.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use record::PingRecord;
use rumqttc::{AsyncClient, QoS};
use serde_json::json;

use crate::mqtt::ConnState;
use crate::targets;
use crate::topics;

/// How far past its arrival a record's `ts` may be before the router calls its bee's
/// clock ahead (clocks synchronised by NTP agree to well under this).
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(2);

#[derive(Debug, Default, Clone)]
struct BeeSeen {
    /// When the router received the bee's last result (monotonic, for the TTL), and that
    /// moment and the record's own `ts` as RFC 3339.
    last_result: Option<(Instant, String, String)>,
    rip: Option<(Instant, serde_json::Value)>,
    /// When the router last logged that this bee's clock runs ahead.
    ahead_logged: Option<Instant>,
}

/// A target's latest record, with what the router saw of it.
#[derive(Debug, Clone)]
struct Latest {
    record: PingRecord,
    /// Receive time, ms since the epoch (the router's clock).
    received_ms: i64,
    /// `min(ts, received)`: what "latest" is ordered by.
    effective_ms: i64,
    /// How far `ts` was past the arrival, when beyond [`CLOCK_TOLERANCE`].
    ahead_ms: Option<i64>,
}

impl Latest {
    fn json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.record).expect("a record serialises");
        let received = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.received_ms) * 1_000_000)
            .map(crate::format_ts)
            .unwrap_or_default();
        v["received"] = json!(received);
        if let Some(a) = self.ahead_ms {
            v["clock_ahead_ms"] = json!(a);
        }
        v
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// What the router knows, fed by its MQTT subscriptions.
pub struct RouterState {
    pub conn: Arc<ConnState>,
    pub client: AsyncClient,
    pub token: String,
    /// A bee counts as alive while the router received a result from it within this.
    pub bee_ttl: Duration,
    pub role_version: String,
    targets: RwLock<Option<Vec<String>>>,
    latest: RwLock<HashMap<String, Latest>>,
    bees: RwLock<HashMap<String, BeeSeen>>,
}

impl RouterState {
    pub fn new(
        conn: Arc<ConnState>,
        client: AsyncClient,
        token: String,
        bee_ttl: Duration,
        role_version: String,
    ) -> RouterState {
        RouterState {
            conn,
            client,
            token,
            bee_ttl,
            role_version,
            targets: RwLock::new(None),
            latest: RwLock::new(HashMap::new()),
            bees: RwLock::new(HashMap::new()),
        }
    }

    /// Feeds one MQTT message in; malformed messages are logged and skipped.
    pub fn on_message(&self, topic: &str, payload: &[u8]) {
        if topic == topics::WATCH {
            match targets::parse_watch(payload) {
                Ok(t) => self.set_targets(t),
                Err(e) => tracing::warn!(error = %e, "malformed watch payload skipped"),
            }
        } else if let Some(topic_target) = topics::ping_target(topic) {
            let mut r = match serde_json::from_slice::<PingRecord>(payload) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(topic, error = %e, "malformed ping message skipped");
                    return;
                }
            };
            // One target however spelled (older tools may not write the canonical form).
            let target = match (targets::canonical(topic_target), targets::canonical(&r.target)) {
                (Ok(a), Ok(b)) if a == b && r.validate().is_ok() && topics::valid_agent(&r.agent) => a,
                _ => {
                    tracing::warn!(topic, agent = %r.agent, target = %r.target, "invalid ping record skipped");
                    return;
                }
            };
            r.target = target.clone();
            let received_ms = now_ms();
            let ts_ms = crate::ts_millis(&r.ts).unwrap_or(received_ms);
            let ahead = ts_ms - received_ms;
            let ahead_ms = (ahead > CLOCK_TOLERANCE.as_millis() as i64).then_some(ahead);
            {
                let mut bees = self.bees.write().unwrap();
                let b = bees.entry(r.agent.clone()).or_default();
                let now = Instant::now();
                let received = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(received_ms) * 1_000_000)
                    .map(crate::format_ts)
                    .unwrap_or_default();
                b.last_result = Some((now, received, r.ts.clone()));
                if let Some(a) = ahead_ms {
                    if b.ahead_logged.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60)) {
                        b.ahead_logged = Some(now);
                        tracing::warn!(agent = %r.agent, ahead_ms = a, ts = %r.ts, "a bee's clock runs ahead of the router's: its records are ordered by when they arrived");
                    }
                }
            }
            let new = Latest { effective_ms: ts_ms.min(received_ms), received_ms, ahead_ms, record: r };
            let mut latest = self.latest.write().unwrap();
            match latest.get(&target) {
                // Several bees ping each target: keep the most recent result, judged by
                // the router's clock.
                Some(old) if old.effective_ms > new.effective_ms => {}
                _ => {
                    latest.insert(target, new);
                }
            }
        } else if let Some(agent) = topics::rip_agent(topic) {
            let mut bees = self.bees.write().unwrap();
            if payload.is_empty() {
                // The bee cleared its will: it is (re)connected.
                if let Some(b) = bees.get_mut(agent) {
                    b.rip = None;
                }
                return;
            }
            let info = serde_json::from_slice(payload)
                .unwrap_or_else(|_| json!({ "payload": String::from_utf8_lossy(payload) }));
            tracing::info!(agent, "a bee's last will arrived");
            bees.entry(agent.to_string()).or_default().rip = Some((Instant::now(), info));
        }
    }

    /// The current watch list; results of targets no longer watched are forgotten.
    fn set_targets(&self, t: Vec<String>) {
        let keep: std::collections::HashSet<&String> = t.iter().collect();
        self.latest.write().unwrap().retain(|k, _| keep.contains(k));
        *self.targets.write().unwrap() = Some(t);
    }

    fn bees_json(&self) -> serde_json::Value {
        let now = Instant::now();
        let bees = self.bees.read().unwrap();
        let mut alive = Vec::new();
        let mut dead = Vec::new();
        let sorted: BTreeMap<&String, &BeeSeen> = bees.iter().collect();
        for (agent, b) in sorted {
            let last_seen = b.last_result.as_ref().map(|(_, received, _)| received.clone());
            let last_ts = b.last_result.as_ref().map(|(_, _, ts)| ts.clone());
            let fresh = b.last_result.as_ref().is_some_and(|(t, _, _)| now.duration_since(*t) < self.bee_ttl);
            let ripped_after_result = match (&b.rip, &b.last_result) {
                (Some((rt, _)), Some((lt, _, _))) => rt >= lt,
                (Some(_), None) => true,
                _ => false,
            };
            if fresh && !ripped_after_result {
                alive.push(json!({ "agent": agent, "last_seen": last_seen, "last_ts": last_ts }));
            } else {
                let (reason, will) = match &b.rip {
                    Some((_, info)) if ripped_after_result => ("last will", info.clone()),
                    _ => ("silent", serde_json::Value::Null),
                };
                dead.push(
                    json!({ "agent": agent, "last_seen": last_seen, "last_ts": last_ts, "reason": reason, "will": will }),
                );
            }
        }
        json!({ "alive": alive, "dead": dead })
    }
}

/// The API.
pub fn app(state: Arc<RouterState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/version", get(version))
        .route("/targets", get(get_targets))
        .route("/watch", put(put_watch).get(get_targets))
        .route("/pings/latest", get(latest))
        .route("/bees", get(bees))
        .layer(axum::extract::DefaultBodyLimit::max(8 * 1024 * 1024))
        .with_state(state)
}

async fn healthz(State(s): State<Arc<RouterState>>) -> Response {
    if s.conn.connected() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "broker unreachable\n").into_response()
    }
}

async fn version(State(s): State<Arc<RouterState>>) -> Json<serde_json::Value> {
    Json(json!({ "program": "router", "version": env!("CARGO_PKG_VERSION"), "role_version": s.role_version }))
}

async fn get_targets(State(s): State<Arc<RouterState>>) -> Json<serde_json::Value> {
    let t = s.targets.read().unwrap().clone();
    Json(json!({ "targets": t.clone().unwrap_or_default(), "known": t.is_some() }))
}

fn authorized(s: &RouterState, headers: &HeaderMap) -> bool {
    let Some(given) =
        headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), s.token.as_bytes());
    // Constant time in the token's content.
    !b.is_empty() && a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

async fn put_watch(State(s): State<Arc<RouterState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if !authorized(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    }
    let list = match targets::parse_watch(&body) {
        Ok(l) => l,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if !s.conn.connected() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "broker unreachable: the watch list was not changed");
    }
    let payload = targets::watch_payload(&list);
    if let Err(e) = s.client.publish(topics::WATCH, QoS::AtLeastOnce, true, payload.into_bytes()).await {
        return error(StatusCode::SERVICE_UNAVAILABLE, format!("cannot publish: {e}"));
    }
    tracing::info!(targets = list.len(), "watch list published");
    s.set_targets(list.clone());
    (StatusCode::OK, Json(json!({ "targets": list }))).into_response()
}

#[derive(serde::Deserialize)]
struct LatestQuery {
    target: Option<String>,
}

async fn latest(State(s): State<Arc<RouterState>>, Query(q): Query<LatestQuery>) -> Response {
    let latest = s.latest.read().unwrap();
    match q.target {
        Some(t) => {
            let key = match targets::canonical(&t) {
                Ok(k) => k,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            match latest.get(&key) {
                Some(l) => Json(l.json()).into_response(),
                None => error(StatusCode::NOT_FOUND, format!("no result for {key:?} yet")),
            }
        }
        None => {
            let mut all: Vec<&Latest> = latest.values().collect();
            all.sort_by(|a, b| a.record.target.cmp(&b.record.target));
            Json(json!({ "pings": all.iter().map(|l| l.json()).collect::<Vec<_>>() })).into_response()
        }
    }
}

async fn bees(State(s): State<Arc<RouterState>>) -> Json<serde_json::Value> {
    Json(s.bees_json())
}
