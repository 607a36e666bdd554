//! The router's state and HTTP API, behind the load balancer (port 8080):
//!
//! | route | |
//! |---|---|
//! | `GET /healthz` | 200 while the broker connection is up, else 503 |
//! | `GET /version` | program, version, role version |
//! | `GET /targets` | the retained `watch` list |
//! | `PUT /watch` | bearer token; body: space-separated targets or a JSON array; publishes the retained list |
//! | `GET /pings/latest` | the latest record per target (`?target=x` for one, `?region=R` from one region) |
//! | `GET /pings/regions` | per region: its targets' latest records summed up (below) |
//! | `GET /bees` | live agents (a result within the TTL, no last will since) and dead ones |
//!
//! A query parameter a route does not take, one given twice, or a value it cannot read is
//! answered 400 with `{"error": "<one sentence>"}`.
//!
//! What a bee says about itself is not trusted for ordering or liveness: the router judges
//! by its own clock. "Latest" is the record with the latest *effective* time, its `ts`
//! clamped to when the router received it (a record cannot have been made after it
//! arrived), so a bee whose clock runs ahead cannot pin its record as the latest; such a
//! record is shown with `clock_ahead_ms` (how far its `ts` was past its arrival, when more
//! than [`CLOCK_TOLERANCE`]) and the bee is logged. Every record shown carries `received`
//! (RFC 3339, the router's clock). A bee is alive while the router *received* a result
//! from it within the TTL; `last_seen` is that receive time, `last_ts` the bee's own.
//!
//! **Regions.** The router keeps the latest record of each target *from each region* (the
//! record's `region`, which the bee copies from `AWS_REGION`): at most [`MAX_REGIONS`] per
//! target, and only for the targets of the `watch` list once it is known, so its memory is
//! bounded by targets × regions. `/pings/latest` without `region` shows, per target, the
//! latest of those; `?region=R` shows the latest record of each target from R. A record
//! with an empty `region` (older bees) is filed under [`UNKNOWN_REGION`] ("unknown"), which
//! `?region=unknown` (or `?region=`) selects; a record whose `region` is not a region name
//! (1 to 64 letters, digits and `-`, [`crate::share::valid_place`]) is skipped and logged.
//! `/pings/regions` answers `{"regions": [...]}`, one object per region the router holds a
//! record or a live bee of, sorted by name ("unknown" first):
//!
//! | field | |
//! |---|---|
//! | `region` | the region, or `"unknown"` for records without one |
//! | `targets` | targets with a record from the region (the records summed up: one per target) |
//! | `agents` | distinct agents among those records |
//! | `alive` | live bees (as `/bees` counts them) whose last record came from the region |
//! | `ok` | those records with `status: ok` |
//! | `loss` | mean `loss` of those records, a fraction 0..1 (an error record counts as 1.0); `null` without records |
//! | `rtt_avg_ms` | mean of their `rtt_ms.avg`, in ms, over the `answered` ones; `null` when none answered |
//! | `answered` | those records with an RTT (at least one probe answered) |
//! | `last_ts` / `last_seen` | the `ts` (the bee's clock) and `received` (the router's) of the region's latest record; `null` without records |
//!
//! These describe the latest record of each target, a snapshot, not an average over time:
//! the Grafana dashboard's per-region panels show the series (roles/metrics/dashboard.json).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use record::PingRecord;
use rumqttc::{AsyncClient, QoS};
use serde_json::json;

use crate::mqtt::ConnState;
use crate::share;
use crate::targets;
use crate::topics;

/// How far past its arrival a record's `ts` may be before the router calls its bee's
/// clock ahead (clocks synchronised by NTP agree to well under this).
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(2);

/// The most regions the router keeps a latest record of one target for (AWS has about 35
/// regions). A record from a further region is dropped and logged; the regions it holds
/// already keep being updated.
pub const MAX_REGIONS: usize = 64;

/// What `/pings/regions` and `?region=` call the region of records whose `region` is empty
/// (bees older than the region in records): they are counted there, not dropped. A record
/// that says `"region": "unknown"` is counted there too (no AWS region has that name).
pub const UNKNOWN_REGION: &str = "unknown";

