//! One retry vocabulary for every AWS caller: what kind of failure it is, how long to wait before the next
//! try, and how long the caller may keep trying.
//!
//! - [`Class`] sorts a failure into one of four kinds. The kind decides what the engine does, not the caller's
//!   taste: a transient or throttled failure is retried; a failure that is permanent for this request (a
//!   record DynamoDB refuses) fails that request alone; an account-wide failure (access denied, a missing
//!   table or queue, bad or expired credentials, a KMS key we may not use) says nothing about the request and
//!   everything about the set-up, so the worker stops taking work, keeps what it holds and waits for it to clear,
//!   instead of splitting and releasing runs until every message has burned its receive count into the DLQ.
//! - [`backoff`] is the one backoff formula (exponential, half fixed and half random).
//! - [`Budget`] is how long a call may go on: until it works (normal running) or until a deadline (draining).
//!   Every attempt is cut at the budget too, so a service that accepts connections and never answers cannot
//!   hold a drain past its deadline.

use std::time::Duration;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tokio::time::Instant;

/// What kind of failure an AWS call had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Transport failure, timeout, 5xx: the same call later can succeed.
    Transient,
    /// The service asked us to slow down.
    Throttled,
    /// This request cannot succeed as it is (validation, an item too large); other requests are fine.
    Request,
    /// Nothing will succeed until the account, its permissions or its resources are fixed.
    AccountWide,
}

impl Class {
    /// Whether trying the same call again can ever help.
    pub fn retryable(self) -> bool {
        !matches!(self, Class::Request)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Transient => "transient",
            Class::Throttled => "throttled",
            Class::Request => "request",
            Class::AccountWide => "account-wide",
        }
    }
}

/// Error codes that mean "the set-up is wrong", whatever the request. SQS's JSON protocol reports some of
/// them with a `com.amazonaws.sqs#` prefix or the query error code; both spellings are listed.
const ACCOUNT_WIDE: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "MissingAuthenticationToken",
    "IncompleteSignature",
    "ResourceNotFoundException",
    // A PartiQL statement's own error code in a BatchExecuteStatement answer (no status of its own).
    "ResourceNotFound",
    "QueueDoesNotExist",
    "AWS.SimpleQueueService.NonExistentQueue",
    "KMSAccessDeniedException",
    "KMS.AccessDeniedException",
    "KmsAccessDenied",
    "KMSDisabledException",
    "KMS.DisabledException",
    "KmsDisabled",
    "KMSInvalidStateException",
    "KMS.KMSInvalidStateException",
    "KmsInvalidState",
    "KMSNotFoundException",
    "KMS.NotFoundException",
    "KmsNotFound",
    "OptInRequired",
    "RequestExpired",
];

const THROTTLED: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "RequestThrottled",
    "ThrottledException",
    "ProvisionedThroughputExceededException",
    // The same two as a PartiQL statement's error code in a BatchExecuteStatement answer.
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
    "RequestLimitExceeded",
    "RequestLimitExceededException",
    "TooManyRequestsException",
    "RequestThrottledException",
    "KmsThrottled",
    "KMS.ThrottlingException",
    "KMSThrottlingException",
    "SlowDown",
];

const TRANSIENT: &[&str] = &[
    "InternalServerError",
    "InternalFailure",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "TransactionInProgressException",
    "RequestTimeout",
    "RequestTimeoutException",
    "ResourceContention",
    // A statement, or a single-item write (UpdateItem: the claim), that met another writer's transaction on
    // the same item: try again, the item is not at fault.
    "TransactionConflict",
    "TransactionConflictException",
];

/// Classify by error code and HTTP status (pure: the tests pin every code we rely on).
pub fn classify_code(code: Option<&str>, status: Option<u16>) -> Class {
    // `com.amazonaws.sqs#QueueDoesNotExist` and `AWS.SimpleQueueService.NonExistentQueue` alike.
    let code = code.map(|c| c.rsplit('#').next().unwrap_or(c));
    if let Some(c) = code {
        if ACCOUNT_WIDE.contains(&c) {
            return Class::AccountWide;
        }
        if THROTTLED.contains(&c) {
            return Class::Throttled;
        }
        if TRANSIENT.contains(&c) {
            return Class::Transient;
        }
    }
    match status {
        Some(429) => Class::Throttled,
        Some(401) | Some(403) => Class::AccountWide,
        Some(s) if s >= 500 => Class::Transient,
        // A service error with a code we do not know and a 4xx status: about this request.
        Some(_) => Class::Request,
        None => Class::Transient,
    }
}

/// Classify an SDK error: anything that did not get a service's answer is transient.
pub fn classify<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Class {
    match err {
        SdkError::ServiceError(se) => {
            classify_code(se.err().code(), Some(se.raw().status().as_u16()))
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            Class::Transient
        }
        // Construction failures are bugs of ours, about this request.
        _ => Class::Request,
    }
}

/// The one backoff: attempt 0 waits up to `base`, doubling per attempt up to `max`; half fixed (never zero, so
/// never a hot loop), half random (workers do not retry in lock step). `unit` is a random number in [0, 1).
pub fn backoff_with(attempt: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    let half = ceiling / 2;
    half + Duration::from_secs_f64(half.as_secs_f64() * unit.clamp(0.0, 1.0))
}

/// [`backoff_with`] with a fresh random number.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    backoff_with(attempt, base, max, fastrand::f64())
}

