//! The whole deployer flow through the real binary against the emulator: network → base
//! stack → a version of each of the five roles → list → scale → second version → remove
//! → stacks remove --all, checking AWS state through the SDK at each step.

mod support;

use base64::Engine as _;
use support::*;

const ROLES: &[(&str, &str)] =
    &[("broker", "brokers"), ("router", "routers"), ("bee", "bees"), ("indexer", "indexers"), ("worker", "workers")];

/// (desired capacity, instance ids) of an Auto Scaling group.
fn group(name: &str) -> (i32, Vec<String>) {
    block_on(async {
        let asg = emulator().autoscaling().await;
        let out = asg.describe_auto_scaling_groups().auto_scaling_group_names(name).send().await.unwrap();
        let g = &out.auto_scaling_groups()[0];
        (
            g.desired_capacity().unwrap(),
            g.instances()
                .iter()
                .filter(|i| i.lifecycle_state().map(|s| s.as_str()) == Some("InService"))
                .map(|i| i.instance_id().unwrap().to_string())
                .collect(),
        )
    })
}

/// (HttpTokens, decoded user data) of a launch template's latest version.
fn launch_template(id: &str) -> (String, String) {
    block_on(async {
        let ec2 = emulator().ec2().await;
        let out =
            ec2.describe_launch_template_versions().launch_template_id(id).versions("$Latest").send().await.unwrap();
        let data = out.launch_template_versions()[0].launch_template_data().unwrap();
        let tokens =
            data.metadata_options().and_then(|m| m.http_tokens()).map(|t| t.as_str().to_string()).unwrap_or_default();
        let ud = base64::engine::general_purpose::STANDARD.decode(data.user_data().unwrap()).unwrap();
        (tokens, String::from_utf8(ud).unwrap())
    })
}

