//! Each class of failure exits with its own code (`tyrell --help`, EXIT CODES), through
//! the real binary against the emulator: a script can tell "not there" from "in use" from
//! "AWS said no" without reading the sentence.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn help_lists_every_exit_code() {
    let help = ok(&["--help"]);
    let codes = help.split("EXIT CODES:").nth(1).unwrap_or_else(|| panic!("no EXIT CODES section:\n{help}"));
    for (code, word) in [
        (0, "success"),
        (exit::OTHER, "other"),
        (exit::USAGE, "usage"),
        (exit::NOT_FOUND, "not found"),
        (exit::EXISTS, "already exists"),
        (exit::IN_USE, "in use"),
        (exit::LOCKED, "locked"),
        (exit::UNHEALTHY, "unhealthy"),
        (exit::AWS, "AWS failed"),
        (exit::INTERRUPTED, "interrupted"),
    ] {
        let line = codes
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&code.to_string()))
            .unwrap_or_else(|| panic!("exit code {code} is not in:\n{codes}"));
        assert!(line.contains(word), "exit code {code}: expected {word:?} in {line:?}");
    }
    // The short help stays short.
    assert!(!ok(&["-h"]).contains("EXIT CODES"));
}

fn set_unhealthy(swarm: &str, role: &str, version: &str) {
    block_on(async {
        let asg = emulator().autoscaling().await;
        let name = format!("{swarm}-{role}-{version}");
        let out = asg.describe_auto_scaling_groups().auto_scaling_group_names(&name).send().await.unwrap();
        let id = out.auto_scaling_groups()[0].instances()[0].instance_id().unwrap().to_string();
        asg.set_instance_health().instance_id(&id).health_status("Unhealthy").send().await.unwrap();
    });
}

fn lock_exists(swarm: &str, role: &str) -> bool {
    block_on(async {
        let ssm = emulator().ssm().await;
        ssm.get_parameter().name(format!("/tyrell/{swarm}/locks/{role}")).send().await.is_ok()
    })
}

#[test]
fn each_class_of_failure_exits_with_its_code() {
    let (sw, vpc) = swarm("ex");
    let ami = ami();
    ok(&["workers", "create", "-a", &ami, "-s", "1", "--version", "w1", &sw]);
    ok(&["workers", "create", "-a", &ami, "-s", "1", "--version", "w2", &sw]);

    // 2: usage, from clap and from the engine alike.
    fails(exit::USAGE, &["workers", "create", &sw]);
    assert!(fails(exit::USAGE, &["network", "create", "Bad_Name"]).contains("invalid network name"));
    // 3: not found.
    assert!(fails(exit::NOT_FOUND, &["workers", "scale", &sw, "w404", "1"]).contains("has no worker version w404"));
    // 4: already exists.
    let err = fails(exit::EXISTS, &["workers", "create", "-a", &ami, "--version", "w1", &sw]);
    assert!(err.contains("worker version w1 already exists"), "{err}");
    // 5: in use (the VPC carries a swarm).
    let nets = json(&["network"]);
    let net = nets["networks"].as_array().unwrap().iter().find(|n| n["vpc_id"] == vpc.as_str()).unwrap();
    assert!(fails(exit::IN_USE, &["network", "remove", net["name"].as_str().unwrap()]).contains(&sw));

    // 6: locked by a switch on another host.
    let param = format!("/tyrell/{sw}/locks/worker");
    block_on(async {
        let ssm = emulator().ssm().await;
        ssm.put_parameter()
            .name(&param)
            .value(r#"{"holder":"ann@laptop","host":"laptop","pid":4242,"since":"2026-11-23T09:00:00Z","from":"w1","to":"w2"}"#)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .send()
            .await
            .unwrap();
    });
    assert!(fails(exit::LOCKED, &["traffic", "workers", &sw, "--version", "w2"]).contains("ann@laptop"));
    ok(&["traffic", "workers", &sw, "--force-unlock"]);

    // 7: unhealthy: the gate refuses w2, w1 stays active.
    set_unhealthy(&sw, "worker", "w2");
    let err = fails(exit::UNHEALTHY, &["--timeout", "2", "traffic", "workers", &sw, "--version", "w2"]);
    assert!(err.contains("worker w2 is not healthy after 2s"), "{err}");
    assert_eq!(json(&["traffic", "workers", &sw])["active"], "w1");

    // 8: AWS cannot be reached.
    let port = testkit::free_port();
    let err = fails(exit::AWS, &["network", "--endpoint-url", &format!("http://127.0.0.1:{port}")]);
    assert!(err.contains("cannot reach"), "{err}");

    // 130: Ctrl-C while the gate waits.
    let child = tyrell()
        .args(["--timeout", "600", "traffic", "workers", &sw, "--version", "w2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !lock_exists(&sw, "worker") {
        assert!(start.elapsed() < Duration::from_secs(60), "the switch never took its lock");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(exit::INTERRUPTED), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());
}

/// 1: a failure of no class, here Packer missing from PATH.
#[test]
fn an_unclassified_failure_exits_1() {
    let empty = tempfile::tempdir().unwrap();
    let out = tyrell()
        .args(["builds", "create", "router", "--version", "r9"])
        .env("PATH", empty.path())
        .current_dir(testkit::workspace_root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::OTHER), "{err}");
    assert!(err.contains("packer is not on PATH"), "{err}");
}
