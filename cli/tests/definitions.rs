//! The role definitions as data: every CloudFormation template passes cfn-lint (raw, and
//! as sent, with each role's user data embedded), and every role's rendered cloud-init is
//! YAML with the #cloud-config header that cloud-init's own schema accepts.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

fn root() -> PathBuf {
    testkit::workspace_root()
}

/// Role directories with a role.toml (the fleet roles), and every template.yaml.
fn roles() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("roles"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("role.toml").exists())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

fn templates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("roles"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("template.yaml"))
        .filter(|p| p.exists())
        .collect();
    v.sort();
    v
}

fn cfn_lint(files: &[&Path]) {
    let out = Command::new(testkit::venv_tool("cfn-lint")).args(files).output().unwrap();
    assert!(
        out.status.success(),
        "cfn-lint found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A manifest's top-level `key = "value"` (role.toml is flat where these keys live).
fn manifest_value(role: &str, key: &str) -> String {
    let text = std::fs::read_to_string(root().join("roles").join(role).join("role.toml")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix('=')?.trim().strip_prefix('"')?.strip_suffix('"'))
        .unwrap_or_else(|| panic!("roles/{role}/role.toml has no {key}"))
        .to_string()
}

/// The roles are what roles/ holds (no list of them here): each directory's manifest
/// names itself, `tyrell roles` lists exactly those, with their nouns.
#[test]
fn every_role_directory_is_complete() {
    let roles = roles();
    assert!(roles.len() >= 5, "broker, router, bee, indexer and worker at least: {roles:?}");
    for r in &roles {
        assert_eq!(&manifest_value(r, "role"), r, "roles/{r}/role.toml names another role");
    }
    let listed = json(&["roles"]);
    let names: Vec<&str> = listed["roles"].as_array().unwrap().iter().map(|r| r["role"].as_str().unwrap()).collect();
    assert_eq!(names, roles);
    let nouns: Vec<&str> = listed["roles"].as_array().unwrap().iter().map(|r| r["noun"].as_str().unwrap()).collect();
    let want: Vec<String> = roles.iter().map(|r| manifest_value(r, "noun")).collect();
    assert_eq!(nouns, want);
    for r in roles.iter().chain(["metrics".to_string()].iter()) {
        assert!(root().join("roles").join(r).join("cloud-init.yaml").exists(), "roles/{r} has no cloud-init.yaml");
    }
    // The stacks that are not a role's fleet: the network, the swarm's base, the fleet
    // template every role shares, the metrics box, and a bee region's two stacks.
    let stacks: Vec<String> =
        templates().iter().map(|p| p.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(stacks, ["base", "bee-link", "bee-region", "fleet", "metrics", "network"]);
}

#[test]
fn cfn_lint_passes_on_every_template() {
    let t = templates();
    cfn_lint(&t.iter().map(PathBuf::as_path).collect::<Vec<_>>());
}

#[test]
fn cfn_lint_passes_on_every_template_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for r in roles().iter().chain(["metrics".to_string()].iter()) {
        let t = ok(&["roles", "render", r, "--template"]);
        assert!(!t.contains("\"{{user_data}}\""), "{r}: placeholder left in the template");
        let p = dir.path().join(format!("{r}.yaml"));
        std::fs::write(&p, t).unwrap();
        files.push(p);
    }
    cfn_lint(&files.iter().map(PathBuf::as_path).collect::<Vec<_>>());
}

#[test]
fn rendered_cloud_init_is_valid_for_every_role() {
    let dir = tempfile::tempdir().unwrap();
    let cloud_init = testkit::system_tool("cloud-init");
    for r in roles().iter().chain(["metrics".to_string()].iter()) {
        let text = ok(&["roles", "render", r, "--set", "version=vcheck", "--set", "stack=checkswarm"]);
        assert!(text.starts_with("#cloud-config\n"), "{r}: no #cloud-config header");
        assert!(text.contains("vcheck") && text.contains("checkswarm"), "{r}: the values were not rendered in");
        // Every handlebars expression opens with `{{`; a lone `}}` is JSON closing two
        // objects (the dashboard, one panel per line).
        assert!(!text.contains("{{"), "{r}: unrendered handlebars left");
        let p = dir.path().join(format!("{r}.yaml"));
        std::fs::write(&p, &text).unwrap();
        // YAML that parses, with a mapping at the top.
        let py = testkit::venv_tool("python");
        let out = Command::new(&py)
            .args([
                "-c",
                "import sys,yaml; d=yaml.safe_load(open(sys.argv[1])); assert isinstance(d, dict), type(d)",
                p.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{r}: not valid YAML: {}", String::from_utf8_lossy(&out.stderr));
        let out = Command::new(&cloud_init).args(["schema", "-c", p.to_str().unwrap()]).output().unwrap();
        assert!(
            out.status.success(),
            "{r}: cloud-init schema rejects it:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn render_refuses_unknown_variables_and_roles() {
    let err = fails(exit::USAGE, &["roles", "render", "bee", "--set", "nosuch=1"]);
    assert!(err.contains("unknown variable \"nosuch\""), "{err}");
    let err = fails(exit::NOT_FOUND, &["roles", "render", "toaster"]);
    assert!(err.contains("toaster"), "{err}");
}

/// `TYRELL_ROLES_DIR` reads the definitions from disk; a fresh clone has no `templates/`
/// (git keeps no empty directory), and partials are optional.
#[test]
fn roles_dir_on_disk_works_without_a_templates_directory() {
    let dir = tempfile::tempdir().unwrap();
    let roles = dir.path().join("roles");
    let status = Command::new("cp").arg("-r").arg(root().join("roles")).arg(&roles).status().unwrap();
    assert!(status.success());
    let out = tyrell().env("TYRELL_ROLES_DIR", &roles).args(["roles", "render", "bee"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("#cloud-config\n"));
}

/// The help names what the role definitions define, not a hand-written list: a new role
/// in a test library shows up as a noun of `tyrell --help` and, with its `[traffic]
/// aliases`, in `tyrell traffic --help`; the shift strategies come from `Shift` itself.
#[test]
fn help_lists_the_roles_of_the_library_it_runs_with() {
    let dir = tempfile::tempdir().unwrap();
    let roles = dir.path().join("roles");
    let status = Command::new("cp").arg("-r").arg(root().join("roles")).arg(&roles).status().unwrap();
    assert!(status.success());
    std::fs::create_dir(roles.join("api")).unwrap();
    std::fs::copy(roles.join("router/cloud-init.yaml"), roles.join("api/cloud-init.yaml")).unwrap();
    let manifest = std::fs::read_to_string(roles.join("router/role.toml"))
        .unwrap()
        .replace("role = \"router\"", "role = \"api\"")
        .replace("noun = \"routers\"", "noun = \"apis\"")
        .replace("listener = \"AlbListenerArn\"", "listener = \"ApiListenerArn\"")
        .replace("aliases = [\"elb\", \"alb\"]", "aliases = [\"api-lb\"]");
    std::fs::write(roles.join("api/role.toml"), manifest).unwrap();
    let help = |args: &[&str]| {
        let out = tyrell().env("TYRELL_ROLES_DIR", &roles).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let top = help(&["--help"]);
    assert!(top.lines().any(|l| l.trim_start().starts_with("apis ")), "{top}");
    let traffic = help(&["traffic", "--help"]);
    assert!(traffic.contains("api-lb (the apis)") && traffic.contains("elb (the routers)"), "{traffic}");
    for noun in ["apis", "brokers", "bees", "indexers", "routers", "workers"] {
        assert!(traffic.contains(noun), "{noun} missing: {traffic}");
    }
    assert!(traffic.contains("linear:PCT") && traffic.contains("all-at-once"), "{traffic}");
    // The embedded library has no such role.
    assert!(!ok(&["traffic", "--help"]).contains("apis"));
}

/// Clients reach the broker through its internal NLB, whose addresses are in the VPC but
/// not in the broker's security group: an egress rule of a client group naming that group
/// blocks them on AWS (the emulator ignores egress rules, so only the template can show
/// it). Only the NLB's own group sends to the broker group.
#[test]
fn mqtt_clients_may_reach_the_broker_nlb() {
    let base = std::fs::read_to_string(root().join("roles/base/template.yaml")).unwrap();
    // The resource blocks: from "  Name:" at two spaces' indent to the next one.
    let block = |name: &str| -> String {
        let start = base.find(&format!("\n  {name}:\n")).unwrap_or_else(|| panic!("no resource {name}"));
        let rest = &base[start + 1..];
        let end = rest
            .match_indices('\n')
            .map(|(i, _)| i)
            .find(|&i| {
                let l = &rest[i + 1..];
                l.starts_with("  ") && !l.starts_with("   ") && !l.starts_with("  #")
            })
            .unwrap_or(rest.len());
        rest[..end].to_string()
    };
    for client in ["RouterSecurityGroup", "BeeSecurityGroup", "IndexerSecurityGroup"] {
        let b = block(client);
        assert!(!b.contains("DestinationSecurityGroupId"), "{client} names a group as an MQTT destination:\n{b}");
        assert!(
            b.contains("Description: MQTT over TLS (8883) to the broker NLB in the VPC")
                && b.contains("FromPort: 8883")
                && !b.contains("1883"),
            "{client} needs egress to the broker NLB in the VPC:\n{b}"
        );
    }
    assert!(block("NlbSecurityGroup").contains("DestinationSecurityGroupId: !GetAtt BrokerSecurityGroup.GroupId"));
}
