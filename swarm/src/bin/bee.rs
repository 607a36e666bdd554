//! bee: pings the targets of the retained `watch` list — every one, or with
//! `BEE_SHARE_K=k` its share of them ([`swarm::share`]) — and publishes one record per
//! target and round on `ping/<target>` (QoS 1). Its retained presence on
//! `bees/alive/<agent>` says it is live; its last will, retained on `rip/agent/<agent>`,
//! tells the swarm when it dies.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use rumqttc::{AsyncClient, QoS};
use swarm::config::{self, duration_in, int_in, Check};
use swarm::mqtt::{self, ConnState, MqttArgs, Msg};
use swarm::ping::{self, Agent, Icmp, RoundSpec};
use swarm::share::{self, Presence, ShareK, View};
use swarm::stats::{Counter, Snapshot};
use swarm::{targets, topics};

#[derive(Parser, Debug)]
#[command(name = "bee", version, about = "Pings the swarm's targets (ICMP echo) and publishes the results over MQTT")]
struct Args {
    /// Configuration file (KEY=VALUE lines, as /etc/tyrell/bee.env).
    #[arg(long, env = "TYRELL_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    mqtt: MqttArgs,
    /// This bee's name (MQTT client id and the records' `agent`); default bee-<hostname>.
    #[arg(long, env = "BEE_AGENT")]
    agent: Option<String>,
    /// The swarm (base stack) name, copied into every record.
    #[arg(long, env = "TYRELL_STACK", default_value = "")]
    stack: String,
    /// The AWS region, copied into every record.
    #[arg(long, env = "AWS_REGION", default_value = "")]
    region: String,
    /// Echo requests per target and round (`ping -c`): 1 to 1000.
    #[arg(long, env = "BEE_PROBES", default_value_t = 10, value_parser = int_in("BEE_PROBES (--probes)", 1u16, 1000))]
    probes: u16,
    /// A round per target starts this often; its probes are spread evenly over it: 100ms
    /// to 1h, and at least 1ms per probe.
    #[arg(long, env = "BEE_INTERVAL", default_value = "10s",
          value_parser = duration_in("BEE_INTERVAL (--interval)", Duration::from_millis(100), Duration::from_secs(3600), false))]
    interval: Duration,
    /// How long a probe waits for its reply (default: the spacing between probes, so a
    /// round never overruns its interval): 1ms to 60s.
    #[arg(long, env = "BEE_PROBE_TIMEOUT",
          value_parser = duration_in("BEE_PROBE_TIMEOUT (--probe-timeout)", Duration::from_millis(1), Duration::from_secs(60), false))]
    probe_timeout: Option<Duration>,
    /// How long a name lookup may take: 100ms to 60s.
    #[arg(long, env = "BEE_RESOLVE_TIMEOUT", default_value = "5s",
          value_parser = duration_in("BEE_RESOLVE_TIMEOUT (--resolve-timeout)", Duration::from_millis(100), Duration::from_secs(60), false))]
    resolve_timeout: Duration,
    /// Results held while the broker is unreachable; beyond it results are dropped
    /// (logged): 10 to 1000000.
    #[arg(long, env = "BEE_PUBLISH_QUEUE", default_value_t = 50_000,
          value_parser = int_in("BEE_PUBLISH_QUEUE (--publish-queue)", 10usize, 1_000_000))]
    publish_queue: usize,
    /// How many bees measure each target: "all" or 0 (every bee pings every target, the
    /// default) or 1 to 1000 (rendezvous hashing over the live bees, spread over zones).
    #[arg(long, env = "BEE_SHARE_K", default_value = "all", value_parser = share::share_k)]
    share_k: ShareK,
    /// This bee's availability zone (cloud-init: from the instance metadata); empty or
    /// 1 to 64 letters, digits and '-'. Bees sharing targets prefer different zones.
    #[arg(long, env = "BEE_ZONE", default_value = "", value_parser = share::zone)]
    zone: String,
    /// Log the counters this often: 0 (never) or 100ms to 24h.
    #[arg(long, env = "STATS_INTERVAL", default_value = "60s", value_parser = config::stats_interval())]
    stats_interval: Duration,
    /// On SIGTERM, keep pinging at most this long until another bee has been live for a
    /// round (the new version of a release), so no target goes unmeasured: 0 (stop at
    /// once, the default) or 1s to 10m. The bee role sets it, and its box's termination
    /// lifecycle hook holds the box meanwhile (systemd's TimeoutStopSec must be longer).
    #[arg(long, env = "BEE_HANDOVER", default_value = "0s",
          value_parser = duration_in("BEE_HANDOVER (--handover)", Duration::from_secs(1), Duration::from_secs(600), true))]
    handover: Duration,
}

