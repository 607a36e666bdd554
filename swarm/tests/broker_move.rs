//! Broker releases (issue 11 item 1): a new broker, bridged to the live one by the box's
//! own script (roles/broker/tyrell-broker-bridge, run here as on the box), carries the
//! swarm's retained MQTT state; then a move of the bees from the old broker to the new one
//! under a steady ping load loses no record and reports no bee dead. Real mosquitto (two),
//! real bees and indexers, the AWS emulator's SQS.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use testkit::servers::{temp_dir, write_password_file, Mosquitto};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../roles/broker").join(name)
}

/// Runs roles/broker/tyrell-broker-bridge as the box does: reads the announcements through
/// `via` (the NLB on the box) and writes `conf`. Returns its stderr.
fn run_bridge_script(via: u16, self_id: &str, conf: &Path) -> String {
    let out = Command::new(script("tyrell-broker-bridge"))
        .args(["127.0.0.1", &via.to_string(), self_id, &conf.display().to_string(), "1"])
        .env("BROKER_USERNAME", USER)
        .env("BROKER_PASSWORD", PASSWORD)
        .output()
        .expect("tyrell-broker-bridge");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "tyrell-broker-bridge failed: {err}");
    err
}

/// Announces broker `id` (at 127.0.0.1:`port`) on its own mosquitto with the box's script;
/// `clear` removes the announcement.
fn announce(port: u16, id: &str, clear: bool) {
    let mut cmd = Command::new(script("tyrell-broker-announce"));
    if clear {
        cmd.arg("--clear");
    }
    let out = cmd
        .args([id, "127.0.0.1", &port.to_string(), "vtest", "180"])
        .env("BROKER_USERNAME", USER)
        .env("BROKER_PASSWORD", PASSWORD)
        .output()
        .expect("tyrell-broker-announce");
    assert!(out.status.success(), "tyrell-broker-announce failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A broker configured as roles/broker/cloud-init.yaml does (password file, persistence),
/// with the bridges tyrell-broker-bridge wrote into `dir/tyrell.d`.
fn bridged_broker(dir: &Path) -> Mosquitto {
    let pw = dir.join("passwd");
    write_password_file(&pw, USER, PASSWORD);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let port = testkit::free_port();
    let config = format!(
        "per_listener_settings false\nallow_anonymous false\npassword_file {}\npersistence true\npersistence_location {}/\n\
         log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\nconnection_messages true\n\
         max_queued_messages 100000\nlistener {port} 127.0.0.1\ninclude_dir {}\n",
        pw.display(),
        data.display(),
        dir.join("tyrell.d").display()
    );
    Mosquitto::start_with_config(&config, port, dir)
}

/// A broker bridged as on the box to the broker on `live` (announced as `live_id`).
fn new_broker(live: u16, self_id: &str) -> Mosquitto {
    let dir = temp_dir("mosq-new");
    let confd = dir.join("tyrell.d");
    std::fs::create_dir_all(&confd).unwrap();
    let log = run_bridge_script(live, self_id, &confd.join("bridges.conf"));
    assert!(log.contains("bridging to broker"), "no bridge written: {log}");
    bridged_broker(&dir)
}

/// The retained messages of a broker: topic → (retain flag, payload), read with
/// mosquitto_sub (MQTT 5, so expired messages are gone).
fn retained(port: u16) -> BTreeMap<String, (bool, String)> {
    let out = Command::new(testkit::system_tool("mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-u", USER, "-P", PASSWORD, "-V", "mqttv5"])
        .args(["-t", "#", "--retained-only", "-W", "1", "-F", "%r %t %p"])
        .output()
        .expect("mosquitto_sub");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (r, rest) = l.split_once(' ')?;
            let (t, p) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((t.to_string(), (r == "1", p.to_string())))
        })
        .collect()
}

fn wait_retained(port: u16, what: &str, f: impl Fn(&BTreeMap<String, (bool, String)>) -> bool) {
    wait_for(Duration::from_secs(15), what, || {
        let r = retained(port);
        f(&r).then_some(())
    });
}

fn has(r: &BTreeMap<String, (bool, String)>, topic: &str, payload: &str) -> bool {
    r.get(topic).is_some_and(|(retain, p)| *retain && p == payload)
}

