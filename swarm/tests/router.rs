//! The router with a real broker and a real bee: PUT /watch changes what the bee pings,
//! /pings/latest shows the results, a killed bee shows up under rip/agent/<agent> and
//! in GET /bees, and /healthz follows the broker.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use testkit::servers::http;

const TOKEN: &str = "router-test-token";

fn get_json(port: u16, path: &str) -> serde_json::Value {
    let (code, body) = http("GET", port, path, &[], b"").unwrap();
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn put_watch(port: u16, token: &str, body: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    http("PUT", port, "/watch", &[("Authorization", &auth)], body.as_bytes()).unwrap()
}

#[test]
fn watch_latest_bees_and_health() {
    let t0 = Instant::now();
    let broker = broker();
    let bport = broker.port;
    let port = testkit::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_router"));
    broker_env(&mut cmd, bport);
    // The token from a file here; on the boxes from SSM (ROUTER_TOKEN_PARAM).
    let token_file = std::env::temp_dir().join(testkit::unique("token"));
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    cmd.env("ROUTER_LISTEN", format!("127.0.0.1:{port}"))
        .env("ROUTER_TOKEN_FILE", &token_file)
        .env("ROUTER_BEE_TTL", "5s")
        .env("TYRELL_VERSION", "v1test");
    let router = Program::start(cmd, "router");
    assert!(testkit::wait_for_port(port, Duration::from_secs(20)), "router did not listen: {}", router.log_text());
    wait_for(Duration::from_secs(10), "healthz 200", || {
        (http("GET", port, "/healthz", &[], b"").unwrap().0 == 200).then_some(())
    });
    let v = get_json(port, "/version");
    assert_eq!((v["program"].as_str(), v["role_version"].as_str()), (Some("router"), Some("v1test")));

    // Writes need the token; malformed lists are refused and change nothing.
    assert_eq!(put_watch(port, "wrong", "127.0.0.1").0, 401);
    assert_eq!(http("PUT", port, "/watch", &[], b"127.0.0.1").unwrap().0, 401);
    assert_eq!(put_watch(port, TOKEN, "127.0.0.1 not/a/host").0, 400);
    assert_eq!(get_json(port, "/targets")["targets"], serde_json::json!([]));

    let agent = testkit::unique("bee-router");
    let bee = bee(bport, &agent);
    let (code, body) = put_watch(port, TOKEN, "127.0.0.1 ::1");
    assert_eq!(code, 200, "{body}");
    assert_eq!(get_json(port, "/targets")["targets"], serde_json::json!(["127.0.0.1", "::1"]));
    // The list is retained on the broker, in the original space-separated form.
    assert_eq!(mqtt_sub(bport, "watch", 1, 5), vec!["watch 127.0.0.1 ::1".to_string()]);

    let pings = wait_for(Duration::from_secs(30), "latest results of both targets", || {
        let v = get_json(port, "/pings/latest");
        (v["pings"].as_array().unwrap().len() == 2).then_some(v)
    });
    for p in pings["pings"].as_array().unwrap() {
        assert_eq!(
            (p["status"].as_str(), p["agent"].as_str(), p["loss"].as_f64()),
            (Some("ok"), Some(agent.as_str()), Some(0.0)),
            "{p}"
        );
        // The record's schema 2 fields are in the answer.
        assert_eq!((p["schema"].as_u64(), p["ttl"].as_u64(), p["sent"].as_u64()), (Some(2), Some(64), Some(3)), "{p}");
        assert_eq!(p["addr"], p["target"], "{p}");
        assert!(p["rtt_ms"]["p50"].is_f64() && p["rtt_ms"]["p99"].is_f64() && p["rtt_ms"]["jitter"].is_f64(), "{p}");
        assert!(p["late_ms"].is_f64() && p["clock_synced"].is_boolean(), "{p}");
    }
    let one = get_json(port, "/pings/latest?target=::1");
    assert_eq!(one["target"], "::1");

    // PUT /watch changes what the bee pings (a JSON array works too).
    assert_eq!(put_watch(port, TOKEN, r#"["127.0.0.4"]"#).0, 200);
    wait_for(Duration::from_secs(30), "results for the new target only", || {
        let v = get_json(port, "/pings/latest");
        let targets: Vec<&str> = v["pings"].as_array().unwrap().iter().map(|p| p["target"].as_str().unwrap()).collect();
        (targets == ["127.0.0.4"]).then_some(())
    });
    let bees = get_json(port, "/bees");
    assert_eq!(bees["alive"][0]["agent"], agent.as_str(), "{bees}");

    // A schema-1 record (no schema, none of the new fields) is still shown, as schema 1.
    let old = serde_json::json!({"id": "old-1", "ts": swarm::now_ts(), "stack": "s", "region": "r", "agent": agent,
        "target": "192.0.2.9", "status": "ok", "loss": 0.5, "rtt_ms": {"min": 1.0, "avg": 1.5, "max": 2.0, "stddev": 0.5},
        "error": null});
    mqtt_pub(bport, "ping/192.0.2.9", old.to_string().as_bytes(), false);
    let shown = wait_for(Duration::from_secs(10), "the schema-1 record", || {
        let (code, body) = http("GET", port, "/pings/latest?target=192.0.2.9", &[], b"").unwrap();
        (code == 200).then(|| serde_json::from_str::<serde_json::Value>(&body).unwrap())
    });
    assert_eq!(
        (shown["schema"].as_u64(), shown["loss"].as_f64(), shown["rtt_ms"]["avg"].as_f64()),
        (Some(1), Some(0.5), Some(1.5))
    );
    assert!(shown.get("ttl").is_none() && shown["rtt_ms"].get("p50").is_none(), "{shown}");

    // Malformed results are skipped by the router too.
    mqtt_pub(bport, "ping/127.0.0.4", b"{broken", false);
    assert!(testkit::servers::running(router.guard.pid), "router died");

    // Killing the bee (no clean disconnect) fires its last will.
    bee.guard.signal("KILL");
    let rip = mqtt_sub(bport, &format!("rip/agent/{agent}"), 1, 10);
    assert_eq!(rip.len(), 1, "no retained last will for {agent}");
    let will: serde_json::Value = serde_json::from_str(rip[0].split_once(' ').unwrap().1).unwrap();
    assert_eq!((will["agent"].as_str(), will["status"].as_str()), (Some(agent.as_str()), Some("dead")));
    let bees = wait_for(Duration::from_secs(10), "the bee listed as dead", || {
        let b = get_json(port, "/bees");
        (b["dead"].as_array().unwrap().iter().any(|d| d["agent"] == agent.as_str())).then_some(b)
    });
    assert!(bees["alive"].as_array().unwrap().is_empty(), "{bees}");
    assert_eq!(bees["dead"][0]["reason"], "last will");

    // /healthz follows the broker, and the router reconnects (with backoff) when it is back.
    let (dir, conf) = (broker.dir.clone(), std::fs::read_to_string(broker.dir.join("mosquitto.conf")).unwrap());
    broker.stop();
    drop(broker);
    wait_for(Duration::from_secs(10), "healthz 503 without the broker", || {
        (http("GET", port, "/healthz", &[], b"").unwrap().0 == 503).then_some(())
    });
    assert_eq!(put_watch(port, TOKEN, "127.0.0.1").0, 503);
    assert!(testkit::servers::running(router.guard.pid), "router died");
    let _broker = testkit::servers::Mosquitto::start_with_config(&conf, bport, &dir);
    wait_for(Duration::from_secs(15), "healthz 200 once the broker is back", || {
        (http("GET", port, "/healthz", &[], b"").unwrap().0 == 200).then_some(())
    });
    // Persistence kept the retained list across the broker restart.
    assert_eq!(mqtt_sub(bport, "watch", 1, 5), vec!["watch 127.0.0.4".to_string()]);
    eprintln!("router test took {:?}", t0.elapsed());
}
