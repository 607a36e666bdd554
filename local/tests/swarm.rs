//! A whole swarm deployed by tyrell on the local cloud, every box booted from an image
//! baked from this workspace (`tyrell builds create ROLE --local`), proven through AWS
//! state and the programs' own outputs: every box boots with its role's service active;
//! the router answers through the ALB proxy and takes the watch list; pings measured in the
//! bee boxes reach the routers (through the broker's NLB), InfluxDB on the metrics box
//! (through the indexer) and S3 (through SQS and the worker).
//!
//! Then releases of every role on the swarm while it is doing work (issue 11): a steady
//! ping load (50 targets, 2 s rounds, two bees) and a steady request load through the ALB,
//! while each role is switched to a new version the way an operator does it — broker
//! (deliberate move of its clients, then retired), bees (the old ones hand over), indexers
//! and workers (drained by their termination hooks), routers (a canary). Then the archive in
//! S3 is counted by record: every bee's records are numbered (`seq`), so for each bee the
//! archive must hold exactly 1..=its last seq (read from its presence or its goodbye on the
//! live broker): 0 lost. No target goes unmeasured for more than one round (from the
//! archived `ts`), no bee is reported dead (InfluxDB's `rip` measurement on the metrics box
//! stays empty), no request through the ALB fails, and the new broker holds the `watch`
//! list. The drained indexer's and worker's holds end because their services stopped (the
//! runner's log), and the hooks CloudFormation declared are in place (the emulator alone
//! skips them). Last, a router box whose health check fails makes the gate refuse a switch,
//! naming it.
//!
//! One swarm for all of it: a second deploy would cost CI a bake of six images and a boot.
//! Runs as root with the packages of scripts/local-setup. The roles are this repository's,
//! with the bees' rounds shortened to 2 s and the worker's flush to 10 s
//! (`TYRELL_ROLES_DIR`); `scripts/demo` runs the roles as they are.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{http, wait, Cloud, RequestLoad, SWARM};

const ROLES: [&str; 6] = ["broker", "router", "bee", "indexer", "worker", "metrics"];
/// The bees' round in this test (`BEE_INTERVAL`).
const ROUND: Duration = Duration::from_secs(2);
const TARGETS: usize = 50;

/// This repository's roles with the bees' rounds at [`ROUND`] (4 probes) and the worker's
/// flush at 10 s, in a temporary directory that lives as long as the returned guard.
fn fast_roles() -> (tempfile::TempDir, PathBuf) {
    let tmp = testkit::roles_copy();
    let dst = tmp.path().join("roles");
    let bee = dst.join("bee/cloud-init.yaml");
    let text = std::fs::read_to_string(&bee).unwrap();
    assert!(text.contains("BEE_INTERVAL=10s") && text.contains("BEE_PROBES=10"), "roles/bee changed: update this test");
    let text = text.replace("BEE_INTERVAL=10s", &format!("BEE_INTERVAL={}s", ROUND.as_secs()));
    std::fs::write(&bee, text.replace("BEE_PROBES=10", "BEE_PROBES=4")).unwrap();
    // The worker flushes a file after 10 s instead of 60 s: the final count is in S3 sooner.
    let worker = dst.join("worker/cloud-init.yaml");
    let text = std::fs::read_to_string(&worker).unwrap();
    assert!(text.contains("      TYRELL_SHUTDOWN_SECONDS=30\n"), "roles/worker changed: update this test");
    let text = text.replace(
        "      TYRELL_SHUTDOWN_SECONDS=30\n",
        "      TYRELL_SHUTDOWN_SECONDS=30\n      TYRELL_FLUSH_SECONDS=10\n",
    );
    std::fs::write(&worker, text).unwrap();
    (tmp, dst)
}

/// The drain hook's heartbeat each role's fleet template declares (seconds; the roles'
/// `drain_seconds`, see cli/tests/traffic.rs).
fn drain_seconds(role: &str) -> i32 {
    match role {
        "indexer" => 150,
        "worker" => 90,
        _ => unreachable!("{role} has no drain in this test"),
    }
}