#[test]
fn a_new_broker_bridged_to_the_live_one_carries_the_retained_state() {
    let old = broker();
    let dir = temp_dir("mosq-first");
    // The first broker of a swarm: nobody announced, no bridge.
    let first = run_bridge_script(old.port, "i-first", &dir.join("bridges.conf"));
    assert!(first.contains("no other broker announced") && !dir.join("bridges.conf").exists(), "{first}");

    announce(old.port, "i-old", false);
    mqtt_pub(old.port, "watch", b"127.0.0.1 127.0.0.2", true);
    mqtt_pub(old.port, "bees/alive/bee-a", b"{\"agent\":\"bee-a\"}", true);
    mqtt_pub(old.port, "rip/agent/bee-z", b"{\"status\":\"dead\"}", true);
    let new = new_broker(old.port, "i-new");

    wait_retained(new.port, "the old broker's retained state on the new one", |r| {
        has(r, "watch", "127.0.0.1 127.0.0.2")
            && has(r, "bees/alive/bee-a", "{\"agent\":\"bee-a\"}")
            && has(r, "rip/agent/bee-z", "{\"status\":\"dead\"}")
            && r.get("tyrell/brokers/i-old").is_some_and(|(k, p)| *k && p.contains("\"host\":\"127.0.0.1\""))
    });
    // Edits made on the old broker after the bridge is up arrive, and stay retained.
    mqtt_pub(old.port, "watch", b"127.0.0.3", true);
    mqtt_pub(old.port, "bees/alive/bee-b", b"{\"agent\":\"bee-b\"}", true);
    wait_retained(new.port, "the watch edit retained on the new broker", |r| {
        has(r, "watch", "127.0.0.3") && has(r, "bees/alive/bee-b", "{\"agent\":\"bee-b\"}")
    });
    // The new broker's announcement reaches the old one (indexers there learn of it), and
    // what goes out on the bridge does not come back (no loop: one copy, the latest).
    announce(new.port, "i-new", false);
    wait_retained(old.port, "the new broker announced on the old one", |r| {
        r.get("tyrell/brokers/i-new").is_some_and(|(k, _)| *k) && has(r, "watch", "127.0.0.3")
    });
    // A stopping broker clears its announcement: cleared on the other side too.
    announce(old.port, "i-old", true);
    wait_retained(new.port, "the old announcement cleared on the new broker", |r| {
        !r.contains_key("tyrell/brokers/i-old") && r.contains_key("tyrell/brokers/i-new")
    });
    // The old broker goes: the new one keeps the state (retained, persisted).
    old.stop();
    let r = retained(new.port);
    assert!(has(&r, "watch", "127.0.0.3") && has(&r, "bees/alive/bee-b", "{\"agent\":\"bee-b\"}"), "{r:?}");
    eprintln!("bridge: watch, presence, wills and announcements carried and kept retained: {r:?}");
}

/// A TCP relay standing in for the swarm's NLB: every new connection goes to the port
/// `target` holds at that moment; a connection lives as long as both its ends.
struct Relay {
    port: u16,
    target: Arc<AtomicU16>,
}

impl Relay {
    fn start(target: u16) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(target));
        let t = target.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let Ok(u) = TcpStream::connect(("127.0.0.1", t.load(Ordering::SeqCst))) else { continue };
                let (c2, u2) = (c.try_clone().unwrap(), u.try_clone().unwrap());
                std::thread::spawn(move || pipe(c, u));
                std::thread::spawn(move || pipe(u2, c2));
            }
        });
        Relay { port, target }
    }

    /// Sends new connections to `port` (a target group switch).
    fn switch(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

const ROUND: Duration = Duration::from_secs(1);
const TARGETS: usize = 50;
const RIP_GRACE: Duration = Duration::from_secs(5);

fn indexer(port: u16, sqs: &Sqs, client_id: &str) -> Program {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_indexer"));
    testkit::Emulator::shared().apply(&mut cmd);
    broker_env(&mut cmd, port);
    cmd.env("INDEXER_CLIENT_ID", client_id)
        .env("QUEUE_URL", &sqs.url)
        .env("INDEXER_LINGER", "300ms")
        .env("INDEXER_RIP_GRACE", format!("{}s", RIP_GRACE.as_secs()))
        .env("STATS_INTERVAL", "200ms");
    Program::start(cmd, client_id)
}

/// A program's latest counters (from its `stats` log lines).
fn counters(p: &Program) -> Option<serde_json::Value> {
    p.log_text().lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["message"] == "stats").then(|| serde_json::from_str(v["counters"].as_str()?).ok())?
    })
}

fn counter(p: &Program, name: &str) -> u64 {
    counters(p).and_then(|c| c[name].as_u64()).unwrap_or(0)
}

/// How the bees leave the old broker.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Move {
    /// The old broker is retired before it asked them: it stops and their connections drop.
    Retired,
    /// The old broker asks them to move (`tyrell-broker-announce --move LIVE`, what its box
    /// runs every 10 s once another version is live) while it still runs; retired after.
    Asked,
}

