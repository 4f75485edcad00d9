//! One place that builds AWS configuration and tells transient errors from permanent ones.
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
pub async fn load(long_poll: Duration) -> anyhow::Result<SdkConfig> {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(
            // The SDK's own retries are short and few; our loops retry transient outages for as long as it takes.
            RetryConfig::standard()
                .with_max_attempts(3)
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

/// Whether retrying the same call later can succeed: throttling, 5xx, timeouts and transport failures.
pub fn is_transient<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            status >= 500
                || status == 429
                || matches!(
                    se.err().code(),
                    Some(
                        "ThrottlingException"
                            | "Throttling"
                            | "RequestThrottled"
                            | "ProvisionedThroughputExceededException"
                            | "RequestLimitExceeded"
                            | "InternalServerError"
                            | "InternalFailure"
                            | "ServiceUnavailable"
                            | "TransactionInProgressException"
                            | "KmsThrottled"
                    )
                )
        }
        _ => false,
    }
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

/// Exponential backoff with full jitter: attempt 0 -> up to `base`, doubling, capped at `max`.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    // Half fixed, half random: never zero (no hot loop), never in lock step with other workers.
    let half = ceiling / 2;
    half + Duration::from_secs_f64(half.as_secs_f64() * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..40 {
            let d = backoff(attempt, Duration::from_millis(100), Duration::from_secs(5));
            let ceiling = Duration::from_millis(100)
                .saturating_mul(1 << attempt.min(16))
                .min(Duration::from_secs(5));
            assert!(d >= ceiling / 2 && d <= ceiling, "{attempt}: {d:?}");
        }
    }
}
