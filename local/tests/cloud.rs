//! The local cloud for real: a bake, a box that boots and runs its user data, the
//! metadata service from inside a box, and `down` after a kill -9 of the runner.
//!
//! Runs as root (namespaces, nspawn). The base filesystem is cached under
//! /var/cache/tyrell-local (the first run makes it with mmdebstrap: a few minutes, once);
//! the images these tests bake go to a temporary directory. Each test follows its own
//! region of the shared emulator, so its runner sees only its own instances.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod support;
use std::time::{Duration, Instant};
use support::{images_dir, ok, require_tools};

use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};
use base64::Engine as _;

const EXE: &str = env!("CARGO_BIN_EXE_tyrell-local");

fn local(region: &str) -> Command {
    let e = testkit::Emulator::shared();
    let mut c = Command::new(EXE);
    for (k, v) in e.env() {
        c.env(k, v);
    }
    c.env("AWS_REGION", region).env("TYRELL_LOCAL_IMAGES", images_dir()).env_remove("TYRELL_LOCAL_CLOUD");
    c
}

/// The bee image, baked once per test process (with the debug binaries).
struct Baked {
    name: String,
    ami: String,
    dir: PathBuf,
    stderr: String,
    seconds: f64,
}

fn baked() -> &'static Baked {
    static B: OnceLock<Baked> = OnceLock::new();
    B.get_or_init(|| {
        require_tools();
        let bins = testkit::bin("bee").parent().unwrap().to_path_buf();
        let start = Instant::now();
        let o = local("us-east-1")
            .args(["bake", "bee", "--json", "--binaries"])
            .arg(&bins)
            .output()
            .expect("run tyrell-local bake");
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "bake failed:\n{stderr}");
        let rec: serde_json::Value = serde_json::from_slice(&o.stdout).expect("bake --json prints the image");
        Baked {
            name: rec["name"].as_str().unwrap().to_string(),
            ami: rec["ami"].as_str().unwrap().to_string(),
            dir: PathBuf::from(rec["dir"].as_str().unwrap()),
            stderr,
            seconds: start.elapsed().as_secs_f64(),
        }
    })
}

async fn ec2(region: &str) -> aws_sdk_ec2::Client {
    let e = testkit::Emulator::shared();
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&e.url)
        .region(aws_config::Region::new(region.to_string()))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "test"))
        .load()
        .await;
    aws_sdk_ec2::Client::new(&conf)
}

/// Registers the baked image in `region` and runs one instance of it with `user_data`.
async fn launch(region: &str, user_data: &str) -> (aws_sdk_ec2::Client, String, String) {
    let b = baked();
    let mut c = local(region);
    c.args(["register", &b.name]);
    let ami = ok(c).trim().to_string();
    let ec2 = ec2(region).await;
    let out = ec2
        .run_instances()
        .image_id(&ami)
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .user_data(base64::engine::general_purpose::STANDARD.encode(user_data))
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key("tyrell:role").value("bee").build())
                .tags(Tag::builder().key("tyrell:version").value("vtest").build())
                .build(),
        )
        .send()
        .await
        .expect("RunInstances");
    let i = &out.instances()[0];
    (ec2, i.instance_id().unwrap().to_string(), i.private_ip_address().unwrap().to_string())
}

/// A runner for `cloud`, following `region`; stopped (SIGTERM) when dropped.
struct Runner {
    guard: Option<testkit::proc::Guard>,
    cloud: String,
    region: String,
}

impl Runner {
    fn start(cloud: &str, region: &str) -> Runner {
        let log = std::env::temp_dir().join(format!("{cloud}-runner.log"));
        let mut c = local(region);
        c.args(["run", "--cloud", cloud, "--poll", "0.5", "--boot-timeout", "60"]);
        let guard = testkit::proc::Guard::spawn(c, &log);
        Runner { guard: Some(guard), cloud: cloud.into(), region: region.into() }
    }

