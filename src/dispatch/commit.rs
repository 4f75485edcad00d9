//! The committer: many groups' runs in one store commit, the groups answered as soon as DynamoDB has the
//! records, the deletes after that in the background.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use super::Dispatcher;
use crate::store::{Applied, CommitContext, Run, RunOutcome, MAX_ACTIONS};
use crate::telemetry::{DELETE_FAILURES, ORDERS, ORDER_LATENCY};

/// Longest the committer waits for more groups' runs to fill a commit (and its delete batch).
const COMMIT_LINGER: Duration = Duration::from_millis(3);

pub(super) struct CommitRequest {
    pub run: Run,
    pub message_ids: Vec<String>,
    pub reply: oneshot::Sender<RunOutcome>,
}

impl Dispatcher {
    pub(super) async fn commit_loop(self, mut rx: mpsc::UnboundedReceiver<CommitRequest>) {
        let permits = Arc::new(Semaphore::new(self.inner.cfg.max_commits));
        let mut carry: Option<CommitRequest> = None;
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let first = match carry.take() {
                Some(c) => c,
                None => tokio::select! {
                    c = rx.recv() => match c {
                        Some(c) => c,
                        None => break,
                    },
                    _ = self.inner.shutdown.cancelled() => break,
                },
            };
            // Everything that queued up while the permits were busy goes into this commit, and the runs
            // of one receive (its groups' tasks submit microseconds apart) are gathered for up to
            // COMMIT_LINGER until ten orders are in: one batch of inserts and one full DeleteMessageBatch instead
            // of several small ones. Under load the batches grow by themselves.
            let mut actions = first.run.records.len() + 1;
            let mut orders = first.run.records.len();
            let mut batch = vec![first];
            let linger_until = tokio::time::Instant::now() + COMMIT_LINGER;
            loop {
                let next = match rx.try_recv() {
                    Ok(next) => next,
                    Err(_) if orders >= 10 => break,
                    Err(_) => match tokio::time::timeout_at(linger_until, rx.recv()).await {
                        Ok(Some(next)) => next,
                        _ => break,
                    },
                };
                let size = next.run.records.len() + 1;
                if actions + size > MAX_ACTIONS {
                    carry = Some(next);
                    break;
                }
                actions += size;
                orders += next.run.records.len();
                batch.push(next);
            }
            let me = self.clone();
            self.inner.flights.spawn(async move {
                me.commit_batch(batch).await;
                // The permit bounds commits in flight, not deletes.
                drop(permit);
            });
        }
    }

    /// Commit one batch, answering each group as soon as its run is finished (one slow run does not hold up
    /// the others), and delete what each round settled in the background.
    async fn commit_batch(&self, batch: Vec<CommitRequest>) {
        let inner = &self.inner;
        let runs: Vec<Run> = batch.iter().map(|b| b.run.clone()).collect();
        let ctx = CommitContext {
            budget: self.budget(),
            abort: &inner.control.abort,
            health: &inner.health,
        };
        let mut batch: Vec<Option<CommitRequest>> = batch.into_iter().map(Some).collect();
        let me = self.clone();
        inner
            .store
            .commit_each(&runs, &ctx, &mut |done| {
                let ids = me.answer(&mut batch, done);
                if !ids.is_empty() {
                    let d = me.clone();
                    me.inner.flights.spawn(async move { d.delete(ids).await });
                }
            })
            .await;
    }

    /// Answer the groups of the runs that finished together; return their settled messages (to delete).
    fn answer(
        &self,
        batch: &mut [Option<CommitRequest>],
        done: Vec<(usize, RunOutcome)>,
    ) -> Vec<String> {
        let inner = &self.inner;
        let done: Vec<(CommitRequest, RunOutcome)> = done
            .into_iter()
            .filter_map(|(i, o)| Some((batch.get_mut(i)?.take()?, o)))
            .collect();
        let mut ids: Vec<String> = Vec::new();
        let now = Instant::now();
        {
            let mut held = inner.held.lock().expect("held lock");
            for (req, outcome) in &done {
                let settled = &req.message_ids[..outcome.applied.len()];
                held.committed(settled);
                for id in settled {
                    if let Some(l) = held.lease(id) {
                        metrics::histogram!(ORDER_LATENCY)
                            .record(now.saturating_duration_since(l.received_at));
                    }
                }
                ids.extend(settled.iter().cloned());
            }
        }
        for (req, outcome) in done {
            for (rec, a) in req.run.records.iter().zip(&outcome.applied) {
                match a {
                    Applied::New { .. } => {
                        metrics::counter!(ORDERS, "status" => rec.status.label()).increment(1);
                    }
                    Applied::Conflict => {
                        tracing::warn!(order = %rec.order_key, group = %rec.group_id, message_id = %rec.sqs_message_id, payload_sha256 = %rec.payload_sha256, "conflict: an order with this OrderID and another payload is already recorded; not applied");
                    }
                    Applied::Duplicate => {
                        tracing::debug!(order = %rec.order_key, message_id = %rec.sqs_message_id, "duplicate: already recorded");
                    }
                }
            }
            inner
                .finished
                .fetch_add(outcome.applied.len() as u64, Ordering::Relaxed);
            let _ = req.reply.send(outcome);
        }
        ids
    }

    /// Delete committed messages and drop their leases; until deleted they stay held and extended. A refused
    /// delete (an expired receipt handle) is harmless: the redelivery is recognised as a duplicate.
    async fn delete(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let handles = self.inner.held.lock().expect("held lock").handles(&ids);
        let outcome = self.inner.queue.delete(&handles, self.budget()).await;
        for (id, code) in &outcome.refused {
            metrics::counter!(DELETE_FAILURES, "code" => code.to_string()).increment(1);
            tracing::warn!(message_id = %id, code = %code, "delete refused (receipt handle expired?); the redelivery will be recognised as a duplicate");
        }
        if let Some(e) = &outcome.last_error {
            tracing::warn!(messages = outcome.unsent.len(), cause = %e, "delete not done within its budget; the messages come back after their visibility timeout and are recognised as duplicates");
        }
        let mut held = self.inner.held.lock().expect("held lock");
        held.forget(&ids);
        drop(held);
        self.publish();
    }
}
