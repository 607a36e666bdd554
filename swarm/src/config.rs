//! Configuration shared by the three programs.
//!
//! Every option is a command-line flag with an environment variable (clap `env`). A
//! configuration file in the systemd `EnvironmentFile` format (`KEY=VALUE` lines, `#`
//! comments) can be given with `--config FILE` (or `TYRELL_CONFIG=FILE`): its values fill
//! in variables the environment does not already set, so the same
//! `/etc/tyrell/<program>.env` cloud-init writes also works for a local run.
//! Precedence: flag > environment > file > default.
//!
//! Secrets are never flags: each comes from an environment variable holding the value
//! (local use), a `*_FILE` naming a file that holds it, or a `*_PARAM` naming an SSM
//! SecureString read at start (on the boxes). Public values the boxes publish for each
//! other (the broker CA's certificate, BROKER_CA_PARAM) come from String parameters, read
//! the same way ([`read_param`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Parses `KEY=VALUE` lines (systemd EnvironmentFile syntax, the subset cloud-init writes).
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            bail!("line {}: expected KEY=VALUE, got {line:?}", i + 1);
        };
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("line {}: bad variable name {k:?}", i + 1);
        }
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
        {
            &v[1..v.len() - 1]
        } else {
            v
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// The `--config FILE` / `--config=FILE` argument, else `TYRELL_CONFIG`.
fn config_path_from_args() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(p) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("TYRELL_CONFIG").map(PathBuf::from)
}

/// Loads the configuration file, if one is named, into the environment (without
/// overriding variables already set). Call first thing in `main`, before any thread starts.
pub fn load_config_file() -> Result<Option<PathBuf>> {
    let Some(path) = config_path_from_args() else { return Ok(None) };
    apply_env_file(&path)?;
    Ok(Some(path))
}

fn apply_env_file(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    for (k, v) in parse_env_file(&text).with_context(|| format!("in config file {}", path.display()))? {
        if std::env::var_os(&k).is_none() {
            // Single-threaded at this point (before the runtime starts).
            std::env::set_var(k, v);
        }
    }
    Ok(())
}

/// Structured JSON logs on stderr; the level from `LOG` (or `RUST_LOG`), default `info`.
pub fn init_logging() {
    let filter = std::env::var("LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
}

/// The AWS configuration from the standard chain (`AWS_REGION`, `AWS_ENDPOINT_URL`,
/// instance role, ...).
pub async fn aws() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await
}

/// Reads the SSM parameter `param` at start: a name (`/tyrell/<swarm>/broker-password`)
/// is read in the region of the standard chain (AWS_REGION), a parameter ARN
/// (`arn:aws:ssm:REGION:ACCOUNT:parameter/NAME`, [`param_arn`]) in its own REGION, so a
/// bee region reads the home region's parameters (docs/MULTI-REGION.md 6.5). The value
/// comes decrypted (a SecureString's plain text; a String's as it is). `what` says what
/// the parameter holds, for the errors (e.g. `broker password`).
///
/// Errors, each naming the parameter as given: an `arn:` value of another shape; a
/// parameter that does not exist in that region (`SSM parameter P does not exist in
/// REGION: cannot read the <what>`); any other failed request (access denied, no
/// network) with the SDK's reason; a parameter without a value.
pub async fn read_param(param: &str, what: &str) -> Result<String> {
    let (region, name) = match param_arn(param).with_context(|| format!("reading the {what}"))? {
        Some((region, name)) => (Some(region), name),
        None => (None, param.to_string()),
    };
    let mut conf = aws().await.into_builder();
    if let Some(r) = region {
        conf = conf.region(aws_config::Region::new(r));
    }
    let conf = conf.build();
    let region = conf.region().map_or_else(|| "no region (AWS_REGION is not set)".to_string(), |r| r.to_string());
    let ssm = aws_sdk_ssm::Client::new(&conf);
    let out = match ssm.get_parameter().name(&name).with_decryption(true).send().await {
        Ok(out) => out,
        Err(e) if e.as_service_error().is_some_and(|e| e.is_parameter_not_found()) => {
            bail!("SSM parameter {param} does not exist in {region}: cannot read the {what}")
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading the {what} from SSM parameter {param} in {region}"));
        }
    };
    out.parameter.and_then(|p| p.value).with_context(|| format!("SSM parameter {param} ({what}) has no value"))
}

/// Where a secret comes from: its value, a file holding it, or an SSM parameter.
#[derive(Debug, Clone, Default)]
pub struct SecretSource {
    /// The secret itself (an environment variable, local use); empty = not set.
    pub value: Option<String>,
    /// A file holding it (its trailing line break is not part of it).
    pub file: Option<PathBuf>,
    /// An SSM parameter holding it, a name or an ARN ([`read_param`]); empty = not set.
    pub param: Option<String>,
}

impl SecretSource {
    /// Whether any source is set (a value or parameter that is not empty, or a file).
    pub fn is_set(&self) -> bool {
        self.value.as_deref().is_some_and(|v| !v.is_empty())
            || self.file.is_some()
            || self.param.as_deref().is_some_and(|p| !p.is_empty())
    }

