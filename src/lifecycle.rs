//! Completing our own Auto Scaling termination lifecycle hook from the instance, by instance id,
//! with heartbeats while the drain runs.
//!
//! Both `CompleteLifecycleAction` and `RecordLifecycleActionHeartbeat` accept the instance id in
//! place of the lifecycle action token, so the instance needs no queue or EventBridge rule to learn
//! the token: it knows its own id and the (configured) hook and group names.
//!
//! Every call is bounded in time: the drain has a hard deadline (the Spot notice gives two
//! minutes), so a slow or unreachable Auto Scaling endpoint must never hold it up for long. A
//! `ValidationError` (wrong names, instance not in `Terminating:Wait`) is a definite answer and is
//! not retried, with one exception: [`LifecycleHook::finish`] retries "No active Lifecycle Action
//! found" until its deadline, because right after a quick drain Auto Scaling may not have started
//! the action yet. Every retry is the one driver's ([`crate::retry::Retry`]).

use std::fmt;
use std::time::Duration;

use aws_sdk_autoscaling::config::http::HttpResponse;
use aws_sdk_autoscaling::error::{BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::imds::ImdsClient;
use crate::retry::{classify_code, Budget, Class, GaveUp, Pace, Retry};
use crate::telemetry::{HOOK_COMPLETIONS, HOOK_HEARTBEATS};

/// The instance tag Auto Scaling puts on every instance of a group.
pub const GROUP_NAME_TAG: &str = "aws:autoscaling:groupName";

/// Attempts of one heartbeat (first included) for retryable failures.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// Longest single attempt (the SDK makes one try per call: every retry is ours).
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a whole heartbeat may take, retries and backoff included: well inside the 10 s drain margin.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(8);
/// The pace between a heartbeat's attempts: 200 ms doubling to 1 s, so three fit the budget with room.
const HEARTBEAT_PACE: Pace = Pace {
    base: Duration::from_millis(200),
    cap: Duration::from_secs(1),
};
/// The first attempt of a completion runs even past its deadline, with at least this long to answer: the
/// hook is tried once, however late.
const FINISH_FLOOR: Duration = Duration::from_secs(1);

/// How to finish the lifecycle action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookResult {
    /// Let the termination proceed (the normal outcome of a drain).
    Continue,
    /// For a termination hook Auto Scaling also proceeds with termination, but skips any other
    /// hooks; reported as a different result so operators can tell the outcomes apart.
    Abandon,
}

impl HookResult {
    /// The value the API expects.
    pub fn as_str(self) -> &'static str {
        match self {
            HookResult::Continue => "CONTINUE",
            HookResult::Abandon => "ABANDON",
        }
    }
}

impl fmt::Display for HookResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the hook step of a drain went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// No hook to complete (SIGTERM outside a termination, hooks disabled, no metadata).
    NotNeeded,
    Completed,
    /// Could not: the reason, e.g. a refusal by Auto Scaling or a missing group name.
    Failed(String),
}

/// Why one hook call failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Auto Scaling answered with a definite "no" (e.g. `ValidationError`: wrong hook or group
    /// name, or no lifecycle action in progress for this instance; `AccessDenied`).
    #[error("Auto Scaling refused {operation}: {code}: {message}")]
    Refused {
        /// `CompleteLifecycleAction` or `RecordLifecycleActionHeartbeat`.
        operation: &'static str,
        /// The AWS error code, e.g. `ValidationError` or `AccessDenied`.
        code: String,
        /// The AWS error message.
        message: String,
        /// The SDK error.
        #[source]
        source: BoxError,
    },
    /// No answer, throttling or a 5xx (trying again can work), or a request that could not be built.
    #[error("{operation} failed: {detail}")]
    Failed {
        /// `CompleteLifecycleAction` or `RecordLifecycleActionHeartbeat`.
        operation: &'static str,
        /// Transient or throttled; [`Class::Request`] for a request that could not be built.
        class: Class,
        /// The SDK error with its causes, for the log and the drain's report.
        detail: String,
        /// The SDK error.
        #[source]
        source: BoxError,
    },
}

