//! Releases that keep a running swarm whole (issue 11, items 5-7), through the real binary
//! against the emulator: only the active worker version carries a schedule; prune never
//! removes what the listener still forwards to (weights set and rules added directly with
//! the SDK, as an operator might); `tyrell traffic` shows the weights exactly; undoing an
//! interrupted switch leaves the rollback target alone; each switch reports its phases.

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::{ami, block_on, create, emulator, exit, fails, forwards, json, ok, output, swarm, wait_for};

fn tg(swarm: &str, version: &str) -> String {
    output(&format!("{swarm}-router-{version}"), "TargetGroupArn")
}

/// The scheduled actions of a version's group, as (recurrence, desired), sorted.
fn schedule(swarm: &str, role: &str, version: &str) -> Vec<(String, i32)> {
    block_on(async {
        let asg = emulator().autoscaling().await;
        let out = asg
            .describe_scheduled_actions()
            .auto_scaling_group_name(format!("{swarm}-{role}-{version}"))
            .send()
            .await
            .unwrap();
        let mut v: Vec<(String, i32)> = out
            .scheduled_update_group_actions()
            .iter()
            .map(|a| (a.recurrence().unwrap_or_default().to_string(), a.desired_capacity().unwrap_or(-1)))
            .collect();
        v.sort();
        v
    })
}

fn phases(done: &Value) -> Vec<(String, Option<String>)> {
    done["switch"]["report"]["phases"]
        .as_array()
        .unwrap_or_else(|| panic!("no report phases: {done}"))
        .iter()
        .map(|p| (p["phase"].as_str().unwrap().to_string(), p["check"].as_str().map(str::to_string)))
        .collect()
}

const HOURLY: [(&str, i32); 2] = [("0 * * * *", 1), ("45 * * * *", 0)];

fn owned(v: &[(&str, i32)]) -> Vec<(String, i32)> {
    v.iter().map(|(c, n)| (c.to_string(), *n)).collect()
}

#[test]
fn only_the_active_worker_version_is_scheduled() {
    let (sw, _) = swarm("rs");
    // The first worker version is active at creation and carries the role's schedule.
    create("workers", &sw, "w1", "1");
    assert_eq!(schedule(&sw, "worker", "w1"), owned(&HOURLY));
    // A version created beside the active one is not scheduled (its schedule waits in its
    // stack's parameters until it becomes active).
    let plan = json(&["workers", "create", "-a", &ami(), "--version", "w2", "--dry-run", &sw]);
    assert_eq!(
        (plan["parameters"]["ScheduleNow"].as_str(), plan["parameters"]["ScaleUpCron"].as_str()),
        (Some("false"), Some("0 * * * *")),
        "{plan}"
    );
    create("workers", &sw, "w2", "1");
    assert_eq!(schedule(&sw, "worker", "w2"), vec![], "an inactive version must have no schedule");

    // The switch moves the schedule: on the new version, off the old one.
    let done = json(&["traffic", "workers", &sw, "--version", "w2"]);
    assert_eq!(schedule(&sw, "worker", "w2"), owned(&HOURLY));
    assert_eq!(schedule(&sw, "worker", "w1"), vec![], "the retired w1 would come back every hour");
    let ph: Vec<String> = phases(&done).into_iter().map(|(p, _)| p).collect();
    assert_eq!(ph, ["gate", "step", "live", "schedule", "schedule", "old"], "{done}");
    // The live version, where the boxes read it (a broker of another version moves its clients).
    assert_eq!(live(&sw, "worker").as_deref(), Some("w2"));

    // Rollback: w1 gets its schedule back, w2 loses it.
    ok(&["traffic", "workers", &sw, "--rollback"]);
    assert_eq!(json(&["traffic", "workers", &sw])["active"], "w1");
    assert_eq!(live(&sw, "worker").as_deref(), Some("w1"), "a rollback is a switch too");
    assert_eq!(schedule(&sw, "worker", "w1"), owned(&HOURLY));
    assert_eq!(schedule(&sw, "worker", "w2"), vec![]);

    // A custom schedule given to an inactive version is its own when it becomes active.
    let args = ["--scale-up", "5 * * * *", "--scale-down", "50 * * * *", "--scale-up-size", "3"];
    let image = ami();
    let mut create_w3 = vec!["workers", "create", "-a", &image, "-s", "0", "--version", "w3"];
    create_w3.extend(args);
    create_w3.push(&sw);
    ok(&create_w3);
    assert_eq!(schedule(&sw, "worker", "w3"), vec![]);
    ok(&["traffic", "workers", &sw, "--version", "w3"]);
    assert_eq!(schedule(&sw, "worker", "w3"), owned(&[("5 * * * *", 3), ("50 * * * *", 0)]));
    assert_eq!((schedule(&sw, "worker", "w1"), schedule(&sw, "worker", "w2")), (vec![], vec![]));
    // Removing a version whose schedule tyrell put on (not the template) still works.
    ok(&["traffic", "workers", &sw, "--version", "w2"]);
    ok(&["workers", "remove", &sw, "w3"]);
    assert_eq!(schedule(&sw, "worker", "w2"), owned(&HOURLY));
}

