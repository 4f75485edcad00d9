//! Visibility: the heartbeat that keeps held messages hidden while they are worked on (or wait for DynamoDB,
//! or for their delete), and the release that hands them back.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::Dispatcher;
use crate::queue::{Handle, BATCH_ATTEMPT_TIMEOUT};
use crate::retry::Budget;
use crate::telemetry::{RELEASES, VISIBILITY_EXTENSIONS, VISIBILITY_LOST};

impl Dispatcher {
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
        drop(self.inner.visibility.lock().await);
        self.change_visibility(handles, visibility, reason).await;
    }

    /// Set the visibility of messages we no longer track; count what SQS confirmed.
    pub(super) async fn change_visibility(
        &self,
        handles: Vec<Handle>,
        visibility: i32,
        reason: &'static str,
    ) {
        // Outside a drain a release need not outlast the visibility timeout: by then the message is back anyway.
        let budget = self.budget().min(Budget::Until(
            Instant::now() + self.inner.cfg.visibility_timeout,
        ));
        let outcome = self
            .inner
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
        self.inner.released.fetch_add(n, Ordering::Relaxed);
    }

    /// Extend the visibility of every held message before half its timeout has passed, so long work (or a
    /// DynamoDB outage, or a slow delete) never lets a message return to another worker while we still hold it.
    /// An extension counts only once SQS confirmed it: a failed call is simply due again on the next tick.
    pub(super) async fn heartbeat_loop(self) {
        let vis = self.inner.cfg.visibility_timeout;
        let every = (vis / 6).max(Duration::from_millis(500));
        let stop = self.inner.shutdown.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let serial = self.inner.visibility.lock().await;
            let sent_at = Instant::now();
            let due = self
                .inner
                .held
                .lock()
                .expect("held lock")
                .due(sent_at, vis / 2);
            if due.is_empty() {
                continue;
            }
            // One tick's calls must end before the next tick (and within a drain's budget).
            let budget = self
                .budget()
                .min(Budget::Until(sent_at + every.min(BATCH_ATTEMPT_TIMEOUT)));
            let handles: Vec<Handle> = due.iter().map(|d| d.handle.clone()).collect();
            let outcome = self
                .inner
                .queue
                .change_visibility(&handles, vis.as_secs() as i32, budget)
                .await;
            drop(serial);
            let ok: std::collections::HashSet<&str> =
                outcome.ok.iter().map(String::as_str).collect();
            let refused: std::collections::HashMap<&str, &str> = outcome
                .refused
                .iter()
                .map(|(id, c)| (id.as_str(), c.as_str()))
                .collect();
            let mut held = self.inner.held.lock().expect("held lock");
            for d in &due {
                let id = d.handle.message_id.as_str();
                if ok.contains(id) {
                    held.extended(id, d.generation, sent_at, vis);
                } else if let Some(code) = refused.get(id) {
                    if held.lost(id, d.generation) {
                        metrics::counter!(VISIBILITY_LOST, "code" => code.to_string()).increment(1);
                        tracing::warn!(message_id = %id, code = %code, "visibility extension refused: the hold is lost and another worker may receive the message (the write stays idempotent)");
                    }
                }
            }
            drop(held);
            metrics::counter!(VISIBILITY_EXTENSIONS).increment(outcome.ok.len() as u64);
            if let Some(e) = &outcome.last_error {
                tracing::warn!(cause = %e, count = outcome.unsent.len(), "visibility extension failed; retrying on the next tick");
            }
        }
    }
}
