//! Printing: results to stdout (a table, or exactly one JSON document), progress to stderr.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use crate::aws::cfn;
use crate::engine::Reporter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// One command's typed result: it serialises (serde) to the command's JSON contract, the
/// shapes in docs/JSON.md, and renders itself for `--output table`. Each command has one.
pub trait Outcome: serde::Serialize {
    /// The human rendering (a table, `key: value` lines or one line); empty prints nothing.
    fn render(&self) -> String;
}

/// A command's result, ready to print: one JSON document, and its human rendering.
pub struct Printed {
    pub json: serde_json::Value,
    pub text: String,
}

impl Printed {
    /// Prints a typed result ([`Outcome`]).
    pub fn of(o: &impl Outcome) -> anyhow::Result<Printed> {
        Ok(Printed { json: serde_json::to_value(o)?, text: o.render() })
    }

    pub fn print(&self, format: Format) {
        let mut out = std::io::stdout().lock();
        let _ = match format {
            Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&self.json).unwrap()),
            Format::Table if self.text.is_empty() => Ok(()),
            Format::Table => writeln!(out, "{}", self.text.trim_end()),
        };
    }
}

/// A plain-text table with left-aligned columns.
pub fn table<S: AsRef<str>>(headers: &[&str], rows: &[Vec<S>]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.as_ref().chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut s = line(headers.to_vec());
    s.push('\n');
    for r in rows {
        s.push_str(&line(r.iter().map(|c| c.as_ref()).collect()));
        s.push('\n');
    }
    s
}

/// `key: value` lines, keys aligned.
pub fn key_values(pairs: &[(String, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs.iter().map(|(k, v)| format!("{:<w$}  {}\n", format!("{k}:"), v, w = w + 1)).collect()
}

/// Progress on stderr: steps and stack events as lines; on a terminal, the current
/// stack status as one live line, otherwise a line per status change.
pub struct StderrReporter {
    tty: bool,
    live: bool,
    last: String,
    in_flight: InFlight,
}

impl StderrReporter {
    /// A reporter on stderr that keeps what is in flight in `in_flight`.
    pub fn new(in_flight: InFlight) -> StderrReporter {
        StderrReporter { tty: std::io::stderr().is_terminal(), live: false, last: String::new(), in_flight }
    }

    fn clear(&mut self) {
        if self.live {
            eprint!("\r\x1b[K");
            self.live = false;
        }
    }
}

/// What AWS is still doing, as the reporter last heard it ([`cfn::Progress::in_flight`]),
/// for the Ctrl-C summary. `main` keeps a clone; the reporter it hands the engine writes it.
#[derive(Clone, Default)]
pub struct InFlight(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl InFlight {
    /// The Ctrl-C summary, one or two lines: what AWS goes on doing, and where to look.
    pub fn summary(&self) -> String {
        match self.0.lock().map(|mut g| g.take()).unwrap_or(None) {
            Some(what) => format!(
                "interrupted: stopped waiting, but AWS goes on: {what}.\nLook at it with `aws cloudformation describe-stack-events --stack-name STACK` or the tyrell list commands."
            ),
            None => "interrupted".into(),
        }
    }
}

impl cfn::Progress for StderrReporter {
    fn in_flight(&mut self, what: Option<String>) {
        if let Ok(mut g) = self.in_flight.0.lock() {
            *g = what;
        }
    }

    fn event(&mut self, stack: &str, e: &cfn::Event) {
        self.clear();
        eprintln!("    {stack}  {e}");
    }

    fn status(&mut self, stack: &str, status: &str, elapsed: Duration) {
        let line = format!("    {stack}: {status}");
        if self.tty {
            self.clear();
            eprint!("{line} ({}s)", elapsed.as_secs());
            let _ = std::io::stderr().flush();
            self.live = true;
        } else if line != self.last {
            eprintln!("{line} ({}s)", elapsed.as_secs());
        }
        self.last = line;
    }
}

impl Reporter for StderrReporter {
    fn step(&mut self, msg: &str) {
        self.clear();
        eprintln!("==> {msg}");
    }

    fn warn(&mut self, msg: &str) {
        self.clear();
        eprintln!("!!! WARNING: {msg}");
    }
}

impl Drop for StderrReporter {
    fn drop(&mut self) {
        if self.live {
            eprintln!();
        }
    }
}
