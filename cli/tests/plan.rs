//! `tyrell plan|up|down FILE` through the real binary against the emulator: a plan file
//! builds a swarm, a second `up` changes nothing, a changed size or image goes out as a
//! new version and a gated switch, `down` removes it all, and bad plan files are refused
//! at their place (FILE:LINE:COLUMN) with nothing changed. "Changes nothing" is counted:
//! every call goes through testkit's proxy (which records each call's action, and here
//! throttles none), and no call may be a mutating one.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use testkit::throttle::ThrottlingProxy;

/// Whether an API action only reads (`Describe*`, `Get*`, `List*`, S3 `GET`/`HEAD`).
fn reads_only(action: &str) -> bool {
    ["Describe", "Get", "List", "Head"].iter().any(|p| action.starts_with(p))
        || action == "S3 GET"
        || action == "S3 HEAD"
}

/// A run of tyrell through a call-recording proxy: its output, the mutating calls it
/// made, its AWS call count (`-v`) and its wall time.
struct Run {
    out: Output,
    /// Every call's action, in order.
    actions: Vec<String>,
    /// Every call's signed region, in order.
    regions: Vec<String>,
    mutating: Vec<String>,
    calls: usize,
    took: Duration,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout()))
    }
    fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    fn ok(self) -> Run {
        assert!(self.out.status.success(), "expected success:\nstdout:\n{}\nstderr:\n{}", self.stdout(), self.stderr());
        self
    }
}

/// `tyrell -v ARGS` in `dir` (where the plan file is), every call through a recording proxy.
fn counted(dir: &Path, args: &[&str]) -> Run {
    counted_with(dir, &[], args)
}

/// [`counted`] with more environment variables.
fn counted_with(dir: &Path, env: &[(&str, &Path)], args: &[&str]) -> Run {
    let proxy = ThrottlingProxy::start(&emulator().url, |_| false);
    let started = Instant::now();
    let mut cmd = tyrell();
    cmd.envs(env.iter().map(|(k, v)| (*k, *v)));
    let out = cmd.env("AWS_ENDPOINT_URL", &proxy.url).current_dir(dir).arg("-v").args(args).output().unwrap();
    let took = started.elapsed();
    let seen = proxy.calls();
    let actions: Vec<String> = seen.iter().map(|s| s.call.action.clone()).collect();
    let regions: Vec<String> = seen.into_iter().map(|s| s.call.region).collect();
    let mutating: Vec<String> = actions.iter().filter(|a| !reads_only(a)).cloned().collect();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let calls = err
        .lines()
        .find(|l| l.contains(" AWS API calls in "))
        .and_then(|l| l.split(" AWS API calls").next())
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Run { out, actions, regions, mutating, calls, took }
}

/// `v` is an object with exactly these keys (the shapes of docs/PLAN.md, "--output json").
fn keys(v: &Value, want: &[&str]) {
    let mut have: Vec<&str> =
        v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().map(|k| k.as_str()).collect();
    let mut want = want.to_vec();
    have.sort();
    want.sort();
    assert_eq!(have, want, "{v:#}");
}

/// Two distinct image ids that exist in the emulator (its built-in images).
fn two_amis() -> (String, String) {
    block_on(async {
        let ec2 = emulator().ec2().await;
        let out = ec2.describe_images().owners("amazon").send().await.unwrap();
        let ids: Vec<String> = out
            .images()
            .iter()
            .filter_map(|i| i.image_id())
            .filter(|id| id.len() == 12 || id.len() == 21)
            .map(str::to_string)
            .collect();
        (ids[0].clone(), ids.iter().find(|i| **i != ids[0]).unwrap().clone())
    })
}

/// (desired capacity, tyrell:active tag) of an Auto Scaling group.
fn group(name: &str) -> (i32, Option<String>) {
    group_in(&emulator().region, name)
}

/// The swarm's stacks, by name.
fn stacks_of(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = stack_names().into_iter().filter(|n| n.starts_with(prefix)).collect();
    v.sort();
    v
}

/// The one version stack of `role` in swarm `sw` that is not in `before` (made by the last `up`).
fn new_version(sw: &str, role: &str, before: &[String]) -> String {
    let made: Vec<String> = stacks_of(&format!("{sw}-{role}-")).into_iter().filter(|s| !before.contains(s)).collect();
    assert_eq!(made.len(), 1, "one new {role} version: {made:?}");
    made[0].clone()
}

fn plan_text(sw: &str, net: &str, metrics: &str, ami: &str, bee_ami: &str, router_size: u32) -> String {
    format!(
        r#"# a swarm in the home region
swarm = "{sw}"

[networks.{net}]
cidr = "10.30.0.0/16"
azs = 2

[base]
network = "{net}"
allow_cidrs = ["203.0.113.0/24"]

[metrics]
name = "{metrics}"
network = "{net}"
image = "{ami}"

[roles.broker]
image = "{ami}"
size = 1

[roles.router]
image = "{ami}"
size = {router_size}
after = ["broker"]

[roles.bee]
image = "{bee_ami}"
size = 2
after = ["broker"]
targets = ["198.51.100.7", "example.org"]

[roles.worker]
image = "{ami}"
size = 1
"#
    )
}