/// The heartbeat of the termination lifecycle hook on `role` `version`'s group, read back
/// from Auto Scaling (CloudFormation declares it; the local cloud's emulator creates it).
fn termination_hook_seconds(cloud: &Cloud, role: &str, version: &str) -> Option<i32> {
    let asg = aws_sdk_autoscaling::Client::new(&cloud.sdk());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let groups = rt.block_on(asg.describe_auto_scaling_groups().send()).expect("DescribeAutoScalingGroups");
    let tagged = |g: &aws_sdk_autoscaling::types::AutoScalingGroup, k: &str, v: &str| {
        g.tags().iter().any(|t| t.key() == Some(k) && t.value() == Some(v))
    };
    let group = groups
        .auto_scaling_groups()
        .iter()
        .find(|g| tagged(g, "tyrell:role", role) && tagged(g, "tyrell:version", version))
        .and_then(|g| g.auto_scaling_group_name())
        .unwrap_or_else(|| panic!("no group for {role} {version}"))
        .to_string();
    let hooks = rt.block_on(asg.describe_lifecycle_hooks().auto_scaling_group_name(&group).send()).unwrap();
    let hook = hooks
        .lifecycle_hooks()
        .iter()
        .find(|h| h.lifecycle_transition() == Some("autoscaling:EC2_INSTANCE_TERMINATING"))?;
    hook.heartbeat_timeout()
}

/// Every record's `seq`, by agent.
fn seqs_by_agent(records: &[record::PingRecord]) -> BTreeMap<&str, BTreeSet<u64>> {
    let mut seqs: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for r in records {
        seqs.entry(r.agent.as_str()).or_default().extend(r.seq);
    }
    seqs
}

/// Every record archived in the swarm's bucket, and how many times each id was seen.
fn archive(cloud: &Cloud, bucket: &str) -> (Vec<record::PingRecord>, usize) {
    let s3 = aws_sdk_s3::Client::new(&cloud.sdk());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut out = Vec::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut token = None;
    loop {
        let page = rt
            .block_on(s3.list_objects_v2().bucket(bucket).set_continuation_token(token.clone()).send())
            .expect("ListObjectsV2");
        for o in page.contents() {
            let obj = rt.block_on(s3.get_object().bucket(bucket).key(o.key().unwrap()).send()).expect("GetObject");
            let bytes = rt.block_on(obj.body.collect()).unwrap().into_bytes();
            let mut text = String::new();
            flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_string(&mut text).expect("a gzip archive object");
            for l in text.lines().filter(|l| !l.trim().is_empty()) {
                let r: record::PingRecord = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                *ids.entry(r.id.clone()).or_default() += 1;
                out.push(r);
            }
        }
        token = page.next_continuation_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    let dups = ids.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    (out, dups)
}

/// Retained messages on the live broker (the box `broker`), topic → payload.
fn retained(cloud: &Cloud, broker: &str, filter: &str) -> BTreeMap<String, String> {
    let script = format!(
        "mosquitto_sub -h 127.0.0.1 -u tyrell -P \"$(cat /etc/mosquitto/.tyrell-pw)\" -t '{filter}' -v --retained-only -W 3 || true"
    );
    cloud
        .exec(broker, &["sh", "-c", &script])
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(t, p)| (t.to_string(), p.to_string())))
        .collect()
}

/// The instance id of the booted box of `role` `version` (one box).
fn box_of(cloud: &Cloud, role: &str, version: &str, dump: &dyn Fn() -> String) -> String {
    wait(&format!("{role} {version} booted"), Duration::from_secs(180), dump, || {
        cloud
            .boxes(role)
            .into_iter()
            .find(|b| b["version"] == version && b["state"] == "booted" && b["service"] == "active")
            .and_then(|b| b["instance"].as_str().map(str::to_string))
    })
}

