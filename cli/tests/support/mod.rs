//! Shared by the end-to-end tests in tests/: run the real `tyrell` binary against the
//! emulator of this test process, and read AWS state back through the SDK.
#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use testkit::{unique, Emulator};

pub fn emulator() -> &'static Emulator {
    Emulator::shared()
}

/// A runtime for the SDK calls the tests make to check AWS state.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
        .block_on(f)
}

/// `tyrell` pointed at the emulator through the standard AWS chain (AWS_ENDPOINT_URL).
pub fn tyrell() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tyrell"));
    emulator().apply(&mut c);
    c.env_remove("TYRELL_ROLES_DIR").env_remove("TYRELL_LOG");
    c
}

fn show(args: &[&str], out: &Output) -> String {
    format!(
        "tyrell {}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn run(args: &[&str]) -> Output {
    tyrell().args(args).output().expect("run tyrell")
}

/// Runs tyrell, expects success, returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "expected success:\n{}", show(args, &out));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs tyrell with `-o json`, expects success and exactly one JSON document on stdout.
pub fn json(args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = ok(&a);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("stdout of tyrell {} is not one JSON document ({e}):\n{out}", a.join(" ")))
}

/// tyrell's exit codes, one per class of failure (`tyrell --help`, EXIT CODES).
pub mod exit {
    /// Any other failure.
    pub const OTHER: i32 = 1;
    /// Usage or bad input (clap's own usage errors too).
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    pub const EXISTS: i32 = 4;
    /// In use, or would lose data.
    pub const IN_USE: i32 = 5;
    pub const LOCKED: i32 = 6;
    /// The health gate or a bake refused, or a stack is not ready.
    pub const UNHEALTHY: i32 = 7;
    /// An AWS call failed, AWS was unreachable, a stack operation failed or timed out.
    pub const AWS: i32 = 8;
    pub const INTERRUPTED: i32 = 130;
}

/// Runs tyrell, expects failure with exit code `code` (see [`exit`]) and nothing on
/// stdout; returns stderr.
pub fn fails(code: i32, args: &[&str]) -> String {
    let out = run(args);
    assert_eq!(out.status.code(), Some(code), "expected exit code {code}:\n{}", show(args, &out));
    assert!(out.stdout.is_empty(), "a failure printed a result on stdout:\n{}", show(args, &out));
    String::from_utf8(out.stderr).unwrap()
}

