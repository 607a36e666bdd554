//! `--output json` of every command matches the shape docs/JSON.md documents for it, read
//! from that file: field names (exactly) and value types, against the emulator.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use support::*;

/// docs/JSON.md: the shape under each `### `heading`` (its first ```json block).
fn documented() -> BTreeMap<String, Value> {
    let path = testkit::workspace_root().join("docs/JSON.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut shapes = BTreeMap::new();
    let mut heading: Option<String> = None;
    let mut block: Option<String> = None;
    for line in text.lines() {
        match (&mut block, line.trim_end()) {
            (None, l) if l.starts_with("### `") => {
                heading = Some(l.trim_start_matches("### `").trim_end_matches('`').to_string());
            }
            (None, "```json") => block = Some(String::new()),
            (Some(b), "```") => {
                if let Some(h) = heading.take() {
                    let shape = serde_json::from_str(b).unwrap_or_else(|e| panic!("JSON.md, {h}: {e}\n{b}"));
                    assert!(shapes.insert(h.clone(), shape).is_none(), "JSON.md documents {h} twice");
                }
                block = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            _ => {}
        }
    }
    shapes
}

/// Checks `v` against `shape`; returns where and how it differs.
fn conforms(shapes: &BTreeMap<String, Value>, shape: &Value, v: &Value, at: &str) -> Result<(), String> {
    match shape {
        Value::String(types) => {
            let mut why = Vec::new();
            for t in types.split('|').map(str::trim) {
                let ok = match t {
                    "string" => v.is_string(),
                    "integer" => v.is_i64() || v.is_u64(),
                    "number" => v.is_number(),
                    "boolean" => v.is_boolean(),
                    "null" => v.is_null(),
                    named => match shapes.get(named) {
                        Some(s) if !named.starts_with("tyrell ") => match conforms(shapes, s, v, at) {
                            Ok(()) => true,
                            Err(e) => {
                                why.push(e);
                                false
                            }
                        },
                        _ => return Err(format!("{at}: the shape names an unknown type {named:?}")),
                    },
                };
                if ok {
                    return Ok(());
                }
            }
            Err(format!(
                "{at}: {v} is not {types}{}",
                if why.is_empty() { String::new() } else { format!(" ({})", why.join("; ")) }
            ))
        }
        Value::Array(elem) => {
            let [elem] = elem.as_slice() else { return Err(format!("{at}: an array shape holds one element shape")) };
            let items = v.as_array().ok_or_else(|| format!("{at}: {v} is not an array"))?;
            items.iter().enumerate().try_for_each(|(i, x)| conforms(shapes, elem, x, &format!("{at}[{i}]")))
        }
        Value::Object(fields) => {
            let obj = v.as_object().ok_or_else(|| format!("{at}: {v} is not an object"))?;
            if let (1, Some(each)) = (fields.len(), fields.get("*")) {
                return obj.iter().try_for_each(|(k, x)| conforms(shapes, each, x, &format!("{at}.{k}")));
            }
            let want: BTreeSet<&String> = fields.keys().collect();
            let have: BTreeSet<&String> = obj.keys().collect();
            if want != have {
                return Err(format!(
                    "{at}: fields differ: missing {:?}, undocumented {:?}",
                    want.difference(&have).collect::<Vec<_>>(),
                    have.difference(&want).collect::<Vec<_>>()
                ));
            }
            fields.iter().try_for_each(|(k, s)| conforms(shapes, s, &obj[k], &format!("{at}.{k}")))
        }
        other => Err(format!("{at}: unusable shape {other}")),
    }
}

struct Checker {
    shapes: BTreeMap<String, Value>,
    seen: BTreeSet<String>,
}

impl Checker {
    /// Runs `tyrell ARGS -o json` and checks its output against the documented `command`.
    fn check(&mut self, command: &str, args: &[&str]) -> Value {
        let v = json(args);
        self.check_value(command, &v, args);
        v
    }

    fn check_value(&mut self, command: &str, v: &Value, args: &[&str]) {
        let shape = self.shapes.get(command).unwrap_or_else(|| panic!("docs/JSON.md does not document {command}"));
        if let Err(e) = conforms(&self.shapes, shape, v, "$") {
            panic!("tyrell {} does not match the shape of `{command}` in docs/JSON.md: {e}\n{v:#}", args.join(" "));
        }
        self.seen.insert(command.to_string());
    }
}

#[test]
fn the_shape_checker_is_strict() {
    let shapes = BTreeMap::from([("N".to_string(), serde_json::json!({ "a": "integer" }))]);
    let s = serde_json::json!({ "x": "string | null", "n": ["N"], "m": { "*": "boolean" } });
    let ok = serde_json::json!({ "x": null, "n": [{ "a": 1 }], "m": { "k": true } });
    assert_eq!(conforms(&shapes, &s, &ok, "$"), Ok(()));
    let n = serde_json::json!("number");
    assert_eq!(conforms(&shapes, &n, &serde_json::json!(99.9), "$"), Ok(()));
    assert_eq!(conforms(&shapes, &n, &serde_json::json!(3), "$"), Ok(()));
    assert!(conforms(&shapes, &n, &serde_json::json!("99.9"), "$").is_err());
    for bad in [
        serde_json::json!({ "x": 1, "n": [], "m": {} }),
        serde_json::json!({ "x": "s", "n": [{ "a": "1" }], "m": {} }),
        serde_json::json!({ "x": "s", "n": [{ "a": 1, "b": 2 }], "m": {} }),
        serde_json::json!({ "x": "s", "n": [], "m": { "k": 1 } }),
        serde_json::json!({ "x": "s", "n": [] }),
        serde_json::json!({ "x": "s", "n": [], "m": {}, "extra": 1 }),
    ] {
        assert!(conforms(&shapes, &s, &bad, "$").is_err(), "{bad}");
    }
}

#[test]
fn every_command_prints_its_documented_json() {
    let mut c = Checker { shapes: documented(), seen: BTreeSet::new() };
    let ami = ami();

    // Networks and the metrics box first: the swarm then sends its metrics there.
    let net = unique("jn");
    let vpc =
        c.check("tyrell network create NAME", &["network", "create", &net])["vpc_id"].as_str().unwrap().to_string();
    let list = c.check("tyrell network", &["network"]);
    assert!(!list["networks"].as_array().unwrap().is_empty());
    c.check("tyrell network", &["network", "list"]);
    c.check("tyrell network describe NAME", &["network", "describe", &net]);
    let mbox = unique("jm");
    c.check("tyrell metrics create -v VPC -a AMI NAME", &["metrics", "create", "-v", &vpc, "-a", &ami, &mbox]);
    c.check("tyrell metrics", &["metrics"]);

    let sw = unique("js");
    let base = c.check("tyrell stacks create -v VPC NAME", &["stacks", "create", "-v", &vpc, &sw]);
    assert!(base["metrics_security_group"].is_string(), "{base}");
    c.check("tyrell roles", &["roles"]);
    c.check("tyrell roles render ROLE", &["roles", "render", "bee"]);
    c.check("tyrell roles render ROLE --template", &["roles", "render", "bee", "--template"]);

    // Role versions.
    c.check("tyrell ROLE create -a AMI SWARM --dry-run", &["routers", "create", "-a", &ami, "--dry-run", &sw]);
    for v in ["v1", "v2", "v3", "v4"] {
        c.check("tyrell ROLE create -a AMI SWARM", &["routers", "create", "-a", &ami, "-s", "1", "--version", v, &sw]);
    }
    c.check("tyrell ROLE create -a AMI SWARM", &["workers", "create", "-a", &ami, "-s", "1", &sw]);
    c.check("tyrell ROLE [SWARM]", &["routers", &sw]);
    c.check("tyrell ROLE [SWARM]", &["routers", "list"]);
    c.check("tyrell ROLE scale SWARM VERSION N", &["routers", "scale", &sw, "v4", "2"]);

    // Traffic: switches, what they show, a lock broken (readable, then not).
    c.check("tyrell traffic ROLE SWARM", &["traffic", "elb", &sw]);
    c.check("tyrell traffic ROLE SWARM --version VERSION", &["traffic", "elb", &sw, "--router", "v1"]);
    let done = c.check(
        "tyrell traffic ROLE SWARM --version VERSION",
        &["traffic", "elb", &sw, "--router", "v2", "--canary", "50", "--bake", "0"],
    );
    assert_eq!(done["switch"]["steps"], serde_json::json!([50, 100]), "{done}");
    let put_lock = |value: &str| {
        block_on(async {
            let ssm = emulator().ssm().await;
            ssm.put_parameter()
                .name(format!("/tyrell/{sw}/locks/router"))
                .value(value)
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .overwrite(true)
                .send()
                .await
                .unwrap();
        })
    };
    put_lock(
        r#"{"holder":"ann@laptop","host":"laptop","pid":4242,"since":"2026-11-23T09:00:00Z","from":"v1","to":"v2"}"#,
    );
    let shown = c.check("tyrell traffic ROLE SWARM", &["traffic", "elb", &sw]);
    assert_eq!(shown["lock"]["holder"], "ann@laptop", "{shown}");
    let broke = c.check("tyrell traffic ROLE SWARM --force-unlock", &["traffic", "elb", &sw, "--force-unlock"]);
    assert_eq!(broke["broke_lock"]["pid"], 4242, "{broke}");
    put_lock("not tyrell's");
    let broke = c.check("tyrell traffic ROLE SWARM --force-unlock", &["traffic", "elb", &sw, "--force-unlock"]);
    assert_eq!(broke["broke_lock"]["unreadable"], "not tyrell's", "{broke}");
    c.check("tyrell traffic ROLE SWARM --force-unlock", &["traffic", "elb", &sw, "--force-unlock"]);
    c.check("tyrell traffic ROLE SWARM --version VERSION", &["traffic", "elb", &sw, "--rollback"]);
    c.check("tyrell traffic ROLE SWARM", &["traffic", "workers", &sw]);

    c.check("tyrell stacks", &["stacks"]);
    c.check("tyrell stacks describe NAME", &["stacks", "describe", &sw]);
    c.check("tyrell ROLE remove SWARM VERSION", &["routers", "remove", &sw, "v4"]);
    // v1 is what --rollback returns to: kept; v3 goes.
    let pruned = c.check("tyrell ROLE prune SWARM", &["routers", "prune", &sw, "--keep", "0"]);
    assert_eq!(pruned["removed"], serde_json::json!(["v3"]), "{pruned}");

    // Builds: one made by a stand-in Packer that reports an image registered beforehand.
    let image = block_on(async {
        let ec2 = emulator().ec2().await;
        let out =
            ec2.register_image().name(unique("tyrell-bee-j1")).root_device_name("/dev/xvda").send().await.unwrap();
        out.image_id().unwrap().to_string()
    });
    let packer = tempfile::tempdir().unwrap();
    let script = format!("#!/bin/sh\necho '1700000291,amazon-ebs,artifact,0,id,{}:{image}'\n", emulator().region);
    std::fs::write(packer.path().join("packer"), script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(packer.path().join("packer"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", packer.path().display(), std::env::var("PATH").unwrap_or_default());
    let in_repo = |args: &[&str]| -> Value {
        let out = tyrell()
            .args(args)
            .args(["-o", "json"])
            .env("PATH", &path)
            .current_dir(testkit::workspace_root())
            .output()
            .unwrap();
        assert!(out.status.success(), "tyrell {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let plan = in_repo(&["builds", "create", "bee", "--version", "j1", "--dry-run"]);
    c.check_value("tyrell builds create ROLE --dry-run", &plan, &["builds", "create", "bee", "--dry-run"]);
    let built = in_repo(&["builds", "create", "bee", "--version", "j1"]);
    c.check_value("tyrell builds create ROLE", &built, &["builds", "create", "bee"]);
    assert_eq!(built["ami"], image.as_str());
    c.check("tyrell builds", &["builds", "--role", "bee"]);
    c.check("tyrell builds remove AMI", &["builds", "remove", &image]);

    // Removals.
    c.check("tyrell stacks remove NAME", &["stacks", "remove", &sw, "--all"]);
    c.check("tyrell metrics remove NAME", &["metrics", "remove", &mbox]);
    // `network remove` cannot succeed on the emulator (it cannot delete a VPC's internet
    // gateway and routes: ../shared/EMULATOR.md), so its output is checked by the unit
    // test of `commands::network::Removed`; here only that the emulator is why.
    let unused = unique("jx");
    c.check("tyrell network create NAME", &["network", "create", &unused]);
    let err = fails(exit::AWS, &["network", "remove", &unused]);
    assert!(err.contains("DependencyViolation"), "{err}");

    // Every documented command was run.
    let documented: BTreeSet<String> =
        c.shapes.keys().filter(|k| k.starts_with("tyrell ") && *k != "tyrell network remove NAME").cloned().collect();
    let missed: Vec<&String> = documented.difference(&c.seen).collect();
    assert!(missed.is_empty(), "documented in docs/JSON.md but not checked: {missed:?}");
}
