//! `tyrell builds` and `-a latest`, through the real binary against the emulator.
//!
//! The emulator cannot run Packer's EC2 build (instances never boot, there is no SSH), so
//! a bake is stood in for in two ways: `RegisterImage` + tags (what a finished build leaves
//! behind), and a stand-in `packer` on PATH that prints the machine-readable output
//! recorded from a real amazon-ebs build and reports an AMI the test registered.
//! Each test uses its own role, so parallel tests never see each other's builds as newest.

mod support;

use std::path::Path;
use std::process::Output;
use std::sync::OnceLock;

use aws_sdk_ec2::types::Tag;
use support::{block_on, emulator, exit, fails, json, ok, unique};

/// Registers an image owned by the account, with these tags.
fn register(name: &str, tags: &[(&str, &str)]) -> String {
    block_on(async {
        let ec2 = emulator().ec2().await;
        let out = ec2.register_image().name(name).root_device_name("/dev/xvda").send().await.unwrap();
        let id = out.image_id().unwrap().to_string();
        if !tags.is_empty() {
            let tags: Vec<Tag> = tags.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build()).collect();
            ec2.create_tags().resources(&id).set_tags(Some(tags)).send().await.unwrap();
        }
        id
    })
}

/// What a finished `builds create` leaves behind: an image with tyrell's tags.
fn build(role: &str, version: &str) -> String {
    let name = unique(&format!("tyrell-{role}-{version}"));
    register(&name, &[("tyrell:role", role), ("tyrell:version", version), ("tyrell:built-by", "tyrell")])
}

fn image_tags(ami: &str) -> Option<Vec<(String, String)>> {
    block_on(async {
        let ec2 = emulator().ec2().await;
        let out = ec2.describe_images().owners("self").send().await.unwrap();
        out.images().iter().find(|i| i.image_id() == Some(ami)).map(|i| {
            let mut t: Vec<(String, String)> =
                i.tags().iter().map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string())).collect();
            t.sort();
            t
        })
    })
}

fn ids(builds: &serde_json::Value) -> Vec<String> {
    builds["builds"].as_array().unwrap().iter().map(|b| b["ami"].as_str().unwrap().to_string()).collect()
}

/// One swarm for the tests that deploy versions (a base stack takes a while).
fn shared_swarm() -> &'static str {
    static S: OnceLock<String> = OnceLock::new();
    S.get_or_init(|| support::swarm("bld").0)
}

#[test]
fn lists_tyrell_builds_newest_first_and_ignores_other_images() {
    // Newest by creation time, not by version: "i10" sorts before "i9" as text.
    let old = build("indexer", "i9");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let new = build("indexer", "i10");
    let broker = build("broker", "b1");
    let foreign = register(&unique("someone-elses"), &[("Name", "not tyrell's")]);
    let half = register(&unique("half-tagged"), &[("tyrell:role", "indexer")]);

    let listed = json(&["builds", "--role", "indexer"]);
    let mine: Vec<String> = ids(&listed).into_iter().filter(|id| [&old, &new].contains(&id)).collect();
    assert_eq!(mine, vec![new.clone(), old.clone()], "newest first: {listed:#}");
    let first = listed["builds"].as_array().unwrap().iter().find(|b| b["ami"] == new.as_str()).unwrap();
    assert_eq!(first["role"], "indexer");
    assert_eq!(first["version"], "i10");
    assert_eq!(first["state"], "available");
    assert!(first["in_use"].as_array().unwrap().is_empty());
    assert!(!ids(&listed).contains(&broker), "--role indexer listed a broker build");

    let all = ids(&json(&["builds"]));
    assert!(all.contains(&old) && all.contains(&new) && all.contains(&broker), "{all:?}");
    assert!(!all.contains(&foreign), "listed an image without tyrell's tags");
    assert!(!all.contains(&half), "listed an image without tyrell:built-by=tyrell");

    // `list` is the same as no subcommand; nouns work as roles; the table has its columns.
    let table = ok(&["builds", "list", "--role", "indexers"]);
    assert!(table.starts_with("AMI") && table.contains("IN USE BY") && table.contains(&new), "{table}");
    assert!(fails(exit::USAGE, &["builds", "--role", "nosuch"]).contains("unknown role \"nosuch\""));
}

