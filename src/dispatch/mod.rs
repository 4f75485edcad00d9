//! The engine: receive, hold, process in group order, commit, delete, release.
//!
//! - [`held`]: the held-message state, pure and unit-tested: every lease and group rule lives there once.
//! - [`receive`]: one loop long-polls while fewer than `max_groups` groups are held and no account-wide error
//!   blocks the worker. Messages go into their group's queue, never into an unbounded buffer.
//! - [`group`]: one task per held group takes its messages strictly one after another; its processed messages
//!   form a run.
//! - [`commit`]: a committer gathers the runs of many groups into one store commit (their claims and
//!   inserts go out together; at most `max_commits` in flight), answers the groups as soon as the records are
//!   written, then deletes in the background: an SQS brownout slows deletes, not the next run.
//! - [`visibility`]: the heartbeat that extends held messages before half the timeout has passed, and release.
//!
//! If a run cannot be committed, it and everything held behind it in its group is released; nothing of a group
//! is ever processed ahead of an earlier message of the same group.
//!
//! Every SQS and DynamoDB call runs under a [`Budget`]: until it works in normal running, the drain's deadline
//! (plus a short grace for the releases and deletes) once a drain has begun. Shutdown has three signals (see
//! [`Control`]): stop receiving, drain (take nothing new, release what has not started) and abort (the deadline
//! passed: abandon in-flight runs and release them). An abandoned run may leave a claim whose records are not
//! all written: its messages are not deleted, so whoever receives them next writes them at the positions the
//! claim gave them (see [`crate::store::claim`]); nothing is applied twice and no position stays empty.

mod commit;
mod group;
pub mod held;
mod receive;
mod visibility;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::health::Health;
use crate::instance::InstanceId;
use crate::queue::{Handle, Queue};
use crate::retry::Budget;
use crate::store::Store;
use crate::telemetry::{GROUPS_IN_FLIGHT, MESSAGES_IN_FLIGHT};

use commit::CommitRequest;
use held::Held;

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

/// The running engine. Cheap to clone (everything behind `Arc`).
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Config,
    queue: Queue,
    store: Arc<Store>,
    health: Arc<Health>,
    /// Recorded as ProcessedBy: the id once known, a fallback name until then.
    instance_id: Arc<InstanceId>,
    held: Mutex<Held>,
    /// Taken out of `held` by a drain (not started, never to be started), in release order, waiting to be
    /// released once no poll can take them back.
    withheld: Mutex<Vec<Handle>>,
    /// Number of held groups: the receive loop waits on it for capacity.
    groups_held: watch::Sender<usize>,
    /// Receiving paused (rebalance, soft policy) while true.
    paused: watch::Sender<bool>,
    /// A receive is out: a drain waits for it before releasing, or the poll would take back what it released.
    polling: watch::Sender<bool>,
    commits: mpsc::UnboundedSender<CommitRequest>,
    control: Control,
    /// What every SQS/DynamoDB call may spend: until it works, or the drain's deadline plus the grace.
    budget: Mutex<Budget>,
    /// Group tasks: the drain waits for them.
    groups: TaskTracker,
    /// Commits and their deletes in flight: the drain waits for them too.
    flights: TaskTracker,
    /// Background loops (receive, commit, heartbeat).
    loops: TaskTracker,
    /// Fired once the group tasks are done: the commit and heartbeat loops end.
    shutdown: CancellationToken,
    finished: AtomicU64,
    released: AtomicU64,
    /// Held by a visibility extension while its call is out, so a release can wait for it: an extension that
    /// landed after a release would hide the released message again for a whole timeout.
    visibility: tokio::sync::Mutex<()>,
}

