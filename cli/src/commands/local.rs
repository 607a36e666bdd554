//! `tyrell local`: the local cloud whose boxes really boot (docs/LOCAL.md). It is a
//! separate program, `tyrell-local`, so the deployer's layers stay as they are: this
//! module only finds it and hands it the command line.

use std::path::PathBuf;
use std::process::Command;

use clap::Args;

const AFTER_HELP: &str = "\
Examples (as root; scripts/local-setup installs what it needs):
  eval \"$(tyrell local up)\"                  # the AWS emulator and the box runner; prints the env
  tyrell builds create bee --local           # a role image, registered as an AMI like a Packer bake
  tyrell bees create -a latest -s 2 swarm1    # ...every tyrell command works unchanged
  tyrell local status                         # every box: instance, role, version, IP, state, service
  tyrell local logs i-0123456789abcdef0       # the tail of a box's journal
  tyrell local down                           # removes every box, namespace and the emulator

Every instance the emulator runs boots as a systemd-nspawn container from its AMI's
filesystem and runs its real user data through cloud-init; nothing is addressed outside
loopback and the namespaces the runner made. See docs/LOCAL.md.";

#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct LocalArgs {
    /// up | status | down | run | logs | exec | bake | register, and their options (tyrell local help)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, value_name = "COMMAND")]
    pub args: Vec<String>,
}

/// `tyrell-local`: beside the running `tyrell` (a cargo build puts them together), else
/// on `PATH`.
pub fn program() -> PathBuf {
    let beside = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("tyrell-local")));
    match beside {
        Some(p) if p.is_file() => p,
        _ => PathBuf::from("tyrell-local"),
    }
}

fn cannot_run(prog: &std::path::Path, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot run {} ({e}): build it with `cargo build -p tyrell-local` (it is a binary of this workspace)",
        prog.display()
    )
}

/// Runs `tyrell-local ARGS...` with this process's standard streams; returns its exit code.
pub fn run(args: &[String]) -> anyhow::Result<i32> {
    let prog = program();
    let status = Command::new(&prog).args(args).status().map_err(|e| cannot_run(&prog, e))?;
    Ok(status.code().unwrap_or(1))
}

/// Runs `tyrell-local ARGS...` with its stderr shown here; returns its stdout, or an error
/// naming `what` when it fails.
pub fn output(args: &[String], what: &str) -> anyhow::Result<String> {
    let prog = program();
    let out = Command::new(&prog)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| cannot_run(&prog, e))?;
    anyhow::ensure!(out.status.success(), "{what} failed (see above)");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
