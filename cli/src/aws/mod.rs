//! Thin wrappers over the AWS SDK: the only place SDK types appear. Each module turns SDK
//! calls into the engine's plain types and SDK errors into [`AwsError`] with one clear
//! sentence.

pub mod acm;
pub mod asg;
pub mod cfn;
pub mod ec2;
pub mod elb;
pub mod s3;
pub mod sqs;
pub mod ssm;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_cloudformation::config::retry::{ClientRateLimiter, RetryConfig, RetryPartition, TokenBucket};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
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

/// An AWS region name (`eu-west-1`), checked by [`is_region`]. Every stack, version and
/// build tyrell lists carries the region it lives in; client sets are cached per region
/// ([`Aws::in_region`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Region(String);

impl Region {
    /// No region: only for a client built without one (mocked SDK clients in tests).
    pub(crate) fn unnamed() -> Region {
        Region(String::new())
    }
}

impl std::str::FromStr for Region {
    type Err = AwsError;
    /// Errors: [`AwsError::BadRegion`] when `s` is not one region name.
    fn from_str(s: &str) -> Result<Region, AwsError> {
        if is_region(s) {
            Ok(Region(s.to_string()))
        } else {
            Err(AwsError::BadRegion(s.to_string()))
        }
    }
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An AWS account id: 12 digits, as ARNs carry it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Account(String);

impl Account {
    /// The account id when `s` is 12 digits.
    pub fn parse(s: &str) -> Option<Account> {
        (s.len() == 12 && s.chars().all(|c| c.is_ascii_digit())).then(|| Account(s.to_string()))
    }
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The region and account of an ARN (`arn:PARTITION:SERVICE:REGION:ACCOUNT:...`); each
/// `None` when the ARN has none (global resources) or is not an ARN.
pub fn arn_place(arn: &str) -> (Option<Region>, Option<Account>) {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() < 6 || parts[0] != "arn" {
        return (None, None);
    }
    (parts[3].parse().ok(), Account::parse(parts[4]))
}

/// One client per service for one region, sharing one configuration and one API-call
/// counter with every other region's set. Obtained from [`Clouds::region`].
#[derive(Clone)]
pub struct Aws {
    /// The region these clients talk to.
    pub region: Region,
    pub cfn: aws_sdk_cloudformation::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub asg: aws_sdk_autoscaling::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub acm: aws_sdk_acm::Client,
    calls: Arc<Counts>,
}

/// What every client of one [`Clouds`] has sent: operations asked for and HTTP requests
/// made (an operation the SDK retried makes more than one request).
#[derive(Debug, Default)]
struct Counts {
    operations: AtomicUsize,
    requests: AtomicUsize,
}

/// AWS API calls made so far by every client of one [`Clouds`], in every region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Calls {
    /// HTTP requests sent to AWS, retries included.
    pub requests: usize,
    /// Of those, requests that repeated an earlier one the SDK retried (after throttling,
    /// a transient error or a lost connection): `requests` minus the operations asked for.
    pub retries: usize,
}

/// The client sets of every region, for one configuration (profile, credentials,
/// endpoint): each region's [`Aws`] is built on first use and cached for the process.
/// Clones share the cache. [`Clouds::home`] is the region the configuration names
/// (`--region`, `AWS_REGION`, the profile's).
#[derive(Clone)]
pub struct Clouds {
    home: Region,
    conf: aws_config::SdkConfig,
    path_style: bool,
    /// The one retry budget of every client in every region (see [`Clouds::connect`]).
    retry: RetryPartition,
    calls: Arc<Counts>,
    by_region: Arc<Mutex<BTreeMap<Region, Aws>>>,
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
    /// AWS refused the call for its rate (a throttling error code, [`THROTTLING_CODES`])
    /// after the SDK's retries ran out: the call may well succeed later.
    #[error("{0}")]
    Throttled(String),
}

/// The error codes AWS uses to say "slow down", as the AWS SDKs classify them (the list
/// of aws-runtime 1.10, `retries::classifiers::THROTTLING_ERRORS`; AWS SDKs and Tools
/// Reference Guide, "Retry behavior"). CloudFormation, Auto Scaling and ELBv2 answer
/// `Throttling` (HTTP 400), EC2 `RequestLimitExceeded` (HTTP 503), JSON services
/// `ThrottlingException`.
pub const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

impl AwsError {
    /// Whether AWS refused the call for its rate (retrying later may succeed).
    pub fn is_throttled(&self) -> bool {
        matches!(self, AwsError::Throttled(_))
    }
}

/// Turns any SDK error into one readable sentence: the service's code and message when
/// it answered, the transport problem when it did not. A throttling code
/// ([`THROTTLING_CODES`]) gives [`AwsError::Throttled`], anything else [`AwsError::Api`].
pub fn describe<E, R>(context: &str, err: aws_smithy_runtime_api::client::result::SdkError<E, R>) -> AwsError
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    let throttled = error_code(&err).is_some_and(|c| THROTTLING_CODES.contains(&c));
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
    let sentence = format!("{context}: {detail}");
    if throttled {
        AwsError::Throttled(format!("{sentence} (AWS throttled the call and every retry)"))
    } else {
        AwsError::Api(sentence)
    }
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

/// Counts operations (once each) and requests (once per attempt, retries included).
#[derive(Debug)]
struct CountCalls(Arc<Counts>);

impl Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "CountCalls"
    }
    fn read_before_execution(
        &self,
        _ctx: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.operations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn read_before_transmit(
        &self,
        _ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
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

impl Clouds {
    /// Loads the standard AWS chain with the given overrides.
    ///
    /// Retries: every client of every region this `Clouds` builds shares one retry
    /// budget — one SDK [`RetryPartition`] holding one retry token bucket and one
    /// client-side rate limiter — in the SDK's adaptive retry mode (the configured
    /// `max_attempts`, default 3). Standard mode retries throttling and transient errors
    /// with exponential backoff and jitter, each retry paid from the token bucket; adaptive
    /// mode adds a rate limiter that slows every sender down once AWS throttles one (AWS
    /// SDKs and Tools Reference Guide, "Retry behavior"; aws-smithy-runtime
    /// `RetryPartition::custom`). So a throttled DescribeStacks in one region slows the
    /// Auto Scaling and ELB calls too, instead of each client finding AWS's limit alone.
    ///
    /// Errors: [`AwsError::NoProfile`] when a profile is named (`--profile` or
    /// `AWS_PROFILE`) that neither shared file defines, [`AwsError::BadRegion`] when the
    /// region is not one region name, [`AwsError::NoRegion`] when none is configured.
    pub async fn connect(target: &Target) -> Result<Clouds, AwsError> {
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
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let retry = RetryPartition::custom("tyrell")
            .token_bucket(TokenBucket::default())
            .client_rate_limiter(ClientRateLimiter::new(now.as_secs_f64()))
            .build();
        let attempts = conf.retry_config().map_or(RetryConfig::standard().max_attempts(), |r| r.max_attempts());
        let conf = conf.to_builder().retry_config(RetryConfig::adaptive().with_max_attempts(attempts)).build();
        let region: Region = conf.region().ok_or(AwsError::NoRegion)?.to_string().parse()?;
        // Path-style addressing when an endpoint is given: an emulator on localhost has
        // no bucket.localhost names (../shared/EMULATOR.md); AWS itself takes both.
        let path_style = target.endpoint_url.is_some() || std::env::var_os("AWS_ENDPOINT_URL").is_some();
        Ok(Clouds {
            home: region,
            conf,
            path_style,
            retry,
            calls: Arc::new(Counts::default()),
            by_region: Arc::new(Mutex::new(BTreeMap::new())),
        })
    }

    /// The region the configuration names.
    pub fn home(&self) -> &Region {
        &self.home
    }

    /// The client set of `region`: this configuration and call counter, talking to that
    /// region. Built on first use, then the same set for the rest of the process.
    pub fn region(&self, region: &Region) -> Aws {
        let mut cache = self.by_region.lock().unwrap_or_else(|e| e.into_inner());
        cache.entry(region.clone()).or_insert_with(|| self.build(region)).clone()
    }

    fn build(&self, region: &Region) -> Aws {
        let conf = self.conf.to_builder().region(aws_config::Region::new(region.0.clone())).build();
        let calls = self.calls.clone();
        macro_rules! client {
            ($krate:ident) => {{
                let c = $krate::config::Builder::from(&conf)
                    .interceptor(CountCalls(calls.clone()))
                    .retry_partition(self.retry.clone())
                    .build();
                $krate::Client::from_conf(c)
            }};
        }
        Aws {
            region: region.clone(),
            cfn: client!(aws_sdk_cloudformation),
            ec2: client!(aws_sdk_ec2),
            asg: client!(aws_sdk_autoscaling),
            elb: client!(aws_sdk_elasticloadbalancingv2),
            ssm: client!(aws_sdk_ssm),
            s3: {
                let c = aws_sdk_s3::config::Builder::from(&conf)
                    .interceptor(CountCalls(calls.clone()))
                    .retry_partition(self.retry.clone())
                    .force_path_style(self.path_style)
                    .build();
                aws_sdk_s3::Client::from_conf(c)
            },
            sqs: client!(aws_sdk_sqs),
            acm: client!(aws_sdk_acm),
            calls,
        }
    }
}

impl Aws {
    /// AWS API calls made so far by every client of its [`Clouds`], in every region.
    pub fn calls(&self) -> Calls {
        let requests = self.calls.requests.load(Ordering::Relaxed);
        let operations = self.calls.operations.load(Ordering::Relaxed);
        Calls { requests, retries: requests.saturating_sub(operations) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_say_their_region_and_account() {
        let (r, a) = arn_place("arn:aws:cloudformation:eu-west-1:123456789012:stack/sw1/0f1e");
        assert_eq!(r.map(|r| r.to_string()), Some("eu-west-1".into()));
        assert_eq!(a.map(|a| a.to_string()), Some("123456789012".into()));
        assert_eq!(arn_place("arn:aws:iam::123456789012:role/x").0, None);
        assert_eq!(arn_place("sw1"), (None, None));
        assert!("eu-west-1,us-east-1".parse::<Region>().is_err());
    }

    /// One client set per region, built once and shared: the second region's clients
    /// talk to that region, the first's are unchanged, and both count into one counter.
    #[tokio::test]
    async fn client_sets_are_cached_per_region() {
        let clouds = Clouds::connect(&Target {
            region: Some("eu-west-1".into()),
            profile: None,
            endpoint_url: Some("http://127.0.0.1:9".into()),
        })
        .await
        .unwrap();
        let eu = clouds.region(&clouds.home().clone());
        let us: Region = "us-east-1".parse().unwrap();
        let other = clouds.region(&us);
        assert_eq!((eu.region.to_string(), other.region.to_string()), ("eu-west-1".into(), "us-east-1".into()));
        assert_eq!(other.cfn.config().region().map(|r| r.to_string()), Some("us-east-1".into()));
        assert_eq!(eu.cfn.config().region().map(|r| r.to_string()), Some("eu-west-1".into()));
        assert!(Arc::ptr_eq(&other.calls, &eu.calls));
        // One retry budget: every client of every region carries the partition this
        // `Clouds` made (a clone shares its token bucket and rate limiter), in adaptive mode.
        let partition = |c: Option<&RetryPartition>| c.map(|p| p.to_string());
        assert_eq!(partition(eu.cfn.config().retry_partition()), Some("tyrell".into()));
        assert_eq!(partition(other.asg.config().retry_partition()), Some("tyrell".into()));
        assert_eq!(partition(other.s3.config().retry_partition()), Some("tyrell".into()));
        assert_eq!(
            other.elb.config().retry_config().map(|r| r.mode()),
            Some(aws_sdk_cloudformation::config::retry::RetryMode::Adaptive)
        );
        // The same set again, from any clone of the cache.
        assert!(Arc::ptr_eq(&clouds.clone().region(&us).calls, &other.calls));
        assert_eq!(clouds.by_region.lock().unwrap().len(), 2);
    }

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
