//! Bee fleets in other regions (issue 12 item 3, docs/MULTI-REGION.md 6): the real binary
//! against the emulator with a home region and two bee regions, everything read back
//! through AWS in each region: the VPC peering (requested in the bee region, accepted at
//! home), the routes both ways, the bee-region and bee-link stacks, the NLB's one rule per
//! bee region (8883 from that region's private /17, nothing else from a range), the bee
//! fleet's user data (TLS to the certificate's name, the home password parameter by ARN);
//! the refusals before any change; and removal in reverse, leaving nothing.

mod support;

use std::collections::BTreeSet;

use base64::Engine as _;
use support::*;

const HOME: &str = "us-east-1";

/// The destinations a route table sends over peering `pcx`.
fn routes_over(region: &str, table: &str, pcx: &str) -> Vec<String> {
    let c = ec2_in(region);
    block_on(async {
        let out = c.describe_route_tables().route_table_ids(table).send().await.unwrap();
        out.route_tables()[0]
            .routes()
            .iter()
            .filter(|r| r.vpc_peering_connection_id() == Some(pcx))
            .filter_map(|r| r.destination_cidr_block().map(str::to_string))
            .collect()
    })
}

fn user_data(region: &str, template: &str) -> String {
    let c = ec2_in(region);
    block_on(async {
        let out = c
            .describe_launch_template_versions()
            .launch_template_id(template)
            .versions("$Latest")
            .send()
            .await
            .unwrap();
        let data = out.launch_template_versions()[0].launch_template_data().unwrap();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(data.user_data().unwrap()).unwrap()).unwrap()
    })
}

/// A self-signed certificate for `name` in the emulator's ACM of the home region.
fn certificate(name: &str) -> String {
    imported_certificate(HOME, &[name])
}

/// A network in `region` with `cidr`: its stack outputs.
fn network(region: &str, cidr: &str) -> (String, std::collections::BTreeMap<String, String>) {
    let name = unique("brn");
    ok(&["network", "create", "--region", region, "--cidr", cidr, &name]);
    let (_, outputs) = stack_in(region, &name).unwrap();
    (name, outputs)
}

