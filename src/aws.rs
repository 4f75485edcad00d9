//! One place that builds AWS configuration (the retry vocabulary is [`crate::retry`]).
//!
//! Clients come from `aws_config::defaults`, so `AWS_REGION`, `AWS_ENDPOINT_URL` and the per-service
//! `AWS_ENDPOINT_URL_SQS` / `_DYNAMODB` / `_AUTO_SCALING` work exactly as the AWS CLI reads them.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// Load the shared configuration. `long_poll` is the receive wait: an attempt may take that long plus slack.
/// `sdk_attempts` is the SDK's own tries per call: the worker passes 1, because its callers retry under a
/// budget ([`crate::retry::Budget`]) and SDK retries hidden inside one call would outlive a drain's deadline
/// (3 tries x 30 s per chunk were measured with an SQS that never answered).
pub async fn load(long_poll: Duration, sdk_attempts: u32) -> anyhow::Result<SdkConfig> {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(sdk_attempts.max(1))
                .with_initial_backoff(Duration::from_millis(50)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(long_poll + Duration::from_secs(10))
                .build(),
        )
        .load()
        .await;
    if config.region().is_none() {
        anyhow::bail!("no AWS region: set AWS_REGION (or a profile with a region)");
    }
    Ok(config)
}

/// The error code of a service error, if the call got that far.
pub fn error_code<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<String> {
    match err {
        SdkError::ServiceError(se) => se.err().code().map(str::to_owned),
        _ => None,
    }
}

/// The whole error chain on one line, for logs.
pub fn describe<E: std::error::Error + 'static>(err: &E) -> String {
    DisplayErrorContext(err).to_string()
}
