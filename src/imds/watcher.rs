//! The watcher: polls the interruption notice, the rebalance recommendation and the target lifecycle state,
//! and sends each distinct event once as a [`Notice`]; never gives up on metadata errors.

use std::fmt;
use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::telemetry::{IMDS_ERRORS, IMDS_NOTICES};

/// While metadata keeps failing, repeat the warning at most this often.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// A 403 means metadata is turned off: an operator decision that will not change by itself, so
/// after the first clear error it is only repeated this rarely.
const FORBIDDEN_WARN_EVERY: Duration = Duration::from_secs(600);
/// Longest pause between polls while every poll fails (to stop hammering a throttling IMDS); the
/// interruption notice gives two minutes, so a few seconds are affordable.
const FAILING_POLL_CAP: Duration = Duration::from_secs(5);

/// The poll interval with ±10 % jitter, so a fleet started together does not poll in lockstep.
fn jittered(poll: Duration, unit: f64) -> Duration {
    poll.mul_f64(0.9 + 0.2 * unit.clamp(0.0, 1.0))
}

/// Pause before the next poll: `poll` while metadata answers; doubling per failing poll (capped at
/// the larger of `poll` and [`FAILING_POLL_CAP`]) while it keeps failing.
fn poll_delay(poll: Duration, failing_polls: u32, unit: f64) -> Duration {
    let base = if failing_polls == 0 {
        poll
    } else {
        let cap = poll.max(FAILING_POLL_CAP);
        poll.saturating_mul(2u32.saturating_pow(failing_polls.min(8)))
            .min(cap)
    };
    jittered(base, unit)
}

/// A distinct event seen in instance metadata, sent once by [`watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A Spot interruption notice (a new one if the action or time changed).
    Interruption(InstanceAction),
    /// A rebalance recommendation (a new one if the notice time changed).
    Rebalance(Rebalance),
    /// The target lifecycle state: the first one seen and each change. Only `Terminated` calls for
    /// a drain; the consumer decides.
    TargetLifecycle(LifecycleState),
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rfc3339 = |t: &OffsetDateTime| t.format(&Rfc3339).unwrap_or_else(|_| t.to_string());
        match self {
            Notice::Interruption(a) => {
                write!(f, "spot interruption: {} at {}", a.action, rfc3339(&a.time))
            }
            Notice::Rebalance(r) => {
                write!(f, "rebalance recommendation at {}", rfc3339(&r.notice_time))
            }
            Notice::TargetLifecycle(s) => write!(f, "target lifecycle state {s}"),
        }
    }
}

impl Notice {
    /// Every [`Notice::kind`], for the metrics: each is exported from the start, at 0.
    pub const KINDS: [&'static str; 3] = ["interruption", "rebalance", "target_lifecycle"];

    /// The metrics `kind` label.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::Interruption(_) => "interruption",
            Notice::Rebalance(_) => "rebalance",
            Notice::TargetLifecycle(_) => "target_lifecycle",
        }
    }
}

/// Remembers what was sent so that a document seen on every poll is sent once, and so that metadata whose
/// times move on every poll (AWS's own metadata mock does this) cannot turn one event into a stream.
#[derive(Debug, Default)]
pub struct NoticeFilter {
    /// The interruption notice in force: the earliest time seen.
    interruption: Option<InstanceAction>,
    /// The rebalance recommendation, once seen: it stays in the metadata until the instance goes, and a new
    /// `noticeTime` on the same document is not a new recommendation.
    rebalance: Option<Rebalance>,
    /// Last lifecycle state sent.
    lifecycle: Option<LifecycleState>,
}

