//! The router with a real broker and a real bee: PUT /watch changes what the bee pings,
//! /pings/latest shows the results, a killed bee shows up under rip/agent/<agent> and
//! in GET /bees, and /healthz follows the broker. Records from several regions, published
//! as bees publish them: /pings/regions sums each region up and /pings/latest?region=R
//! shows one region's.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
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

/// A router on a free port against the broker on `bport`, listening and healthy.
fn router(bport: u16, bee_ttl: &str) -> (Program, u16) {
    let port = testkit::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_router"));
    broker_env(&mut cmd, bport);
    // The token from a file here; on the boxes from SSM (ROUTER_TOKEN_PARAM).
    let token_file = std::env::temp_dir().join(testkit::unique("token"));
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    cmd.env("ROUTER_LISTEN", format!("127.0.0.1:{port}"))
        .env("ROUTER_TOKEN_FILE", &token_file)
        .env("ROUTER_BEE_TTL", bee_ttl)
        .env("TYRELL_VERSION", "v1test");
    let router = Program::start(cmd, "router");
    assert!(testkit::wait_for_port(port, Duration::from_secs(20)), "router did not listen: {}", router.log_text());
    wait_for(Duration::from_secs(10), "healthz 200", || {
        (http("GET", port, "/healthz", &[], b"").unwrap().0 == 200).then_some(())
    });
    (router, port)
}

#[test]
fn watch_latest_bees_and_health() {
    let t0 = Instant::now();
    let broker = broker();
    let bport = broker.port;
    let (router, port) = router(bport, "5s");
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

/// A record as a bee publishes it, made `ago` before now by the bee's clock; `rtt_avg`
/// `None` is a round with no answer; `status` "error" a target that did not resolve.
type Rec<'a> = (&'a str, &'a str, &'a str, Duration, &'a str, f64, Option<f64>);

fn region_record((agent, region, target, ago, status, loss, rtt_avg): Rec) -> String {
    let ts = swarm::format_ts(time::OffsetDateTime::now_utc() - ago);
    serde_json::json!({"schema": 2, "id": testkit::unique("rec"), "ts": ts, "stack": "swarmtest", "region": region,
        "agent": agent, "target": target, "status": status, "loss": loss,
        "rtt_ms": rtt_avg.map(|a| serde_json::json!({"min": a, "avg": a, "max": a, "stddev": 0.0})),
        "error": (status == "error").then_some("cannot resolve")})
    .to_string()
}

/// The `target` of a record's JSON.
fn r_target(r: &str) -> String {
    serde_json::from_str::<serde_json::Value>(r).unwrap()["target"].as_str().unwrap().to_string()
}

/// The answer to a GET: (status, JSON body).
fn get(port: u16, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = http("GET", port, path, &[], b"").unwrap();
    (code, serde_json::from_str(&body).unwrap_or_else(|_| panic!("GET {path}: not JSON: {body}")))
}

/// A 400 whose body is `{"error": "<one sentence>"}` containing `says`.
fn refused(port: u16, path: &str, says: &str) {
    let (code, v) = get(port, path);
    let msg = v["error"].as_str().unwrap_or_default();
    assert_eq!(code, 400, "GET {path}: {v}");
    assert!(msg.contains(says) && !msg.contains('\n'), "GET {path}: {msg:?} does not say {says:?}");
}

/// (target, agent, loss) of each record `/pings/latest...` lists, in its order.
fn listed(port: u16, path: &str) -> Vec<(String, String, f64)> {
    let (code, v) = get(port, path);
    assert_eq!(code, 200, "GET {path}: {v}");
    v["pings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (p["target"].as_str().unwrap().into(), p["agent"].as_str().unwrap().into(), p["loss"].as_f64().unwrap())
        })
        .collect()
}

fn close(a: &serde_json::Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-9)
}

