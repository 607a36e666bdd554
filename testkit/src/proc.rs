//! Child processes that never outlive the test process.
//!
//! A server shared through a `static` is never dropped, so killing it on drop is not
//! enough. [`Guard::spawn`] runs the program under a tiny `bash` watchdog that reads its
//! standard input from a pipe held by the test process: when the test process exits for
//! any reason the pipe closes and the watchdog kills the program.

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

pub struct Guard {
    watchdog: Child,
    stdin: Option<ChildStdin>,
    /// The program's pid (not the watchdog's).
    pub pid: u32,
}

impl Guard {
    /// Spawns `cmd` (program, arguments, environment and working directory are kept),
    /// with its stdout and stderr appended to `log`.
    pub fn spawn(cmd: Command, log: &Path) -> Guard {
        let mut w = Command::new("bash");
        w.arg("-c")
            .arg(r#""$@" </dev/null >&2 & c=$!; echo "$c"; read -r _; kill "$c" 2>/dev/null; sleep 0.2; kill -9 "$c" 2>/dev/null; wait "$c" 2>/dev/null; exit 0"#)
            .arg("watchdog")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => w.env(k, v),
                None => w.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            w.current_dir(d);
        }
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open the log file");
        let mut watchdog = w
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        // The watchdog's stdout carries only the program's pid; the program writes to the log.
        let mut stdout = watchdog.stdout.take().unwrap();
        let mut pid = String::new();
        let mut byte = [0u8; 1];
        while std::io::Read::read(&mut stdout, &mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            pid.push(byte[0] as char);
        }
        let stdin = watchdog.stdin.take();
        Guard { watchdog, stdin, pid: pid.trim().parse().expect("watchdog prints the pid") }
    }

    /// Sends a signal to the program (e.g. "TERM", "KILL").
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.pid.to_string()).status();
    }

    /// Whether the program is still running.
    pub fn alive(&self) -> bool {
        Command::new("kill")
            .arg("-0")
            .arg(self.pid.to_string())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"stop\n");
        }
        let _ = self.watchdog.wait();
    }
}
