//! indexer: takes the bees' results from the broker (an MQTT 5 shared subscription, so
//! several indexers split the load) and delivers them to the SQS queue (many records per
//! message) and to InfluxDB on the metrics box.
//!
//! Multi-homed for broker releases: besides its connection through the broker host name
//! (the NLB), it keeps a direct connection — own persistent session `<client id>-<broker>`,
//! the same share group — to every broker announced on `tyrell/brokers/<id>`
//! ([`swarm::mqtt::Announcement`]), and drains and drops it when the announcement is
//! cleared or expires. So a new broker has the indexers' shared subscription before any
//! bee moves to it, and an old one is drained by its own subscribers until it goes. With
//! BROKER_TLS on, a direct connection is TLS too, to the announced `tls_port`, or there is
//! none ([`MqttArgs::direct`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::borrow::Cow;

use record::{Encoding, RecordView};
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use swarm::config::{self, duration_in, int_in, Check};
use swarm::influx::{Influx, InfluxSink};
use swarm::mqtt::{self, Announcement, ConnState, MqttArgs, Msg};
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
    /// On SIGTERM, how long to wait for another indexer to be present on a broker before
    /// giving up the shared subscription there (a broker drops results no subscriber takes:
    /// a release's new indexer may still be starting): 0s (do not wait, the default) to
    /// 10m. The indexer role sets it; its termination hook holds the box meanwhile.
    #[arg(long, env = "INDEXER_HANDOVER", default_value = "0s",
          value_parser = duration_in("INDEXER_HANDOVER (--handover)", Duration::ZERO, Duration::from_secs(600), false))]
    handover: Duration,
    /// How long a bee's last will waits for the bee to show up live again (its presence,
    /// published every round) before it counts as a death: a will fires too when a
    /// broker stops or a bee moves brokers. At least 2 bee rounds; 0s (report at once) to 1h.
    #[arg(long, env = "INDEXER_RIP_GRACE", default_value = "30s",
          value_parser = duration_in("INDEXER_RIP_GRACE (--rip-grace)", Duration::ZERO, Duration::from_secs(3600), false))]
    rip_grace: Duration,
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
    /// Bees reported dead (a will, and no live presence within the grace).
    rips: Counter,
    /// Wills of bees that were live again within the grace (moved brokers).
    moves: Counter,
    /// Bees that said goodbye (`reason: "stopped"`: scale-in, a release): not deaths.
    stops: Counter,
    /// Direct connections to announced brokers.
    direct: AtomicU64,
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
            ("moves", self.moves.get()),
            ("stops", self.stops.get()),
            ("brokers_direct", self.direct.load(Ordering::Relaxed)),
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

/// The QoS 1 messages not yet acknowledged, by tag, over every broker connection ([`Link`]).
/// A message is acknowledged on the connection it came on, and only while that connection
/// is the one it came on: after a reconnection the broker sends the unacknowledged ones
/// again (same session) and the packet ids of the old connection mean nothing.
#[derive(Default)]
struct Acks {
    held: Mutex<Held>,
    /// link → its client and its current connection epoch.
    links: Mutex<HashMap<u64, (rumqttc::v5::AsyncClient, Arc<AtomicU64>)>>,
}

/// What acknowledging one message takes: its link, that link's connection epoch, its
/// packet id and QoS (not the message: its payload is not kept for this).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Unacked {
    link: u64,
    epoch: u64,
    pkid: u16,
    qos: QoS,
}

/// The unacknowledged messages by tag. Tags are handed out in order and mostly done with
/// in order (SQS takes records first in, first out), so the table is a ring: tag `base + i`
/// is slot `i`; done slots at the front are dropped. One slot per message in flight (at
/// most the receive maximum per connection, plus what waits to be acknowledged at once).
#[derive(Default)]
struct Held {
    base: u64,
    slots: std::collections::VecDeque<Option<Unacked>>,
}

