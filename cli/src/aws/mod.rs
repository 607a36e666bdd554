//! Thin wrappers over the AWS SDK: the only place SDK types appear. Each module turns SDK
//! calls into the engine's plain types and SDK errors into [`AwsError`] with one clear
//! sentence.

pub mod asg;
pub mod cfn;
pub mod ec2;
pub mod elb;
pub mod s3;
pub mod sqs;
pub mod ssm;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// Where and as whom to talk to AWS; unset fields come from the standard chain
/// (`AWS_REGION`, `AWS_PROFILE`, `AWS_ENDPOINT_URL`, SSO, instance roles...).
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub region: Option<String>,
    pub profile: Option<String>,
    pub endpoint_url: Option<String>,
}

/// One client per service, sharing one configuration and one API-call counter.
#[derive(Clone)]
pub struct Aws {
    pub region: String,
    pub cfn: aws_sdk_cloudformation::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub asg: aws_sdk_autoscaling::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    calls: Arc<AtomicUsize>,
}

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("no AWS region is configured: pass --region, or set AWS_REGION or a region in your AWS profile")]
    NoRegion,
    #[error("invalid AWS region {0:?}: give one region name like eu-west-1 (a command works in one region)")]
    BadRegion(String),
    #[error("AWS profile {name:?} is not defined in {files} ({known})")]
    NoProfile { name: String, files: String, known: String },
    #[error("{0}")]
    Api(String),
}

/// Turns any SDK error into one readable sentence: the service's code and message when
/// it answered, the transport problem when it did not.
pub fn describe<E, R>(context: &str, err: aws_smithy_runtime_api::client::result::SdkError<E, R>) -> AwsError
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    let detail = match &err {
        SdkError::ServiceError(e) => {
            let e = e.err();
            match (e.code(), e.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_string(),
                _ => e.to_string(),
            }
        }
        SdkError::DispatchFailure(e) => {
            let mut s = format!("cannot reach AWS ({:?})", e);
            if e.is_io() || e.is_timeout() {
                s = "cannot reach the AWS endpoint (connection failed or timed out): check --endpoint-url / AWS_ENDPOINT_URL and your network".into();
            }
            s
        }
        SdkError::TimeoutError(_) => "the request to AWS timed out".into(),
        other => common::error_chain(other),
    };
    AwsError::Api(format!("{context}: {detail}"))
}

/// Error code of a service error, if the service answered.
pub fn error_code<E, R>(err: &aws_smithy_runtime_api::client::result::SdkError<E, R>) -> Option<&str>
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata,
{
    match err {
        aws_smithy_runtime_api::client::result::SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    }
}

#[derive(Debug)]
struct CountCalls(Arc<AtomicUsize>);

impl Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "CountCalls"
    }
    fn read_before_transmit(
        &self,
        _ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Whether `s` has the shape of an AWS region name: `eu-west-1`, `us-gov-west-1`,
/// `ap-southeast-2`, `cn-northwest-1` (two letters, words, a number; AWS General
/// Reference, "Regions and endpoints").
pub fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[0].chars().all(|c| c.is_ascii_lowercase())
        && parts[1..parts.len() - 1].iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts.last().is_some_and(|n| (1..=2).contains(&n.len()) && n.chars().all(|c| c.is_ascii_digit()))
}

