//! One group's task: take its messages strictly one after another, evaluate each, hand the run to the
//! committer, and stop when the group's queue is empty (or a drain says so).

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::commit::CommitRequest;
use super::{now_rfc3339_millis, Dispatcher};
use crate::order::{evaluate, Verdict};
use crate::queue::Received;
use crate::retry::{backoff_for, Class};
use crate::schema::Status;
use crate::store::{Applied, Record, Run, StoreError};
use crate::telemetry::ORDERS;

/// Most orders one group commits in one run. A claim lists its run's SequenceNumbers (about 23 bytes each as
/// DynamoDB sizes them) and may carry an unfinished run forward: 2 x 16 entries keep the group row under 1 KB,
/// so a claim stays one write unit. (A receive returns at most 10 of a group anyway.)
const RUN_MAX: usize = 16;
/// Longest a run collects orders before it is committed.
const RUN_LINGER: Duration = Duration::from_millis(50);

impl Dispatcher {
    /// Serve one group until its queue is empty: strictly one message after another.
    pub(super) async fn group_task(self, group: String) {
        let inner = &self.inner;
        loop {
            let mut run: Vec<Record> = Vec::new();
            let mut ids: Vec<String> = Vec::new();
            let run_started = Instant::now();
            loop {
                // Instant work batches everything held; slow work commits each order soon after it is done
                // (a record should not wait for the work of the orders behind it).
                let lingered = !run.is_empty() && run_started.elapsed() >= RUN_LINGER;
                if inner.control.draining.is_cancelled() || run.len() >= RUN_MAX || lingered {
                    break;
                }
                let next = inner.held.lock().expect("held lock").next(&group);
                let Some(m) = next else { break };
                ids.push(m.message_id.clone());
                if !inner.cfg.work_delay.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(inner.cfg.work_delay) => {}
                        _ = inner.control.abort.cancelled() => {
                            self.give_up(&group, &ids, 0, "deadline").await;
                            return;
                        }
                    }
                }
                run.push(self.record(&m));
            }
            if run.is_empty() {
                // Nothing taken: the queue is empty (done) or we are draining (release the rest).
                let rest = {
                    let mut held = inner.held.lock().expect("held lock");
                    if inner.control.draining.is_cancelled() {
                        Some(held.close(&group))
                    } else if held.close_if_empty(&group) {
                        Some(Vec::new())
                    } else {
                        None
                    }
                };
                let Some(rest) = rest else { continue };
                self.publish();
                self.release(rest, 0, "drain").await;
                return;
            }
            if !self.commit_run(&group, run, ids).await {
                return;
            }
        }
    }

    /// Commit one run and wait for the answer. False when the group task must end (the rest was released).
    /// A run deferred by bad data in its group row is sent again with backoff, its messages still held.
    async fn commit_run(&self, group: &str, mut run: Vec<Record>, mut ids: Vec<String>) -> bool {
        let inner = &self.inner;
        let mut deferrals = 0u32;
        loop {
            let (reply, rx) = oneshot::channel();
            let request = CommitRequest {
                run: Run {
                    group_id: group.to_owned(),
                    records: run.clone(),
                },
                message_ids: ids.clone(),
                reply,
            };
            if inner.commits.send(request).is_err() {
                self.give_up(group, &ids, 0, "shutdown").await;
                return false;
            }
            // The store itself honours the drain's abort and budget, so the answer comes; an answer is the
            // truth about what was written (waiting on the abort here too reported committed runs as not).
            let Ok(outcome) = rx.await else {
                self.give_up(group, &ids, 0, "shutdown").await;
                return false;
            };
            for a in &outcome.applied {
                match a {
                    Applied::New { .. } => {}
                    Applied::Duplicate => {
                        metrics::counter!(ORDERS, "status" => "duplicate").increment(1)
                    }
                    Applied::Conflict => {
                        metrics::counter!(ORDERS, "status" => "conflict").increment(1)
                    }
                }
            }
            let settled = outcome.applied.len();
            let Some(e) = outcome.error else {
                return true;
            };
            if let StoreError::Deferred(why) = &e {
                run.drain(..settled);
                ids.drain(..settled);
                if deferrals == 0 || deferrals.is_power_of_two() {
                    tracing::warn!(group = %group, cause = %why, orders = ids.len(), tries = deferrals + 1, "group waits for its row to be fixed; its messages stay held");
                }
                let pause = backoff_for(Class::Throttled, deferrals);
                deferrals += 1;
                tokio::select! {
                    _ = tokio::time::sleep(pause) => continue,
                    _ = inner.control.abort.cancelled() => {
                        self.give_up(group, &ids, 0, "deadline").await;
                        return false;
                    }
                }
            }
            let (visibility, reason) = match &e {
                StoreError::Aborted => (0, "deadline"),
                // DynamoDB refuses even the REJECTED stand-in: keep the message out of sight for a while so a
                // fix can happen without a hot loop; the group stays locked behind it, so order holds.
                _ => (60, "commit-failed"),
            };
            if matches!(e, StoreError::Aborted) {
                tracing::info!(group = %group, settled, released = ids.len() - settled, "drain deadline: releasing the rest of the run and of its group (what it claimed is written by the next holder, at the same positions)");
            } else {
                tracing::error!(group = %group, cause = %e, settled, unsettled = ids.len() - settled, "run not committed; releasing it and the rest of its group");
            }
            self.give_up(group, &ids[settled..], visibility, reason)
                .await;
            return false;
        }
    }

    /// Release the unsettled part of a run, and everything held behind it in its group.
    async fn give_up(
        &self,
        group: &str,
        run_ids: &[String],
        visibility: i32,
        reason: &'static str,
    ) {
        let (run, rest) = {
            let mut held = self.inner.held.lock().expect("held lock");
            (held.take(run_ids), held.close(group))
        };
        self.publish();
        self.release(run, visibility, reason).await;
        self.release(rest, 0, reason).await;
    }

    fn record(&self, m: &Received) -> Record {
        let e = evaluate(&m.body, &m.message_id, &m.group_id);
        let (status, reason, total_cents, currency) = match e.verdict {
            Verdict::Accepted {
                total_cents,
                currency,
            } => (Status::Accepted, None, Some(total_cents), Some(currency)),
            Verdict::Rejected { reason } => (Status::Rejected, Some(reason), None, None),
        };
        Record {
            order_key: e.order_key,
            group_id: m.group_id.clone(),
            status,
            reason,
            total_cents,
            currency,
            item_count: e.item_count,
            payload_sha256: e.payload_sha256,
            sqs_message_id: m.message_id.clone(),
            sqs_sequence_number: m.sequence_number.clone(),
            receive_count: m.receive_count,
            processed_by: self.inner.instance_id.name().to_owned(),
            processed_at: now_rfc3339_millis(),
        }
    }
}
