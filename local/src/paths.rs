//! Where the local cloud keeps things.
//!
//! * the cache (`$TYRELL_LOCAL_CACHE`, default `/var/cache/tyrell-local`): base root
//!   filesystems (`base/<key>/rootfs`), baked images (`images/<name>/rootfs`, unless
//!   `$TYRELL_LOCAL_IMAGES` puts them elsewhere) and the AMI id → image map (`amis/<ami>`,
//!   a symlink to the image directory);
//! * the state (`$TYRELL_LOCAL_STATE`, default `/run/tyrell-local`): one directory per
//!   cloud listing everything a runner made (namespaces, links, processes), so that
//!   `down` can remove it after any crash. It is on a tmpfs: a reboot removes the
//!   namespaces and the records together.

use std::path::PathBuf;

/// The cache directory.
pub fn cache() -> PathBuf {
    std::env::var_os("TYRELL_LOCAL_CACHE").map(PathBuf::from).unwrap_or_else(|| "/var/cache/tyrell-local".into())
}

/// Where baked images live.
pub fn images() -> PathBuf {
    std::env::var_os("TYRELL_LOCAL_IMAGES").map(PathBuf::from).unwrap_or_else(|| cache().join("images"))
}

/// The AMI id → image directory map (one symlink per AMI).
pub fn amis() -> PathBuf {
    images().join("amis")
}

/// The image directory registered under an AMI id, if any.
pub fn image_of(ami: &str) -> Option<PathBuf> {
    if !valid_id(ami) {
        return None;
    }
    let link = amis().join(ami);
    std::fs::canonicalize(link).ok().filter(|p| p.join("rootfs").is_dir())
}

/// The state directory root.
pub fn state() -> PathBuf {
    std::env::var_os("TYRELL_LOCAL_STATE").map(PathBuf::from).unwrap_or_else(|| "/run/tyrell-local".into())
}

/// Whether `s` is safe as a file name and an AWS-style id (`ami-…`, `i-…`).
pub fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The repository root: `$TYRELL_REPO`, else the nearest directory above the current one
/// holding `packer/tyrell.json`, else the workspace this binary was built from.
pub fn repo() -> PathBuf {
    if let Some(r) = std::env::var_os("TYRELL_REPO") {
        return r.into();
    }
    if let Ok(mut d) = std::env::current_dir() {
        loop {
            if d.join("packer/tyrell.json").is_file() {
                return d;
            }
            if !d.pop() {
                break;
            }
        }
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("ami-0123abcd"));
        assert!(!valid_id("../etc"));
        assert!(!valid_id(""));
    }
}