impl Check for Args {
    fn check(&self) -> Result<(), String> {
        if let Some(a) = self.agent.as_deref().filter(|a| !topics::valid_agent(a)) {
            return Err(format!(
                "BEE_AGENT (--agent) must be 1 to 128 letters, digits, '-', '_', '.' or ':' (it becomes a topic level), not {a:?}"
            ));
        }
        if self.share_k != ShareK::All && !share::valid_place(&self.region) {
            return Err(format!(
                "AWS_REGION (--region) must be empty or 1 to 64 letters, digits and '-' when BEE_SHARE_K is set (bees share targets by region), not {:?}",
                self.region
            ));
        }
        let spacing = self.interval / u32::from(self.probes);
        if spacing < Duration::from_millis(1) {
            return Err(format!(
                "BEE_INTERVAL / BEE_PROBES (the time between two probes) must be at least 1ms, not {} / {}",
                config::fmt_duration(self.interval),
                self.probes
            ));
        }
        Ok(())
    }
}

#[derive(Default)]
struct BeeStats {
    rounds: Counter,
    published: Counter,
    publish_failed: Counter,
    error_records: Counter,
    watch_updates: Counter,
    watch_malformed: Counter,
    presence_malformed: Counter,
    targets: std::sync::atomic::AtomicU64,
    bees: std::sync::atomic::AtomicU64,
}

impl Snapshot for BeeStats {
    fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("targets", self.targets.load(Ordering::Relaxed)),
            ("rounds", self.rounds.get()),
            ("published", self.published.get()),
            ("publish_failed", self.publish_failed.get()),
            ("error_records", self.error_records.get()),
            ("watch_updates", self.watch_updates.get()),
            ("watch_malformed", self.watch_malformed.get()),
            ("presence_malformed", self.presence_malformed.get()),
            ("bees", self.bees.load(Ordering::Relaxed)),
        ]
    }
}

/// What every target task shares.
struct Ctx {
    icmp: Arc<Icmp>,
    client: AsyncClient,
    agent: Agent,
    spec: RoundSpec,
    interval: Duration,
    resolve_timeout: Duration,
    stats: Arc<BeeStats>,
    last_fail_log: AtomicI64,
    /// The last record's `seq` (records numbered from 1; see `record::PingRecord::seq`),
    /// with [`SEQ_CLOSED`] set once the bee has announced its final count.
    seq: std::sync::atomic::AtomicU64,
}

/// Set in [`Ctx::seq`] when the bee stops: a round that finishes after it is not
/// published, so the goodbye's `seq` is the last number any record carries. (Aborting a
/// target task does not stop a poll already running on another worker thread: the
/// local-cloud release test once archived seq N+1 from a bee whose goodbye said N.)
const SEQ_CLOSED: u64 = 1 << 63;

impl Ctx {
    /// The next record's number, or `None` once the count is closed.
    fn next_seq(&self) -> Option<u64> {
        let prev = self.seq.fetch_add(1, Ordering::Relaxed);
        (prev & SEQ_CLOSED == 0).then_some(prev + 1)
    }

    /// The last record's number so far.
    fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed) & !SEQ_CLOSED
    }

    /// Closes the count and returns the final number: no record after it is published.
    fn close_seq(&self) -> u64 {
        self.seq.fetch_or(SEQ_CLOSED, Ordering::Relaxed) & !SEQ_CLOSED
    }
}

