//! The role definitions: `roles/<role>/role.toml` manifests, CloudFormation templates and
//! cloud-init templates. Embedded in the binary at build time; `TYRELL_ROLES_DIR` (a
//! roles directory) reads them from disk instead, for iterating on a role without rebuilding.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

/// How a role takes traffic, which decides how a switch works and where the active
/// version is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Behind the base stack's ALB (weighted forward between version target groups).
    Alb,
    /// Behind the base stack's internal NLB (one target group at a time).
    Nlb,
    /// No inbound traffic: the active version is a tag on its Auto Scaling group.
    None,
}

/// `[traffic]` of a role manifest: how the role takes traffic and, for `alb`/`nlb`
/// roles, which listener of the base stack is its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    pub via: Via,
    /// The base stack output holding the ARN of this role's listener (`AlbListenerArn`);
    /// required for `alb`/`nlb` roles, and no two roles may claim the same one.
    #[serde(default)]
    pub listener: Option<String>,
    /// Base stack outputs of further listeners that every switch points where it points
    /// `listener` (the broker NLB's TLS listener, `BrokerTlsListenerArn`), each before
    /// `listener` itself; an output the base stack lacks (no broker certificate) is
    /// skipped. Weights are read from `listener` only.
    #[serde(default)]
    pub follow: Vec<String>,
    /// Other names `tyrell traffic` accepts for this role (`elb`, `alb` for the routers).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The port the boxes serve the load balancer on (the target group's port).
    #[serde(default)]
    pub port: u16,
    /// A base stack output holding the port instead, when it depends on how the swarm was
    /// made (the broker's `BrokerTargetPort`: 8883 when the brokers end TLS themselves,
    /// 1883 behind a TLS-ending NLB); `port` when the base stack lacks it (made before).
    #[serde(default)]
    pub port_output: Option<String>,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default)]
    pub health_check_path: String,
}

fn default_protocol() -> String {
    "TCP".into()
}

/// A default scaling schedule (cron, UTC), overridable at create time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub scale_up: String,
    pub scale_down: String,
    pub size: i32,
}

/// `roles/<role>/role.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The role's name: the `tyrell:role` tag and the `<role>` in stack names.
    pub role: String,
    /// The CLI noun (`bees`).
    pub noun: String,
    /// One line for `--help`.
    pub about: String,
    /// Which `roles/<template>/template.yaml` deploys a version (default: `fleet`).
    #[serde(default = "default_template")]
    pub template: String,
    pub instance_type: String,
    pub size: i32,
    pub max_size: i32,
    pub traffic: Traffic,
    pub schedule: Option<Schedule>,
    /// Seconds a terminating box is held by a termination lifecycle hook so its program
    /// can finish (0, the default: no hook; else 30-7200). See docs/ARCHITECTURE.md "Traffic".
    #[serde(default)]
    pub drain_seconds: u32,
    /// The base stack outputs holding this role's security group and instance profile.
    pub security_group_output: String,
    pub instance_profile_output: String,
}

fn default_template() -> String {
    "fleet".into()
}