#[test]
fn latest_resolves_to_the_newest_build_of_the_role() {
    let swarm = shared_swarm();
    let v1 = build("worker", "w1");
    let v2 = build("worker", "w2");
    let plan = |ami: &str| json(&["workers", "create", "-a", ami, "--dry-run", swarm])["parameters"]["AmiId"].clone();
    assert_eq!(plan("latest"), v2.as_str());
    assert_eq!(plan("latest:w1"), v1.as_str());

    let err = fails(exit::NOT_FOUND, &["workers", "create", "-a", "latest:w9", "--dry-run", swarm]);
    assert!(err.contains("no worker build with version w9"), "{err}");
    let err = fails(exit::USAGE, &["workers", "create", "-a", "latest:W-1", "--dry-run", swarm]);
    assert!(err.contains("invalid version \"W-1\""), "{err}");
    // No metrics build exists in this emulator: one sentence saying how to make one.
    let err = fails(exit::NOT_FOUND, &["metrics", "create", "-v", "vpc-0abc1234", "-a", "latest", &unique("mx")]);
    assert!(err.contains("no metrics builds: run tyrell builds create metrics"), "{err}");
}

#[test]
fn remove_refuses_a_build_in_use_and_removes_one_that_is_not() {
    let swarm = shared_swarm();
    let used = build("bee", "e1");
    let idle = build("bee", "e2");
    let version = json(&["bees", "create", "-a", "latest:e1", "-s", "1", "--no-schedule", swarm])["version"]
        .as_str()
        .unwrap()
        .to_string();
    let stack = format!("{swarm}-bee-{version}");

    let listed = json(&["builds", "--role", "bee"]);
    let entry = listed["builds"].as_array().unwrap().iter().find(|b| b["ami"] == used.as_str()).unwrap();
    assert_eq!(entry["in_use"], serde_json::json!([stack]));

    let err = fails(exit::IN_USE, &["builds", "remove", &used]);
    assert!(err.contains(&format!("is in use by stack(s) {stack}")), "{err}");
    assert!(image_tags(&used).is_some(), "a refused remove deregistered the image");

    let gone = json(&["builds", "remove", &idle]);
    assert_eq!(gone["removed"], idle.as_str());
    assert!(image_tags(&idle).is_none(), "{idle} is still registered");
    assert!(!ids(&json(&["builds", "--role", "bee"])).contains(&idle));

    let foreign = register(&unique("not-a-build"), &[]);
    let err = fails(exit::NOT_FOUND, &["builds", "remove", &foreign]);
    assert!(err.contains("is not a tyrell build"), "{err}");
    assert!(fails(exit::NOT_FOUND, &["builds", "remove", "ami-0000000000000000f"])
        .contains("this account owns no AMI ami-0000000000000000f"));
    assert!(fails(exit::USAGE, &["builds", "remove", "ami-XYZ"]).contains("invalid AMI id"));
}

// ---- builds create, with a stand-in packer ----------------------------------------------