impl HookError {
    fn from_sdk<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let code = err.code().map(str::to_owned);
        let status = err.raw_response().map(|r| r.status().as_u16());
        let transport = matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_)
        );
        match class_of(code.as_deref(), status, transport) {
            Class::Request if status.is_some() => HookError::Refused {
                operation,
                code: code.unwrap_or_else(|| format!("HTTP {}", status.unwrap_or(0))),
                message: err.message().unwrap_or_default().to_owned(),
                source: Box::new(err),
            },
            class => HookError::Failed {
                operation,
                class,
                detail: DisplayErrorContext(&err).to_string(),
                source: Box::new(err),
            },
        }
    }

    /// The AWS error code, if Auto Scaling answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            HookError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True for "No active Lifecycle Action found": the instance is not (or no longer) in
    /// `Terminating:Wait` for this hook — the hook was already completed, timed out, or the group
    /// has not started terminating the instance yet.
    pub fn is_no_active_action(&self) -> bool {
        matches!(self, HookError::Refused { message, .. }
            if message.to_ascii_lowercase().contains("no active lifecycle action"))
    }

    /// Its class in the one retry vocabulary: a refusal is [`Class::Request`] (never retried).
    pub fn class(&self) -> Class {
        match self {
            HookError::Refused { .. } => Class::Request,
            HookError::Failed { class, .. } => *class,
        }
    }
}

/// A hook call's failure in the crate's one vocabulary ([`classify_code`]), from its AWS error code, its HTTP
/// status (if a response arrived) and whether it failed in transport. Auto Scaling's "no"s, account-wide ones
/// included, are [`Class::Request`]: `ValidationError` (wrong hook, group or instance; no lifecycle action
/// yet) or `AccessDenied` is an answer this call cannot change by itself, and a drain has no time to wait for
/// a policy to be fixed. A request that got no status and did not fail in transport was never sent (ours to
/// fix): [`Class::Request`] too.
fn class_of(code: Option<&str>, status: Option<u16>, transport: bool) -> Class {
    if transport {
        return Class::Transient;
    }
    if status.is_none() {
        return Class::Request;
    }
    match classify_code(code, status) {
        Class::AccountWide => Class::Request,
        class => class,
    }
}

/// How the completion sorts a failure: "no active lifecycle action" is worth waiting for (the group may not
/// have started the action yet), every other refusal ends it.
fn finish_class(err: &HookError) -> Class {
    if err.is_no_active_action() {
        Class::Transient
    } else {
        err.class()
    }
}

/// The hook finisher's decisions, apart from Auto Scaling: `attempt` (one `CompleteLifecycleAction`) is tried
/// until it works, a refusal other than "no active lifecycle action", or `until`; each attempt is cut at
/// `attempt_limit` and the budget, and the first runs even past `until`. `Ok` with the attempts made.
async fn finish_with(
    mut attempt: impl AsyncFnMut() -> Result<(), HookError>,
    attempt_limit: Duration,
    until: Instant,
) -> Result<u32, GaveUp<HookError>> {
    let mut tries = 0;
    Retry::new("CompleteLifecycleAction")
        .says("not accepted yet; retrying until the hook deadline")
        .pace(Pace::HOOK)
        .budget(Budget::Until(until))
        .attempt_limit(attempt_limit)
        .at_least_once(FINISH_FLOOR)
        .run(
            async |n| {
                tries = n + 1;
                attempt().await
            },
            finish_class,
        )
        .await?;
    Ok(tries)
}

/// How long "No active Lifecycle Action found" may last before it is a warning: a drain that begins on the
/// Spot notice is often done before Auto Scaling starts the lifecycle action (a second or two); longer than
/// this, it is as likely a hook or group name that does not match, and the instance will wait out the hook's
/// heartbeat timeout before it terminates.
pub const REFUSAL_WARN_AFTER: Duration = Duration::from_secs(5);
/// After the warning, a refusal that goes on is told at most this often (each one at debug).
pub const REFUSAL_REMIND_EVERY: Duration = Duration::from_secs(30);

/// What to tell about one "no active lifecycle action" refusal (pure: [`Refusals::saw`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tell {
    /// The first one: info (usually the action has not started yet).
    First,
    /// It has lasted [`REFUSAL_WARN_AFTER`]: one warning naming the error, the hook and what it means.
    Warn,
    /// Still refused, [`REFUSAL_REMIND_EVERY`] after the last line: info, with how long.
    Remind,
    /// Debug only.
    Quiet,
}

/// The refusals of one hook (completions and heartbeats alike) since the last call it accepted.
#[derive(Debug, Default, Clone)]
pub struct Refusals {
    since: Option<Instant>,
    warned: bool,
    last_told: Option<Instant>,
    count: u32,
}

impl Refusals {
    /// One more refusal at `now`: what to tell.
    pub fn saw(&mut self, now: Instant, warn_after: Duration) -> Tell {
        self.count += 1;
        let since = *self.since.get_or_insert(now);
        let tell = if self.last_told.is_none() {
            Tell::First
        } else if !self.warned && now.saturating_duration_since(since) >= warn_after {
            self.warned = true;
            Tell::Warn
        } else if self.warned
            && self
                .last_told
                .is_some_and(|t| now.saturating_duration_since(t) >= REFUSAL_REMIND_EVERY)
        {
            Tell::Remind
        } else {
            Tell::Quiet
        };
        if tell != Tell::Quiet {
            self.last_told = Some(now);
        }
        tell
    }

