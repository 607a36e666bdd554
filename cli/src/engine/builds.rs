//! Builds: one AMI per role version, baked by Packer from `packer/tyrell.json` and found
//! again by its tags (`tyrell:role`, `tyrell:version`, `tyrell:built-by`, `tyrell:commit`).
//! `-a latest` and `-a latest:VERSION` on `create` resolve here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::error::Error;
use super::fleet::new_version;
use super::values::AmiRef;
use super::{metrics, validate, Engine, TAG_BUILT_BY, TAG_ROLE, TAG_VERSION};
use crate::aws::{cfn, ec2};

pub const TAG_COMMIT: &str = "tyrell:commit";
/// The Packer template, relative to the repository root.
pub const TEMPLATE: &str = "packer/tyrell.json";
/// How long an interrupted Packer gets to remove its temporary instance, key pair and
/// security group before it is killed.
const CLEANUP_GRACE: Duration = Duration::from_secs(120);

/// One AMI tyrell built.
#[derive(Debug, Clone, Serialize)]
pub struct Build {
    pub ami: String,
    /// The region the AMI lives in (AMIs are regional).
    pub region: crate::aws::Region,
    pub role: String,
    pub version: String,
    pub name: String,
    pub commit: String,
    pub state: String,
    pub created: String,
    /// Stacks (role versions, metrics boxes) whose `AmiId` is this image.
    pub in_use: Vec<String>,
}

impl From<&ec2::Image> for Build {
    fn from(i: &ec2::Image) -> Build {
        let tag = |k: &str| i.tags.get(k).cloned().unwrap_or_default();
        Build {
            ami: i.id.clone(),
            region: i.region.clone(),
            role: tag(TAG_ROLE),
            version: tag(TAG_VERSION),
            name: i.name.clone(),
            commit: tag(TAG_COMMIT),
            state: i.state.clone(),
            created: i.created.clone(),
            in_use: Vec::new(),
        }
    }
}

/// Whether an image carries tyrell's build tags.
fn is_build(i: &ec2::Image) -> bool {
    i.tags.get(TAG_BUILT_BY).map(String::as_str) == Some("tyrell") && i.tags.contains_key(TAG_ROLE)
}

/// What `builds create` asks for.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    pub role: String,
    pub version: Option<String>,
    /// Packer template (default: `packer/tyrell.json` of the repository around the
    /// working directory).
    pub template: Option<PathBuf>,
    /// Directory holding the release binaries (default: `target/release` beside the template's repository).
    pub binaries_dir: Option<PathBuf>,
    pub base_ami_filter: Option<String>,
    pub base_ami_owner: Option<String>,
    pub ssh_cidr: Option<String>,
    /// `--profile`: passed to Packer as `AWS_PROFILE`.
    pub profile: Option<String>,
}

/// The Packer run `builds create` will make (shown by `--dry-run`). No credentials: Packer
/// inherits the environment and uses the AWS chain itself.
#[derive(Debug, Clone, Serialize)]
pub struct BuildPlan {
    pub role: String,
    pub version: String,
    pub region: String,
    pub template: String,
    pub variables: BTreeMap<String, String>,
    /// `packer build -machine-readable -var k=v ... TEMPLATE`.
    pub command: Vec<String>,
    /// Environment added to the inherited one.
    pub env: BTreeMap<String, String>,
}

