//! The role definitions: `roles/<role>/role.toml` manifests, CloudFormation templates and
//! cloud-init templates, plus the partials in `templates/`. Embedded in the binary at
//! build time; `TYRELL_ROLES_DIR` (a roles directory, with `templates/` beside it) reads
//! them from disk instead, for iterating on a role without rebuilding.

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    pub via: Via,
    #[serde(default)]
    pub port: u16,
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
        let root = roles.parent().unwrap_or(Path::new("."));
        for (sub, base) in [("roles", roles.to_path_buf()), ("templates", root.join("templates"))] {
            // Partials are optional: git keeps no empty templates/ directory.
            if sub == "templates" && !base.exists() {
                continue;
            }
            let mut stack = vec![base.clone()];
            while let Some(d) = stack.pop() {
                let rd = std::fs::read_dir(&d).map_err(|e| LibraryError::Io(d.display().to_string(), e))?;
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if let Ok(text) = std::fs::read_to_string(&p) {
                        let rel = p.strip_prefix(&base).unwrap().to_string_lossy().replace('\\', "/");
                        files.insert(format!("{sub}/{rel}"), text);
                    }
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
        Ok(Library { files, manifests })
    }

    /// The fleet roles, by name.
    pub fn roles(&self) -> &[Manifest] {
        &self.manifests
    }

    pub fn role(&self, name: &str) -> Option<&Manifest> {
        self.manifests.iter().find(|m| m.role == name || m.noun == name)
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

    /// Partials: every file under `templates/`, named by its file name without extension.
    pub fn partials(&self) -> impl Iterator<Item = (&str, &str)> {
        self.files.iter().filter_map(|(p, c)| {
            let name = p.strip_prefix("templates/")?;
            Some((name.split('.').next().unwrap_or(name), c.as_str()))
        })
    }

    /// Every path under a role directory (e.g. extra config files).
    pub fn files_under<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.files.iter().filter(move |(p, _)| p.starts_with(dir)).map(|(p, c)| (p.as_str(), c.as_str()))
    }
}
