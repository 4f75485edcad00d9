//! One retry vocabulary for every AWS caller: what kind of failure it is, how long to wait before the next
//! try, how long the caller may keep trying, and the one driver that does the trying.
//!
//! - [`Class`] sorts a failure into one of four kinds. The kind decides what the engine does, not the caller's
//!   taste: a transient or throttled failure is retried; a failure that is permanent for this request (a
//!   record DynamoDB refuses) fails that request alone; an account-wide failure (access denied, a missing
//!   table or queue, bad or expired credentials, a KMS key we may not use) says nothing about the request and
//!   everything about the set-up, so the worker stops taking work, keeps what it holds and waits for it to clear,
//!   instead of splitting and releasing runs until every message has burned its receive count into the DLQ.
//! - [`backoff`] is the one backoff formula (exponential, half fixed and half random); [`Pace`] names each
//!   base and cap it is used with.
//! - [`Budget`] is how long a call may go on: until it works (normal running) or until a deadline (draining).
//!   Every attempt is cut at the budget too, so a service that accepts connections and never answers cannot
//!   hold a drain past its deadline.
//! - [`Retry`] is the driver: it counts the failures, picks the pause from the pace and the failure's class,
//!   sleeps within the budget (and a cancellation), cuts each attempt, and says so in the log without
//!   flooding it. `Retry::run` retries one call; loops that are not retries of one call (a receive loop, the
//!   commit's rounds, batch chunks) call `Retry::failed` for their waits and keep their own shape.
//!
//! Why not a crate: `backon` 1.6 was tried (a scratch build with its `ExponentialBuilder`, `adjust` and
//! `notify`). Its `adjust` can lengthen the pause by the error's class and end the retries at a deadline, but
//! it neither cuts an attempt at that deadline nor ends a pause early at it or at a cancellation, its `notify`
//! has no failure count to throttle the log by, and its retried closure is an `FnMut` returning a future, which
//! cannot keep mutable state between attempts (the batch calls keep the entries still to send): the build
//! failed with "captured variable cannot escape `FnMut` closure body" (its `RetryableWithContext` moves the
//! state through each attempt instead). Wrapped enough to do our job, it would keep only the loop and the
//! formula, the short part; the loops that are not retries of one call need the waits alone anyway.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

/// A named pace: the base and cap of [`backoff`] for one kind of wait. Throttling and account-wide failures
/// never back off less than [`Pace::THROTTLED`] and [`Pace::ACCOUNT_WIDE`], whatever the caller's pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub base: Duration,
    pub cap: Duration,
}

impl Pace {
    const fn new(base_ms: u64, cap_ms: u64) -> Pace {
        Pace {
            base: Duration::from_millis(base_ms),
            cap: Duration::from_millis(cap_ms),
        }
    }
    /// An AWS call that failed in transit or with a 5xx.
    pub const CALL: Pace = Pace::new(100, 10_000);
    /// The service asked us to slow down.
    pub const THROTTLED: Pace = Pace::new(200, 10_000);
    /// Permissions, a missing resource, credentials: retrying every 100 ms helps nobody and floods CloudTrail.
    pub const ACCOUNT_WIDE: Pace = Pace::new(1_000, 30_000);
    /// The queue and tables checked before the worker starts.
    pub const STARTUP: Pace = Pace::new(200, 10_000);
    /// Completing our lifecycle hook: Auto Scaling may not have started the action yet.
    pub const HOOK: Pace = Pace::new(500, 5_000);
    /// Instance metadata that has no answer yet (the instance id).
    pub const METADATA: Pace = Pace::new(500, 30_000);
    /// Another writer moved the group row right after we read it: back off a little, growing.
    pub const CONTENTION: Pace = Pace::new(20, 5_000);
    /// BatchGetItem returned unprocessed keys.
    pub const UNPROCESSED: Pace = Pace::new(50, 2_000);

