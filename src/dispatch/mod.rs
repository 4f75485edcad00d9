//! The engine: receive, hold, process in group order, commit, delete, release. Each loop is a struct that owns
//! what it uses; they share the held state and a few narrow handles.
//!
//! - [`held`]: the held-message state: [`held::Held`] (pure, unit-tested: every lease and group rule lives
//!   there once) and [`held::SharedHeld`], the only way the loops reach it (every lock of it is in that file).
//! - `receive`: the `ReceiveLoop` long-polls while fewer than `max_groups` groups are held and no account-wide
//!   error blocks the worker. Messages go into their group's queue, never into an unbounded buffer; a new group
//!   gets its task.
//! - `group`: one `GroupTask` per held group takes its messages strictly one after another; its processed
//!   messages form a run, which it commits with `committer.commit(run).await`.
//! - `commit`: the `Committer` handle and the `CommitLoop` behind it, which gathers the runs of many groups into
//!   one store commit (their claims and inserts go out together; while a commit is in flight the next waits for
//!   it or for a full commit, as Nagle's algorithm does; at most `max_commits` in flight), answers the
//!   groups as soon as the records are written, then deletes in the background: an SQS brownout slows deletes,
//!   not the next run.
//! - `visibility`: the `Heartbeat` that extends held messages before half the timeout has passed, and the
//!   `Releaser` that hands messages back (after any extension in flight).
//!
//! One order's path: the receive loop admits it into the held state; its group's task takes it, evaluates it
//! and calls `committer.commit(run)` (a request and its answer over a channel, hidden in the handle); the commit
//! loop puts the run into a commit, which a flight task carries out on the store and answers; the flight then
//! deletes it in a task of its own and forgets it. The held state is locked six times for an order alone
//! (admit, take, the end of its group, committed, the delete's handles, forget), and each of these once for
//! all the orders of a receive, a group's run or a commit.
//!
//! If a run cannot be committed, it and everything held behind it in its group is released; nothing of a group
//! is ever processed ahead of an earlier message of the same group.
//!
//! Every SQS and DynamoDB call runs under a [`Budget`]: until it works in normal running, the drain's deadline
//! (plus a short grace for the releases and deletes) once a drain has begun. Every wait to try again goes
//! through the [`crate::retry::Retry`] driver. Shutdown has three signals (see [`Control`]): stop receiving,
//! drain (take nothing new, release what has not started) and abort (the deadline passed: abandon in-flight
//! runs and release them). An abandoned run may leave a claim whose records are not all written: its messages
//! are not deleted, so whoever receives them next writes them at the positions the claim gave them (see
//! [`crate::store::protocol`]); nothing is applied twice and no position stays empty.

mod commit;
mod group;
pub mod held;
mod receive;
mod visibility;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::config::Config;
use crate::instance::InstanceId;
use crate::queue::Queue;
use crate::retry::Budget;
use crate::store::Store;

use commit::CommitLoop;
use group::{GroupTask, Groups};
use held::SharedHeld;
use receive::ReceiveLoop;
use visibility::{Heartbeat, Releaser};

/// After the drain deadline, how long releases and deletes may still go on: a released message is handed to
/// the next worker at once, where an unreleased one waits out its visibility timeout; the drain margin before
/// the interruption (10 s by default) leaves room for it and the hook.
pub const RELEASE_GRACE: Duration = Duration::from_secs(2);

/// The shutdown signals, from gentle to hard.
#[derive(Clone, Default)]
pub struct Control {
    /// Receiving stops for good: the poll in flight is ended and asked again with its attempt id; what it brings
    /// is released.
    pub stop_receiving: CancellationToken,
    /// Group tasks take no new message; everything held but not started is released.
    pub draining: CancellationToken,
    /// The drain deadline passed: in-flight runs are abandoned and released.
    pub abort: CancellationToken,
}

/// What a drain did, for its one-line report.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Orders committed (new, duplicate or conflict) since start.
    pub finished: u64,
    /// Messages SQS confirmed released since start.
    pub released: u64,
}

/// What every SQS and DynamoDB call may spend from now on, shared by the loops: until it works, or the
/// drain's deadline plus [`RELEASE_GRACE`].
#[derive(Clone)]
pub(crate) struct SharedBudget(Arc<Mutex<Budget>>);

impl SharedBudget {
    fn new() -> Self {
        SharedBudget(Arc::new(Mutex::new(Budget::UntilItWorks)))
    }

    /// The budget of a call starting now.
    pub(crate) fn get(&self) -> Budget {
        *self.0.lock().expect("budget lock")
    }