    /// A call was accepted: the next refusal is a first one again.
    pub fn cleared(&mut self) {
        *self = Refusals::default();
    }

    /// Refusals since the last accepted call, and for how long.
    pub fn lasting(&self, now: Instant) -> (u32, Duration) {
        (
            self.count,
            self.since
                .map(|t| now.saturating_duration_since(t))
                .unwrap_or_default(),
        )
    }
}

/// Our termination lifecycle hook, addressed by instance id.
#[derive(Debug, Clone)]
pub struct LifecycleHook {
    /// Auto Scaling client (endpoint from the standard configuration, so a simulator works).
    client: aws_sdk_autoscaling::Client,
    /// The Auto Scaling group this instance belongs to.
    group: String,
    /// The termination hook's name.
    hook: String,
    /// This instance: identifies the lifecycle action instead of the token.
    instance_id: String,
    /// Attempts per call for retryable failures.
    attempts: u32,
    /// Longest single attempt.
    attempt_timeout: Duration,
    /// Longest whole call.
    budget: Duration,
    /// "No active Lifecycle Action found" so far, shared by the completion and the heartbeats.
    refusals: std::sync::Arc<std::sync::Mutex<Refusals>>,
    /// How long a refusal may last before it is a warning ([`REFUSAL_WARN_AFTER`]).
    warn_after: Duration,
}

impl LifecycleHook {
    /// A hook handle with the default retry bounds ([`DEFAULT_ATTEMPTS`],
    /// [`DEFAULT_ATTEMPT_TIMEOUT`], [`DEFAULT_BUDGET`]).
    pub fn new(
        client: aws_sdk_autoscaling::Client,
        group: impl Into<String>,
        hook: impl Into<String>,
        instance_id: impl Into<String>,
    ) -> Self {
        Self {
            client,
            group: group.into(),
            hook: hook.into(),
            instance_id: instance_id.into(),
            attempts: DEFAULT_ATTEMPTS,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            budget: DEFAULT_BUDGET,
            refusals: Default::default(),
            warn_after: REFUSAL_WARN_AFTER,
        }
    }

    /// Changes how long a refusal may last before it is a warning (tests).
    pub fn with_warn_after(mut self, warn_after: Duration) -> Self {
        self.warn_after = warn_after;
        self
    }

    /// Tell about one "No active Lifecycle Action found" from `operation`: the first at info, one warning
    /// once it has lasted `warn_after` (naming the error, the hook and what it means), then a reminder at most
    /// every [`REFUSAL_REMIND_EVERY`]; the rest at debug. Returns what was told.
    pub fn refused(&self, operation: &str, err: &HookError) -> Tell {
        let now = Instant::now();
        let (tell, (count, lasting)) = {
            let mut r = self.refusals.lock().expect("refusals lock");
            let tell = r.saw(now, self.warn_after);
            (tell, r.lasting(now))
        };
        let lasting_s = lasting.as_secs();
        match tell {
            Tell::First => tracing::info!(
                operation, group = %self.group, hook = %self.hook, instance_id = %self.instance_id, error = %err,
                "no active lifecycle action for this instance yet (Auto Scaling may not have started it); trying again"
            ),
            Tell::Warn => tracing::warn!(
                operation, group = %self.group, hook = %self.hook, instance_id = %self.instance_id, error = %err,
                refusals = count, lasting_s,
                "Auto Scaling still finds no active lifecycle action for hook {} of group {}: the hook or group name may not match the group's termination hook, or the action has not started; until it is completed the instance waits for the hook's heartbeat timeout before it terminates",
                self.hook, self.group
            ),
            Tell::Remind => tracing::info!(
                operation, hook = %self.hook, group = %self.group, refusals = count, lasting_s,
                "still no active lifecycle action; trying again"
            ),
            Tell::Quiet => {
                tracing::debug!(operation, error = %err, refusals = count, "no active lifecycle action")
            }
        }
        tell
    }

    /// A call was accepted: refusals start over.
    fn accepted(&self) {
        self.refusals.lock().expect("refusals lock").cleared();
    }

    /// Changes the retry bounds: attempts (at least 1), per-attempt timeout, and the whole call's
    /// budget.
    pub fn with_limits(
        mut self,
        attempts: u32,
        attempt_timeout: Duration,
        budget: Duration,
    ) -> Self {
        self.attempts = attempts.max(1);
        self.attempt_timeout = attempt_timeout;
        self.budget = budget;
        self
    }

    /// The Auto Scaling group name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The lifecycle hook name.
    pub fn hook(&self) -> &str {
        &self.hook
    }