/// `packer build -machine-readable` of a successful amazon-ebs build, as Packer 1.6
/// prints it (recorded; ids replaced by VERSION and AMI_ID).
const PACKER_OK: &str = r#"1700000000,,ui,say,amazon-ebs: output will be in this color.
1700000000,,ui,say,==> amazon-ebs: Prevalidating any provided VPC information
1700000000,,ui,say,==> amazon-ebs: Prevalidating AMI Name: tyrell-router-VERSION
1700000001,,ui,message,    amazon-ebs: Found Image ID: ami-0a1b2c3d4e5f60718
1700000001,,ui,say,==> amazon-ebs: Creating temporary keypair: packer_6560b0e1-1c1e-4b7e-9f0a-2b1d1c1e1f10
1700000002,,ui,say,==> amazon-ebs: Creating temporary security group for this instance: packer_6560b0e2-7d3a-4f8e-a1c2-3b4d5e6f7a8b
1700000002,,ui,say,==> amazon-ebs: Authorizing access to port 22 from [203.0.113.7/32] in the temporary security groups...
1700000003,,ui,say,==> amazon-ebs: Launching a source AWS instance...
1700000004,,ui,message,    amazon-ebs: Adding tag: "Name": "packer-tyrell-router-VERSION"
1700000020,,ui,message,    amazon-ebs: Instance ID: i-0123456789abcdef0
1700000020,,ui,say,==> amazon-ebs: Waiting for instance (i-0123456789abcdef0) to become ready...
1700000060,,ui,say,==> amazon-ebs: Using ssh communicator to connect: 203.0.113.50
1700000065,,ui,say,==> amazon-ebs: Waiting for SSH to become available...
1700000080,,ui,say,==> amazon-ebs: Connected to SSH!
1700000080,,ui,say,==> amazon-ebs: Provisioning with shell script: /tmp/packer-shell104721
1700000081,,ui,say,==> amazon-ebs: Uploading /work/main/target/release/bee => /tmp/tyrell/bin/bee
1700000100,,ui,say,==> amazon-ebs: Provisioning with shell script: /work/main/packer/scripts/base.sh
1700000150,,ui,message,    amazon-ebs: Setting up awscli (2.9.19-1) ...
1700000200,,ui,say,==> amazon-ebs: Stopping the source instance...
1700000201,,ui,message,    amazon-ebs: Stopping instance
1700000230,,ui,say,==> amazon-ebs: Waiting for the instance to stop...
1700000240,,ui,say,==> amazon-ebs: Creating AMI tyrell-router-VERSION from instance i-0123456789abcdef0
1700000241,,ui,message,    amazon-ebs: AMI: AMI_ID
1700000241,,ui,say,==> amazon-ebs: Waiting for AMI to become ready...
1700000280,,ui,say,==> amazon-ebs: Adding tags to AMI (AMI_ID)...
1700000281,,ui,say,==> amazon-ebs: Tagging snapshot: snap-0123456789abcdef0
1700000281,,ui,say,==> amazon-ebs: Creating AMI tags
1700000282,,ui,say,==> amazon-ebs: Terminating the source AWS instance...
1700000290,,ui,say,==> amazon-ebs: Cleaning up any extra volumes...
1700000290,,ui,say,==> amazon-ebs: No volumes to clean up%!(PACKER_COMMA) skipping
1700000290,,ui,say,==> amazon-ebs: Deleting temporary security group...
1700000291,,ui,say,==> amazon-ebs: Deleting temporary keypair...
1700000291,,ui,say,Build 'amazon-ebs' finished after 4 minutes 51 seconds.
1700000291,,ui,say,\n==> Wait completed after 4 minutes 51 seconds
1700000291,,ui,say,\n==> Builds finished. The artifacts of successful builds are:
1700000291,amazon-ebs,artifact-count,1
1700000291,amazon-ebs,artifact,0,builder-id,mitchellh.amazonebs
1700000291,amazon-ebs,artifact,0,id,us-east-1:AMI_ID
1700000291,amazon-ebs,artifact,0,string,AMIs were created:\nus-east-1: AMI_ID\n
1700000291,amazon-ebs,artifact,0,files-count,0
1700000291,amazon-ebs,artifact,0,end
1700000291,,ui,say,--> amazon-ebs: AMIs were created:\nus-east-1: AMI_ID\n
"#;

