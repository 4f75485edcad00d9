//! The receive loop: long polls while there is room, the worker is not paused or blocked, and no drain has
//! begun; what it brings goes into the held state, and each new group gets its task.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::group::Groups;
use super::held::{Refuse, SharedHeld};
use super::visibility::Releaser;
use super::SharedBudget;
use crate::admission::Admission;
use crate::queue::{new_attempt_id, Queue, Received, SqsError};
use crate::retry::{Class, Retry};

/// While an account-wide error blocks the worker, receive anyway once this often: a successful receive is the
/// probe that lifts an SQS block no held message is left to retry, and what it brings stays held (a blocked
/// commit keeps its messages, so no receive count is burned).
const BLOCKED_PROBE: Duration = Duration::from_secs(30);

/// How long a drain lets the poll in flight come back by itself before ending it: a poll that is answering
/// right now is cheaper to read than to recover; one that waits for messages would wait up to `--wait-time`.
const POLL_GRACE: Duration = Duration::from_millis(100);

/// Longest one recovery attempt (an immediate receive) may take before it is tried again, same attempt id.
const RECOVER_ATTEMPT: Duration = Duration::from_secs(2);

/// How long a receive retried after a transport failure keeps its attempt id (SQS honours one for 5 minutes).
const ATTEMPT_ID_KEPT: Duration = Duration::from_secs(240);

/// The `ReceiveRequestAttemptId` of the next receive. A receive retried after a transport failure keeps it, so
/// SQS hands back the same messages instead of hiding them for a whole visibility timeout; once SQS answered
/// (messages, or an error that says it handed out nothing) the next receive gets a new one.
pub(super) struct AttemptId {
    id: String,
    since: Instant,
}

impl AttemptId {
    fn new(now: Instant) -> Self {
        AttemptId {
            id: new_attempt_id(),
            since: now,
        }
    }

    /// The id to send now: the same one while retrying, for up to [`ATTEMPT_ID_KEPT`].
    fn current(&mut self, now: Instant) -> &str {
        if now.saturating_duration_since(self.since) > ATTEMPT_ID_KEPT {
            *self = AttemptId::new(now);
        }
        &self.id
    }

    /// What the receive sent with it came back with.
    fn after(&mut self, outcome: Result<(), Class>, now: Instant) {
        // Only a transport failure (classed transient) may have handed out messages we did not see.
        if outcome != Err(Class::Transient) {
            *self = AttemptId::new(now);
        }
    }
}

/// Long-polls for messages and takes them in.
pub(super) struct ReceiveLoop {
    pub(super) queue: Queue,
    pub(super) held: SharedHeld,
    pub(super) groups: Groups,
    /// Releases what a poll brings that may not be taken in.
    pub(super) releaser: Releaser,
    /// Account-wide errors: no poll while one blocks (but a probe now and then).
    pub(super) admission: Arc<Admission>,
    /// Receiving stops for good (a drain).
    pub(super) stop: CancellationToken,
    /// The drain's deadline passed: the recovery of an ended poll stops.
    pub(super) abort: CancellationToken,
    pub(super) paused: watch::Receiver<bool>,
    /// Set while a receive is out (the drain waits for it).
    pub(super) polling: watch::Sender<bool>,
    pub(super) budget: SharedBudget,
    pub(super) max_groups: usize,
    pub(super) wait_time: Duration,
    pub(super) visibility_timeout: Duration,
}

impl ReceiveLoop {
    pub(super) async fn run(mut self) {
        let stop = self.stop.clone();
        let mut retry = Retry::new("ReceiveMessage")
            .waiting_for("SQS")
            .cancel(&stop)
            .says("receive failed; retrying with backoff");
        let mut attempt = AttemptId::new(Instant::now());
        while self.wait_for_room().await {
            if *self.paused.borrow() {
                continue;
            }
            let Some(outcome) = self.poll(&mut attempt).await else {
                break;
            };
            attempt.after(
                outcome.as_ref().map(|_| ()).map_err(|e| e.class),
                Instant::now(),
            );
            match outcome {
                Ok(messages) => {
                    if retry.failures() > 0 {
                        tracing::info!(after_failures = retry.failures(), "SQS receiving again");
                    }
                    retry.succeeded();
                    self.accept(messages).await;
                    self.polling.send_replace(false);
                }
                Err(e) => {
                    self.polling.send_replace(false);
                    // Every failure is waited out: a receive that SQS refuses as a request is no different.
                    let class = if e.class.retryable() {
                        e.class
                    } else {
                        Class::Transient
                    };
                    if retry.failed(class, &e).await.is_err() {
                        break;
                    }
                }
            }
        }
        self.polling.send_replace(false);
        tracing::debug!("receive loop stopped");
    }