    /// The instance id the hook is completed for.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// One `CompleteLifecycleAction` by `InstanceId`, no retry: [`LifecycleHook::finish`] is what a drain
    /// calls.
    pub async fn complete_once(&self, result: HookResult) -> Result<(), HookError> {
        let operation = "CompleteLifecycleAction";
        self.client
            .complete_lifecycle_action()
            .auto_scaling_group_name(&self.group)
            .lifecycle_hook_name(&self.hook)
            .instance_id(&self.instance_id)
            .lifecycle_action_result(result.as_str())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| HookError::from_sdk(operation, e))
    }

    /// The one hook finisher: complete the action (CONTINUE), trying until `until`. Right after a quick drain
    /// the group may not have started the lifecycle action yet ("no active lifecycle action"), and Auto
    /// Scaling may be slow or throttling; giving up after a few seconds left the instance waiting for the
    /// hook's timeout. A refusal that waiting cannot fix (a wrong hook or group name) ends at once.
    pub async fn finish(&self, until: Instant) -> HookOutcome {
        let completed = finish_with(
            async || {
                let outcome = self.complete_once(HookResult::Continue).await;
                if let Err(e) = &outcome {
                    if e.is_no_active_action() {
                        self.refused("CompleteLifecycleAction", e);
                    }
                }
                outcome
            },
            self.attempt_timeout,
            until,
        )
        .await;
        match completed {
            Ok(attempts) => {
                self.accepted();
                metrics::counter!(HOOK_COMPLETIONS, "result" => "ok").increment(1);
                tracing::info!(group = %self.group, hook = %self.hook, instance = %self.instance_id, attempts, "lifecycle hook completed (CONTINUE)");
                HookOutcome::Completed
            }
            Err(gave_up) => HookOutcome::failed(gave_up.to_string()),
        }
    }

    /// Extends the hook's wait by its heartbeat timeout (`RecordLifecycleActionHeartbeat` by
    /// `InstanceId`): at most the configured attempts, each cut at the attempt timeout, all within the budget.
    /// A refusal is not retried.
    pub async fn heartbeat(&self) -> Result<(), GaveUp<HookError>> {
        let operation = "RecordLifecycleActionHeartbeat";
        Retry::new(operation)
            .pace(HEARTBEAT_PACE)
            .attempts(self.attempts)
            .attempt_limit(self.attempt_timeout)
            .budget(Budget::Until(Instant::now() + self.budget))
            // `heartbeat_until` tells what the beat came to.
            .quiet()
            .run_fn(
                |_| {
                    let request = self
                        .client
                        .record_lifecycle_action_heartbeat()
                        .auto_scaling_group_name(&self.group)
                        .lifecycle_hook_name(&self.hook)
                        .instance_id(&self.instance_id);
                    async move {
                        request
                            .send()
                            .await
                            .map(|_| ())
                            .map_err(|e| HookError::from_sdk(operation, e))
                    }
                },
                HookError::class,
            )
            .await
    }
}

impl HookOutcome {
    /// The hook was due and is not completed: counted, and said loudly (the group proceeds only when the
    /// hook times out).
    pub fn failed(why: String) -> Self {
        metrics::counter!(HOOK_COMPLETIONS, "result" => "failed").increment(1);
        tracing::error!(cause = %why, "lifecycle hook NOT completed: the group proceeds when the hook times out");
        HookOutcome::Failed(why)
    }
}

/// Sends a heartbeat every `every` (the first one after `every`, not at once) until `done` fires.
/// Failures are logged and the loop continues; an in-flight heartbeat is abandoned when `done`
/// fires, so stopping is immediate.
///
/// "No active Lifecycle Action found" is expected while the group has not yet moved the instance
/// to `Terminating:Wait` (a drain triggered by the Spot notice can start before that): it is told
/// by [`LifecycleHook::refused`] (info, then one warning if it lasts, then throttled).
pub async fn heartbeat_until(hook: &LifecycleHook, every: Duration, done: CancellationToken) {
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    // After a slow heartbeat, wait a full period rather than firing a burst of catch-up beats.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let result = tokio::select! {
            _ = done.cancelled() => return,
            result = hook.heartbeat() => result,
        };
        match result {
            Ok(()) => {
                hook.accepted();
                metrics::counter!(HOOK_HEARTBEATS, "result" => "ok").increment(1);
                tracing::debug!(hook = %hook.hook, "lifecycle heartbeat sent");
            }
            Err(GaveUp {
                last: Some(err), ..
            }) if err.is_no_active_action() => {
                metrics::counter!(HOOK_HEARTBEATS, "result" => "no_active_action").increment(1);
                hook.refused("RecordLifecycleActionHeartbeat", &err);
            }
            Err(gave_up) => {
                metrics::counter!(HOOK_HEARTBEATS, "result" => "failed").increment(1);
                tracing::warn!(
                    group = %hook.group,
                    hook = %hook.hook,
                    instance_id = %hook.instance_id,
                    error = %gave_up,
                    "lifecycle heartbeat failed"
                );
            }
        }
    }
}

