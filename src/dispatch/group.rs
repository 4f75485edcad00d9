//! One group's task: take its messages strictly one after another, evaluate each, commit the run, and stop
//! when the group's queue is empty (or a drain says so).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::commit::Committer;
use super::held::{SharedHeld, Take};
use super::now_rfc3339_millis;
use super::visibility::Releaser;
use crate::instance::InstanceId;
use crate::order::{evaluate, Verdict};
use crate::queue::Received;
use crate::retry::{Class, Retry};
use crate::schema::Status;
use crate::store::{Applied, Record, Run, StoreError};
use crate::telemetry::ORDERS;

/// Most orders one group commits in one run. A claim lists its run's SequenceNumbers (about 23 bytes each as
/// DynamoDB sizes them) and may carry an unfinished run forward: 2 x 16 entries keep the group row under 1 KB,
/// so a claim stays one write unit. (A receive returns at most 10 of a group anyway.)
const RUN_MAX: usize = 16;
/// Longest a run collects orders before it is committed.
const RUN_LINGER: Duration = Duration::from_millis(50);

/// Starts a task for each group the receive loop brings in.
pub(super) struct Groups {
    /// Group tasks: the drain waits for them.
    tracker: TaskTracker,
    /// What every group task is made of (its group left empty).
    task: GroupTask,
}

impl Groups {
    pub(super) fn new(tracker: TaskTracker, task: GroupTask) -> Self {
        Groups { tracker, task }
    }

    /// Serve `group` from now on.
    pub(super) fn spawn(&self, group: String) {
        let task = GroupTask {
            group,
            ..self.task.clone()
        };
        self.tracker.spawn(task.run());
    }
}

/// Serves one group until its queue is empty: strictly one message after another.
#[derive(Clone)]
pub(super) struct GroupTask {
    pub(super) group: String,
    pub(super) held: SharedHeld,
    pub(super) committer: Committer,
    pub(super) releaser: Releaser,
    /// A drain began: take nothing new, release what waits.
    pub(super) draining: CancellationToken,
    /// The drain's deadline passed: give the run up.
    pub(super) abort: CancellationToken,
    /// Simulated work per order (load tests); zero in production.
    pub(super) work_delay: Duration,
    /// Recorded as ProcessedBy.
    pub(super) instance_id: Arc<InstanceId>,
}

/// A group task's next step.
#[derive(Debug)]
enum Next {
    /// Commit this run.
    Run(Run),
    /// The group ended: release these (what waited in it when a drain ended it).
    Ended(Vec<crate::queue::Handle>),
    /// The drain's deadline passed while these were being worked on.
    Abandoned(Vec<String>),
}

impl GroupTask {
    async fn run(self) {
        loop {
            match self.next_run().await {
                Next::Run(run) => {
                    if !self.commit(run).await {
                        return;
                    }
                }
                Next::Ended(rest) => {
                    self.releaser.release(rest, 0, "drain").await;
                    return;
                }
                Next::Abandoned(ids) => {
                    self.give_up(&ids, 0, "deadline").await;
                    return;
                }
            }
        }
    }

    /// The group's next run, its messages evaluated into records; or the end of the group. Instant work takes
    /// everything held at once (up to [`RUN_MAX`]); slow work commits each order soon after it is done (a
    /// record should not wait for the work of the orders behind it).
    async fn next_run(&self) -> Next {
        let instant = self.work_delay.is_zero();
        let batch = if instant { RUN_MAX } else { 1 };
        let mut taken =
            match self
                .held
                .take_or_end(&self.group, batch, self.draining.is_cancelled())
            {
                Take::Ended(rest) => return Next::Ended(rest),
                Take::Run(taken) => taken,
            };
        let started = Instant::now();
        let mut records: Vec<Record> = Vec::new();
        loop {
            for m in &taken {
                if !instant {
                    tokio::select! {
                        _ = tokio::time::sleep(self.work_delay) => {}
                        _ = self.abort.cancelled() => {
                            let mut ids: Vec<String> =
                                records.iter().map(|r| r.sqs_message_id.clone()).collect();
                            ids.extend(taken.iter().map(|m| m.message_id.clone()));
                            return Next::Abandoned(ids);
                        }
                    }
                }
                records.push(self.record(m));
            }
            let full = records.len() >= RUN_MAX || started.elapsed() >= RUN_LINGER;
            if instant || full || self.draining.is_cancelled() {
                break;
            }
            taken = self.held.take(&self.group, batch);
            if taken.is_empty() {
                break;
            }
        }
        Next::Run(Run {
            group_id: self.group.clone(),
            records,
        })
    }