/// The key a record's region is held under: `""` for [`UNKNOWN_REGION`].
fn region_key(region: &str) -> &str {
    if region == UNKNOWN_REGION {
        ""
    } else {
        region
    }
}

/// How a region key is shown.
fn region_name(key: &str) -> &str {
    if key.is_empty() {
        UNKNOWN_REGION
    } else {
        key
    }
}

#[derive(Debug, Default, Clone)]
struct BeeSeen {
    /// When the router received the bee's last result (monotonic, for the TTL), and that
    /// moment and the record's own `ts` as RFC 3339.
    last_result: Option<(Instant, String, String)>,
    /// The region key ([`region_key`]) of the bee's last result.
    region: String,
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
    /// What "latest" means among several records: the latest effective time, then the
    /// latest arrival.
    fn order(&self) -> (i64, i64) {
        (self.effective_ms, self.received_ms)
    }

    fn received(&self) -> String {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.received_ms) * 1_000_000)
            .map(crate::format_ts)
            .unwrap_or_default()
    }

    fn json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.record).expect("a record serialises");
        v["received"] = json!(self.received());
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
    /// Target → region key ([`region_key`]) → the latest record of that target from that
    /// region; at most [`MAX_REGIONS`] regions per target.
    latest: RwLock<HashMap<String, HashMap<String, Latest>>>,
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
            if !share::valid_place(&r.region) {
                tracing::warn!(topic, agent = %r.agent, region = %r.region, "ping record with an invalid region skipped");
                return;
            }
            r.target = target.clone();
            let region = region_key(&r.region).to_string();
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
                b.region.clone_from(&region);
                if let Some(a) = ahead_ms {
                    if b.ahead_logged.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60)) {
                        b.ahead_logged = Some(now);
                        tracing::warn!(agent = %r.agent, ahead_ms = a, ts = %r.ts, "a bee's clock runs ahead of the router's: its records are ordered by when they arrived");
                    }
                }
            }
            let new = Latest { effective_ms: ts_ms.min(received_ms), received_ms, ahead_ms, record: r };
            let mut latest = self.latest.write().unwrap();
            let regions = latest.entry(target).or_default();
            match regions.get(&region) {
                // Several bees ping each target: keep the most recent result of each
                // region, judged by the router's clock.
                Some(old) if old.effective_ms > new.effective_ms => {}
                None if regions.len() >= MAX_REGIONS => {
                    tracing::warn!(topic, agent = %new.record.agent, region = %region, max = MAX_REGIONS, "ping record skipped: its target has results from too many regions already");
                }
                _ => {
                    regions.insert(region, new);
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

    /// Whether the router's last word of a bee is a last will (sent after its last result).
    fn ripped_after_result(b: &BeeSeen) -> bool {
        match (&b.rip, &b.last_result) {
            (Some((rt, _)), Some((lt, _, _))) => rt >= lt,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// Alive: a result received within the TTL, and no last will since.
    fn alive(&self, b: &BeeSeen, now: Instant) -> bool {
        let fresh = b.last_result.as_ref().is_some_and(|(t, _, _)| now.duration_since(*t) < self.bee_ttl);
        fresh && !Self::ripped_after_result(b)
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
            let ripped_after_result = Self::ripped_after_result(b);
            if self.alive(b, now) {
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

    /// `/pings/regions`: see the module documentation for the fields.
    fn regions_json(&self) -> serde_json::Value {
        #[derive(Default)]
        struct Sum<'a> {
            targets: usize,
            agents: BTreeSet<&'a str>,
            alive: usize,
            ok: usize,
            loss: f64,
            answered: usize,
            rtt_avg: f64,
            last: Option<&'a Latest>,
        }
        let latest = self.latest.read().unwrap();
        let bees = self.bees.read().unwrap();
        let mut regions: BTreeMap<&str, Sum> = BTreeMap::new();
        for (key, l) in latest.values().flatten() {
            let s = regions.entry(key.as_str()).or_default();
            s.targets += 1;
            s.agents.insert(&l.record.agent);
            if l.record.status == record::Status::Ok {
                s.ok += 1;
            }
            s.loss += l.record.loss;
            if let Some(rtt) = &l.record.rtt_ms {
                s.answered += 1;
                s.rtt_avg += rtt.avg;
            }
            if s.last.is_none_or(|last| last.order() < l.order()) {
                s.last = Some(l);
            }
        }
        let now = Instant::now();
        for b in bees.values().filter(|b| self.alive(b, now)) {
            regions.entry(b.region.as_str()).or_default().alive += 1;
        }
        let mean = |sum: f64, n: usize| (n > 0).then(|| sum / n as f64);
        let rows: Vec<serde_json::Value> = regions
            .into_iter()
            .map(|(key, s)| {
                json!({
                    "region": region_name(key),
                    "targets": s.targets,
                    "agents": s.agents.len(),
                    "alive": s.alive,
                    "ok": s.ok,
                    "loss": mean(s.loss, s.targets),
                    "rtt_avg_ms": mean(s.rtt_avg, s.answered),
                    "answered": s.answered,
                    "last_ts": s.last.map(|l| l.record.ts.clone()),
                    "last_seen": s.last.map(Latest::received),
                })
            })
            .collect();
        json!({ "regions": rows })
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
        .route("/pings/regions", get(regions))
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

/// A route's query string as (key, value) pairs, in order.
type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The query parameters of `route`, each at most once and each one of `takes`; else why
/// not, in one sentence (the caller answers 400 with it).
fn query_params(q: QueryPairs, route: &str, takes: &[&str]) -> Result<HashMap<String, String>, String> {
    let Query(pairs) = q.map_err(|e| format!("the query string of GET {route} cannot be read: {}", e.body_text()))?;
    let mut out = HashMap::new();
    for (k, v) in pairs {
        if !takes.contains(&k.as_str()) {
            return Err(if takes.is_empty() {
                format!("GET {route} takes no query parameters, not {k:?}")
            } else {
                format!("GET {route} takes only the query parameters {}, not {k:?}", takes.join(" and "))
            });
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(format!("the query parameter {k:?} of GET {route} is given twice"));
        }
    }
    Ok(out)
}

/// A `region` query value as a region key ([`region_key`]): a region name
/// ([`share::valid_place`]), or `unknown` or empty for the records without one.
fn region_param(v: &str) -> Result<String, String> {
    if share::valid_place(v) {
        Ok(region_key(v).to_string())
    } else {
        Err(format!(
            "region must be a region name of 1 to 64 letters, digits and '-' (such as eu-west-1) or {UNKNOWN_REGION:?}, not {v:?}"
        ))
    }
}

/// A target's record from `region` (a region key), else its latest from any region.
fn pick<'a>(regions: &'a HashMap<String, Latest>, region: Option<&str>) -> Option<&'a Latest> {
    match region {
        Some(r) => regions.get(r),
        None => regions.values().max_by_key(|l| l.order()),
    }
}

async fn latest(State(s): State<Arc<RouterState>>, q: QueryPairs) -> Response {
    let params = match query_params(q, "/pings/latest", &["target", "region"]) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let region = match params.get("region").map(|v| region_param(v)).transpose() {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let target = match params.get("target").map(|t| targets::canonical(t)).transpose() {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let latest = s.latest.read().unwrap();
    let pick = |regions| pick(regions, region.as_deref());
    match target {
        Some(key) => match latest.get(&key).and_then(pick) {
            Some(l) => Json(l.json()).into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                match &region {
                    Some(r) => format!("no result for {key:?} from region {:?} yet", region_name(r)),
                    None => format!("no result for {key:?} yet"),
                },
            ),
        },
        None => {
            let mut all: Vec<&Latest> = latest.values().filter_map(pick).collect();
            all.sort_by(|a, b| a.record.target.cmp(&b.record.target));
            Json(json!({ "pings": all.iter().map(|l| l.json()).collect::<Vec<_>>() })).into_response()
        }
    }
}

async fn regions(State(s): State<Arc<RouterState>>, q: QueryPairs) -> Response {
    if let Err(e) = query_params(q, "/pings/regions", &[]) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    Json(s.regions_json()).into_response()
}

async fn bees(State(s): State<Arc<RouterState>>) -> Json<serde_json::Value> {
    Json(s.bees_json())
}