/// An image id that exists in the emulator (one of its built-in images).
pub fn ami() -> String {
    static AMI: OnceLock<String> = OnceLock::new();
    AMI.get_or_init(|| {
        block_on(async {
            let ec2 = emulator().ec2().await;
            // The emulator's first DescribeImages loads its image catalogue; under the test
            // lanes' load it once answered 500 (seen in scripts/test): a bounded retry.
            let mut tries = 0;
            let out = loop {
                match ec2.describe_images().owners("amazon").send().await {
                    Ok(out) => break out,
                    Err(e) if tries < 4 => {
                        tries += 1;
                        eprintln!("DescribeImages failed ({e:?}); trying again ({tries} of 4)");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => panic!("DescribeImages failed 5 times: {e:?}"),
                }
            };
            out.images()
                .iter()
                .filter_map(|i| i.image_id())
                .find(|id| id.len() == 12 || id.len() == 21)
                .unwrap()
                .to_string()
        })
    })
    .clone()
}

/// A fresh network and base stack: returns (swarm name, vpc id).
pub fn swarm(prefix: &str) -> (String, String) {
    let net = unique(&format!("{prefix}n"));
    let vpc = json(&["network", "create", &net])["vpc_id"].as_str().unwrap().to_string();
    let name = unique(prefix);
    ok(&["stacks", "create", "-v", &vpc, &name]);
    (name, vpc)
}

/// Every CloudFormation stack name in the emulator that is not deleted.
pub fn stack_names() -> Vec<String> {
    block_on(async {
        let cfn = emulator().cloudformation().await;
        let out = cfn.describe_stacks().send().await.unwrap();
        out.stacks()
            .iter()
            .filter(|s| s.stack_status().map(|x| x.as_str()) != Some("DELETE_COMPLETE"))
            .map(|s| s.stack_name().unwrap().to_string())
            .collect()
    })
}

/// Creates a version of a fleet role with the test AMI: `tyrell NOUN create ... SWARM`.
pub fn create(noun: &str, swarm: &str, version: &str, size: &str) {
    ok(&[noun, "create", "-a", &ami(), "-s", size, "--version", version, swarm]);
}

/// A stack's output, through the SDK.
pub fn output(stack: &str, key: &str) -> String {
    block_on(async {
        let cfn = emulator().cloudformation().await;
        let out = cfn.describe_stacks().stack_name(stack).send().await.unwrap();
        let s = &out.stacks()[0];
        s.outputs().iter().find(|o| o.output_key() == Some(key)).unwrap().output_value().unwrap().to_string()
    })
}

/// The (target group, weight) pairs a listener forwards to, through the SDK.
pub fn forwards(listener: &str) -> Vec<(String, i32)> {
    block_on(async {
        let elb = emulator().elb().await;
        let out = elb.describe_listeners().listener_arns(listener).send().await.unwrap();
        let mut v = Vec::new();
        for a in out.listeners()[0].default_actions() {
            match a.forward_config() {
                Some(fc) if !fc.target_groups().is_empty() => {
                    for t in fc.target_groups() {
                        v.push((t.target_group_arn().unwrap().to_string(), t.weight().unwrap_or(1)));
                    }
                }
                _ => {
                    if let Some(tg) = a.target_group_arn() {
                        v.push((tg.to_string(), 1));
                    }
                }
            }
        }
        v
    })
}

/// Polls `cond` every 200 ms; fails naming `what` after 90 s.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(90), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A stack as the tests read it back.
pub struct Stack {
    pub tags: std::collections::BTreeMap<String, String>,
    pub outputs: std::collections::BTreeMap<String, String>,
    pub status: String,
}

/// The stack named `name`, unless there is none (or only a deleted one).
pub fn stack(name: &str) -> Option<Stack> {
    block_on(async {
        let cfn = emulator().cloudformation().await;
        let out = cfn.describe_stacks().stack_name(name).send().await.ok()?;
        let s = out.stacks().first()?;
        let status = s.stack_status()?.as_str().to_string();
        (status != "DELETE_COMPLETE").then(|| Stack {
            tags: s.tags().iter().map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string())).collect(),
            outputs: s
                .outputs()
                .iter()
                .map(|o| (o.output_key().unwrap().to_string(), o.output_value().unwrap().to_string()))
                .collect(),
            status,
        })
    })
}

/// A self-signed certificate for `names` (the first is the subject, all are DNS names in
/// its subjectAltName), made with openssl and imported into the emulator's ACM in `region`:
/// an `ISSUED` certificate, as a DNS-validated one would be. Returns its ARN.
pub fn imported_certificate(region: &str, names: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let san = names.iter().map(|n| format!("DNS:{n}")).collect::<Vec<_>>().join(",");
    let out = Command::new(testkit::system_tool("openssl"))
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "key.pem", "-out"])
        .args(["cert.pem", "-subj", &format!("/CN={}", names[0]), "-addext", &format!("subjectAltName={san}")])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    let read = |f: &str| aws_sdk_acm::primitives::Blob::new(std::fs::read(dir.path().join(f)).unwrap());
    block_on(async {
        let conf = aws_sdk_acm::config::Builder::from(&emulator().sdk().await)
            .region(aws_sdk_acm::config::Region::new(region.to_string()))
            .build();
        let c = aws_sdk_acm::Client::from_conf(conf)
            .import_certificate()
            .certificate(read("cert.pem"))
            .private_key(read("key.pem"))
            .send()
            .await;
        c.unwrap().certificate_arn().unwrap().to_string()
    })
}

// ---- Other regions of the emulator (bee regions). ----

/// SDK configuration for the emulator in `region`.
pub async fn sdk_in(region: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&emulator().url)
        .region(aws_config::Region::new(region.to_string()))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "test"))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await
}

pub fn ec2_in(region: &str) -> aws_sdk_ec2::Client {
    block_on(async { aws_sdk_ec2::Client::new(&sdk_in(region).await) })
}

/// A stack in `region`: (tags, outputs), unless there is none.
pub fn stack_in(
    region: &str,
    name: &str,
) -> Option<(std::collections::BTreeMap<String, String>, std::collections::BTreeMap<String, String>)> {
    block_on(async {
        let cfn = aws_sdk_cloudformation::Client::new(&sdk_in(region).await);
        let out = cfn.describe_stacks().stack_name(name).send().await.ok()?;
        let s = out.stacks().first()?;
        if s.stack_status().map(|x| x.as_str()) == Some("DELETE_COMPLETE") {
            return None;
        }
        Some((
            s.tags().iter().map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string())).collect(),
            s.outputs()
                .iter()
                .map(|o| (o.output_key().unwrap().to_string(), o.output_value().unwrap().to_string()))
                .collect(),
        ))
    })
}