    /// A drain: every call ends by `deadline` plus the grace.
    fn until(&self, deadline: Instant) {
        *self.0.lock().expect("budget lock") = Budget::Until(deadline + RELEASE_GRACE);
    }
}

/// The running engine, as the drain and `main` see it. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    control: Control,
    admission: Arc<Admission>,
    /// The held messages, shared with every loop.
    held: SharedHeld,
    /// Releases (each after any visibility extension in flight), and the count of what they released.
    releaser: Releaser,
    /// Moved to the drain's deadline by a drain.
    budget: SharedBudget,
    /// Receiving paused (rebalance, soft policy) while true.
    paused: Arc<watch::Sender<bool>>,
    /// A receive is out: a drain waits for it before releasing, or the poll would take back what it released.
    polling: watch::Receiver<bool>,
    tasks: Tasks,
    /// Orders committed since start (counted by the commit loop).
    finished: Arc<AtomicU64>,
    /// The long poll's wait: a rebalance release waits at most this (and a second) for the poll in flight.
    wait_time: Duration,
}

/// The engine's tasks, for a drain to wait on.
#[derive(Clone)]
struct Tasks {
    /// Group tasks.
    groups: TaskTracker,
    /// Commits and their deletes in flight.
    flights: TaskTracker,
    /// The loops (receive, commit, heartbeat).
    loops: TaskTracker,
    /// Fired once the group tasks are done: the commit and heartbeat loops end.
    shutdown: CancellationToken,
}

