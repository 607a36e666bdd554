//! `tyrell-local`: a local cloud where every box really boots. See docs/LOCAL.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod aws;
mod bake;
mod boxes;
mod cmd;
mod endpoints;
mod front;
mod imds;
mod lb;
mod net;
mod nspawn;
mod paths;
mod runner;
mod state;
mod up;

/// A local cloud where every box really boots: role images baked as Debian root
/// filesystems, the emulator's running instances booted with systemd-nspawn.
#[derive(Parser, Debug)]
#[command(name = "tyrell-local", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Bake a role's image (the local `tyrell builds create ROLE`) and register it in the
    /// emulator as an AMI with a Packer build's tags. Prints the AMI id.
    Bake {
        /// The role: a directory of roles/ with its packer/scripts/role-ROLE.sh (`tyrell roles`
        /// lists the fleet roles; `metrics` is the metrics box).
        role: String,
        /// Directory holding bee, indexer, router and tyrell-worker.
        #[arg(long, default_value = "target/release")]
        binaries: PathBuf,
        /// The version (default: a new vYYMMDDHHMMSS).
        #[arg(long)]
        version: Option<String>,
        /// Bake only: do not register the image in the emulator.
        #[arg(long)]
        no_register: bool,
        /// Bound for each step (mmdebstrap, each Packer script), in seconds.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// Print the image record as JSON instead of the AMI id.
        #[arg(long)]
        json: bool,
    },
    /// Register an already baked image (by name `tyrell-ROLE-VERSION` or directory) in the
    /// emulator again, e.g. in a new emulator or another region. Prints the AMI id.
    Register {
        /// The image's name or directory.
        image: String,
    },
    /// Start the emulator on loopback and a runner in the background, and print the
    /// environment that points tyrell at them: `eval "$(tyrell-local up)"`.
    Up {
        #[command(flatten)]
        cloud: CloudArg,
        /// Port for the emulator on 127.0.0.1 (default: a free one).
        #[arg(long, conflicts_with = "endpoint")]
        port: Option<u16>,
        /// Use this emulator (on loopback) instead of starting one.
        #[arg(long)]
        endpoint: Option<String>,
        /// Seconds to wait for the emulator and the runner to be ready.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Run the box runner in the foreground (AWS_ENDPOINT_URL names the emulator): one
    /// booted box per running instance whose AMI is a local image, until SIGTERM/SIGINT.
    Run {
        #[command(flatten)]
        cloud: CloudArg,
        /// Seconds between two looks at the emulator's instances.
        #[arg(long, default_value_t = 2.0)]
        poll: f64,
        /// Seconds a box may take to boot before it is reported stuck.
        #[arg(long, default_value_t = 90)]
        boot_timeout: u64,
    },
    /// List every box: instance, role, version, IP, state, whether its role's service is active.
    Status {
        #[command(flatten)]
        cloud: CloudArg,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove every box, namespace, link and process the cloud made (also after a crash
    /// of its runner), and the emulator `up` started. Idempotent.
    Down {
        #[command(flatten)]
        cloud: CloudArg,
    },
    /// Run a command inside a box (by instance id).
    Exec {
        #[command(flatten)]
        cloud: CloudArg,
        /// The instance id.
        instance: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// The tail of a box's journal (else its console).
    Logs {
        #[command(flatten)]
        cloud: CloudArg,
        /// The instance id.
        instance: String,
        /// How many lines.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
    },
}

/// Which cloud (one runner, one set of namespaces) a command is about.
#[derive(clap::Args, Debug)]
struct CloudArg {
    /// The cloud's name: its network namespace, the prefix of its boxes' namespaces and
    /// its state directory.
    #[arg(long = "cloud", env = "TYRELL_LOCAL_CLOUD", default_value = "tyrell-cloud")]
    name: String,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TYRELL_LOCAL_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // A reader that stops early (`| head`) ends the program quietly, as with any
        // Unix tool, instead of a panic on a failed print. The runner keeps Rust's
        // default (ignored), so a closed socket is an error it handles, not its death.
        // SAFETY: setting a signal's disposition to its default has no preconditions.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tyrell-local: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Bake { role, binaries, version, no_register, timeout, json } => {
            let repo = paths::repo();
            let binaries = if binaries.is_absolute() { binaries } else { std::env::current_dir()?.join(binaries) };
            if !no_register {
                // Fail before the bake, not after it.
                aws::endpoint()?;
            }
            let req = bake::Request {
                role,
                version,
                binaries,
                repo,
                region: aws::region(),
                register: !no_register,
                timeout: Duration::from_secs(timeout),
            };
            let mut image = bake::bake(&req)?;
            if req.register {
                let rt = runtime()?;
                rt.block_on(async {
                    let conf = aws::config().await?;
                    let ec2 = aws_sdk_ec2::Client::new(&conf);
                    bake::register(&ec2, &mut image).await
                })?;
            }
            eprintln!(
                "bake: {} baked in {:.1}s (base {}), {}",
                image.name,
                image.seconds,
                if image.base_seconds > 0.0 { format!("made in {:.1}s", image.base_seconds) } else { "cached".into() },
                image.ami.as_deref().map(|a| format!("registered as {a}")).unwrap_or_else(|| "not registered".into())
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&image)?);
            } else {
                println!("{}", image.ami.as_deref().unwrap_or(&image.dir.display().to_string()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Register { image } => {
            let dir = if image.contains('/') { PathBuf::from(&image) } else { paths::images().join(&image) };
            let mut rec = bake::load(&dir)?;
            let ami = runtime()?.block_on(async {
                let conf = aws::config().await?;
                bake::register(&aws_sdk_ec2::Client::new(&conf), &mut rec).await
            })?;
            println!("{ami}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Up { cloud, port, endpoint, timeout } => {
            let env = up::up(&cloud.name, port, endpoint, Duration::from_secs(timeout))?;
            print!("{env}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { cloud, poll, boot_timeout } => {
            let poll = if poll.is_finite() && poll > 0.0 { poll.min(60.0) } else { 2.0 };
            runner::run(&runner::Options {
                cloud: cloud.name,
                poll: Duration::from_secs_f64(poll),
                boot_timeout: Duration::from_secs(boot_timeout),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { cloud, json } => status(&cloud.name, json),
        Command::Down { cloud } => {
            for l in up::down(&cloud.name)? {
                eprintln!("down: {l}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec { cloud, instance, command } => {
            net::check_cloud_name(&cloud.name)?;
            let b = find_box(&cloud.name, &instance)?;
            let argv: Vec<&str> = command.iter().map(String::as_str).collect();
            let c = nspawn::exec_cmd(
                b.pid
                    .filter(|_| b.process_alive())
                    .and_then(nspawn::leader)
                    .ok_or_else(|| anyhow::anyhow!("box {instance} is not running"))?,
                &argv,
            );
            let o = cmd::output(c, Duration::from_secs(600))?;
            print!("{}", o.stdout);
            eprint!("{}", o.stderr);
            Ok(ExitCode::from(o.code.unwrap_or(1).clamp(0, 255) as u8))
        }
        Command::Logs { cloud, instance, lines } => {
            net::check_cloud_name(&cloud.name)?;
            let b = find_box(&cloud.name, &instance)?;
            println!("{}", boxes::journal_tail(&cloud.name, &b, lines.clamp(1, 100_000)));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn find_box(cloud: &str, instance: &str) -> anyhow::Result<state::BoxRecord> {
    state::boxes(cloud)
        .into_iter()
        .find(|b| b.instance == instance)
        .ok_or_else(|| anyhow::anyhow!("cloud {cloud} has no box for instance {instance} (see tyrell-local status)"))
}

/// One line of `status`.
#[derive(serde::Serialize)]
struct StatusLine {
    instance: String,
    role: String,
    version: String,
    ip: String,
    state: String,
    service: String,
    boot_seconds: Option<f64>,
    /// `Terminating:Wait` while a termination lifecycle hook holds the box.
    lifecycle: Option<String>,
    error: Option<String>,
}

fn status(cloud: &str, json: bool) -> anyhow::Result<ExitCode> {
    net::check_cloud_name(cloud)?;
    let runner = state::runner(cloud);
    let lines: Vec<StatusLine> = state::boxes(cloud)
        .into_iter()
        .map(|b| {
            let alive = b.process_alive();
            let state = if alive && b.lifecycle.is_some() {
                "terminating".into()
            } else if alive {
                b.state.clone()
            } else if b.state == "failed" {
                "failed".into()
            } else {
                "down".into()
            };
            let service = match boxes::role_unit(&b.role) {
                Some(u) if alive && b.state == "booted" => boxes::unit_state(&b, u),
                Some(_) => "-".into(),
                None => "n/a".into(),
            };
            StatusLine {
                instance: b.instance.clone(),
                role: b.role.clone(),
                version: b.version.clone(),
                ip: b.ip.to_string(),
                state,
                service,
                boot_seconds: b.boot_seconds,
                lifecycle: b.lifecycle.clone(),
                error: b.error.clone(),
            }
        })
        .collect();
    let lbs = state::lbs(cloud);
    if json {
        let doc = serde_json::json!({
            "cloud": cloud,
            "runner": runner.as_ref().map(|r| r.pid),
            "endpoint": runner.as_ref().map(|r| r.endpoint.clone()),
            "aws_endpoint": runner.as_ref().and_then(|_| state::aws_endpoint(cloud)),
            "boxes": lines,
            "load_balancers": lbs["load_balancers"],
            "targets": lbs["targets"],
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        match &runner {
            Some(r) => println!("cloud {cloud}: runner {} following {}", r.pid, r.endpoint),
            None => println!("cloud {cloud}: no runner"),
        }
        println!("{:<20} {:<8} {:<14} {:<15} {:<9} SERVICE", "INSTANCE", "ROLE", "VERSION", "IP", "STATE");
        for l in &lines {
            println!("{:<20} {:<8} {:<14} {:<15} {:<9} {}", l.instance, l.role, l.version, l.ip, l.state, l.service);
        }
        let empty = vec![];
        let list = |k: &str| lbs[k].as_array().unwrap_or(&empty).clone();
        if !list("load_balancers").is_empty() {
            println!("\n{:<40} {:<12} {:<22} {:<22} DNS NAME", "LOAD BALANCER", "TYPE", "LISTENER", "ON THIS HOST");
            for lb in list("load_balancers") {
                for l in lb["listeners"].as_array().unwrap_or(&empty) {
                    println!(
                        "{:<40} {:<12} {:<22} {:<22} {}",
                        lb["name"].as_str().unwrap_or_default(),
                        lb["kind"].as_str().unwrap_or_default(),
                        l["address"].as_str().unwrap_or_default(),
                        l["local"].as_str().unwrap_or_default(),
                        lb["dns"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        if !list("targets").is_empty() {
            println!("\n{:<40} {:<20} {:<6} {:<10} REASON", "TARGET GROUP", "TARGET", "PORT", "HEALTH");
            for t in list("targets") {
                println!(
                    "{:<40} {:<20} {:<6} {:<10} {}",
                    t["target_group"].as_str().unwrap_or_default(),
                    t["instance"].as_str().unwrap_or_default(),
                    t["port"],
                    t["state"].as_str().unwrap_or_default(),
                    t["reason"].as_str().unwrap_or_default()
                );
            }
        }
        for l in lines.iter().filter(|l| l.error.is_some()) {
            println!("\n{}: {}", l.instance, l.error.as_deref().unwrap_or_default());
        }
    }
    Ok(if runner.is_some() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