/// The Auto Scaling group name: `flag` if given (and not blank), else the instance tag
/// [`GROUP_NAME_TAG`] from metadata (needs tags in instance metadata enabled), else `None`.
pub async fn resolve_group(flag: Option<String>, imds: Option<&ImdsClient>) -> Option<String> {
    if let Some(group) = flag.map(|f| f.trim().to_owned()).filter(|f| !f.is_empty()) {
        return Some(group);
    }
    let imds = imds?;
    match imds.tag(GROUP_NAME_TAG).await {
        Ok(Some(group)) => Some(group),
        Ok(None) => {
            tracing::warn!(
                tag = GROUP_NAME_TAG,
                "no --asg-name given and the group tag is not in instance metadata (are tags in \
                 metadata enabled?); the lifecycle hook cannot be completed"
            );
            None
        }
        Err(err) => {
            tracing::warn!(
                tag = GROUP_NAME_TAG,
                error = %DisplayErrorContext(&err),
                "could not read the group tag from instance metadata; the lifecycle hook cannot be \
                 completed"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Stop;
    use std::future::Future;
    use std::sync::{Arc, Mutex};

    fn refused(message: &str) -> HookError {
        HookError::Refused {
            operation: "CompleteLifecycleAction",
            code: "ValidationError".into(),
            message: message.into(),
            source: "x".into(),
        }
    }

    const NO_ACTION: &str = "No active Lifecycle Action found with instance ID i-0abc";

    /// `finish_with` over scripted answers (the last repeats); the answers it asked for.
    async fn finish_scripted(
        script: &[Option<&str>],
        until: Instant,
    ) -> (Result<u32, GaveUp<HookError>>, usize) {
        let mut asked = 0;
        let outcome = finish_with(
            async || {
                let answer = script[asked.min(script.len() - 1)];
                asked += 1;
                match answer {
                    None => Ok(()),
                    Some(message) => Err(refused(message)),
                }
            },
            Duration::from_secs(3),
            until,
        )
        .await;
        (outcome, asked)
    }

    #[tokio::test(start_paused = true)]
    async fn the_finisher_waits_out_no_active_action_and_stops_at_a_refusal_or_its_deadline() {
        let until = Instant::now() + Duration::from_secs(60);
        // The action not started yet: tried again until it is.
        let (done, asked) = finish_scripted(&[Some(NO_ACTION), Some(NO_ACTION), None], until).await;
        assert_eq!((done.unwrap(), asked), (3, 3));
        // A wrong hook name: no second try.
        let (refused, asked) = finish_scripted(&[Some("LifecycleHook not found")], until).await;
        let refused = refused.unwrap_err();
        assert_eq!(
            (refused.stop, refused.attempts, asked),
            (Stop::Refused, 1, 1)
        );
        assert!(
            refused.to_string().contains("LifecycleHook not found"),
            "{refused}"
        );
        // Never started: tried until the deadline, not past it.
        let start = Instant::now();
        let until = start + Duration::from_secs(20);
        let (late, asked) = finish_scripted(&[Some(NO_ACTION)], until).await;
        let late = late.unwrap_err();
        assert_eq!(late.stop, Stop::Budget);
        assert!(asked > 3, "{asked}");
        assert!(Instant::now() <= until + Duration::from_millis(1));
        // Past the deadline already: tried once all the same.
        let (once, asked) = finish_scripted(&[None], Instant::now()).await;
        assert_eq!((once.unwrap(), asked), (1, 1));
    }

    #[test]
    fn classifies_failures() {
        // A refusal, account-wide ones included, is about this call: never retried.
        assert_eq!(
            class_of(Some("ValidationError"), Some(400), false),
            Class::Request
        );
        assert_eq!(
            class_of(Some("AccessDenied"), Some(403), false),
            Class::Request
        );
        assert_eq!(
            class_of(Some("Throttling"), Some(400), false),
            Class::Throttled
        );
        assert_eq!(
            class_of(Some("ResourceContention"), Some(500), false),
            Class::Transient
        );
        assert_eq!(
            class_of(Some("InternalFailure"), Some(500), false),
            Class::Transient
        );
        assert_eq!(class_of(None, Some(502), false), Class::Transient);
        assert_eq!(class_of(None, Some(429), false), Class::Throttled);
        assert_eq!(class_of(Some("Weird"), Some(503), false), Class::Transient);
        assert_eq!(class_of(None, None, true), Class::Transient);
        // Never sent: ours to fix.
        assert_eq!(class_of(None, None, false), Class::Request);
        for class in [Class::Transient, Class::Throttled] {
            assert!(class.retryable());
        }
    }

    /// A heartbeat's pause after `retry` failures (the driver's formula at [`HEARTBEAT_PACE`]).
    fn backoff(retry: u32, unit: f64) -> Duration {
        crate::retry::backoff_with(retry, HEARTBEAT_PACE.base, HEARTBEAT_PACE.cap, unit)
    }

    #[test]
    fn backoff_is_bounded() {
        let mut rng = fastrand::Rng::with_seed(3);
        for retry in 0..40 {
            for _ in 0..50 {
                let d = backoff(retry, rng.f64());
                assert!(
                    d >= HEARTBEAT_PACE.base / 2 && d <= HEARTBEAT_PACE.cap,
                    "{d:?}"
                );
            }
        }
        assert_eq!(backoff(0, 1.0), HEARTBEAT_PACE.base);
        // Worst case of a whole call with defaults fits the budget, and the budget the margin.
        let worst = DEFAULT_ATTEMPT_TIMEOUT * DEFAULT_ATTEMPTS
            + (0..DEFAULT_ATTEMPTS - 1)
                .map(|r| backoff(r, 1.0))
                .sum::<Duration>();
        assert!(worst < Duration::from_secs(12));
        assert!(DEFAULT_BUDGET < Duration::from_secs(10));
    }

    #[test]
    fn recognises_no_active_action() {
        let refused = |message: &str| HookError::Refused {
            operation: "CompleteLifecycleAction",
            code: "ValidationError".into(),
            message: message.into(),
            source: "x".into(),
        };
        assert!(
            refused("No active Lifecycle Action found with instance ID i-1").is_no_active_action()
        );
        assert!(!refused("LifecycleHook not found").is_no_active_action());
        assert_eq!(refused("x").code(), Some("ValidationError"));
        assert_eq!(HookResult::Continue.to_string(), "CONTINUE");
        assert_eq!(HookResult::Abandon.as_str(), "ABANDON");
    }

    // ----- a scripted Auto Scaling (query protocol) over real HTTP -----

    #[derive(Clone, Copy, Debug)]
    enum Reply {
        Ok,
        /// HTTP status, error code, message.
        Error(u16, &'static str, &'static str),
        Hang,
    }

    #[derive(Default)]
    struct Fake {
        /// Replies in order; the last one repeats.
        script: Mutex<Vec<Reply>>,
        /// Request bodies received, with the time they arrived.
        requests: Mutex<Vec<(Instant, String)>>,
    }

    impl Fake {
        fn requests(&self) -> Vec<String> {
            self.requests
                .lock()
                .unwrap()
                .iter()
                .map(|(_, b)| b.clone())
                .collect()
        }
    }

    async fn handle(
        axum::extract::State(fake): axum::extract::State<Arc<Fake>>,
        body: String,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let reply = {
            let mut script = fake.script.lock().unwrap();
            if script.len() > 1 {
                script.remove(0)
            } else {
                script.first().copied().unwrap_or(Reply::Ok)
            }
        };
        let action = body
            .split('&')
            .find_map(|kv| kv.strip_prefix("Action="))
            .unwrap_or("Unknown")
            .to_owned();
        fake.requests.lock().unwrap().push((Instant::now(), body));
        let xml = [("content-type", "text/xml")];
        match reply {
            Reply::Ok => (
                xml,
                format!(
                    "<{action}Response xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\">\
                     <{action}Result/><ResponseMetadata><RequestId>r-1</RequestId>\
                     </ResponseMetadata></{action}Response>"
                ),
            )
                .into_response(),
            Reply::Error(status, code, message) => (
                axum::http::StatusCode::from_u16(status).unwrap(),
                xml,
                format!(
                    "<ErrorResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\">\
                     <Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message>\
                     </Error><RequestId>r-2</RequestId></ErrorResponse>"
                ),
            )
                .into_response(),
            Reply::Hang => std::future::pending().await,
        }
    }

    async fn serve(script: &[Reply]) -> (Arc<Fake>, LifecycleHook) {
        let fake = Arc::new(Fake::default());
        *fake.script.lock().unwrap() = script.to_vec();
        let addr = crate::imds::fake::serve_router(
            axum::Router::new()
                .fallback(handle)
                .with_state(fake.clone()),
        )
        .await;
        let config = aws_sdk_autoscaling::Config::builder()
            .behavior_version(aws_sdk_autoscaling::config::BehaviorVersion::latest())
            .region(aws_sdk_autoscaling::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_autoscaling::config::Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            ))
            .endpoint_url(format!("http://{addr}"))
            // Our own retry loop is under test: the SDK makes exactly one attempt per call.
            .retry_config(aws_sdk_autoscaling::config::retry::RetryConfig::disabled())
            .build();
        let hook = LifecycleHook::new(
            aws_sdk_autoscaling::Client::from_conf(config),
            "order-workers",
            "order-worker-drain",
            "i-0abc",
        )
        .with_limits(3, Duration::from_millis(500), Duration::from_secs(3));
        (fake, hook)
    }

    const DEADLINE: Duration = Duration::from_secs(10);

    async fn within<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(DEADLINE, f)
            .await
            .expect("deadline exceeded")
    }

    #[tokio::test]
    async fn completes_by_instance_id() {
        let (fake, hook) = serve(&[Reply::Ok]).await;
        within(hook.complete_once(HookResult::Continue))
            .await
            .unwrap();
        let requests = fake.requests();
        assert_eq!(requests.len(), 1);
        let body = &requests[0];
        for part in [
            "Action=CompleteLifecycleAction",
            "AutoScalingGroupName=order-workers",
            "LifecycleHookName=order-worker-drain",
            "InstanceId=i-0abc",
            "LifecycleActionResult=CONTINUE",
        ] {
            assert!(body.contains(part), "{part} missing in {body}");
        }
        assert!(!body.contains("LifecycleActionToken"), "{body}");

        within(hook.heartbeat()).await.unwrap();
        let requests = fake.requests();
        assert!(requests[1].contains("Action=RecordLifecycleActionHeartbeat"));
        assert!(requests[1].contains("InstanceId=i-0abc"));
    }

    #[tokio::test]
    async fn validation_errors_are_refused_without_retry() {
        let (fake, hook) = serve(&[Reply::Error(
            400,
            "ValidationError",
            "No active Lifecycle Action found with instance ID i-0abc",
        )])
        .await;
        let err = within(hook.complete_once(HookResult::Abandon))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, HookError::Refused { code, .. } if code == "ValidationError"),
            "{err:?}"
        );
        assert!(err.is_no_active_action());
        assert!(std::error::Error::source(&err).is_some());
        assert_eq!(fake.requests().len(), 1);
        assert!(fake.requests()[0].contains("LifecycleActionResult=ABANDON"));
        // The heartbeat, a retried call, is refused at the first answer too.
        let gave_up = within(hook.heartbeat()).await.unwrap_err();
        assert_eq!((gave_up.stop, gave_up.attempts), (Stop::Refused, 1));
        assert!(gave_up.last.unwrap().is_no_active_action());
        assert_eq!(fake.requests().len(), 2);
    }

    #[tokio::test]
    async fn throttling_and_server_errors_are_retried() {
        let (fake, hook) = serve(&[
            Reply::Error(400, "Throttling", "Rate exceeded"),
            Reply::Error(500, "InternalFailure", "oops"),
            Reply::Ok,
        ])
        .await;
        let until = Instant::now() + Duration::from_secs(5);
        assert_eq!(within(hook.finish(until)).await, HookOutcome::Completed);
        assert_eq!(fake.requests().len(), 3);
    }

    #[tokio::test]
    async fn persistent_failures_give_up_after_the_attempts() {
        let (fake, hook) = serve(&[Reply::Error(503, "ServiceUnavailable", "down")]).await;
        let err = within(hook.heartbeat()).await.unwrap_err();
        assert_eq!((err.stop, err.attempts), (Stop::Attempts, 3), "{err}");
        assert!(
            matches!(err.last, Some(HookError::Failed { .. })),
            "{err:?}"
        );
        assert_eq!(fake.requests().len(), 3);
    }

    #[tokio::test]
    async fn a_hanging_endpoint_is_cut_by_the_budget() {
        let (_fake, hook) = serve(&[Reply::Hang]).await;
        let hook = hook.with_limits(10, Duration::from_millis(300), Duration::from_secs(1));
        let started = std::time::Instant::now();
        let until = Instant::now() + Duration::from_secs(1);
        let outcome = within(hook.finish(until)).await;
        let took = started.elapsed();
        assert!(matches!(outcome, HookOutcome::Failed(_)), "{outcome:?}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn heartbeats_on_schedule_until_done() {
        let (fake, hook) = serve(&[
            Reply::Error(
                400,
                "ValidationError",
                "No active Lifecycle Action found with instance ID i-0abc",
            ),
            Reply::Error(500, "InternalFailure", "oops"),
            Reply::Ok,
        ])
        .await;
        let every = Duration::from_millis(50);
        let done = CancellationToken::new();
        let started = Instant::now();
        let task = {
            let done = done.clone();
            tokio::spawn(async move { heartbeat_until(&hook, every, done).await })
        };
        // Failures (a refusal, a 500) do not stop the loop: wait for several more beats.
        within(async {
            while fake.requests().len() < 5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let times: Vec<Instant> = fake
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| *t)
            .collect();
        assert!(times[0] - started >= every, "first heartbeat came at once");
        assert!(fake
            .requests()
            .iter()
            .all(|b| b.contains("Action=RecordLifecycleActionHeartbeat")));
        done.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("heartbeat loop did not stop")
            .unwrap();
        let after = fake.requests().len();
        tokio::time::sleep(every * 3).await;
        assert_eq!(fake.requests().len(), after, "heartbeat after done");
    }

    #[test]
    fn a_lasting_refusal_is_told_once_at_info_once_as_a_warning_then_throttled() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let warn_after = Duration::from_secs(5);
        let mut r = Refusals::default();
        assert_eq!(r.saw(at(0), warn_after), Tell::First);
        assert_eq!(r.saw(at(1_000), warn_after), Tell::Quiet);
        assert_eq!(r.saw(at(4_999), warn_after), Tell::Quiet);
        assert_eq!(r.saw(at(5_000), warn_after), Tell::Warn);
        for ms in [5_500, 10_000, 34_999] {
            assert_eq!(r.saw(at(ms), warn_after), Tell::Quiet, "{ms}");
        }
        assert_eq!(r.saw(at(35_000), warn_after), Tell::Remind);
        assert_eq!(r.saw(at(36_000), warn_after), Tell::Quiet);
        assert_eq!(r.lasting(at(36_000)), (9, Duration::from_secs(36)));
        // Accepted: a later refusal is a first one again, and may warn again.
        r.cleared();
        assert_eq!(r.saw(at(40_000), warn_after), Tell::First);
        assert_eq!(r.saw(at(45_000), warn_after), Tell::Warn);
    }

    #[tokio::test]
    async fn refusals_of_heartbeats_and_completions_add_up_to_one_warning() {
        let no_action = Reply::Error(
            400,
            "ValidationError",
            "No active Lifecycle Action found with instance ID i-0abc",
        );
        let (fake, hook) = serve(&[no_action]).await;
        let hook = hook.with_warn_after(Duration::from_millis(300));
        let done = CancellationToken::new();
        let beats = {
            let (hook, done) = (hook.clone(), done.clone());
            tokio::spawn(
                async move { heartbeat_until(&hook, Duration::from_millis(50), done).await },
            )
        };
        let mut told = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(600) {
            let err = within(hook.complete_once(HookResult::Continue))
                .await
                .unwrap_err();
            assert!(err.is_no_active_action(), "{err}");
            told.push(hook.refused("CompleteLifecycleAction", &err));
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        done.cancel();
        beats.await.unwrap();
        // Our own calls' tells: the heartbeats in between took the first one or the warning if they came first.
        let (count, lasting) = hook.refusals.lock().unwrap().lasting(Instant::now());
        assert!(lasting >= Duration::from_millis(500), "{lasting:?}");
        assert!(
            count as usize > told.len(),
            "the heartbeats' refusals were not counted"
        );
        let shared = hook.refusals.lock().unwrap().clone();
        assert!(shared.warned, "no warning after 600 ms of refusals");
        assert!(
            told.iter().filter(|t| **t == Tell::Warn).count() <= 1,
            "{told:?}"
        );
        assert!(!told.contains(&Tell::Remind), "{told:?}");
        assert!(fake.requests().len() >= told.len());
    }

    #[tokio::test]
    async fn done_before_the_first_beat_sends_nothing() {
        let (fake, hook) = serve(&[Reply::Ok]).await;
        let done = CancellationToken::new();
        done.cancel();
        within(heartbeat_until(&hook, Duration::from_millis(10), done)).await;
        assert!(fake.requests().is_empty());
    }

    #[tokio::test]
    async fn resolves_the_group_name() {
        assert_eq!(
            resolve_group(Some("from-flag".into()), None)
                .await
                .as_deref(),
            Some("from-flag")
        );
        assert_eq!(resolve_group(Some("  ".into()), None).await, None);
        assert_eq!(resolve_group(None, None).await, None);

        // From the instance tag, through the scripted metadata server.
        let (imds, url) = crate::imds::fake::serve().await;
        imds.script(
            &format!("{}{GROUP_NAME_TAG}", crate::imds::PATH_TAGS_PREFIX),
            &[crate::imds::fake::Reply::Body("order-workers\n")],
        );
        let client = ImdsClient::new(&url).unwrap();
        assert_eq!(
            within(resolve_group(None, Some(&client))).await.as_deref(),
            Some("order-workers")
        );
        assert_eq!(
            within(resolve_group(Some("flag-wins".into()), Some(&client)))
                .await
                .as_deref(),
            Some("flag-wins")
        );
    }
}
