//! Thin wrappers over the AWS SDK: the only place SDK types appear. Each module turns SDK
//! calls into the engine's plain types and SDK errors into [`AwsError`] with one clear
//! sentence.

pub mod asg;
pub mod cfn;
pub mod ec2;
pub mod elb;
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
    calls: Arc<AtomicUsize>,
}

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("no AWS region is configured: pass --region, or set AWS_REGION or a region in your AWS profile")]
    NoRegion,
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
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(e) = src {
                s = format!("{s}: {e}");
                src = e.source();
            }
            s
        }
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

impl Aws {
    /// Loads the standard AWS chain with the given overrides.
    pub async fn connect(target: &Target) -> Result<Aws, AwsError> {
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
            calls,
        })
    }

    /// AWS API calls made so far (retries included).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}