    /// Reads the secret (value, then file, then SSM); `None` when no source is set.
    pub async fn resolve(&self, what: &str) -> Result<Option<String>> {
        if let Some(v) = self.value.as_deref().filter(|v| !v.is_empty()) {
            return Ok(Some(v.to_string()));
        }
        if let Some(f) = &self.file {
            let v = std::fs::read_to_string(f).with_context(|| format!("reading the {what} from {}", f.display()))?;
            return Ok(Some(v.trim_end_matches(['\r', '\n']).to_string()));
        }
        if let Some(param) = self.param.as_deref().filter(|p| !p.is_empty()) {
            return read_param(param, what).await.map(Some);
        }
        Ok(None)
    }
}

/// An SSM parameter ARN `arn:PARTITION:ssm:REGION:ACCOUNT:parameter/NAME` as (region,
/// `/NAME`); `Ok(None)` for a value not starting with `arn:` (a parameter name). Errors: an
/// `arn:` value of another shape, in one sentence (ARN format: AWS General Reference,
/// "Amazon Resource Names"; SSM's resource type `parameter`).
pub fn param_arn(value: &str) -> Result<Option<(String, String)>> {
    if !value.starts_with("arn:") {
        return Ok(None);
    }
    let parts: Vec<&str> = value.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && !parts[1].is_empty()
        && parts[2] == "ssm"
        && !parts[3].is_empty()
        && parts[3].bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit());
    match parts.get(5).and_then(|r| r.strip_prefix("parameter/")) {
        Some(name) if ok && !name.is_empty() => Ok(Some((parts[3].to_string(), format!("/{name}")))),
        _ => bail!("{value:?} is not an SSM parameter ARN (arn:aws:ssm:REGION:ACCOUNT:parameter/NAME)"),
    }
}

/// Parses durations written as `10s`, `250ms`, `2m`, `1h` or plain seconds (`10`, `0.5`):
/// tyrell's one duration grammar, [`common::duration::parse`] (errors: one sentence).
pub use common::duration::parse as parse_duration;

/// A duration written the way [`parse_duration`] reads it: `250ms`, `10s`, `2m`, `1h`
/// ([`common::duration::format`]).
pub use common::duration::format as fmt_duration;

/// A clap value parser for a whole number setting in `min..=max`. `label` names the
/// setting in the error, e.g. `"BEE_PROBES (--probes)"`; the error is one sentence with
/// the allowed range: `BEE_PROBES (--probes) must be a whole number from 1 to 1000, not "0"`.
pub fn int_in<T>(label: &'static str, min: T, max: T) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
{
    move |s: &str| match s.trim().parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(format!("{label} must be a whole number from {min} to {max}, not {s:?}")),
    }
}