impl Held {
    fn insert(&mut self, u: Unacked) -> u64 {
        self.slots.push_back(Some(u));
        self.base + self.slots.len() as u64 - 1
    }

    fn remove(&mut self, tag: u64) -> Option<Unacked> {
        let i = usize::try_from(tag.checked_sub(self.base)?).ok()?;
        let u = self.slots.get_mut(i)?.take();
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        u
    }
}

impl Acks {
    /// Keeps a message that came on `link` in connection `epoch`; returns its tag.
    fn hold(&self, link: u64, epoch: u64, p: &Publish) -> u64 {
        self.held.lock().unwrap().insert(Unacked { link, epoch, pkid: p.pkid, qos: p.qos })
    }

    /// Forgets a message that will not be acknowledged (its record was dropped).
    fn forget(&self, tag: u64) {
        self.held.lock().unwrap().remove(tag);
    }

    /// Messages of `link` still waiting for their record to reach SQS.
    fn held_for(&self, link: u64) -> usize {
        self.held.lock().unwrap().slots.iter().flatten().filter(|u| u.link == link).count()
    }

    /// Acknowledges the messages whose tags come in on `done`.
    async fn run(self: Arc<Self>, mut done: tokio::sync::mpsc::UnboundedReceiver<Vec<u64>>) {
        let mut ack = Publish::default();
        while let Some(tags) = done.recv().await {
            let ready: Vec<(rumqttc::v5::AsyncClient, u16, QoS)> = {
                let links = self.links.lock().unwrap();
                let mut held = self.held.lock().unwrap();
                tags.iter()
                    .filter_map(|t| held.remove(*t))
                    .filter_map(|u| {
                        let (c, epoch) = links.get(&u.link)?;
                        (epoch.load(Ordering::Relaxed) == u.epoch).then(|| (c.clone(), u.pkid, u.qos))
                    })
                    .collect()
            };
            for (c, pkid, qos) in ready {
                // rumqttc acknowledges by the packet id and QoS alone.
                (ack.pkid, ack.qos) = (pkid, qos);
                if let Err(e) = c.ack(&ack).await {
                    tracing::warn!(error = %e, "cannot acknowledge a message (the broker sends it again)");
                }
            }
        }
    }
}