#[test]
fn a_plan_is_shown_built_converged_updated_and_removed() {
    let (ami, other) = two_amis();
    let sw = unique("pl");
    let net = unique("pln");
    let metrics = unique("plm");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("swarm.toml");
    std::fs::write(&file, plan_text(&sw, &net, &metrics, &ami, &ami, 2)).unwrap();

    // plan: everything to create, nothing created.
    let shown = counted(dir.path(), &["plan", "swarm.toml", "-o", "json"]).ok();
    assert!(shown.mutating.is_empty(), "plan made mutating calls: {:?}", shown.mutating);
    let p = shown.json();
    keys(&p, &["file", "swarm", "region", "changes", "unchanged", "notes"]);
    let changes = p["changes"].as_array().unwrap();
    for c in changes {
        keys(c, &["action", "kind", "name", "region", "what", "parameters", "template", "blocked"]);
    }
    let kinds: Vec<(&str, &str)> =
        changes.iter().map(|c| (c["action"].as_str().unwrap(), c["kind"].as_str().unwrap())).collect();
    assert_eq!(
        kinds,
        [
            ("create", "network"),
            ("create", "metrics"),
            ("create", "base"),
            ("create", "version"),
            ("create", "version"),
            ("create", "version"),
            ("create", "version"),
            ("switch", "traffic"),
            ("switch", "traffic"),
        ],
        "{p:#}"
    );
    // The broker goes live before the router (the router's `after`).
    let switched: Vec<&str> =
        changes.iter().filter(|c| c["action"] == "switch").map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(switched, ["broker", "router"]);
    assert!(changes.iter().all(|c| c["blocked"].is_null()), "{p:#}");
    assert!(p["notes"][0].as_str().unwrap().contains("watch list"), "{p:#}");
    let table = counted(dir.path(), &["plan", "swarm.toml"]).ok().stdout();
    assert!(table.contains("ACTION") && table.contains(&net) && table.contains("switch"), "{table}");
    assert!(stacks_of(&sw).is_empty() && stack(&net).is_none() && stack(&metrics).is_none(), "plan created stacks");

    // up from nothing.
    let built = counted(dir.path(), &["up", "swarm.toml", "-o", "json"]).ok();
    let mut by_action = std::collections::BTreeMap::<&str, usize>::new();
    for a in &built.actions {
        *by_action.entry(a.as_str()).or_default() += 1;
    }
    eprintln!(
        "MEASURE up from nothing: {} AWS API calls ({} mutating), {:.2}s wall; by action: {by_action:?}",
        built.calls,
        built.mutating.len(),
        built.took.as_secs_f64()
    );
    assert_eq!(built.calls, built.actions.len(), "the -v count is the calls the proxy saw");
    let done = built.json();
    keys(&done, &["file", "swarm", "region", "changes", "created_versions", "switches", "notes"]);
    let reported: Vec<&str> =
        done["switches"].as_array().unwrap().iter().map(|w| w["role"].as_str().unwrap()).collect();
    assert_eq!(reported, ["broker", "router"], "each switch with its release report: {done:#}");
    assert!(done["switches"][1]["report"]["phases"].as_array().is_some_and(|p| !p.is_empty()), "{done:#}");
    assert_eq!(done["changes"].as_array().unwrap().len(), 9, "{done:#}");
    let n = stack(&net).expect("the network");
    assert_eq!((n.tags["tyrell:role"].as_str(), n.tags["tyrell:stack"].as_str()), ("network", net.as_str()));
    assert_eq!(stack(&metrics).expect("the metrics box").tags["tyrell:role"], "metrics");
    let base = stack(&sw).expect("the base stack");
    assert_eq!(base.tags["tyrell:role"], "base");
    let listener = base.outputs["AlbListenerArn"].clone();
    let mut versions = Vec::new();
    for (role, size) in [("broker", 1), ("router", 2), ("bee", 2), ("worker", 1)] {
        let name = new_version(&sw, role, &[]);
        let s = stack(&name).unwrap();
        assert_eq!((s.tags["tyrell:role"].as_str(), s.tags["tyrell:stack"].as_str()), (role, sw.as_str()));
        let (desired, active) = group(&s.outputs["AutoScalingGroupName"]);
        assert_eq!(desired, size, "{role} size");
        match role {
            "bee" | "worker" => assert_eq!(active.as_deref(), Some("true"), "{role} is active"),
            "router" => assert_eq!(
                forwards(&listener),
                [(s.outputs["TargetGroupArn"].clone(), 1)],
                "the ALB forwards to the router"
            ),
            _ => assert_eq!(forwards(&base.outputs["BrokerListenerArn"]), [(s.outputs["TargetGroupArn"].clone(), 1)]),
        }
        versions.push(name);
    }

    // A second up: nothing to do, no mutating call, and it says so.
    let again = counted(dir.path(), &["up", "swarm.toml"]).ok();
    eprintln!("MEASURE no-change up: {} AWS API calls, {:.2}s wall", again.calls, again.took.as_secs_f64());
    assert!(again.mutating.is_empty(), "a no-change up made mutating calls: {:?}", again.mutating);
    assert!(again.stdout().starts_with("no changes"), "{}", again.stdout());
    assert_eq!(stacks_of(&sw).len(), 5);

    // A changed router size and bee image: updates in the plan, then new versions and switches.
    std::fs::write(&file, plan_text(&sw, &net, &metrics, &ami, &other, 3)).unwrap();
    let shown = counted(dir.path(), &["plan", "swarm.toml", "-o", "json"]).ok();
    assert!(shown.mutating.is_empty(), "{:?}", shown.mutating);
    let p = shown.json();
    let updates: Vec<&Value> = p["changes"].as_array().unwrap().iter().filter(|c| c["action"] == "update").collect();
    assert_eq!(updates.len(), 2, "{p:#}");
    let router = updates.iter().find(|c| c["what"].as_str().unwrap().starts_with("router")).unwrap();
    assert_eq!(router["parameters"]["DesiredCapacity"], serde_json::json!({"from": "2", "to": "3"}), "{p:#}");
    let bee = updates.iter().find(|c| c["what"].as_str().unwrap().starts_with("bee")).unwrap();
    assert_eq!(bee["parameters"]["AmiId"], serde_json::json!({"from": ami, "to": other}), "{p:#}");
    let switches = p["changes"].as_array().unwrap().iter().filter(|c| c["action"] == "switch").count();
    assert_eq!(switches, 2, "{p:#}");
    assert_eq!(stacks_of(&sw).len(), 5, "plan created nothing");

    counted(dir.path(), &["up", "swarm.toml"]).ok();
    let router = new_version(&sw, "router", &versions);
    let r = stack(&router).unwrap();
    assert_eq!(group(&r.outputs["AutoScalingGroupName"]).0, 3);
    assert_eq!(forwards(&listener), [(r.outputs["TargetGroupArn"].clone(), 1)], "the ALB moved to the new router");
    let bee = new_version(&sw, "bee", &versions);
    let b = stack(&bee).unwrap();
    assert_eq!(group(&b.outputs["AutoScalingGroupName"]), (2, Some("true".into())));
    let old_bee = stack(&versions[2]).unwrap();
    assert_eq!(group(&old_bee.outputs["AutoScalingGroupName"]), (0, Some("false".into())), "the old bees scaled in");
    let again = counted(dir.path(), &["up", "swarm.toml"]).ok();
    assert!(again.mutating.is_empty(), "{:?}", again.mutating);

    // The file names a version that exists but is not live: a gated switch back to it.
    let old_router = versions[1].trim_start_matches(&format!("{sw}-router-")).to_string();
    let with_version = |size: u32| {
        plan_text(&sw, &net, &metrics, &ami, &other, size)
            .replace(&format!("size = {size}\nafter"), &format!("size = {size}\nversion = \"{old_router}\"\nafter"))
    };
    std::fs::write(&file, with_version(3)).unwrap();
    let p = counted(dir.path(), &["plan", "swarm.toml", "-o", "json"]).ok().json();
    let changes = p["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{p:#}");
    assert_eq!((changes[0]["action"].as_str(), changes[0]["name"].as_str()), (Some("switch"), Some("router")), "{p:#}");
    counted(dir.path(), &["up", "swarm.toml"]).ok();
    let back = stack(&versions[1]).unwrap();
    assert_eq!(forwards(&listener), [(back.outputs["TargetGroupArn"].clone(), 1)], "the ALB is back on {old_router}");
    assert_eq!(group(&back.outputs["AutoScalingGroupName"]).0, 3, "at the file's size");
    // A named live version with another size: refused at its place (a new size is a new version).
    std::fs::write(&file, with_version(4)).unwrap();
    let refused = counted(dir.path(), &["up", "swarm.toml"]);
    assert_eq!(refused.code(), Some(exit::USAGE), "{}", refused.stderr());
    assert!(
        refused.stderr().contains("swarm.toml:21:8: roles.router") && refused.stderr().contains("new version id"),
        "{}",
        refused.stderr()
    );
    assert!(refused.mutating.is_empty(), "{:?}", refused.mutating);

    // Security group rules change in place: admin ranges of the base stack and the metrics box.
    let admin = with_version(3)
        .replace("allow_cidrs = [\"203.0.113.0/24\"]", "allow_cidrs = [\"198.51.100.0/24\", \"192.0.2.0/24\"]")
        .replace(
            &format!("name = \"{metrics}\"\n"),
            &format!("name = \"{metrics}\"\nallow_cidrs = [\"192.0.2.0/24\"]\n"),
        );
    std::fs::write(&file, &admin).unwrap();
    let p = counted(dir.path(), &["plan", "swarm.toml", "-o", "json"]).ok().json();
    let updates: Vec<(&str, &Value)> =
        p["changes"].as_array().unwrap().iter().map(|c| (c["kind"].as_str().unwrap(), &c["parameters"])).collect();
    assert_eq!(
        updates,
        [
            ("metrics", &serde_json::json!({"AdminCidrs": {"from": ",,,", "to": "192.0.2.0/24,,,"}})),
            (
                "base",
                &serde_json::json!({"AdminCidrs": {"from": "203.0.113.0/24,,,", "to": "198.51.100.0/24,192.0.2.0/24,,"}})
            ),
        ],
        "{p:#}"
    );
    let updated = counted(dir.path(), &["up", "swarm.toml"]).ok();
    assert_eq!(updated.mutating.iter().filter(|a| *a == "UpdateStack").count(), 2, "{:?}", updated.mutating);
    assert_eq!(forwards(&listener), [(back.outputs["TargetGroupArn"].clone(), 1)], "traffic stays where it was");
    assert_eq!(stack(&sw).unwrap().outputs, base.outputs, "the base stack's resources stay");
    let again = counted(dir.path(), &["up", "swarm.toml"]).ok();
    assert!(again.mutating.is_empty(), "{:?}", again.mutating);
    // A certificate ACM does not hold: refused at the base table before anything changes.
    let missing = format!("arn:aws:acm:{}:123456789012:certificate/0f1e2d3c", emulator().region);
    std::fs::write(&file, admin.replace("[base]\n", &format!("[base]\ncertificate_arn = \"{missing}\"\n"))).unwrap();
    let refused = counted(dir.path(), &["up", "swarm.toml"]);
    assert_eq!(refused.code(), Some(exit::USAGE), "{}", refused.stderr());
    assert!(
        refused.stderr().contains("swarm.toml:9:19: [base]") && refused.stderr().contains("no such certificate"),
        "{}",
        refused.stderr()
    );
    assert!(refused.mutating.is_empty(), "{:?}", refused.mutating);
    // An issued certificate would replace the listeners: refused at the base table, nothing changed.
    let cert = imported_certificate(&emulator().region, &["swarm.example.org"]);
    std::fs::write(&file, admin.replace("[base]\n", &format!("[base]\ncertificate_arn = \"{cert}\"\n"))).unwrap();
    let refused = counted(dir.path(), &["up", "swarm.toml"]);
    assert_eq!(refused.code(), Some(exit::USAGE), "{}", refused.stderr());
    assert!(
        refused.stderr().contains("swarm.toml:8:1: base stack") && refused.stderr().contains("CertificateArn"),
        "{}",
        refused.stderr()
    );
    assert!(refused.mutating.is_empty(), "{:?}", refused.mutating);
    std::fs::write(&file, &admin).unwrap();

    // down: refused while the archive holds data, then told to delete it.
    let bucket = json(&["stacks", "describe", &sw])["bucket"].as_str().unwrap().to_string();
    block_on(async {
        let s3 = emulator().s3().await;
        s3.put_object()
            .bucket(&bucket)
            .key("2026/11/30/05/x.ndjson.gz")
            .body(b"x".to_vec().into())
            .send()
            .await
            .unwrap();
    });
    let refused = counted(dir.path(), &["down", "swarm.toml"]);
    assert_eq!(refused.code(), Some(exit::IN_USE), "{}", refused.stderr());
    assert!(
        refused.stderr().contains("--delete-archive") && refused.stderr().contains(&bucket),
        "{}",
        refused.stderr()
    );
    assert!(refused.mutating.is_empty(), "{:?}", refused.mutating);
    assert_eq!(stacks_of(&sw).len(), 7);
    let would = counted(dir.path(), &["plan", "swarm.toml", "--down", "--delete-archive", "-o", "json"]).ok();
    assert!(would.mutating.is_empty());
    keys(&would.json(), &["file", "swarm", "region", "changes", "deleted_objects", "kept"]);
    assert_eq!(
        would.json()["changes"].as_array().unwrap().len(),
        9,
        "7 swarm stacks, metrics, network: {}",
        would.stdout()
    );

    let gone = counted(dir.path(), &["down", "swarm.toml", "--delete-archive"]);
    // The emulator cannot delete a network's internet gateway and routes
    // (../shared/EMULATOR.md): the network's delete is refused there, and its stack vanishes.
    assert!(gone.out.status.success() || gone.stderr().contains("DependencyViolation"), "{}", gone.stderr());
    assert!(stacks_of(&sw).is_empty(), "left: {:?}", stacks_of(&sw));
    assert!(stack(&metrics).is_none() && stack(&net).is_none());
    let empty = block_on(async {
        let s3 = emulator().s3().await;
        s3.list_objects_v2().bucket(&bucket).send().await.map(|o| o.contents().is_empty()).unwrap_or(true)
    });
    assert!(empty, "the archive was deleted with the swarm");
    let nothing = counted(dir.path(), &["down", "swarm.toml"]).ok();
    assert!(nothing.stdout().starts_with("nothing to remove"), "{}", nothing.stdout());
    assert!(nothing.mutating.is_empty());
}

