//! The receive loop: long polls while there is room, the worker is not paused or blocked, and no drain has
//! begun; what it brings goes into the held state.

use std::time::Duration;

use tokio::time::Instant;

use super::held::Admitted;
use super::Dispatcher;
use crate::queue::{new_attempt_id, Handle, Received};
use crate::retry::{backoff_for, Class};

/// While an account-wide error blocks the worker, receive anyway once this often: a successful receive is the
/// probe that lifts an SQS block no held message is left to retry, and what it brings stays held (a blocked
/// commit keeps its messages, so no receive count is burned).
const BLOCKED_PROBE: Duration = Duration::from_secs(30);

/// How long a drain lets the poll in flight come back by itself before ending it: a poll that is answering
/// right now is cheaper to read than to recover; one that waits for messages would wait up to `--wait-time`.
const POLL_GRACE: Duration = Duration::from_millis(100);

/// Longest one recovery attempt (an immediate receive) may take before it is tried again, same attempt id.
const RECOVER_ATTEMPT: Duration = Duration::from_secs(2);

impl Dispatcher {
    pub(super) async fn receive_loop(self) {
        let inner = &self.inner;
        let cfg = &inner.cfg;
        let stop = inner.control.stop_receiving.clone();
        let mut attempt_id = new_attempt_id();
        let mut attempt_started = Instant::now();
        let mut failures = 0u32;
        let mut held_rx = inner.groups_held.subscribe();
        let mut paused_rx = inner.paused.subscribe();
        let max_groups = cfg.max_groups;
        loop {
            if stop.is_cancelled() {
                break;
            }
            // Wait for capacity, for the pause to lift and for account-wide errors to clear, or stop.
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                r = async {
                    paused_rx.wait_for(|p| !*p).await.map(|_| ())?;
                    held_rx.wait_for(|n| *n < max_groups).await.map(|_| ())?;
                    let _ = tokio::time::timeout(BLOCKED_PROBE, inner.health.wait_unblocked()).await;
                    Ok::<(), tokio::sync::watch::error::RecvError>(())
                } => { if r.is_err() { break; } }
            }
            if *inner.paused.borrow() {
                continue;
            }
            let free = max_groups
                .saturating_sub(*inner.groups_held.borrow())
                .clamp(1, 10);
            let wait = cfg.wait_time.as_secs() as i32;
            let vis = cfg.visibility_timeout.as_secs() as i32;
            // A receive retried after a transport failure keeps its attempt id for up to 5 minutes, so SQS
            // hands back the same messages instead of hiding them for a whole visibility timeout.
            if attempt_started.elapsed() > Duration::from_secs(240) {
                attempt_id = new_attempt_id();
                attempt_started = Instant::now();
            }
            // The poll is never abandoned while the worker runs: SQS may already have handed it messages, and a
            // dropped poll would hide them (and stall their groups) for a whole visibility timeout. Measured on
            // the emulator: ten messages stuck for 120 s. A drain ends it after a short grace instead of waiting
            // out the long poll, and asks SQS again with the same attempt id (see `recover`); the drain releases
            // nothing until that answer is in, so no poll can take back what the drain releases.
            inner.polling.send_replace(true);
            // A drain cancels `stop` before it looks at `polling`: either it sees this poll, or we see it.
            if stop.is_cancelled() {
                break;
            }
            let outcome = {
                let poll = inner.queue.receive(free as i32, wait, vis, &attempt_id);
                tokio::pin!(poll);
                tokio::select! {
                    biased;
                    r = &mut poll => Some(r),
                    _ = async { stop.cancelled().await; tokio::time::sleep(POLL_GRACE).await } => None,
                }
            };
            // Out of the select, the aborted poll's future is dropped (its connection closed) before we ask again.
            let outcome = match outcome {
                Some(r) => r,
                None => self.recover(free as i32, vis, &attempt_id).await,
            };
            match outcome {
                Ok(messages) => {
                    if failures > 0 {
                        tracing::info!(after_failures = failures, "SQS receiving again");
                    }
                    failures = 0;
                    attempt_id = new_attempt_id();
                    attempt_started = Instant::now();
                    self.accept(messages).await;
                    inner.polling.send_replace(false);
                }
                Err(e) => {
                    inner.polling.send_replace(false);
                    if failures == 0 || failures.is_power_of_two() {
                        tracing::warn!(
                            waiting_for = "SQS",
                            failures = failures + 1,
                            class = e.class.as_str(),
                            cause = %e,
                            "receive failed; retrying with backoff"
                        );
                    }
                    if e.class != Class::Transient {
                        // Not a transport failure: SQS answered, so this attempt handed out nothing.
                        attempt_id = new_attempt_id();
                        attempt_started = Instant::now();
                    }
                    let pause = backoff_for(e.class, failures);
                    failures += 1;
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        inner.polling.send_replace(false);
        tracing::debug!("receive loop stopped");
    }

    /// The poll in flight was ended by a drain: ask SQS again with the same `ReceiveRequestAttemptId` and no
    /// wait. For a FIFO queue SQS answers a repeated attempt id (for 5 minutes, while none of its messages was
    /// deleted or had its visibility changed) with the same messages and receipt handles, so whatever the ended
    /// poll was handed comes back here and is released at once instead of staying hidden for a visibility
    /// timeout; if it was handed nothing, this is an ordinary immediate receive (what it brings is released
    /// too). Tried again on a transport failure or timeout, with the same id, until the drain's budget ends.
    async fn recover(
        &self,
        max: i32,
        vis: i32,
        attempt_id: &str,
    ) -> Result<Vec<Received>, crate::queue::SqsError> {
        let inner = &self.inner;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let budget = self.budget();
            let limit = budget.attempt_limit(RECOVER_ATTEMPT, Instant::now());
            let last =
                match tokio::time::timeout(limit, inner.queue.receive(max, 0, vis, attempt_id))
                    .await
                {
                    Ok(Ok(messages)) => {
                        tracing::info!(
                            recovered = messages.len(),
                            tries,
                            attempt_id,
                            "drain: the poll in flight was ended; asked again with its attempt id"
                        );
                        return Ok(messages);
                    }
                    Ok(Err(e)) if e.class != Class::Transient => return Err(e),
                    Ok(Err(e)) => e,
                    Err(_) => crate::queue::SqsError::no_answer("ReceiveMessage", limit),
                };
            if budget.expired(Instant::now()) || inner.control.abort.is_cancelled() {
                tracing::warn!(cause = %last, tries, "drain: the ended poll could not be asked again within the deadline; what SQS handed it returns when its visibility times out");
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Take received messages into their groups, starting a task for each new group. A poll that was out when
    /// a drain began brings messages we must not take (released at once); one that was out when we paused
    /// brings new groups we must not take (messages of groups we serve are fine).
    async fn accept(&self, messages: Vec<Received>) {
        let inner = &self.inner;
        let now = Instant::now();
        let mut late = Vec::new();
        let reason = if inner.control.stop_receiving.is_cancelled() {
            "drain"
        } else {
            "paused"
        };
        {
            let mut held = inner.held.lock().expect("held lock");
            let stopping = inner.control.stop_receiving.is_cancelled();
            let paused = *inner.paused.borrow();
            for m in messages {
                let refuse = stopping || (paused && !held.holds_group(&m.group_id));
                if refuse && held.lease(&m.message_id).is_none() {
                    late.push(Handle {
                        message_id: m.message_id.clone(),
                        receipt_handle: m.receipt_handle.clone(),
                    });
                    continue;
                }
                if let Admitted::NewGroup(group) = held.admit(m, now, inner.cfg.visibility_timeout)
                {
                    inner.groups.spawn(self.clone().group_task(group));
                }
            }
        }
        self.publish();
        if !late.is_empty() {
            self.change_visibility(late, 0, reason).await;
        }
    }
}