    /// The pause after `failures` earlier failures of `class`.
    pub fn pause(self, class: Class, failures: u32) -> Duration {
        let floor = match class {
            Class::Throttled => Pace::THROTTLED,
            Class::AccountWide => Pace::ACCOUNT_WIDE,
            Class::Transient | Class::Request => self,
        };
        let pace = Pace {
            base: self.base.max(floor.base),
            cap: self.cap.max(floor.cap),
        };
        backoff(failures, pace.base, pace.cap)
    }
}

/// Why the driver stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The failure cannot be fixed by trying again.
    Refused,
    /// The budget (a drain's deadline) ended.
    Budget,
    /// The caller's cancellation fired.
    Cancelled,
    /// The allowed number of attempts was used.
    Attempts,
}

/// What a retried call ended with, when it did not succeed.
#[derive(Debug)]
pub struct GaveUp<E> {
    pub stop: Stop,
    /// The last attempt's error; `None` when it timed out (or no attempt fitted the budget).
    pub last: Option<E>,
    pub attempts: u32,
    /// Whether the last attempt was cut by its time limit.
    pub timed_out: bool,
}

/// The retry driver. Build one per call (or per loop), then either [`Retry::run`] one call or call
/// [`Retry::failed`] after each failure of a loop's step and [`Retry::succeeded`] after a success.
pub struct Retry<'a> {
    what: &'static str,
    says: Option<&'static str>,
    /// The service the caller is waiting for, logged as `waiting_for` (what an operator greps for).
    waiting_for: Option<&'static str>,
    pace: Pace,
    budget: Budget,
    attempt_limit: Option<Duration>,
    floor: Duration,
    attempts: Option<u32>,
    cancel: Option<&'a CancellationToken>,
    /// The caller tells its failures itself: the driver's lines go to debug.
    quiet: bool,
    failures: u32,
    since: Option<Instant>,
}

impl<'a> Retry<'a> {
    /// A driver for `what` (an operation name, logged): pace [`Pace::CALL`], until it works, no attempt limit.
    pub fn new(what: &'static str) -> Self {
        Retry {
            what,
            says: None,
            waiting_for: None,
            pace: Pace::CALL,
            budget: Budget::UntilItWorks,
            attempt_limit: None,
            floor: Duration::ZERO,
            attempts: None,
            cancel: None,
            quiet: false,
            failures: 0,
            since: None,
        }
    }

    pub fn pace(mut self, pace: Pace) -> Self {
        self.pace = pace;
        self
    }

    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// Cut each attempt of [`Retry::run`] at `limit` (and at the budget).
    pub fn attempt_limit(mut self, limit: Duration) -> Self {
        self.attempt_limit = Some(limit);
        self
    }

    /// The first attempt runs even when the budget is over, with at least `floor` to answer (the hook must be
    /// tried once, however late).
    pub fn at_least_once(mut self, floor: Duration) -> Self {
        self.floor = floor;
        self
    }

    /// Stop after `n` attempts.
    pub fn attempts(mut self, n: u32) -> Self {
        self.attempts = Some(n.max(1));
        self
    }