#[test]
fn a_swarm_with_bees_in_two_other_regions_is_built_checked_and_removed() {
    let swarm = unique("mr");
    let mqtt = format!("mqtt.{swarm}.example.org");
    let cert = certificate(&mqtt);
    let (_, home_net) = network(HOME, "10.40.0.0/16");
    ok(&[
        "stacks",
        "create",
        "-v",
        &home_net["VpcId"],
        "--broker-certificate-arn",
        &cert,
        "--broker-dns-name",
        &mqtt,
        &swarm,
    ]);
    let (_, base) = stack_in(HOME, &swarm).unwrap();

    // Refused before any change: a network overlapping the home VPC, the home region itself.
    let (overlapping, _) = network("eu-west-1", "10.40.0.0/16");
    let err =
        fails(exit::USAGE, &["stacks", "add-region", &swarm, "--bee-region", "eu-west-1", "--network", &overlapping]);
    assert!(err.contains("overlaps") && err.contains("10.40.0.0/16"), "{err}");
    let err = fails(exit::USAGE, &["stacks", "add-region", &swarm, "--bee-region", HOME, "--network", &overlapping]);
    assert!(err.contains("home region"), "{err}");
    assert!(stack_in("eu-west-1", &format!("{swarm}-region")).is_none());
    assert!(peerings("eu-west-1").is_empty(), "a refused region made a peering");

    let regions =
        [("eu-west-1", "10.41.0.0/16", "10.41.128.0/17"), ("ap-southeast-2", "10.42.0.0/16", "10.42.128.0/17")];
    let mut made = Vec::new();
    for (region, cidr, private) in regions {
        let (net, outs) = network(region, cidr);
        let added = json(&["stacks", "add-region", &swarm, "--bee-region", region, "--network", &net]);
        assert_eq!(added["region"], region);
        assert_eq!(added["home_region"], HOME);
        assert_eq!(added["broker"], format!("{mqtt}:8883"));
        let pcx = added["peering"].as_str().unwrap().to_string();

        // The bee-region stack there, tagged with its home region.
        let (tags, o) = stack_in(region, &format!("{swarm}-region")).expect("a bee-region stack");
        assert_eq!(tags["tyrell:role"], "bee-region");
        assert_eq!(tags["tyrell:stack"], swarm);
        assert_eq!(tags["tyrell:home-region"], HOME);
        assert_eq!(
            (o["BrokerHost"].as_str(), o["BrokerPort"].as_str(), o["BrokerTls"].as_str()),
            (mqtt.as_str(), "8883", "true")
        );
        assert_eq!(o["BrokerPasswordParamArn"], base["BrokerPasswordParamArn"]);
        assert!(o["BrokerPasswordParamArn"].contains(&format!(":ssm:{HOME}:")));
        // The peering: active seen from both sides, routes both ways.
        assert_eq!(peering(region, &pcx).as_deref(), Some("active"));
        assert_eq!(peering(HOME, &pcx).as_deref(), Some("active"));
        assert_eq!(routes_over(region, &outs["PrivateRouteTableId"], &pcx), vec!["10.40.0.0/16".to_string()]);
        assert_eq!(routes_over(HOME, &home_net["PrivateRouteTableId"], &pcx), vec![cidr.to_string()]);
        // The bees there admit nothing from any range.
        assert!(ranged_ingress(region, &o["BeeSecurityGroupId"]).is_empty());
        // The home link stack.
        let (ltags, _) = stack_in(HOME, &format!("{swarm}-link-{region}")).expect("a bee-link stack");
        assert_eq!(ltags["tyrell:bee-region"], region);
        made.push((region, private, pcx, o));
    }
    // The broker NLB admits, from address ranges, exactly 8883 from each bee region's /17.
    let mut ranged = ranged_ingress(HOME, &base["NlbSecurityGroupId"]);
    ranged.sort();
    let want: Vec<(i32, i32, BTreeSet<String>)> = vec![(8883, 8883, regions.iter().map(|r| r.2.to_string()).collect())];
    assert_eq!(ranged, want);

    // A region already added, and a network overlapping another bee region: refused.
    let (again, _) = network("eu-west-1", "10.43.0.0/16");
    let err = fails(exit::EXISTS, &["stacks", "add-region", &swarm, "--bee-region", "eu-west-1", "--network", &again]);
    assert!(err.contains("already has bee region eu-west-1"), "{err}");
    let (clash, _) = network("sa-east-1", "10.41.0.0/16");
    let err = fails(exit::USAGE, &["stacks", "add-region", &swarm, "--bee-region", "sa-east-1", "--network", &clash]);
    assert!(err.contains("overlaps the VPC of swarm") && err.contains("eu-west-1"), "{err}");
    assert!(stack_in("sa-east-1", &format!("{swarm}-region")).is_none());

    // A bee fleet in each bee region, rendered for TLS to the home broker.
    for (region, _, _, o) in &made {
        let ami = ami();
        ok(&["bees", "create", "--region", region, "-a", &ami, "-s", "2", "--version", "v1", &swarm]);
        let (tags, vo) = stack_in(region, &format!("{swarm}-bee-v1")).expect("the bee version there");
        assert_eq!(tags["tyrell:role"], "bee");
        let ud = user_data(region, &vo["LaunchTemplateId"]);
        for want in [
            format!("BROKER_HOST={mqtt}"),
            "BROKER_PORT=8883".to_string(),
            "BROKER_TLS=true".to_string(),
            format!("BROKER_PASSWORD_PARAM={}", o["BrokerPasswordParamArn"]),
            format!("AWS_REGION={region}"),
        ] {
            assert!(ud.lines().any(|l| l.trim() == want), "{region}: user data lacks {want}:\n{ud}");
        }
        let listed = json(&["bees", "--region", region]);
        assert!(listed.to_string().contains(&format!("{swarm}-bee-v1")), "{listed}");
        ok(&["bees", "scale", "--region", region, &swarm, "v1", "3"]);
        // Removing the region is refused while its bees live.
        let err = fails(exit::IN_USE, &["stacks", "remove-region", &swarm, "--bee-region", region]);
        assert!(err.contains("still has bee version"), "{err}");
    }

    // `tyrell bees` in the home region lists the fleets of every region of the swarm.
    let listed = json(&["bees", &swarm]);
    let rows: Vec<(String, String)> = listed["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("no versions in {listed}"))
        .iter()
        .map(|v| (v["region"].as_str().unwrap().to_string(), v["stack_name"].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<(String, String)> = made.iter().map(|(r, ..)| (r.to_string(), format!("{swarm}-bee-v1"))).collect();
    assert_eq!(rows.iter().cloned().collect::<BTreeSet<_>>(), want.into_iter().collect::<BTreeSet<_>>(), "{listed}");
    let table = ok(&["bees", &swarm]);
    assert!(table.contains("eu-west-1") && table.contains("ap-southeast-2"), "{table}");

    // A switch in a bee region moves that region's active bees only.
    let (r0, ..) = &made[0];
    ok(&["bees", "create", "--region", r0, "-a", &ami(), "-s", "1", "--version", "v2", &swarm]);
    ok(&["traffic", "bees", "--region", r0, &swarm, "--version", "v2", "--timeout", "60s"]);
    let state = json(&["traffic", "bees", "--region", r0, &swarm]);
    assert_eq!(state["active"], "v2", "{state}");
    assert_eq!(state["region"], *r0);
    let other = json(&["traffic", "bees", "--region", made[1].0, &swarm]);
    assert_eq!(other["active"], "v1", "the other bee region keeps its version: {other}");
    ok(&["bees", "remove", "--region", r0, &swarm, "v1"]);

    // The swarm cannot go while it has bee regions (their rules name its NLB's group).
    let err = fails(exit::IN_USE, &["stacks", "remove", "--all", &swarm]);
    assert!(err.contains("still has bee region"), "{err}");
    assert!(stack_in(HOME, &swarm).is_some());

    // Down: bees, then each region, then the swarm; nothing left in any region.
    for (region, _, pcx, _) in &made {
        let live = if *region == made[0].0 { "v2" } else { "v1" };
        ok(&["bees", "remove", "--region", region, "--force", &swarm, live]);
        ok(&["stacks", "remove-region", &swarm, "--bee-region", region]);
        assert!(stack_in(region, &format!("{swarm}-region")).is_none());
        assert!(stack_in(HOME, &format!("{swarm}-link-{region}")).is_none());
        assert_eq!(peering(region, pcx), None, "the peering is gone");
    }
    // Not checked: that the NLB's rule for each bee region went with its link stack. The
    // emulator (moto 5.2.5) never revokes an AWS::EC2::SecurityGroupIngress when its stack
    // is deleted (its SecurityGroupIngress resource has no delete), so the rule stays
    // there; CloudFormation on AWS revokes it.
    ok(&["stacks", "remove", &swarm]);
}

#[test]
fn a_swarm_whose_brokers_end_tls_gets_a_bee_region_trusting_its_ca() {
    // No ACM certificate: the brokers end TLS with the swarm's own CA (docs/MULTI-REGION.md
    // 8.1), and a bee region's bees read that CA's certificate in the home region by ARN.
    let (_, home_net) = network(HOME, "10.50.0.0/16");
    let swarm = unique("mrp");
    ok(&["stacks", "create", "-v", &home_net["VpcId"], &swarm]);
    let (_, base) = stack_in(HOME, &swarm).unwrap();
    assert_eq!(base["BrokerTlsBy"], "broker");
    let ca = &base["BrokerCaParamArn"];
    assert!(
        ca.contains(&format!(":ssm:{HOME}:")) && ca.ends_with(&format!("parameter/tyrell/{swarm}/broker-ca")),
        "{ca}"
    );
    let region = "eu-central-1";
    let (net, _) = network(region, "10.51.0.0/16");
    let added = json(&["stacks", "add-region", &swarm, "--bee-region", region, "--network", &net]);
    assert_eq!(added["broker"], format!("{}:8883", base["BrokerNlbHost"]));
    let (_, o) = stack_in(region, &format!("{swarm}-region")).expect("a bee-region stack");
    assert_eq!((o["BrokerTlsBy"].as_str(), &o["BrokerCaParamArn"]), ("broker", ca));
    ok(&["bees", "create", "--region", region, "-a", &ami(), "-s", "1", "--version", "v1", &swarm]);
    let (_, vo) = stack_in(region, &format!("{swarm}-bee-v1")).expect("the bee version there");
    let ud = user_data(region, &vo["LaunchTemplateId"]);
    for want in [
        format!("BROKER_HOST={}", base["BrokerNlbHost"]),
        "BROKER_PORT=8883".to_string(),
        "BROKER_TLS=true".to_string(),
        format!("BROKER_CA_PARAM={ca}"),
        format!("BROKER_PASSWORD_PARAM={}", base["BrokerPasswordParamArn"]),
    ] {
        assert!(ud.lines().any(|l| l.trim() == want), "user data lacks {want}:\n{ud}");
    }
    ok(&["bees", "remove", "--region", region, "--force", &swarm, "v1"]);
    ok(&["stacks", "remove-region", &swarm, "--bee-region", region]);
    ok(&["stacks", "remove", &swarm]);
}