    fn status(&self) -> serde_json::Value {
        let o = local(&self.region).args(["status", "--json", "--cloud", &self.cloud]).output().unwrap();
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Waits until the instance's box is booted; fails naming it with its error.
    fn wait_booted(&self, instance: &str, within: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let s = self.status();
            if let Some(b) = s["boxes"].as_array().and_then(|a| a.iter().find(|b| b["instance"] == instance)) {
                if b["state"] == "booted" {
                    return b.clone();
                }
                assert_ne!(b["state"], "failed", "box {instance} failed: {}", b["error"]);
            }
            assert!(
                start.elapsed() < within,
                "box {instance} not booted within {within:?}; status: {s}\nrunner log:\n{}",
                std::fs::read_to_string(std::env::temp_dir().join(format!("{}-runner.log", self.cloud)))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn exec(&self, instance: &str, argv: &[&str]) -> String {
        ok({
            let mut c = local(&self.region);
            c.args(["exec", "--cloud", &self.cloud, instance, "--"]).args(argv);
            c
        })
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(g) = self.guard.take() {
            g.signal("TERM");
            let start = Instant::now();
            while g.alive() && start.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = local(&self.region).args(["down", "--cloud", &self.cloud]).output();
    }
}

fn unique_cloud(prefix: &str) -> String {
    testkit::unique(prefix)
}

fn netns_list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn bake_registers_an_image_with_the_build_tags() {
    let b = baked();
    eprintln!("bake took {:.1}s", b.seconds);
    let rootfs = b.dir.join("rootfs");
    assert!(rootfs.join("usr/local/bin/bee").is_file(), "install-binary.sh installed bee");
    assert!(rootfs.join("usr/bin/aws").exists(), "base.sh installed the AWS CLI");
    let release = std::fs::read_to_string(rootfs.join("etc/tyrell/ami-release")).expect("finish.sh ran");
    assert!(release.contains("role=bee"), "{release}");
    assert!(!rootfs.join("tmp/tyrell").exists(), "finish.sh removed the upload");
    assert!(b.stderr.contains("skipped Amazon's SSM agent"), "one line says the SSM agent was skipped:\n{}", b.stderr);
    assert_eq!(b.stderr.matches("skipped").count(), 1, "{}", b.stderr);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ec2 = ec2("us-east-1").await;
        let out = ec2.describe_images().owners("self").image_ids(&b.ami).send().await.expect("DescribeImages");
        let img = &out.images()[0];
        assert_eq!(img.name(), Some(b.name.as_str()));
        let tags: std::collections::BTreeMap<&str, &str> =
            img.tags().iter().map(|t| (t.key().unwrap(), t.value().unwrap())).collect();
        let keys: Vec<&str> = tags.keys().copied().collect();
        assert_eq!(
            keys,
            [
                "Name",
                "tyrell:base-ami",
                "tyrell:base-ami-name",
                "tyrell:built-by",
                "tyrell:commit",
                "tyrell:role",
                "tyrell:version"
            ],
            "exactly the tags of packer/tyrell.json"
        );
        assert_eq!(tags["tyrell:role"], "bee");
        assert_eq!(tags["tyrell:built-by"], "tyrell");
        assert!(tags["tyrell:version"].starts_with('v'));
    });

    // A second bake of the role reuses the cached base.
    let start = Instant::now();
    let bins = testkit::bin("bee").parent().unwrap().to_path_buf();
    let out = ok({
        let mut c = local("us-east-1");
        c.args(["bake", "bee", "--json", "--version", &format!("t{}", std::process::id()), "--binaries"]).arg(&bins);
        c
    });
    let rec: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rec["base_seconds"].as_f64(), Some(0.0), "the base came from the cache");
    eprintln!("cached bake took {:.1}s", start.elapsed().as_secs_f64());
}

#[test]
fn a_box_boots_and_runs_its_user_data() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let region = "eu-west-1";
    let user_data = "#cloud-config\nwrite_files:\n  - path: /etc/tyrell/hello\n    content: |\n      written by cloud-init\nruncmd:\n  - [sh, -c, 'cloud-init query v1.instance_id > /run/tyrell-runcmd']\n";
    let (ec2, id, ip) = rt.block_on(launch(region, user_data));
    let cloud = unique_cloud("tlb");
    let r = Runner::start(&cloud, region);
    let start = Instant::now();
    // A box whose nspawn stops while booting (it happens on a busy host) is started again:
    // its first nspawn is killed here once the container's systemd runs. A SIGKILLed nspawn
    // leaves its container running, orphaned, in the box's network namespace (CI saw the
    // second start refused: "RTNETLINK answers: File exists" for the veth it still held).
    let record = std::path::Path::new("/run/tyrell-local").join(&cloud).join("boxes").join(format!("{id}.json"));
    let (first, init) = wait_for(Duration::from_secs(30), || {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).ok()?).ok()?;
        let pid = (v["state"] == "starting").then(|| v["pid"].as_u64()).flatten()?;
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        let init = children
            .split_whitespace()
            .find(|c| std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == "systemd"))?;
        Some((pid, init.to_string()))
    });
    let killed = std::process::Command::new("kill").args(["-KILL", &first.to_string()]).status().unwrap();
    assert!(killed.success(), "kill -KILL {first}");
    let b = r.wait_booted(&id, Duration::from_secs(90));
    let orphan = std::fs::read_to_string(format!("/proc/{init}/stat"))
        .ok()
        .filter(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')));
    assert!(orphan.is_none(), "the first box's systemd (pid {init}) outlived its nspawn: {orphan:?}");
    let log = std::fs::read_to_string(std::env::temp_dir().join(format!("{cloud}-runner.log"))).unwrap_or_default();
    assert!(
        log.contains("stopped while booting") && log.contains("starting it again (attempt 2 of 3)"),
        "the runner did not start the box again:\n{log}"
    );
    eprintln!("box {id} booted in {:.1}s (runner's measure {})", start.elapsed().as_secs_f64(), b["boot_seconds"]);
    assert_eq!(b["ip"], ip.as_str());
    assert_eq!(b["role"], "bee");

    // cloud-init ran the user data from the NoCloud seed, as EC2's datasource would.
    let status = r.exec(&id, &["cloud-init", "status", "--wait"]);
    assert!(status.contains("done"), "cloud-init status: {status}");
    assert_eq!(r.exec(&id, &["cat", "/etc/tyrell/hello"]), "written by cloud-init\n");
    assert_eq!(r.exec(&id, &["cat", "/run/tyrell-runcmd"]).trim(), id);
    let sys = r.exec(&id, &["sh", "-c", "systemctl is-system-running || true"]);
    assert!(sys.trim() == "running" || sys.trim() == "degraded", "systemd: {sys}");
    assert!(r.exec(&id, &["sh", "-c", "systemctl is-active multi-user.target"]).contains("active"));
    assert_eq!(r.exec(&id, &["hostname"]).trim(), format!("ip-{}", ip.replace('.', "-")));
    assert!(r.exec(&id, &["ip", "-4", "-o", "addr", "show", "eth0"]).contains(&format!("{ip}/32")));

    // An instance that terminates stops its box.
    rt.block_on(ec2.terminate_instances().instance_ids(&id).send()).expect("TerminateInstances");
    let ns = format!("{cloud}-{id}");
    let start = Instant::now();
    while netns_list().contains(&ns) {
        assert!(start.elapsed() < Duration::from_secs(30), "box {id} still there 30s after its instance terminated");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(r.status()["boxes"].as_array().is_some_and(|a| a.is_empty()), "{}", r.status());
}

#[test]
fn the_metadata_service_wants_a_token_and_knows_the_box() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let region = "eu-west-2";
    let (_ec2, id, ip) = rt.block_on(launch(region, "#cloud-config\n"));
    let cloud = unique_cloud("tli");
    let r = Runner::start(&cloud, region);
    r.wait_booted(&id, Duration::from_secs(90));
    let imds = "http://169.254.169.254/latest";
    let code =
        r.exec(&id, &["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{imds}/meta-data/instance-id")]);
    assert_eq!(code, "401", "IMDSv1 (no token) is refused");
    let code = r.exec(
        &id,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "X-aws-ec2-metadata-token: bogus",
            &format!("{imds}/meta-data/instance-id"),
        ],
    );
    assert_eq!(code, "401", "a wrong token is refused");
    let get = |path: &str| {
        let script = format!(
            "t=$(curl -sf -X PUT {imds}/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60') && curl -sf -H \"X-aws-ec2-metadata-token: $t\" {imds}/{path}"
        );
        r.exec(&id, &["sh", "-c", &script])
    };
    assert_eq!(get("meta-data/instance-id"), id);
    assert_eq!(get("meta-data/local-ipv4"), ip);
    assert_eq!(get("meta-data/placement/region"), region);
    let doc: serde_json::Value = serde_json::from_str(&get("dynamic/instance-identity/document")).unwrap();
    assert_eq!(doc["instanceId"], id.as_str());
    assert_eq!(doc["region"], region);
    let role = get("meta-data/iam/security-credentials/");
    assert_eq!(role, "tyrell-bee");
    let creds: serde_json::Value =
        serde_json::from_str(&get(&format!("meta-data/iam/security-credentials/{role}"))).unwrap();
    assert_eq!(creds["Code"], "Success");
    assert!(creds["AccessKeyId"].as_str().is_some_and(|k| !k.is_empty()));
    // Not in an Auto Scaling group: no lifecycle state (404, as on EC2).
    let code = r.exec(
        &id,
        &["sh", "-c", &format!("t=$(curl -sf -X PUT {imds}/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60'); curl -s -o /dev/null -w %{{http_code}} -H \"X-aws-ec2-metadata-token: $t\" {imds}/meta-data/autoscaling/target-lifecycle-state")],
    );
    assert_eq!(code, "404");
    // AWS from inside the box, unmodified: Debian's AWS CLI (which ignores
    // AWS_ENDPOINT_URL) resolves the real endpoint name, trusts the local CA over HTTPS,
    // and signs with the credentials of the metadata service.
    let seen = r.exec(
        &id,
        &[
            "aws",
            "ec2",
            "describe-instances",
            "--region",
            region,
            "--instance-ids",
            &id,
            "--query",
            "Reservations[0].Instances[0].PrivateIpAddress",
            "--output",
            "text",
        ],
    );
    assert_eq!(seen.trim(), ip);
    // The token request needs a TTL.
    let code = r
        .exec(&id, &["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", &format!("{imds}/api/token")]);
    assert_eq!(code, "400");
}