#[test]
fn a_whole_swarm_measures_archives_and_every_role_is_released_under_load_losing_nothing() {
    let started = Instant::now();
    let (_keep, roles) = fast_roles();
    let mut cloud = Cloud::up();
    cloud.env.push(("TYRELL_ROLES_DIR".into(), roles.display().to_string()));
    let cloud = cloud;
    let bins = testkit::bin("bee").parent().unwrap().display().to_string();
    let dump = || cloud.report();

    for role in ROLES {
        let ami = cloud.ok(&["builds", "create", role, "--local", "--binaries-dir", &bins]);
        assert!(ami.starts_with("ami-"), "{role}: {ami}");
    }
    let vpc = cloud.ok(&["network", "create", "rel-net"]);
    cloud.ok(&["metrics", "create", "-v", &vpc, "-a", "latest", "metrics1"]);
    cloud.ok(&["stacks", "create", "-v", &vpc, SWARM]);
    let b1 = cloud.ok(&["brokers", "create", "-a", "latest", SWARM]);
    let r1 = cloud.ok(&["routers", "create", "-a", "latest", "-s", "2", SWARM]);
    let bees1 = cloud.ok(&["bees", "create", "-a", "latest", "-s", "2", SWARM]);
    cloud.ok(&["indexers", "create", "-a", "latest", SWARM]);
    cloud.ok(&["workers", "create", "-a", "latest", "-s", "1", SWARM]);
    cloud.ok(&["traffic", "brokers", SWARM, "--version", &b1, "--timeout", "5m"]);
    cloud.ok(&["traffic", "elb", SWARM, "--router", &r1, "--timeout", "5m"]);
    wait("every box booted with its service active", Duration::from_secs(240), dump, || {
        let s = cloud.status();
        let b = s["boxes"].as_array()?;
        (b.len() == 8 && b.iter().all(|b| b["state"] == "booted" && b["service"] == "active")).then_some(())
    });
    let metrics_id = cloud.boxes("metrics")[0]["instance"].as_str().unwrap().to_string();
    let desc: Value = serde_json::from_str(&cloud.ok(&["stacks", "describe", SWARM, "-o", "json"])).unwrap();
    let bucket = desc["bucket"].as_str().unwrap().to_string();

    // The ping load: 50 targets (each bee pings its own loopback), through the ALB.
    let alb = cloud.lb_local("Alb");
    let token = cloud.router_token();
    let targets: Vec<String> = (1..=TARGETS).map(|i| format!("127.0.0.{i}")).collect();
    let put_watch = |list: &str| cloud.put_watch(&alb, &token, list, dump);
    put_watch(&targets.join(" "));
    let bee_agents = |v: &str| -> Vec<String> {
        cloud
            .boxes("bee")
            .iter()
            .filter(|b| b["version"] == v)
            .map(|b| format!("bee-{}", b["instance"].as_str().unwrap()))
            .collect()
    };
    let first_bees = bee_agents(&bees1);
    assert_eq!(first_bees.len(), 2);
    // Each answer holds the latest record per target; the bees seen are gathered across answers.
    let mut seen = BTreeSet::new();
    wait("both bees' pings through the ALB", Duration::from_secs(90), dump, || {
        let (_, b) = http(&alb, "GET", "/pings/latest", &[], "").ok()?;
        let v: Value = serde_json::from_str(&b).ok()?;
        seen.extend(v["pings"].as_array()?.iter().filter_map(|p| p["agent"].as_str().map(str::to_string)));
        first_bees.iter().all(|a| seen.contains(a)).then_some(())
    });
    // …and written to InfluxDB on the metrics box by the indexer box.
    let influx = |q: &str| {
        let q = format!("q={q}");
        cloud.exec(
            &metrics_id,
            &["curl", "-sfG", "http://127.0.0.1:8086/query", "--data-urlencode", "db=tyrell", "--data-urlencode", &q],
        )
    };
    wait("points from both bee boxes in InfluxDB", Duration::from_secs(90), dump, || {
        let t = influx("SELECT count(loss) FROM ping GROUP BY agent");
        first_bees.iter().all(|a| t.contains(a.as_str())).then_some(())
    });
    // The bees reach the broker over TLS only (issue 12): from a bee box, the NLB's 8883
    // answers TLS with the certificate of the swarm's own CA (the SSM parameter the bee
    // trusts) for the NLB's name; plain MQTT is not spoken there.
    let bee_box = first_bees[0].trim_start_matches("bee-").to_string();
    let tls = cloud.exec(
        &bee_box,
        &[
            "sh",
            "-c",
            ". /etc/tyrell/bee.env && aws ssm get-parameter --region \"$AWS_REGION\" --name \"$BROKER_CA_PARAM\" \
             --query Parameter.Value --output text > /tmp/ca.pem && openssl s_client -brief -connect \"$BROKER_HOST:$BROKER_PORT\" \
             -verify_hostname \"$BROKER_HOST\" -CAfile /tmp/ca.pem -verify_return_error </dev/null 2>&1; echo \"exit $?\"",
        ],
    );
    assert!(tls.contains("Verification: OK") && tls.contains("exit 0"), "TLS from a bee box to the broker NLB: {tls}");
    let load_from = time::OffsetDateTime::now_utc();

    // The request load through the ALB, for the whole release.
    let load = RequestLoad::start(&alb, Duration::from_millis(50));
    let mut took: Vec<(&str, f64)> = Vec::new();
    let mut phases: Vec<(&str, String)> = Vec::new();
    let utc = || time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();

    // 1. Broker: the new one bridges to the live one at boot; the switch records it live;
    //    the old one asks its clients to move (within its 10 s look), then it is retired.
    let t = Instant::now();
    phases.push(("broker", utc()));
    let b2 = cloud.ok(&["brokers", "create", "-a", "latest", SWARM]);
    let b2_box = box_of(&cloud, "broker", &b2, &dump);
    cloud.ok(&["traffic", "brokers", SWARM, "--version", &b2, "--timeout", "5m"]);
    for id in cloud.boxes("bee").iter().map(|b| b["instance"].as_str().unwrap().to_string()).collect::<Vec<_>>() {
        wait("a bee moved to the new broker", Duration::from_secs(60), dump, || {
            let log = cloud.exec(&id, &["journalctl", "-q", "--no-pager", "-u", "tyrell-bee"]);
            log.contains("no longer live").then_some(())
        });
    }
    cloud.ok(&["brokers", "scale", SWARM, &b1, "0"]);
    wait("the old broker box gone", Duration::from_secs(90), dump, || {
        (!cloud.boxes("broker").iter().any(|b| b["version"] == b1.as_str())).then_some(())
    });
    took.push(("broker", t.elapsed().as_secs_f64()));
    let watch = retained(&cloud, &b2_box, "watch");
    assert_eq!(
        watch.get("watch").map(|w| w.split_whitespace().count()),
        Some(TARGETS),
        "the new broker's watch: {watch:?}"
    );

    // 2. Bees: the old ones hand over to the new ones (their hooks hold the boxes).
    let t = Instant::now();
    phases.push(("bees", utc()));
    let bees2 = cloud.ok(&["bees", "create", "-a", "latest", "-s", "2", SWARM]);
    cloud.ok(&["traffic", "bees", SWARM, "--version", &bees2, "--timeout", "5m"]);
    wait("the old bee boxes gone after handing over", Duration::from_secs(180), dump, || {
        (!cloud.boxes("bee").iter().any(|b| b["version"] == bees1.as_str())).then_some(())
    });
    took.push(("bees", t.elapsed().as_secs_f64()));
    let second_bees = bee_agents(&bees2);

    // 3. Indexers and 4. workers: the old ones drain through their hooks.
    for (role, noun) in [("indexer", "indexers"), ("worker", "workers")] {
        let t = Instant::now();
        phases.push((role, utc()));
        let olds = cloud.boxes(role);
        let old: Vec<String> = olds.iter().map(|b| b["version"].as_str().unwrap().to_string()).collect();
        let old_ids: Vec<String> = olds.iter().map(|b| b["instance"].as_str().unwrap().to_string()).collect();
        assert_eq!(
            termination_hook_seconds(&cloud, role, &old[0]),
            Some(drain_seconds(role)),
            "{role}: the drain hook"
        );
        let v = cloud.ok(&[noun, "create", "-a", "latest", "-s", "1", SWARM]);
        cloud.ok(&["traffic", noun, SWARM, "--version", &v, "--timeout", "5m"]);
        wait(&format!("the old {role} box gone after draining"), Duration::from_secs(180), dump, || {
            (!cloud.boxes(role).iter().any(|b| old.contains(&b["version"].as_str().unwrap_or("").to_string())))
                .then_some(())
        });
        took.push((role, t.elapsed().as_secs_f64()));
        let log = cloud.runner_log();
        for id in &old_ids {
            assert!(
                log.lines().any(|l| l.contains(id.as_str()) && l.contains("its service stopped")),
                "{role} {id}: the hold did not end by its drain (runner log):\n{}",
                log.lines().filter(|l| l.contains(id.as_str())).collect::<Vec<_>>().join("\n")
            );
        }
    }

    // 5. Routers: a canary (50 %, baked 10 s), then all.
    let t = Instant::now();
    phases.push(("router", utc()));
    let r2 = cloud.ok(&["routers", "create", "-a", "latest", "-s", "2", SWARM]);
    cloud.ok(&["traffic", "elb", SWARM, "--router", &r2, "--canary", "50", "--bake", "10", "--timeout", "5m"]);
    took.push(("router", t.elapsed().as_secs_f64()));
    // The box for the last check boots while the archive is awaited.
    let r3 = cloud.ok(&["routers", "create", "-a", "latest", "-s", "1", SWARM]);

    // The load ends: an empty watch list; a few rounds later every bee's count is final.
    std::thread::sleep(2 * ROUND);
    let load_to = time::OffsetDateTime::now_utc();
    let (sent, errors) = load.stop();
    phases.push(("end", utc()));
    put_watch("[]");
    std::thread::sleep(3 * ROUND);
    let b2_box = box_of(&cloud, "broker", &b2, &dump);
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for (topic, payload) in
        retained(&cloud, &b2_box, "bees/alive/+").into_iter().chain(retained(&cloud, &b2_box, "rip/agent/+"))
    {
        let agent = topic.rsplit('/').next().unwrap().to_string();
        let v: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
        if let Some(n) = v["seq"].as_u64() {
            let e = last.entry(agent).or_default();
            *e = (*e).max(n);
        }
    }
    for a in first_bees.iter().chain(&second_bees) {
        assert!(last.contains_key(a), "no final count for {a} on the broker: {last:?}");
    }

    // Every record of every bee in the archive, by (agent, seq); if not, which are missing
    // and when their neighbours were measured (to tell which release lost them).
    let missing = || {
        let (records, _) = archive(&cloud, &bucket);
        let mut by: BTreeMap<&str, BTreeMap<u64, &str>> = BTreeMap::new();
        for r in &records {
            if let Some(n) = r.seq {
                by.entry(r.agent.as_str()).or_default().insert(n, r.ts.as_str());
            }
        }
        let mut out = format!("phases (UTC): {phases:?}\n");
        for (a, n) in &last {
            let got = by.get(a.as_str()).cloned().unwrap_or_default();
            let gone: Vec<u64> = (1..=*n).filter(|k| !got.contains_key(k)).collect();
            let near: Vec<String> = gone
                .iter()
                .take(12)
                .map(|k| format!("{k} (after {})", got.range(..*k).next_back().map(|(_, t)| *t).unwrap_or("-")))
                .collect();
            out += &format!("{a}: last seq {n}, archived {}, missing {}: {near:?}\n", got.len(), gone.len());
        }
        out
    };
    let (records, dups) = wait("every record archived in S3", Duration::from_secs(300), missing, || {
        let (records, dups) = archive(&cloud, &bucket);
        let complete = {
            let seqs = seqs_by_agent(&records);
            last.iter().all(|(a, n)| seqs.get(a.as_str()).is_some_and(|s| s.len() as u64 == *n))
        };
        complete.then_some((records, dups))
    });
    let seqs = seqs_by_agent(&records);
    for (a, n) in &last {
        let s = &seqs[a.as_str()];
        assert_eq!(s.iter().next_back(), Some(n), "{a}: the archive's last seq");
    }

    // No target unmeasured for more than one round while the load ran.
    let mut per_target: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for r in &records {
        let at = record::parse_ts(&r.ts).unwrap();
        if at > load_from && at < load_to {
            per_target.entry(r.target.as_str()).or_default().push((at.unix_timestamp_nanos() / 1_000_000) as i64);
        }
    }
    assert_eq!(per_target.len(), TARGETS, "targets measured while the load ran");
    let mut worst = (0i64, "");
    for (t, ts) in per_target.iter_mut() {
        ts.sort_unstable();
        for w in ts.windows(2) {
            if w[1] - w[0] > worst.0 {
                worst = (w[1] - w[0], t);
            }
        }
    }
    assert!(worst.0 < 2 * ROUND.as_millis() as i64, "target {} unmeasured for {} ms", worst.1, worst.0);

    // No bee reported dead: InfluxDB's rip measurement (the dashboard's "Bees lost") is empty.
    let o = influx("SELECT count(dead) FROM rip");
    assert!(!o.contains("\"values\""), "bees reported dead during the releases: {o}");
    assert!(sent > 200, "the request load was too small to mean anything: {sent}");
    assert_eq!(errors.len(), 0, "requests through the ALB failed: {errors:?}");

    let total: u64 = last.values().sum();
    eprintln!(
        "releases under load: {} records from {} bees ({total} published by seq), 0 lost, {dups} duplicate deliveries; \
         worst gap of a target {} ms ({}) at {} s rounds; 0 bees reported dead; {sent} requests through the ALB, 0 failed",
        records.len(),
        last.len(),
        worst.0,
        worst.1,
        ROUND.as_secs()
    );
    for (role, s) in &took {
        eprintln!("release of {role}: {s:.1}s");
    }

    // A router box whose health check fails makes the gate refuse the switch, naming it.
    let r3_id = box_of(&cloud, "router", &r3, &dump);
    cloud.exec(&r3_id, &["systemctl", "stop", "tyrell-router.service"]);
    let o = cloud.run(&["traffic", "elb", SWARM, "--router", &r3, "--timeout", "30s"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the gate let a router with a failing health check take traffic:\n{err}");
    assert!(err.contains(&r3_id), "the refusal names the unhealthy box:\n{err}");
    let live = cloud.ok(&["traffic", "elb", SWARM, "-o", "json"]);
    assert!(live.contains(&r2) && !live.contains(&format!("\"{r3}\": 100")), "{live}");
    assert_eq!(http(&alb, "GET", "/pings/latest", &[], "").map(|r| r.0).ok(), Some(200), "the swarm still answers");
    eprintln!("whole test: {:.1}s", started.elapsed().as_secs_f64());
}
