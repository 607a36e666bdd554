//! indexer: takes the bees' results from the broker (an MQTT 5 shared subscription, so
//! several indexers split the load) and delivers them to the SQS queue (many records per
//! message) and to InfluxDB on the metrics box.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use record::{Encoding, PingRecord};
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use swarm::config::{self, duration_in, int_in, Check};
use swarm::influx::{Influx, InfluxSink};
use swarm::mqtt::{self, ConnState, MqttArgs, Msg};
use swarm::sink::Buffer;
use swarm::sqs::SqsSink;
use swarm::stats::{Counter, Snapshot};
use swarm::{targets, topics};

#[derive(Parser, Debug)]
#[command(name = "indexer", version, about = "Delivers the swarm's ping records from MQTT to SQS and InfluxDB")]
struct Args {
    /// Configuration file (KEY=VALUE lines, as /etc/tyrell/indexer.env).
    #[arg(long, env = "TYRELL_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    mqtt: MqttArgs,
    /// MQTT client id (stable across restarts so the broker keeps the session); default
    /// indexer-<hostname>.
    #[arg(long, env = "INDEXER_CLIENT_ID")]
    client_id: Option<String>,
    /// Shared-subscription group: indexers in one group split the results. Empty = each
    /// indexer gets every result.
    #[arg(long, env = "INDEXER_SHARE_GROUP", default_value = "indexers")]
    share_group: String,
    /// Seconds the broker keeps this indexer's session (and queues its QoS 1 messages)
    /// while it is disconnected; 0 = a clean session each time; 0 to 4294967295 (MQTT 5's
    /// 32-bit field; the largest means "never expires").
    #[arg(long, env = "INDEXER_SESSION_EXPIRY", default_value_t = 600,
          value_parser = int_in("INDEXER_SESSION_EXPIRY (--session-expiry)", 0u32, u32::MAX))]
    session_expiry: u32,
    /// The SQS queue URL (empty = no SQS delivery).
    #[arg(long, env = "QUEUE_URL", default_value = "")]
    queue_url: String,
    /// Message body encoding: `gzip+base64` (several times more records per message) or `ndjson`.
    #[arg(long, env = "SQS_ENCODING", default_value = "gzip+base64", value_parser = parse_encoding)]
    sqs_encoding: Encoding,
    /// Largest message, and largest batch, in bytes: 1024 to 262144 (the SQS limit).
    #[arg(long, env = "SQS_MAX_BYTES", default_value_t = record::MAX_MESSAGE_BYTES,
          value_parser = int_in("SQS_MAX_BYTES (--sqs-max-bytes)", 1024usize, record::MAX_MESSAGE_BYTES))]
    sqs_max_bytes: usize,
    /// InfluxDB 1.x URL, http://host:8086 (empty = no InfluxDB delivery); the port 1 to 65535.
    #[arg(long, env = "INFLUX_URL", default_value = "", value_parser = influx_url)]
    influx_url: String,
    /// InfluxDB database (created when missing).
    #[arg(long, env = "INFLUX_DB", default_value = "tyrell")]
    influx_db: String,
    /// Most points per InfluxDB write: 1 to 100000.
    #[arg(long, env = "INFLUX_BATCH", default_value_t = 5000,
          value_parser = int_in("INFLUX_BATCH (--influx-batch)", 1usize, 100_000))]
    influx_batch: usize,
    /// Records each destination may hold while it is slow or down; beyond it the oldest
    /// are dropped, counted and logged. 1 to 10000000.
    #[arg(long, env = "INDEXER_BUFFER", default_value_t = 500_000,
          value_parser = int_in("INDEXER_BUFFER (--buffer)", 1usize, 10_000_000))]
    buffer: usize,
    /// Most messages the broker may send this indexer before it acknowledges them (the MQTT
    /// 5 receive maximum it announces). A message is acknowledged only once its record is
    /// in SQS, so SQS requests go out when half this many records wait, whatever the linger.
    /// 2 to 65535 (the protocol's 16-bit field).
    #[arg(long, env = "INDEXER_MAX_UNACKED", default_value_t = 10000,
          value_parser = int_in("INDEXER_MAX_UNACKED (--max-unacked)", 2u16, 65535))]
    max_unacked: u16,
    /// How long to wait for more records before sending a partly filled request: 0s to 60s.
    #[arg(long, env = "INDEXER_LINGER", default_value = "1s",
          value_parser = duration_in("INDEXER_LINGER (--linger)", Duration::ZERO, Duration::from_secs(60), false))]
    linger: Duration,
    /// Serve /metrics and /healthz on this address (e.g. 127.0.0.1:9102; empty = off).
    #[arg(long, env = "INDEXER_METRICS_ADDR", default_value = "",
          value_parser = config::listen_addr("INDEXER_METRICS_ADDR (--metrics-addr)", true))]
    metrics_addr: String,
    /// On SIGTERM, how long to keep delivering what is buffered before exiting: 0s to 1h.
    #[arg(long, env = "INDEXER_DRAIN_TIMEOUT", default_value = "20s",
          value_parser = duration_in("INDEXER_DRAIN_TIMEOUT (--drain-timeout)", Duration::ZERO, Duration::from_secs(3600), false))]
    drain_timeout: Duration,
    /// Log the counters this often: 0 (never) or 100ms to 24h.
    #[arg(long, env = "STATS_INTERVAL", default_value = "60s", value_parser = config::stats_interval())]
    stats_interval: Duration,
}