#[test]
fn down_after_kill_9_leaves_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let region = "eu-central-1";
    let (_ec2, id, _ip) = rt.block_on(launch(region, "#cloud-config\n"));
    let cloud = unique_cloud("tlc");
    let links_before = host_links();
    let mut r = Runner::start(&cloud, region);
    r.wait_booted(&id, Duration::from_secs(90));
    assert!(netns_list().contains(&cloud));
    let g = r.guard.take().unwrap();
    g.signal("KILL");
    let start = Instant::now();
    while g.alive() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(g);
    let said = local(region).args(["down", "--cloud", &cloud]).output().unwrap();
    assert!(said.status.success(), "{}", String::from_utf8_lossy(&said.stderr));
    // Idempotent.
    ok({
        let mut c = local(region);
        c.args(["down", "--cloud", &cloud]);
        c
    });
    let left: Vec<String> = netns_list().into_iter().filter(|n| n.starts_with(&cloud)).collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&cloud),
        "mounts left:\n{}",
        mounts.lines().filter(|l| l.contains(&cloud)).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(host_links(), links_before, "the host's links are as they were");
    let procs = Command::new("pgrep").args(["-f", &format!("netns/{cloud}-|{cloud}/tls/stunnel")]).output().unwrap();
    assert!(procs.stdout.is_empty(), "processes left: {}", String::from_utf8_lossy(&procs.stdout));
    assert!(!Path::new("/run/tyrell-local").join(&cloud).exists(), "state directory left");
    let st = local(region).args(["status", "--json", "--cloud", &cloud]).output().unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["boxes"].as_array().map(Vec::len), Some(0));
}