#[test]
fn prune_keeps_every_version_the_listener_still_forwards_to_and_traffic_shows_it_exactly() {
    let (sw, _) = swarm("rp");
    let listener = output(&sw, "AlbListenerArn");
    for v in ["r1", "r2", "r3", "r4", "r5"] {
        create("routers", &sw, v, "1");
    }
    ok(&["traffic", "elb", &sw, "--router", "r1"]);
    // The release report: gate (N/N ready), each step and its bake (health held).
    let done = json(&["traffic", "elb", &sw, "--router", "r2", "--canary", "50", "--bake", "1"]);
    let ph = phases(&done);
    let names: Vec<&str> = ph.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["gate", "step", "bake", "step", "live", "old"], "{done}");
    assert_eq!(ph[0].1.as_deref(), Some("1/1 ready"), "{done}");
    assert!(ph[2].1.as_deref().is_some_and(|c| c.starts_with("health held: 1/1 ready")), "{done}");
    let bake = done["switch"]["report"]["phases"][2]["seconds"].as_f64().unwrap();
    assert!(bake >= 1.0, "the bake held for --bake 1: {done}");
    assert!(done["switch"]["report"]["seconds"].as_f64().unwrap() >= bake, "{done}");
    let table = ok(&["traffic", "elb", &sw, "--router", "r2"]);
    assert!(table.contains("release report") && table.contains("PHASE"), "{table}");

    // An operator splits 999/1 between r2 and r3 and sends /legacy/* to r4, by hand.
    let (tg2, tg3, tg4) = (tg(&sw, "r2"), tg(&sw, "r3"), tg(&sw, "r4"));
    block_on(async {
        use aws_sdk_elasticloadbalancingv2::types::*;
        let elb = emulator().elb().await;
        let fc = ForwardActionConfig::builder()
            .target_groups(TargetGroupTuple::builder().target_group_arn(&tg2).weight(999).build())
            .target_groups(TargetGroupTuple::builder().target_group_arn(&tg3).weight(1).build())
            .build();
        let action = Action::builder().r#type(ActionTypeEnum::Forward).forward_config(fc).build();
        elb.modify_listener().listener_arn(&listener).default_actions(action).send().await.unwrap();
        let rule = Action::builder().r#type(ActionTypeEnum::Forward).target_group_arn(&tg4).build();
        let cond = RuleCondition::builder().field("path-pattern").values("/legacy/*").build();
        elb.create_rule().listener_arn(&listener).priority(10).conditions(cond).actions(rule).send().await.unwrap();
    });
    assert_eq!(forwards(&listener).len(), 2);

    // tyrell traffic: the weights as they are, adding up; the rule-routed version listed.
    let state = json(&["traffic", "elb", &sw]);
    let by: std::collections::BTreeMap<&str, &Value> =
        state["versions"].as_array().unwrap().iter().map(|v| (v["version"].as_str().unwrap(), v)).collect();
    assert_eq!(by["r2"]["listener_weight"], 999, "{state}");
    assert_eq!(by["r3"]["listener_weight"], 1, "{state}");
    assert_eq!((by["r2"]["share"].as_f64(), by["r3"]["share"].as_f64()), (Some(99.9), Some(0.1)), "{state}");
    assert_eq!((by["r2"]["weight"].as_i64(), by["r3"]["weight"].as_i64()), (Some(99), Some(1)), "{state}");
    let total: f64 = by.values().map(|v| v["share"].as_f64().unwrap()).sum();
    assert!((total - 100.0).abs() < 1e-9, "shares add up to {total}: {state}");
    let weights: i64 = by.values().map(|v| v["weight"].as_i64().unwrap()).sum();
    assert_eq!(weights, 100, "{state}");
    assert_eq!(by["r4"]["rules"], serde_json::json!(["rule 10: path /legacy/*"]), "{state}");
    assert_eq!((by["r4"]["listener_weight"].as_i64(), by["r4"]["share"].as_f64()), (Some(0), Some(0.0)));
    assert_eq!(state["active"], "r2");
    let table = ok(&["traffic", "elb", &sw]);
    for want in ["999 (99.9%)", "1 (0.1%)", "rule 10: path /legacy/*"] {
        assert!(table.contains(want), "no {want:?} in:\n{table}");
    }

    // Neither can be removed by hand without --force.
    let err = fails(exit::IN_USE, &["routers", "remove", &sw, "r3"]);
    assert!(err.contains("0.1% of traffic"), "{err}");
    let err = fails(exit::IN_USE, &["routers", "remove", &sw, "r4"]);
    assert!(err.contains("rule 10: path /legacy/*"), "{err}");

    // prune --keep 0 removes only r5, saying what it kept and why.
    let pruned = json(&["routers", "prune", &sw, "--keep", "0"]);
    assert_eq!(pruned["removed"], serde_json::json!(["r5"]), "{pruned}");
    let kept: Vec<(&str, &str)> = pruned["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["version"].as_str().unwrap(), k["reason"].as_str().unwrap()))
        .collect();
    let names: Vec<&str> = kept.iter().map(|(v, _)| *v).collect();
    assert_eq!(names, ["r1", "r2", "r3", "r4"], "{pruned}");
    assert!(kept[0].1.contains("--rollback"), "{kept:?}");
    assert!(kept[1].1.contains("99.9%") && kept[1].1.contains("weight 999"), "{kept:?}");
    assert!(kept[2].1.contains("0.1%") && kept[2].1.contains("weight 1"), "{kept:?}");
    assert!(kept[3].1.contains("rule 10: path /legacy/*"), "{kept:?}");
    let left: Vec<String> = json(&["routers", &sw])["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, ["r1", "r2", "r3", "r4"]);
    let table = ok(&["routers", "prune", &sw, "--keep", "0"]);
    assert!(table.contains("kept router r4: listener rule 10: path /legacy/* forwards to it"), "{table}");
}

/// v0 was live before v1; a switch v1 -> v2 is killed mid-canary and undone. --rollback
/// must still go to v0 (v2 was never the live version), by either way of undoing.
#[test]
fn undoing_an_interrupted_switch_keeps_the_previous_rollback_target() {
    for undo in [&["--router", "v1"][..], &["--rollback"][..]] {
        let (sw, _) = swarm("ru");
        let listener = output(&sw, "AlbListenerArn");
        for v in ["v0", "v1", "v2"] {
            create("routers", &sw, v, "1");
        }
        ok(&["traffic", "elb", &sw, "--router", "v0"]);
        // A second apart, so that the inactive-since tags (to the second) order.
        std::thread::sleep(Duration::from_millis(1100));
        ok(&["traffic", "elb", &sw, "--router", "v1"]);
        std::thread::sleep(Duration::from_millis(1100));
        let mut child = support::tyrell()
            .args(["traffic", "elb", &sw, "--router", "v2", "--canary", "30", "--bake", "600"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("the 30% step", || forwards(&listener).len() == 2);
        child.kill().unwrap();
        child.wait().unwrap();

        let mut args = vec!["traffic", "elb", sw.as_str()];
        args.extend(undo);
        let done = json(&args);
        assert_eq!((done["switch"]["from"].as_str(), done["active"].as_str()), (Some("v2"), Some("v1")), "{done}");
        assert_eq!(forwards(&listener), vec![(tg(&sw, "v1"), 1)]);
        let old = done["switch"]["report"]["phases"].as_array().unwrap().last().unwrap().clone();
        assert!(old["what"].as_str().unwrap().contains("not marked for --rollback"), "{done}");

        // prune keeps v0 as the rollback target (and may remove v2)...
        let pruned = json(&["routers", "prune", &sw, "--keep", "0"]);
        assert_eq!(pruned["removed"], serde_json::json!(["v2"]), "{pruned}");
        // ...and --rollback goes back to v0, the version live before v1.
        let back = json(&["traffic", "elb", &sw, "--rollback"]);
        assert_eq!((back["switch"]["from"].as_str(), back["active"].as_str()), (Some("v1"), Some("v0")), "{back}");
        assert_eq!(forwards(&listener), vec![(tg(&sw, "v0"), 1)]);
    }
}

/// The SSM String `/tyrell/<swarm>/live/<role>` the last switch wrote, if any.
fn live(swarm: &str, role: &str) -> Option<String> {
    block_on(async {
        let ssm = emulator().ssm().await;
        let p = ssm.get_parameter().name(format!("/tyrell/{swarm}/live/{role}")).send().await.ok()?;
        p.parameter()?.value().map(str::to_string)
    })
}

/// Writes what a broker version's box would report of the state it holds.
fn report(swarm: &str, version: &str, watch: u64, subscriptions: u64) {
    let value = format!(
        r#"{{"instance":"i-{version}","at":"2026-11-30T06:00:00Z","retained":{},"watch_targets":{watch},"subscriptions":{subscriptions},"clients":3}}"#,
        watch.min(1) + 4
    );
    block_on(async {
        let ssm = emulator().ssm().await;
        ssm.put_parameter()
            .name(format!("/tyrell/{swarm}/state/broker/{version}"))
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .expect("PutParameter");
    });
}

fn state_report(swarm: &str, version: &str) -> Option<String> {
    block_on(async {
        let ssm = emulator().ssm().await;
        let p = ssm.get_parameter().name(format!("/tyrell/{swarm}/state/broker/{version}")).send().await.ok()?;
        p.parameter()?.value().map(str::to_string)
    })
}

/// A broker switch checks first that the new broker holds the live one's state, from what
/// their boxes report (issue 11 items 1 and 7): a new broker without the watch list is
/// refused (traffic stays), one that carries it is switched to and the release report says
/// what it holds; the report goes with its version.
#[test]
fn a_broker_switch_checks_the_new_broker_carries_the_swarm_state() {
    let (sw, _) = swarm("rst");
    create("brokers", &sw, "b1", "1");
    create("brokers", &sw, "b2", "1");
    ok(&["traffic", "brokers", &sw, "--version", "b1"]);
    report(&sw, "b1", 50, 6);
    report(&sw, "b2", 0, 2);
    let err = fails(7, &["traffic", "brokers", &sw, "--version", "b2", "--timeout", "6s"]);
    assert!(err.contains("broker b2 holds a watch list of 0 target(s), the live one 50"), "{err}");
    assert!(err.contains("traffic was not moved"), "{err}");
    assert_eq!(json(&["traffic", "brokers", &sw])["active"], "b1");
    // Its bridge caught up (the next report): the switch goes through and says what it checked.
    report(&sw, "b2", 50, 6);
    let done = json(&["traffic", "brokers", &sw, "--version", "b2"]);
    let ph = phases(&done);
    let state = ph.iter().find(|(p, _)| p == "state").unwrap_or_else(|| panic!("no state phase: {done}"));
    assert!(
        state
            .1
            .as_deref()
            .is_some_and(|c| c.contains("5 retained message(s), watch list of 50 target(s), 6 subscription(s)")),
        "{done}"
    );
    assert_eq!(live(&sw, "broker").as_deref(), Some("b2"));
    ok(&["brokers", "remove", &sw, "b1"]);
    assert_eq!(state_report(&sw, "b1"), None, "the report of a removed version stays behind");
    assert!(state_report(&sw, "b2").is_some());
}
