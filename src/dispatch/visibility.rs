//! Visibility: the [`Heartbeat`] that keeps held messages hidden while they are worked on (or wait for
//! DynamoDB, or for their delete), and the [`Releaser`] that hands them back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::held::{Due, SharedHeld};
use super::SharedBudget;
use crate::queue::{BatchOutcome, Handle, Queue, BATCH_ATTEMPT_TIMEOUT};
use crate::retry::Budget;
use crate::telemetry::{RELEASES, VISIBILITY_EXTENSIONS, VISIBILITY_LOST};

/// Hands messages already taken out of the held state back to SQS.
#[derive(Clone)]
pub(super) struct Releaser {
    queue: Queue,
    budget: SharedBudget,
    /// Outside a drain a release need not outlast the visibility timeout: by then the message is back anyway.
    visibility_timeout: Duration,
    /// Held by a visibility extension while its call is out, so a release can wait for it: an extension that
    /// landed after a release would hide the released message again for a whole timeout.
    extending: Arc<tokio::sync::Mutex<()>>,
    /// Messages SQS confirmed released since start.
    released: Arc<AtomicU64>,
}

impl Releaser {
    pub(super) fn new(queue: Queue, budget: SharedBudget, visibility_timeout: Duration) -> Self {
        Releaser {
            queue,
            budget,
            visibility_timeout,
            extending: Arc::default(),
            released: Arc::default(),
        }
    }

    /// The lock an extension holds while its call is out (the heartbeat's).
    pub(super) fn extending(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.extending.clone()
    }

    /// Messages SQS confirmed released since start.
    pub(super) fn released(&self) -> u64 {
        self.released.load(Ordering::Relaxed)
    }

    /// Release messages already taken out of the held state: visibility `visibility` (0 hands them to the next
    /// receive at once), in the order given (group, then sequence).
    pub(super) async fn release(
        &self,
        handles: Vec<Handle>,
        visibility: i32,
        reason: &'static str,
    ) {
        if handles.is_empty() {
            return;
        }
        // Wait for an extension in flight: it may include these messages, and landing after the release it
        // would hide them again. The lock is not held across our own calls.
        drop(self.extending.lock().await);
        self.change_visibility(handles, visibility, reason).await;
    }

    /// Set the visibility of messages we no longer track (a poll's refused messages need not wait for an
    /// extension: none was ever sent for them); count what SQS confirmed.
    pub(super) async fn change_visibility(
        &self,
        handles: Vec<Handle>,
        visibility: i32,
        reason: &'static str,
    ) {
        let budget = self
            .budget
            .get()
            .min(Budget::Until(Instant::now() + self.visibility_timeout));
        let outcome = self
            .queue
            .change_visibility(&handles, visibility, budget)
            .await;
        for (id, code) in &outcome.refused {
            tracing::warn!(message_id = %id, code = %code, "release refused; the message returns when its visibility times out");
        }
        if let Some(e) = &outcome.last_error {
            tracing::warn!(messages = outcome.unsent.len(), cause = %e, "release not done within its budget; the messages return when their visibility times out");
        }
        let n = outcome.ok.len() as u64;
        metrics::counter!(RELEASES, "reason" => reason).increment(n);
        self.released.fetch_add(n, Ordering::Relaxed);
    }
}

/// Extends the visibility of every held message before half its timeout has passed, so long work (or a
/// DynamoDB outage, or a slow delete) never lets a message return to another worker while we still hold it.
/// An extension counts only once SQS confirmed it: a failed call is simply due again on the next tick.
pub(super) struct Heartbeat {
    pub(super) held: SharedHeld,
    pub(super) queue: Queue,
    /// The releases' lock (see [`Releaser`]): held while an extension's call is out.
    pub(super) extending: Arc<tokio::sync::Mutex<()>>,
    pub(super) budget: SharedBudget,
    pub(super) visibility_timeout: Duration,
    /// The engine's shutdown: the heartbeat ends.
    pub(super) shutdown: CancellationToken,
}

impl Heartbeat {
    pub(super) async fn run(self) {
        let every = (self.visibility_timeout / 6).max(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            self.tick(every).await;
        }
    }

    /// Extend what is due; one tick's calls end before the next tick (and within a drain's budget).
    async fn tick(&self, every: Duration) {
        let vis = self.visibility_timeout;
        let serial = self.extending.lock().await;
        let sent_at = Instant::now();
        let due = self.held.due(sent_at, vis / 2);
        if due.is_empty() {
            return;
        }
        let budget = self
            .budget
            .get()
            .min(Budget::Until(sent_at + every.min(BATCH_ATTEMPT_TIMEOUT)));
        let handles: Vec<Handle> = due.iter().map(|d| d.handle.clone()).collect();
        let outcome = self
            .queue
            .change_visibility(&handles, vis.as_secs() as i32, budget)
            .await;
        drop(serial);
        settle(&self.held, &due, &outcome, sent_at, vis);
    }
}

/// Record what SQS said to one tick's extensions (the heartbeat's step after its call), and say so.
fn settle(
    held: &SharedHeld,
    due: &[Due],
    outcome: &BatchOutcome,
    sent_at: Instant,
    visibility: Duration,
) {
    for (id, code) in held.extensions(due, outcome, sent_at, visibility) {
        metrics::counter!(VISIBILITY_LOST, "code" => code.clone()).increment(1);
        tracing::warn!(message_id = %id, code = %code, "visibility extension refused: the hold is lost and another worker may receive the message (the write stays idempotent)");
    }
    metrics::counter!(VISIBILITY_EXTENSIONS).increment(outcome.ok.len() as u64);
    if let Some(e) = &outcome.last_error {
        tracing::warn!(cause = %e, count = outcome.unsent.len(), "visibility extension failed; retrying on the next tick");
    }
}

#[cfg(test)]
mod tests {
    use super::super::held::Refuse;
    use super::super::message;
    use super::*;

    const VIS: Duration = Duration::from_secs(12);

    #[test]
    fn a_tick_records_confirmed_extensions_loses_refused_ones_and_leaves_unsent_ones_due() {
        let held = SharedHeld::default();
        let now = Instant::now();
        let ms = vec![
            message("ok", "g", 1),
            message("no", "g", 2),
            message("later", "g", 3),
        ];
        held.admit(ms, now, VIS, Refuse::Nothing);
        let sent_at = now + Duration::from_secs(7);
        let due = held.due(sent_at, VIS / 2);
        assert_eq!(due.len(), 3);
        let outcome = BatchOutcome {
            ok: vec!["ok".into()],
            refused: vec![("no".into(), "ReceiptHandleIsInvalid".into())],
            unsent: vec![due[2].handle.clone()],
            last_error: None,
        };
        settle(&held, &due, &outcome, sent_at, VIS);
        let still: Vec<String> = held
            .due(sent_at + Duration::from_secs(1), VIS / 2)
            .into_iter()
            .map(|d| d.handle.message_id)
            .collect();
        // "ok" is hidden for another timeout, "no" is lost (never extended again), "later" is tried again.
        assert_eq!(still, ["later"]);
    }
}