/// Pings one target forever, one round per interval.
async fn target_loop(ctx: Arc<Ctx>, target: String) {
    // Spread the targets' rounds over the probe spacing so 10,000 targets do not send
    // their probes in one burst.
    let slot = ctx.spec.spacing.max(Duration::from_millis(1));
    let h = target.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    tokio::time::sleep(Duration::from_micros(h % slot.as_micros().max(1) as u64)).await;
    let mut tick = tokio::time::interval(ctx.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let topic = topics::ping(&target);
    let literal = target.parse::<std::net::IpAddr>().is_ok();
    loop {
        let planned = tick.tick().await;
        let resolving = tokio::time::Instant::now();
        let resolved = ping::resolve(&ctx.icmp, &target, ctx.resolve_timeout).await;
        let took = resolving.elapsed();
        let reached = ping::Reached { addr: resolved.as_ref().ok().copied(), resolve: (!literal).then_some(took) };
        let outcome = match resolved {
            // The probes' schedule moves on by the time resolving took: that is not lateness.
            Ok(addr) => Ok(ctx.icmp.round_planned(addr, ctx.spec, planned + took).await),
            Err(e) => Err(e),
        };
        let mut rec = ctx.agent.record(&target, &reached, outcome);
        let Some(seq) = ctx.next_seq() else { return };
        rec.seq = Some(seq);
        ctx.stats.rounds.inc();
        if rec.status == record::Status::Error {
            ctx.stats.error_records.inc();
            tracing::debug!(target = %target, error = rec.error.as_deref().unwrap_or(""), "error record");
        }
        let payload = serde_json::to_vec(&rec).expect("a record serialises");
        match ctx.client.try_publish(&topic, QoS::AtLeastOnce, false, payload) {
            Ok(()) => ctx.stats.published.inc(),
            Err(e) => {
                ctx.stats.publish_failed.inc();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
                if ctx.last_fail_log.swap(now, Ordering::Relaxed) < now {
                    tracing::error!(error = %e, failed_total = ctx.stats.publish_failed.get(), "cannot queue a result for the broker (unreachable for long?): results are being dropped");
                }
            }
        }
    }
}

/// The running target tasks, kept in step with `watch` and (sharing) the live bees.
struct Targets {
    ctx: Arc<Ctx>,
    tasks: HashMap<String, tokio::task::AbortHandle>,
    /// The whole `watch` list, canonical.
    watch: Vec<String>,
    /// The live bees as this bee sees them.
    view: View,
    k: ShareK,
}

impl Targets {
    /// A new `watch` list.
    fn set_watch(&mut self, watch: Vec<String>) {
        self.watch = watch;
        self.apply("watch list applied");
    }

    /// The live bees changed: take up or give up targets.
    fn bees_changed(&mut self) {
        if self.k != ShareK::All {
            self.apply("live bees changed");
        }
    }

    /// Runs exactly the targets this bee measures ([`share::mine`]).
    fn apply(&mut self, why: &str) {
        let bees = self.view.bees();
        self.ctx.stats.bees.store(bees.len() as u64, Ordering::Relaxed);
        let wanted = share::mine(&self.watch, &bees, &self.ctx.agent.agent, self.k);
        self.set(wanted, bees.len(), why);
    }

    fn set(&mut self, wanted: Vec<String>, bees: usize, why: &str) {
        let keep: std::collections::HashSet<&String> = wanted.iter().collect();
        let before = self.tasks.len();
        self.tasks.retain(|t, h| {
            let k = keep.contains(t);
            if !k {
                h.abort();
            }
            k
        });
        let removed = before - self.tasks.len();
        let mut added = 0;
        for t in wanted {
            if !self.tasks.contains_key(&t) {
                let h = tokio::spawn(target_loop(self.ctx.clone(), t.clone()));
                self.tasks.insert(t, h.abort_handle());
                added += 1;
            }
        }
        self.ctx.stats.targets.store(self.tasks.len() as u64, Ordering::Relaxed);
        tracing::info!(targets = self.tasks.len(), watched = self.watch.len(), bees, added, removed, "{why}");
    }
}

/// A bee's message on `rip/agent/<agent>`: its last will (`reason: "connection lost"`), or
/// its goodbye when it stops cleanly (`reason: "stopped"`, with `seq`, the last record's
/// number: every record it published is numbered up to it).
fn rip_payload(agent: &Agent, reason: &str, seq: Option<u64>) -> Vec<u8> {
    let mut v = serde_json::json!({
        "agent": agent.agent, "stack": agent.stack, "region": agent.region, "status": "dead", "reason": reason,
    });
    if let Some(n) = seq {
        v["seq"] = n.into();
    }
    serde_json::to_vec(&v).unwrap()
}

async fn run(mut args: Args) -> Result<()> {
    let agent_name = args.agent.clone().unwrap_or_else(|| format!("bee-{}", swarm::hostname()));
    if !topics::valid_agent(&agent_name) {
        bail!("agent name {agent_name:?}: use letters, digits, '-', '_', '.', ':' (it becomes a topic level)");
    }
    let icmp = Arc::new(Icmp::new()?);
    let password = args.mqtt.prepare().await?;
    let agent = Agent { stack: args.stack.clone(), region: args.region.clone(), agent: agent_name.clone() };
    let rip_topic = topics::rip(&agent_name);
    let opts = args.mqtt.v4(
        &agent_name,
        password.as_deref(),
        Some((rip_topic.clone(), rip_payload(&agent, "connection lost", None), true)),
    )?;
    let (client, eventloop) = AsyncClient::new(opts, args.publish_queue);

    let spacing = args.interval / u32::from(args.probes);
    let spec = RoundSpec {
        probes: args.probes,
        spacing,
        timeout: args.probe_timeout.unwrap_or(spacing).max(Duration::from_millis(1)),
    };
    let stats = Arc::new(BeeStats::default());
    swarm::stats::spawn_logger("bee", stats.clone(), args.stats_interval);
    let ctx: Arc<Ctx> = Arc::new(Ctx {
        icmp,
        client: client.clone(),
        agent: agent.clone(),
        spec,
        interval: args.interval,
        resolve_timeout: args.resolve_timeout,
        stats: stats.clone(),
        last_fail_log: AtomicI64::new(0),
        seq: std::sync::atomic::AtomicU64::new(0),
    });
    tracing::info!(agent = %agent_name, probes = spec.probes, spacing_ms = spec.spacing.as_millis() as u64,
        timeout_ms = spec.timeout.as_millis() as u64, interval_ms = args.interval.as_millis() as u64, "bee starting");
    let me = share::Bee { agent: agent_name.clone(), region: args.region.clone(), zone: args.zone.clone() };
    // What this bee says on bees/alive/<agent>: live (or handing over once it stops), and
    // the last record's seq.
    let presence = Arc::new(Alive {
        base: Presence {
            agent: agent_name.clone(),
            stack: args.stack.clone(),
            region: args.region.clone(),
            zone: args.zone.clone(),
            every_ms: args.interval.as_millis() as u64,
            stopping: false,
            seq: None,
        },
        ctx: ctx.clone(),
        stopping: std::sync::atomic::AtomicBool::new(false),
    });
    let alive_topic = topics::alive(&agent_name);
    let sharing = args.share_k != ShareK::All;
    // A bee that hands over watches the others' presence even when it does not share.
    let watch_bees = sharing || !args.handover.is_zero();
    let targets = Arc::new(Mutex::new(Targets {
        ctx,
        tasks: HashMap::new(),
        watch: Vec::new(),
        view: View::new(me),
        k: args.share_k,
    }));

    let state = Arc::new(ConnState::default());
    let mqtt_args = args.mqtt.clone();
    let sub_client = client.clone();
    let clear_topic = rip_topic.clone();
    let (on_alive, on_presence) = (alive_topic.clone(), presence.clone());
    let on_targets = targets.clone();
    let on_message = move |m: Msg<'_>| match m {
        Msg::Connected => {
            let c = sub_client.clone();
            let clear = clear_topic.clone();
            let (alive, presence) = (on_alive.clone(), on_presence.payload());
            tokio::spawn(async move {
                // Alive again: clear this agent's retained last will, say so.
                let _ = c.publish(clear, QoS::AtLeastOnce, true, Vec::new()).await;
                let _ = c.publish(alive, QoS::AtLeastOnce, true, presence).await;
                // Sharing: the live bees first, so that their retained presences and wills
                // are in the view before the retained `watch` arrives (the broker sends a
                // subscription's retained messages in subscription order).
                let subs: &[&str] =
                    if watch_bees { &[topics::ALIVE_ALL, topics::RIP_AGENTS, topics::WATCH] } else { &[topics::WATCH] };
                for t in subs {
                    if let Err(e) = c.subscribe(*t, QoS::AtLeastOnce).await {
                        tracing::error!(error = %e, topic = t, "cannot subscribe");
                    }
                }
            });
        }
        Msg::Publish { topic, payload, .. } if topics::alive_agent(topic).is_some() => {
            let agent = topics::alive_agent(topic).unwrap_or_default();
            let mut t = on_targets.lock().unwrap();
            match t.view.presence(agent, payload, std::time::Instant::now()) {
                Ok(true) => t.bees_changed(),
                Ok(false) => {}
                Err(e) => {
                    stats.presence_malformed.inc();
                    tracing::warn!(error = %e, "malformed presence skipped");
                }
            }
        }
        Msg::Publish { topic, payload, .. } if topics::rip_agent(topic).is_some() => {
            let agent = topics::rip_agent(topic).unwrap_or_default();
            let mut t = on_targets.lock().unwrap();
            if t.view.rip(agent, payload) {
                tracing::info!(agent, "a bee died or stopped");
                t.bees_changed();
            }
        }
        Msg::Publish { topic, payload, .. } if topic == topics::WATCH => match targets::parse_watch(payload) {
            Ok(list) => {
                stats.watch_updates.inc();
                on_targets.lock().unwrap().set_watch(list);
            }
            Err(e) => {
                stats.watch_malformed.inc();
                tracing::warn!(error = %e, payload = %String::from_utf8_lossy(&payload[..payload.len().min(200)]), "malformed watch payload skipped: keeping the current targets");
            }
        },
        Msg::Publish { topic, .. } => tracing::debug!(topic, "unexpected message"),
    };
    let driver_state = state.clone();
    let driver = tokio::spawn(async move { mqtt::drive_v4(&mqtt_args, eventloop, driver_state, on_message).await });
    // The presence again every round (retained), while connected: the others forget a
    // bee after share::PRESENCE_MISSES rounds of silence, even if its will was lost.
    let (beat_client, beat_topic, beat_state, beat) =
        (client.clone(), alive_topic.clone(), state.clone(), presence.clone());
    let every = args.interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if beat_state.connected() {
                let _ = beat_client.try_publish(&beat_topic, QoS::AtLeastOnce, true, beat.payload());
            }
        }
    });
    if sharing {
        let (expiring, expiry_state) = (targets.clone(), state.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((every / 2).min(Duration::from_secs(1)));
            loop {
                tick.tick().await;
                let mut t = expiring.lock().unwrap();
                if !expiry_state.connected() {
                    // Cut off, it hears nobody: it keeps its view (and its share) until it
                    // is back and hears again.
                    t.view.touch(std::time::Instant::now());
                } else if t.view.expire(std::time::Instant::now()) {
                    tracing::info!("a bee fell silent");
                    t.bees_changed();
                }
            }
        });
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = driver => bail!("the MQTT driver stopped: {r:?}"),
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    if !args.handover.is_zero() {
        hand_over(&client, &alive_topic, &presence, &targets, args.interval, args.handover).await;
    }
    // No more rounds (one in flight is not published), so the last record's number is final.
    let last = {
        let mut t = targets.lock().unwrap();
        for (_, h) in t.tasks.drain() {
            h.abort();
        }
        t.ctx.close_seq()
    };
    // A clean disconnect does not fire the will: say goodbye ourselves.
    tracing::info!(last_seq = last, "stopping: announcing it on {alive_topic} and {rip_topic}");
    let _ = client.publish(alive_topic, QoS::AtLeastOnce, true, Vec::new()).await;
    let _ = client.publish(rip_topic, QoS::AtLeastOnce, true, rip_payload(&agent, "stopped", Some(last))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A clean DISCONNECT, so the broker discards the "connection lost" will; give the
    // event loop a moment to send it (it retries only after its first backoff, 250 ms).
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    Ok(())
}