impl Dispatcher {
    /// Start the receive loop, the committer and the visibility heartbeat.
    pub fn start(
        cfg: Config,
        queue: Queue,
        store: Arc<Store>,
        health: Arc<Health>,
        instance_id: Arc<InstanceId>,
        control: Control,
    ) -> Self {
        let (commits, commit_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            cfg,
            queue,
            store,
            health,
            instance_id,
            held: Mutex::new(Held::default()),
            withheld: Mutex::new(Vec::new()),
            groups_held: watch::channel(0).0,
            paused: watch::channel(false).0,
            polling: watch::channel(false).0,
            commits,
            control,
            budget: Mutex::new(Budget::UntilItWorks),
            groups: TaskTracker::new(),
            flights: TaskTracker::new(),
            loops: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            finished: AtomicU64::new(0),
            released: AtomicU64::new(0),
            visibility: tokio::sync::Mutex::new(()),
        });
        let d = Dispatcher { inner };
        d.inner.loops.spawn(d.clone().receive_loop());
        d.inner.loops.spawn(d.clone().commit_loop(commit_rx));
        d.inner.loops.spawn(d.clone().heartbeat_loop());
        d.inner.loops.close();
        d
    }

    pub fn control(&self) -> &Control {
        &self.inner.control
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.inner.health
    }

    /// Pause or resume receiving (the soft rebalance policy). Held groups keep being served.
    pub fn set_paused(&self, paused: bool) {
        self.inner.paused.send_replace(paused);
    }

    /// Totals since start.
    pub fn counts(&self) -> Counts {
        Counts {
            finished: self.inner.finished.load(Ordering::Relaxed),
            released: self.inner.released.load(Ordering::Relaxed),
        }
    }

    /// Groups and messages held right now.
    pub fn held(&self) -> (usize, usize) {
        self.inner.held.lock().expect("held lock").counts()
    }

    /// The budget of every call from now on.
    fn budget(&self) -> Budget {
        *self.inner.budget.lock().expect("budget lock")
    }

    /// The first step of every drain, taken the moment the worker decides to drain (before anything awaits):
    /// every call from now on ends by `deadline` plus [`RELEASE_GRACE`], receiving stops (the poll in flight is
    /// ended and recovered, see `receive`), the group tasks take nothing new, and every held message that has not started is taken
    /// out of their reach, to be released by [`Dispatcher::begin_drain`]. From here on no held message starts:
    /// an interrupted instance must not spend its notice on work another instance could be doing.
    pub fn stop_taking(&self, deadline: Instant) {
        let inner = &self.inner;
        *inner.budget.lock().expect("budget lock") = Budget::Until(deadline + RELEASE_GRACE);
        inner.control.stop_receiving.cancel();
        inner.control.draining.cancel();
        let taken = inner.held.lock().expect("held lock").take_pending();
        inner.withheld.lock().expect("withheld lock").extend(taken);
        self.publish();
    }

    /// Start draining with `deadline` for the work: take nothing new ([`Dispatcher::stop_taking`]), wait
    /// (within the deadline) for the poll in flight to be ended and recovered (a fraction of a second) so it
    /// cannot take back what we release, then release
    /// everything not started (in group order). The groups' runs in progress go on meanwhile.
    pub async fn begin_drain(&self, deadline: Instant) {
        let inner = &self.inner;
        self.stop_taking(deadline);
        // Only worth waiting for when something is waiting to be released (an idle worker completes its hook
        // at once).
        let pending = !inner.withheld.lock().expect("withheld lock").is_empty();
        if pending {
            self.wait_for_poll(deadline.checked_sub(RELEASE_GRACE).unwrap_or(deadline))
                .await;
        }
        // In group order: each take is sorted, and a later take (none once receiving stopped) only adds later
        // messages of a group.
        let handles = std::mem::take(&mut *inner.withheld.lock().expect("withheld lock"));
        self.release(handles, 0, "drain").await;
    }

    /// The drain's deadline moved (brought forward by a second signal or an earlier notice).
    pub fn set_deadline(&self, deadline: Instant) {
        *self.inner.budget.lock().expect("budget lock") = Budget::Until(deadline + RELEASE_GRACE);
    }

    /// Wait until no receive is out, or `until`, or the abort.
    async fn wait_for_poll(&self, until: Instant) {
        let mut polling = self.inner.polling.subscribe();
        tokio::select! {
            _ = tokio::time::timeout_at(until, polling.wait_for(|p| !*p)) => {}
            _ = self.inner.control.abort.cancelled() => {}
        }
    }

    /// Release what is held but not started, without stopping (the `drain` rebalance policy). Runs in the
    /// background: the caller (the supervisor) must keep watching for notices and signals meanwhile.
    pub fn release_pending(&self) {
        let d = self.clone();
        tokio::spawn(async move {
            // Receiving is paused; a poll already out would take back what we release.
            let bound = d.inner.cfg.wait_time + Duration::from_secs(1);
            d.wait_for_poll(Instant::now() + bound).await;
            let handles = d.inner.held.lock().expect("held lock").take_pending();
            d.publish();
            d.release(handles, 0, "rebalance").await;
        });
    }

    /// Wait until every group task and every commit and delete in flight has finished, or `until` (the caller
    /// fires `abort` at its deadline: aborted tasks release at once).
    pub async fn finish_groups(&self, until: Instant) -> bool {
        let inner = &self.inner;
        inner.groups.close();
        inner.flights.close();
        tokio::time::timeout_at(until, async {
            inner.groups.wait().await;
            inner.flights.wait().await;
        })
        .await
        .is_ok()
    }

    /// Stop the background loops. The receive loop ends once its ended poll is recovered (what it brings is
    /// released); past `until` it is abandoned (SQS is not answering, or the instance is about to go).
    pub async fn stop_loops(&self, until: Instant) {
        let inner = &self.inner;
        inner.shutdown.cancel();
        let _ = tokio::time::timeout_at(until, inner.loops.wait()).await;
    }

    /// What is still held, for a drain that hit its deadline: "group g: 3 held for 12s".
    pub fn describe_held(&self) -> String {
        self.inner
            .held
            .lock()
            .expect("held lock")
            .describe(Instant::now())
    }

    /// Publish the held counts (gauges, and the receive loop's capacity).
    fn publish(&self) {
        let (groups, messages) = self.held();
        metrics::gauge!(GROUPS_IN_FLIGHT).set(groups as f64);
        metrics::gauge!(MESSAGES_IN_FLIGHT).set(messages as f64);
        self.inner.groups_held.send_replace(groups);
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
