//! The committer: a [`Committer`] handle the group tasks call (`committer.commit(run).await`), and the
//! [`CommitLoop`] behind it, which puts many groups' runs into one store commit, answers the groups as soon as
//! DynamoDB has their records, and deletes after that in the background.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::held::SharedHeld;
use super::SharedBudget;
use crate::admission::Admission;
use crate::queue::Queue;
use crate::store::{Applied, CommitContext, Run, RunOutcome, Store, MAX_ACTIONS, MAX_STATEMENTS};
use crate::telemetry::{DELETE_FAILURES, ORDERS, ORDER_LATENCY};

/// Longest the committer waits for more groups' runs to fill a commit (and its delete batch) when no commit is
/// in flight.
const COMMIT_LINGER: Duration = Duration::from_millis(3);

/// Orders after which a commit goes out without lingering when no commit is in flight: one full
/// DeleteMessageBatch.
const COMMIT_ORDERS: usize = 10;

/// Actions (claims and records) that make a commit worth sending beside another in flight: two full
/// `BatchExecuteStatement`s (25 claims of runs of 1 and their 25 records, or five runs of 10).
const FULL_COMMIT: usize = 2 * MAX_STATEMENTS;

/// A run on its way to the commit loop, and where its answer goes.
struct Request {
    run: Run,
    reply: oneshot::Sender<RunOutcome>,
}

impl Request {
    /// What the run takes of a commit: its claim and its records.
    fn actions(&self) -> usize {
        self.run.records.len() + 1
    }
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

/// How many commits are in flight, and a wait for none to be.
#[derive(Clone)]
struct InFlight(watch::Sender<usize>);

impl InFlight {
    fn new() -> InFlight {
        InFlight(watch::Sender::new(0))
    }

    fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// One more commit in flight, until the guard is dropped.
    fn enter(&self) -> FlightGuard {
        self.0.send_modify(|n| *n += 1);
        FlightGuard(self.0.clone())
    }