    /// Wait for capacity, for the pause to lift and for account-wide errors to clear (or the probe); false when
    /// receiving stops.
    async fn wait_for_room(&mut self) -> bool {
        if self.stop.is_cancelled() {
            return false;
        }
        let mut held_rx = self.held.groups_held();
        let max_groups = self.max_groups;
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => false,
            r = async {
                self.paused.wait_for(|p| !*p).await.map(|_| ())?;
                held_rx.wait_for(|n| *n < max_groups).await.map(|_| ())?;
                let _ = tokio::time::timeout(BLOCKED_PROBE, self.admission.wait_unblocked()).await;
                Ok::<(), watch::error::RecvError>(())
            } => r.is_ok(),
        }
    }

    /// One receive. The poll is never abandoned while the worker runs: SQS may already have handed it
    /// messages, and a dropped poll would hide them (and stall their groups) for a whole visibility timeout.
    /// Measured on the emulator: ten messages stuck for 120 s. A drain ends it after a short grace instead of
    /// waiting out the long poll, and asks SQS again with the same attempt id (see [`Self::recover`]); the
    /// drain releases nothing until that answer is in, so no poll can take back what the drain releases. None:
    /// receiving stopped before the poll went out.
    async fn poll(&self, attempt: &mut AttemptId) -> Option<Result<Vec<Received>, SqsError>> {
        let free = self
            .max_groups
            .saturating_sub(*self.held.groups_held().borrow())
            .clamp(1, 10) as i32;
        let wait = self.wait_time.as_secs() as i32;
        let vis = self.visibility_timeout.as_secs() as i32;
        let attempt_id = attempt.current(Instant::now()).to_owned();
        self.polling.send_replace(true);
        // A drain cancels `stop` before it looks at `polling`: either it sees this poll, or we see it.
        if self.stop.is_cancelled() {
            return None;
        }
        let outcome = {
            let poll = self.queue.receive(free, wait, vis, &attempt_id);
            tokio::pin!(poll);
            tokio::select! {
                biased;
                r = &mut poll => Some(r),
                _ = async { self.stop.cancelled().await; tokio::time::sleep(POLL_GRACE).await } => None,
            }
        };
        // Out of the select, the ended poll's future is dropped (its connection closed) before we ask again.
        Some(match outcome {
            Some(r) => r,
            None => self.recover(free, vis, &attempt_id).await,
        })
    }

    /// The poll in flight was ended by a drain: ask SQS again with the same `ReceiveRequestAttemptId` and no
    /// wait. For a FIFO queue SQS answers a repeated attempt id (for 5 minutes, while none of its messages was
    /// deleted or had its visibility changed) with the same messages and receipt handles, so whatever the ended
    /// poll was handed comes back here and is released at once instead of staying hidden for a visibility
    /// timeout; if it was handed nothing, this is an ordinary immediate receive (what it brings is released
    /// too). Tried again on a transport failure or timeout, with the same id, until the drain's budget ends.
    ///
    /// A loop over the driver's waits rather than `Retry::run`: this task must be `Send`, which rustc cannot
    /// yet prove of `run`'s future (its attempt is an `AsyncFnMut`, whose future is generic over a lifetime).
    async fn recover(
        &self,
        max: i32,
        vis: i32,
        attempt_id: &str,
    ) -> Result<Vec<Received>, SqsError> {
        let recovered = Retry::new("ReceiveMessage")
            .budget(self.budget.get())
            .attempt_limit(RECOVER_ATTEMPT)
            .cancel(&self.abort)
            .says("asking the ended poll's attempt id again")
            .run_fn(
                |_| self.queue.receive(max, 0, vis, attempt_id),
                // Anything but a transport failure is SQS's answer: this attempt handed out nothing more.
                |e: &SqsError| match e.class {
                    Class::Transient => Class::Transient,
                    _ => Class::Request,
                },
            )
            .await;
        match recovered {
            Ok(messages) => {
                tracing::info!(
                    recovered = messages.len(),
                    attempt_id,
                    "drain: the poll in flight was ended; asked again with its attempt id"
                );
                Ok(messages)
            }
            Err(gave_up) => {
                let tries = gave_up.attempts;
                let last = gave_up
                    .last
                    .unwrap_or_else(|| SqsError::no_answer("ReceiveMessage", RECOVER_ATTEMPT));
                if last.class == Class::Transient {
                    tracing::warn!(cause = %last, tries, "drain: the ended poll could not be asked again within the deadline; what SQS handed it returns when its visibility times out");
                }
                Err(last)
            }
        }
    }

    /// Take received messages into their groups, starting a task for each new group. A poll that was out when
    /// a drain began brings messages we must not take (released at once); one that was out when we paused
    /// brings new groups we must not take (messages of groups we serve are fine).
    async fn accept(&self, messages: Vec<Received>) {
        let stopping = self.stop.is_cancelled();
        let refuse = refusal(stopping, *self.paused.borrow());
        let admission = self
            .held
            .admit(messages, Instant::now(), self.visibility_timeout, refuse);
        for group in admission.new_groups {
            self.groups.spawn(group);
        }
        if !admission.refused.is_empty() {
            let reason = if stopping { "drain" } else { "paused" };
            self.releaser
                .change_visibility(admission.refused, 0, reason)
                .await;
        }
    }
}

