//! The region is part of the model: stack names are unique only per region, so the same
//! name lives in two regions as two things, each listed with its own region (table and
//! JSON), and a region never sees another's.

mod support;

use serde_json::Value;
use support::*;

fn names_in(list: &Value, key: &str, name: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .filter(|n| n["name"] == name)
        .map(|n| n["region"].as_str().unwrap_or_else(|| panic!("no region in {n}")).to_string())
        .collect()
}

#[test]
fn one_name_in_two_regions_is_two_networks_each_knowing_its_region() {
    let name = unique("rg");
    let eu = json(&["--region", "eu-west-1", "network", "create", &name]);
    assert_eq!(eu["region"], "eu-west-1", "{eu}");
    // Only eu-west-1 has it.
    let us = json(&["--region", "us-east-2", "network"]);
    assert!(names_in(&us, "networks", &name).is_empty(), "{us}");
    // The same name is free in another region, and is another VPC.
    let other = json(&["--region", "us-east-2", "network", "create", &name]);
    assert_eq!(other["region"], "us-east-2", "{other}");
    assert_ne!(other["vpc_id"], eu["vpc_id"]);
    for region in ["eu-west-1", "us-east-2"] {
        let list = json(&["--region", region, "network"]);
        assert_eq!(names_in(&list, "networks", &name), [region], "{list}");
        let described = json(&["--region", region, "network", "describe", &name]);
        assert_eq!(described["region"], region, "{described}");
        // The table has a REGION column with it.
        let table = ok(&["--region", region, "network"]);
        let header = table.lines().next().unwrap_or_default();
        assert!(header.split_whitespace().nth(1) == Some("REGION"), "{table}");
        let row = table.lines().find(|l| l.split_whitespace().next() == Some(name.as_str())).unwrap();
        assert_eq!(row.split_whitespace().nth(1), Some(region), "{table}");
    }
}

/// A swarm's listings carry the region its stacks live in: the base stack (with its
/// account, from the stack's ARN), each role version, the traffic view; another region
/// has none of them.
#[test]
fn a_swarm_and_its_versions_are_listed_with_their_region() {
    let home = emulator().region.clone();
    let (sw, _) = swarm("rv");
    ok(&["workers", "create", "-a", &ami(), "-s", "1", "--version", "w1", &sw]);
    let described = json(&["stacks", "describe", &sw]);
    assert_eq!(described["region"], home.as_str(), "{described}");
    // The emulator's fixed account, read from the stack's ARN.
    assert_eq!(described["account"], "123456789012", "{described}");
    let listed = json(&["stacks"]);
    assert_eq!(names_in(&listed, "stacks", &sw), [home.as_str()], "{listed}");
    let versions = json(&["workers", &sw]);
    let v = &versions["versions"][0];
    assert_eq!((v["version"].as_str(), v["region"].as_str()), (Some("w1"), Some(home.as_str())), "{versions}");
    assert_eq!(json(&["traffic", "workers", &sw])["region"], home.as_str());
    // Elsewhere the swarm does not exist.
    let away = "eu-central-1";
    assert!(names_in(&json(&["--region", away, "stacks"]), "stacks", &sw).is_empty());
    let err = fails(exit::NOT_FOUND, &["--region", away, "workers", &sw]);
    assert!(err.contains(&format!("no swarm (base stack) named \"{sw}\"")), "{err}");
}