/// The three-region plan of issue 12: a home region (network, base stack with the
/// broker's TLS listener, a broker and bees) and two bee regions (each a network, the bee
/// region — peering, bee-region and bee-link stacks — and a bee fleet). `plan` shows it
/// all and makes nothing; `up` builds it, read back through AWS in each region; a second
/// `up` makes no mutating call; a changed size and image in one bee region is an update
/// there and a gated switch; `down` removes everything in every region. MEASURE lines:
/// the calls (per region) and wall time of `up` from nothing and of a no-change `up`.
#[test]
fn a_three_region_plan_is_shown_built_converged_updated_and_removed() {
    let (ami, other) = two_amis();
    let home = emulator().region.clone();
    let (r1, r2) = ("eu-west-1", "ap-southeast-2");
    let sw = unique("p3");
    let (hn, n1, n2) = (unique("p3h"), unique("p3e"), unique("p3a"));
    let mqtt = format!("mqtt.{sw}.example.org");
    let cert = imported_certificate(&home, &[&mqtt]);
    let dir = tempfile::tempdir().unwrap();
    let text = |size2: u32, image2: &str| {
        format!(
            r#"swarm = "{sw}"

[networks.{hn}]
cidr = "10.60.0.0/16"

[networks.{n1}]
region = "{r1}"
cidr = "10.61.0.0/16"

[networks.{n2}]
region = "{r2}"
cidr = "10.62.0.0/16"

[base]
network = "{hn}"
broker_certificate_arn = "{cert}"
broker_dns_name = "{mqtt}"

[roles.broker]
image = "{ami}"
size = 1

[roles.bee]
image = "{ami}"
size = 2
after = ["broker"]
targets = ["198.51.100.7"]

[bees.{r1}]
network = "{n1}"
size = 3

[bees.{r2}]
network = "{n2}"
image = "{image2}"
size = {size2}
"#
        )
    };
    let file = dir.path().join("three.toml");
    let everything = || {
        let mut v = stacks_in(&home, &sw);
        v.extend(stacks_in(&home, &hn));
        for (r, n) in [(r1, &n1), (r2, &n2)] {
            v.extend(stacks_in(r, &sw));
            v.extend(stacks_in(r, n));
        }
        v
    };

    // Bad input in a bee region's table: refused at its place, nothing made anywhere.
    std::fs::write(&file, text(2, &ami).replace("size = 3\n", "sizes = 3\n")).unwrap();
    let r = counted(dir.path(), &["up", "three.toml"]);
    assert_eq!(r.code(), Some(exit::USAGE), "{}", r.stderr());
    assert!(r.stderr().contains("three.toml:31:1: unknown field `sizes`"), "{}", r.stderr());
    std::fs::write(&file, text(2, "ami-0000000f")).unwrap();
    let r = counted(dir.path(), &["up", "three.toml"]);
    assert_eq!(r.code(), Some(exit::NOT_FOUND), "{}", r.stderr());
    assert!(
        r.stderr().contains("three.toml:35:9: image ami-0000000f")
            && r.stderr().contains(&format!("does not exist in {r2}")),
        "{}",
        r.stderr()
    );
    assert!(r.mutating.is_empty(), "{:?}", r.mutating);

    // plan: everything in three regions, nothing made.
    std::fs::write(&file, text(2, &ami)).unwrap();
    let shown = counted(dir.path(), &["plan", "three.toml", "-o", "json"]).ok();
    assert!(shown.mutating.is_empty(), "plan made mutating calls: {:?}", shown.mutating);
    let p = shown.json();
    let rows: Vec<(String, String, String)> = p["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(c["blocked"].is_null(), "{c}");
            (
                c["action"].as_str().unwrap().into(),
                c["kind"].as_str().unwrap().into(),
                c["region"].as_str().unwrap().into(),
            )
        })
        .collect();
    let row = |a: &str, k: &str, r: &str| (a.to_string(), k.to_string(), r.to_string());
    // Networks first, in the order of their names (any region); bee regions last, in the
    // order of the regions' names (the file's tables are read sorted by key).
    let mut networks: Vec<(String, String, String)> = rows[..3].to_vec();
    networks.sort();
    let mut want = vec![row("create", "network", &home), row("create", "network", r1), row("create", "network", r2)];
    want.sort();
    assert_eq!(networks, want, "{p:#}");
    assert_eq!(
        rows[3..],
        [
            row("create", "base", &home),
            row("create", "version", &home),
            row("create", "version", &home),
            row("switch", "traffic", &home),
            row("create", "bee-region", r2),
            row("create", "version", r2),
            row("create", "bee-region", r1),
            row("create", "version", r1),
        ],
        "{p:#}"
    );
    let table = counted(dir.path(), &["plan", "three.toml"]).ok().stdout();
    assert!(table.contains(r1) && table.contains(r2) && table.contains("bee-region"), "{table}");
    assert!(everything().is_empty(), "plan made stacks: {:?}", everything());

    // up from nothing.
    let built = counted(dir.path(), &["up", "three.toml", "-o", "json"]).ok();
    let per_region = |run: &Run| {
        let mut m = std::collections::BTreeMap::<String, usize>::new();
        for c in &run.regions {
            *m.entry(c.clone()).or_default() += 1;
        }
        m
    };
    eprintln!(
        "MEASURE up of a three-region swarm from nothing: {} AWS API calls ({} mutating), {:.2}s wall; per region: {:?}",
        built.calls,
        built.mutating.len(),
        built.took.as_secs_f64(),
        per_region(&built)
    );
    assert_eq!(built.calls, built.actions.len(), "the -v count is the calls the proxy saw");
    let done = built.json();
    assert_eq!(done["changes"].as_array().unwrap().len(), 11, "{done:#}");
    let created = done["created_versions"].as_object().unwrap();
    assert!(created.contains_key(&format!("bee ({r1})")) && created.contains_key(&format!("bee ({r2})")), "{done:#}");

    // Read back through AWS, region by region.
    let (btags, base) = stack_in(&home, &sw).expect("the base stack");
    assert_eq!(btags["tyrell:role"], "base");
    assert_eq!((base["BrokerTls"].as_str(), base["BrokerPort"].as_str()), ("true", "8883"));
    let tls = block_on(async {
        let elb = aws_sdk_elasticloadbalancingv2::Client::new(&sdk_in(&home).await);
        let l = elb.describe_listeners().listener_arns(&base["BrokerTlsListenerArn"]).send().await.unwrap();
        let l = &l.listeners()[0];
        (
            l.protocol().map(|p| p.as_str().to_string()),
            l.port(),
            l.certificates().iter().filter_map(|c| c.certificate_arn()).map(str::to_string).collect::<Vec<_>>(),
        )
    });
    // HTTPS is the emulator's analogue of TLS: every load balancer is an ALB there
    // (roles/base/template.yaml, OnEmulator; cli/tests/tls.rs checks the template's TLS).
    assert_eq!(tls, (Some("HTTPS".to_string()), Some(8883), vec![cert.clone()]), "the broker's TLS listener");
    let mut ranged = ranged_ingress(&home, &base["NlbSecurityGroupId"]);
    ranged.sort();
    assert_eq!(
        ranged,
        [(8883, 8883, ["10.61.128.0/17".to_string(), "10.62.128.0/17".to_string()].into_iter().collect())],
        "from address ranges the NLB admits only 8883, only from the bee regions' private ranges"
    );
    let home_bee = stacks_in(&home, &format!("{sw}-bee-"));
    assert_eq!(home_bee.len(), 1, "{home_bee:?}");
    let (_, hb) = stack_in(&home, &home_bee[0]).unwrap();
    assert_eq!(group_in(&home, &hb["AutoScalingGroupName"]), (2, Some("true".into())));
    let mut first = std::collections::BTreeMap::new();
    for (r, n, cidr, size) in [(r1, &n1, "10.61.0.0/16", 3), (r2, &n2, "10.62.0.0/16", 2)] {
        let (ntags, nout) = stack_in(r, n).unwrap_or_else(|| panic!("network {n} in {r}"));
        assert_eq!(ntags["tyrell:role"], "network");
        let (rtags, rout) = stack_in(r, &format!("{sw}-region")).unwrap_or_else(|| panic!("the bee region {r}"));
        assert_eq!(
            (rtags["tyrell:role"].as_str(), rtags["tyrell:home-region"].as_str()),
            ("bee-region", home.as_str())
        );
        assert_eq!((rout["BrokerHost"].as_str(), rout["BrokerPort"].as_str()), (mqtt.as_str(), "8883"));
        assert_eq!(rout["VpcCidr"], cidr);
        assert_eq!(peering(r, &rout["PeeringConnectionId"]).as_deref(), Some("active"));
        assert_eq!(peering(&home, &rout["PeeringConnectionId"]).as_deref(), Some("active"));
        assert!(ranged_ingress(r, &rout["BeeSecurityGroupId"]).is_empty(), "bees in {r} admit nothing from a range");
        assert!(stack_in(&home, &format!("{sw}-link-{r}")).is_some(), "the link stack of {r}");
        assert_eq!(nout["VpcId"], rout["VpcId"]);
        let bees = stacks_in(r, &format!("{sw}-bee-"));
        assert_eq!(bees.len(), 1, "{r}: {bees:?}");
        let (vtags, vout) = stack_in(r, &bees[0]).unwrap();
        assert_eq!((vtags["tyrell:role"].as_str(), vtags["tyrell:stack"].as_str()), ("bee", sw.as_str()));
        assert_eq!(group_in(r, &vout["AutoScalingGroupName"]), (size, Some("true".into())), "{r}");
        first.insert(r, (bees[0].clone(), vout["AutoScalingGroupName"].clone(), rout["PeeringConnectionId"].clone()));
    }

    // A second up: no mutating call in any region.
    let again = counted(dir.path(), &["up", "three.toml"]).ok();
    eprintln!(
        "MEASURE no-change up of the three-region swarm: {} AWS API calls, {:.2}s wall; per region: {:?}; by action: {:?}",
        again.calls,
        again.took.as_secs_f64(),
        per_region(&again),
        again.actions.iter().fold(std::collections::BTreeMap::<&str, usize>::new(), |mut m, a| {
            *m.entry(a.as_str()).or_default() += 1;
            m
        })
    );
    assert!(again.mutating.is_empty(), "a no-change up made mutating calls: {:?}", again.mutating);
    assert!(again.stdout().starts_with("no changes"), "{}", again.stdout());

    // One bee region's size and image change: an update there and a gated switch, there only.
    std::fs::write(&file, text(4, &other)).unwrap();
    let p = counted(dir.path(), &["plan", "three.toml", "-o", "json"]).ok().json();
    let changes: Vec<(&str, &str, &str)> = p["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["action"].as_str().unwrap(), c["kind"].as_str().unwrap(), c["region"].as_str().unwrap()))
        .collect();
    assert_eq!(changes, [("update", "version", r2), ("switch", "traffic", r2)], "{p:#}");
    assert_eq!(p["changes"][0]["parameters"]["DesiredCapacity"], serde_json::json!({"from": "2", "to": "4"}));
    assert_eq!(p["changes"][0]["parameters"]["AmiId"], serde_json::json!({"from": ami, "to": other}));
    let updated = counted(dir.path(), &["up", "three.toml", "-o", "json"]).ok().json();
    assert_eq!(updated["switches"][0]["role"], "bee", "{updated:#}");
    let bees = stacks_in(r2, &format!("{sw}-bee-"));
    assert_eq!(bees.len(), 2, "{bees:?}");
    let new = bees.iter().find(|b| **b != first[r2].0).unwrap();
    let (_, nv) = stack_in(r2, new).unwrap();
    assert_eq!(group_in(r2, &nv["AutoScalingGroupName"]), (4, Some("true".into())), "the new bees are live");
    assert_eq!(group_in(r2, &first[r2].1), (0, Some("false".into())), "the old bees scaled in");
    assert_eq!(group_in(r1, &first[r1].1), (3, Some("true".into())), "the other bee region is untouched");
    let again = counted(dir.path(), &["up", "three.toml"]).ok();
    assert!(again.mutating.is_empty(), "{:?}", again.mutating);

    // down: everything, in every region.
    let would = counted(dir.path(), &["plan", "three.toml", "--down", "-o", "json"]).ok();
    assert!(would.mutating.is_empty());
    let regions: BTreeSet<String> =
        would.json()["changes"].as_array().unwrap().iter().map(|c| c["region"].as_str().unwrap().to_string()).collect();
    assert_eq!(regions, [home.clone(), r1.to_string(), r2.to_string()].into_iter().collect(), "{}", would.stdout());
    let gone = counted(dir.path(), &["down", "three.toml"]);
    // The emulator cannot delete a network's internet gateway (../shared/EMULATOR.md): each
    // network's delete is refused there, after which its stack is gone.
    assert!(gone.out.status.success() || gone.stderr().contains("DependencyViolation"), "{}", gone.stderr());
    assert!(everything().is_empty(), "left: {:?}", everything());
    for r in [r1, r2] {
        assert!(stack_in(&home, &format!("{sw}-link-{r}")).is_none(), "the link stack of {r}");
        assert_eq!(peering(r, &first[r].2), None, "the peering of {r} is gone");
    }
    let nothing = counted(dir.path(), &["down", "three.toml"]).ok();
    assert!(nothing.stdout().starts_with("nothing to remove"), "{}", nothing.stdout());
}

