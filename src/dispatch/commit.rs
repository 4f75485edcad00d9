//! The committer: a [`Committer`] handle the group tasks call (`committer.commit(run).await`), and the
//! [`CommitLoop`] behind it, which puts many groups' runs into one store commit, answers the groups as soon as
//! DynamoDB has their records, and deletes after that in the background.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::held::SharedHeld;
use super::SharedBudget;
use crate::admission::Admission;
use crate::queue::Queue;
use crate::store::{Applied, CommitContext, Run, RunOutcome, Store, MAX_ACTIONS};
use crate::telemetry::{DELETE_FAILURES, ORDERS, ORDER_LATENCY};

/// Longest the committer waits for more groups' runs to fill a commit (and its delete batch).
const COMMIT_LINGER: Duration = Duration::from_millis(3);

/// Orders after which a commit goes out without lingering: one full DeleteMessageBatch.
const COMMIT_ORDERS: usize = 10;

/// A run on its way to the commit loop, and where its answer goes.
struct Request {
    run: Run,
    reply: oneshot::Sender<RunOutcome>,
}

/// The committer went away (the engine is shutting down): the run was not committed.
#[derive(Debug)]
pub(super) struct Gone;

/// The group tasks' handle on the commit loop.
#[derive(Clone)]
pub(super) struct Committer {
    requests: mpsc::UnboundedSender<Request>,
}

impl Committer {
    /// Commit one run, together with other groups' runs. The answer is the truth about what was written: the
    /// store itself honours the drain's abort and budget, so it comes.
    pub(super) async fn commit(&self, run: Run) -> Result<RunOutcome, Gone> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { run, reply })
            .map_err(|_| Gone)?;
        answer.await.map_err(|_| Gone)
    }
}

/// Puts the runs that wait into commits.
struct Gather {
    requests: mpsc::UnboundedReceiver<Request>,
    /// A run that did not fit the last commit: the first of the next.
    carry: Option<Request>,
}

impl Gather {
    /// The next commit: everything that queued up while the permits were busy, and the runs of one receive
    /// (its groups' tasks submit microseconds apart) gathered for up to [`COMMIT_LINGER`] until
    /// [`COMMIT_ORDERS`] orders are in: one batch of inserts and one full DeleteMessageBatch instead of several
    /// small ones. Under load the batches grow by themselves, up to [`MAX_ACTIONS`]. None: no group task is
    /// left, or the engine shuts down.
    async fn next(&mut self, shutdown: &CancellationToken) -> Option<Vec<Request>> {
        let first = match self.carry.take() {
            Some(c) => c,
            None => tokio::select! {
                c = self.requests.recv() => c?,
                _ = shutdown.cancelled() => return None,
            },
        };
        let mut actions = first.run.records.len() + 1;
        let mut orders = first.run.records.len();
        let mut batch = vec![first];
        let linger_until = Instant::now() + COMMIT_LINGER;
        loop {
            let next = match self.requests.try_recv() {
                Ok(next) => next,
                Err(_) if orders >= COMMIT_ORDERS => break,
                Err(_) => match tokio::time::timeout_at(linger_until, self.requests.recv()).await {
                    Ok(Some(next)) => next,
                    _ => break,
                },
            };
            let size = next.run.records.len() + 1;
            if actions + size > MAX_ACTIONS {
                self.carry = Some(next);
                break;
            }
            actions += size;
            orders += next.run.records.len();
            batch.push(next);
        }
        Some(batch)
    }
}

/// The commit loop: gathers runs into commits, at most `max_commits` in flight.
pub(super) struct CommitLoop {
    gather: Gather,
    flights: Flights,
}

impl CommitLoop {
    /// The loop and the handle that feeds it.
    pub(super) fn new(flights: Flights) -> (Committer, CommitLoop) {
        let (requests, rx) = mpsc::unbounded_channel();
        let gather = Gather {
            requests: rx,
            carry: None,
        };
        (Committer { requests }, CommitLoop { gather, flights })
    }

    pub(super) async fn run(mut self, max_commits: usize, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(max_commits));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let Some(batch) = self.gather.next(&shutdown).await else {
                break;
            };
            let flights = self.flights.clone();
            self.flights.tracker.spawn(async move {
                flights.commit(batch).await;
                // The permit bounds commits in flight, not deletes.
                drop(permit);
            });
        }
    }
}

/// What a commit in flight and its deletes use.
#[derive(Clone)]
pub(super) struct Flights {
    pub(super) store: Arc<Store>,
    pub(super) held: SharedHeld,
    pub(super) queue: Queue,
    pub(super) budget: SharedBudget,
    pub(super) abort: CancellationToken,
    pub(super) admission: Arc<Admission>,
    /// Commits and deletes in flight: the drain waits for them.
    pub(super) tracker: TaskTracker,
    /// Orders committed since start.
    pub(super) finished: Arc<AtomicU64>,
}

