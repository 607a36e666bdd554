//! External commands (ip, systemd-nspawn, mmdebstrap, nsenter, cp) with a timeout each and
//! errors that name the command, its exit status and the tail of what it printed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Which Debian package provides a tool the local cloud runs (for "not installed" errors).
fn package_of(program: &str) -> &'static str {
    match program {
        "mmdebstrap" => "mmdebstrap",
        "systemd-nspawn" => "systemd-container",
        "ip" => "iproute2",
        "nsenter" | "unshare" => "util-linux",
        "openssl" => "openssl",
        "stunnel" => "stunnel4",
        _ => "coreutils",
    }
}

/// The error for a program that is not on this machine: says how to install it.
pub fn not_installed(program: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{program} is not installed: run scripts/local-setup (it installs it with `apt-get install {}`)",
        package_of(program)
    )
}

/// A command line as one readable string (for messages).
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
    /// Whether it exited with status 0.
    pub success: bool,
    /// The exit code, when it exited (not killed by a signal).
    pub code: Option<i32>,
}

/// Runs `cmd` to its end or until `timeout` (then kills it), capturing its output.
pub fn output(mut cmd: Command, timeout: Duration) -> anyhow::Result<Output> {
    let line = describe(&cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(not_installed(&cmd.get_program().to_string_lossy()))
        }
        Err(e) => return Err(e).with_context(|| format!("cannot start `{line}`")),
    };
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut b);
        }
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut b);
        }
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().with_context(|| format!("waiting for `{line}`"))? {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
            bail!("`{line}` did not finish within {}s; it printed:\n{}", timeout.as_secs(), tail(&stderr, 15));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Ok(Output { stdout, stderr, success: status.success(), code: status.code() })
}

/// Runs `cmd` and returns its standard output; a non-zero exit is an error that shows the
/// command and the tail of its standard error.
pub fn run(cmd: Command, timeout: Duration) -> anyhow::Result<String> {
    let line = describe(&cmd);
    let o = output(cmd, timeout)?;
    if !o.success {
        let code = o.code.map(|c| c.to_string()).unwrap_or_else(|| "a signal".into());
        let said = if o.stderr.trim().is_empty() { tail(&o.stdout, 15) } else { tail(&o.stderr, 15) };
        bail!("`{line}` failed (exit {code}): {}", said.trim());
    }
    Ok(o.stdout)
}

/// Runs `cmd` with its standard output and error merged line by line into `each_line`
/// (a log, a progress display) until it ends or `timeout` passes (then it is killed).
/// A non-zero exit is an error naming the command and the last lines it printed.
pub fn stream(mut cmd: Command, timeout: Duration, mut each_line: impl FnMut(&str)) -> anyhow::Result<()> {
    use std::io::BufRead;
    let line = describe(&cmd);
    let (reader, writer) = std::io::pipe().context("cannot make a pipe")?;
    let writer2 = writer.try_clone().context("cannot clone a pipe")?;
    cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(not_installed(&cmd.get_program().to_string_lossy()))
        }
        Err(e) => return Err(e).with_context(|| format!("cannot start `{line}`")),
    };
    // Our copies of the pipe's write end must close, or the reader never sees its end.
    drop(cmd);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader_thread = std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let l = String::from_utf8_lossy(&buf).trim_end().to_string();
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let start = Instant::now();
    let mut last: Vec<String> = Vec::new();
    let mut keep = |l: String, f: &mut dyn FnMut(&str)| {
        f(&l);
        last.push(l);
        if last.len() > 20 {
            last.remove(0);
        }
    };
    let status = loop {
        while let Ok(l) = rx.try_recv() {
            keep(l, &mut each_line);
        }
        if let Some(s) = child.try_wait().with_context(|| format!("waiting for `{line}`"))? {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{line}` did not finish within {}s; its last lines:\n{}", timeout.as_secs(), last.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Processes the command left behind may hold the pipe open: read what is there, briefly.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) => keep(l, &mut each_line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    drop(reader_thread);
    if !status.success() {
        let code = status.code().map(|c| c.to_string()).unwrap_or_else(|| "a signal".into());
        bail!("`{line}` failed (exit {code}); its last lines:\n{}", last.join("\n"));
    }
    Ok(())
}

/// Shorthand: a command from a program and its arguments.
pub fn new<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Whether a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// A process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with
/// the pid it names one process, even after the pid is reused.
pub fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Sends `sig` to `pid` (no error when it is gone).
pub fn signal(pid: u32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) has no memory effects; a stale pid only yields ESRCH.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// The direct children of a process.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_kills_and_says_so() {
        let e = run(new("sleep", ["5"]), Duration::from_millis(200)).unwrap_err().to_string();
        assert!(e.contains("did not finish within"), "{e}");
    }

    #[test]
    fn failure_shows_stderr() {
        let e = run(new("sh", ["-c", "echo nope >&2; exit 3"]), Duration::from_secs(5)).unwrap_err().to_string();
        assert!(e.contains("exit 3") && e.contains("nope"), "{e}");
    }

    #[test]
    fn missing_program_says_how_to_install() {
        let e = run(new("mmdebstrap-not-here", ["x"]), Duration::from_secs(5)).unwrap_err().to_string();
        assert!(e.contains("scripts/local-setup"), "{e}");
    }

    #[test]
    fn tail_takes_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("", 2), "");
    }
}