/// The peering's status code as `region` sees it (`None`: unknown there or deleted).
pub fn peering(region: &str, id: &str) -> Option<String> {
    let c = ec2_in(region);
    block_on(async {
        let out = c.describe_vpc_peering_connections().vpc_peering_connection_ids(id).send().await.ok()?;
        let code = out.vpc_peering_connections().first()?.status()?.code()?.as_str().to_string();
        (code != "deleted").then_some(code)
    })
}

/// (port, port, source CIDRs) of every ingress permission of a group with an address range.
pub fn ranged_ingress(region: &str, group: &str) -> Vec<(i32, i32, std::collections::BTreeSet<String>)> {
    let c = ec2_in(region);
    block_on(async {
        let out = c.describe_security_groups().group_ids(group).send().await.unwrap();
        out.security_groups()[0]
            .ip_permissions()
            .iter()
            .filter(|p| !p.ip_ranges().is_empty())
            .map(|p| {
                (
                    p.from_port().unwrap_or(-1),
                    p.to_port().unwrap_or(-1),
                    p.ip_ranges().iter().filter_map(|r| r.cidr_ip()).map(str::to_string).collect(),
                )
            })
            .collect()
    })
}

/// Every peering the emulator holds in `region` that is not deleted.
pub fn peerings(region: &str) -> Vec<String> {
    let c = ec2_in(region);
    block_on(async {
        let out = c.describe_vpc_peering_connections().send().await.unwrap();
        out.vpc_peering_connections()
            .iter()
            .filter(|p| p.status().and_then(|s| s.code()).map(|c| c.as_str()) != Some("deleted"))
            .filter_map(|p| p.vpc_peering_connection_id().map(str::to_string))
            .collect()
    })
}

/// (desired capacity, `tyrell:active` tag) of Auto Scaling group `name` in `region`.
pub fn group_in(region: &str, name: &str) -> (i32, Option<String>) {
    block_on(async {
        let asg = aws_sdk_autoscaling::Client::new(&sdk_in(region).await);
        let out = asg.describe_auto_scaling_groups().auto_scaling_group_names(name).send().await.unwrap();
        let g = &out.auto_scaling_groups()[0];
        let active =
            g.tags().iter().find(|t| t.key() == Some("tyrell:active")).and_then(|t| t.value()).map(str::to_string);
        (g.desired_capacity().unwrap(), active)
    })
}

/// The names of the stacks in `region` (not deleted) that start with `prefix`, sorted.
pub fn stacks_in(region: &str, prefix: &str) -> Vec<String> {
    block_on(async {
        let cfn = aws_sdk_cloudformation::Client::new(&sdk_in(region).await);
        let out = cfn.describe_stacks().send().await.unwrap();
        let mut names: Vec<String> = out
            .stacks()
            .iter()
            .filter(|s| s.stack_status().map(|x| x.as_str()) != Some("DELETE_COMPLETE"))
            .filter_map(|s| s.stack_name().filter(|n| n.starts_with(prefix)).map(str::to_string))
            .collect();
        names.sort();
        names
    })
}

/// One ingress permission: (from port, to port, source groups, address ranges).
pub type Ingress = (i32, i32, std::collections::BTreeSet<String>, std::collections::BTreeSet<String>);

/// The ingress permissions of a security group in the tests' region.
pub fn ingress(group: &str) -> Vec<Ingress> {
    block_on(async {
        let ec2 = emulator().ec2().await;
        let out = ec2.describe_security_groups().group_ids(group).send().await.unwrap();
        out.security_groups()[0]
            .ip_permissions()
            .iter()
            .map(|p| {
                let groups = p.user_id_group_pairs().iter().filter_map(|g| g.group_id()).map(str::to_string).collect();
                let mut ranges: std::collections::BTreeSet<String> =
                    p.ip_ranges().iter().filter_map(|r| r.cidr_ip()).map(str::to_string).collect();
                ranges.extend(p.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6()).map(str::to_string));
                (p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1), groups, ranges)
            })
            .collect()
    })
}