impl NoticeFilter {
    /// True if `notice` is news (and remembers it): the first rebalance recommendation; an interruption notice
    /// that is the first, names another action, or brings the time forward (a later time changes nothing: the
    /// drain keeps the earliest deadline); a lifecycle state that differs from the last. A document that
    /// disappears (404) and comes back unchanged is still the same event.
    pub fn admit(&mut self, notice: &Notice) -> bool {
        match notice {
            Notice::Interruption(a) => {
                let news = match &self.interruption {
                    None => true,
                    Some(last) => a.action != last.action || a.time < last.time,
                };
                if news {
                    self.interruption = Some(a.clone());
                }
                news
            }
            Notice::Rebalance(r) => {
                if self.rebalance.is_some() {
                    return false;
                }
                self.rebalance = Some(r.clone());
                true
            }
            Notice::TargetLifecycle(s) => {
                if self.lifecycle == Some(*s) {
                    return false;
                }
                self.lifecycle = Some(*s);
                true
            }
        }
    }
}

/// What to log about a failing request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogDecision {
    /// First failure after a healthy period: log it.
    First,
    /// A kind of failure not yet reported in this outage (e.g. 403 turned into timeouts): log it,
    /// so the log says what is failing now.
    NewKind,
    /// Still failing and the repeat interval has passed: log a reminder.
    Repeat,
    /// Stay quiet.
    Quiet,
}

/// Rate limits the "metadata is failing" log so a long outage gives one line per interval (and
/// one per new kind of failure), not one per poll.
#[derive(Debug, Default)]
struct FailureLog {
    /// Failed requests since the last healthy poll.
    failures: u64,
    /// When the current run of failures began.
    since: Option<Instant>,
    /// When we last logged about it.
    last_logged: Option<Instant>,
    /// Error kinds already reported in this outage.
    kinds_logged: Vec<&'static str>,
}

impl FailureLog {
    fn on_failure(&mut self, now: Instant, kind: &'static str) -> LogDecision {
        self.failures += 1;
        let every = if kind == "forbidden" {
            FORBIDDEN_WARN_EVERY
        } else {
            WARN_EVERY
        };
        let decision = match self.last_logged {
            None => {
                self.since = Some(now);
                LogDecision::First
            }
            Some(_) if !self.kinds_logged.contains(&kind) => LogDecision::NewKind,
            Some(at) if now.saturating_duration_since(at) >= every => LogDecision::Repeat,
            Some(_) => return LogDecision::Quiet,
        };
        self.last_logged = Some(now);
        if !self.kinds_logged.contains(&kind) {
            self.kinds_logged.push(kind);
        }
        decision
    }

    /// A fully healthy poll: returns (failures, outage length) if we were failing.
    fn on_success(&mut self, now: Instant) -> Option<(u64, Duration)> {
        let since = self.since.take()?;
        let failures = std::mem::take(&mut self.failures);
        self.last_logged = None;
        self.kinds_logged.clear();
        Some((failures, now.saturating_duration_since(since)))
    }

    fn log(&self, decision: LogDecision, path: &str, err: &ImdsError) {
        let since = self
            .since
            .map(|s| Instant::now().saturating_duration_since(s))
            .unwrap_or_default();
        let failing_for = humantime::format_duration(Duration::from_secs(since.as_secs()));
        match (decision, err) {
            (LogDecision::Quiet, _) => {}
            (LogDecision::First | LogDecision::NewKind, ImdsError::Forbidden { .. }) => {
                tracing::error!(
                    path,
                    error = %err,
                    "instance metadata is turned off (403): Spot interruption notices and \
                     lifecycle state cannot be seen; still polling in case it is turned back on"
                )
            }
            (_, _) => tracing::warn!(
                path,
                error = %err,
                kind = err.kind(),
                failures = self.failures,
                failing_for = %failing_for,
                "instance metadata unavailable; still polling"
            ),
        }
    }
}

