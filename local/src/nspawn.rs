//! Booting a root filesystem under its own systemd with `systemd-nspawn`, running commands
//! inside it, stopping it.
//!
//! The host has no systemd as PID 1 and no system bus, so every container is started
//! with `--register=no --keep-unit` (measured: without them nspawn fails). Commands run
//! inside through `nsenter` into the namespaces of the container's init.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cmd;

/// A running `systemd-nspawn`.
#[derive(Debug)]
pub struct Container {
    /// The nspawn process.
    pub child: Child,
    /// The machine name given with `-M`.
    pub name: String,
}

/// Starts `systemd-nspawn` with the given arguments (which must include `-D`, `--boot`
/// and the machine name) with its console appended to `console`. The process gets
/// SIGTERM (an orderly shutdown of the container) when the thread that started it ends,
/// so boxes never outlive their runner.
pub fn spawn(name: &str, args: &[String], console: &Path) -> anyhow::Result<Container> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(console)
        .with_context(|| format!("cannot open {}", console.display()))?;
    let log2 = log.try_clone().context("cannot clone the console log")?;
    let mut c = Command::new("systemd-nspawn");
    c.args(["--register=no", "--keep-unit", "--console=read-only", "-q"])
        .args(["-M", name])
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: prctl and setpgid are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            // Its own process group: a Ctrl-C to the runner's group does not hit the boxes
            // before the runner stops them in order.
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let child = match c.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(cmd::not_installed("systemd-nspawn")),
        Err(e) => return Err(e).context("cannot start systemd-nspawn"),
    };
    Ok(Container { child, name: name.to_string() })
}

/// The container's init (the child of the nspawn process that runs systemd), once it exists.
pub fn leader(nspawn_pid: u32) -> Option<u32> {
    cmd::children(nspawn_pid)
        .into_iter()
        .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).map(|c| c.trim() == "systemd").unwrap_or(false))
}

/// A command that runs `argv` inside the container whose init is `leader`.
pub fn exec_cmd(leader: u32, argv: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.args(["-t", &leader.to_string(), "-m", "-u", "-i", "-n", "-p", "--"]).args(argv);
    c
}

/// Runs `argv` inside the container and returns its standard output.
pub fn exec(leader: u32, argv: &[&str], timeout: Duration) -> anyhow::Result<String> {
    cmd::run(exec_cmd(leader, argv), timeout)
}

/// Waits until the container's systemd has finished starting up (`running` or
/// `degraded`) and returns that state, or fails with the tail of its console.
pub fn wait_booted(c: &mut Container, console: &Path, within: Duration) -> anyhow::Result<String> {
    let start = Instant::now();
    let pid = c.child.id();
    loop {
        if let Some(status) = c.child.try_wait().context("waiting for systemd-nspawn")? {
            bail!("{} stopped while booting ({status}); its console:\n{}", c.name, console_tail(console, 20));
        }
        if let Some(l) = leader(pid) {
            let o = cmd::output(exec_cmd(l, &["systemctl", "is-system-running"]), Duration::from_secs(10));
            if let Ok(o) = o {
                let state = o.stdout.trim().to_string();
                if state == "running" || state == "degraded" {
                    return Ok(state);
                }
            }
        }
        if start.elapsed() > within {
            bail!(
                "{} did not finish booting within {}s; its console:\n{}",
                c.name,
                within.as_secs(),
                console_tail(console, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The last `n` lines of a console log, without terminal colour codes.
pub fn console_tail(console: &Path, n: usize) -> String {
    let raw = std::fs::read(console).unwrap_or_default();
    cmd::tail(&strip_ansi(&String::from_utf8_lossy(&raw)), n)
}

/// `text` without ANSI escape sequences.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// Stops an nspawn process: SIGTERM (systemd shuts the container down in order), then
/// SIGKILL after `grace`. Returns once it is gone.
pub fn stop_pid(pid: u32, grace: Duration) {
    if !cmd::alive(pid) {
        return;
    }
    cmd::signal(pid, libc::SIGTERM);
    let start = Instant::now();
    while cmd::alive(pid) && start.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(50));
    }
    if cmd::alive(pid) {
        // A SIGKILLed nspawn leaves its container running, orphaned (measured): the
        // caller's net::remove_box kills what is left in the box's namespace.
        cmd::signal(pid, libc::SIGKILL);
        let start = Instant::now();
        while cmd::alive(pid) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Stops a container started by [`spawn`] and reaps it.
pub fn stop(c: &mut Container, grace: Duration) {
    stop_pid(c.child.id(), grace);
    let _ = c.child.wait();
    remove_leftovers(&c.name);
}

/// nspawn leaves an empty `/run/systemd/nspawn/propagate/<name>` behind when it runs
/// without a system bus; remove it.
pub fn remove_leftovers(name: &str) {
    if crate::paths::valid_id(name) {
        let _ = std::fs::remove_dir_all(Path::new("/run/systemd/nspawn/propagate").join(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colours() {
        assert_eq!(strip_ansi("[\u{1b}[0;32m  OK  \u{1b}[0m] Reached\r"), "[  OK  ] Reached");
        assert_eq!(strip_ansi("\u{1b}"), "");
    }
}