    pub fn cancel(mut self, token: &'a CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// What the throttled log line says instead of "`<what>`: failed; retrying".
    pub fn says(mut self, message: &'static str) -> Self {
        self.says = Some(message);
        self
    }

    /// The caller tells its failures in its own, rate-limited lines (the metadata watcher, polling every
    /// second): the driver's lines go to debug, so an outage is not told once per call.
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// Name the service the caller waits for in the log line (`waiting_for="SQS"`).
    pub fn waiting_for(mut self, service: &'static str) -> Self {
        self.waiting_for = Some(service);
        self
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A step worked: the next failure starts the pace again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.since = None;
    }

    /// Whether the failure about to be counted is one to log (the 1st, 2nd, 4th, 8th...): a long outage says
    /// so a few times, not on every try.
    fn worth_logging(&self) -> bool {
        self.failures == 0 || self.failures.is_power_of_two()
    }

    /// The level of the line for the failure about to be counted, `None` for no line.
    fn level(&self, class: Class) -> Option<tracing::Level> {
        if !self.worth_logging() {
            None
        } else if self.quiet {
            Some(tracing::Level::DEBUG)
        } else if matches!(class, Class::AccountWide | Class::Throttled) || self.failures > 0 {
            Some(tracing::Level::WARN)
        } else {
            Some(tracing::Level::INFO)
        }
    }

    /// A step failed with `class`: log it (throttled), then wait the pause, within the budget and the
    /// cancellation. `Err` says why not to try again. The wait does not hold `cause` (a `&dyn Display` is not
    /// `Send`), so a task that retries can be spawned.
    pub fn failed<'s>(
        &'s mut self,
        class: Class,
        cause: &dyn Display,
    ) -> impl Future<Output = Result<(), Stop>> + Send + 's {
        let pause = self.count(class, cause);
        let this = &*self;
        async move { this.pause(pause?).await }
    }

    /// Count a failure and log it (throttled); the pause before the next try, or why there is none.
    fn count(&mut self, class: Class, cause: &dyn Display) -> Result<Duration, Stop> {
        if !class.retryable() {
            return Err(Stop::Refused);
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if let Some(level) = self.level(class) {
            let says = self.says.unwrap_or("failed; retrying");
            let (what, failures, waited_s) =
                (self.what, self.failures + 1, since.elapsed().as_secs());
            let (class_name, waiting_for) = (class.as_str(), self.waiting_for);
            match level {
                tracing::Level::WARN => {
                    tracing::warn!(what, waiting_for, failures, waited_s, class = class_name, cause = %cause, "{what}: {says}")
                }
                tracing::Level::INFO => {
                    tracing::info!(what, waiting_for, failures, waited_s, class = class_name, cause = %cause, "{what}: {says}")
                }
                _ => {
                    tracing::debug!(what, waiting_for, failures, waited_s, class = class_name, cause = %cause, "{what}: {says}")
                }
            }
        }
        self.failures += 1;
        if self.attempts.is_some_and(|n| self.failures >= n) {
            return Err(Stop::Attempts);
        }
        Ok(self.pace.pause(class, self.failures - 1))
    }

    /// Sleep `pause`, cut at the budget and the cancellation.
    async fn pause(&self, pause: Duration) -> Result<(), Stop> {
        let sleep = self.budget.sleep(pause);
        let more = match self.cancel {
            Some(token) => tokio::select! {
                _ = token.cancelled() => return Err(Stop::Cancelled),
                more = sleep => more,
            },
            None => sleep.await,
        };
        match self.cancel {
            Some(token) if token.is_cancelled() => Err(Stop::Cancelled),
            _ if !more => Err(Stop::Budget),
            _ => Ok(()),
        }
    }

    /// Try `attempt` until it works or the driver stops; `class` sorts each error (an attempt cut by its time
    /// limit is [`Class::Transient`]). The attempt gets its number, from 0.
    pub async fn run<T, E, F>(
        mut self,
        mut attempt: F,
        class: impl Fn(&E) -> Class,
    ) -> Result<T, GaveUp<E>>
    where
        F: AsyncFnMut(u32) -> Result<T, E>,
        E: Display,
    {
        let mut tried = 0u32;
        loop {
            let limit = self.next_limit(tried)?;
            let (failure, err) = match with_limit(limit, attempt(tried)).await {
                Some(Ok(v)) => return Ok(v),
                Some(Err(e)) => (class(&e), Some(e)),
                None => (Class::Transient, None),
            };
            tried += 1;
            self.after(failure, err, tried).await?;
        }
    }

    /// [`Retry::run`] for an attempt that is a closure returning a future (which borrows nothing of the
    /// closure): what a spawned task uses. Rust 1.85 cannot prove an async closure's future `Send` for every
    /// borrow of the closure ("implementation of `Send` is not general enough"), so a task that retries
    /// through `run` cannot be spawned.
    pub async fn run_fn<T, E, F, Fut>(
        mut self,
        mut attempt: F,
        class: impl Fn(&E) -> Class,
    ) -> Result<T, GaveUp<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Display,
    {
        let mut tried = 0u32;
        loop {
            let limit = self.next_limit(tried)?;
            let (failure, err) = match with_limit(limit, attempt(tried)).await {
                Some(Ok(v)) => return Ok(v),
                Some(Err(e)) => (class(&e), Some(e)),
                None => (Class::Transient, None),
            };
            tried += 1;
            self.after(failure, err, tried).await?;
        }
    }

    /// Before attempt `tried` (from 0): its time limit, or why there is none.
    fn next_limit<E>(&self, tried: u32) -> Result<Option<Duration>, GaveUp<E>> {
        let now = Instant::now();
        if self.cancel.is_some_and(|t| t.is_cancelled()) {
            return Err(GaveUp::nothing(Stop::Cancelled, tried));
        }
        let limit = self
            .attempt_limit
            .map(|l| self.budget.attempt_limit(l, now));
        if self.budget.expired(now) {
            if tried > 0 || self.floor.is_zero() {
                return Err(GaveUp::nothing(Stop::Budget, tried));
            }
            return Ok(Some(self.floor));
        }
        Ok(limit)
    }

    /// After the `tried`th attempt failed with `err` (`None`: it timed out): wait, or give up.
    async fn after<E: Display>(
        &mut self,
        failure: Class,
        err: Option<E>,
        tried: u32,
    ) -> Result<(), GaveUp<E>> {
        let waited = {
            let cause: &dyn Display = match &err {
                Some(e) => e,
                None => &"the attempt timed out",
            };
            self.failed(failure, cause)
        };
        match waited.await {
            Ok(()) => Ok(()),
            Err(stop) => Err(GaveUp {
                stop,
                timed_out: err.is_none(),
                last: err,
                attempts: tried,
            }),
        }
    }
}

