//! `tyrell traffic` end to end, through the real binary against the emulator: switches,
//! canary steps, rollback, retire, prune, the health gate, the lock and interrupted
//! switches. The listener is read back with the SDK after each switch.
//!
//! The emulator reports every registered target `healthy` at once; the unhealthy cases
//! mark an instance `Unhealthy` through the public Auto Scaling API (`SetInstanceHealth`).

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{ami, block_on, create, emulator, exit, fails, forwards, json, ok, output, run, swarm, wait_for};

/// Creates a version of a role with a given id and size.
fn tg(swarm: &str, role: &str, version: &str) -> String {
    output(&format!("{swarm}-{role}-{version}"), "TargetGroupArn")
}

/// Asserts the listener forwards to exactly one version's target group.
fn only(listener: &str, swarm: &str, role: &str, version: &str) {
    let f = forwards(listener);
    assert_eq!(f.len(), 1, "expected the listener to forward only to {version}: {f:?}");
    assert_eq!(f[0].0, tg(swarm, role, version), "the listener forwards elsewhere than {version}");
}

fn instances(swarm: &str, role: &str, version: &str) -> Vec<String> {
    block_on(async {
        let asg = emulator().autoscaling().await;
        let name = format!("{swarm}-{role}-{version}");
        let out = asg.describe_auto_scaling_groups().auto_scaling_group_names(&name).send().await.unwrap();
        out.auto_scaling_groups()[0].instances().iter().map(|i| i.instance_id().unwrap().to_string()).collect()
    })
}

fn desired(swarm: &str, role: &str, version: &str) -> i32 {
    block_on(async {
        let asg = emulator().autoscaling().await;
        let name = format!("{swarm}-{role}-{version}");
        let out = asg.describe_auto_scaling_groups().auto_scaling_group_names(&name).send().await.unwrap();
        out.auto_scaling_groups()[0].desired_capacity().unwrap()
    })
}

fn lock_value(swarm: &str, role: &str) -> Option<String> {
    block_on(async {
        let ssm = emulator().ssm().await;
        let out = ssm.get_parameter().name(format!("/tyrell/{swarm}/locks/{role}")).send().await;
        out.ok().and_then(|o| o.parameter().and_then(|p| p.value()).map(str::to_string))
    })
}

