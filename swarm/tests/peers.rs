//! What a peer says is checked, and one thing is one thing, with the real binaries and a
//! real mosquitto:
//!
//! * the router orders "latest" and judges liveness by its own clock: a bee whose clock
//!   runs an hour ahead does not pin its record as the latest, and is flagged;
//! * one address however spelled is one target: a `watch` of `::1 0:0:0:0:0:0:0:1
//!   0000:0000::0001` makes the bee ping `::1` once per round under `ping/::1`, and the
//!   router files a record published under another spelling under the canonical one;
//! * two bees started with the same agent id: the clash is logged, and the backoff keeps
//!   them from taking the connection from each other (and firing false last wills) many
//!   times a second.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use record::{PingRecord, Status};
use testkit::servers::http;

fn get_json(port: u16, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = http("GET", port, path, &[], b"").unwrap();
    (code, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

fn record(agent: &str, target: &str, ts: time::OffsetDateTime, status: Status) -> Vec<u8> {
    let r = PingRecord {
        id: uuid_like(),
        ts: swarm::format_ts(ts),
        stack: "swarmtest".into(),
        region: "us-east-1".into(),
        agent: agent.into(),
        target: target.into(),
        status,
        loss: if status == Status::Ok { 0.0 } else { 1.0 },
        rtt_ms: None,
        error: (status == Status::Error).then(|| "cannot resolve".to_string()),
        ..Default::default()
    };
    serde_json::to_vec(&r).unwrap()
}

fn uuid_like() -> String {
    testkit::unique("rec")
}

fn router(bport: u16) -> (Program, u16) {
    let port = testkit::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_router"));
    broker_env(&mut cmd, bport);
    cmd.env("ROUTER_LISTEN", format!("127.0.0.1:{port}")).env("ROUTER_TOKEN", "t").env("ROUTER_BEE_TTL", "30s");
    let router = Program::start(cmd, "router");
    assert!(testkit::wait_for_port(port, Duration::from_secs(20)), "router did not listen: {}", router.log_text());
    wait_for(Duration::from_secs(10), "router healthz 200", || {
        (http("GET", port, "/healthz", &[], b"").unwrap().0 == 200).then_some(())
    });
    (router, port)
}

fn ms(s: &str) -> i64 {
    swarm::ts_millis(s).unwrap_or_else(|| panic!("not a timestamp: {s}"))
}

#[test]
fn the_router_judges_by_its_own_clock() {
    let broker = broker();
    let bport = broker.port;
    let (router, port) = router(bport);
    let now = time::OffsetDateTime::now_utc;
    let target = "127.0.0.9";

    // A bee whose clock runs an hour ahead publishes an error record...
    let ahead = testkit::unique("bee-ahead");
    mqtt_pub(
        bport,
        &format!("ping/{target}"),
        &record(&ahead, target, now() + time::Duration::hours(1), Status::Error),
        false,
    );
    let first = wait_for(Duration::from_secs(10), "the future-dated record", || {
        let (code, v) = get_json(port, &format!("/pings/latest?target={target}"));
        (code == 200).then_some(v)
    });
    assert_eq!(first["agent"], ahead.as_str());
    // ... which the router shows flagged, with when it arrived by the router's clock.
    let flagged = first["clock_ahead_ms"].as_i64().unwrap_or(0);
    assert!((3_500_000..=3_600_000).contains(&flagged), "{first}");
    assert!((ms(first["received"].as_str().unwrap()) - ms(&swarm::now_ts())).abs() < 5000, "{first}");

    // Three fresh ok records from another bee follow: the latest is theirs at once.
    let honest = testkit::unique("bee-honest");
    for _ in 0..3 {
        mqtt_pub(bport, &format!("ping/{target}"), &record(&honest, target, now(), Status::Ok), false);
        std::thread::sleep(Duration::from_millis(200));
    }
    let latest = wait_for(Duration::from_secs(10), "the honest bee's record as the latest", || {
        let (_, v) = get_json(port, &format!("/pings/latest?target={target}"));
        (v["agent"] == honest.as_str()).then_some(v)
    });
    assert_eq!(latest["status"], "ok");
    assert!(latest.get("clock_ahead_ms").is_none(), "{latest}");

    // A bee whose clock is an hour behind is alive all the same: liveness is what the
    // router received, and `last_seen` is the router's clock, `last_ts` the bee's.
    let behind = testkit::unique("bee-behind");
    mqtt_pub(
        bport,
        "ping/127.0.0.10",
        &record(&behind, "127.0.0.10", now() - time::Duration::hours(1), Status::Ok),
        false,
    );
    let bees = wait_for(Duration::from_secs(10), "three live bees", || {
        let (_, v) = get_json(port, "/bees");
        (v["alive"].as_array().map_or(0, Vec::len) == 3).then_some(v)
    });
    let now_ms = ms(&swarm::now_ts());
    for b in bees["alive"].as_array().unwrap() {
        let seen = ms(b["last_seen"].as_str().unwrap());
        assert!((now_ms - seen).abs() < 10_000, "last_seen is not the router's receive time: {b}");
    }
    let by_agent = |a: &str| bees["alive"].as_array().unwrap().iter().find(|b| b["agent"] == a).cloned().unwrap();
    assert!(ms(by_agent(&ahead)["last_ts"].as_str().unwrap()) > now_ms + 3_000_000);
    assert!(ms(by_agent(&behind)["last_ts"].as_str().unwrap()) < now_ms - 3_000_000);
    assert!(router.log_text().contains("clock runs ahead"), "{}", router.log_text());

    // One target however spelled: a record published under another spelling of ::1 (an
    // older tool) is filed under ::1, and found by any spelling.
    let old = testkit::unique("bee-old");
    mqtt_pub(bport, "ping/0:0:0:0:0:0:0:1", &record(&old, "0000::1", now(), Status::Ok), false);
    let v = wait_for(Duration::from_secs(10), "the record under ::1", || {
        let (code, v) = get_json(port, "/pings/latest?target=::1");
        (code == 200).then_some(v)
    });
    assert_eq!((v["target"].as_str(), v["agent"].as_str()), (Some("::1"), Some(old.as_str())));
    let (code, v) = get_json(port, "/pings/latest?target=0:0::1");
    assert_eq!((code, v["target"].as_str()), (200, Some("::1")));
    let (code, _) = get_json(port, "/pings/latest?target=not/a/host");
    assert_eq!(code, 400);
    // PUT /watch keeps one spelling per target.
    let (code, body) =
        http("PUT", port, "/watch", &[("Authorization", "Bearer t")], b"::1 0:0:0:0:0:0:0:1 Example.ORG. example.org")
            .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(mqtt_sub(bport, "watch", 1, 5), vec!["watch ::1 example.org".to_string()]);
}

#[test]
fn one_address_however_spelled_is_one_target() {
    let broker = broker();
    let port = broker.port;
    mqtt_pub(port, "watch", b"::1 0:0:0:0:0:0:0:1 0000:0000::0001", true);
    let agent = testkit::unique("bee-canon");
    let bee = bee(port, &agent);
    // The bee pings once a second: in 4 s, 3 spellings would give about 12 records.
    let lines = mqtt_sub(port, "ping/#", 1000, 5);
    let topics: BTreeSet<&str> = lines.iter().filter_map(|l| l.split_once(' ')).map(|(t, _)| t).collect();
    assert_eq!(topics.into_iter().collect::<Vec<_>>(), vec!["ping/::1"], "{}", bee.log_text());
    for l in &lines {
        let r: PingRecord = serde_json::from_str(l.split_once(' ').unwrap().1).unwrap();
        assert_eq!((r.target.as_str(), r.agent.as_str(), r.status), ("::1", agent.as_str(), Status::Ok));
    }
    assert!((2..=7).contains(&lines.len()), "one record per round expected, got {}: {lines:?}", lines.len());
}

#[test]
fn two_bees_with_one_agent_id_back_off_and_say_so() {
    let broker = broker();
    let port = broker.port;
    let agent = testkit::unique("bee-twin");
    let start = |name: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bee"));
        broker_env(&mut cmd, port);
        cmd.env("BEE_AGENT", &agent).env("BROKER_MAX_BACKOFF", "30s").env("STATS_INTERVAL", "0");
        Program::start(cmd, name)
    };
    // Count the last wills the broker fires for the agent while both run.
    let window = 20;
    let rip_topic = format!("rip/agent/{agent}");
    let wills = std::thread::spawn(move || mqtt_sub(port, &rip_topic, 10_000, window));
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let a = start("bee-twin-a");
    let b = start("bee-twin-b");
    let wills: Vec<String> = wills.join().unwrap().into_iter().filter(|l| l.contains("\"dead\"")).collect();
    let elapsed = t0.elapsed();
    let connects = |p: &Program| p.log_text().matches("connected to the broker").count();
    let (ca, cb) = (connects(&a), connects(&b));
    let clash_logged = [&a, &b].iter().any(|p| {
        p.log_text().lines().any(|l| l.contains("client id clash") && l.contains(&agent) && l.contains("\"ERROR\""))
    });
    eprintln!("{elapsed:?}: connects {ca} + {cb}, last wills {}", wills.len());
    assert!(clash_logged, "no error naming the clash and {agent}:\n{}\n{}", a.log_text(), b.log_text());
    // Without the backoff holding, they took the connection from each other ~70 times.
    assert!(ca + cb <= 20, "{ca} + {cb} connections in {elapsed:?}");
    assert!(wills.len() <= 18, "{} last wills in {elapsed:?}", wills.len());
    assert!(ca >= 1 && cb >= 1);
    assert!(broker.alive());
}

#[test]
fn two_indexers_with_one_client_id_log_the_clash_and_back_off() {
    // MQTT 5 (mosquitto, rumqttc): the takeover reaches the indexer as the broker closing
    // the connection right after accepting it, as for the bee.
    let broker = broker();
    let port = broker.port;
    let id = testkit::unique("indexer-twin");
    let start = |name: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_indexer"));
        broker_env(&mut cmd, port);
        // Nothing listens there: the InfluxDB writer retries quietly, the MQTT side is real.
        cmd.env("INDEXER_CLIENT_ID", &id)
            .env("INFLUX_URL", format!("http://127.0.0.1:{}", testkit::free_port()))
            .env("BROKER_MAX_BACKOFF", "30s")
            .env("STATS_INTERVAL", "0");
        Program::start(cmd, name)
    };
    let a = start("indexer-twin-a");
    let b = start("indexer-twin-b");
    std::thread::sleep(Duration::from_secs(15));
    let connects = |p: &Program| p.log_text().matches("connected to the broker").count();
    let (ca, cb) = (connects(&a), connects(&b));
    let taken_over = [&a, &b]
        .iter()
        .flat_map(|p| p.log_text().lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| l.contains("client id clash") && l.contains(&id) && l.contains("\"ERROR\""))
        .count();
    eprintln!("connects {ca} + {cb}, takeovers logged {taken_over}");
    assert!(taken_over >= 1, "no takeover logged:\n{}\n{}", a.log_text(), b.log_text());
    assert!(ca + cb <= 16, "{ca} + {cb} connections in 15 s");
}