/// Bad plan files: one sentence naming the place, a non-zero exit, no mutating call.
#[test]
fn bad_plan_files_are_refused_at_their_place_and_change_nothing() {
    let (ami, _) = two_amis();
    let sw = unique("pb");
    let dir = tempfile::tempdir().unwrap();
    let good = format!(
        "swarm = \"{sw}\"\n\n[networks.{sw}-n]\n\n[base]\nnetwork = \"{sw}-n\"\n\n[roles.broker]\nimage = \"{ami}\"\n\n[roles.router]\nimage = \"{ami}\"\nafter = [\"broker\"]\n"
    );
    // Each: (how the file is changed, the exit code, the place and words the error must hold).
    let cases: Vec<(String, i32, &str, &str)> = vec![
        (good.replace("[base]\n", "[base]\nsubnet = \"x\"\n"), exit::USAGE, "p.toml:6:1:", "unknown field `subnet`"),
        (
            good.replace("swarm = ", "region = \"eu-west\"\nswarm = "),
            exit::USAGE,
            "p.toml:1:10:",
            "invalid AWS region \"eu-west\"",
        ),
        (
            good.replace(&format!("[roles.router]\nimage = \"{ami}\"\n"), "[roles.router]\n"),
            exit::USAGE,
            "p.toml:11:1:",
            "missing field `image`",
        ),
        (good.replace("network = \"", "network = \"x"), exit::USAGE, "p.toml:6:11:", "which the plan does not define"),
        (
            good.replace(
                &format!("[roles.broker]\nimage = \"{ami}\"\n"),
                &format!("[roles.broker]\nimage = \"{ami}\"\nafter = [\"router\"]\n"),
            ),
            exit::USAGE,
            "p.toml:",
            "makes a cycle",
        ),
        (
            good.replace("after = [\"broker\"]", "after = [\"brokers\"]"),
            exit::USAGE,
            "p.toml:13:10:",
            "not a role of this plan",
        ),
        (good.replace("[roles.router]", "[roles.routers]"), exit::USAGE, "p.toml:11:8:", "unknown role \"routers\""),
        (
            good.replace(&format!("image = \"{ami}\"\nafter"), "image = \"latest\"\nafter"),
            exit::NOT_FOUND,
            "p.toml:12:9:",
            "no router builds",
        ),
        (
            good.replace(&format!("image = \"{ami}\"\nafter"), "image = \"ami-0000000f\"\nafter"),
            exit::NOT_FOUND,
            "p.toml:12:9:",
            "does not exist",
        ),
        (good.replace("swarm = ", "swarm = [1]\nswarm_ = "), exit::USAGE, "p.toml:1:9:", "invalid type"),
        (format!("{good}\n[roles.broker]\nsize = 1\n"), exit::USAGE, "p.toml:", "duplicate"),
    ];
    for (text, code, place, words) in cases {
        std::fs::write(dir.path().join("p.toml"), &text).unwrap();
        for cmd in ["plan", "up", "down"] {
            let r = counted(dir.path(), &[cmd, "p.toml"]);
            let err = r.stderr();
            if cmd == "down" && code == exit::NOT_FOUND {
                // `down` does not resolve images: it removes what exists (nothing here).
                assert!(r.out.status.success(), "{err}");
                continue;
            }
            assert_eq!(r.code(), Some(code), "tyrell {cmd} on:\n{text}\n{err}");
            let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{err}"));
            assert!(
                line.starts_with(&format!("error: {place}")) && line.contains(words),
                "tyrell {cmd}: want {place} {words}:\n{err}"
            );
            assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
            assert!(!err.contains("panicked"), "{err}");
            assert!(r.out.stdout.is_empty(), "{}", r.stdout());
            assert!(r.mutating.is_empty(), "tyrell {cmd} made mutating calls: {:?}", r.mutating);
        }
    }
    assert!(stacks_of(&sw).is_empty(), "{:?}", stacks_of(&sw));
    // A file that is not there.
    let err = fails(exit::USAGE, &["plan", "/nonexistent/plan.toml"]);
    assert!(err.contains("cannot read plan file /nonexistent/plan.toml"), "{err}");
}