/// What a poll may not bring in: nothing new once a drain began, no new group while paused.
fn refusal(stopping: bool, paused: bool) -> Refuse {
    match (stopping, paused) {
        (true, _) => Refuse::All,
        (false, true) => Refuse::NewGroups,
        (false, false) => Refuse::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::super::held::Admission;
    use super::super::message;
    use super::*;

    const VIS: Duration = Duration::from_secs(12);

    #[test]
    fn a_receive_keeps_its_attempt_id_only_while_retrying_a_transport_failure() {
        let start = Instant::now();
        let mut a = AttemptId::new(start);
        let first = a.current(start).to_owned();
        a.after(Err(Class::Transient), start);
        assert_eq!(
            a.current(start),
            first,
            "asked again after a transport failure"
        );
        a.after(Err(Class::Throttled), start);
        let second = a.current(start).to_owned();
        assert_ne!(second, first, "SQS answered: it handed out nothing");
        a.after(Ok(()), start);
        let third = a.current(start).to_owned();
        assert_ne!(third, second);
        // Kept for 4 minutes at most, whatever happens.
        let later = start + ATTEMPT_ID_KEPT + Duration::from_secs(1);
        assert_ne!(a.current(later), third);
    }

    #[test]
    fn a_poll_that_returns_after_a_pause_or_a_drain_brings_in_only_what_may_be_taken() {
        let held = SharedHeld::default();
        let now = Instant::now();
        let take = |ms: Vec<Received>, stopping, paused| {
            held.admit(ms, now, VIS, refusal(stopping, paused))
        };
        assert_eq!(
            take(vec![message("a1", "a", 1)], false, false),
            Admission {
                new_groups: vec!["a".into()],
                refused: vec![]
            }
        );
        // Paused: more of a held group is fine, a new group is handed back.
        let paused = take(
            vec![message("a2", "a", 2), message("b1", "b", 1)],
            false,
            true,
        );
        assert!(paused.new_groups.is_empty());
        assert_eq!(paused.refused.len(), 1);
        assert_eq!(paused.refused[0].message_id, "b1");
        // Draining: nothing new; a redelivery of a held message refreshes its handle.
        let mut again = message("a1", "a", 1);
        again.receipt_handle = "newer".into();
        let drained = take(vec![again, message("a3", "a", 3)], true, false);
        assert_eq!(drained.refused.len(), 1);
        assert_eq!(drained.refused[0].message_id, "a3");
        assert_eq!(held.handles(&["a1".into()])[0].receipt_handle, "newer");
        assert_eq!(held.counts(), (1, 2));
    }
}