fn secret(name: &str) -> String {
    block_on(async {
        let ssm = emulator().ssm().await;
        let p = ssm.get_parameter().name(name).with_decryption(true).send().await.unwrap();
        let p = p.parameter().unwrap();
        assert_eq!(p.r#type().map(|t| t.as_str()), Some("SecureString"), "{name} must be a SecureString");
        p.value().unwrap().to_string()
    })
}

fn secret_exists(name: &str) -> bool {
    block_on(async { emulator().ssm().await.get_parameter().name(name).send().await.is_ok() })
}

#[test]
fn whole_swarm_lifecycle() {
    let ami = ami();
    // Network.
    let net = unique("flown");
    let created = json(&["network", "create", &net, "--azs", "3"]);
    let vpc = created["vpc_id"].as_str().expect("network create JSON has vpc_id").to_string();
    assert!(vpc.starts_with("vpc-"));
    assert_eq!(created["public_subnets"].as_array().unwrap().len(), 3);
    assert_eq!(created["private_subnets"].as_array().unwrap().len(), 3);
    let s = stack(&net).unwrap();
    assert_eq!(s.tags["tyrell:role"], "network");
    assert_eq!(s.tags["tyrell:stack"], net);
    let listed = json(&["network"]);
    assert!(listed["networks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["name"] == net.as_str() && n["vpc_id"] == vpc.as_str()));
    assert!(ok(&["network", "describe", &net]).contains(&vpc));

    // Base stack.
    let swarm = unique("flow");
    let base = json(&["stacks", "create", "-v", &vpc, &swarm, "--allow-cidr", "203.0.113.0/24"]);
    let s = stack(&swarm).unwrap();
    assert_eq!((s.tags["tyrell:role"].as_str(), s.tags["tyrell:stack"].as_str()), ("base", swarm.as_str()));
    let queue_url = s.outputs["QueueUrl"].clone();
    let broker_host = s.outputs["BrokerHost"].clone();
    assert_eq!(base["queue_url"], queue_url.as_str());
    let secrets: Vec<String> =
        base["secrets"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
    assert_eq!(secrets.len(), 2);
    let secret_values: Vec<String> = secrets.iter().map(|p| secret(p)).collect();
    assert!(secret_values.iter().all(|v| v.len() >= 32));
    let described = ok(&["stacks", "describe", &swarm]);
    for want in [&queue_url, &broker_host, &s.outputs["BucketName"], &secrets[0], &"aws ssm start-session".to_string()]
    {
        assert!(described.contains(want.as_str()), "stacks describe lacks {want}:\n{described}");
    }

    // One version of each role.
    let mut first = std::collections::BTreeMap::new();
    for (role, noun) in ROLES {
        // A broker version runs one box (its boxes behind the NLB are not bridged).
        let size: i32 = if *role == "broker" { 1 } else { 2 };
        let out = json(&[noun, "create", "-a", &ami, "-s", &size.to_string(), &swarm]);
        let version = out["version"].as_str().unwrap().to_string();
        let stack_name = out["stack_name"].as_str().unwrap().to_string();
        assert_eq!(stack_name, format!("{swarm}-{role}-{version}"));
        let s = stack(&stack_name).unwrap_or_else(|| panic!("{stack_name} was not created"));
        assert_eq!(s.tags["tyrell:role"], *role);
        assert_eq!(s.tags["tyrell:stack"], swarm);
        assert_eq!(s.tags["tyrell:version"], version);
        let (desired, instances) = group(&s.outputs["AutoScalingGroupName"]);
        assert_eq!((desired, instances.len()), (size, size as usize), "{role}: desired / in service");
        let (tokens, user_data) = launch_template(&s.outputs["LaunchTemplateId"]);
        assert_eq!(tokens, "required", "{role}: the launch template must require IMDSv2");
        assert!(user_data.starts_with("#cloud-config\n"), "{role} user data:\n{user_data}");
        assert!(user_data.contains(&version), "{role}: user data lacks the version");
        match *role {
            "indexer" | "worker" => assert!(user_data.contains(&queue_url), "{role}: user data lacks the queue URL"),
            _ => {}
        }
        if matches!(*role, "bee" | "indexer" | "router") {
            assert!(user_data.contains(&broker_host), "{role}: user data lacks the broker endpoint");
        }
        for v in &secret_values {
            assert!(!user_data.contains(v.as_str()), "{role}: user data carries a secret value");
        }
        if *role == "worker" {
            let actions = block_on(async {
                let asg = emulator().autoscaling().await;
                let out = asg
                    .describe_scheduled_actions()
                    .auto_scaling_group_name(&s.outputs["AutoScalingGroupName"])
                    .send()
                    .await
                    .unwrap();
                out.scheduled_update_group_actions()
                    .iter()
                    .map(|a| a.recurrence().unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
            });
            assert_eq!(actions.len(), 2, "the worker carries its scale-up and scale-down schedule: {actions:?}");
        }
        first.insert(*role, version);
    }

    // Listing: every role shows its version; roles without inbound traffic have their
    // first version active at once, ALB/NLB roles wait for a traffic switch.
    let stacks = json(&["stacks"]);
    let mine = stacks["stacks"].as_array().unwrap().iter().find(|s| s["name"] == swarm.as_str()).unwrap();
    for (role, _) in ROLES {
        assert_eq!(mine["roles"][role]["versions"], serde_json::json!([first[role]]));
        let expect_active = matches!(*role, "bee" | "indexer" | "worker");
        assert_eq!(mine["roles"][role]["active"].is_string(), expect_active, "{role} active: {}", mine["roles"][role]);
    }
    let table = ok(&["bees", &swarm]);
    assert!(table.contains("VERSION") && table.contains(&first["bee"]) && table.contains("2 / 2"), "{table}");

    // Scale.
    let scaled = json(&["bees", "scale", &swarm, &first["bee"], "4"]);
    assert_eq!(scaled["desired"], 4);
    let s = stack(&format!("{swarm}-bee-{}", first["bee"])).unwrap();
    assert_eq!(group(&s.outputs["AutoScalingGroupName"]).0, 4);

    // A second version, named, beside the first.
    let second = json(&["bees", "create", "-a", &ami, "-s", "1", "--version", "v2", &swarm]);
    assert_eq!(second["version"], "v2");
    let versions = json(&["bees", &swarm]);
    let vs: Vec<&str> =
        versions["versions"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap()).collect();
    assert_eq!(vs, vec![first["bee"].as_str(), "v2"], "oldest first");
    assert_eq!(versions["versions"][0]["active"], true);
    assert_eq!(versions["versions"][1]["active"], false);

    // Remove: the active version is refused without --force; the other goes.
    let err = fails(exit::IN_USE, &["bees", "remove", &swarm, &first["bee"]]);
    assert!(err.contains("is active"), "{err}");
    assert!(stack(&format!("{swarm}-bee-{}", first["bee"])).is_some());
    ok(&["bees", "remove", &swarm, "v2"]);
    assert!(stack(&format!("{swarm}-bee-v2")).is_none());

    // The base stack cannot go while versions exist; --all removes them first.
    let err = fails(exit::IN_USE, &["stacks", "remove", &swarm]);
    assert!(err.contains("--all"), "{err}");
    assert!(stack(&swarm).is_some());
    let err = fails(exit::IN_USE, &["network", "remove", &net]);
    assert!(err.contains(&swarm), "network remove must name the swarm using it: {err}");
    let removed = json(&["stacks", "remove", &swarm, "--all"]);
    assert_eq!(removed["removed"].as_array().unwrap().len(), 6, "{removed}");
    let left: Vec<String> = stack_names().into_iter().filter(|n| n.starts_with(&swarm)).collect();
    assert!(left.is_empty(), "stacks left behind: {left:?}");
    for p in &secrets {
        assert!(!secret_exists(p), "secret {p} left behind");
    }
    // The emulator cannot delete a network's IGW and routes (see EMULATOR.md): the call
    // itself must be accepted now that nothing uses the VPC.
    let out = run(&["network", "remove", &net]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() || err.contains("DependencyViolation") || err.contains("did not delete"), "{err}");
}

#[test]
fn metrics_box_admits_indexers_and_is_rendered_into_their_user_data() {
    let net = unique("metn");
    let vpc = json(&["network", "create", &net])["vpc_id"].as_str().unwrap().to_string();
    let name = unique("met");
    let m = json(&["metrics", "create", "-v", &vpc, "-a", &ami(), "--allow-cidr", "198.51.100.0/24", &name]);
    let ip = m["private_ip"].as_str().unwrap().to_string();
    assert!(!ip.is_empty(), "{m}");
    let s = stack(&name).unwrap();
    assert_eq!(s.tags["tyrell:role"], "metrics");
    assert!(secret_exists(m["grafana_password_param"].as_str().unwrap()));
    assert!(json(&["metrics"])["metrics"].as_array().unwrap().iter().any(|x| x["name"] == name.as_str()));

    // A swarm in the same VPC picks the box up: its indexers get the host...
    let swarm = unique("mets");
    let base = json(&["stacks", "create", "-v", &vpc, &swarm]);
    assert_eq!(base["metrics_security_group"], m["security_group"]);
    let idx = json(&["indexers", "create", "-a", &ami(), &swarm]);
    let (_, user_data) =
        launch_template(&stack(idx["stack_name"].as_str().unwrap()).unwrap().outputs["LaunchTemplateId"]);
    assert!(user_data.contains(&ip), "indexer user data lacks the metrics host {ip}");
    // ...and the box cannot go while the swarm uses it.
    let err = fails(exit::IN_USE, &["metrics", "remove", &name]);
    assert!(err.contains(&swarm), "{err}");
    ok(&["stacks", "remove", &swarm, "--all"]);
    ok(&["metrics", "remove", &name]);
    assert!(stack(&name).is_none());
    assert!(!secret_exists(m["grafana_password_param"].as_str().unwrap()));
}