/// A build that fails when launching its instance (recorded; the account lacked ec2:RunInstances).
const PACKER_FAILED: &str = r#"1700000000,,ui,say,amazon-ebs: output will be in this color.
1700000000,,ui,say,==> amazon-ebs: Prevalidating any provided VPC information
1700000000,,ui,say,==> amazon-ebs: Prevalidating AMI Name: tyrell-router-VERSION
1700000001,,ui,message,    amazon-ebs: Found Image ID: ami-0a1b2c3d4e5f60718
1700000001,,ui,say,==> amazon-ebs: Creating temporary keypair: packer_6560b0e1-1c1e-4b7e-9f0a-2b1d1c1e1f10
1700000002,,ui,say,==> amazon-ebs: Launching a source AWS instance...
1700000003,,ui,error,==> amazon-ebs: Error launching source instance: UnauthorizedOperation: You are not authorized to perform this operation.
1700000003,,ui,say,==> amazon-ebs: Deleting temporary keypair...
1700000003,,ui,error,Build 'amazon-ebs' errored after 3 seconds 112 milliseconds: Error launching source instance: UnauthorizedOperation: You are not authorized to perform this operation.
1700000003,,ui,say,\n==> Wait completed after 3 seconds 112 milliseconds
1700000003,,ui,error,\n==> Some builds didn't complete successfully and had errors:
1700000003,,ui,error,--> amazon-ebs: Error launching source instance: UnauthorizedOperation: You are not authorized to perform this operation.
1700000003,,ui,say,\n==> Builds finished but no artifacts were created.
1700000003,amazon-ebs,error,Error launching source instance: UnauthorizedOperation: You are not authorized to perform this operation.\n    status code: 403%!(PACKER_COMMA) request id: 9f8e7d6c-5b4a-4321-8fed-cba987654321
"#;

/// A directory with a stand-in `packer`: it records its arguments and whether it inherited
/// AWS credentials from the environment, then runs `body`.
fn stand_in_packer(body: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "#!/bin/sh\nd=$(dirname \"$0\")\nprintf '%s\\n' \"$@\" >\"$d/args\"\nprintf '%s\\n' \"${{AWS_SECRET_ACCESS_KEY:+inherited}}\" >\"$d/env\"\n{body}\n"
    );
    let path = dir.path().join("packer");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A stand-in that prints `output` and exits with `code`.
fn replaying(output: &str, code: i32) -> tempfile::TempDir {
    let dir = stand_in_packer(&format!("cat \"$d/output\"\nexit {code}"));
    std::fs::write(dir.path().join("output"), output).unwrap();
    dir
}

