//! The box runner: follows the emulator's instances and keeps one booted box per running
//! instance whose AMI is a local image; serves the instance metadata; `down` removes
//! everything it made, also after it crashed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;

use crate::boxes::{self, Running};
use crate::imds::{self, Imds};
use crate::{aws, bake, net, nspawn, paths, state};

/// How a runner runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cloud's name (its namespace and state directory).
    pub cloud: String,
    /// How often the emulator is asked.
    pub poll: Duration,
    /// How long a box may take to boot before it is reported stuck.
    pub boot_timeout: Duration,
}

/// One instance of the emulator, as the runner needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// `i-…`.
    pub id: String,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down`, `terminated`.
    pub state: String,
    /// The AMI.
    pub ami: String,
    /// The private IP.
    pub ip: Option<Ipv4Addr>,
    /// The private DNS name.
    pub dns_name: String,
    /// e.g. `t3.micro`.
    pub instance_type: String,
    /// e.g. `us-east-1a`.
    pub az: String,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
    /// RFC 3339.
    pub launched: String,
}

impl Instance {
    /// Whether the instance should have a box.
    pub fn wants_box(&self) -> bool {
        self.state == "pending" || self.state == "running"
    }
}

/// Every instance the emulator lists (all states).
pub async fn instances(ec2: &aws_sdk_ec2::Client) -> anyhow::Result<Vec<Instance>> {
    let mut out = Vec::new();
    let mut pages = ec2.describe_instances().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page
            .map_err(|e| anyhow::anyhow!("DescribeInstances failed: {}", aws_sdk_ec2::error::DisplayErrorContext(e)))?;
        for r in page.reservations() {
            for i in r.instances() {
                out.push(Instance {
                    id: i.instance_id().unwrap_or_default().into(),
                    state: i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default(),
                    ami: i.image_id().unwrap_or_default().into(),
                    ip: i.private_ip_address().and_then(|a| a.parse().ok()),
                    dns_name: i.private_dns_name().unwrap_or_default().into(),
                    instance_type: i.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default(),
                    az: i.placement().and_then(|p| p.availability_zone()).unwrap_or_default().into(),
                    tags: i
                        .tags()
                        .iter()
                        .map(|t| (t.key().unwrap_or_default().into(), t.value().unwrap_or_default().into()))
                        .collect(),
                    launched: i.launch_time().map(|t| t.to_string()).unwrap_or_default(),
                });
            }
        }
    }
    Ok(out)
}

/// The user data of an instance: its `userData` attribute, else (Auto Scaling instances
/// in the emulator) its group's launch template version's.
pub async fn user_data(
    ec2: &aws_sdk_ec2::Client,
    asg: &aws_sdk_autoscaling::Client,
    instance: &str,
) -> anyhow::Result<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let attr = ec2
        .describe_instance_attribute()
        .instance_id(instance)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await;
    if let Ok(a) = attr {
        if let Some(v) = a.user_data().and_then(|u| u.value()).filter(|v| !v.is_empty()) {
            return b64.decode(v.trim()).context("the instance's user data is not base64");
        }
    }
    let out = asg.describe_auto_scaling_instances().instance_ids(instance).send().await.map_err(|e| {
        anyhow::anyhow!("DescribeAutoScalingInstances failed: {}", aws_sdk_autoscaling::error::DisplayErrorContext(e))
    })?;
    let Some(lt) = out.auto_scaling_instances().first().and_then(|i| i.launch_template()) else {
        return Ok(Vec::new());
    };
    let mut req = ec2.describe_launch_template_versions();
    req = match (lt.launch_template_id(), lt.launch_template_name()) {
        (Some(id), _) => req.launch_template_id(id),
        (None, Some(n)) => req.launch_template_name(n),
        _ => return Ok(Vec::new()),
    };
    req = req.versions(lt.version().unwrap_or("$Default"));
    let v = req.send().await.map_err(|e| {
        anyhow::anyhow!("DescribeLaunchTemplateVersions failed: {}", aws_sdk_ec2::error::DisplayErrorContext(e))
    })?;
    match v.launch_template_versions().first().and_then(|v| v.launch_template_data()).and_then(|d| d.user_data()) {
        Some(u) if !u.is_empty() => b64.decode(u.trim()).context("the launch template's user data is not base64"),
        _ => Ok(Vec::new()),
    }
}

/// An instance's Auto Scaling lifecycle state, `None` when in no group.
pub async fn lifecycle_state(asg: &aws_sdk_autoscaling::Client, instance: &str) -> Option<String> {
    let out = asg.describe_auto_scaling_instances().instance_ids(instance).send().await.ok()?;
    out.auto_scaling_instances().first().and_then(|i| i.lifecycle_state()).map(str::to_string)
}

/// Stops every box of a cloud and removes everything recorded for it, whatever state
/// its runner left (stopped, crashed, killed with -9). Idempotent.
pub fn down(cloud: &str) -> anyhow::Result<Vec<String>> {
    net::check_cloud_name(cloud)?;
    let mut said = Vec::new();
    if let Some(r) = state::runner(cloud) {
        if r.pid != std::process::id() {
            crate::cmd::signal(r.pid, libc::SIGTERM);
            let start = Instant::now();
            while crate::cmd::alive(r.pid) && start.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(100));
            }
            if crate::cmd::alive(r.pid) {
                crate::cmd::signal(r.pid, libc::SIGKILL);
                std::thread::sleep(Duration::from_millis(200));
            }
            said.push(format!("stopped runner {}", r.pid));
        }
    }
    for b in state::boxes(cloud) {
        boxes::stop_recorded(cloud, &b)?;
        said.push(format!("removed box {} ({} {})", b.instance, b.role, b.ip));
    }
    // Boxes whose record was lost: any nspawn in a namespace of this cloud.
    for pid in stray_nspawns(cloud) {
        nspawn::stop_pid(pid, Duration::from_secs(20));
        said.push(format!("stopped stray process {pid}"));
    }
    let had_ns = net::netns_exists(cloud) || net::netns_list().iter().any(|n| n.starts_with(&format!("{cloud}-i-")));
    net::remove_cloud(cloud)?;
    if had_ns {
        said.push(format!("removed network namespace {cloud} and its boxes' namespaces"));
    }
    let d = state::dir(cloud);
    if d.exists() {
        std::fs::remove_dir_all(&d).with_context(|| format!("cannot remove {}", d.display()))?;
    }
    Ok(said)
}

/// The nspawn processes in a namespace of this cloud and its stunnel (by their command lines).
fn stray_nspawns(cloud: &str) -> Vec<u32> {
    let needle = format!("--network-namespace-path=/run/netns/{cloud}-i-");
    let stunnel_conf = state::dir(cloud).join("tls/stunnel.conf").display().to_string();
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(cl) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            let args: Vec<String> = cl.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            let nspawn = args.first().is_some_and(|a| a.ends_with("systemd-nspawn"))
                && args.iter().any(|a| a.starts_with(&needle));
            let tls = args.first().is_some_and(|a| a.ends_with("stunnel") || a.ends_with("stunnel4"))
                && args.contains(&stunnel_conf);
            if nspawn || tls {
                out.push(pid);
            }
        }
    }
    out
}

/// Runs the box runner until SIGTERM/SIGINT, then stops its boxes and removes its cloud.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    net::check_cloud_name(&opts.cloud)?;
    let endpoint = aws::endpoint()?;
    if let Some(r) = state::runner(&opts.cloud) {
        bail!("cloud {} already has a runner (pid {}): stop it with `tyrell-local down`", opts.cloud, r.pid);
    }
    // What a crashed runner left.
    if !state::boxes(&opts.cloud).is_empty() || net::netns_exists(&opts.cloud) {
        for l in down(&opts.cloud)? {
            tracing::info!("cleanup of a previous runner: {l}");
        }
    }
    state::save_runner(&opts.cloud, &endpoint)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        rt.spawn(async move {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    let result = serve(opts, &rt, &stop);
    // Whatever happened: stop every box and remove the cloud.
    match down_own(&opts.cloud) {
        Ok(()) => {}
        Err(e) => tracing::error!("cleanup failed: {e:#}; run `tyrell-local down --cloud {}`", opts.cloud),
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

thread_local! {
    static HELD: std::cell::RefCell<HashMap<String, Running>> = std::cell::RefCell::new(HashMap::new());
}

fn down_own(cloud: &str) -> anyhow::Result<()> {
    let held: Vec<Running> = HELD.with(|h| h.borrow_mut().drain().map(|(_, v)| v).collect());
    for mut b in held {
        if let Err(e) = boxes::stop(cloud, &mut b) {
            tracing::warn!("stopping {}: {e:#}", b.record.instance);
        }
    }
    for l in down(cloud)? {
        tracing::info!("{l}");
    }
    Ok(())
}

fn serve(opts: &Options, rt: &tokio::runtime::Runtime, stop: &AtomicBool) -> anyhow::Result<()> {
    let cloud = opts.cloud.as_str();
    let conf = rt.block_on(aws::config())?;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let asg = aws_sdk_autoscaling::Client::new(&conf);
    net::ensure_cloud(cloud)?;
    let lookup_asg = asg.clone();
    let lifecycle: imds::LifecycleLookup = Arc::new(move |id: String| {
        let asg = lookup_asg.clone();
        Box::pin(async move {
            if let Some(held) = TERMINATING.read().ok().and_then(|t| t.get(&id).map(|h| h.state.clone())) {
                return Some(held);
            }
            lifecycle_state(&asg, &id).await
        })
    });
    let service = Imds::new(aws::region(), lifecycle);
    let listener = net::listen_tcp_in(cloud, (net::IMDS, 80).into())?;
    {
        let _guard = rt.enter();
        let s = service.clone();
        rt.spawn(async move {
            if let Err(e) = s.serve(listener).await {
                tracing::error!("the metadata service stopped: {e:#}");
            }
        });
    }
    // AWS endpoints over HTTPS and the resolver, inside the cloud namespace.
    let tls_dir = state::dir(cloud).join("tls");
    let (key, crt) = crate::endpoints::make_cert(&tls_dir, &aws::region())?;
    let socket = state::dir(cloud).join("emulator.sock");
    let emulator = crate::endpoints::emulator_addr(&aws::endpoint()?)?;
    {
        let socket = socket.clone();
        rt.spawn(async move {
            if let Err(e) = crate::endpoints::relay(socket, emulator).await {
                tracing::error!("the relay to the emulator stopped: {e:#}");
            }
        });
    }
    let names = crate::endpoints::LbNames::default();
    let mut lbs = crate::lb::Lbs::start(cloud, names.clone())?;
    {
        let cloud = cloud.to_string();
        rt.spawn(async move {
            if let Err(e) = crate::endpoints::serve_dns(&cloud, names).await {
                tracing::error!("the resolver stopped: {e:#}");
            }
        });
    }
    let mut tls = crate::endpoints::start_tls(cloud, &tls_dir, &key, &crt, &socket)?;
    std::thread::sleep(Duration::from_millis(300));
    if let Some(status) = tls.try_wait()? {
        bail!(
            "stunnel (HTTPS for the AWS endpoints) stopped at start ({status}); its log:\n{}",
            crate::cmd::tail(&std::fs::read_to_string(tls_dir.join("stunnel.log")).unwrap_or_default(), 10)
        );
    }
    // The AWS endpoint for tyrell: the emulator, with the load balancers' real health.
    let front = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot listen on host loopback")?;
    front.set_nonblocking(true)?;
    let front_url = format!("http://{}", front.local_addr()?);
    {
        let _guard = rt.enter();
        let front = tokio::net::TcpListener::from_std(front)?;
        rt.spawn(crate::front::serve(front, emulator, aws::region(), lbs.health_of()));
    }
    state::save_aws_endpoint(cloud, &front_url)?;
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&conf);
    let result = follow(opts, rt, stop, &Clients { ec2, asg, elb }, &service, &mut lbs);
    let _ = tls.kill();
    let _ = tls.wait();
    result
}

/// The emulator's clients a runner uses.
struct Clients {
    ec2: aws_sdk_ec2::Client,
    asg: aws_sdk_autoscaling::Client,
    elb: aws_sdk_elasticloadbalancingv2::Client,
}

fn follow(
    opts: &Options,
    rt: &tokio::runtime::Runtime,
    stop: &AtomicBool,
    c: &Clients,
    service: &Imds,
    lbs: &mut crate::lb::Lbs,
) -> anyhow::Result<()> {
    let (ec2, asg) = (&c.ec2, &c.asg);
    let cloud = opts.cloud.as_str();
    std::fs::write(state::dir(cloud).join("ready"), b"")?;
    tracing::info!("cloud {cloud} ready: following the emulator at {}", aws::endpoint()?);
    let mut warned: BTreeSet<String> = BTreeSet::new();
    while !stop.load(Ordering::SeqCst) {
        match rt.block_on(instances(ec2)) {
            Ok(list) => {
                reconcile(opts, rt, ec2, asg, service, &list, &mut warned);
                follow_lbs(cloud, rt, c, lbs, &list);
            }
            Err(e) => tracing::warn!("{e:#}"),
        }
        check_boots(opts);
        let until = Instant::now() + opts.poll;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    tracing::info!("stopping cloud {cloud}");
    Ok(())
}

/// Brings the load balancers' proxies up to date and tells the Auto Scaling groups what
/// the health checks found.
fn follow_lbs(cloud: &str, rt: &tokio::runtime::Runtime, c: &Clients, lbs: &mut crate::lb::Lbs, list: &[Instance]) {
    let view = match rt.block_on(crate::lb::read(&c.elb)) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("{e:#}");
            return;
        }
    };
    let ips = list.iter().filter(|i| i.wants_box()).filter_map(|i| Some((i.id.clone(), i.ip?))).collect();
    for (id, health) in lbs.sync(view, ips) {
        // As on AWS, a group ignores its load balancer's verdict during its
        // HealthCheckGracePeriod from the instance's launch (asked again next poll).
        if health == "Unhealthy" {
            let launched = list.iter().find(|i| i.id == id).map(|i| i.launched.clone()).unwrap_or_default();
            if let Some(until) = rt.block_on(grace_until(&c.asg, &id, &launched)) {
                if time::OffsetDateTime::now_utc() < until {
                    continue;
                }
            }
        }
        let r = rt.block_on(
            c.asg
                .set_instance_health()
                .instance_id(&id)
                .health_status(health)
                .should_respect_grace_period(false)
                .send(),
        );
        match r {
            Ok(_) => {
                tracing::info!("instance {id}: Auto Scaling health {health} (load balancer health checks)");
                lbs.reported(&id, health);
            }
            // Not in a group: nothing to tell, ever.
            Err(e) if e.as_service_error().is_some() => {
                tracing::debug!(
                    "instance {id}: SetInstanceHealth: {}",
                    aws_sdk_autoscaling::error::DisplayErrorContext(e)
                );
                lbs.reported(&id, health);
            }
            // A transient failure: told again at the next poll.
            Err(e) => tracing::warn!(
                "instance {id}: SetInstanceHealth: {}",
                aws_sdk_autoscaling::error::DisplayErrorContext(e)
            ),
        }
    }
    // Written only when it changed (the runner polls every second or so).
    let now = lbs.status();
    if LAST_STATUS.with(|l| l.borrow().as_ref() != Some(&now)) {
        match state::save_lbs(cloud, &now) {
            Ok(()) => LAST_STATUS.with(|l| *l.borrow_mut() = Some(now)),
            Err(e) => tracing::warn!("{e:#}"),
        }
    }
}

/// A box whose instance terminated while its group has a termination lifecycle hook.
struct Held {
    /// The lifecycle state its metadata reports (`Terminating:Wait`).
    state: String,
    /// When the hook's heartbeat timeout ends (then CONTINUE: the box stops).
    until: Instant,
}

/// Instances held by a termination lifecycle hook, by id (read by the metadata service).
static TERMINATING: std::sync::LazyLock<std::sync::RwLock<HashMap<String, Held>>> =
    std::sync::LazyLock::new(Default::default);

/// The longest a box is held for a hook (the hook may say up to 7,200 s).
const HOLD_MAX: Duration = Duration::from_secs(600);

/// The emulator terminates an instance at once, whatever its group's termination
/// lifecycle hook says. As on AWS, hold its box in `Terminating:Wait` (its metadata's
/// `autoscaling/target-lifecycle-state` reads `Terminated`, so the box's drain path runs)
/// until the hook's heartbeat timeout (at most [`HOLD_MAX`]), or until the role's service
/// has stopped — the drain finished. Whether the box is still held.
fn hold_for_hook(
    cloud: &str,
    rt: &tokio::runtime::Runtime,
    asg: &aws_sdk_autoscaling::Client,
    list: &[Instance],
    id: &str,
) -> bool {
    let held_until = TERMINATING.read().ok().and_then(|t| t.get(id).map(|h| h.until));
    if let Some(until) = held_until {
        let service_done = HELD.with(|h| {
            h.borrow().get(id).is_none_or(|b| match boxes::role_unit(&b.record.role) {
                Some(u) => {
                    !matches!(boxes::unit_state(&b.record, u).as_str(), "active" | "activating" | "deactivating")
                }
                None => true,
            })
        });
        if Instant::now() < until && !service_done {
            return true;
        }
        if let Ok(mut t) = TERMINATING.write() {
            t.remove(id);
        }
        tracing::info!(
            "instance {id}: the termination hold ended ({})",
            if service_done { "its service stopped" } else { "the hook timed out" }
        );
        return false;
    }
    let Some(group) = list.iter().find(|i| i.id == id).and_then(|i| i.tags.get("aws:autoscaling:groupName").cloned())
    else {
        return false;
    };
    let hooks = rt.block_on(asg.describe_lifecycle_hooks().auto_scaling_group_name(&group).send());
    let timeout = hooks.ok().and_then(|h| {
        h.lifecycle_hooks()
            .iter()
            .find(|k| k.lifecycle_transition() == Some("autoscaling:EC2_INSTANCE_TERMINATING"))
            .map(|k| k.heartbeat_timeout().unwrap_or(3600))
    });
    let Some(timeout) = timeout else { return false };
    let hold = Duration::from_secs(u64::try_from(timeout).unwrap_or(0)).min(HOLD_MAX);
    tracing::info!(
        "instance {id} terminated: its box is held up to {}s by its group's termination lifecycle hook (metadata: Terminated)",
        hold.as_secs()
    );
    if let Ok(mut t) = TERMINATING.write() {
        t.insert(id.to_string(), Held { state: "Terminating:Wait".into(), until: Instant::now() + hold });
    }
    HELD.with(|h| {
        if let Some(b) = h.borrow_mut().get_mut(id) {
            b.record.lifecycle = Some("Terminating:Wait".into());
            if let Err(e) = state::save_box(cloud, &b.record) {
                tracing::warn!("{e:#}");
            }
        }
    });
    true
}

thread_local! {
    static LAST_STATUS: std::cell::RefCell<Option<crate::lb::Status>> = const { std::cell::RefCell::new(None) };
    static GRACE: std::cell::RefCell<HashMap<String, Option<time::OffsetDateTime>>> = std::cell::RefCell::new(HashMap::new());
}

/// When an instance's Auto Scaling grace period ends: its launch time plus its group's
/// `HealthCheckGracePeriod` (`None` outside a group, or when unknown). Asked once per instance.
async fn grace_until(asg: &aws_sdk_autoscaling::Client, id: &str, launched: &str) -> Option<time::OffsetDateTime> {
    if let Some(known) = GRACE.with(|g| g.borrow().get(id).copied()) {
        return known;
    }
    let until = async {
        let i = asg.describe_auto_scaling_instances().instance_ids(id).send().await.ok()?;
        let group = i.auto_scaling_instances().first()?.auto_scaling_group_name()?.to_string();
        let g = asg.describe_auto_scaling_groups().auto_scaling_group_names(&group).send().await.ok()?;
        let grace = g.auto_scaling_groups().first()?.health_check_grace_period().unwrap_or(0);
        let at = time::OffsetDateTime::parse(launched, &time::format_description::well_known::Rfc3339).ok()?;
        Some(at + time::Duration::seconds(i64::from(grace.max(0))))
    }
    .await;
    // Only a known answer is kept (a failed lookup is asked again next time).
    if until.is_some() {
        GRACE.with(|g| g.borrow_mut().insert(id.to_string(), until));
    }
    until
}

/// How many times a box whose nspawn stopped while booting is started before it is left
/// `failed`. nspawn itself sometimes exits early on a busy host (seen under three clouds at
/// once: "Attempted to remove disk file system under /run/systemd/nspawn/propagate/…"),
/// which says nothing about the image or its user data; a box that fails three times does.
const BOOT_ATTEMPTS: u32 = 3;

thread_local! {
    /// Instance → how many of its boxes could not be started or stopped while booting.
    static EXITED: std::cell::RefCell<HashMap<String, u32>> = std::cell::RefCell::new(HashMap::new());
}

/// Counts one failed attempt at an instance's box; returns how many there were.
fn count_failed_attempt(id: &str) -> u32 {
    EXITED.with(|e| {
        let mut e = e.borrow_mut();
        let n = e.entry(id.to_string()).or_default();
        *n += 1;
        *n
    })
}

fn attempts_failed(id: &str) -> u32 {
    EXITED.with(|e| e.borrow().get(id).copied().unwrap_or(0))
}

fn check_boots(opts: &Options) {
    let mut exited = Vec::new();
    HELD.with(|h| {
        for b in h.borrow_mut().values_mut() {
            if b.record.state != "starting" {
                continue;
            }
            match boxes::check_booted(&opts.cloud, b, opts.boot_timeout) {
                Ok(boxes::Boot::Booted) => tracing::info!(
                    "box {} ({} {} {}) booted in {:.1}s",
                    b.record.instance,
                    b.record.role,
                    b.record.version,
                    b.record.ip,
                    b.record.boot_seconds.unwrap_or_default()
                ),
                Ok(boxes::Boot::Booting) => {}
                Ok(boxes::Boot::Exited(why)) => exited.push((b.record.instance.clone(), why)),
                Err(e) => tracing::error!("{e:#}"),
            }
        }
    });
    for (id, why) in exited {
        let n = count_failed_attempt(&id);
        if n < BOOT_ATTEMPTS {
            // Its remains go; the next reconcile starts the wanted instance's box afresh.
            tracing::warn!("{why}\nstarting it again (attempt {} of {BOOT_ATTEMPTS})", n + 1);
            if let Some(mut b) = HELD.with(|h| h.borrow_mut().remove(&id)) {
                if let Err(e) = boxes::stop(&opts.cloud, &mut b) {
                    tracing::error!("removing box {id} before starting it again: {e:#}");
                }
            }
        } else {
            tracing::error!("{why}\nthe box stays failed: it stopped while booting {n} times");
            HELD.with(|h| {
                if let Some(b) = h.borrow_mut().get_mut(&id) {
                    if let Err(e) = boxes::mark_failed(&opts.cloud, b, &why) {
                        tracing::error!("recording box {id} as failed: {e:#}");
                    }
                }
            });
        }
    }
}

fn reconcile(
    opts: &Options,
    rt: &tokio::runtime::Runtime,
    ec2: &aws_sdk_ec2::Client,
    asg: &aws_sdk_autoscaling::Client,
    service: &Imds,
    list: &[Instance],
    warned: &mut BTreeSet<String>,
) {
    let cloud = opts.cloud.as_str();
    let wanted: BTreeMap<&str, &Instance> = list.iter().filter(|i| i.wants_box()).map(|i| (i.id.as_str(), i)).collect();
    // Boxes whose instance stopped or terminated (or vanished).
    let gone: Vec<String> =
        HELD.with(|h| h.borrow().keys().filter(|k| !wanted.contains_key(k.as_str())).cloned().collect());
    // Boxes given up on (they could not be started) whose instance is gone.
    let given_up: Vec<String> = EXITED.with(|e| {
        e.borrow()
            .iter()
            .filter(|(k, n)| **n >= BOOT_ATTEMPTS && !wanted.contains_key(k.as_str()))
            .map(|(k, _)| k.clone())
            .collect()
    });
    for id in given_up {
        if !HELD.with(|h| h.borrow().contains_key(&id)) {
            state::forget_box(cloud, &id);
        }
        EXITED.with(|e| e.borrow_mut().remove(&id));
    }
    for id in gone {
        if hold_for_hook(cloud, rt, asg, list, &id) {
            continue;
        }
        if let Some(mut b) = HELD.with(|h| h.borrow_mut().remove(&id)) {
            tracing::info!("instance {id} is no longer running: stopping its box");
            if let Ok(mut m) = service.instances.write() {
                m.remove(&b.record.ip);
            }
            if let Err(e) = boxes::stop(cloud, &mut b) {
                tracing::error!("stopping box {id}: {e:#}");
            }
        }
    }
    for (id, i) in wanted {
        if HELD.with(|h| h.borrow().contains_key(id)) || attempts_failed(id) >= BOOT_ATTEMPTS {
            continue;
        }
        let Some(image) = paths::image_of(&i.ami) else {
            if warned.insert(id.to_string()) {
                tracing::warn!("instance {id} runs {} which is not a local image: it gets no box", i.ami);
            }
            continue;
        };
        let Some(ip) = i.ip else {
            if warned.insert(id.to_string()) {
                tracing::warn!("instance {id} has no private IP yet");
            }
            continue;
        };
        let clash = HELD.with(|h| h.borrow().values().find(|b| b.record.ip == ip).map(|b| b.record.instance.clone()));
        if let Some(other) = clash {
            if warned.insert(id.to_string()) {
                tracing::error!(
                    "instance {id} has private IP {ip}, which box {other} already has (another VPC?): it gets no box"
                );
            }
            continue;
        }
        let rec = bake::load(&image).ok();
        let role =
            i.tags.get("tyrell:role").cloned().or_else(|| rec.as_ref().map(|r| r.role.clone())).unwrap_or_default();
        let version = i
            .tags
            .get("tyrell:version")
            .cloned()
            .or_else(|| rec.as_ref().map(|r| r.version.clone()))
            .unwrap_or_default();
        let user_data = match rt.block_on(user_data(ec2, asg, id)) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!("instance {id}: cannot read its user data: {e:#}");
                continue;
            }
        };
        let spec = boxes::Spec {
            instance: id.to_string(),
            ip,
            dns_name: i.dns_name.clone(),
            user_data: user_data.clone(),
            ami: i.ami.clone(),
            image,
            role: role.clone(),
            version,
        };
        if let Ok(mut m) = service.instances.write() {
            m.insert(
                ip,
                imds::Instance {
                    id: id.to_string(),
                    ami: i.ami.clone(),
                    instance_type: i.instance_type.clone(),
                    az: i.az.clone(),
                    ip: Some(ip),
                    dns_name: i.dns_name.clone(),
                    user_data,
                    launched: i.launched.clone(),
                    role_name: if role.is_empty() { "tyrell-local".into() } else { format!("tyrell-{role}") },
                },
            );
        }
        match boxes::start(cloud, &spec) {
            Ok(b) => {
                tracing::info!("instance {id} ({role} {ip}): booting its box");
                HELD.with(|h| h.borrow_mut().insert(id.to_string(), b));
            }
            Err(e) => {
                let n = count_failed_attempt(id);
                let _ = net::remove_box(cloud, id);
                if n < BOOT_ATTEMPTS {
                    tracing::error!(
                        "instance {id}: cannot start its box: {e:#}\nstarting it again (attempt {} of {BOOT_ATTEMPTS})",
                        n + 1
                    );
                    state::forget_box(cloud, id);
                } else {
                    let why = format!("instance {id}: cannot start its box: {e:#}");
                    tracing::error!("{why}\nthe box stays failed: it could not be started {n} times");
                    let failed = state::boxes(cloud).into_iter().find(|b| b.instance == id).map(|mut b| {
                        b.state = "failed".into();
                        b.error = Some(why);
                        b.pid = None;
                        b
                    });
                    match failed {
                        Some(b) => {
                            if let Err(e) = state::save_box(cloud, &b) {
                                tracing::error!("recording box {id} as failed: {e:#}");
                            }
                        }
                        None => state::forget_box(cloud, id),
                    }
                }
            }
        }
    }
}