/// Bees moved from an old broker to a new one (the old one stops the way its box does:
/// announcement cleared, then SIGTERM; the NLB, a relay here, sends new connections to
/// the new one) under a steady ping load: 2 bees × 50 loopback targets, 1 s rounds, 2
/// indexers into SQS. Every record a bee published reaches SQS (by id), no target goes
/// unmeasured for more than one round, no bee is reported dead, and a bee started after
/// the move gets the watch list from the new broker and pings every target.
#[test]
fn bees_move_brokers_under_load_without_loss_or_false_deaths() {
    move_under_load(Move::Retired);
}

/// The deliberate move: the old broker asks its clients to move while it still runs; the
/// bees disconnect cleanly (the broker discards their wills: not one fires, not even one
/// taken as a move) and reconnect through the NLB to the new broker before the old one is
/// retired. The same counts as above: every record in SQS by id, no target unmeasured for
/// more than one round.
#[test]
fn bees_asked_to_move_leave_the_old_broker_cleanly_under_load() {
    move_under_load(Move::Asked);
}

fn move_under_load(how: Move) {
    let t0 = Instant::now();
    let sqs = Sqs::new("broker-move");
    let old = broker();
    announce(old.port, "i-old", false);
    let targets: Vec<String> = (1..=TARGETS).map(|i| format!("127.0.0.{i}")).collect();
    mqtt_pub(old.port, "watch", targets.join(" ").as_bytes(), true);
    let new = new_broker(old.port, "i-new");
    announce(new.port, "i-new", false);
    wait_retained(old.port, "the new broker announced on the old one", |r| r.contains_key("tyrell/brokers/i-new"));
    let nlb = Relay::start(old.port);

    let indexers =
        [indexer(nlb.port, &sqs, &testkit::unique("idx-a")), indexer(nlb.port, &sqs, &testkit::unique("idx-b"))];
    for i in &indexers {
        wait_for(Duration::from_secs(20), "an indexer connected to both brokers directly", || {
            (counter(i, "brokers_direct") == 2 && i.log_text().matches("connected to the broker").count() >= 3)
                .then_some(())
        });
    }
    std::thread::sleep(Duration::from_millis(700)); // their subscriptions
    let agents = [testkit::unique("bee-m1"), testkit::unique("bee-m2")];
    let bees: Vec<Program> = agents.iter().map(|a| bee(nlb.port, a)).collect();
    for b in &bees {
        wait_for(Duration::from_secs(20), "a bee pinging every target", || {
            (counter(b, "targets") == TARGETS as u64 && counter(b, "published") >= 2 * TARGETS as u64).then_some(())
        });
    }

    // The release: the NLB forwards new connections to the new broker at once; the old
    // one keeps its connections until it is retired. A bee that (re)connects meanwhile
    // lands on the new broker, where the indexers must already be subscribed, and finds
    // the watch list there.
    let switched_at = Instant::now();
    nlb.switch(new.port);
    let late_agent = testkit::unique("bee-late");
    let late = bee(nlb.port, &late_agent);
    wait_for(Duration::from_secs(20), "the late bee pinging every target", || {
        (counter(&late, "targets") == TARGETS as u64 && counter(&late, "published") >= 2 * TARGETS as u64).then_some(())
    });
    let moved_at = Instant::now();
    if how == Move::Asked {
        // The old box's timer found another version live: it asks its clients to move.
        let out = Command::new(script("tyrell-broker-announce"))
            .args(["--move", "vlive", "i-old", "127.0.0.1", &old.port.to_string(), "vtest"])
            .env("BROKER_USERNAME", USER)
            .env("BROKER_PASSWORD", PASSWORD)
            .output()
            .expect("tyrell-broker-announce --move");
        assert!(out.status.success(), "--move failed: {}", String::from_utf8_lossy(&out.stderr));
        for b in &bees {
            wait_for(Duration::from_secs(20), "a bee moved to the new broker", || {
                (b.log_text().contains("no longer live")
                    && b.log_text().matches("connected to the broker").count() >= 2)
                    .then_some(())
            });
        }
    }
    // The old box retires: its announcement cleared (ExecStop), then mosquitto stops
    // (SIGTERM); bees still on it reconnect through the NLB to the new broker.
    announce(old.port, "i-old", true);
    old.stop();
    let stopped = moved_at.elapsed();
    for b in &bees {
        wait_for(Duration::from_secs(20), "a bee reconnected to the new broker", || {
            (b.log_text().matches("connected to the broker").count() >= 2).then_some(())
        });
    }
    let reconnected = moved_at.elapsed();
    // Rounds after the move, and the will grace over.
    let published_at_move: Vec<u64> = bees.iter().map(|b| counter(b, "published")).collect();
    wait_for(Duration::from_secs(30), "the bees' rounds after the move and the grace over", || {
        let more =
            bees.iter().zip(&published_at_move).all(|(b, p0)| counter(b, "published") >= p0 + 3 * TARGETS as u64);
        (more && moved_at.elapsed() > RIP_GRACE + Duration::from_secs(2)).then_some(())
    });

    // Stop the load: an empty watch list (the bees stop every target), then the final counts.
    mqtt_pub(new.port, "watch", b"[]", true);
    let mut published: HashMap<String, u64> = HashMap::new();
    for (b, a) in bees.iter().zip(&agents).chain([(&late, &late_agent)]) {
        let n = wait_for(Duration::from_secs(20), "a bee to stop pinging", || {
            let c = counters(b)?;
            (c["targets"].as_u64()? == 0).then(|| c["published"].as_u64())?
        });
        assert_eq!(counter(b, "publish_failed"), 0, "{a} dropped results");
        published.insert(a.clone(), n);
    }
    let total: u64 = published.values().sum();
    let mut records: HashMap<String, record::PingRecord> = HashMap::new();
    let mut messages = 0;
    // Every published record, or what arrives within a bound (the assertions below say
    // which are missing).
    let until = Instant::now() + Duration::from_secs(30);
    while (records.len() as u64) < total && Instant::now() < until {
        for m in sqs.drain(1) {
            messages += 1;
            for r in m.records {
                records.insert(r.id.clone(), r);
            }
        }
    }
    let mut by_agent: HashMap<&str, u64> = HashMap::new();
    for r in records.values() {
        *by_agent.entry(r.agent.as_str()).or_default() += 1;
    }
    for (a, n) in &published {
        let got = by_agent.get(a.as_str()).copied().unwrap_or(0);
        assert_eq!(got, *n, "{} records of {a} lost (published {n}, {got} in SQS)", n.saturating_sub(got));
    }
    // No target unmeasured for more than one round: between two records of a target (the
    // two bees', in time order) never two rounds, from the first round to the last.
    let mut per_target: HashMap<&str, Vec<i64>> = HashMap::new();
    for r in records.values().filter(|r| agents.contains(&r.agent)) {
        per_target.entry(r.target.as_str()).or_default().push(swarm::ts_millis(&r.ts).unwrap());
    }
    assert_eq!(per_target.len(), TARGETS);
    let mut worst = (0i64, String::new());
    for (t, ts) in per_target.iter_mut() {
        ts.sort_unstable();
        for w in ts.windows(2) {
            if w[1] - w[0] > worst.0 {
                worst = (w[1] - w[0], t.to_string());
            }
        }
    }
    assert!(worst.0 < 2 * ROUND.as_millis() as i64, "target {} unmeasured for {} ms", worst.1, worst.0);
    // No bee reported dead: the wills the old broker fired when it stopped are moves.
    let rips: u64 = indexers.iter().map(|i| counter(i, "rips")).sum();
    let moves: u64 = indexers.iter().map(|i| counter(i, "moves")).sum();
    assert_eq!(rips, 0, "bees reported dead by a move");
    if how == Move::Asked {
        // They left cleanly: the old broker had no will to fire when it stopped.
        assert_eq!(moves, 0, "wills fired although every bee had disconnected cleanly");
        for b in &bees {
            assert_eq!(b.log_text().matches("connected to the broker").count(), 2, "a bee moved more than once");
        }
    }
    // A bee's records are numbered (seq 1..=n, every one published): none missing.
    for a in agents.iter().chain([&late_agent]) {
        let mut seqs: Vec<u64> = records.values().filter(|r| &r.agent == a).filter_map(|r| r.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{a}: records missing by seq");
    }
    // A bee that stops cleanly says goodbye with its last seq: a stop, not a death.
    bees[0].guard.signal("TERM");
    wait_for(Duration::from_secs(10), "the indexers counting a stop", || {
        (indexers.iter().map(|i| counter(i, "stops")).sum::<u64>() >= 1).then_some(())
    });
    assert_eq!(indexers.iter().map(|i| counter(i, "rips")).sum::<u64>(), 0, "a clean stop taken for a death");
    let after: usize =
        records.values().filter(|r| r.agent == late_agent).map(|r| &r.target).collect::<HashSet<_>>().len();
    assert_eq!(after, TARGETS, "the late bee measured {after} targets");
    eprintln!(
        "broker move ({how:?}): {total} records published by 3 bees, {} in SQS by id ({messages} messages), 0 lost; \
         worst gap between two measurements of a target {} ms ({}); {rips} false deaths, {moves} wills taken as moves; \
         the late bee on the new broker {:?} after the NLB switch; the old broker stopped in {stopped:?}, its bees back \
         {reconnected:?} after the stop began; test took {:?}",
        records.len(),
        worst.0,
        worst.1,
        moved_at - switched_at,
        t0.elapsed()
    );
}
