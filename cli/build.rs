//! Embeds every file under ../roles into the binary, so `tyrell` is one
//! self-contained file. Roles stay data: a new directory under roles/ is picked up by the
//! next build with no code change (and `TYRELL_ROLES_DIR` reads them at run time instead).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let mut files = Vec::new();
    // Only a path that exists may be named here: cargo reruns a build script whose
    // rerun-if-changed path is missing on every build, and with it every crate that links
    // tyrell (measured: each cargo command rebuilt the cli and its tests, ~1.5 min in CI,
    // while it named a templates/ directory that no longer existed).
    let roles = root.join("roles");
    println!("cargo:rerun-if-changed={}", roles.display());
    walk(&roles, &mut files);
    files.sort();
    if !files.iter().any(|f| f.ends_with("role.toml")) {
        // An empty library would build a tyrell that knows no role; say why instead.
        eprintln!(
            "error: no role definitions under {}: tyrell embeds roles/ at build time",
            root.join("roles").display()
        );
        std::process::exit(1);
    }
    let mut src = String::from(
        "/// Files of roles/, by path relative to the workspace root.\npub static EMBEDDED: &[(&str, &str)] = &[\n",
    );
    for f in files {
        let rel = f.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        if std::fs::read_to_string(&f).is_err() {
            continue; // binary files have no place in roles/
        }
        writeln!(src, "    ({rel:?}, include_str!({:?})),", f.display().to_string()).unwrap();
    }
    src.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("embedded.rs");
    std::fs::write(out, src).unwrap();
}