/// This bee's presence (`bees/alive/<agent>`, [`Presence`]) as it is now.
struct Alive {
    base: Presence,
    ctx: Arc<Ctx>,
    /// Handing over (`BEE_HANDOVER`).
    stopping: std::sync::atomic::AtomicBool,
}

impl Alive {
    fn payload(&self) -> Vec<u8> {
        let mut p = self.base.clone();
        p.stopping = self.stopping.load(Ordering::Relaxed);
        p.seq = Some(self.ctx.last_seq());
        serde_json::to_vec(&p).unwrap_or_default()
    }
}

/// `BEE_HANDOVER`: unless it has no targets, says it is stopping (the others stop counting it and take its share)
/// and keeps pinging until another bee, heard since, has been live for a round and at
/// least two rounds have passed (a shared target's new bees have taken over), or until
/// `max`. Source of the two rounds: the sharing tests (swarm/tests/share.rs) cover a
/// leaving bee's targets again within two rounds.
async fn hand_over(
    client: &AsyncClient,
    alive_topic: &str,
    presence: &Alive,
    targets: &Mutex<Targets>,
    round: Duration,
    max: Duration,
) {
    if targets.lock().unwrap().tasks.is_empty() {
        // Nothing to measure (an empty watch list, the swarm being taken down): nothing to hand over.
        return;
    }
    let since = std::time::Instant::now();
    presence.stopping.store(true, Ordering::Relaxed);
    let _ = client.publish(alive_topic, QoS::AtLeastOnce, true, presence.payload()).await;
    tracing::info!(
        max_ms = max.as_millis() as u64,
        "stopping: handing over, pinging until another bee has been live for a round"
    );
    loop {
        let now = std::time::Instant::now();
        let waited = now - since;
        if waited >= 2 * round {
            if let Some(next) = targets.lock().unwrap().view.successor(since, now, round) {
                tracing::info!(successor = next, waited_ms = waited.as_millis() as u64, "handed over");
                return;
            }
        }
        if waited >= max {
            tracing::warn!(
                waited_ms = waited.as_millis() as u64,
                "no other bee took over within BEE_HANDOVER: stopping anyway"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn main() -> Result<()> {
    config::main::<Args, _, _>("bee", run)
}