/// Parses and checks one `ping/<target>` message; the record's target comes out in its
/// canonical spelling (`swarm::targets::canonical`), whatever spelling the publisher
/// used, so one target is one InfluxDB series and one name in the archive. The record
/// borrows its strings from `payload`; its time comes with it, in ms since the epoch.
fn parse_ping<'a>(topic_target: &str, payload: &'a [u8]) -> Result<(RecordView<'a>, i64), String> {
    let mut r: RecordView = serde_json::from_slice(payload).map_err(|e| format!("not a ping record: {e}"))?;
    let utc = r.validate_utc()?;
    let topic_t = targets::canonical(topic_target).map_err(|e| format!("topic target: {e}"))?;
    // The same spelling as the topic's (the usual case) has the same canonical form.
    if *r.target != *topic_target {
        let record_t = targets::canonical(&r.target).map_err(|e| format!("record target: {e}"))?;
        if record_t != topic_t {
            return Err(format!("record target {:?} does not match the topic's {topic_target:?}", r.target));
        }
    }
    if *r.target != *topic_t {
        r.target = Cow::Owned(topic_t);
    }
    Ok((r, (utc.unix_timestamp_nanos() / 1_000_000) as i64))
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

async fn run(mut args: Args) -> Result<()> {
    let password = args.mqtt.prepare().await?;
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
    swarm::stats::spawn_logger("indexer", stats.clone(), args.stats_interval);
    if !args.metrics_addr.is_empty() {
        let (addr, s) = (args.metrics_addr.clone(), stats.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_metrics(addr, s).await {
                tracing::error!(error = format!("{e:#}"), "metrics endpoint failed");
            }
        });
    }
    tokio::spawn(acks.clone().run(done_rx));
    let (events, mut announced) = tokio::sync::mpsc::unbounded_channel::<Announced>();
    let ctx = Arc::new(Ctx {
        password,
        session_expiry: args.session_expiry,
        max_unacked: args.max_unacked,
        shared: vec![
            topics::shared(&args.share_group, topics::PING_ALL),
            topics::shared(&args.share_group, topics::RIP_ALL),
        ],
        rip_grace: args.rip_grace,
        me: client_id.clone(),
        peers: Mutex::new(HashMap::new()),
        stats: stats.clone(),
        done_tx,
        acks,
        events,
        alive: Mutex::new(HashMap::new()),
        pending_rips: Mutex::new(std::collections::HashSet::new()),
    });
    tracing::info!(client_id = %client_id, subscriptions = ?ctx.shared, sqs = !args.queue_url.is_empty(), influxdb = !args.influx_url.is_empty(), "indexer starting");
    // The connection through the broker host name (the NLB: whichever broker is live), and
    // one direct connection per announced broker (managed below). An announced broker with
    // no direct connection (`None`: TLS is on and it announces no `tls_port`) is kept too,
    // so its re-announcements are not warned about again.
    let nlb = open_link(&ctx, 0, "nlb", args.mqtt.clone(), client_id.clone(), Some(conn))?;
    let mut direct: HashMap<String, (Option<Link>, Announcement, tokio::time::Instant)> = HashMap::new();
    let mut next_link = 1u64;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                if nlb.driver.is_finished() {
                    bail!("the MQTT driver stopped");
                }
                let now = tokio::time::Instant::now();
                let expired: Vec<String> = direct.iter().filter(|(_, (_, _, d))| *d <= now).map(|(k, _)| k.clone()).collect();
                for id in expired {
                    if let (Some(link), _, _) = direct.remove(&id).expect("listed") {
                        tracing::warn!(broker = %id, "the broker's announcement expired: dropping the direct connection");
                        tokio::spawn(drain_links(ctx.clone(), vec![link], args.drain_timeout));
                    }
                }
                stats.direct.store(direct.values().filter(|(l, _, _)| l.is_some()).count() as u64, Ordering::Relaxed);
            }
            Some(a) = announced.recv() => {
                let now = tokio::time::Instant::now();
                match a.announcement {
                    None => {
                        if let Some((Some(link), _, _)) = direct.remove(&a.id) {
                            tracing::info!(broker = %a.id, "the broker stopped announcing itself: draining the direct connection");
                            tokio::spawn(drain_links(ctx.clone(), vec![link], args.drain_timeout));
                        }
                    }
                    Some(ann) => {
                        let deadline = now + a.expiry;
                        if let Some((_, have, d)) = direct.get_mut(&a.id).filter(|(_, have, _)| *have == ann) {
                            let _ = have;
                            *d = deadline;
                            continue;
                        }
                        if let Some((Some(old), _, _)) = direct.remove(&a.id) {
                            tokio::spawn(drain_links(ctx.clone(), vec![old], args.drain_timeout));
                        }
                        match args.mqtt.direct(&ann) {
                            None => {
                                tracing::warn!(broker = %a.id, host = %ann.host, port = ann.port, version = %ann.version,
                                    "a broker announced itself without a tls_port: no direct connection to it, since this indexer's broker connection is TLS (BROKER_TLS) and is never downgraded to plain MQTT (the broker does not end TLS itself: an NLB does, with an ACM certificate, or the broker is older); its results reach this indexer through the NLB only");
                                direct.insert(a.id.clone(), (None, ann, deadline));
                            }
                            Some(mqtt) => {
                                let id = next_link;
                                next_link += 1;
                                let cid = format!("{client_id}-{}", a.id);
                                // With TLS, the name the broker's certificate is verified for.
                                let tls_name = mqtt.broker_tls.then_some(args.mqtt.broker_host.as_str());
                                tracing::info!(broker = %a.id, host = %mqtt.broker_host, port = mqtt.broker_port, tls_name, version = %ann.version, client_id = %cid, "a broker announced itself: connecting to it directly");
                                match open_link(&ctx, id, &a.id, mqtt, cid, None) {
                                    Ok(link) => {
                                        direct.insert(a.id.clone(), (Some(link), ann, deadline));
                                    }
                                    Err(e) => tracing::error!(broker = %a.id, error = format!("{e:#}"), "cannot connect to an announced broker"),
                                }
                            }
                        }
                    }
                }
                stats.direct.store(direct.values().filter(|(l, _, _)| l.is_some()).count() as u64, Ordering::Relaxed);
            }
        }
    }
    // Drain (a scale-in's termination hook, or a stop), every connection at once.
    let mut links = vec![nlb];
    links.extend(direct.into_values().filter_map(|(l, _, _)| l));
    hand_over(&ctx, &links, args.handover).await;
    drain_links(ctx, links, args.drain_timeout).await;
    Ok(())
}

