//! Baking a role's image: the local stand-in for `tyrell builds create ROLE` (Packer).
//!
//! 1. A base root filesystem made by `mmdebstrap` from Debian's packages, cached by its
//!    package set (`<cache>/base/<key>/rootfs`): what Debian's AMI has (systemd, cloud-init,
//!    …), what `packer/scripts/base.sh` installs, and the Debian packages the role's script
//!    installs (so a second bake needs no download).
//! 2. A copy of it booted under `systemd-nspawn` (like Packer's build instance, with the
//!    host's network for apt), the binaries uploaded to `/tmp/tyrell/bin` as Packer's file
//!    provisioners do, then `packer/scripts/base.sh`, `role-<role>.sh` and `finish.sh` run
//!    inside it with Packer's environment. What cannot be had here is cut from the scripts
//!    with one line saying so: Amazon's SSM agent, Grafana's vendor repository.
//! 3. The image is registered in the emulator (`RegisterImage`) with the tags a Packer
//!    build gets, so `-a latest` finds it, and `<images>/amis/<ami>` points at it.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::{cmd, nspawn, paths};

/// The Debian release the images are made from (the AMIs' base is Debian 12).
pub const SUITE: &str = "bookworm";
/// Debian's mirrors (the only ones reachable here).
const SOURCES: [&str; 3] = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];
/// What every image has: Debian's cloud image (systemd, cloud-init, locales, iproute2)
/// plus what `packer/scripts/base.sh` installs (awscli ca-certificates curl gnupg jq).
pub const COMMON_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "cloud-init",
    "locales",
    "netbase",
    "iproute2",
    "procps",
    "awscli",
    "ca-certificates",
    "curl",
    "gnupg",
    "jq",
];

/// The Debian packages a role's Packer script installs: downloaded (not installed) into
/// the shared base's apt cache, so a bake does not fetch them again and every role shares
/// one base (the script's `apt-get install` still runs, from the cache).
pub fn role_packages(role: &str) -> &'static [&'static str] {
    match role {
        "broker" => &["mosquitto", "mosquitto-clients"],
        "metrics" => &["influxdb", "influxdb-client"],
        _ => &[],
    }
}

/// The binaries Packer uploads for every role (`packer/tyrell.json` file provisioners).
pub const BINARIES: [&str; 4] = ["bee", "indexer", "router", "tyrell-worker"];

/// What a bake needs.
#[derive(Debug, Clone)]
pub struct Request {
    /// The role (`packer/scripts/role-<role>.sh` must exist).
    pub role: String,
    /// The version (`^[a-z0-9]{1,16}$`), else a new `vYYMMDDHHMMSS`.
    pub version: Option<String>,
    /// The directory holding the four binaries (release or debug build).
    pub binaries: PathBuf,
    /// The repository (for `packer/scripts` and the commit).
    pub repo: PathBuf,
    /// The region Packer would build in (`TYRELL_REGION`).
    pub region: String,
    /// Whether to register the image in the emulator.
    pub register: bool,
    /// Bound for the whole provisioning (each script and the boot).
    pub timeout: Duration,
}

/// A baked image, as recorded in `<image>/image.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    /// `tyrell-<role>-<version>`, the AMI name a Packer build gets.
    pub name: String,
    /// The role.
    pub role: String,
    /// The version.
    pub version: String,
    /// The commit of the repository the scripts came from.
    pub commit: String,
    /// The AMI id in the emulator, when registered.
    pub ami: Option<String>,
    /// The image directory (holding `rootfs/`).
    pub dir: PathBuf,
    /// The base filesystem key it was made from.
    pub base: String,
    /// RFC 3339 time of the bake.
    pub created: String,
    /// Seconds the base took (0 when it came from the cache).
    pub base_seconds: f64,
    /// Seconds the whole bake took.
    pub seconds: f64,
}

/// Checks a role name against the Packer scripts.
pub fn check_role(repo: &Path, role: &str) -> anyhow::Result<PathBuf> {
    if role.is_empty() || !role.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        bail!("invalid role {role:?}: lowercase letters, digits and '-'");
    }
    let script = repo.join("packer/scripts").join(format!("role-{role}.sh"));
    if !script.is_file() {
        bail!("no Packer script for role {role}: {} does not exist", script.display());
    }
    Ok(script)
}

/// Checks a version the way tyrell does (`^[a-z0-9]{1,16}$`).
pub fn check_version(v: &str) -> anyhow::Result<()> {
    if v.is_empty() || v.len() > 16 || !v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        bail!("invalid version {v:?}: 1 to 16 lowercase letters and digits");
    }
    Ok(())
}