fn parse_encoding(s: &str) -> Result<Encoding, String> {
    Encoding::from_attribute(Some(s)).map_err(|e| format!("SQS_ENCODING (--sqs-encoding): {e}"))
}

fn influx_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.is_empty() {
        Influx::from_url(s, "tyrell").map_err(|e| e.to_string())?;
    }
    Ok(s.to_string())
}

impl Check for Args {
    fn check(&self) -> Result<(), String> {
        if self.queue_url.is_empty() && self.influx_url.is_empty() {
            return Err("nothing to deliver to: set QUEUE_URL and/or INFLUX_URL".into());
        }
        if !self.influx_url.is_empty() {
            Influx::from_url(&self.influx_url, &self.influx_db).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct IndexerStats {
    received: Counter,
    malformed: Counter,
    rips: Counter,
    /// Records whose `ts` was past their arrival (a bee's clock ahead).
    clock_ahead: Counter,
    /// The minute (since the epoch) a clock-ahead warning was last logged.
    clock_ahead_logged: std::sync::atomic::AtomicI64,
    sqs: Option<Arc<Buffer>>,
    influx: Option<Arc<Buffer>>,
    conn: Arc<ConnState>,
}

impl Snapshot for IndexerStats {
    fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let mut v = vec![
            ("connected", self.conn.connected() as u64),
            ("received", self.received.get()),
            ("malformed", self.malformed.get()),
            ("rips", self.rips.get()),
            ("clock_ahead", self.clock_ahead.get()),
        ];
        for (b, names) in [
            (
                &self.sqs,
                [
                    "sqs_delivered",
                    "sqs_messages",
                    "sqs_requests",
                    "sqs_retries",
                    "sqs_rejected",
                    "sqs_dropped",
                    "sqs_buffered",
                ],
            ),
            (
                &self.influx,
                [
                    "influx_delivered",
                    "influx_messages",
                    "influx_requests",
                    "influx_retries",
                    "influx_rejected",
                    "influx_dropped",
                    "influx_buffered",
                ],
            ),
        ] {
            if let Some(b) = b {
                let s = &b.stats;
                let vals = [
                    s.delivered.get(),
                    s.messages.get(),
                    s.requests.get(),
                    s.retries.get(),
                    s.rejected.get(),
                    s.dropped.get(),
                    b.len() as u64,
                ];
                v.extend(names.into_iter().zip(vals));
            }
        }
        v
    }
}

/// The QoS 1 messages not yet acknowledged, by tag. A message is acknowledged on the
/// connection it came on only: after a reconnection the broker sends the unacknowledged
/// ones again (same session) and the packet ids of the old connection mean nothing.
#[derive(Default)]
struct Acks {
    next: AtomicU64,
    connection: AtomicU64,
    held: Mutex<HashMap<u64, (u64, Publish)>>,
}

impl Acks {
    fn connected(&self) {
        self.connection.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps a message for acknowledging later; returns its tag.
    fn hold(&self, p: &Publish) -> u64 {
        let tag = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = self.connection.load(Ordering::Relaxed);
        self.held.lock().unwrap().insert(tag, (conn, p.clone()));
        tag
    }

    /// Acknowledges the messages whose tags come in on `done`.
    async fn run(
        self: Arc<Self>,
        client: rumqttc::v5::AsyncClient,
        mut done: tokio::sync::mpsc::UnboundedReceiver<Vec<u64>>,
    ) {
        while let Some(tags) = done.recv().await {
            let conn = self.connection.load(Ordering::Relaxed);
            let ready: Vec<Publish> = {
                let mut held = self.held.lock().unwrap();
                tags.iter().filter_map(|t| held.remove(t)).filter(|(c, _)| *c == conn).map(|(_, p)| p).collect()
            };
            for p in ready {
                if let Err(e) = client.ack(&p).await {
                    tracing::warn!(error = %e, "cannot acknowledge a message (the broker sends it again)");
                }
            }
        }
    }
}

/// Parses and checks one `ping/<target>` message; the record's target comes out in its
/// canonical spelling (`swarm::targets::canonical`), whatever spelling the publisher
/// used, so one target is one InfluxDB series and one name in the archive.
fn parse_ping(topic_target: &str, payload: &[u8]) -> Result<PingRecord, String> {
    let mut r: PingRecord = serde_json::from_slice(payload).map_err(|e| format!("not a ping record: {e}"))?;
    r.validate()?;
    let topic_t = targets::canonical(topic_target).map_err(|e| format!("topic target: {e}"))?;
    let record_t = targets::canonical(&r.target).map_err(|e| format!("record target: {e}"))?;
    if record_t != topic_t {
        return Err(format!("record target {:?} does not match the topic's {topic_target:?}", r.target));
    }
    r.target = record_t;
    Ok(r)
}

async fn serve_metrics(addr: String, stats: Arc<IndexerStats>) -> Result<()> {
    use axum::{routing::get, Router};
    let s1 = stats.clone();
    let app = Router::new()
        .route("/metrics", get(move || async move { swarm::stats::prometheus("indexer", &s1.snapshot()) }))
        .route(
            "/healthz",
            get(move || async move {
                if stats.conn.connected() {
                    (axum::http::StatusCode::OK, "ok")
                } else {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "broker unreachable")
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(addr = %addr, "serving /metrics");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let password = args.mqtt.password().await?;
    let client_id = args.client_id.clone().unwrap_or_else(|| format!("indexer-{}", swarm::hostname()));
    let conn = Arc::new(ConnState::default());
    let mut stats = IndexerStats { conn: conn.clone(), ..Default::default() };
    // Acknowledgements: a message waits in `unacked` (under a tag) until its record is in
    // SQS; the sink reports the tags of the records it is done with on `done`.
    let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u64>>();
    let acks = Arc::new(Acks::default());

    if !args.queue_url.is_empty() {
        // Never drop a record waiting for its acknowledgement: the buffer holds them all.
        let buffer = Arc::new(Buffer::new("sqs", args.buffer.max(usize::from(args.max_unacked))));
        stats.sqs = Some(buffer.clone());
        let sink = SqsSink {
            client: aws_sdk_sqs::Client::new(&config::aws().await),
            queue_url: args.queue_url.clone(),
            encoding: args.sqs_encoding,
            limit: args.sqs_max_bytes,
            linger: args.linger,
            buffer,
            fill_records: usize::from(args.max_unacked / 2),
            done: Some(done_tx.clone()),
        };
        tokio::spawn(sink.run());
    }
    if !args.influx_url.is_empty() {
        let buffer = Arc::new(Buffer::new("influxdb", args.buffer));
        stats.influx = Some(buffer.clone());
        let sink = InfluxSink {
            influx: Influx::from_url(&args.influx_url, &args.influx_db)?,
            batch: args.influx_batch.max(1),
            linger: args.linger,
            buffer,
        };
        tokio::spawn(sink.run());
    }
    let stats = Arc::new(stats);
    let stats_ref = stats.clone();
    swarm::stats::spawn_logger("indexer", stats.clone(), args.stats_interval);
    if !args.metrics_addr.is_empty() {
        let (addr, s) = (args.metrics_addr.clone(), stats.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_metrics(addr, s).await {
                tracing::error!(error = format!("{e:#}"), "metrics endpoint failed");
            }
        });
    }

    let mut opts = args.mqtt.v5(&client_id, password.as_deref(), args.session_expiry)?;
    opts.set_manual_acks(true);
    opts.set_receive_maximum(Some(args.max_unacked));
    let (client, eventloop) = rumqttc::v5::AsyncClient::new(opts, 1000);
    tokio::spawn(acks.clone().run(client.clone(), done_rx));
    let subs =
        [topics::shared(&args.share_group, topics::PING_ALL), topics::shared(&args.share_group, topics::RIP_ALL)];
    tracing::info!(client_id = %client_id, subscriptions = ?subs, sqs = !args.queue_url.is_empty(), influxdb = !args.influx_url.is_empty(), "indexer starting");
    let mqtt_client = client.clone();
    // Set on SIGTERM: the subscriptions are given up and stay so across a reconnection.
    let draining = Arc::new(AtomicBool::new(false));
    let (draining_ref, subs_ref, acks_ref) = (draining.clone(), subs.clone(), acks.clone());
    let on_message = move |m: Msg<'_>| match m {
        Msg::Connected => {
            acks.connected();
            let (c, subs, draining) = (client.clone(), subs.clone(), draining.clone());
            tokio::spawn(async move {
                for s in subs {
                    let r = if draining.load(Ordering::SeqCst) {
                        c.unsubscribe(s.clone()).await
                    } else {
                        c.subscribe(s.clone(), QoS::AtLeastOnce).await
                    };
                    if let Err(e) = r {
                        tracing::error!(error = %e, subscription = %s, "cannot (un)subscribe");
                    }
                }
            });
        }
        Msg::Publish { topic, payload, v5, .. } => {
            // Acknowledged at once unless its record goes to SQS (InfluxDB is best effort).
            let tag = v5.map(|p| acks.hold(p));
            let mut ack_now = tag;
            if let Some(target) = topics::ping_target(topic) {
                stats.received.inc();
                match parse_ping(target, payload) {
                    Ok(r) => {
                        let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
                        if swarm::ts_millis(&r.ts)
                            .is_some_and(|ts| ts > now_ms + swarm::router::CLOCK_TOLERANCE.as_millis() as i64)
                        {
                            stats.clock_ahead.inc();
                            let secs = now_ms / 1000;
                            if stats.clock_ahead_logged.swap(secs / 60, Ordering::Relaxed) != secs / 60 {
                                tracing::warn!(agent = %r.agent, ts = %r.ts, "a bee's clock runs ahead of the indexer's: its InfluxDB points are written at their arrival time");
                            }
                        }
                        if let Some(b) = &stats.influx {
                            match swarm::influx::line(&r, now_ms) {
                                Some(l) => b.push(l),
                                None => b.stats.rejected.inc(),
                            }
                        }
                        if let Some(b) = &stats.sqs {
                            b.push_tagged(serde_json::to_string(&r).expect("a record serialises"), tag);
                            ack_now = None;
                        }
                    }
                    Err(e) => {
                        stats.malformed.inc();
                        tracing::warn!(topic, error = %e, payload = %String::from_utf8_lossy(&payload[..payload.len().min(200)]), "malformed ping message skipped");
                    }
                }
            } else if let Some(agent) = topics::rip_agent(topic) {
                if payload.is_empty() {
                    done_tx.send(ack_now.into_iter().collect()).ok();
                    return; // a bee cleared its will: it is back
                }
                stats.rips.inc();
                tracing::warn!(agent, payload = %String::from_utf8_lossy(&payload[..payload.len().min(300)]), "a bee died");
                if let Some(b) = &stats.influx {
                    b.push(swarm::influx::rip_line(agent, time::OffsetDateTime::now_utc().unix_timestamp() * 1000));
                }
            } else {
                tracing::debug!(topic, "unexpected message");
            }
            if let Some(t) = ack_now {
                done_tx.send(vec![t]).ok();
            }
        }
    };
    let mqtt_args = args.mqtt.clone();
    let mut driver = tokio::spawn(async move { mqtt::drive_v5(&mqtt_args, eventloop, conn, on_message).await });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = &mut driver => bail!("the MQTT driver stopped: {r:?}"),
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Drain (a scale-in's termination hook, or a stop): give up the shared subscriptions
    // first, so the broker routes new results to the other indexers instead of queueing
    // them in this session (where they would wait for a box that never returns); keep the
    // connection while what is held goes to SQS and each message is acknowledged; then go.
    draining_ref.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + args.drain_timeout;
    let acked_before = stats_ref.conn.unsubacks.load(Ordering::Relaxed);
    for s in &subs_ref {
        if let Err(e) = mqtt_client.unsubscribe(s.clone()).await {
            tracing::warn!(error = %e, subscription = %s, "cannot unsubscribe");
        }
    }
    // Whatever the broker sent before its UNSUBACKs has arrived (and is held) by then.
    let wanted = acked_before + subs_ref.len() as u64;
    while stats_ref.conn.unsubacks.load(Ordering::Relaxed) < wanted
        && tokio::time::Instant::now() < deadline
        && !driver.is_finished()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!("draining: subscriptions given up; delivering what is held");
    let buffers: Vec<Arc<Buffer>> = [&stats_ref.sqs, &stats_ref.influx].into_iter().flatten().cloned().collect();
    buffers.iter().for_each(|b| b.flush());
    loop {
        let left: usize = buffers.iter().map(|b| b.outstanding()).sum();
        let unacked = acks_ref.held.lock().map(|h| h.len()).unwrap_or(0);
        if left == 0 && unacked == 0 {
            tracing::info!("stopping: everything delivered and acknowledged");
            break;
        }
        if tokio::time::Instant::now() >= deadline || driver.is_finished() {
            for b in &buffers {
                if b.outstanding() > 0 {
                    tracing::error!(
                        destination = b.name,
                        records = b.outstanding(),
                        "stopping with undelivered records: the broker sends them again only if this indexer returns"
                    );
                }
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the last acknowledgements leave before the DISCONNECT.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = mqtt_client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    driver.abort();
    Ok(())
}

fn main() -> Result<()> {
    config::main::<Args, _, _>("indexer", run)
}