/// Base and cap of the backoff for a class: throttling and account-wide errors back off further (retrying an
/// access denial every 100 ms helps nobody and floods CloudTrail).
pub fn backoff_for(class: Class, attempt: u32) -> Duration {
    match class {
        Class::Transient | Class::Request => {
            backoff(attempt, Duration::from_millis(100), Duration::from_secs(10))
        }
        Class::Throttled => backoff(attempt, Duration::from_millis(200), Duration::from_secs(10)),
        Class::AccountWide => backoff(attempt, Duration::from_secs(1), Duration::from_secs(30)),
    }
}

/// How long a caller may keep trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Normal running: retry with backoff until it works.
    UntilItWorks,
    /// Draining: stop at this instant, whatever the state of the call.
    Until(Instant),
}

impl Budget {
    /// Time left, `None` for no limit.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        match self {
            Budget::UntilItWorks => None,
            Budget::Until(t) => Some(t.saturating_duration_since(now)),
        }
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.remaining(now).is_some_and(|d| d.is_zero())
    }

    /// One attempt's time limit: `attempt` cut at the budget.
    pub fn attempt_limit(&self, attempt: Duration, now: Instant) -> Duration {
        match self.remaining(now) {
            Some(left) => attempt.min(left),
            None => attempt,
        }
    }

    /// The earlier of two budgets.
    pub fn min(self, other: Budget) -> Budget {
        match (self, other) {
            (Budget::UntilItWorks, b) | (b, Budget::UntilItWorks) => b,
            (Budget::Until(a), Budget::Until(b)) => Budget::Until(a.min(b)),
        }
    }

    /// Sleep for `pause`, or until the budget ends; false when the budget ended first (stop retrying).
    pub async fn sleep(&self, pause: Duration) -> bool {
        let now = Instant::now();
        match self.remaining(now) {
            Some(left) if left <= pause => {
                tokio::time::sleep(left).await;
                false
            }
            _ => {
                tokio::time::sleep(pause).await;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_wide_errors_are_told_from_bad_requests() {
        for code in [
            "AccessDenied",
            "AccessDeniedException",
            "com.amazonaws.sqs#QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue",
            "ResourceNotFoundException",
            "UnrecognizedClientException",
            "ExpiredTokenException",
            "KMSAccessDeniedException",
            "KMS.DisabledException",
        ] {
            assert_eq!(
                classify_code(Some(code), Some(400)),
                Class::AccountWide,
                "{code}"
            );
        }
        assert_eq!(
            classify_code(Some("ValidationException"), Some(400)),
            Class::Request
        );
        assert_eq!(
            classify_code(Some("SomethingNew"), Some(400)),
            Class::Request
        );
        assert_eq!(classify_code(None, Some(403)), Class::AccountWide);
    }

    #[test]
    fn throttling_and_server_errors_are_retried() {
        for code in [
            "ThrottlingException",
            "ProvisionedThroughputExceededException",
            "RequestThrottled",
            "KmsThrottled",
        ] {
            assert_eq!(
                classify_code(Some(code), Some(400)),
                Class::Throttled,
                "{code}"
            );
        }
        assert_eq!(classify_code(None, Some(429)), Class::Throttled);
        // A claim (UpdateItem) that met a transaction on the group row: 400 with this code, and retryable.
        assert_eq!(
            classify_code(Some("TransactionConflictException"), Some(400)),
            Class::Transient
        );
        // A statement's own code in a BatchExecuteStatement answer comes without a status.
        for (code, class) in [
            ("ThrottlingError", Class::Throttled),
            ("ProvisionedThroughputExceeded", Class::Throttled),
            ("RequestLimitExceeded", Class::Throttled),
            ("InternalServerError", Class::Transient),
            ("TransactionConflict", Class::Transient),
            ("AccessDenied", Class::AccountWide),
            ("ResourceNotFound", Class::AccountWide),
        ] {
            assert_eq!(classify_code(Some(code), None), class, "{code}");
        }
        assert_eq!(
            classify_code(Some("InternalServerError"), Some(500)),
            Class::Transient
        );
        assert_eq!(classify_code(Some("Unknown"), Some(503)), Class::Transient);
        assert_eq!(classify_code(None, None), Class::Transient);
        assert!(Class::AccountWide.retryable() && !Class::Request.retryable());
    }

    #[test]
    fn backoff_grows_is_capped_and_never_zero() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 0..40 {
            let ceiling = base.saturating_mul(1 << attempt.min(16)).min(max);
            assert_eq!(backoff_with(attempt, base, max, 0.0), ceiling / 2);
            assert_eq!(backoff_with(attempt, base, max, 1.0), ceiling);
            let d = backoff(attempt, base, max);
            assert!(d >= ceiling / 2 && d <= ceiling, "{attempt}: {d:?}");
        }
        assert!(backoff_for(Class::AccountWide, 0) >= Duration::from_millis(500));
        assert!(backoff_for(Class::AccountWide, 30) <= Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_budget_cuts_attempts_and_sleeps() {
        let now = Instant::now();
        let b = Budget::Until(now + Duration::from_millis(300));
        assert_eq!(
            b.attempt_limit(Duration::from_secs(30), now),
            Duration::from_millis(300)
        );
        assert_eq!(
            Budget::UntilItWorks.attempt_limit(Duration::from_secs(30), now),
            Duration::from_secs(30)
        );
        assert!(b.sleep(Duration::from_millis(100)).await);
        assert!(!b.sleep(Duration::from_secs(5)).await);
        assert!(b.expired(Instant::now()));
        assert_eq!(Budget::UntilItWorks.min(b), b);
        let earlier = Budget::Until(now + Duration::from_millis(100));
        assert_eq!(b.min(earlier), earlier);
    }
}