/// A clap value parser for a duration setting in `min..=max` (see [`int_in`] for
/// `label`); `zero_off` also allows `0`, meaning "off".
pub fn duration_in(
    label: &'static str,
    min: Duration,
    max: Duration,
    zero_off: bool,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync {
    move |s: &str| match parse_duration(s) {
        Ok(d) if (d >= min && d <= max) || (zero_off && d.is_zero()) => Ok(d),
        _ => Err(format!(
            "{label} must be {}a duration from {} to {} (e.g. 10s, 250ms, 2m), not {s:?}",
            if zero_off { "0 (off) or " } else { "" },
            fmt_duration(min),
            fmt_duration(max)
        )),
    }
}

/// A clap value parser for a listening address `IP:PORT` with the port in 1..=65535
/// (see [`int_in`] for `label`); `optional` also allows the empty string (off).
pub fn listen_addr(
    label: &'static str,
    optional: bool,
) -> impl Fn(&str) -> Result<String, String> + Clone + Send + Sync {
    move |s: &str| match s.trim().parse::<std::net::SocketAddr>() {
        Ok(a) if a.port() > 0 => Ok(a.to_string()),
        _ if optional && s.trim().is_empty() => Ok(String::new()),
        _ => Err(format!(
            "{label} must be {}an address IP:PORT with the port from 1 to 65535 (e.g. 0.0.0.0:8080), not {s:?}",
            if optional { "empty (off) or " } else { "" }
        )),
    }
}

/// The value parser of `STATS_INTERVAL` (every program): 0 (never) or 100ms to 24h.
pub fn stats_interval() -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync {
    duration_in("STATS_INTERVAL (--stats-interval)", Duration::from_millis(100), Duration::from_secs(86_400), true)
}

/// A clap value parser for a setting that must not be empty (see [`int_in`] for `label`).
pub fn non_empty(label: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone + Send + Sync {
    move |s: &str| {
        if s.trim().is_empty() {
            Err(format!("{label} must not be empty"))
        } else {
            Ok(s.trim().to_string())
        }
    }
}

/// Checks of a program's settings that involve more than one of them, run after the
/// flags are parsed (each setting's own range is checked by its value parser).
pub trait Check {
    /// `Err` holds one sentence naming the settings and what they must satisfy.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The `main` of every swarm program: the configuration file, then the flags (which read
/// the environment it filled), JSON logging, a runtime, and `run`; a failure is logged
/// before it is returned.
///
/// A setting out of its range (or a failed [`Check`]) stops the program before it does
/// anything: one line `<program>: <sentence naming the setting and its range>` on
/// stderr, exit code 2 (clap's own code for a usage error).
pub fn main<A, F, Fut>(program: &str, run: F) -> Result<()>
where
    A: clap::Parser + Check,
    F: FnOnce(A) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    load_config_file().context("loading the configuration file")?;
    let args = match A::try_parse() {
        Ok(a) => a,
        Err(e) if e.kind() == clap::error::ErrorKind::ValueValidation => {
            match std::error::Error::source(&e) {
                Some(why) => eprintln!("{program}: {why}"),
                None => eprintln!("{program}: {}", e.to_string().trim()),
            }
            std::process::exit(2);
        }
        Err(e) => e.exit(),
    };
    if let Err(why) = args.check() {
        eprintln!("{program}: {why}");
        std::process::exit(2);
    }
    init_logging();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let r = run(args).await;
        if let Err(e) = &r {
            tracing::error!(error = format!("{e:#}"), "{program} failed");
        }
        r
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn parameter_arns_name_their_region() {
        assert_eq!(param_arn("/tyrell/s/broker-password").unwrap(), None);
        assert_eq!(
            param_arn("arn:aws:ssm:eu-west-1:123456789012:parameter/tyrell/s/broker-password").unwrap(),
            Some(("eu-west-1".to_string(), "/tyrell/s/broker-password".to_string()))
        );
        for bad in [
            "arn:aws:ssm:eu-west-1:123456789012:secret/x",
            "arn:aws:s3:eu-west-1:123456789012:parameter/x",
            "arn:aws:ssm::123456789012:parameter/x",
            "arn:aws:ssm:eu-west-1:1234:parameter/x",
            "arn:aws:ssm:eu-west-1:123456789012:parameter/",
            "arn:aws",
        ] {
            let e = param_arn(bad).unwrap_err().to_string();
            assert!(e.contains("is not an SSM parameter ARN"), "{bad}: {e}");
        }
    }

    use super::*;

    #[test]
    fn env_file_syntax() {
        let v = parse_env_file("# c\n\nA=1\nexport B = \"two words\"\nC='x=y'\nD=\n").unwrap();
        let want: Vec<(String, String)> = [("A", "1"), ("B", "two words"), ("C", "x=y"), ("D", "")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(v, want);
        assert!(parse_env_file("novalue\n").is_err());
        assert!(parse_env_file("A B=1\n").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
        // Never a panic, whatever the input.
        for bad in ["-1s", "NaN", "nan", "inf", "1e400s", "99999999999999999999999s", "1.2.3s", "", "s", ".ms"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_name_the_setting_and_the_range() {
        let p = int_in("BEE_PROBES (--probes)", 1u16, 1000);
        assert_eq!(p("10"), Ok(10));
        assert_eq!(p("1000"), Ok(1000));
        for bad in ["0", "1001", "-1", "70000", "x", ""] {
            let e = p(bad).unwrap_err();
            assert!(e.starts_with("BEE_PROBES (--probes) must be a whole number from 1 to 1000, not"), "{e}");
        }
        let d = duration_in("BEE_INTERVAL (--interval)", Duration::from_millis(100), Duration::from_secs(3600), false);
        assert_eq!(d("10s"), Ok(Duration::from_secs(10)));
        for bad in ["0s", "50ms", "2h", "99999999999999999999s", "-1s", "NaN"] {
            let e = d(bad).unwrap_err();
            assert!(e.contains("BEE_INTERVAL (--interval) must be a duration from 100ms to 1h"), "{e}");
        }
        let z = duration_in("STATS_INTERVAL", Duration::from_millis(100), Duration::from_secs(86400), true);
        assert_eq!(z("0"), Ok(Duration::ZERO));
        assert!(z("1ms").unwrap_err().contains("must be 0 (off) or a duration from 100ms to 24h"));
        let l = listen_addr("ROUTER_LISTEN", false);
        assert_eq!(l("0.0.0.0:8080").as_deref(), Ok("0.0.0.0:8080"));
        for bad in ["0.0.0.0:0", "0.0.0.0:70000", "", "localhost"] {
            assert!(l(bad).unwrap_err().contains("port from 1 to 65535"), "{bad}");
        }
        assert_eq!(listen_addr("X", true)("").as_deref(), Ok(""));
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[tokio::test]
    async fn secret_sources_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "from-file\n").unwrap();
        let s = SecretSource { value: Some("v".into()), file: Some(f.clone()), param: None };
        assert_eq!(s.resolve("x").await.unwrap().as_deref(), Some("v"));
        let s = SecretSource { value: Some(String::new()), file: Some(f), param: None };
        assert_eq!(s.resolve("x").await.unwrap().as_deref(), Some("from-file"));
        assert_eq!(SecretSource::default().resolve("x").await.unwrap(), None);
        assert!(!SecretSource::default().is_set());
    }
}