impl Flights {
    /// Commit one batch, answering each group as soon as its run is finished (one slow run does not hold up
    /// the others), and delete what each round settled in the background.
    async fn commit(&self, batch: Vec<Request>) {
        let runs: Vec<Run> = batch.iter().map(|b| b.run.clone()).collect();
        let ctx = CommitContext {
            budget: self.budget.get(),
            abort: &self.abort,
            admission: &self.admission,
        };
        let mut batch: Vec<Option<Request>> = batch.into_iter().map(Some).collect();
        self.store
            .commit_each(&runs, &ctx, &mut |done| {
                let done = done
                    .into_iter()
                    .filter_map(|(i, o)| Some((batch.get_mut(i)?.take()?, o)))
                    .collect();
                let ids = self.answer(done);
                if !ids.is_empty() {
                    let me = self.clone();
                    self.tracker.spawn(async move { me.delete(ids).await });
                }
            })
            .await;
    }

    /// Answer the groups of the runs that finished together; return their settled messages (to delete).
    fn answer(&self, done: Vec<(Request, RunOutcome)>) -> Vec<String> {
        let settled: Vec<String> = done
            .iter()
            .flat_map(|(req, outcome)| &req.run.records[..outcome.applied.len()])
            .map(|r| r.sqs_message_id.clone())
            .collect();
        for held_for in self.held.committed(&settled, Instant::now()) {
            metrics::histogram!(ORDER_LATENCY).record(held_for);
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
            self.finished
                .fetch_add(outcome.applied.len() as u64, Ordering::Relaxed);
            let _ = req.reply.send(outcome);
        }
        settled
    }

    /// Delete committed messages and drop their leases; until deleted they stay held and extended. A refused
    /// delete (an expired receipt handle) is harmless: the redelivery is recognised as a duplicate.
    async fn delete(&self, ids: Vec<String>) {
        let handles = self.held.handles(&ids);
        let outcome = self.queue.delete(&handles, self.budget.get()).await;
        for (id, code) in &outcome.refused {
            metrics::counter!(DELETE_FAILURES, "code" => code.to_string()).increment(1);
            tracing::warn!(message_id = %id, code = %code, "delete refused (receipt handle expired?); the redelivery will be recognised as a duplicate");
        }
        if let Some(e) = &outcome.last_error {
            tracing::warn!(messages = outcome.unsent.len(), cause = %e, "delete not done within its budget; the messages come back after their visibility timeout and are recognised as duplicates");
        }
        self.held.forget(&ids);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Record, Status};

    fn run(group: &str, orders: usize) -> Run {
        let record = |i: usize| Record {
            order_key: format!("{group}-{i}"),
            group_id: group.into(),
            status: Status::Accepted,
            reason: None,
            total_cents: Some(1),
            currency: Some("EUR".into()),
            item_count: 1,
            payload_sha256: String::new(),
            sqs_message_id: format!("{group}-m{i}"),
            sqs_sequence_number: Some(i.to_string()),
            receive_count: 1,
            processed_by: "test".into(),
            processed_at: String::new(),
        };
        Run {
            group_id: group.into(),
            records: (0..orders).map(record).collect(),
        }
    }

    fn groups(batch: &[Request]) -> Vec<&str> {
        batch.iter().map(|r| r.run.group_id.as_str()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn runs_that_wait_together_go_into_one_commit_and_what_does_not_fit_starts_the_next() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut gather = Gather {
            requests: rx,
            carry: None,
        };
        let committer = Committer { requests: tx };
        // 6 runs of 16 orders: 6 x 17 actions is more than one commit takes.
        let mut answers = Vec::new();
        for g in ["a", "b", "c", "d", "e", "f"] {
            let (reply, answer) = oneshot::channel();
            answers.push(answer);
            let request = Request {
                run: run(g, 16),
                reply,
            };
            committer.requests.send(request).map_err(|_| Gone).unwrap();
        }
        let shutdown = CancellationToken::new();
        let first = gather.next(&shutdown).await.unwrap();
        assert_eq!(groups(&first), ["a", "b", "c", "d", "e"]);
        let second = gather.next(&shutdown).await.unwrap();
        assert_eq!(
            groups(&second),
            ["f"],
            "the carried run, alone after the linger"
        );
        // Shutdown with nothing waiting ends the loop; a commit asked of a gone loop says so.
        shutdown.cancel();
        assert!(gather.next(&shutdown).await.is_none());
        drop(gather);
        assert!(committer.commit(run("g", 1)).await.is_err());
    }
}