/// The profile names defined in the shared config and credentials files (AWS CLI User
/// Guide, "Configuration and credential file settings": `[profile NAME]` or `[default]`
/// in `config`, `[NAME]` in `credentials`; `AWS_CONFIG_FILE` and
/// `AWS_SHARED_CREDENTIALS_FILE` move them). Returns the names and the files read.
fn defined_profiles() -> (Vec<String>, Vec<String>) {
    let home = std::env::var("HOME").unwrap_or_default();
    let config = std::env::var("AWS_CONFIG_FILE").unwrap_or_else(|_| format!("{home}/.aws/config"));
    let creds = std::env::var("AWS_SHARED_CREDENTIALS_FILE").unwrap_or_else(|_| format!("{home}/.aws/credentials"));
    let mut names = Vec::new();
    for (file, is_config) in [(&config, true), (&creds, false)] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines() {
            let Some(section) = line.trim().strip_prefix('[').and_then(|l| l.strip_suffix(']')) else { continue };
            let section = section.trim();
            let name = match section.strip_prefix("profile ") {
                Some(n) if is_config => n.trim(),
                _ if is_config && section != "default" => continue, // sso-session, services...
                _ => section,
            };
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }
    (names, vec![config, creds])
}

impl Aws {
    /// Loads the standard AWS chain with the given overrides.
    ///
    /// Errors: [`AwsError::NoProfile`] when a profile is named (`--profile` or
    /// `AWS_PROFILE`) that neither shared file defines, [`AwsError::BadRegion`] when the
    /// region is not one region name, [`AwsError::NoRegion`] when none is configured.
    pub async fn connect(target: &Target) -> Result<Aws, AwsError> {
        if let Some(r) = &target.region {
            if !is_region(r) {
                return Err(AwsError::BadRegion(r.clone()));
            }
        }
        let named = target.profile.clone().or_else(|| std::env::var("AWS_PROFILE").ok()).filter(|p| !p.is_empty());
        if let Some(p) = &named {
            let (known, files) = defined_profiles();
            if !known.contains(p) {
                return Err(AwsError::NoProfile {
                    name: p.clone(),
                    files: files.join(" or "),
                    known: if known.is_empty() {
                        "no profiles are defined there".into()
                    } else {
                        format!("defined: {}", known.join(", "))
                    },
                });
            }
        }
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = &target.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(p) = &target.profile {
            loader = loader.profile_name(p);
        }
        if let Some(e) = &target.endpoint_url {
            loader = loader.endpoint_url(e);
        }
        let conf = loader.load().await;
        let region = conf.region().ok_or(AwsError::NoRegion)?.to_string();
        if !is_region(&region) {
            return Err(AwsError::BadRegion(region));
        }
        let calls = Arc::new(AtomicUsize::new(0));
        macro_rules! client {
            ($krate:ident) => {{
                let c = $krate::config::Builder::from(&conf).interceptor(CountCalls(calls.clone())).build();
                $krate::Client::from_conf(c)
            }};
        }
        Ok(Aws {
            region,
            cfn: client!(aws_sdk_cloudformation),
            ec2: client!(aws_sdk_ec2),
            asg: client!(aws_sdk_autoscaling),
            elb: client!(aws_sdk_elasticloadbalancingv2),
            ssm: client!(aws_sdk_ssm),
            // Path-style addressing when an endpoint is given: an emulator on localhost has
            // no bucket.localhost names (../shared/EMULATOR.md); AWS itself takes both.
            s3: {
                let path_style = target.endpoint_url.is_some() || std::env::var_os("AWS_ENDPOINT_URL").is_some();
                let c = aws_sdk_s3::config::Builder::from(&conf)
                    .interceptor(CountCalls(calls.clone()))
                    .force_path_style(path_style)
                    .build();
                aws_sdk_s3::Client::from_conf(c)
            },
            sqs: client!(aws_sdk_sqs),
            calls,
        })
    }

    /// AWS API calls made so far (retries included).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_names() {
        for ok in ["eu-west-1", "us-east-1", "us-gov-west-1", "ap-southeast-2", "cn-northwest-1", "eu-isoe-west-1"] {
            assert!(is_region(ok), "{ok}");
        }
        for bad in
            ["eu-west-1,us-east-1", "", "eu", "eu-west", "EU-WEST-1", "eu-west-1 ", "eu--1", "eu-west-123", "eu_west_1"]
        {
            assert!(!is_region(bad), "{bad}");
        }
    }
}