impl<E> GaveUp<E> {
    fn nothing(stop: Stop, attempts: u32) -> Self {
        GaveUp {
            stop,
            last: None,
            attempts,
            timed_out: false,
        }
    }
}

impl<E: Display> Display for GaveUp<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self.stop {
            Stop::Refused => "refused",
            Stop::Budget => "out of time",
            Stop::Cancelled => "cancelled",
            Stop::Attempts => "out of attempts",
        };
        write!(f, "{why} after {} attempt(s)", self.attempts)?;
        match (&self.last, self.timed_out) {
            (Some(e), _) => write!(f, ": {e}"),
            (None, true) => write!(f, ": the last attempt timed out"),
            (None, false) => Ok(()),
        }
    }
}

/// `fut` cut at `limit`; `None` when it ran out.
async fn with_limit<T>(limit: Option<Duration>, fut: impl Future<Output = T>) -> Option<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, fut).await.ok(),
        None => Some(fut.await),
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
        assert!(Pace::CALL.pause(Class::AccountWide, 0) >= Duration::from_millis(500));
        assert!(Pace::CALL.pause(Class::AccountWide, 30) <= Duration::from_secs(30));
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

    #[test]
    fn a_pace_never_backs_off_less_than_its_class_needs() {
        for failures in 0..20 {
            let p = Pace::CONTENTION.pause(Class::Transient, failures);
            assert!(p <= Pace::CONTENTION.cap, "{failures}: {p:?}");
            let t = Pace::CONTENTION.pause(Class::Throttled, failures);
            assert!(
                t >= Pace::THROTTLED.base.min(Pace::THROTTLED.cap) / 2,
                "{t:?}"
            );
            let a = Pace::CONTENTION.pause(Class::AccountWide, failures);
            assert!(a >= Duration::from_millis(500) && a <= Pace::ACCOUNT_WIDE.cap);
        }
    }

    #[derive(Debug)]
    struct Failed(Class);
    impl Display for Failed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0.as_str())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn run_retries_until_it_works_and_stops_at_a_refusal() {
        let mut calls = 0;
        let out = Retry::new("Test")
            .run(
                async |n| {
                    calls += 1;
                    if n < 3 {
                        Err(Failed(Class::Transient))
                    } else {
                        Ok(n)
                    }
                },
                |e: &Failed| e.0,
            )
            .await;
        assert_eq!(out.unwrap(), 3);
        assert_eq!(calls, 4);
        let refused = Retry::new("Test")
            .run(async |_| Err::<(), _>(Failed(Class::Request)), |e| e.0)
            .await
            .unwrap_err();
        assert_eq!((refused.stop, refused.attempts), (Stop::Refused, 1));
        let limited = Retry::new("Test")
            .attempts(3)
            .run(async |_| Err::<(), _>(Failed(Class::Throttled)), |e| e.0)
            .await
            .unwrap_err();
        assert_eq!((limited.stop, limited.attempts), (Stop::Attempts, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn run_cuts_attempts_and_pauses_at_the_budget() {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(3);
        let out = Retry::new("Test")
            .budget(Budget::Until(deadline))
            .attempt_limit(Duration::from_secs(2))
            .run(
                async |_| {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok::<(), Failed>(())
                },
                |e| e.0,
            )
            .await
            .unwrap_err();
        assert_eq!(out.stop, Stop::Budget);
        assert!(out.timed_out && out.last.is_none());
        assert!(Instant::now() <= deadline + Duration::from_millis(1));
        // Over budget before the first try: no attempt, unless one is owed.
        let none = Retry::new("Test")
            .budget(Budget::Until(Instant::now()))
            .run(async |_| Ok::<u32, Failed>(1), |e| e.0)
            .await;
        assert_eq!(none.unwrap_err().attempts, 0);
        let once = Retry::new("Test")
            .budget(Budget::Until(Instant::now()))
            .at_least_once(Duration::from_secs(1))
            .run(async |_| Ok::<u32, Failed>(1), |e| e.0)
            .await;
        assert_eq!(once.unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_driver_tells_its_failures_at_debug_only() {
        use tracing::Level;
        let mut loud = Retry::new("Test");
        let mut quiet = Retry::new("Test").quiet();
        assert_eq!(loud.level(Class::Transient), Some(Level::INFO));
        assert_eq!(loud.level(Class::Throttled), Some(Level::WARN));
        assert_eq!(quiet.level(Class::Throttled), Some(Level::DEBUG));
        for r in [&mut loud, &mut quiet] {
            for _ in 0..3 {
                r.failed(Class::Transient, &"down").await.unwrap();
            }
        }
        // With three counted the next is not told, by either; with four it is (the count is a power of two).
        assert_eq!(loud.level(Class::Transient), None);
        assert_eq!(quiet.level(Class::Transient), None);
        loud.failed(Class::Transient, &"down").await.unwrap();
        quiet.failed(Class::Transient, &"down").await.unwrap();
        assert_eq!(loud.level(Class::Transient), Some(Level::WARN));
        assert_eq!(quiet.level(Class::Transient), Some(Level::DEBUG));
    }

    #[tokio::test(start_paused = true)]
    async fn the_log_line_names_the_service_waited_for() {
        #[derive(Clone, Default)]
        struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut named = Retry::new("ReceiveMessage").waiting_for("SQS");
        named.failed(Class::Transient, &"down").await.unwrap();
        let mut unnamed = Retry::new("Other");
        unnamed.failed(Class::Transient, &"down").await.unwrap();
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let (first, second) = text.split_once('\n').unwrap();
        assert!(first.contains("waiting_for=\"SQS\""), "{text}");
        assert!(!second.contains("waiting_for"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancellation_ends_the_wait() {
        let token = CancellationToken::new();
        let mut r = Retry::new("Test").pace(Pace::ACCOUNT_WIDE).cancel(&token);
        let cancel = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        assert_eq!(
            r.failed(Class::AccountWide, &"denied").await,
            Err(Stop::Cancelled)
        );
        assert!(started.elapsed() < Duration::from_millis(400));
        assert_eq!(r.failures(), 1);
        r.succeeded();
        assert_eq!(r.failures(), 0);
    }
}
