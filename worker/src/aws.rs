//! SDK clients from the standard AWS chain (region, credentials, `AWS_ENDPOINT_URL`).

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;

use crate::metrics::Counters;

pub async fn clients() -> (aws_sdk_sqs::Client, aws_sdk_s3::Client) {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        // Long polls hold a receive for up to 20 s; anything much longer is a dead connection.
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(40))
                .build(),
        )
        .load()
        .await;
    let mut s3 = aws_sdk_s3::config::Builder::from(&sdk);
    if sdk.endpoint_url().is_some() {
        // Emulators and private endpoints do not resolve `bucket.host` names.
        s3 = s3.force_path_style(true);
    }
    (aws_sdk_sqs::Client::new(&sdk), aws_sdk_s3::Client::from_conf(s3.build()))
}

/// An error with its causes, `outer: inner: ...` (SDK errors hide the useful part in the
/// chain): [`common::error_chain`].
pub use common::error_chain;

/// Runs `call` up to [`ATTEMPTS`] times with exponential backoff; every failure is logged
/// and counted in `errors`.
pub async fn retry<T, E, F, Fut>(what: &str, counters: &Counters, mut call: F) -> Result<T, E>
where
    E: std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = common::Backoff::exact(Duration::from_millis(200), Duration::from_secs(30));
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                Counters::inc(&counters.errors);
                tracing::warn!(call = what, attempt, error = error_chain(&e), "AWS call failed");
                if attempt == ATTEMPTS {
                    return Err(e);
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
        attempt += 1;
    }
}

/// Attempts of a call that must succeed before a message is deleted (PUT, delete).
pub const ATTEMPTS: u32 = 4;
