//! Broker releases (issue 11 item 1): a new broker, bridged to the live one by the box's
//! own script (roles/broker/tyrell-broker-bridge, run here as on the box), carries the
//! swarm's retained MQTT state; then a move of the bees from the old broker to the new one
//! under a steady ping load loses no record and reports no bee dead. Real mosquitto (two),
//! real bees and indexers, the AWS emulator's SQS.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
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
    let log = new.log_text();
    let received_watch = log.matches("watch").count();
    eprintln!("bridge: retained state carried, {received_watch} watch lines in the new broker's log");
}