/// Clears this indexer's presence (`indexers/alive/<me>`) on every link's broker.
async fn clear_presence(ctx: &Ctx, links: &[Link]) {
    let topic = format!("{}{}", topics::INDEXERS_ALIVE_PREFIX, ctx.me);
    for l in links {
        let _ = l.client.publish(topic.clone(), QoS::AtLeastOnce, true, Vec::new()).await;
    }
}

/// `INDEXER_HANDOVER`: waits, at most `max`, until every connected link's broker has
/// another indexer present (so its shared subscription keeps a member once this one gives
/// up its own), logging which.
async fn hand_over(ctx: &Ctx, links: &[Link], max: Duration) {
    if max.is_zero() {
        return;
    }
    // No longer a member others may hand over to.
    clear_presence(ctx, links).await;
    let start = tokio::time::Instant::now();
    tracing::info!(max_ms = max.as_millis() as u64, "stopping: waiting for another indexer on every broker first");
    loop {
        let alone: Vec<&str> = links
            .iter()
            .filter(|l| l.conn.connected() && !l.driver.is_finished())
            .filter(|l| ctx.peers.lock().unwrap().get(&l.id).is_none_or(|p| p.is_empty()))
            .map(|l| l.name.as_str())
            .collect();
        if alone.is_empty() {
            tracing::info!(
                waited_ms = start.elapsed().as_millis() as u64,
                "handed over: another indexer is on every broker"
            );
            return;
        }
        if start.elapsed() >= max {
            tracing::warn!(brokers = ?alone, "no other indexer on these brokers within INDEXER_HANDOVER: results published there meanwhile go nowhere");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the indexer keeps for every broker connection.
struct Ctx {
    password: Option<String>,
    session_expiry: u32,
    max_unacked: u16,
    /// The shared subscriptions (results and wills), the same on every connection.
    shared: Vec<String>,
    rip_grace: Duration,
    stats: Arc<IndexerStats>,
    done_tx: tokio::sync::mpsc::UnboundedSender<Vec<u64>>,
    acks: Arc<Acks>,
    /// Broker announcements heard on any connection.
    events: tokio::sync::mpsc::UnboundedSender<Announced>,
    /// When a live (not retained) presence of each bee last arrived.
    alive: Mutex<HashMap<String, std::time::Instant>>,
    /// Bees whose will arrived and waits out [`Ctx::rip_grace`].
    pending_rips: Mutex<std::collections::HashSet<String>>,
    /// This indexer's client id: its presence is `indexers/alive/<me>` on every broker.
    me: String,
    /// The other indexers present on each connection's broker, by link id.
    peers: Mutex<HashMap<u64, std::collections::HashSet<String>>>,
}

/// A broker announcement heard on some connection: `None` = cleared.
struct Announced {
    id: String,
    announcement: Option<Announcement>,
    /// Its remaining MQTT 5 message expiry, else [`mqtt::ANNOUNCEMENT_EXPIRY`].
    expiry: Duration,
}

/// One broker connection: through the NLB (link 0), or direct to an announced broker.
struct Link {
    id: u64,
    name: String,
    client: rumqttc::v5::AsyncClient,
    conn: Arc<ConnState>,
    /// Set when it drains: its shared subscriptions are given up, also across reconnects.
    draining: Arc<AtomicBool>,
    driver: tokio::task::JoinHandle<()>,
}

/// Connects to one broker (persistent session `client_id`, manual acks, the shared
/// subscriptions plus the announcements and the bees' presence).
fn open_link(
    ctx: &Arc<Ctx>,
    id: u64,
    name: &str,
    mqtt: MqttArgs,
    client_id: String,
    conn: Option<Arc<ConnState>>,
) -> Result<Link> {
    let mut opts = mqtt.v5(&client_id, ctx.password.as_deref(), ctx.session_expiry)?;
    opts.set_manual_acks(true);
    // Its presence on this broker goes when the connection dies.
    let presence = format!("{}{}", topics::INDEXERS_ALIVE_PREFIX, ctx.me);
    opts.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(&presence, Vec::new(), QoS::AtLeastOnce, true, None));
    opts.set_receive_maximum(Some(ctx.max_unacked));
    let (client, eventloop) = rumqttc::v5::AsyncClient::new(opts, 1000);
    let epoch = Arc::new(AtomicU64::new(0));
    ctx.acks.links.lock().unwrap().insert(id, (client.clone(), epoch.clone()));
    let conn = conn.unwrap_or_default();
    let draining = Arc::new(AtomicBool::new(false));
    let (c, d, e, x) = (client.clone(), draining.clone(), epoch.clone(), ctx.clone());
    let on_message = move |m: Msg<'_>| match m {
        Msg::Connected => {
            e.fetch_add(1, Ordering::Relaxed);
            let (c, draining, x) = (c.clone(), d.clone(), x.clone());
            let presence = presence.clone();
            tokio::spawn(async move {
                if !draining.load(Ordering::SeqCst) {
                    let _ = c.publish(presence, QoS::AtLeastOnce, true, x.me.clone().into_bytes()).await;
                }
                let plain = [
                    topics::BROKERS_ALL.to_string(),
                    topics::ALIVE_ALL.to_string(),
                    topics::INDEXERS_ALIVE_ALL.to_string(),
                ];
                for s in x.shared.iter().chain(plain.iter()) {
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
        Msg::Publish { topic, payload, retain, v5 } => {
            on_publish(&x, id, e.load(Ordering::Relaxed), topic, payload, retain, v5);
        }
    };
    let (driver_conn, name_s) = (conn.clone(), name.to_string());
    let driver = tokio::spawn(async move { mqtt::drive_v5(&mqtt, eventloop, driver_conn, on_message).await });
    Ok(Link { id, name: name_s, client, conn, draining, driver })
}

/// How long a draining indexer must receive nothing, with everything delivered and
/// acknowledged, before it disconnects: a broker delivers what it still had queued for the
/// session as acknowledgements free its inflight window, within milliseconds on a LAN.
const DRAIN_QUIET: Duration = Duration::from_millis(1500);

/// Gives up `links` the way a stopping indexer does (drain on scale-in, docs/ARCHITECTURE.md):
/// the shared subscriptions first, so the broker routes new results to the other
/// connections instead of queueing them in a session that may never return (an UNSUBACK
/// means nothing more comes for that filter, MQTT 5.0 §3.10.4); then what they delivered
/// goes to SQS and is acknowledged; then DISCONNECT. Bounded by `timeout`.
async fn drain_links(ctx: Arc<Ctx>, links: Vec<Link>, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    clear_presence(&ctx, &links).await;
    let mut wanted = Vec::new();
    for l in &links {
        l.draining.store(true, Ordering::SeqCst);
        wanted.push(l.conn.unsubacks.load(Ordering::Relaxed) + ctx.shared.len() as u64);
        for s in &ctx.shared {
            if let Err(e) = l.client.unsubscribe(s.clone()).await {
                tracing::warn!(broker = %l.name, error = %e, subscription = %s, "cannot unsubscribe");
            }
        }
    }
    // Whatever the broker sent before its UNSUBACKs has arrived (and is held) by then. A
    // connection that is down (its broker gone) sends nothing more: no wait for it.
    while links
        .iter()
        .zip(&wanted)
        .any(|(l, w)| l.conn.connected() && l.conn.unsubacks.load(Ordering::Relaxed) < *w && !l.driver.is_finished())
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    tracing::info!(brokers = ?names, "draining: subscriptions given up; delivering what is held");
    let buffers: Vec<Arc<Buffer>> = [&ctx.stats.sqs, &ctx.stats.influx].into_iter().flatten().cloned().collect();
    // Only a stopping indexer sends without lingering from now on: a direct connection
    // dropped because its broker retired leaves the buffers shared by the others as they
    // are (its held records go out at the next linger).
    let everything = links.iter().any(|l| l.id == 0);
    if everything {
        buffers.iter().for_each(|b| b.flush());
    }
    // After its UNSUBACK a broker may still deliver what it had queued for the session
    // (MQTT 5.0 §3.10.4; mosquitto does, as acknowledgements free its inflight window):
    // done only once nothing is held and nothing has arrived for DRAIN_QUIET.
    let received = || links.iter().map(|l| l.conn.publishes.load(Ordering::Relaxed)).sum::<u64>();
    let (mut seen, mut quiet_since) = (received(), tokio::time::Instant::now());
    loop {
        let unacked: usize = links.iter().map(|l| ctx.acks.held_for(l.id)).sum();
        let left: usize = if everything { buffers.iter().map(|b| b.outstanding()).sum() } else { 0 };
        let now_seen = received();
        if now_seen != seen {
            (seen, quiet_since) = (now_seen, tokio::time::Instant::now());
        }
        let connected = links.iter().any(|l| l.conn.connected() && !l.driver.is_finished());
        if left == 0 && unacked == 0 && (!connected || quiet_since.elapsed() >= DRAIN_QUIET) {
            tracing::info!(brokers = ?names, "stopping: everything delivered and acknowledged");
            break;
        }
        if tokio::time::Instant::now() >= deadline || links.iter().all(|l| l.driver.is_finished()) {
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
    for l in &links {
        let _ = l.client.disconnect().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for l in links {
        l.driver.abort();
        ctx.acks.links.lock().unwrap().remove(&l.id);
    }
}

/// One message from link `link` (connection `epoch`).
fn on_publish(ctx: &Arc<Ctx>, link: u64, epoch: u64, topic: &str, payload: &[u8], retain: bool, v5: Option<&Publish>) {
    let stats = &ctx.stats;
    let done_tx = &ctx.done_tx;
    if let Some(id) = topics::broker_id(topic) {
        let expiry = v5
            .and_then(|p| p.properties.as_ref())
            .and_then(|p| p.message_expiry_interval)
            .map(|s| Duration::from_secs(s.into()))
            .unwrap_or(mqtt::ANNOUNCEMENT_EXPIRY);
        let announcement = if payload.is_empty() {
            None
        } else {
            match Announcement::parse(payload) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(topic, error = %e, "skipping a malformed broker announcement");
                    ack_at_once(ctx, v5, link, epoch);
                    return;
                }
            }
        };
        ctx.events.send(Announced { id: id.to_string(), announcement, expiry }).ok();
        ack_at_once(ctx, v5, link, epoch);
        return;
    }
    if let Some(other) = topic.strip_prefix(topics::INDEXERS_ALIVE_PREFIX) {
        if other != ctx.me && !other.is_empty() {
            let mut peers = ctx.peers.lock().unwrap();
            let here = peers.entry(link).or_default();
            if payload.is_empty() {
                here.remove(other);
            } else {
                here.insert(other.to_string());
            }
        }
        ack_at_once(ctx, v5, link, epoch);
        return;
    }
    if let Some(agent) = topics::alive_agent(topic) {
        // A live presence (not a stored copy sent on subscribing): the bee is connected.
        if !retain && !payload.is_empty() {
            ctx.alive.lock().unwrap().insert(agent.to_string(), std::time::Instant::now());
        }
        ack_at_once(ctx, v5, link, epoch);
        return;
    }
    // Acknowledged at once unless its record goes to SQS (InfluxDB is best effort).
    let tag = v5.map(|p| ctx.acks.hold(link, epoch, p));
    let mut ack_now = tag;
    if let Some(target) = topics::ping_target(topic) {
        stats.received.inc();
        match parse_ping(target, payload) {
            Ok((r, ts_ms)) => {
                let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
                if ts_ms > now_ms + swarm::router::CLOCK_TOLERANCE.as_millis() as i64 {
                    stats.clock_ahead.inc();
                    let secs = now_ms / 1000;
                    if stats.clock_ahead_logged.swap(secs / 60, Ordering::Relaxed) != secs / 60 {
                        tracing::warn!(agent = %r.agent, ts = %r.ts, "a bee's clock runs ahead of the indexer's: its InfluxDB points are written at their arrival time");
                    }
                }
                if let Some(b) = &stats.influx {
                    // A point is never later than its arrival (swarm::influx::line).
                    b.push(swarm::influx::line_at(&r, ts_ms.min(now_ms)));
                }
                if let Some(b) = &stats.sqs {
                    let line = serde_json::to_string(&r).expect("a record serialises");
                    if let Some(dropped) = b.push_tagged(line, tag) {
                        // Dropped, not delivered: never acknowledged (counted and logged).
                        ctx.acks.forget(dropped);
                    }
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
        if let Some(t) = ack_now {
            done_tx.send(vec![t]).ok();
        }
        rip(ctx, agent, payload);
        return;
    } else {
        tracing::debug!(topic, "unexpected message");
    }
    if let Some(t) = ack_now {
        done_tx.send(vec![t]).ok();
    }
}

/// Acknowledges a message that needs nothing delivered.
fn ack_at_once(ctx: &Ctx, v5: Option<&Publish>, link: u64, epoch: u64) {
    if let Some(p) = v5 {
        let t = ctx.acks.hold(link, epoch, p);
        ctx.done_tx.send(vec![t]).ok();
    }
}

/// A bee's last will arrived. A will also fires when a bee's broker goes away under it
/// (mosquitto sends every connected client's will when it stops, even one with an MQTT 5
/// will delay — measured, swarm/tests/broker_move.rs) or closes its connection, and
/// after a move it comes again through the bridge: so it is a death only if the bee
/// publishes no live presence within [`Ctx::rip_grace`] (it does every round while it is
/// connected, wherever). Copies of one will within the grace count once.
///
/// A bee that stops cleanly says so on the same topic with `reason: "stopped"`: that is
/// counted as a stop, never as a death (a release's old bees are not "lost").
fn rip(ctx: &Arc<Ctx>, agent: &str, payload: &[u8]) {
    let at = std::time::Instant::now();
    let said: Option<serde_json::Value> = serde_json::from_slice(payload).ok();
    if said.as_ref().is_some_and(|v| v["reason"] == "stopped") {
        ctx.stats.stops.inc();
        tracing::info!(agent, "a bee stopped (its goodbye, not a will)");
        return;
    }
    let report = {
        let payload = String::from_utf8_lossy(&payload[..payload.len().min(300)]).to_string();
        move |ctx: &Ctx, agent: &str| {
            ctx.stats.rips.inc();
            tracing::warn!(agent, payload = %payload, "a bee died");
            if let Some(b) = &ctx.stats.influx {
                b.push(swarm::influx::rip_line(agent, time::OffsetDateTime::now_utc().unix_timestamp() * 1000));
            }
        }
    };
    if ctx.rip_grace.is_zero() {
        report(ctx, agent);
        return;
    }
    if !ctx.pending_rips.lock().unwrap().insert(agent.to_string()) {
        return; // another copy of a will that waits already
    }
    let (ctx, agent) = (ctx.clone(), agent.to_string());
    tokio::spawn(async move {
        tokio::time::sleep(ctx.rip_grace).await;
        ctx.pending_rips.lock().unwrap().remove(&agent);
        let back = ctx.alive.lock().unwrap().get(&agent).is_some_and(|t| *t > at);
        if back {
            ctx.stats.moves.inc();
            tracing::info!(agent = %agent, "a bee's will fired, but it is live again (it moved brokers): not a death");
        } else {
            report(&ctx, &agent);
        }
    });
}

fn main() -> Result<()> {
    config::main::<Args, _, _>("indexer", run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_table_hands_out_tags_in_order_and_forgets_done_ones() {
        let u = |pkid| Unacked { link: 0, epoch: 1, pkid, qos: QoS::AtLeastOnce };
        let mut h = Held::default();
        let tags: Vec<u64> = (1..=5).map(|p| h.insert(u(p))).collect();
        assert_eq!(tags, [0, 1, 2, 3, 4]);
        // Out of order: the ring keeps the slots until the front is done.
        assert_eq!(h.remove(2).map(|x| x.pkid), Some(3));
        assert_eq!(h.remove(2).map(|x| x.pkid), None, "once only");
        assert_eq!(h.slots.len(), 5);
        assert_eq!(h.remove(0).map(|x| x.pkid), Some(1));
        assert_eq!(h.remove(1).map(|x| x.pkid), Some(2));
        assert_eq!((h.base, h.slots.len()), (3, 2));
        assert_eq!(h.insert(u(6)), 5);
        assert_eq!(h.remove(0), None, "a tag already done");
        assert_eq!(h.remove(99), None, "a tag never handed out");
        for t in [4, 3, 5] {
            assert!(h.remove(t).is_some());
        }
        assert!(h.slots.is_empty());
        assert_eq!(h.insert(u(7)), 6);
    }

    #[test]
    fn a_ping_is_read_as_the_record_it_holds_in_its_canonical_target() {
        let rec = |target: &str| {
            format!(
                r#"{{"schema":2,"id":"i","ts":"2026-11-23T11:00:00.5+01:00","stack":"s","region":"r","agent":"a","target":"{target}","status":"ok","loss":0.0,"rtt_ms":null,"error":null,"sent":3}}"#
            )
        };
        let (one, v6, name) = (rec("127.0.0.1"), rec("[::1]"), rec("Example.ORG."));
        let (r, ms) = parse_ping("127.0.0.1", one.as_bytes()).unwrap();
        assert!(matches!(r.target, Cow::Borrowed("127.0.0.1")));
        assert_eq!(ms, swarm::ts_millis("2026-11-23T10:00:00.5Z").unwrap());
        let owned: record::PingRecord = serde_json::from_str(&rec("127.0.0.1")).unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), serde_json::to_string(&owned).unwrap());
        // Another spelling of the same target is filed under the canonical one.
        let (r, _) = parse_ping("0:0:0:0:0:0:0:1", v6.as_bytes()).unwrap();
        assert_eq!(r.target, "::1");
        let (r, _) = parse_ping("Example.ORG.", name.as_bytes()).unwrap();
        assert_eq!(r.target, "example.org");
        assert!(parse_ping("127.0.0.2", rec("127.0.0.1").as_bytes()).unwrap_err().contains("does not match"));
        assert!(parse_ping("127.1", rec("127.1").as_bytes()).unwrap_err().starts_with("topic target"));
        assert!(parse_ping("a", b"{").unwrap_err().starts_with("not a ping record"));
        assert!(parse_ping("a", rec("a").replace("+01:00", "").as_bytes()).unwrap_err().contains("RFC 3339"));
    }
}