/// A role whose cloud-init would pass every file check but fail at its version's create
/// (user data over EC2's 16 KB), or a broker certificate that does not cover the broker's
/// name, is refused by `up` before the network, metrics box and base stack are made:
/// nothing half-changed.
#[test]
fn what_would_fail_late_is_refused_before_the_first_change() {
    let (ami, _) = two_amis();
    let roles = testkit::roles_copy();
    let ci = roles.path().join("roles/worker/cloud-init.yaml");
    let mut text = std::fs::read_to_string(&ci).unwrap();
    while text.len() < 17_000 {
        text.push_str("# padding to push the rendered user data over 16 KB\n");
    }
    std::fs::write(&ci, text).unwrap();
    let sw = unique("pw");
    let dir = tempfile::tempdir().unwrap();
    let plan = format!(
        "swarm = \"{sw}\"\n[networks.{sw}-n]\n[base]\nnetwork = \"{sw}-n\"\n[roles.bee]\nimage = \"{ami}\"\n[roles.worker]\nimage = \"{ami}\"\n"
    );
    std::fs::write(dir.path().join("p.toml"), plan).unwrap();
    let r = counted_with(dir.path(), &[("TYRELL_ROLES_DIR", &roles.path().join("roles"))], &["up", "p.toml"]);
    let err = r.stderr();
    assert!(!r.out.status.success(), "{err}");
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.starts_with("error: p.toml:7:8: roles.worker") && line.contains("16384"), "{err}");
    assert!(r.mutating.is_empty(), "{:?}", r.mutating);
    assert!(stacks_of(&sw).is_empty(), "{:?}", stacks_of(&sw));

    // A broker certificate ACM holds but that does not cover the broker's name: refused
    // before the network is made (the base stack comes after it).
    let cert = imported_certificate(&emulator().region, &["other.example.org"]);
    let plan = format!(
        "swarm = \"{sw}\"\n[networks.{sw}-n]\n[base]\nnetwork = \"{sw}-n\"\nbroker_certificate_arn = \"{cert}\"\nbroker_dns_name = \"mqtt.example.org\"\n[roles.bee]\nimage = \"{ami}\"\n"
    );
    std::fs::write(dir.path().join("c.toml"), plan).unwrap();
    let r = counted(dir.path(), &["up", "c.toml"]);
    let err = r.stderr();
    assert_eq!(r.code(), Some(exit::USAGE), "{err}");
    assert!(err.contains("c.toml:5:26: [base]") && err.contains("does not cover mqtt.example.org"), "{err}");
    assert!(r.mutating.is_empty(), "{:?}", r.mutating);
    assert!(stacks_of(&sw).is_empty(), "{:?}", stacks_of(&sw));
}

