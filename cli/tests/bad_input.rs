//! Bad input never half-changes AWS: each mistake ends with one clear sentence and the exit
//! code of its class, and afterwards the emulator holds exactly what it held before.

mod support;

use support::*;

/// Everything tyrell could have changed: stack names, SSM parameters, ASG sizes.
fn snapshot() -> (Vec<String>, Vec<String>, Vec<(String, i32)>) {
    let mut stacks = stack_names();
    stacks.sort();
    block_on(async {
        let ssm = emulator().ssm().await;
        let mut params: Vec<String> = ssm
            .describe_parameters()
            .max_results(50)
            .send()
            .await
            .unwrap()
            .parameters()
            .iter()
            .map(|p| p.name().unwrap().to_string())
            .collect();
        params.sort();
        let asg = emulator().autoscaling().await;
        let mut groups: Vec<(String, i32)> = asg
            .describe_auto_scaling_groups()
            .send()
            .await
            .unwrap()
            .auto_scaling_groups()
            .iter()
            .map(|g| (g.auto_scaling_group_name().unwrap().to_string(), g.desired_capacity().unwrap()))
            .collect();
        groups.sort();
        (stacks, params, groups)
    })
}

/// Runs a bad command: exit `code`, the message contains `want`, one line, nothing changed.
fn refused(code: i32, args: &[&str], want: &str) {
    let before = snapshot();
    let err = fails(code, args);
    assert!(err.contains(want), "tyrell {}: expected {want:?} in:\n{err}", args.join(" "));
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "one error sentence expected:\n{err}");
    assert_eq!(snapshot(), before, "tyrell {} changed AWS although it failed", args.join(" "));
}

#[test]
fn bad_input_is_refused_before_anything_changes() {
    let ami = ami();
    let (swarm, vpc) = swarm("bad");
    let (other, _) = swarm_in(&vpc, "oth");
    let v1 = json(&["bees", "create", "-a", &ami, "--version", "v1", &swarm])["version"].as_str().unwrap().to_string();
    json(&["bees", "create", "-a", &ami, "--version", "v9", &other]);
    let missing_ami = "ami-0123456789abcdef0";
    let missing_vpc = "vpc-0123456789abcdef0";

    // Names, CIDRs, AZs.
    refused(exit::USAGE, &["network", "create", "Bad_Name"], "invalid network name");
    refused(exit::USAGE, &["network", "create", &unique("n"), "--cidr", "10.0.0.1/16"], "host bits are set");
    refused(exit::USAGE, &["network", "create", &unique("n"), "--cidr", "10.0.0.0/24"], "/16");
    refused(exit::USAGE, &["network", "create", &unique("n"), "--cidr", "banana"], "invalid CIDR");
    refused(exit::USAGE, &["network", "create", &unique("n"), "--azs", "7"], "--azs");
    refused(exit::EXISTS, &["network", "create", &swarm], "already exists");
    refused(exit::NOT_FOUND, &["network", "describe", "nosuchnet"], "no network named nosuchnet");

    // Base stacks: VPC id shape, a VPC that does not exist, admin CIDRs, duplicates.
    refused(exit::USAGE, &["stacks", "create", "-v", "vpc-0abc", &unique("s")], "invalid VPC id");
    refused(exit::NOT_FOUND, &["stacks", "create", "-v", missing_vpc, &unique("s")], "does not exist");
    refused(
        exit::USAGE,
        &["stacks", "create", "-v", &vpc, "--allow-cidr", "0.0.0.0/0", &unique("s")],
        "whole internet",
    );
    refused(exit::EXISTS, &["stacks", "create", "-v", &vpc, &swarm], "already exists");
    refused(
        exit::USAGE,
        &["stacks", "create", "-v", &vpc, "--certificate-arn", "not-an-arn", &unique("s")],
        "certificate",
    );
    refused(exit::NOT_FOUND, &["stacks", "describe", "nosuchswarm"], "no base stack named nosuchswarm");

    // Role versions: AMI shape and existence, base stack, version, size, type, duplicates.
    refused(exit::USAGE, &["bees", "create", "-a", "ami-0b1", &swarm], "invalid AMI id");
    refused(exit::NOT_FOUND, &["bees", "create", "-a", missing_ami, &swarm], "does not exist");
    refused(exit::NOT_FOUND, &["bees", "create", "-a", &ami, "nosuchswarm"], "no base stack named nosuchswarm");
    refused(exit::USAGE, &["bees", "create", "-a", &ami, "--version", "V_1", &swarm], "invalid version");
    refused(exit::EXISTS, &["bees", "create", "-a", &ami, "--version", &v1, &swarm], "already exists");
    refused(exit::USAGE, &["bees", "create", "-a", &ami, "-s", "501", &swarm], "invalid size");
    refused(exit::USAGE, &["bees", "create", "-a", &ami, "-t", "huge", &swarm], "invalid instance type");
    refused(exit::USAGE, &["workers", "create", "-a", &ami, "--schedule", "hourly", &swarm], "--schedule");
    refused(exit::USAGE, &["workers", "create", "-a", &ami, "--schedule", "0 * * *,30 * * * *,1", &swarm], "cron");
    refused(exit::NOT_FOUND, &["bees", "scale", &swarm, "v404", "3"], "has no bee version v404");
    refused(exit::NOT_FOUND, &["bees", "scale", &swarm, "v9", "3"], "belongs to swarm");
    refused(exit::USAGE, &["bees", "scale", &swarm, &v1, "501"], "invalid size");
    refused(exit::NOT_FOUND, &["bees", "remove", &swarm, "v9"], "belongs to swarm");
    refused(exit::IN_USE, &["bees", "remove", &swarm, &v1], "is active");

    // Metrics box.
    refused(exit::USAGE, &["metrics", "create", "-v", &vpc, "-a", "ami-xyz", &unique("m")], "invalid AMI id");
    refused(exit::NOT_FOUND, &["metrics", "create", "-v", missing_vpc, "-a", &ami, &unique("m")], "does not exist");

    // Removing what is in use, or absent.
    refused(exit::IN_USE, &["stacks", "remove", &swarm], "--all");
    refused(exit::NOT_FOUND, &["stacks", "remove", "nosuchswarm"], "no base stack");
    refused(exit::NOT_FOUND, &["network", "remove", "nosuchnet"], "no network named");

    // Usage errors are clap's (exit 2) and change nothing either.
    let before = snapshot();
    let out = run(&["bees", "create", &swarm]);
    assert_eq!(out.status.code(), Some(exit::USAGE), "a missing -a is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ami"));
    assert_eq!(snapshot(), before);
}

/// A second swarm in the same VPC.
fn swarm_in(vpc: &str, prefix: &str) -> (String, String) {
    let name = unique(prefix);
    ok(&["stacks", "create", "-v", vpc, &name]);
    (name, vpc.to_string())
}

#[test]
fn no_region_and_unreachable_endpoint_are_one_clear_sentence() {
    let out = tyrell().env_remove("AWS_REGION").env("AWS_CONFIG_FILE", "/dev/null").args(["network"]).output().unwrap();
    assert_eq!(out.status.code(), Some(exit::USAGE), "no region is a configuration the operator gives");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no AWS region"), "{}", String::from_utf8_lossy(&out.stderr));
    let port = testkit::free_port();
    let out = tyrell().args(["network", "--endpoint-url", &format!("http://127.0.0.1:{port}")]).output().unwrap();
    assert_eq!(out.status.code(), Some(exit::AWS), "an unreachable endpoint is an AWS failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach"), "{err}");
}