fn host_links() -> Vec<String> {
    let o = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn an_auto_scaling_instance_boots_with_its_launch_template() {
    use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
    use aws_sdk_autoscaling::types::Tag as AsgTag;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let region = "ap-southeast-2";
    let b = baked();
    let mut c = local(region);
    c.args(["register", &b.name]);
    let ami = ok(c).trim().to_string();
    let e = testkit::Emulator::shared();
    let (ec2, asg) = rt.block_on(async {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&e.url)
            .region(aws_config::Region::new(region))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "test"))
            .load()
            .await;
        (aws_sdk_ec2::Client::new(&conf), aws_sdk_autoscaling::Client::new(&conf))
    });
    let group = testkit::unique("tl-asg");
    let id = rt.block_on(async {
        let vpc = ec2.create_vpc().cidr_block("10.44.0.0/16").send().await.unwrap();
        let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
        let sn = ec2.create_subnet().vpc_id(&vpc).cidr_block("10.44.1.0/24").send().await.unwrap();
        let sn = sn.subnet().unwrap().subnet_id().unwrap().to_string();
        let ud = base64::engine::general_purpose::STANDARD
            // The role's service (tyrell-bee.service here) stands in for a program that
            // drains when the box's lifecycle state turns Terminated.
            .encode("#cloud-config\nwrite_files:\n  - path: /etc/systemd/system/tyrell-bee.service\n    content: |\n      [Service]\n      ExecStart=/bin/sleep infinity\nruncmd:\n  - [sh, -c, 'echo from-launch-template > /run/lt']\n  - [systemctl, start, --no-block, tyrell-bee.service]\n");
        ec2.create_launch_template()
            .launch_template_name(&group)
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id(&ami)
                    .instance_type(InstanceType::T3Micro)
                    .user_data(ud)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        asg.create_auto_scaling_group()
            .auto_scaling_group_name(&group)
            .launch_template(
                LaunchTemplateSpecification::builder().launch_template_name(&group).version("$Latest").build(),
            )
            .min_size(0)
            .max_size(2)
            .desired_capacity(1)
            .vpc_zone_identifier(&sn)
            .tags(AsgTag::builder().key("tyrell:role").value("bee").propagate_at_launch(true).build())
            .send()
            .await
            .unwrap();
        let out = asg.describe_auto_scaling_groups().auto_scaling_group_names(&group).send().await.unwrap();
        out.auto_scaling_groups()[0].instances()[0].instance_id().unwrap().to_string()
    });
    let cloud = unique_cloud("tla");
    let r = Runner::start(&cloud, region);
    r.wait_booted(&id, Duration::from_secs(90));
    r.exec(&id, &["cloud-init", "status", "--wait"]);
    assert_eq!(r.exec(&id, &["cat", "/run/lt"]), "from-launch-template\n", "the launch template's user data ran");
    let state = r.exec(
        &id,
        &["sh", "-c", "t=$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60') && curl -sf -H \"X-aws-ec2-metadata-token: $t\" http://169.254.169.254/latest/meta-data/autoscaling/target-lifecycle-state"],
    );
    assert_eq!(state, "InService");
    assert_eq!(r.exec(&id, &["systemctl", "is-active", "tyrell-bee.service"]).trim(), "active");
    // A termination lifecycle hook: scale-in holds the box in Terminating:Wait, its metadata
    // says Terminated (the drain path's cue), until its service stops.
    rt.block_on(
        asg.put_lifecycle_hook()
            .auto_scaling_group_name(&group)
            .lifecycle_hook_name("drain")
            .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
            .heartbeat_timeout(300)
            .default_result("CONTINUE")
            .send(),
    )
    .expect("PutLifecycleHook");
    rt.block_on(asg.set_desired_capacity().auto_scaling_group_name(&group).desired_capacity(0).send()).unwrap();
    let ask = "t=$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60') && curl -sf -H \"X-aws-ec2-metadata-token: $t\" http://169.254.169.254/latest/meta-data/autoscaling/target-lifecycle-state || true";
    let start = Instant::now();
    while r.exec(&id, &["sh", "-c", ask]) != "Terminated" {
        assert!(start.elapsed() < Duration::from_secs(20), "the held box never read Terminated");
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(3));
    let ns = format!("{cloud}-{id}");
    assert!(netns_list().contains(&ns), "the box is held while its service runs");
    // Its drain done (the service stops), the box goes.
    r.exec(&id, &["systemctl", "stop", "tyrell-bee.service"]);
    let start = Instant::now();
    while netns_list().contains(&ns) {
        assert!(start.elapsed() < Duration::from_secs(30), "box {id} still there 30s after its service stopped");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn up_prints_the_environment_and_down_stops_everything() {
    require_tools();
    let cloud = unique_cloud("tlu");
    let mut c = Command::new(EXE);
    c.args(["up", "--cloud", &cloud]).env_remove("AWS_ENDPOINT_URL").env("TYRELL_LOCAL_IMAGES", images_dir());
    let env = ok(c);
    let url = env
        .lines()
        .find_map(|l| l.strip_prefix("export AWS_ENDPOINT_URL="))
        .unwrap_or_else(|| panic!("no AWS_ENDPOINT_URL in:\n{env}"))
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(env.contains(&format!("export TYRELL_LOCAL_CLOUD={cloud}")), "{env}");
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "the emulator answers");
    let st = Command::new(EXE).args(["status", "--cloud", &cloud]).output().unwrap();
    assert!(st.status.success(), "status with a runner exits 0");
    ok({
        let mut c = Command::new(EXE);
        c.args(["down", "--cloud", &cloud]);
        c
    });
    assert!(!netns_list().iter().any(|n| n.starts_with(&cloud)));
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(start.elapsed() < Duration::from_secs(10), "the emulator up started is still running after down");
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = Command::new(EXE).args(["status", "--cloud", &cloud]).output().unwrap();
    assert_eq!(st.status.code(), Some(3), "status without a runner exits 3");
}