impl Dispatcher {
    /// Start the receive loop, the committer and the visibility heartbeat.
    pub fn start(
        cfg: Config,
        queue: Queue,
        store: Arc<Store>,
        admission: Arc<Admission>,
        instance_id: Arc<InstanceId>,
        control: Control,
    ) -> Self {
        let tasks = Tasks {
            groups: TaskTracker::new(),
            flights: TaskTracker::new(),
            loops: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        };
        let held = SharedHeld::default();
        let budget = SharedBudget::new();
        let finished = Arc::new(AtomicU64::new(0));
        let releaser = Releaser::new(queue.clone(), budget.clone(), cfg.visibility_timeout);
        let (committer, commit_loop) = CommitLoop::new(commit::Flights {
            store,
            held: held.clone(),
            queue: queue.clone(),
            budget: budget.clone(),
            abort: control.abort.clone(),
            admission: admission.clone(),
            tracker: tasks.flights.clone(),
            finished: finished.clone(),
        });
        let groups = Groups::new(
            tasks.groups.clone(),
            GroupTask {
                group: String::new(),
                held: held.clone(),
                committer,
                releaser: releaser.clone(),
                draining: control.draining.clone(),
                abort: control.abort.clone(),
                work_delay: cfg.work_delay,
                instance_id,
            },
        );
        let (paused, paused_rx) = watch::channel(false);
        let (polling_tx, polling) = watch::channel(false);
        let receive = ReceiveLoop {
            queue: queue.clone(),
            held: held.clone(),
            groups,
            releaser: releaser.clone(),
            admission: admission.clone(),
            stop: control.stop_receiving.clone(),
            abort: control.abort.clone(),
            paused: paused_rx,
            polling: polling_tx,
            budget: budget.clone(),
            max_groups: cfg.max_groups,
            wait_time: cfg.wait_time,
            visibility_timeout: cfg.visibility_timeout,
        };
        let heartbeat = Heartbeat {
            held: held.clone(),
            queue,
            extending: releaser.extending(),
            budget: budget.clone(),
            visibility_timeout: cfg.visibility_timeout,
            shutdown: tasks.shutdown.clone(),
        };
        tasks.loops.spawn(receive.run());
        tasks
            .loops
            .spawn(commit_loop.run(cfg.max_commits, tasks.shutdown.clone()));
        tasks.loops.spawn(heartbeat.run());
        tasks.loops.close();
        Dispatcher {
            control,
            admission,
            held,
            releaser,
            budget,
            paused: Arc::new(paused),
            polling,
            tasks,
            finished,
            wait_time: cfg.wait_time,
        }
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// Pause or resume receiving (the soft rebalance policy). Held groups keep being served.
    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Totals since start.
    pub fn counts(&self) -> Counts {
        Counts {
            finished: self.finished.load(Ordering::Relaxed),
            released: self.releaser.released(),
        }
    }

    /// Groups and messages held right now.
    pub fn held(&self) -> (usize, usize) {
        self.held.counts()
    }

    /// The first step of every drain, taken the moment the worker decides to drain (before anything awaits):
    /// every call from now on ends by `deadline` plus [`RELEASE_GRACE`], receiving stops (the poll in flight is
    /// ended and recovered, see `receive`), the group tasks take nothing new, and every held message that has
    /// not started is taken out of their reach, to be released by [`Dispatcher::begin_drain`]. From here on no
    /// held message starts: an interrupted instance must not spend its notice on work another instance could
    /// be doing.
    pub fn stop_taking(&self, deadline: Instant) {
        self.budget.until(deadline);
        self.control.stop_receiving.cancel();
        self.control.draining.cancel();
        self.held.withhold_pending();
    }

    /// Start draining with `deadline` for the work: take nothing new ([`Dispatcher::stop_taking`]), wait
    /// (within the deadline) for the poll in flight to be ended and recovered (a fraction of a second) so it
    /// cannot take back what we release, then release everything not started (in group order). The groups'
    /// runs in progress go on meanwhile.
    pub async fn begin_drain(&self, deadline: Instant) {
        self.stop_taking(deadline);
        // Only worth waiting for when something is waiting to be released (an idle worker completes its hook
        // at once).
        if self.held.has_withheld() {
            self.wait_for_poll(deadline.checked_sub(RELEASE_GRACE).unwrap_or(deadline))
                .await;
        }
        let handles = self.held.take_withheld();
        self.releaser.release(handles, 0, "drain").await;
    }

    /// The drain's deadline moved (brought forward by a second signal or an earlier notice).
    pub fn set_deadline(&self, deadline: Instant) {
        self.budget.until(deadline);
    }

    /// Wait until no receive is out, or `until`, or the abort.
    async fn wait_for_poll(&self, until: Instant) {
        let mut polling = self.polling.clone();
        tokio::select! {
            _ = tokio::time::timeout_at(until, polling.wait_for(|p| !*p)) => {}
            _ = self.control.abort.cancelled() => {}
        }
    }

    /// Release what is held but not started, without stopping (the `drain` rebalance policy). Runs in the
    /// background: the caller (the supervisor) must keep watching for notices and signals meanwhile.
    pub fn release_pending(&self) {
        let d = self.clone();
        tokio::spawn(async move {
            // Receiving is paused; a poll already out would take back what we release.
            let bound = d.wait_time + Duration::from_secs(1);
            d.wait_for_poll(Instant::now() + bound).await;
            let handles = d.held.take_pending();
            d.releaser.release(handles, 0, "rebalance").await;
        });
    }

    /// Wait until every group task and every commit and delete in flight has finished, or `until` (the caller
    /// fires `abort` at its deadline: aborted tasks release at once).
    pub async fn finish_groups(&self, until: Instant) -> bool {
        let tasks = &self.tasks;
        tasks.groups.close();
        tasks.flights.close();
        tokio::time::timeout_at(until, async {
            tasks.groups.wait().await;
            tasks.flights.wait().await;
        })
        .await
        .is_ok()
    }

    /// Stop the background loops. The receive loop ends once its ended poll is recovered (what it brings is
    /// released); past `until` it is abandoned (SQS is not answering, or the instance is about to go).
    pub async fn stop_loops(&self, until: Instant) {
        self.tasks.shutdown.cancel();
        let _ = tokio::time::timeout_at(until, self.tasks.loops.wait()).await;
    }

    /// What is still held, for a drain that hit its deadline: "group g: 3 held for 12s".
    pub fn describe_held(&self) -> String {
        self.held.describe(Instant::now())
    }
}

/// Now, RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339_millis() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let now = time::OffsetDateTime::now_utc();
    now.format(&format).unwrap_or_else(|_| now.to_string())
}

/// What the loops' unit tests build on: a queue client that is never called (building one does no I/O).
#[cfg(test)]
pub(crate) fn idle_queue() -> Queue {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .build();
    Queue::new(
        aws_sdk_sqs::Client::from_conf(conf),
        "http://localhost:1/q.fifo".into(),
        Arc::new(Admission::default()),
    )
}

/// A received message, for the loops' unit tests.
#[cfg(test)]
pub(crate) fn message(id: &str, group: &str, seq: u128) -> crate::queue::Received {
    crate::queue::Received {
        message_id: id.into(),
        receipt_handle: format!("r-{id}"),
        body: String::new(),
        group_id: group.into(),
        sequence_number: Some(seq.to_string()),
        receive_count: 1,
        dedup_id: None,
    }
}