    /// Commit one run and wait for the answer. False when the task must end (the rest was released). A run
    /// deferred by bad data in its group row is sent again with backoff, its messages still held.
    async fn commit(&self, mut run: Run) -> bool {
        let mut deferred = Retry::new("commit")
            .cancel(&self.abort)
            .says("group waits for its row to be fixed; its messages stay held");
        loop {
            let ids: Vec<String> = run
                .records
                .iter()
                .map(|r| r.sqs_message_id.clone())
                .collect();
            let Ok(outcome) = self.committer.commit(run.clone()).await else {
                self.give_up(&ids, 0, "shutdown").await;
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
                run.records.drain(..settled);
                let cause = format!("group {}: {why}", self.group);
                if deferred.failed(Class::Throttled, &cause).await.is_err() {
                    self.give_up(&ids[settled..], 0, "deadline").await;
                    return false;
                }
                continue;
            }
            let (visibility, reason) = match &e {
                StoreError::Aborted => (0, "deadline"),
                // DynamoDB refuses even the REJECTED stand-in: keep the message out of sight for a while so a
                // fix can happen without a hot loop; the group stays locked behind it, so order holds.
                _ => (60, "commit-failed"),
            };
            if matches!(e, StoreError::Aborted) {
                tracing::info!(group = %self.group, settled, released = ids.len() - settled, "drain deadline: releasing the rest of the run and of its group (what it claimed is written by the next holder, at the same positions)");
            } else {
                tracing::error!(group = %self.group, cause = %e, settled, unsettled = ids.len() - settled, "run not committed; releasing it and the rest of its group");
            }
            self.give_up(&ids[settled..], visibility, reason).await;
            return false;
        }
    }

    /// Release the unsettled part of a run, and everything held behind it in its group.
    async fn give_up(&self, run_ids: &[String], visibility: i32, reason: &'static str) {
        let (run, rest) = self.held.give_up(&self.group, run_ids);
        self.releaser.release(run, visibility, reason).await;
        self.releaser.release(rest, 0, reason).await;
    }

    /// One message evaluated into the record to write.
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
            processed_by: self.instance_id.name().to_owned(),
            processed_at: now_rfc3339_millis(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::held::Refuse;
    use super::super::{idle_queue, message, SharedBudget};
    use super::*;

    fn task(held: &SharedHeld, draining: &CancellationToken) -> GroupTask {
        let queue = idle_queue();
        let budget = SharedBudget::new();
        GroupTask {
            group: "g".into(),
            held: held.clone(),
            // A committer nobody serves: this test only takes runs.
            committer: super::super::commit::CommitLoop::new(super::super::commit::Flights {
                store: Arc::new(crate::store::Store::new(
                    idle_dynamodb(),
                    "o".into(),
                    "g".into(),
                )),
                held: held.clone(),
                queue: queue.clone(),
                budget: budget.clone(),
                abort: CancellationToken::new(),
                admission: Arc::default(),
                tracker: TaskTracker::new(),
                finished: Arc::default(),
            })
            .0,
            releaser: Releaser::new(queue, budget, Duration::from_secs(12)),
            draining: draining.clone(),
            abort: CancellationToken::new(),
            work_delay: Duration::ZERO,
            instance_id: Arc::new(InstanceId::new(Some("i-test"))),
        }
    }

    fn idle_dynamodb() -> aws_sdk_dynamodb::Client {
        let conf = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .build();
        aws_sdk_dynamodb::Client::from_conf(conf)
    }

    fn ids(next: Next) -> Vec<String> {
        match next {
            Next::Run(run) => run.records.into_iter().map(|r| r.sqs_message_id).collect(),
            other => panic!("not a run: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_group_takes_its_messages_in_order_as_one_run_then_ends() {
        let held = SharedHeld::default();
        let draining = CancellationToken::new();
        let task = task(&held, &draining);
        let now = Instant::now();
        let vis = Duration::from_secs(12);
        let ms = vec![
            message("m1", "g", 1),
            message("m2", "g", 2),
            message("x", "h", 1),
        ];
        held.admit(ms, now, vis, Refuse::Nothing);
        assert_eq!(ids(task.next_run().await), ["m1", "m2"]);
        held.admit(vec![message("m3", "g", 3)], now, vis, Refuse::Nothing);
        assert_eq!(ids(task.next_run().await), ["m3"]);
        assert!(matches!(task.next_run().await, Next::Ended(rest) if rest.is_empty()));
        assert_eq!(
            held.counts(),
            (1, 4),
            "g no longer served; its leases wait for deletes"
        );
    }

    #[tokio::test]
    async fn a_drain_ends_the_group_and_hands_back_what_waits_in_order() {
        let held = SharedHeld::default();
        let draining = CancellationToken::new();
        let task = task(&held, &draining);
        let ms = vec![message("m1", "g", 1), message("m2", "g", 2)];
        held.admit(ms, Instant::now(), Duration::from_secs(12), Refuse::Nothing);
        draining.cancel();
        match task.next_run().await {
            Next::Ended(rest) => {
                let rest: Vec<&str> = rest.iter().map(|h| h.message_id.as_str()).collect();
                assert_eq!(rest, ["m1", "m2"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(held.counts(), (0, 0));
    }
}
