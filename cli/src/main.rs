//! tyrell: deploys and operates a ping swarm on AWS with blue-green releases.
//!
//! Three layers that never leak into each other: `commands` (parse, call, print) →
//! `engine` (the deployer's logic over roles and domain types) → `aws` (thin wrappers,
//! the only place SDK types appear).

mod aws;
mod commands;
mod engine;
mod names;

use std::process::ExitCode;

fn init_logging(verbose: u8) {
    let level = match verbose {
        // aws-config warns (with a page of debug output) about every place it looked for
        // a region; tyrell says the one thing that matters itself ("no AWS region...").
        0 => "warn,aws_config=error",
        1 => "info",
        2 => "tyrell=debug,info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TYRELL_LOG").unwrap_or_else(|_| level.into());
    // Colour only on a terminal, and never with NO_COLOR set (no-color.org): piped or
    // redirected logs carry no escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .init();
}

fn main() -> ExitCode {
    let lib = match engine::library::Library::load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let matches = commands::command(&lib).get_matches();
    let (global, inv) = match commands::parse(&lib, &matches) {
        Ok(x) => x,
        Err(e) => e.exit(),
    };
    init_logging(global.verbose);
    // `tyrell local ...` is another program's command line, run as it is.
    if let commands::Invocation::Static(commands::Command::Local(a)) = &inv {
        return match commands::local::run(&a.args) {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("start the async runtime");
    let started = std::time::Instant::now();
    let in_flight = commands::output::InFlight::default();
    let result = rt.block_on(async {
        tokio::select! {
            r = commands::run(&global, lib, inv, in_flight.clone()) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    match result {
        Some(Ok((printed, calls))) => {
            printed.print(global.output);
            if let Some(n) = calls {
                tracing::info!(
                    "{} AWS API calls in {:.1}s ({} of them retries)",
                    n.requests,
                    started.elapsed().as_secs_f64(),
                    n.retries
                );
            }
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(engine::error::class_of(&e).code())
        }
        None => {
            eprintln!();
            eprintln!("{}", in_flight.summary());
            ExitCode::from(engine::error::Class::Interrupted.code())
        }
    }
}