/// Polls `f` every 200 ms until it gives a value; fails after `within`.
fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < within, "nothing within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One GET over a fresh connection; (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    support::http(addr, "GET", path, &[], "").unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"))
}

#[test]
fn load_balancers_route_by_weight_and_health_checks_reach_auto_scaling() {
    use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
    use aws_sdk_elasticloadbalancingv2::types::{
        Action, ActionTypeEnum, ForwardActionConfig, LoadBalancerTypeEnum, ProtocolEnum, TargetGroupTuple,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let region = "sa-east-1";
    let b = baked();
    let ami = ok({
        let mut c = local(region);
        c.args(["register", &b.name]);
        c
    })
    .trim()
    .to_string();
    let e = testkit::Emulator::shared();
    let conf = rt.block_on(
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&e.url)
            .region(aws_config::Region::new(region))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "test"))
            .load(),
    );
    let (ec2, asg, elb) = (
        aws_sdk_ec2::Client::new(&conf),
        aws_sdk_autoscaling::Client::new(&conf),
        aws_sdk_elasticloadbalancingv2::Client::new(&conf),
    );
    // A web server on 8080 answering /who with the instance id and /health with 200.
    let web = "#cloud-config\nruncmd:\n  - [sh, -c, 'mkdir -p /srv && cloud-init query v1.instance_id > /srv/who && echo ok > /srv/health']\n  - [systemd-run, --unit, web, python3, -m, http.server, '8080', --directory, /srv]\n";
    let name = testkit::unique("tlb");
    let (alb_dns, nlb_dns, groups, ids) = rt.block_on(async {
        let vpc = ec2.create_vpc().cidr_block("10.45.0.0/16").send().await.unwrap();
        let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
        let sn = ec2.create_subnet().vpc_id(&vpc).cidr_block("10.45.1.0/24").send().await.unwrap();
        let sn = sn.subnet().unwrap().subnet_id().unwrap().to_string();
        ec2.create_launch_template()
            .launch_template_name(&name)
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id(&ami)
                    .instance_type(InstanceType::T3Micro)
                    .user_data(base64::engine::general_purpose::STANDARD.encode(web))
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let mut groups = Vec::new();
        let mut ids = Vec::new();
        for v in ["a", "b"] {
            let tg = elb
                .create_target_group()
                .name(format!("{name}-{v}"))
                .protocol(ProtocolEnum::Http)
                .port(8080)
                .vpc_id(&vpc)
                .health_check_path("/health")
                .health_check_interval_seconds(5)
                .health_check_timeout_seconds(2)
                .healthy_threshold_count(2)
                .unhealthy_threshold_count(2)
                .send()
                .await
                .unwrap();
            let tg = tg.target_groups()[0].target_group_arn().unwrap().to_string();
            let group = format!("{name}-{v}");
            asg.create_auto_scaling_group()
                .auto_scaling_group_name(&group)
                .launch_template(
                    LaunchTemplateSpecification::builder().launch_template_name(&name).version("$Latest").build(),
                )
                .min_size(0)
                .max_size(1)
                .desired_capacity(1)
                .vpc_zone_identifier(&sn)
                .target_group_arns(&tg)
                .health_check_type("ELB")
                // 1 s: the emulator reads a grace period of 0 as its default, 300 s.
                .health_check_grace_period(1)
                .send()
                .await
                .unwrap();
            let out = asg.describe_auto_scaling_groups().auto_scaling_group_names(&group).send().await.unwrap();
            ids.push(out.auto_scaling_groups()[0].instances()[0].instance_id().unwrap().to_string());
            groups.push(tg);
        }
        let mut dns = Vec::new();
        for (kind, port) in [(LoadBalancerTypeEnum::Application, 80), (LoadBalancerTypeEnum::Network, 9000)] {
            let lb = elb
                .create_load_balancer()
                .name(format!("{name}-{}", if port == 80 { "alb" } else { "nlb" }))
                .r#type(kind.clone())
                .subnets(&sn)
                .send()
                .await
                .unwrap();
            let lb = &lb.load_balancers()[0];
            let action = if kind == LoadBalancerTypeEnum::Application {
                Action::builder()
                    .r#type(ActionTypeEnum::Forward)
                    .forward_config(
                        ForwardActionConfig::builder()
                            .target_groups(TargetGroupTuple::builder().target_group_arn(&groups[0]).weight(80).build())
                            .target_groups(TargetGroupTuple::builder().target_group_arn(&groups[1]).weight(20).build())
                            .build(),
                    )
                    .build()
            } else {
                Action::builder().r#type(ActionTypeEnum::Forward).target_group_arn(&groups[0]).build()
            };
            elb.create_listener()
                .load_balancer_arn(lb.load_balancer_arn().unwrap())
                .protocol(if port == 80 { ProtocolEnum::Http } else { ProtocolEnum::Tcp })
                .port(port)
                .default_actions(action)
                .send()
                .await
                .unwrap();
            dns.push(lb.dns_name().unwrap().to_string());
        }
        (dns[0].clone(), dns[1].clone(), groups, ids)
    });
    let health = |id: &str| -> String {
        let out = rt.block_on(asg.describe_auto_scaling_instances().instance_ids(id).send()).unwrap();
        out.auto_scaling_instances()[0].health_status().unwrap_or_default().to_string()
    };
    let cloud = unique_cloud("tlbw");
    let r = Runner::start(&cloud, region);
    // Through the cloud's AWS endpoint, target health is what the checks found: `initial`
    // until they pass (the emulator alone says `healthy` at once).
    let front = wait_for(Duration::from_secs(20), || r.status()["aws_endpoint"].as_str().map(str::to_string));
    let elb_front = {
        let conf = rt.block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .endpoint_url(&front)
                .region(aws_config::Region::new(region))
                .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "test"))
                .load(),
        );
        aws_sdk_elasticloadbalancingv2::Client::new(&conf)
    };
    let target_state = |tg: &str| -> (String, String) {
        let out = rt.block_on(elb_front.describe_target_health().target_group_arn(tg).send()).unwrap();
        let h = out.target_health_descriptions()[0].target_health().unwrap();
        (
            h.state().map(|s| s.as_str().to_string()).unwrap_or_default(),
            h.reason().map(|s| s.as_str().to_string()).unwrap_or_default(),
        )
    };
    assert_eq!(target_state(&groups[0]).0, "initial", "a target not yet checked reads initial");
    for id in &ids {
        assert_eq!(health(id), "Healthy", "initial changes nothing in the Auto Scaling group");
    }
    for id in &ids {
        r.wait_booted(id, Duration::from_secs(90));
    }
    let wait_health = |id: &str, want: &str, within: Duration| {
        let start = Instant::now();
        while health(id) != want {
            assert!(
                start.elapsed() < within,
                "{id}: Auto Scaling health {} after {within:?}, wanted {want}; status: {}",
                health(id),
                r.status()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    for tg in &groups {
        wait_for(Duration::from_secs(60), || (target_state(tg).0 == "healthy").then_some(()));
    }
    // `status` shows what the runner saved at its last poll.
    let s = wait_for(Duration::from_secs(5), || {
        let s = r.status();
        s["targets"].as_array()?.iter().all(|t| t["state"] == "healthy").then_some(s)
    });
    let local_of = |dns: &str| -> String {
        let lb = s["load_balancers"].as_array().unwrap().iter().find(|l| l["dns"] == dns.to_ascii_lowercase());
        lb.unwrap_or_else(|| panic!("{dns} not in status: {s}"))["listeners"][0]["local"].as_str().unwrap().to_string()
    };
    let (alb, nlb) = (local_of(&alb_dns), local_of(&nlb_dns));
    let targets = s["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{s}");
    assert!(targets.iter().all(|t| t["state"] == "healthy"), "{s}");

    // 1,000 requests through the ALB split 80/20 (within ±5 points).
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..1000 {
        let (code, body) = http_get(&alb, "/who");
        assert_eq!(code, 200, "{body}");
        *counts.entry(body.trim().to_string()).or_default() += 1;
    }
    let a = f64::from(counts.get(&ids[0]).copied().unwrap_or(0)) / 10.0;
    let b_pct = f64::from(counts.get(&ids[1]).copied().unwrap_or(0)) / 10.0;
    eprintln!("ALB split over 1,000 requests: {a}% / {b_pct}% (weights 80/20)");
    assert!((a - 80.0).abs() <= 5.0 && (b_pct - 20.0).abs() <= 5.0, "{counts:?}");
    // The NLB relays TCP to its one target group.
    assert_eq!(http_get(&nlb, "/who").1.trim(), ids[0]);
    // Inside a box, the ALB's DNS name resolves to its proxy.
    let inside = r.exec(&ids[0], &["curl", "-sf", &format!("http://{alb_dns}/health")]);
    assert_eq!(inside.trim(), "ok");

    // A target whose web server stops fails its checks: the proxy says why and the Auto
    // Scaling group hears it.
    r.exec(&ids[1], &["systemctl", "stop", "web"]);
    wait_health(&ids[1], "Unhealthy", Duration::from_secs(30));
    assert_eq!(target_state(&groups[1]), ("unhealthy".into(), "Target.FailedHealthChecks".into()));
    let s = r.status();
    let t = s["targets"].as_array().unwrap().iter().find(|t| t["instance"] == ids[1].as_str()).cloned().unwrap();
    assert_eq!(t["state"], "unhealthy", "{s}");
    assert_eq!(t["reason"], "Target.FailedHealthChecks", "{s}");
    assert_eq!(health(&ids[0]), "Healthy");
    // A listener that forwards only to the healthy group keeps answering.
    rt.block_on(async {
        let lbs = elb.describe_load_balancers().names(format!("{name}-alb")).send().await.unwrap();
        let ls = elb
            .describe_listeners()
            .load_balancer_arn(lbs.load_balancers()[0].load_balancer_arn().unwrap())
            .send()
            .await
            .unwrap();
        elb.modify_listener()
            .listener_arn(ls.listeners()[0].listener_arn().unwrap())
            .default_actions(Action::builder().r#type(ActionTypeEnum::Forward).target_group_arn(&groups[0]).build())
            .send()
            .await
            .unwrap();
    });
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..50 {
        let (code, body) = http_get(&alb, "/who");
        assert_eq!((code, body.trim()), (200, ids[0].as_str()));
    }
}