    async fn none(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

struct FlightGuard(watch::Sender<usize>);

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// The runs of one commit being gathered.
struct Batch {
    requests: Vec<Request>,
    /// Claims (one per run) and records.
    actions: usize,
    orders: usize,
}

impl Batch {
    fn new(first: Request) -> Batch {
        let mut batch = Batch {
            requests: Vec::new(),
            actions: 0,
            orders: 0,
        };
        batch.push(first);
        batch
    }

    fn push(&mut self, r: Request) {
        self.actions += r.actions();
        self.orders += r.run.records.len();
        self.requests.push(r);
    }

    fn fits(&self, r: &Request) -> bool {
        self.actions + r.actions() <= MAX_ACTIONS
    }
}

/// Puts the runs that wait into commits, the way Nagle's algorithm puts bytes into segments: while no commit
/// is in flight a commit goes out at once (after [`COMMIT_LINGER`] for the other runs of the same receive,
/// whose groups' tasks submit microseconds apart, until [`COMMIT_ORDERS`] are in); while one is in flight the
/// runs wait for it to finish, unless they fill a commit ([`FULL_COMMIT`]). Idle, nothing waits; under load
/// the commits grow by themselves, up to [`MAX_ACTIONS`], and with them the statements per call: each AWS call
/// costs the worker CPU (signing, JSON, HTTP) and the service a request, whatever it carries (issue 23).
struct Gather {
    requests: mpsc::UnboundedReceiver<Request>,
    /// A run that did not fit the last commit: the first of the next.
    carry: Option<Request>,
    in_flight: InFlight,
}

impl Gather {
    /// The next commit. None: no group task is left, or the engine shuts down.
    async fn next(&mut self, shutdown: &CancellationToken) -> Option<Vec<Request>> {
        let first = match self.carry.take() {
            Some(c) => c,
            None => tokio::select! {
                c = self.requests.recv() => c?,
                _ = shutdown.cancelled() => return None,
            },
        };
        let mut batch = Batch::new(first);
        let linger_until = Instant::now() + COMMIT_LINGER;
        loop {
            let next = match self.requests.try_recv() {
                Ok(next) => next,
                Err(_) if batch.actions >= FULL_COMMIT => break,
                Err(_) if self.in_flight.count() > 0 => tokio::select! {
                    next = self.requests.recv() => match next {
                        Some(next) => next,
                        None => break,
                    },
                    // The flight ended: this batch goes by the idle rule, from the top.
                    _ = self.in_flight.none() => continue,
                },
                Err(_) if batch.orders >= COMMIT_ORDERS => break,
                Err(_) => match tokio::time::timeout_at(linger_until, self.requests.recv()).await {
                    Ok(Some(next)) => next,
                    _ => break,
                },
            };
            if !batch.fits(&next) {
                self.carry = Some(next);
                break;
            }
            batch.push(next);
        }
        Some(batch.requests)
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
            in_flight: InFlight::new(),
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
            let flight = self.gather.in_flight.enter();
            self.flights.tracker.spawn(async move {
                flights.commit(batch).await;
                // The permit and the count are of commits in flight, not deletes.
                drop(flight);
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

    fn gather() -> (Gather, mpsc::UnboundedSender<Request>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let gather = Gather {
            requests: rx,
            carry: None,
            in_flight: InFlight::new(),
        };
        (gather, tx)
    }

    /// Sends a run of `orders` for each group; the answers are dropped (the gather never answers).
    fn submit<S: AsRef<str>>(tx: &mpsc::UnboundedSender<Request>, groups: &[S], orders: usize) {
        for g in groups.iter().map(AsRef::as_ref) {
            let (reply, _) = oneshot::channel();
            let request = Request {
                run: run(g, orders),
                reply,
            };
            tx.send(request).map_err(|_| Gone).unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn runs_that_wait_together_go_into_one_commit_and_what_does_not_fit_starts_the_next() {
        let (mut gather, tx) = gather();
        // 6 runs of 16 orders: 6 x 17 actions is more than one commit takes.
        submit(&tx, &["a", "b", "c", "d", "e", "f"], 16);
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
        let committer = Committer { requests: tx };
        assert!(committer.commit(run("g", 1)).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_a_receive_goes_at_once_busy_runs_wait_for_the_flight_or_a_full_commit() {
        let (mut gather, tx) = gather();
        let shutdown = CancellationToken::new();
        let groups_of =
            |n: usize, tag: &str| -> Vec<String> { (0..n).map(|i| format!("{tag}{i}")).collect() };

        // Nothing in flight: one receive's ten runs of 1 go as they are, without lingering.
        let ten = groups_of(10, "a");
        submit(&tx, &ten, 1);
        let start = Instant::now();
        assert_eq!(gather.next(&shutdown).await.unwrap().len(), 10);
        assert_eq!(start.elapsed(), Duration::ZERO);

        // A commit in flight: the next receive's runs wait for more, until the flight ends.
        let flight = gather.in_flight.enter();
        let ten = groups_of(10, "b");
        submit(&tx, &ten, 1);
        let tx2 = tx.clone();
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            submit(&tx2, &["c0", "c1", "c2", "c3", "c4"], 1);
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(flight);
        });
        let start = Instant::now();
        let batch = gather.next(&shutdown).await.unwrap();
        assert_eq!(
            batch.len(),
            15,
            "the runs that came while the flight was out went in too"
        );
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(40),
            "it went when the flight ended"
        );
        later.await.unwrap();

        // In flight, but the waiting runs fill a commit: it goes beside the other.
        let _flight = gather.in_flight.enter();
        let many = groups_of(FULL_COMMIT / 2, "d");
        submit(&tx, &many, 1);
        let start = Instant::now();
        let full = tokio::time::timeout(Duration::from_secs(1), gather.next(&shutdown)).await;
        assert_eq!(
            full.expect("a full commit does not wait").unwrap().len(),
            FULL_COMMIT / 2
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
