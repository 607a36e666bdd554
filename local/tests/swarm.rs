//! A whole swarm deployed by tyrell on the local cloud, every box booted from an image
//! baked from this workspace, proven through AWS state and the programs' own outputs:
//! every box boots and its role's service is active; the router answers through the ALB
//! proxy; a ping measured in a bee box reaches S3 (through broker, indexer, SQS, worker)
//! and InfluxDB on the metrics box; a router canary under a steady request load through
//! the ALB fails no request; scale-in removes a box; a router box whose health check fails
//! makes the gate refuse a switch.
//!
//! Runs as root with the packages of scripts/local-setup. One run bakes six images from
//! the debug binaries (seconds each once the base filesystems are cached; the first run on
//! a machine makes them, a few minutes).

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{http, wait, Cloud, RequestLoad, SWARM};

const ROLES: [&str; 6] = ["broker", "router", "bee", "indexer", "worker", "metrics"];

#[test]
fn a_whole_swarm_boots_measures_archives_and_releases() {
    let started = Instant::now();
    let cloud = Cloud::up();
    let bins = testkit::bin("bee").parent().unwrap().display().to_string();
    let dump = || format!("status: {}", serde_json::to_string_pretty(&cloud.status()).unwrap_or_default());

    // Images: the real local bake of every role, registered like Packer builds.
    for role in ROLES {
        let t = Instant::now();
        let ami = cloud.ok(&["builds", "create", role, "--local", "--binaries-dir", &bins]);
        assert!(ami.starts_with("ami-"), "{role}: {ami}");
        eprintln!("bake {role}: {:.1}s", t.elapsed().as_secs_f64());
    }
    // The swarm, as an operator deploys it.
    let vpc = cloud.ok(&["network", "create", "swarm-net"]);
    cloud.ok(&["metrics", "create", "-v", &vpc, "-a", "latest", "metrics1"]);
    cloud.ok(&["stacks", "create", "-v", &vpc, SWARM]);
    let broker = cloud.ok(&["brokers", "create", "-a", "latest", SWARM]);
    let r1 = cloud.ok(&["routers", "create", "-a", "latest", "-s", "2", SWARM]);
    let bees = cloud.ok(&["bees", "create", "-a", "latest", "-s", "2", SWARM]);
    cloud.ok(&["indexers", "create", "-a", "latest", SWARM]);
    let workers = cloud.ok(&["workers", "create", "-a", "latest", "-s", "1", SWARM]);
    // The gates wait for the real health checks of the booted boxes.
    cloud.ok(&["traffic", "brokers", SWARM, "--version", &broker, "--timeout", "5m"]);
    cloud.ok(&["traffic", "elb", SWARM, "--router", &r1, "--timeout", "5m"]);

    // Every box booted and its role's service is active.
    wait("every box booted with its service active", Duration::from_secs(240), dump, || {
        let s = cloud.status();
        let b = s["boxes"].as_array()?;
        (b.len() == 8 && b.iter().all(|b| b["state"] == "booted" && b["service"] == "active")).then_some(())
    });
    let bee_ids: Vec<String> = cloud.boxes("bee").iter().map(|b| b["instance"].as_str().unwrap().to_string()).collect();
    assert_eq!(bee_ids.len(), 2);
    let broker_ip = cloud.boxes("broker")[0]["ip"].as_str().unwrap().to_string();
    let metrics = cloud.boxes("metrics")[0].clone();
    let metrics_id = metrics["instance"].as_str().unwrap().to_string();

    // The router answers through the ALB proxy; the watch list goes in with the token from SSM.
    let alb = cloud.lb_local("Alb");
    let token = cloud.router_token();
    cloud.put_watch(&alb, &token, &format!("169.254.1.1 {broker_ip}"), dump);

    // Bees in their boxes ping; the records reach the routers through the broker's NLB.
    let latest: Value = wait("a ping from each bee box through the ALB", Duration::from_secs(90), dump, || {
        let (_, b) = http(&alb, "GET", "/pings/latest", &[], "").ok()?;
        let v: Value = serde_json::from_str(&b).ok()?;
        let agents: Vec<&str> = v["pings"].as_array()?.iter().filter_map(|p| p["agent"].as_str()).collect();
        bee_ids.iter().all(|id| agents.iter().any(|a| a.contains(id.as_str()))).then_some(v)
    });
    eprintln!("latest pings through the ALB: {latest}");

    // A record measured in a bee box is archived in S3 by the worker box…
    let s3 = aws_sdk_s3::Client::new(&cloud.sdk());
    let desc: Value = serde_json::from_str(&cloud.ok(&["stacks", "describe", SWARM, "-o", "json"])).unwrap();
    let bucket = desc["bucket"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let archived = wait("an archived record from a bee box in S3", Duration::from_secs(150), dump, || {
        let list = rt.block_on(s3.list_objects_v2().bucket(&bucket).send()).ok()?;
        for o in list.contents() {
            let obj = rt.block_on(s3.get_object().bucket(&bucket).key(o.key()?).send()).ok()?;
            let bytes = rt.block_on(obj.body.collect()).ok()?.into_bytes();
            let mut text = String::new();
            flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_string(&mut text).ok()?;
            if let Some(l) = text.lines().find(|l| bee_ids.iter().any(|id| l.contains(id.as_str()))) {
                return Some(l.to_string());
            }
        }
        None
    });
    eprintln!("archived record: {archived}");
    // …and written to InfluxDB on the metrics box by the indexer box.
    let q = "SELECT count(loss) FROM ping GROUP BY agent";
    let influx = wait("points from both bee boxes in InfluxDB", Duration::from_secs(90), dump, || {
        let o = cloud.run(&[
            "local",
            "exec",
            &metrics_id,
            "--",
            "curl",
            "-sfG",
            "http://127.0.0.1:8086/query",
            "--data-urlencode",
            "db=tyrell",
            "--data-urlencode",
            &format!("q={q}"),
        ]);
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        bee_ids.iter().all(|id| t.contains(id.as_str())).then_some(t)
    });
    eprintln!("InfluxDB: {influx}");

    // The worker's stack made its termination lifecycle hook (the emulator alone does not:
    // local/emulator/serve.py), and scale-in holds the box while its drain path stops the
    // worker: the box is seen in Terminating:Wait, then it goes.
    let asg = aws_sdk_autoscaling::Client::new(&cloud.sdk());
    let groups = rt.block_on(asg.describe_auto_scaling_groups().send()).expect("DescribeAutoScalingGroups");
    let tagged = |g: &aws_sdk_autoscaling::types::AutoScalingGroup, k: &str, v: &str| {
        g.tags().iter().any(|t| t.key() == Some(k) && t.value() == Some(v))
    };
    let group = groups
        .auto_scaling_groups()
        .iter()
        .find(|g| tagged(g, "tyrell:role", "worker") && tagged(g, "tyrell:version", &workers))
        .and_then(|g| g.auto_scaling_group_name())
        .expect("the worker version's group")
        .to_string();
    let hooks = rt.block_on(asg.describe_lifecycle_hooks().auto_scaling_group_name(&group).send()).unwrap();
    let hook = hooks
        .lifecycle_hooks()
        .iter()
        .find(|h| h.lifecycle_transition() == Some("autoscaling:EC2_INSTANCE_TERMINATING"))
        .unwrap_or_else(|| panic!("the worker group {group} has no termination hook: {hooks:?}"));
    assert_eq!(hook.heartbeat_timeout(), Some(90), "{hook:?}");
    let worker_id = cloud.boxes("worker")[0]["instance"].as_str().unwrap().to_string();
    cloud.ok(&["workers", "scale", SWARM, &workers, "0"]);
    wait("the worker box held in Terminating:Wait", Duration::from_secs(30), dump, || {
        cloud
            .boxes("worker")
            .iter()
            .any(|b| b["instance"] == worker_id.as_str() && b["lifecycle"] == "Terminating:Wait")
            .then_some(())
    });
    let drained = Instant::now();
    wait("the held worker box gone once its service stopped", Duration::from_secs(95), dump, || {
        cloud.boxes("worker").is_empty().then_some(())
    });
    let log = std::fs::read_to_string(
        std::path::Path::new(&std::env::var("TYRELL_LOCAL_STATE").unwrap_or("/run/tyrell-local".into()))
            .join(&cloud.name)
            .join("runner.log"),
    )
    .unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains(&worker_id) && l.contains("its service stopped")),
        "the hold did not end by the worker's drain (runner log):\n{}",
        log.lines().filter(|l| l.contains(&worker_id)).collect::<Vec<_>>().join("\n")
    );
    eprintln!("worker drain on scale-in: held {:.1}s", drained.elapsed().as_secs_f64());

    // A router canary release under a steady request load through the ALB fails nothing.
    let r2 = cloud.ok(&["routers", "create", "-a", "latest", "-s", "2", SWARM]);
    let load = RequestLoad::start(&alb, Duration::from_millis(20));
    let t = Instant::now();
    cloud.ok(&["traffic", "elb", SWARM, "--router", &r2, "--canary", "50", "--bake", "10", "--timeout", "5m"]);
    let switch_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let (sent, errors) = load.stop();
    let failed = errors.len();
    eprintln!("router canary switch: {switch_s:.1}s; {sent} requests through the ALB, {failed} failed");
    assert!(sent > 100, "the load was too small to mean anything: {sent}");
    assert_eq!(failed, 0, "requests failed during the canary: {errors:?}");

    // Scale-in: one bee box goes.
    cloud.ok(&["bees", "scale", SWARM, &bees, "1"]);
    wait("a bee box gone after scale-in (it hands over first)", Duration::from_secs(150), dump, || {
        (cloud.boxes("bee").len() == 1).then_some(())
    });

    // A router box whose health check fails makes the gate refuse the switch.
    let r3 = cloud.ok(&["routers", "create", "-a", "latest", "-s", "1", SWARM]);
    let r3_box = wait("the new router box booted", Duration::from_secs(120), dump, || {
        cloud
            .boxes("router")
            .into_iter()
            .find(|b| b["version"] == r3.as_str() && b["state"] == "booted" && b["service"] == "active")
    });
    let r3_id = r3_box["instance"].as_str().unwrap().to_string();
    cloud.exec(&r3_id, &["systemctl", "stop", "tyrell-router.service"]);
    let o = cloud.run(&["traffic", "elb", SWARM, "--router", &r3, "--timeout", "45s"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the gate let a router with a failing health check take traffic:\n{err}");
    assert!(err.contains(&r3_id), "the refusal names the unhealthy box:\n{err}");
    let live = cloud.ok(&["traffic", "elb", SWARM, "-o", "json"]);
    assert!(live.contains(&r2) && !live.contains(&format!("\"{r3}\": 100")), "{live}");
    // The swarm still answers through the ALB.
    assert_eq!(http(&alb, "GET", "/pings/latest", &[], "").map(|r| r.0).ok(), Some(200));
    eprintln!("whole test: {:.1}s", started.elapsed().as_secs_f64());
}