fn stderr_of(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "tyrell {} failed:\n{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn router_switch_canary_rollback_and_retire() {
    let (sw, _) = swarm("tr");
    let listener = output(&sw, "AlbListenerArn");
    create("routers", &sw, "v1", "1");
    create("routers", &sw, "v2", "1");
    assert!(forwards(&listener).is_empty(), "a fresh ALB answers 503 until a router version is made active");

    // First activation: nothing before it.
    ok(&["traffic", "elb", &sw, "--router", "v1"]);
    only(&listener, &sw, "router", "v1");

    // v1 -> v2 in two canary steps; the steps are reported in order.
    let err = stderr_of(&["traffic", "elb", &sw, "--router", "v2", "--canary", "10,50", "--bake", "1"]);
    let at = |s: &str| err.find(s).unwrap_or_else(|| panic!("no {s:?} in:\n{err}"));
    assert!(at("step 1/3: router v2 10%, v1 90%") < at("step 2/3: router v2 50%, v1 50%"), "{err}");
    assert!(at("step 2/3: router v2 50%, v1 50%") < at("step 3/3: router v2 100%"), "{err}");
    assert!(at("gate: router v2: 1/1 ready") < at("step 1/3"), "{err}");
    assert!(err.contains("baking 1s"), "{err}");
    only(&listener, &sw, "router", "v2");
    assert_eq!(lock_value(&sw, "router"), None, "a finished switch releases its lock");

    // Routing, read back from AWS.
    let state = json(&["traffic", "elb", &sw]);
    assert_eq!(state["active"], "v2", "{state}");
    let weights: Vec<(String, i64)> = state["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_str().unwrap().to_string(), v["weight"].as_i64().unwrap()))
        .collect();
    assert_eq!(weights, vec![("v1".into(), 0), ("v2".into(), 100)]);
    assert_eq!(state["versions"][1]["healthy"], 1, "{state}");
    let table = ok(&["traffic", "elb", &sw]);
    assert!(table.contains("HEALTHY/TOTAL") && table.contains("1/1"), "{table}");

    // The old version kept running, so rollback is immediate.
    assert_eq!(desired(&sw, "router", "v1"), 1);
    let back = json(&["traffic", "elb", &sw, "--rollback"]);
    assert_eq!(back["active"], "v1", "{back}");
    only(&listener, &sw, "router", "v1");
    let routers = json(&["routers", &sw]);
    let active: Vec<&str> = routers["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["active"] == true)
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(active, vec!["v1"], "tyrell routers shows the active version from the listener");

    // --retire scales the old version to zero after the switch.
    let done = json(&["traffic", "elb", &sw, "--router", "v2", "--retire"]);
    assert_eq!(done["switch"]["retired"], true, "{done}");
    only(&listener, &sw, "router", "v2");
    assert_eq!(desired(&sw, "router", "v1"), 0);

    // A rollback to a retired version brings it back to the live capacity first.
    ok(&["traffic", "elb", &sw, "--rollback"]);
    only(&listener, &sw, "router", "v1");
    assert_eq!(desired(&sw, "router", "v1"), 1);
}

#[test]
fn unhealthy_green_is_refused_and_blue_keeps_everything() {
    let (sw, _) = swarm("tu");
    let listener = output(&sw, "AlbListenerArn");
    create("routers", &sw, "v1", "1");
    create("routers", &sw, "v2", "1");
    ok(&["traffic", "elb", &sw, "--router", "v1"]);
    let sick = instances(&sw, "router", "v2")[0].clone();
    block_on(async {
        let asg = emulator().autoscaling().await;
        asg.set_instance_health().instance_id(&sick).health_status("Unhealthy").send().await.unwrap();
    });
    let started = Instant::now();
    let err = fails(
        exit::UNHEALTHY,
        &["--timeout", "3", "traffic", "elb", &sw, "--router", "v2", "--canary", "50", "--bake", "1"],
    );
    assert!(started.elapsed() < Duration::from_secs(30), "the gate is bounded by --timeout");
    assert!(err.contains("router v2 is not healthy after 3s, so traffic was not moved"), "{err}");
    assert!(err.contains(&format!("{sick}: InService/Unhealthy in its Auto Scaling group")), "{err}");
    only(&listener, &sw, "router", "v1");
    assert_eq!(lock_value(&sw, "router"), None, "a failed switch releases its lock");
    assert_eq!(json(&["traffic", "elb", &sw])["active"], "v1");
}

#[test]
fn health_dropping_during_a_bake_returns_traffic_to_blue() {
    let (sw, _) = swarm("tb");
    let listener = output(&sw, "AlbListenerArn");
    create("routers", &sw, "v1", "1");
    create("routers", &sw, "v2", "1");
    ok(&["traffic", "elb", &sw, "--router", "v1"]);
    let child = support::tyrell()
        .args(["traffic", "elb", &sw, "--router", "v2", "--canary", "20", "--bake", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the 20% step", || forwards(&listener).len() == 2);
    let sick = instances(&sw, "router", "v2")[0].clone();
    block_on(async {
        let asg = emulator().autoscaling().await;
        asg.set_instance_health().instance_id(&sick).health_status("Unhealthy").send().await.unwrap();
    });
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::UNHEALTHY), "{err}");
    assert!(err.contains("became unhealthy during the 20% step") && err.contains("traffic is back on v1"), "{err}");
    only(&listener, &sw, "router", "v1");
}

/// Field report: a first router release with `--canary 20 --bake 30` said "step 1/2: router
/// v1 20%" while the listener forwarded 100%, and when its only instance turned unhealthy
/// during the bake it panicked (exit 101), leaving the lock in SSM and all traffic on the
/// sick version. A first release has no live version to share with: refused up front.
#[test]
fn a_first_release_with_a_canary_is_refused_up_front() {
    let (sw, _) = swarm("tf");
    let listener = output(&sw, "AlbListenerArn");
    create("routers", &sw, "v1", "1");
    let err = fails(exit::USAGE, &["traffic", "elb", &sw, "--router", "v1", "--canary", "20", "--bake", "30"]);
    assert!(err.contains("first release") && err.contains("--canary"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("step 1/"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    assert!(forwards(&listener).is_empty(), "the ALB must still answer 503: {:?}", forwards(&listener));
    assert_eq!(lock_value(&sw, "router"), None, "the lock is released");
    assert_eq!(desired(&sw, "router", "v1"), 1);
    // The same release without --canary goes through, and a later canary from it works.
    ok(&["traffic", "elb", &sw, "--router", "v1"]);
    only(&listener, &sw, "router", "v1");
}

#[test]
fn ctrl_c_mid_canary_says_how_to_finish_and_rollback_undoes_it() {
    let (sw, _) = swarm("tc");
    let listener = output(&sw, "AlbListenerArn");
    create("routers", &sw, "v1", "1");
    create("routers", &sw, "v2", "1");
    ok(&["traffic", "elb", &sw, "--router", "v1"]);
    let child = support::tyrell()
        .args(["traffic", "elb", &sw, "--router", "v2", "--canary", "30", "--bake", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the 30% step", || forwards(&listener).len() == 2);
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::INTERRUPTED), "{err}");
    assert!(
        err.contains("stopped at 30%")
            && err.contains("re-run the same command to finish it, or --rollback to undo it"),
        "{err}"
    );
    assert_eq!(forwards(&listener).len(), 2, "Ctrl-C leaves both versions serving");

    // --rollback reads the interrupted switch's intent from its lock and undoes it.
    let err = stderr_of(&["traffic", "elb", &sw, "--rollback"]);
    assert!(err.contains("taking over a stale router traffic lock"), "{err}");
    only(&listener, &sw, "router", "v1");
    assert_eq!(lock_value(&sw, "router"), None);
}

#[test]
fn one_switch_at_a_time_and_a_killed_switch_converges() {
    let (sw, _) = swarm("tl");
    let listener = output(&sw, "AlbListenerArn");
    create("routers", &sw, "v1", "1");
    create("routers", &sw, "v2", "1");
    ok(&["traffic", "elb", &sw, "--router", "v1"]);

    // A switch holding its lock through a long bake...
    let mut first = support::tyrell()
        .args(["traffic", "elb", &sw, "--router", "v2", "--canary", "10,50", "--bake", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the 10% step", || forwards(&listener).len() == 2);
    let lock: serde_json::Value = serde_json::from_str(&lock_value(&sw, "router").unwrap()).unwrap();
    assert_eq!(
        (lock["from"].as_str(), lock["to"].as_str(), lock["pid"].as_u64()),
        (Some("v1"), Some("v2"), Some(first.id() as u64))
    );

    // ...refuses a second one, saying who holds it and since when.
    let err = fails(exit::LOCKED, &["traffic", "elb", &sw, "--rollback"]);
    assert!(err.contains("another router switch in swarm") && err.contains(&format!("(pid {})", first.id())), "{err}");
    assert!(err.contains(lock["since"].as_str().unwrap()) && err.contains("--force-unlock"), "{err}");

    // kill -9 mid-bake: both versions still serve; the re-run takes the stale lock over and finishes.
    first.kill().unwrap();
    first.wait().unwrap();
    let f = forwards(&listener);
    assert_eq!(f.len(), 2, "the killed switch left a weighted forward: {f:?}");
    assert!(f.iter().all(|(_, w)| *w > 0), "{f:?}");
    let err = stderr_of(&["traffic", "elb", &sw, "--router", "v2"]);
    assert!(err.contains("taking over a stale router traffic lock"), "{err}");
    only(&listener, &sw, "router", "v2");
    assert_eq!(lock_value(&sw, "router"), None);

    // A lock held by someone on another host: refused; --force-unlock says what it broke.
    block_on(async {
        let ssm = emulator().ssm().await;
        ssm.put_parameter()
            .name(format!("/tyrell/{sw}/locks/router"))
            .value(r#"{"holder":"ann@laptop","host":"laptop","pid":4242,"since":"2026-11-23T09:00:00Z","from":"v2","to":"v1"}"#)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .send()
            .await
            .unwrap();
    });
    let err = fails(exit::LOCKED, &["traffic", "elb", &sw, "--router", "v1"]);
    assert!(err.contains("held by ann@laptop (pid 4242) since 2026-11-23T09:00:00Z, switching v2 -> v1"), "{err}");
    // Nor can versions be pruned or removed under a switch.
    let err = fails(exit::LOCKED, &["routers", "prune", &sw, "--keep", "0"]);
    assert!(err.contains("a router switch in swarm") && err.contains("ann@laptop"), "{err}");
    let err = fails(exit::LOCKED, &["routers", "remove", &sw, "v1"]);
    assert!(err.contains("a router switch in swarm"), "{err}");
    only(&listener, &sw, "router", "v2");
    let err = stderr_of(&["traffic", "elb", &sw, "--router", "v1", "--force-unlock"]);
    assert!(err.contains("--force-unlock: breaking the router traffic lock") && err.contains("ann@laptop"), "{err}");
    only(&listener, &sw, "router", "v1");
}

#[test]
fn unknown_or_foreign_versions_are_refused_before_anything_changes() {
    let (a, _) = swarm("ta");
    let (b, _) = swarm("tf");
    let listener = output(&a, "AlbListenerArn");
    create("routers", &a, "v1", "1");
    create("routers", &b, "v9", "1");
    ok(&["traffic", "elb", &a, "--router", "v1"]);
    let err = fails(exit::NOT_FOUND, &["traffic", "elb", &a, "--router", "v9"]);
    assert!(err.contains(&format!("swarm {a} has no router version v9 (it belongs to swarm {b})")), "{err}");
    let err = fails(exit::NOT_FOUND, &["traffic", "elb", &a, "--router", "nope"]);
    assert!(err.contains(&format!("swarm {a} has no router version nope")), "{err}");
    let err = fails(exit::NOT_FOUND, &["traffic", "elb", "no-such-swarm", "--router", "v1"]);
    let want = format!("there is no base stack named no-such-swarm in {}", emulator().region);
    assert!(err.contains(&want), "{err}");
    let err = fails(exit::USAGE, &["traffic", "brokers", &a, "--version", "v1", "--canary", "10"]);
    assert!(err.contains("only the ALB"), "{err}");
    let err = fails(exit::USAGE, &["traffic", "elb", &a, "--router", "v1", "--canary", "50,10"]);
    assert!(err.contains("steps must go up"), "{err}");
    only(&listener, &a, "router", "v1");
    assert_eq!(lock_value(&a, "router"), None);
}

#[test]
fn broker_switch_moves_the_nlb() {
    let (sw, _) = swarm("tn");
    let listener = output(&sw, "BrokerListenerArn");
    create("brokers", &sw, "b1", "1");
    create("brokers", &sw, "b2", "1");
    ok(&["traffic", "brokers", &sw, "--version", "b1"]);
    only(&listener, &sw, "broker", "b1");
    ok(&["traffic", "brokers", &sw, "--version", "b2", "--retire"]);
    only(&listener, &sw, "broker", "b2");
    assert_eq!(desired(&sw, "broker", "b1"), 0);
    assert_eq!(json(&["traffic", "brokers", &sw])["active"], "b2");
}

#[test]
fn roles_without_traffic_move_the_tag_and_prune_keeps_the_active_and_newest() {
    let (sw, _) = swarm("tw");
    for v in ["w1", "w2", "w3", "w4"] {
        create("workers", &sw, v, "1");
    }
    // The first version became active at creation.
    assert_eq!(json(&["traffic", "workers", &sw])["active"], "w1");
    let done = json(&["traffic", "workers", &sw, "--version", "w2"]);
    assert_eq!((done["switch"]["from"].as_str(), done["active"].as_str()), (Some("w1"), Some("w2")), "{done}");
    assert_eq!(desired(&sw, "worker", "w1"), 0, "the old worker version stops working");
    let state = json(&["traffic", "workers", &sw]);
    assert_eq!(state["active"], "w2");
    let stacks = json(&["stacks"]);
    let mine = stacks["stacks"].as_array().unwrap().iter().find(|s| s["name"] == sw.as_str()).unwrap().clone();
    assert_eq!(mine["roles"]["worker"]["active"], "w2", "{mine}");

    // Rollback brings w1 back to w2's capacity, then scales w2 in.
    ok(&["traffic", "workers", &sw, "--rollback"]);
    assert_eq!(json(&["traffic", "workers", &sw])["active"], "w1");
    assert_eq!((desired(&sw, "worker", "w1"), desired(&sw, "worker", "w2")), (1, 0));
    ok(&["traffic", "workers", &sw, "--version", "w2"]);

    // Inactive: w1, w3, w4 (oldest first). w1 is what --rollback returns to (it was live
    // before w2): never pruned. Of the rest keep the newest one, and the active w2.
    let pruned = json(&["workers", "prune", &sw, "--keep", "1"]);
    assert_eq!(pruned["removed"], serde_json::json!(["w3"]), "{pruned}");
    let left: Vec<String> = json(&["workers", &sw])["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec!["w1", "w2", "w4"]);
    // Even --keep 0 leaves the rollback target, and the rollback still works.
    let pruned = json(&["workers", "prune", &sw, "--keep", "0"]);
    assert_eq!(pruned["removed"], serde_json::json!(["w4"]), "{pruned}");
    ok(&["traffic", "workers", &sw, "--rollback"]);
    assert_eq!(json(&["traffic", "workers", &sw])["active"], "w1");
}

#[test]
fn workers_indexers_and_bees_get_a_termination_hook_to_drain_or_hand_over() {
    let (sw, _) = swarm("td");
    let plan = |noun: &str| json(&[noun, "create", "-a", &ami(), "--dry-run", &sw]);
    assert_eq!(plan("workers")["parameters"]["DrainSeconds"], "90");
    // Indexers: hand-over (60 s) + drain (20 s); bees: hand-over (60 s) + stop.
    assert_eq!(plan("indexers")["parameters"]["DrainSeconds"], "150");
    assert_eq!(plan("bees")["parameters"]["DrainSeconds"], "120");
    assert_eq!(plan("routers")["parameters"]["DrainSeconds"], "0");
    // The emulator accepts the hook in the template (it does not model the Wait state).
    create("workers", &sw, "w1", "1");
    let stack = json(&["workers", &sw]);
    assert_eq!(stack["versions"][0]["status"], "CREATE_COMPLETE", "{stack}");
}

#[test]
fn shift_strategies_linear_and_all_at_once() {
    let (sw, _) = swarm("ts");
    let listener = output(&sw, "AlbListenerArn");
    create("routers", &sw, "v1", "1");
    create("routers", &sw, "v2", "1");
    let first = json(&["traffic", "elb", &sw, "--router", "v1", "--shift", "all-at-once"]);
    assert_eq!(first["switch"]["steps"], serde_json::json!([100]), "{first}");
    // Linear: equal steps, each reported, ending with all traffic on v2.
    let out = run(&["traffic", "elb", &sw, "--router", "v2", "--shift", "linear:40", "--bake", "0", "-o", "json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["switch"]["steps"], serde_json::json!([40, 80, 100]), "{done}");
    assert!(
        err.contains("step 1/3: router v2 40%, v1 60%") && err.contains("step 2/3: router v2 80%, v1 20%"),
        "{err}"
    );
    only(&listener, &sw, "router", "v2");
    // Bad strategies are usage errors; weighted ones need the ALB.
    let err = fails(exit::USAGE, &["traffic", "elb", &sw, "--router", "v1", "--shift", "linear:70"]);
    assert!(err.contains("1 to 50"), "{err}");
    let err = fails(exit::USAGE, &["traffic", "elb", &sw, "--router", "v1", "--shift", "fast"]);
    assert!(err.contains("all-at-once, steps:"), "{err}");
    fails(exit::USAGE, &["traffic", "elb", &sw, "--router", "v1", "--shift", "linear:50", "--canary", "10"]);
    let err = fails(exit::USAGE, &["traffic", "brokers", &sw, "--version", "b1", "--shift", "linear:50"]);
    assert!(err.contains("only the ALB"), "{err}");
    only(&listener, &sw, "router", "v2");
}