/// A new version in tyrell's generated form, `vYYMMDDHHMMSS` (UTC).
pub fn new_version(now: time::OffsetDateTime) -> String {
    format!(
        "v{:02}{:02}{:02}{:02}{:02}{:02}",
        now.year() % 100,
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// Every role whose Packer script installs packages of its own.
const ROLES_WITH_PACKAGES: [&str; 2] = ["broker", "metrics"];

/// The key of a base filesystem: one base for every role (`_role` is kept for callers).
pub fn base_key(_role: &str) -> String {
    format!("{SUITE}-shared")
}

/// The roles' own packages, downloaded into the base's apt cache.
fn downloaded() -> Vec<&'static str> {
    let mut all: Vec<&str> = ROLES_WITH_PACKAGES.iter().flat_map(|r| role_packages(r).iter().copied()).collect();
    all.sort();
    all
}

/// What is done to a base after mmdebstrap installed its packages, as Debian's cloud
/// images have it: the en_US.UTF-8 locale generated (cloud-init sets `LANG=en_US.UTF-8` on
/// Debian at first boot, and Debian's `locale-gen` ignores the locale cloud-init names).
pub const BASE_CUSTOMIZE: &str =
    "sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen && locale-gen >/dev/null";

/// The identity of a role's base: its package list, one per line, and the customization
/// (a change to either makes a new base).
pub fn base_packages(_role: &str) -> String {
    let mut all: Vec<&str> = COMMON_PACKAGES.to_vec();
    all.sort();
    format!("{}\n# downloaded: {}\n# customize: {BASE_CUSTOMIZE}\n", all.join("\n"), downloaded().join(" "))
}

/// An exclusive lock on a file, held until dropped (two bakes never build one base twice).
struct Lock(std::fs::File);

impl Lock {
    fn take(path: &Path, timeout: Duration) -> anyhow::Result<Lock> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let start = Instant::now();
        loop {
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Lock(f));
            }
            if start.elapsed() > timeout {
                bail!("{} is locked by another bake for over {}s", path.display(), timeout.as_secs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// The cached base filesystem for a role, made with mmdebstrap when missing or when its
/// package list changed. Returns (key, rootfs, seconds spent making it).
pub fn ensure_base(role: &str, timeout: Duration) -> anyhow::Result<(String, PathBuf, f64)> {
    let key = base_key(role);
    let root = paths::cache().join("base");
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let _lock = Lock::take(&root.join(format!("{key}.lock")), timeout)?;
    let dir = root.join(&key);
    let rootfs = dir.join("rootfs");
    let wanted = base_packages(role);
    if std::fs::read_to_string(dir.join("packages")).ok().as_deref() == Some(wanted.as_str()) && rootfs.is_dir() {
        return Ok((key, rootfs, 0.0));
    }
    let start = Instant::now();
    let tmp = root.join(format!("{key}.tmp"));
    remove_tree(&tmp)?;
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    eprintln!("bake: making the {key} base filesystem with mmdebstrap (a few minutes, once)");
    let include = wanted.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join(",");
    let mut c = cmd::new(
        "mmdebstrap",
        [
            "--variant=minbase".to_string(),
            format!("--include={include}"),
            // Keep apt's lists (the provisioning's `apt-get update` then only revalidates
            // them) and its cache (the roles' own packages, downloaded below).
            "--skip=cleanup/apt/lists".to_string(),
            "--skip=cleanup/apt/cache".to_string(),
            format!("--customize-hook=chroot \"$1\" sh -c \"{BASE_CUSTOMIZE}\""),
            format!(
                "--customize-hook=chroot \"$1\" apt-get -y -q install --download-only --no-install-recommends {}",
                downloaded().join(" ")
            ),
            SUITE.to_string(),
            tmp.join("rootfs").display().to_string(),
        ],
    );
    c.args(SOURCES);
    let log = std::fs::File::create(tmp.join("mmdebstrap.log")).context("cannot create the mmdebstrap log")?;
    let log = std::sync::Mutex::new(log);
    cmd::stream(c, timeout, |l| {
        if let Ok(mut f) = log.lock() {
            let _ = writeln!(f, "{l}");
        }
        if l.starts_with("I: ") || l.starts_with("E: ") {
            eprintln!("bake: {l}");
        }
    })?;
    std::fs::write(tmp.join("packages"), &wanted).context("cannot record the base's packages")?;
    remove_tree(&dir)?;
    std::fs::rename(&tmp, &dir).with_context(|| format!("cannot move {} to {}", tmp.display(), dir.display()))?;
    Ok((key, rootfs, start.elapsed().as_secs_f64()))
}

/// Removes a directory tree if it exists (`rm -rf` that stays on one file system).
pub fn remove_tree(p: &Path) -> anyhow::Result<()> {
    if p.symlink_metadata().is_ok() {
        let mut c = cmd::new("rm", ["-rf", "--one-file-system", "--"]);
        c.arg(p);
        cmd::run(c, Duration::from_secs(300)).with_context(|| format!("cannot remove {}", p.display()))?;
    }
    Ok(())
}

/// A block of a Packer script that cannot run here, replaced by one line saying so.
struct Skip {
    script: &'static str,
    /// The first line of the block (exact, trimmed).
    first: &'static str,
    /// The last line of the block (exact, trimmed).
    last: &'static str,
    said: &'static str,
}

const SKIPS: &[Skip] = &[
    Skip {
        script: "base.sh",
        first: "if ! dpkg-query -W -f='${Status}' amazon-ssm-agent 2>/dev/null | grep -q 'install ok installed'; then",
        last: "systemctl enable amazon-ssm-agent.service",
        said: "skipped Amazon's SSM agent: its bucket cannot be reached from the local cloud",
    },
    Skip {
        script: "role-metrics.sh",
        first: "tmp=$(mktemp -d)",
        last: "apt-get -y -q install --no-install-recommends grafana",
        said: "skipped Grafana: its vendor APT repository cannot be reached from the local cloud",
    },
];

/// The text of a Packer script as the local bake runs it: unchanged but for the blocks in
/// [`SKIPS`], each replaced by an `echo` of why. A script whose block no longer matches is
/// an error (the local bake must not silently drift from the real one).
pub fn local_script(name: &str, text: &str) -> anyhow::Result<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for s in SKIPS.iter().filter(|s| s.script == name) {
        let first = lines.iter().position(|l| l.trim() == s.first);
        let last = first.and_then(|f| lines.iter().skip(f).position(|l| l.trim() == s.last).map(|p| p + f));
        let (Some(f), Some(l)) = (first, last) else {
            bail!(
                "packer/scripts/{name} changed: the local bake cuts the block from `{}` to `{}` ({}), which is no \
                 longer there; update SKIPS in local/src/bake.rs",
                s.first,
                s.last,
                s.said
            );
        };
        lines.splice(f..=l, [format!("echo \"tyrell-local: {}\"", s.said)]);
    }
    Ok(lines.join("\n") + "\n")
}

fn git_commit(repo: &Path) -> String {
    cmd::run(cmd::new("git", ["-C", &repo.display().to_string(), "rev-parse", "HEAD"]), Duration::from_secs(10))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Bakes the image of a role (without registering it: see [`register`]).
pub fn bake(req: &Request) -> anyhow::Result<Image> {
    let start = Instant::now();
    let role_script = check_role(&req.repo, &req.role)?;
    let version = match &req.version {
        Some(v) => {
            check_version(v)?;
            v.clone()
        }
        None => new_version(time::OffsetDateTime::now_utc()),
    };
    let name = format!("tyrell-{}-{version}", req.role);
    for b in BINARIES {
        let p = req.binaries.join(b);
        if !p.is_file() {
            bail!(
                "{} is missing: the image gets all four binaries as the Packer build does; build them with \
                 `cargo build --workspace --bins` (debug) or `cargo build --release`",
                p.display()
            );
        }
    }
    let images = paths::images();
    std::fs::create_dir_all(&images).with_context(|| format!("cannot create {}", images.display()))?;
    let dir = images.join(&name);
    if dir.exists() {
        bail!("{} is already baked ({}): pick another --version", name, dir.display());
    }
    let (base_key, base, base_seconds) = ensure_base(&req.role, req.timeout)?;

    let tmp = images.join(format!("{name}.tmp"));
    remove_tree(&tmp)?;
    std::fs::create_dir_all(&tmp)?;
    let rootfs = tmp.join("rootfs");
    eprintln!("bake: copying the {base_key} base");
    cmd::run(
        cmd::new("cp", ["-a", "--reflink=auto", &base.display().to_string(), &rootfs.display().to_string()]),
        Duration::from_secs(300),
    )?;

    // The upload: what Packer's file provisioners copy, and the scripts as run here.
    let upload = tmp.join("upload");
    std::fs::create_dir_all(upload.join("bin"))?;
    for b in BINARIES {
        std::fs::copy(req.binaries.join(b), upload.join("bin").join(b))
            .with_context(|| format!("cannot copy {}", req.binaries.join(b).display()))?;
    }
    let scripts = req.repo.join("packer/scripts");
    std::fs::copy(scripts.join("install-binary.sh"), upload.join("install-binary.sh"))
        .context("cannot copy packer/scripts/install-binary.sh")?;
    let order = ["base.sh".to_string(), format!("role-{}.sh", req.role), "finish.sh".to_string()];
    for s in &order {
        let p = if s.starts_with("role-") { role_script.clone() } else { scripts.join(s) };
        let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        std::fs::write(upload.join(s), local_script(s, &text)?)?;
    }

    // The build instance: the image booted with the host's network (apt reaches Debian's
    // mirrors as on the Packer build instance). resolv.conf is the host's for the bake only.
    let resolv = rootfs.join("etc/resolv.conf");
    let resolv_before = std::fs::read(&resolv).ok();
    let console = tmp.join("bake-console.log");
    let log_path = tmp.join("bake.log");
    let machine = format!("tlbake-{}-{}", req.role, std::process::id());
    let args = vec![
        "-D".to_string(),
        rootfs.display().to_string(),
        "--boot".to_string(),
        "--resolv-conf=copy-host".to_string(),
        format!("--bind-ro={}:/run/tyrell-upload", upload.display()),
        "--hostname=packer-build".to_string(),
    ];
    let mut c = nspawn::spawn(&machine, &args, &console)?;
    let result = (|| -> anyhow::Result<()> {
        nspawn::wait_booted(&mut c, &console, Duration::from_secs(90))?;
        let leader = nspawn::leader(c.child.id()).context("the build container has no init")?;
        let mut log = std::fs::File::create(&log_path).context("cannot create the bake log")?;
        // Packer's first provisioners: mkdir, then the file uploads.
        let upload_cmd = "mkdir -p /tmp/tyrell/bin && cp /run/tyrell-upload/bin/* /tmp/tyrell/bin/ && \
                          cp /run/tyrell-upload/install-binary.sh /tmp/tyrell/install-binary.sh";
        nspawn::exec(leader, &["sh", "-c", upload_cmd], Duration::from_secs(120))?;
        for s in &order {
            eprintln!("bake: running packer/scripts/{s}");
            let script = format!("/run/tyrell-upload/{s}");
            let env = [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                "HOME=/root".to_string(),
                "LANG=C.UTF-8".to_string(),
                format!("TYRELL_ROLE={}", req.role),
                format!("TYRELL_VERSION={version}"),
                format!("TYRELL_REGION={}", req.region),
                "DEBIAN_FRONTEND=noninteractive".to_string(),
            ];
            let mut argv: Vec<&str> = vec!["env", "-i"];
            argv.extend(env.iter().map(String::as_str));
            argv.extend(["bash", script.as_str()]);
            let c = nspawn::exec_cmd(leader, &argv);
            cmd::stream(c, req.timeout, |l| {
                let _ = writeln!(log, "{s}: {l}");
                if l.starts_with("tyrell") {
                    eprintln!("bake: {l}");
                }
            })
            .with_context(|| format!("packer/scripts/{s} failed in the {} image", req.role))?;
        }
        Ok(())
    })();
    nspawn::stop(&mut c, Duration::from_secs(30));
    if let Err(e) = result {
        // Keep the log of a failed bake beside the images; drop the half-made image.
        let kept = images.join(format!("{name}.failed.log"));
        let _ = std::fs::copy(&log_path, &kept);
        let _ = remove_tree(&tmp);
        return Err(e.context(format!("the bake of {name} failed; its log is {}", kept.display())));
    }
    match resolv_before {
        Some(b) => std::fs::write(&resolv, b)?,
        None => {
            let _ = std::fs::remove_file(&resolv);
        }
    }
    // The bind mount's mount point, made by nspawn in the image.
    let _ = std::fs::remove_dir(rootfs.join("run/tyrell-upload"));
    remove_tree(&upload)?;
    std::fs::rename(&tmp, &dir).with_context(|| format!("cannot move {} to {}", tmp.display(), dir.display()))?;
    let image = Image {
        name,
        role: req.role.clone(),
        version,
        commit: git_commit(&req.repo),
        ami: None,
        dir: dir.clone(),
        base: base_key,
        created: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        base_seconds,
        seconds: start.elapsed().as_secs_f64(),
    };
    save(&image)?;
    Ok(image)
}

/// Writes `image.json` of an image.
pub fn save(image: &Image) -> anyhow::Result<()> {
    let p = image.dir.join("image.json");
    std::fs::write(&p, serde_json::to_vec_pretty(image)?).with_context(|| format!("cannot write {}", p.display()))
}

/// Reads `image.json` of an image directory.
pub fn load(dir: &Path) -> anyhow::Result<Image> {
    let p = dir.join("image.json");
    let b = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_slice(&b).with_context(|| format!("{} is not an image record", p.display()))
}

/// The tags a Packer build's AMI gets (`packer/tyrell.json` "tags").
pub fn tags(image: &Image) -> Vec<(String, String)> {
    vec![
        ("Name".into(), image.name.clone()),
        ("tyrell:role".into(), image.role.clone()),
        ("tyrell:version".into(), image.version.clone()),
        ("tyrell:built-by".into(), "tyrell".into()),
        ("tyrell:commit".into(), image.commit.clone()),
        ("tyrell:base-ami".into(), format!("local:{}", image.base)),
        ("tyrell:base-ami-name".into(), format!("debian-12-{}-mmdebstrap", image.base)),
    ]
}

/// Registers a baked image in the emulator as an AMI with a Packer build's name,
/// description and tags, and records the AMI id → image map.
pub async fn register(ec2: &aws_sdk_ec2::Client, image: &mut Image) -> anyhow::Result<String> {
    use aws_sdk_ec2::types::{ArchitectureValues, BlockDeviceMapping, EbsBlockDevice, Tag};
    let out = ec2
        .register_image()
        .name(&image.name)
        .description(format!("tyrell {} {} (commit {})", image.role, image.version, image.commit))
        .architecture(ArchitectureValues::X8664)
        .root_device_name("/dev/xvda")
        .virtualization_type("hvm")
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/xvda")
                .ebs(EbsBlockDevice::builder().volume_size(8).delete_on_termination(true).build())
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!("RegisterImage {} failed: {}", image.name, aws_sdk_ec2::error::DisplayErrorContext(e))
        })?;
    let ami = out.image_id().context("RegisterImage returned no image id")?.to_string();
    let tags: Vec<Tag> = tags(image).into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
    ec2.create_tags()
        .resources(&ami)
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot tag {ami}: {}", aws_sdk_ec2::error::DisplayErrorContext(e)))?;
    image.ami = Some(ami.clone());
    save(image)?;
    let amis = paths::amis();
    std::fs::create_dir_all(&amis)?;
    let link = amis.join(&ami);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&image.dir, &link).with_context(|| format!("cannot link {}", link.display()))?;
    Ok(ami)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_ssm_agent_with_one_line() {
        let repo = paths::repo();
        let text = std::fs::read_to_string(repo.join("packer/scripts/base.sh")).unwrap();
        let local = local_script("base.sh", &text).unwrap();
        assert!(!local.contains("amazon-ssm-agent.deb"));
        assert!(!local.contains("systemctl enable amazon-ssm-agent"));
        assert_eq!(local.matches("tyrell-local: skipped").count(), 1);
        assert!(local.contains("apt-get -y -q install --no-install-recommends"));
    }

    #[test]
    fn skips_grafana_vendor_repo() {
        let repo = paths::repo();
        let text = std::fs::read_to_string(repo.join("packer/scripts/role-metrics.sh")).unwrap();
        let local = local_script("role-metrics.sh", &text).unwrap();
        assert!(!local.contains("apt.grafana.com stable"));
        assert!(local.contains("influxdb influxdb-client"));
        assert!(local.contains("systemctl disable --now influxdb.service"));
    }

    #[test]
    fn changed_script_is_an_error() {
        let e = local_script("base.sh", "echo hi\n").unwrap_err().to_string();
        assert!(e.contains("SKIPS"), "{e}");
        assert_eq!(local_script("role-bee.sh", "echo hi\n").unwrap(), "echo hi\n");
    }

    #[test]
    fn versions() {
        assert!(check_version("v261129201500").is_ok());
        assert!(check_version("V1").is_err());
        assert!(check_version("").is_err());
        let t = time::macros::datetime!(2026-11-29 20:15:00 UTC);
        assert_eq!(new_version(t), "v261129201500");
    }

    #[test]
    fn bases() {
        assert_eq!(base_key("bee"), "bookworm-shared");
        assert_eq!(base_key("broker"), base_key("metrics"));
        assert!(base_packages("bee").contains("# downloaded: influxdb influxdb-client mosquitto mosquitto-clients\n"));
    }
}