/// `latest:VERSION` (and `latest`) resolve to tyrell's build of the role, as `-a` does:
/// the plan shows the build's AMI id.
#[test]
fn latest_images_resolve_to_the_roles_builds() {
    let version = unique("b").replace('-', "");
    let image = block_on(async {
        let ec2 = emulator().ec2().await;
        let out =
            ec2.register_image().name(unique("tyrell-worker")).root_device_name("/dev/xvda").send().await.unwrap();
        let id = out.image_id().unwrap().to_string();
        let tag = |k: &str, v: &str| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build();
        ec2.create_tags()
            .resources(&id)
            .tags(tag("tyrell:role", "worker"))
            .tags(tag("tyrell:version", &version))
            .tags(tag("tyrell:built-by", "tyrell"))
            .send()
            .await
            .unwrap();
        id
    });
    let sw = unique("pi");
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "swarm = \"{sw}\"\n[networks.{sw}-n]\n[base]\nnetwork = \"{sw}-n\"\n[roles.worker]\nimage = \"latest:{version}\"\n"
    );
    std::fs::write(dir.path().join("p.toml"), text).unwrap();
    let shown = counted(dir.path(), &["plan", "p.toml", "-o", "json"]).ok();
    let p = shown.json();
    let worker = p["changes"].as_array().unwrap().iter().find(|c| c["kind"] == "version").unwrap();
    assert!(worker["what"].as_str().unwrap().contains(&image), "latest:{version} is {image}: {worker}");
    assert_eq!(worker["parameters"]["AmiId"]["to"], image.as_str(), "{worker}");
    assert!(shown.mutating.is_empty());
}