/// Listeners and names are owned by one role each: a role behind a load balancer names
/// its listener output; no two roles share a listener (one switch would replace the
/// other's default action) or a name `tyrell traffic` resolves (noun, role or alias).
fn check_traffic(manifests: &[Manifest]) -> Result<(), LibraryError> {
    let err =
        |m: &Manifest, error: String| LibraryError::Manifest { path: format!("roles/{}/role.toml", m.role), error };
    let mut listeners: BTreeMap<&str, &str> = BTreeMap::new();
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    for m in manifests {
        match (&m.traffic.via, &m.traffic.listener) {
            (Via::None, Some(_)) => {
                return Err(err(
                    m,
                    "[traffic] listener is for roles behind a load balancer (via = \"alb\" or \"nlb\")".into(),
                ))
            }
            (Via::Alb | Via::Nlb, None) => {
                return Err(err(m, "[traffic] needs listener = \"<base stack output with the listener ARN>\"".into()))
            }
            (_, Some(l)) => {
                if let Some(other) = listeners.insert(l.as_str(), m.role.as_str()) {
                    return Err(err(
                        m,
                        format!("[traffic] listener {l} is also claimed by roles/{other}/role.toml: each role needs its own"),
                    ));
                }
            }
            (Via::None, None) => {}
        }
        for n in [&m.role, &m.noun].into_iter().chain(&m.traffic.aliases) {
            if let Some(other) = names.insert(n.as_str(), m.role.as_str()) {
                if other != m.role {
                    return Err(err(m, format!("the name {n:?} is also taken by roles/{other}/role.toml")));
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("cannot read role definitions from {0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} is missing from the role definitions")]
    Missing(String),
    #[error("{path}: {error}")]
    Manifest { path: String, error: String },
}

/// The role definitions, by path relative to the workspace root (`roles/bee/role.toml`).
#[derive(Debug, Clone)]
pub struct Library {
    files: BTreeMap<String, String>,
    manifests: Vec<Manifest>,
}

impl Library {
    /// The embedded definitions, or those under `$TYRELL_ROLES_DIR` when it is set.
    pub fn load() -> Result<Library, LibraryError> {
        match std::env::var_os("TYRELL_ROLES_DIR") {
            Some(dir) => Library::from_dir(Path::new(&dir)),
            None => {
                Library::from_files(embedded::EMBEDDED.iter().map(|(p, c)| (p.to_string(), c.to_string())).collect())
            }
        }
    }

    fn from_dir(roles: &Path) -> Result<Library, LibraryError> {
        let mut files = BTreeMap::new();
        let mut stack = vec![roles.to_path_buf()];
        while let Some(d) = stack.pop() {
            let rd = std::fs::read_dir(&d).map_err(|e| LibraryError::Io(d.display().to_string(), e))?;
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let (Ok(text), Ok(rel)) = (std::fs::read_to_string(&p), p.strip_prefix(roles)) {
                    files.insert(format!("roles/{}", rel.to_string_lossy().replace('\\', "/")), text);
                }
            }
        }
        Library::from_files(files)
    }

    pub fn from_files(files: BTreeMap<String, String>) -> Result<Library, LibraryError> {
        let mut manifests = Vec::new();
        for (path, text) in &files {
            if path.starts_with("roles/") && path.ends_with("/role.toml") {
                let m: Manifest = toml::from_str(text)
                    .map_err(|e| LibraryError::Manifest { path: path.clone(), error: e.to_string() })?;
                if path != &format!("roles/{}/role.toml", m.role) {
                    return Err(LibraryError::Manifest {
                        path: path.clone(),
                        error: format!("declares role {:?}: the directory must be named after its role", m.role),
                    });
                }
                manifests.push(m);
            }
        }
        manifests.sort_by(|a, b| a.role.cmp(&b.role));
        check_traffic(&manifests)?;
        Ok(Library { files, manifests })
    }

    /// The fleet roles, by name.
    pub fn roles(&self) -> &[Manifest] {
        &self.manifests
    }

    pub fn role(&self, name: &str) -> Option<&Manifest> {
        self.manifests.iter().find(|m| m.role == name || m.noun == name)
    }

    /// The role `tyrell traffic NAME` means: a role name, noun or `[traffic] aliases`.
    pub fn traffic_role(&self, name: &str) -> Option<&Manifest> {
        self.role(name).or_else(|| self.manifests.iter().find(|m| m.traffic.aliases.iter().any(|a| a == name)))
    }

    pub fn file(&self, path: &str) -> Result<&str, LibraryError> {
        self.files.get(path).map(String::as_str).ok_or_else(|| LibraryError::Missing(path.to_string()))
    }

    /// `roles/<dir>/template.yaml`.
    pub fn template(&self, dir: &str) -> Result<&str, LibraryError> {
        self.file(&format!("roles/{dir}/template.yaml"))
    }

    /// `roles/<dir>/cloud-init.yaml`, if the role has one.
    pub fn cloud_init(&self, dir: &str) -> Option<&str> {
        self.files.get(&format!("roles/{dir}/cloud-init.yaml")).map(String::as_str)
    }

    /// Every path under a role directory (e.g. extra config files).
    pub fn files_under<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.files.iter().filter(move |(p, _)| p.starts_with(dir)).map(|(p, c)| (p.as_str(), c.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded library plus one more role manifest.
    fn with_role(toml: &str) -> Result<Library, LibraryError> {
        let mut files: BTreeMap<String, String> =
            embedded::EMBEDDED.iter().map(|(p, c)| (p.to_string(), c.to_string())).collect();
        files.insert("roles/prober/role.toml".into(), toml.into());
        Library::from_files(files)
    }

    const PROBER: &str = "role = \"prober\"\nnoun = \"probers\"\nabout = \"x\"\ninstance_type = \"t3.micro\"\nsize = 1\nmax_size = 2\nsecurity_group_output = \"RouterSecurityGroupId\"\ninstance_profile_output = \"RouterInstanceProfileArn\"\n[traffic]\nvia = \"alb\"\nport = 8081\nprotocol = \"HTTP\"\nhealth_check_path = \"/healthz\"\n";

    #[test]
    fn a_second_load_balanced_role_cannot_take_the_routers_listener_or_name() {
        // `prober` sorts before `router`: by `via` alone it would have taken both.
        let e = with_role(&format!("{PROBER}listener = \"AlbListenerArn\"\n")).unwrap_err().to_string();
        assert!(e.contains("roles/prober/role.toml") && e.contains("roles/router/role.toml"), "{e}");
        assert!(e.contains("listener AlbListenerArn"), "{e}");
        let e = with_role(&format!("{PROBER}listener = \"ProberListenerArn\"\naliases = [\"elb\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"elb\"") && e.contains("prober") && e.contains("router"), "{e}");
        let e = with_role(PROBER).unwrap_err().to_string();
        assert!(e.contains("needs listener"), "{e}");

        let lib = with_role(&format!("{PROBER}listener = \"ProberListenerArn\"\naliases = [\"probe\"]\n")).unwrap();
        assert_eq!(lib.traffic_role("elb").unwrap().role, "router");
        assert_eq!(lib.traffic_role("alb").unwrap().role, "router");
        assert_eq!(lib.traffic_role("nlb").unwrap().role, "broker");
        assert_eq!(lib.traffic_role("probe").unwrap().role, "prober");
        assert_eq!(lib.role("prober").unwrap().traffic.listener.as_deref(), Some("ProberListenerArn"));
    }
}