/// Polls the Spot interruption notice, the rebalance recommendation and the target lifecycle
/// state every `poll` (±10 % jitter) and sends each distinct event once on `tx`.
///
/// Never returns on metadata errors: it logs them (rate limited), counts them
/// (`order_worker_imds_errors_total`), slows down while everything fails, and keeps polling. Returns when
/// `cancel` fires or the receiver is dropped.
pub async fn watch(
    client: ImdsClient,
    poll: Duration,
    tx: mpsc::Sender<Notice>,
    cancel: CancellationToken,
) {
    // A scraper sees every kind at 0 while metadata is watched, so "no errors" is a value, not a gap.
    for kind in ImdsError::KINDS {
        metrics::counter!(IMDS_ERRORS, "kind" => kind).increment(0);
    }
    for kind in Notice::KINDS {
        metrics::counter!(IMDS_NOTICES, "kind" => kind).increment(0);
    }
    let mut filter = NoticeFilter::default();
    let mut failures = FailureLog::default();
    let mut failing_polls = 0u32;
    tracing::info!(
        endpoint = client.endpoint(),
        ?poll,
        "watching instance metadata"
    );
    loop {
        let started = Instant::now();
        // The three paths are independent: ask concurrently so a slow one does not delay the
        // interruption notice.
        let polled = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tx.closed() => return,
            polled = async {
                tokio::join!(
                    client.spot_instance_action(),
                    client.target_lifecycle_state(),
                    client.rebalance(),
                )
            } => polled,
        };
        let (notices, errors) = sort_answers(polled);
        failing_polls = note_failures(&mut failures, failing_polls, &errors);

        // Send what the paths that did answer have to say, even when another path failed.
        for notice in notices {
            if !filter.admit(&notice) {
                continue;
            }
            metrics::counter!(IMDS_NOTICES, "kind" => notice.kind()).increment(1);
            tracing::info!(kind = notice.kind(), %notice, "instance metadata notice");
            tokio::select! {
                _ = cancel.cancelled() => return,
                sent = tx.send(notice) => if sent.is_err() { return },
            }
        }

        let next = started + poll_delay(poll, failing_polls, fastrand::f64());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tx.closed() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

/// What one poll of the three paths answered: the notices found, and each path's error.
type Answers = (
    Result<Option<InstanceAction>, ImdsError>,
    Result<Option<LifecycleState>, ImdsError>,
    Result<Option<Rebalance>, ImdsError>,
);

fn sort_answers(
    (action, lifecycle, rebalance): Answers,
) -> (Vec<Notice>, Vec<(&'static str, ImdsError)>) {
    let mut notices = Vec::new();
    let mut errors = Vec::new();
    match action {
        Ok(found) => notices.extend(found.map(Notice::Interruption)),
        Err(e) => errors.push((PATH_INSTANCE_ACTION, e)),
    }
    match lifecycle {
        Ok(found) => notices.extend(found.map(Notice::TargetLifecycle)),
        Err(e) => errors.push((PATH_TARGET_LIFECYCLE, e)),
    }
    match rebalance {
        Ok(found) => notices.extend(found.map(Notice::Rebalance)),
        Err(e) => errors.push((PATH_REBALANCE, e)),
    }
    (notices, errors)
}

/// Log (rate limited) what this poll's errors say, or that metadata recovered; returns the new count of
/// polls in a row that found metadata struggling.
fn note_failures(
    failures: &mut FailureLog,
    failing_polls: u32,
    errors: &[(&'static str, ImdsError)],
) -> u32 {
    let now = Instant::now();
    if errors.is_empty() {
        if let Some((count, outage)) = failures.on_success(now) {
            let outage = Duration::from_millis(outage.as_millis() as u64);
            tracing::info!(
                failures = count,
                outage = %humantime::format_duration(outage),
                "instance metadata recovered"
            );
        }
        return 0;
    }
    for (path, err) in errors {
        let decision = failures.on_failure(now, err.kind());
        failures.log(decision, path, err);
    }
    // Slow down only when IMDS itself is struggling or refusing; a malformed document says nothing about
    // load, and polling it slower would only delay the other paths.
    if errors
        .iter()
        .any(|(_, e)| !matches!(e, ImdsError::Malformed { .. }))
    {
        failing_polls.saturating_add(1)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imds::fake::{error_count, fast, notice_count, serve, within, Reply};
    use crate::telemetry::LocalRecorder;
    use time::macros::datetime;

    #[test]
    fn poll_jitter_and_slowdown_are_bounded() {
        let poll = Duration::from_secs(1);
        let mut rng = fastrand::Rng::with_seed(2);
        for _ in 0..1000 {
            let d = poll_delay(poll, 0, rng.f64());
            assert!(d >= poll.mul_f64(0.9) && d <= poll.mul_f64(1.1), "{d:?}");
        }
        assert!(poll_delay(poll, 1, 0.5) > poll_delay(poll, 0, 0.5));
        for n in [1, 3, 10, u32::MAX] {
            assert!(poll_delay(poll, n, 1.0) <= FAILING_POLL_CAP.mul_f64(1.1));
        }
        // A poll already slower than the cap is never made faster.
        let slow = Duration::from_secs(30);
        assert_eq!(poll_delay(slow, 5, 0.5), slow);
    }

    fn action(t: OffsetDateTime) -> Notice {
        Notice::Interruption(InstanceAction {
            action: SpotAction::Terminate,
            time: t,
        })
    }

    #[test]
    fn notices_display_readably() {
        let t = datetime!(2026-11-25 08:22:00 UTC);
        assert_eq!(
            action(t).to_string(),
            "spot interruption: terminate at 2026-11-25T08:22:00Z"
        );
        assert_eq!(
            Notice::Rebalance(Rebalance { notice_time: t }).to_string(),
            "rebalance recommendation at 2026-11-25T08:22:00Z"
        );
        assert_eq!(
            Notice::TargetLifecycle(LifecycleState::Terminated).to_string(),
            "target lifecycle state Terminated"
        );
    }

    #[test]
    fn filter_sends_each_distinct_event_once() {
        let mut f = NoticeFilter::default();
        let t1 = datetime!(2026-11-25 08:22:00 UTC);
        let t2 = datetime!(2026-11-25 08:24:00 UTC);
        assert!(f.admit(&action(t1)));
        assert!(!f.admit(&action(t1)));
        assert!(!f.admit(&action(t1)));
        // A time that moves later on every poll (AWS's metadata mock) is not news; an earlier one is.
        assert!(!f.admit(&action(t2)), "a later time is not a new event");
        let t0 = datetime!(2026-11-25 08:20:00 UTC);
        assert!(
            f.admit(&action(t0)),
            "an earlier time brings the deadline forward"
        );
        assert!(!f.admit(&action(t1)));
        assert!(f.admit(&Notice::Interruption(InstanceAction {
            action: SpotAction::Stop,
            time: t2
        })));
        let r = Notice::Rebalance(Rebalance { notice_time: t1 });
        assert!(f.admit(&r));
        assert!(!f.admit(&r));
        assert!(
            !f.admit(&Notice::Rebalance(Rebalance { notice_time: t2 })),
            "a moved noticeTime is the same recommendation"
        );
        let in_service = Notice::TargetLifecycle(LifecycleState::InService);
        let terminated = Notice::TargetLifecycle(LifecycleState::Terminated);
        assert!(f.admit(&in_service), "first state is sent");
        assert!(!f.admit(&in_service));
        assert!(f.admit(&terminated));
        assert!(!f.admit(&terminated));
        assert!(f.admit(&in_service));
    }

    #[test]
    fn failure_log_is_rate_limited() {
        let t0 = Instant::now();
        let mut log = FailureLog::default();
        assert_eq!(log.on_success(t0), None, "nothing to report when healthy");
        assert_eq!(log.on_failure(t0, "timeout"), LogDecision::First);
        let mut decisions = Vec::new();
        // One failure per second for 95 s: First, then a reminder every 30 s.
        for s in 1..=95 {
            decisions.push(log.on_failure(t0 + Duration::from_secs(s), "timeout"));
        }
        let loud: Vec<_> = decisions
            .iter()
            .enumerate()
            .filter(|(_, d)| **d != LogDecision::Quiet)
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(loud, vec![30, 60, 90]);
        assert_eq!(
            log.on_success(t0 + Duration::from_secs(100)),
            Some((96, Duration::from_secs(100)))
        );
        assert_eq!(log.on_success(t0 + Duration::from_secs(101)), None);
        // After recovery the next failure is "first" again.
        assert_eq!(
            log.on_failure(t0 + Duration::from_secs(102), "timeout"),
            LogDecision::First
        );
        // 403 is repeated only every ten minutes.
        let mut log = FailureLog::default();
        assert_eq!(log.on_failure(t0, "forbidden"), LogDecision::First);
        let loud = (1..=1200)
            .filter(|s| {
                log.on_failure(t0 + Duration::from_secs(*s), "forbidden") != LogDecision::Quiet
            })
            .count();
        assert_eq!(loud, 2);

        // A new kind of failure is reported at once, once; alternating kinds do not flood.
        let mut log = FailureLog::default();
        assert_eq!(log.on_failure(t0, "forbidden"), LogDecision::First);
        let t = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(log.on_failure(t(100), "forbidden"), LogDecision::Quiet);
        assert_eq!(log.on_failure(t(200), "timeout"), LogDecision::NewKind);
        assert_eq!(log.on_failure(t(300), "server_error"), LogDecision::NewKind);
        for i in 0..100 {
            let kind = ["timeout", "server_error", "forbidden"][i % 3];
            assert_eq!(log.on_failure(t(400 + i as u64), kind), LogDecision::Quiet);
        }
        assert_eq!(log.on_failure(t(30_300), "timeout"), LogDecision::Repeat);
    }

    struct Watcher {
        rx: mpsc::Receiver<Notice>,
        /// Where this test's watcher counts (the test's own recorder).
        metrics: LocalRecorder,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn start_watch(url: &str) -> Watcher {
        let (tx, rx) = mpsc::channel(16);
        let metrics = LocalRecorder::install();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(watch(
            fast(url),
            Duration::from_millis(20),
            tx,
            cancel.clone(),
        ));
        Watcher {
            rx,
            metrics,
            cancel,
            task,
        }
    }

    /// Waits (with a deadline) until `cond` holds.
    async fn eventually(mut cond: impl FnMut() -> bool) {
        within(async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    #[tokio::test]
    async fn watcher_sends_each_distinct_notice_once() {
        let (fake, url) = serve().await;
        let mut w = start_watch(&url);
        fake.script(PATH_TARGET_LIFECYCLE, &[Reply::Body("InService")]);
        assert_eq!(
            within(w.rx.recv()).await,
            Some(Notice::TargetLifecycle(LifecycleState::InService))
        );

        fake.script(
            PATH_REBALANCE,
            &[Reply::Body(r#"{"noticeTime":"2026-11-25T08:17:00Z"}"#)],
        );
        assert!(matches!(
            within(w.rx.recv()).await,
            Some(Notice::Rebalance(_))
        ));

        let t1 = r#"{"action":"terminate","time":"2026-11-25T08:22:00Z"}"#;
        fake.script(PATH_INSTANCE_ACTION, &[Reply::Body(t1)]);
        let first = within(w.rx.recv()).await.unwrap();
        assert_eq!(
            first,
            Notice::Interruption(parse_instance_action(t1).unwrap())
        );
        // Let the same documents be polled many more times: no new notice may appear.
        let hits = fake.hits(PATH_INSTANCE_ACTION);
        eventually(|| fake.hits(PATH_INSTANCE_ACTION) >= hits + 5).await;
        assert!(w.rx.try_recv().is_err(), "duplicate notice sent");

        // A later time (metadata whose time moves on every poll) is not news; an earlier one is.
        fake.script(
            PATH_INSTANCE_ACTION,
            &[Reply::Body(
                r#"{"action":"terminate","time":"2026-11-25T08:23:00Z"}"#,
            )],
        );
        let hits = fake.hits(PATH_INSTANCE_ACTION);
        eventually(|| fake.hits(PATH_INSTANCE_ACTION) >= hits + 3).await;
        assert!(
            w.rx.try_recv().is_err(),
            "a later interruption time was sent"
        );
        fake.script(
            PATH_INSTANCE_ACTION,
            &[Reply::Body(
                r#"{"action":"terminate","time":"2026-11-25T08:21:00Z"}"#,
            )],
        );
        assert!(matches!(
            within(w.rx.recv()).await,
            Some(Notice::Interruption(a)) if a.time == datetime!(2026-11-25 08:21:00 UTC)
        ));
        // A rebalance recommendation whose noticeTime moves is still the one recommendation.
        fake.script(
            PATH_REBALANCE,
            &[Reply::Body(r#"{"noticeTime":"2026-11-25T08:19:00Z"}"#)],
        );
        let hits = fake.hits(PATH_REBALANCE);
        eventually(|| fake.hits(PATH_REBALANCE) >= hits + 3).await;
        assert!(
            w.rx.try_recv().is_err(),
            "a moved rebalance noticeTime was sent"
        );
        fake.script(PATH_TARGET_LIFECYCLE, &[Reply::Body("Terminated")]);
        assert_eq!(
            within(w.rx.recv()).await,
            Some(Notice::TargetLifecycle(LifecycleState::Terminated))
        );
        assert_eq!(notice_count(&w.metrics, "interruption"), 2);
        assert_eq!(notice_count(&w.metrics, "rebalance"), 1);
        assert_eq!(notice_count(&w.metrics, "target_lifecycle"), 2);

        w.cancel.cancel();
        within(w.task).await.unwrap();
    }

    #[tokio::test]
    async fn watcher_survives_failures_and_recovers() {
        let (fake, url) = serve().await;
        // IMDS is broken in several ways for a while...
        fake.script(PATH_INSTANCE_ACTION, &[Reply::Status(500)]);
        fake.script(PATH_REBALANCE, &[Reply::Body("garbage")]);
        fake.script(PATH_TARGET_LIFECYCLE, &[Reply::Status(429)]);
        let mut w = start_watch(&url);
        eventually(|| fake.hits(PATH_INSTANCE_ACTION) >= 2 * DEFAULT_ATTEMPTS).await;
        assert!(!w.task.is_finished());
        assert!(error_count(&w.metrics, "server_error") >= 2);
        assert!(error_count(&w.metrics, "malformed") >= 1);
        assert!(error_count(&w.metrics, "throttled") >= 2);

        // ... then a notice appears on one path while the others still fail.
        fake.script(
            PATH_INSTANCE_ACTION,
            &[Reply::Body(
                r#"{"action":"stop","time":"2026-11-25T08:22:00Z"}"#,
            )],
        );
        assert!(matches!(
            within(w.rx.recv()).await,
            Some(Notice::Interruption(InstanceAction {
                action: SpotAction::Stop,
                ..
            }))
        ));
        w.cancel.cancel();
        within(w.task).await.unwrap();
    }

    #[tokio::test]
    async fn watcher_keeps_going_when_metadata_is_forbidden() {
        let (fake, url) = serve().await;
        fake.script_token(&[Reply::Status(403)]);
        let mut w = start_watch(&url);
        // The fake counts a request when it arrives, the watcher its error once the answer is read: wait for both
        // (waiting for the hits alone raced the sixth error count).
        eventually(|| fake.hits(PATH_TOKEN) >= 6 && error_count(&w.metrics, "forbidden") >= 6)
            .await;
        assert!(!w.task.is_finished());
        assert!(error_count(&w.metrics, "forbidden") >= 6);
        // Metadata is turned back on: notices flow.
        fake.script_token(&[Reply::Body("")]);
        fake.script(PATH_TARGET_LIFECYCLE, &[Reply::Body("Terminated")]);
        assert_eq!(
            within(w.rx.recv()).await,
            Some(Notice::TargetLifecycle(LifecycleState::Terminated))
        );
        w.cancel.cancel();
        within(w.task).await.unwrap();
    }

    #[tokio::test]
    async fn watcher_stops_when_the_receiver_is_dropped() {
        let (_fake, url) = serve().await;
        let w = start_watch(&url);
        drop(w.rx);
        within(w.task).await.unwrap();
    }

    #[tokio::test]
    async fn watcher_stops_on_cancel_even_while_imds_hangs() {
        let (fake, url) = serve().await;
        fake.script_token(&[Reply::Hang]);
        let w = start_watch(&url);
        eventually(|| fake.hits(PATH_TOKEN) >= 1).await;
        w.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(1), w.task)
            .await
            .expect("watcher did not stop promptly")
            .unwrap();
    }
}