/// `tyrell ARGS` from the workspace root with `path_dir` first on PATH (or as all of PATH).
fn with_path(path_dir: &Path, only: bool, args: &[&str]) -> Output {
    let path = if only {
        path_dir.display().to_string()
    } else {
        format!("{}:{}", path_dir.display(), std::env::var("PATH").unwrap_or_default())
    };
    support::tyrell().args(args).env("PATH", path).current_dir(testkit::workspace_root()).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn head_commit() -> String {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(testkit::workspace_root())
        .output()
        .unwrap();
    text(&out.stdout).trim().to_string()
}

#[test]
fn create_runs_packer_follows_it_and_tags_the_ami() {
    // What the real build would have registered (Packer tags it too; tyrell makes sure).
    let version = "r1";
    let ami = register(&unique("tyrell-router-r1"), &[]);
    let packer = replaying(&PACKER_OK.replace("AMI_ID", &ami).replace("VERSION", version), 0);

    let out = with_path(packer.path(), false, &["builds", "create", "router", "--version", version, "-o", "json"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let b: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(b["ami"], ami.as_str());
    assert_eq!(b["role"], "router");
    assert_eq!(b["version"], version);
    // Progress: Packer's steps as they come, not its detail lines or machine-readable noise.
    assert!(stderr.contains("==> amazon-ebs: Launching a source AWS instance..."), "{stderr}");
    assert!(stderr.contains("No volumes to clean up, skipping"), "{stderr}");
    assert!(!stderr.contains("artifact,0"), "{stderr}");

    let commit = head_commit();
    let tags = image_tags(&ami).unwrap();
    for want in [
        ("tyrell:role", "router"),
        ("tyrell:version", version),
        ("tyrell:built-by", "tyrell"),
        ("tyrell:commit", commit.as_str()),
    ] {
        assert!(tags.contains(&(want.0.to_string(), want.1.to_string())), "{want:?} missing from {tags:?}");
    }
    assert_eq!(b["commit"], commit.as_str());

    // What Packer was given: the variables and the template, never a credential; it gets
    // those by inheriting the environment (the AWS chain).
    let args = std::fs::read_to_string(packer.path().join("args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(&args[..2], ["build", "-machine-readable"]);
    for v in ["role=router", "version=r1", "region=us-east-1", &format!("source_commit={commit}")] {
        assert!(args.contains(&v), "{v} missing from {args:?}");
    }
    let bins = testkit::workspace_root().join("target/release");
    assert!(args.contains(&format!("binaries_dir={}", bins.display()).as_str()), "{args:?}");
    assert!(args.last().unwrap().ends_with("packer/tyrell.json"), "{args:?}");
    assert!(
        !args.iter().any(|a| a.contains("testing") || a.contains("AWS_")),
        "a credential in packer's arguments: {args:?}"
    );
    assert_eq!(std::fs::read_to_string(packer.path().join("env")).unwrap().trim(), "inherited");

    // The new build is listed, and a second build of the same version is refused before packer runs.
    assert!(ids(&json(&["builds", "--role", "router"])).contains(&ami));
    let again = with_path(packer.path(), false, &["builds", "create", "router", "--version", version]);
    assert_eq!(again.status.code(), Some(exit::EXISTS));
    assert!(
        text(&again.stderr).contains(&format!("router build r1 already exists ({ami})")),
        "{}",
        text(&again.stderr)
    );
}

#[test]
fn create_reports_a_failed_build_with_packers_error() {
    let packer = replaying(&PACKER_FAILED.replace("VERSION", "r2"), 1);
    let out = with_path(packer.path(), false, &["builds", "create", "router", "--version", "r2"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::OTHER), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let last = stderr.lines().last().unwrap();
    assert_eq!(
        last,
        "error: packer build of router r2 failed: Error launching source instance: UnauthorizedOperation: You are not authorized to perform this operation. status code: 403, request id: 9f8e7d6c-5b4a-4321-8fed-cba987654321"
    );
}

#[test]
fn create_is_bounded_by_the_timeout() {
    let packer = stand_in_packer("exec sleep 60");
    let started = std::time::Instant::now();
    let out = with_path(packer.path(), false, &["--timeout", "2", "builds", "create", "router", "--version", "r3"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::OTHER), "{stderr}");
    assert!(stderr.contains("packer build of router r3 did not finish within 2s (--timeout)"), "{stderr}");
    assert!(started.elapsed().as_secs() < 30, "took {:?}", started.elapsed());
}

#[test]
fn create_without_packer_says_how_to_install_it() {
    let empty = tempfile::tempdir().unwrap();
    let out = with_path(empty.path(), true, &["builds", "create", "router", "--version", "r4"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::OTHER), "{stderr}");
    assert!(stderr.contains("packer is not on PATH: install HashiCorp Packer"), "{stderr}");
}

#[test]
fn dry_run_prints_the_variables_and_command_without_running_packer() {
    // A stand-in that would fail the test if it ran.
    let packer = stand_in_packer("echo ran >\"$d/ran\"; exit 1");
    let out = with_path(
        packer.path(),
        false,
        &[
            "builds",
            "create",
            "routers",
            "--base-ami-filter",
            "debian-12-amd64-2026*",
            "--ssh-cidr",
            "203.0.113.7/32",
            "--dry-run",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["role"], "router");
    let v = &plan["variables"];
    assert_eq!(v["role"], "router");
    assert_eq!(v["region"], "us-east-1");
    assert_eq!(v["base_ami_filter"], "debian-12-amd64-2026*");
    assert_eq!(v["ssh_cidr"], "203.0.113.7/32");
    assert!(v["version"].as_str().unwrap().starts_with('v'), "a generated version: {v}");
    assert!(!packer.path().join("ran").exists(), "--dry-run ran packer");

    let table = text(&with_path(packer.path(), false, &["builds", "create", "bee", "--dry-run"]).stdout);
    assert!(table.contains("command:") && table.contains("packer build -machine-readable -var"), "{table}");
    assert!(!table.contains("testing"), "a credential in the dry run: {table}");

    let err = text(
        &with_path(packer.path(), false, &["builds", "create", "bee", "--ssh-cidr", "1.2.3.4/33", "--dry-run"]).stderr,
    );
    assert!(err.contains("invalid CIDR \"1.2.3.4/33\""), "{err}");
}