impl BuildPlan {
    /// The command as one shell line.
    pub fn command_line(&self) -> String {
        let env = self.env.iter().map(|(k, v)| format!("{k}={}", shell_quote(v)));
        env.chain(self.command.iter().map(|a| shell_quote(a))).collect::<Vec<_>>().join(" ")
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// One line of `packer build -machine-readable`: `TIMESTAMP,TARGET,TYPE,DATA...`, with
/// commas inside data written `%!(PACKER_COMMA)` and newlines `\n`.
#[derive(Debug, Clone, PartialEq)]
pub enum PackerLine {
    /// `ui,say`: a step (`==> amazon-ebs: Launching a source AWS instance...`).
    Say(String),
    /// `ui,message`: detail, e.g. provisioner output.
    Message(String),
    /// `ui,error`.
    UiError(String),
    /// `artifact,N,id,REGION:AMI[,REGION:AMI...]`.
    ArtifactId(String),
    /// `TARGET,error,MESSAGE`: why a builder failed.
    BuildError(String),
    /// Anything else (artifact details, version, counts).
    Other,
}

fn unescape(s: &str) -> String {
    s.replace("%!(PACKER_COMMA)", ",").replace("\\r", "").replace("\\n", "\n")
}

/// Parses one machine-readable line; a line that is not in that format is a message.
pub fn parse_line(line: &str) -> PackerLine {
    let mut f = line.splitn(4, ',');
    let (Some(ts), Some(_target), Some(kind)) = (f.next(), f.next(), f.next()) else {
        return PackerLine::Message(line.to_string());
    };
    if ts.is_empty() || !ts.chars().all(|c| c.is_ascii_digit()) {
        return PackerLine::Message(line.to_string());
    }
    let data = f.next().unwrap_or_default();
    match kind {
        "ui" => match data.split_once(',') {
            Some(("say", m)) => PackerLine::Say(unescape(m)),
            Some(("message", m)) => PackerLine::Message(unescape(m)),
            Some(("error", m)) => PackerLine::UiError(unescape(m)),
            _ => PackerLine::Other,
        },
        "artifact" => match data.splitn(3, ',').collect::<Vec<_>>().as_slice() {
            [_, "id", id] => PackerLine::ArtifactId(unescape(id)),
            _ => PackerLine::Other,
        },
        "error" => PackerLine::BuildError(unescape(data)),
        _ => PackerLine::Other,
    }
}

/// What a Packer run produced, gathered line by line.
#[derive(Debug, Default)]
pub struct Outcome {
    artifact_ids: Vec<String>,
    build_errors: Vec<String>,
    ui_errors: Vec<String>,
}

impl Outcome {
    pub fn feed(&mut self, line: &PackerLine) {
        match line {
            PackerLine::ArtifactId(id) => self.artifact_ids.push(id.clone()),
            PackerLine::BuildError(m) => self.build_errors.push(one_line(m)),
            PackerLine::UiError(m) if !one_line(m).is_empty() => self.ui_errors.push(one_line(m)),
            _ => {}
        }
    }

    /// The AMI built in `region` (an artifact id is `REGION:AMI`, comma-separated when
    /// copied to several regions); the first one when none is in `region`.
    pub fn ami(&self, region: &str) -> Option<String> {
        let pairs: Vec<(&str, &str)> =
            self.artifact_ids.iter().flat_map(|id| id.split(',')).filter_map(|p| p.trim().split_once(':')).collect();
        pairs
            .iter()
            .find(|(r, _)| *r == region)
            .or(pairs.first())
            .map(|(_, ami)| ami.to_string())
            .filter(|a| a.starts_with("ami-"))
    }

    /// Packer's own explanation of a failure: the builders' errors, else its last error line.
    pub fn error(&self) -> Option<String> {
        if !self.build_errors.is_empty() {
            return Some(self.build_errors.join("; "));
        }
        self.ui_errors.last().map(|m| m.trim_start_matches("--> ").to_string())
    }
}

/// A message on one line, without Packer's `==> ` / `--> ` arrows.
fn one_line(m: &str) -> String {
    m.lines()
        .map(|l| l.trim().trim_start_matches("==> ").trim_start_matches("--> "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `packer` on PATH.
fn find_packer() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join("packer")).find(|p| p.is_file()).ok_or_else(|| {
        anyhow::anyhow!(
            "packer is not on PATH: install HashiCorp Packer (Debian: `sudo apt-get install packer`; elsewhere: https://developer.hashicorp.com/packer/install) and try again"
        )
    })
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").arg("-C").arg(dir).args(args).stderr(Stdio::null()).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// `packer/tyrell.json` in the working directory, else in the git repository around it.
fn find_template() -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir()?;
    let candidates = [Some(cwd.clone()), git(&cwd, &["rev-parse", "--show-toplevel"]).map(PathBuf::from)];
    candidates.into_iter().flatten().map(|d| d.join(TEMPLATE)).find(|p| p.is_file()).ok_or_else(|| {
        anyhow::Error::from(Error::NotFound(format!(
            "cannot find {TEMPLATE}: run tyrell builds create inside the tyrell repository, or pass --template PATH"
        )))
    })
}

impl Engine {
    /// Roles that have an AMI: every fleet role and the metrics box. Accepts nouns (`bees`).
    pub fn ami_role(&self, role: &str) -> anyhow::Result<String> {
        if role == metrics::ROLE {
            return Ok(role.to_string());
        }
        Ok(self.lib.role(role).map(|m| m.role.clone()).ok_or_else(|| {
            let mut all: Vec<&str> = self.lib.roles().iter().map(|m| m.role.as_str()).collect();
            all.push(metrics::ROLE);
            all.sort();
            Error::Invalid(format!("unknown role {role:?} (roles: {})", all.join(", ")))
        })?)
    }

    /// tyrell's builds in this account and region, newest first, without `in_use`.
    async fn own_builds(&self, role: Option<&str>) -> anyhow::Result<Vec<Build>> {
        let mut tags = vec![(TAG_BUILT_BY, "tyrell")];
        if let Some(r) = role {
            tags.push((TAG_ROLE, r));
        }
        let mut builds: Vec<Build> =
            ec2::own_images(&self.aws.ec2, &tags).await?.iter().filter(|i| is_build(i)).map(Build::from).collect();
        builds.sort_by(|a, b| (&b.created, &b.version).cmp(&(&a.created, &a.version)));
        Ok(builds)
    }

    /// Which stacks run which AMI (their `AmiId` parameter).
    async fn ami_users(&self) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
        let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in cfn::list_tyrell(&self.aws.cfn, None).await? {
            if let Some(ami) = s.parameters.get("AmiId") {
                users.entry(ami.clone()).or_default().push(s.name);
            }
        }
        Ok(users)
    }

    /// tyrell's builds (of one role, or all), newest first, with the stacks using each.
    pub async fn builds(&self, role: Option<&str>) -> anyhow::Result<Vec<Build>> {
        let role = role.map(|r| self.ami_role(r)).transpose()?;
        let mut builds = self.own_builds(role.as_deref()).await?;
        let users = self.ami_users().await?;
        for b in &mut builds {
            b.in_use = users.get(&b.ami).cloned().unwrap_or_default();
        }
        Ok(builds)
    }

    /// `-a` of `create`: `latest` is the newest available build of the role,
    /// `latest:VERSION` that role's build of that version; anything else is an AMI id.
    pub async fn resolve_ami(&self, role: &str, ami: &AmiRef) -> anyhow::Result<String> {
        let want = match ami {
            AmiRef::Id(id) => return Ok(id.clone()),
            AmiRef::Latest => None,
            AmiRef::LatestVersion(v) => Some(v.as_str()),
        };
        let builds = self.own_builds(Some(role)).await?;
        let mut available = builds.iter().filter(|b| b.state == "available");
        let found = match want {
            None => available.next().ok_or_else(|| Error::NotFound(format!("no {role} builds: run tyrell builds create {role}")))?,
            Some(v) => available.find(|b| b.version == v).ok_or_else(|| {
                Error::NotFound(format!("no {role} build with version {v}: see tyrell builds --role {role}, or run tyrell builds create {role} --version {v}"))
            })?,
        };
        tracing::info!("-a {ami} is {role} build {} ({})", found.version, found.ami);
        Ok(found.ami.clone())
    }

    /// Deregisters one of tyrell's builds (and deletes its snapshots); refused while a
    /// stack runs it.
    pub async fn remove_build(&mut self, ami: &str) -> anyhow::Result<Build> {
        validate::ami(ami)?;
        let image = ec2::own_image(&self.aws.ec2, ami)
            .await?
            .ok_or_else(|| Error::NotFound(format!("this account owns no AMI {ami} in {}", self.region())))?;
        if !is_build(&image) {
            crate::refuse!(
                NotFound,
                "AMI {ami} ({}) is not a tyrell build: tyrell removes only images tagged {TAG_BUILT_BY}=tyrell",
                image.name
            );
        }
        let mut b = Build::from(&image);
        b.in_use = self.ami_users().await?.remove(ami).unwrap_or_default();
        if !b.in_use.is_empty() {
            crate::refuse!(
                InUse,
                "AMI {ami} ({} {}) is in use by stack(s) {}: remove those first",
                b.role,
                b.version,
                b.in_use.join(", ")
            );
        }
        self.report.step(&format!("deregistering {ami} ({})", b.name));
        ec2::deregister(&self.aws.ec2, &image).await?;
        Ok(b)
    }

    /// The Packer run for a build, validated; changes nothing.
    pub async fn plan_build(&self, req: &BuildRequest) -> anyhow::Result<BuildPlan> {
        let role = self.ami_role(&req.role)?;
        if let Some(v) = &req.version {
            validate::version(v)?;
        }
        if let Some(c) = &req.ssh_cidr {
            validate::cidr(c)?;
        }
        let template = match &req.template {
            Some(t) if t.is_file() => t.clone(),
            Some(t) => crate::refuse!(NotFound, "the Packer template {} does not exist", t.display()),
            None => find_template()?,
        };
        let template = std::path::absolute(&template)?;
        // The template is <root>/packer/tyrell.json; the release binaries are <root>/target/release.
        let root = template.parent().and_then(Path::parent).unwrap_or(Path::new("."));
        let binaries = req.binaries_dir.clone().unwrap_or_else(|| root.join("target/release"));
        let existing = self.own_builds(Some(&role)).await?;
        let version = match &req.version {
            Some(v) => {
                if let Some(b) = existing.iter().find(|b| &b.version == v) {
                    crate::refuse!(Exists, "{role} build {v} already exists ({}): pick another --version", b.ami)
                }
                v.clone()
            }
            None => {
                let taken: Vec<String> = existing.into_iter().map(|b| b.version).collect();
                new_version(time::OffsetDateTime::now_utc(), &taken)
            }
        };
        let mut variables = BTreeMap::from([
            ("role".to_string(), role.clone()),
            ("version".to_string(), version.clone()),
            ("region".to_string(), self.region().to_string()),
            ("source_commit".to_string(), git(root, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into())),
            ("binaries_dir".to_string(), std::path::absolute(&binaries)?.display().to_string()),
        ]);
        for (k, v) in [
            ("base_ami_filter", &req.base_ami_filter),
            ("base_ami_owner", &req.base_ami_owner),
            ("ssh_cidr", &req.ssh_cidr),
        ] {
            if let Some(v) = v {
                variables.insert(k.to_string(), v.clone());
            }
        }
        let mut command: Vec<String> = ["packer", "build", "-machine-readable"].map(String::from).to_vec();
        for (k, v) in &variables {
            command.extend(["-var".to_string(), format!("{k}={v}")]);
        }
        command.push(template.display().to_string());
        let mut env = BTreeMap::from([("CHECKPOINT_DISABLE".to_string(), "1".to_string())]);
        if let Some(p) = &req.profile {
            env.insert("AWS_PROFILE".into(), p.clone());
        }
        Ok(BuildPlan {
            role,
            version,
            region: self.region().to_string(),
            template: template.display().to_string(),
            variables,
            command,
            env,
        })
    }

    /// Runs Packer, following its progress, then makes sure the new AMI carries tyrell's
    /// tags. Bounded by the engine's timeout: past it, Packer is interrupted (so it removes
    /// its temporary instance) and the build fails.
    pub async fn run_build(&mut self, plan: &BuildPlan) -> anyhow::Result<Build> {
        let packer = find_packer()?;
        if !plan.variables.contains_key("ssh_cidr") {
            tracing::warn!(
                "Packer's temporary SSH rule admits 0.0.0.0/0 while it builds: pass --ssh-cidr YOUR_ADDRESS/32 to narrow it"
            );
        }
        self.report.step(&format!(
            "building {} {} in {} with packer (this takes minutes)",
            plan.role, plan.version, plan.region
        ));
        let mut child = tokio::process::Command::new(&packer)
            .args(&plan.command[1..])
            .envs(&plan.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", packer.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut outcome = Outcome::default();
        let (timeout, report) = (self.wait.timeout, self.report.as_mut());
        let follow = async {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(line) = lines.next_line().await? {
                let parsed = parse_line(&line);
                match &parsed {
                    PackerLine::Say(m) | PackerLine::UiError(m) => {
                        for l in m.lines().map(str::trim).filter(|l| !l.is_empty()) {
                            report.step(l.trim_start_matches("==> "));
                        }
                    }
                    PackerLine::Message(m) => tracing::info!("{}", m.trim_end()),
                    _ => {}
                }
                outcome.feed(&parsed);
            }
            child.wait().await
        };
        let followed = tokio::time::timeout(timeout, follow).await;
        let status = match followed {
            Ok(status) => status?,
            Err(_) => {
                self.report.step("timed out: interrupting packer so it removes its temporary instance");
                if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
                    // SIGINT is Packer's "clean up and stop" (as Ctrl-C): it deletes its
                    // temporary instance, key pair and security group before it exits.
                    // SAFETY: kill(2) takes any pid and signal number; a pid that has
                    // exited meanwhile makes it fail with ESRCH, which is ignored.
                    let _ = unsafe { libc::kill(pid, libc::SIGINT) };
                }
                if tokio::time::timeout(CLEANUP_GRACE, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                anyhow::bail!(
                    "packer build of {} {} did not finish within {}s (--timeout): interrupted it",
                    plan.role,
                    plan.version,
                    timeout.as_secs()
                )
            }
        };
        let ami = outcome.ami(&plan.region);
        let (true, Some(ami)) = (status.success(), ami) else {
            let why = outcome.error().unwrap_or_else(|| match status.code() {
                Some(0) => "it printed no AMI id (no artifact line)".into(),
                Some(c) => format!("packer exited with status {c} and printed no error"),
                None => "packer was killed".into(),
            });
            anyhow::bail!("packer build of {} {} failed: {why}", plan.role, plan.version)
        };
        let tags = BTreeMap::from([
            (TAG_ROLE.to_string(), plan.role.clone()),
            (TAG_VERSION.to_string(), plan.version.clone()),
            (TAG_BUILT_BY.to_string(), "tyrell".to_string()),
            (TAG_COMMIT.to_string(), plan.variables["source_commit"].clone()),
        ]);
        self.report.step(&format!("tagging {ami}"));
        ec2::tag(&self.aws.ec2, &ami, &tags).await?;
        let image = ec2::own_image(&self.aws.ec2, &ami).await?.ok_or_else(|| {
            anyhow::anyhow!("packer reported {ami}, but this account has no such image in {}", plan.region)
        })?;
        Ok(Build::from(&image))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from `packer build -machine-readable` (1.6) of an amazon-ebs build.
    const OK: &str = r#"1700000000,,ui,say,==> amazon-ebs: Prevalidating any provided VPC information
1700000000,,ui,say,==> amazon-ebs: Prevalidating AMI Name: tyrell-bee-v2
1700000001,,ui,message,    amazon-ebs: Found Image ID: ami-0a1b2c3d4e5f60718
1700000001,,ui,say,==> amazon-ebs: Creating temporary keypair: packer_6560b0e1-1c1e-4b7e-9f0a-2b1d1c1e1f10
1700000290,,ui,say,Build 'amazon-ebs' finished after 4 minutes 50 seconds.
1700000290,,ui,say,\n==> Wait completed after 4 minutes 50 seconds
1700000290,,ui,say,\n==> Builds finished. The artifacts of successful builds are:
1700000290,amazon-ebs,artifact-count,1
1700000290,amazon-ebs,artifact,0,builder-id,mitchellh.amazonebs
1700000290,amazon-ebs,artifact,0,id,eu-west-1:ami-0123456789abcdef0
1700000290,amazon-ebs,artifact,0,string,AMIs were created:\neu-west-1: ami-0123456789abcdef0\n
1700000290,amazon-ebs,artifact,0,files-count,0
1700000290,amazon-ebs,artifact,0,end
1700000290,,ui,say,--> amazon-ebs: AMIs were created:\neu-west-1: ami-0123456789abcdef0\n"#;

    const FAILED: &str = r#"1700000000,,ui,say,==> amazon-ebs: Prevalidating any provided VPC information
1700000012,,ui,error,Build 'amazon-ebs' errored after 12 seconds 300 milliseconds: Error launching source instance: UnauthorizedOperation: You are not authorized to perform this operation.
1700000012,,ui,say,\n==> Wait completed after 12 seconds 300 milliseconds
1700000012,,ui,error,\n==> Some builds didn't complete successfully and had errors:
1700000012,,ui,error,--> amazon-ebs: Error launching source instance: UnauthorizedOperation: You are not authorized to perform this operation.
1700000012,,ui,say,\n==> Builds finished but no artifacts were created.
1700000012,amazon-ebs,error,Error launching source instance: UnauthorizedOperation: You are not authorized to perform this operation.\n    status code: 403%!(PACKER_COMMA) request id: 9f8e7d6c"#;

    fn outcome(text: &str) -> Outcome {
        let mut o = Outcome::default();
        for l in text.lines() {
            o.feed(&parse_line(l));
        }
        o
    }

    #[test]
    fn parses_lines() {
        assert_eq!(
            parse_line("1700000000,,ui,say,==> amazon-ebs: Stopping the source instance..."),
            PackerLine::Say("==> amazon-ebs: Stopping the source instance...".into())
        );
        assert_eq!(parse_line("1,,ui,say,\\n==> Wait completed"), PackerLine::Say("\n==> Wait completed".into()));
        assert_eq!(
            parse_line("1,,ui,message,    amazon-ebs: a%!(PACKER_COMMA) b"),
            PackerLine::Message("    amazon-ebs: a, b".into())
        );
        assert_eq!(
            parse_line("1,amazon-ebs,artifact,0,id,us-east-1:ami-0123abcd"),
            PackerLine::ArtifactId("us-east-1:ami-0123abcd".into())
        );
        assert_eq!(parse_line("1,amazon-ebs,artifact,0,builder-id,mitchellh.amazonebs"), PackerLine::Other);
        assert_eq!(
            parse_line("1,amazon-ebs,error,boom%!(PACKER_COMMA) bang"),
            PackerLine::BuildError("boom, bang".into())
        );
        assert_eq!(parse_line("1,,version,1.6.6"), PackerLine::Other);
        assert_eq!(
            parse_line("plain text, not machine-readable"),
            PackerLine::Message("plain text, not machine-readable".into())
        );
    }

    #[test]
    fn successful_build_yields_its_ami() {
        let o = outcome(OK);
        assert_eq!(o.ami("eu-west-1").as_deref(), Some("ami-0123456789abcdef0"));
        assert_eq!(o.error(), None);
    }

    #[test]
    fn picks_the_ami_of_the_region() {
        let o = outcome("1,amazon-ebs,artifact,0,id,eu-west-1:ami-0000000a%!(PACKER_COMMA)us-east-1:ami-0000000b");
        assert_eq!(o.ami("us-east-1").as_deref(), Some("ami-0000000b"));
        assert_eq!(o.ami("ap-south-1").as_deref(), Some("ami-0000000a"));
        assert_eq!(outcome("1,,ui,say,nothing").ami("us-east-1"), None);
    }

    #[test]
    fn failed_build_explains_itself() {
        let o = outcome(FAILED);
        assert_eq!(o.ami("eu-west-1"), None);
        assert_eq!(
            o.error().as_deref(),
            Some("Error launching source instance: UnauthorizedOperation: You are not authorized to perform this operation. status code: 403, request id: 9f8e7d6c")
        );
        // Without a builder error line, the last UI error speaks.
        let o = outcome("1,,ui,error,Failed to initialize build 'amazon-ebs': error initializing builder");
        assert_eq!(o.error().as_deref(), Some("Failed to initialize build 'amazon-ebs': error initializing builder"));
    }

    #[test]
    fn command_lines_quote_what_the_shell_would_split() {
        assert_eq!(shell_quote("role=bee"), "role=bee");
        assert_eq!(shell_quote("base_ami_filter=debian 12*"), "'base_ami_filter=debian 12*'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
