//! `tyrell-worker`: drains ping records from SQS into hour-partitioned gzip NDJSON
//! objects in S3 (see README.md).

mod aws;
mod buffer;
mod config;
mod metrics;
mod pipeline;
mod queue;
mod receive;
mod upload;

use std::process::ExitCode;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::metrics::Counters;
use crate::pipeline::{Exit, Pipeline};

// One thread runs everything but gzip (spawn_blocking): the work is checking records, one
// message after another, and the SDK's calls are I/O, so a second runtime thread has
// little to take and costs wake-ups and hand-offs. Measured only together with the faster
// record check (worker/README.md, 30 Nov 2026: 2-7% less CPU per million records).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // A setting out of range stops here, with one sentence and exit code 2.
    let cfg = Config::from_args();
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,aws_config=warn,aws_smithy_runtime=warn".into()),
        )
        .init();

    let (sqs, s3) = aws::clients().await;
    let counters = Arc::new(Counters::default());
    let queue = queue::Queue::new(sqs, cfg.queue_url.clone(), counters.clone());
    let store = upload::Store::new(s3, &cfg, counters.clone());
    tracing::info!(
        queue_url = cfg.queue_url,
        bucket = cfg.bucket,
        prefix = cfg.key_prefix(),
        drain = cfg.drain,
        receivers = cfg.receivers,
        flush_bytes = cfg.flush_bytes,
        flush_seconds = cfg.flush_seconds,
        "worker starting"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let (mut term, mut int) = (signal(SignalKind::terminate()).unwrap(), signal(SignalKind::interrupt()).unwrap());
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
        }
        let _ = stop_tx.send(true);
    });

    let exit = Pipeline::new(cfg, queue, store, counters.clone()).run(stop_rx).await;
    counters.log("exit");
    match exit {
        Exit::Clean => ExitCode::SUCCESS,
        Exit::Timeout => ExitCode::FAILURE,
    }
}