#[test]
fn results_per_region() {
    let t0 = Instant::now();
    let broker = broker();
    let bport = broker.port;
    let (router, port) = router(bport, "60s");
    let s = Duration::from_secs;
    let (a, b, c) = ("192.0.2.1", "192.0.2.2", "192.0.2.3");
    let agents = ["bee-eu1", "bee-eu2", "bee-us1", "bee-old"].map(testkit::unique);
    let [eu1, eu2, us1, old] = [0, 1, 2, 3].map(|i| agents[i].as_str());
    // (agent, region, target, made this long ago, status, loss, rtt avg); "latest" is by
    // `ts` here (all in the past, so before their arrival).
    let records: Vec<Rec> = vec![
        (eu1, "eu-west-1", a, s(30), "ok", 0.0, Some(10.0)),
        (eu1, "eu-west-1", a, s(20), "ok", 0.1, Some(20.0)), // replaces the one before in eu-west-1
        (eu2, "eu-west-1", b, s(25), "ok", 0.2, Some(30.0)),
        (eu2, "eu-west-1", c, s(10), "error", 1.0, None),
        (us1, "us-east-1", a, s(15), "ok", 0.0, Some(80.0)), // newer than eu-west-1's a
        (us1, "us-east-1", b, s(40), "ok", 1.0, None),       // older than eu-west-1's b; no answer
        (old, "", c, s(5), "ok", 0.5, Some(5.0)),            // an older bee: no region
        (eu1, "eu-west-1", a, s(50), "ok", 0.9, Some(99.0)), // arrives last but is older: not the latest
    ];
    let mut last_ts = String::new();
    for r in &records {
        let r = region_record(*r);
        last_ts = serde_json::from_str::<serde_json::Value>(&r).unwrap()["ts"].as_str().unwrap().into();
        mqtt_pub(bport, &format!("ping/{}", r_target(&r)), r.as_bytes(), false);
    }
    let ts_of = |agent: &str, target: &str| {
        let (_, v) = get(port, &format!("/pings/latest?target={target}"));
        assert_eq!(v["agent"], agent, "{v}");
        v["ts"].as_str().unwrap().to_string()
    };
    // Every record is in once the last one published is: /bees shows its `ts` as eu1's.
    wait_for(Duration::from_secs(15), "the last record", || {
        let (_, v) = get(port, "/bees");
        v["alive"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["agent"] == eu1 && b["last_ts"] == last_ts.as_str())
            .then_some(())
    });
    let (_, v) = get(port, "/pings/regions");
    let regions = v["regions"].as_array().unwrap().clone();
    // Sorted by name, the records without a region first, as "unknown".
    let names: Vec<&str> = regions.iter().map(|r| r["region"].as_str().unwrap()).collect();
    assert_eq!(names, ["unknown", "eu-west-1", "us-east-1"], "{regions:?}");
    let (unknown, eu, us) = (&regions[0], &regions[1], &regions[2]);
    // (targets, agents, alive, ok, answered)
    let counts = |r: &serde_json::Value| {
        ["targets", "agents", "alive", "ok", "answered"].map(|k| r[k].as_u64().unwrap_or_else(|| panic!("{k}: {r}")))
    };
    assert_eq!(counts(unknown), [1, 1, 1, 1, 1], "{unknown}");
    assert_eq!(counts(eu), [3, 2, 2, 2, 2], "{eu}");
    assert_eq!(counts(us), [2, 1, 1, 2, 1], "{us}");
    assert!(close(&unknown["loss"], 0.5) && close(&unknown["rtt_avg_ms"], 5.0), "{unknown}");
    assert!(close(&eu["loss"], (0.1 + 0.2 + 1.0) / 3.0) && close(&eu["rtt_avg_ms"], 25.0), "{eu}");
    assert!(close(&us["loss"], 0.5) && close(&us["rtt_avg_ms"], 80.0), "{us}");
    // The latest record of each region: its `ts` (the bee's clock) and `last_seen` (when
    // the router received it).
    assert_eq!(unknown["last_ts"], ts_of(old, c).as_str());
    let (_, eu_c) = get(port, &format!("/pings/latest?target={c}&region=eu-west-1"));
    assert_eq!((eu["last_ts"].as_str(), eu["last_seen"].as_str()), (eu_c["ts"].as_str(), eu_c["received"].as_str()));
    let (_, us_a) = get(port, &format!("/pings/latest?target={a}&region=us-east-1"));
    assert_eq!(us["last_ts"], us_a["ts"], "{us}");

    // ?region= lists one region's latest record of each target; without it, the latest of
    // each target from any region.
    let row = |t: &str, a: &str, l: f64| (t.to_string(), a.to_string(), l);
    assert_eq!(listed(port, "/pings/latest?region=eu-west-1"), [row(a, eu1, 0.1), row(b, eu2, 0.2), row(c, eu2, 1.0)]);
    assert_eq!(listed(port, "/pings/latest?region=us-east-1"), [row(a, us1, 0.0), row(b, us1, 1.0)]);
    assert_eq!(listed(port, "/pings/latest?region=unknown"), [row(c, old, 0.5)]);
    assert_eq!(listed(port, "/pings/latest?region="), [row(c, old, 0.5)]);
    assert_eq!(listed(port, "/pings/latest"), [row(a, us1, 0.0), row(b, eu2, 0.2), row(c, old, 0.5)]);
    assert_eq!(listed(port, "/pings/latest?region=ap-south-1"), []);
    let (code, v) = get(port, &format!("/pings/latest?target={a}&region=eu-west-1"));
    assert_eq!((code, v["agent"].as_str(), v["region"].as_str()), (200, Some(eu1), Some("eu-west-1")), "{v}");
    let (code, v) = get(port, &format!("/pings/latest?region=us-east-1&target={c}"));
    assert_eq!(code, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("us-east-1"), "{v}");

    // What the routes do not take is refused in one sentence.
    refused(port, "/pings/latest?region=eu/west-1", "region must be");
    refused(port, &format!("/pings/latest?region={}", "a".repeat(65)), "region must be");
    refused(port, "/pings/latest?regoin=eu-west-1", "\"regoin\"");
    refused(port, "/pings/latest?region=eu-west-1&region=us-east-1", "twice");
    refused(port, "/pings/regions?region=eu-west-1", "takes no query parameters");

    // A record whose region is not a region name is skipped (and logged), as is one from
    // a region past the router's bound for its target; the regions held are kept.
    let d = "192.0.2.4";
    let bad = region_record((eu1, "eu west 1", d, s(1), "ok", 0.0, Some(1.0)));
    mqtt_pub(bport, &format!("ping/{d}"), bad.as_bytes(), false);
    let many = testkit::unique("bee-many");
    let lines: Vec<String> = (0..=swarm::router::MAX_REGIONS)
        .map(|i| region_record((&many, &format!("r-{i}"), d, s(1), "ok", 0.0, Some(1.0))))
        .collect();
    let mut publish = Command::new(testkit::system_tool("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &bport.to_string(), "-u", USER, "-P", PASSWORD, "-q", "1"])
        .args(["-t", &format!("ping/{d}"), "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    publish.stdin.take().unwrap().write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
    assert!(publish.wait().unwrap().success());
    let last = format!("r-{}", swarm::router::MAX_REGIONS - 1);
    wait_for(Duration::from_secs(15), "the records of the many regions", || {
        (get(port, &format!("/pings/latest?target={d}&region={last}")).0 == 200).then_some(())
    });
    wait_for(Duration::from_secs(5), "the dropped record logged", || {
        router.log_text().contains("too many regions").then_some(())
    });
    let past = format!("r-{}", swarm::router::MAX_REGIONS);
    assert_eq!(get(port, &format!("/pings/latest?target={d}&region={past}")).0, 404);
    assert_eq!(listed(port, &format!("/pings/latest?region={past}")), []);
    assert!(router.log_text().contains("invalid region"), "{}", router.log_text());
    let (_, v) = get(port, "/pings/regions");
    let rows = v["regions"].as_array().unwrap();
    assert!(!rows.iter().any(|r| r["region"].as_str().unwrap().contains(' ')), "{v}");
    // The bee of the region past the bound is live all the same: its region is listed,
    // with no record.
    let past_row = rows.iter().find(|r| r["region"] == past.as_str()).expect("the live bee's region");
    assert_eq!((past_row["targets"].as_u64(), past_row["alive"].as_u64()), (Some(0), Some(1)), "{past_row}");
    assert!(past_row["loss"].is_null() && past_row["rtt_avg_ms"].is_null() && past_row["last_ts"].is_null());
    assert_eq!(rows.len(), 3 + swarm::router::MAX_REGIONS + 1, "{v}");

    // A new watch list forgets the other targets' records in every region.
    let (code, body) = put_watch(port, TOKEN, a);
    assert_eq!(code, 200, "{body}");
    let (_, v) = get(port, "/pings/regions");
    let held: Vec<(&str, u64)> = v["regions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["targets"].as_u64() != Some(0))
        .map(|r| (r["region"].as_str().unwrap(), r["targets"].as_u64().unwrap()))
        .collect();
    assert_eq!(held, [("eu-west-1", 1), ("us-east-1", 1)], "{v}");
    assert_eq!(listed(port, "/pings/latest?region=unknown"), []);
    assert!(testkit::servers::running(router.guard.pid), "router died");
    eprintln!("region test took {:?}", t0.elapsed());
}
