//! The engine: receive, hold, process in group order, commit, delete, release.
//!
//! - One receive loop long-polls while fewer than `max_groups` groups are held. Receiving is decoupled from
//!   processing: messages go into their group's queue, never into an unbounded buffer.
//! - One task per held group takes its messages strictly one after another. Groups run concurrently.
//! - A group's processed messages form a run; a committer gathers the runs of many groups into one
//!   DynamoDB transaction (at most `max_commits` in flight), then deletes their messages in batches of 10.
//! - A heartbeat extends the visibility of held messages before half the timeout has passed.
//! - If a run cannot be committed, it and everything held behind it in its group is released; nothing of a
//!   group is ever processed ahead of an earlier message of the same group.
//!
//! Shutdown has three signals (see [`Control`]): stop receiving, drain (take nothing new, release what has
//! not started) and abort (the deadline passed: abandon in-flight runs and release them; the transactions
//! are all-or-nothing, so nothing is half-applied).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::aws::backoff;
use crate::config::Config;
use crate::metrics::metrics;
use crate::order::{evaluate, Verdict};
use crate::queue::{new_attempt_id, Handle, Queue, Received};
use crate::store::{Applied, Record, Run, Store, StoreError, MAX_ACTIONS};

/// Most orders one group commits in one run (leaves room for other groups in the same transaction).
const RUN_MAX: usize = 25;
/// Longest a run collects orders before it is committed.
const RUN_LINGER: Duration = Duration::from_millis(50);
/// Longest the committer waits for more groups' runs to fill a transaction (and its delete batch).
const COMMIT_LINGER: Duration = Duration::from_millis(3);

/// The shutdown signals, from gentle to hard.
#[derive(Clone, Default)]
pub struct Control {
    /// Receiving stops for good (after the poll in flight, whose messages are released).
    pub stop_receiving: CancellationToken,
    /// Group tasks take no new message; everything held but not started is released.
    pub draining: CancellationToken,
    /// The drain deadline passed: in-flight runs are abandoned and released.
    pub abort: CancellationToken,
}

/// What a drain did, for its one-line report.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Orders committed (new, duplicate or conflict) since the drain started.
    pub finished: u64,
    /// Messages released since the drain started.
    pub released: u64,
}

/// A held message's lease: its current receipt handle and when its visibility runs out.
struct Lease {
    receipt_handle: String,
    group_id: String,
    sequence: u128,
    received_at: Instant,
    visible_until: Instant,
}

struct GroupQueue {
    pending: VecDeque<Received>,
}

#[derive(Default)]
struct State {
    groups: HashMap<String, GroupQueue>,
    leases: HashMap<String, Lease>,
}

struct CommitRequest {
    run: Run,
    message_ids: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Applied>, StoreError>>,
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
    /// Recorded as ProcessedBy; filled from instance metadata when it answers.
    instance_id: RwLock<String>,
    state: Mutex<State>,
    /// Number of held groups: the receive loop waits on it for capacity.
    groups_held: watch::Sender<usize>,
    /// Receiving paused (rebalance, soft policy) while true.
    paused: watch::Sender<bool>,
    commits: mpsc::UnboundedSender<CommitRequest>,
    control: Control,
    /// Group tasks: the drain waits for them.
    groups: TaskTracker,
    /// Background loops (receive, commit, heartbeat).
    loops: TaskTracker,
    /// Fired once the group tasks are done: the commit and heartbeat loops end.
    shutdown: CancellationToken,
    finished: AtomicU64,
    released: AtomicU64,
    /// Serialises visibility changes: a heartbeat extension that raced a release would hide a released
    /// message again for a whole timeout.
    visibility: tokio::sync::Mutex<()>,
}

impl Dispatcher {
    /// Start the receive loop, the committer and the visibility heartbeat.
    pub fn start(
        cfg: Config,
        queue: Queue,
        store: Arc<Store>,
        instance_id: String,
        control: Control,
    ) -> Self {
        let (commits, commit_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            cfg,
            queue,
            store,
            instance_id: RwLock::new(instance_id),
            state: Mutex::new(State::default()),
            groups_held: watch::channel(0).0,
            paused: watch::channel(false).0,
            commits,
            control,
            groups: TaskTracker::new(),
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

    /// Record a better instance id once metadata answers.
    pub fn set_instance_id(&self, id: String) {
        *self.inner.instance_id.write().expect("id lock") = id;
    }

    /// Pause or resume receiving (the soft rebalance policy). Held groups keep being served.
    pub fn set_paused(&self, paused: bool) {
        self.inner.paused.send_replace(paused);
    }

    /// Totals since start: (orders finished, messages released).
    pub fn counts(&self) -> Counts {
        Counts {
            finished: self.inner.finished.load(Ordering::Relaxed),
            released: self.inner.released.load(Ordering::Relaxed),
        }
    }

    /// Groups and messages held right now.
    pub fn held(&self) -> (usize, usize) {
        let s = self.inner.state.lock().expect("state lock");
        (s.groups.len(), s.leases.len())
    }

    /// Start draining: stop receiving, take nothing new, release everything not started (in group order).
    pub async fn begin_drain(&self) {
        let c = &self.inner.control;
        c.stop_receiving.cancel();
        c.draining.cancel();
        let handles = self.take_pending();
        self.release(handles, 0, "drain").await;
    }

    /// Take every held-but-not-started message out of its group queue.
    fn take_pending(&self) -> Vec<Handle> {
        let mut s = self.inner.state.lock().expect("state lock");
        let State { groups, leases } = &mut *s;
        let mut handles = Vec::new();
        for g in groups.values_mut() {
            for m in g.pending.drain(..) {
                if let Some(l) = leases.get(&m.message_id) {
                    handles.push(handle(&m.message_id, l));
                }
            }
        }
        handles
    }

    /// Release what is held but not started, without stopping (the `drain` rebalance policy).
    pub async fn release_pending(&self) {
        let handles = self.take_pending();
        self.release(handles, 0, "rebalance").await;
    }

    /// Wait until every group task has finished (the caller fires `abort` at its deadline: aborted tasks
    /// release at once).
    pub async fn finish_groups(&self) {
        let inner = &self.inner;
        inner.groups.close();
        inner.groups.wait().await;
    }

    /// Stop the background loops. The receive loop ends when its last poll returns (what it brings is
    /// released), so this can take up to one `--wait-time`; the bound only guards against SQS hanging.
    pub async fn stop_loops(&self) {
        let inner = &self.inner;
        inner.shutdown.cancel();
        let bound = inner.cfg.wait_time + Duration::from_secs(15);
        let _ = tokio::time::timeout(bound, inner.loops.wait()).await;
    }

    /// What is still in flight, for a drain that hit its deadline: "group g: 3 messages (oldest 12s)".
    pub fn describe_held(&self) -> String {
        let s = self.inner.state.lock().expect("state lock");
        let mut per_group: HashMap<&str, (usize, Instant)> = HashMap::new();
        for l in s.leases.values() {
            let e = per_group.entry(&l.group_id).or_insert((0, l.received_at));
            e.0 += 1;
            e.1 = e.1.min(l.received_at);
        }
        let mut parts: Vec<String> = per_group
            .iter()
            .map(|(g, (n, t))| format!("group {g}: {n} held for {}s", t.elapsed().as_secs()))
            .collect();
        parts.sort();
        if parts.is_empty() {
            "nothing held".into()
        } else {
            parts.join("; ")
        }
    }

    // ---- receiving -------------------------------------------------------------------------------------

    async fn receive_loop(self) {
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
            // Wait for capacity and for the pause to lift, or stop.
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                r = async {
                    paused_rx.wait_for(|p| !*p).await.map(|_| ())?;
                    held_rx.wait_for(|n| *n < max_groups).await.map(|_| ())
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
            // The poll is never abandoned: SQS may already have handed it messages, and a dropped poll would
            // hide them (and stall their groups) for a whole visibility timeout. Measured on the emulator: ten
            // messages stuck for 120 s. A drain completes the hook without waiting for it; the worker exits
            // after it has returned and what it brought is released.
            let outcome = inner
                .queue
                .receive(free as i32, wait, vis, &attempt_id)
                .await;
            match outcome {
                Ok(messages) => {
                    if failures > 0 {
                        tracing::info!(after_failures = failures, "SQS receiving again");
                    }
                    failures = 0;
                    attempt_id = new_attempt_id();
                    attempt_started = Instant::now();
                    self.accept(messages).await;
                }
                Err(e) => {
                    if failures == 0 || failures.is_power_of_two() {
                        tracing::warn!(
                            waiting_for = "SQS",
                            failures = failures + 1,
                            transient = e.transient,
                            cause = %e,
                            "receive failed; retrying with backoff"
                        );
                    }
                    if !e.transient {
                        // A permanent error (queue deleted, access denied) cannot be fixed by retrying the same
                        // attempt; still do not crash-loop: back off hard and keep saying so.
                        attempt_id = new_attempt_id();
                        attempt_started = Instant::now();
                    }
                    let pause = backoff(
                        failures,
                        Duration::from_millis(200),
                        Duration::from_secs(if e.transient { 10 } else { 30 }),
                    );
                    failures += 1;
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        tracing::debug!("receive loop stopped");
    }

    /// Take received messages into their groups, starting a task for each new group.
    async fn accept(&self, messages: Vec<Received>) {
        let inner = &self.inner;
        let now = Instant::now();
        let mut late = Vec::new();
        {
            let mut s = inner.state.lock().expect("state lock");
            // A poll that was in flight when we paused or started draining brings new groups we must not take.
            let refuse = inner.control.draining.is_cancelled() || *inner.paused.borrow();
            for m in messages {
                if refuse {
                    late.push(Handle {
                        message_id: m.message_id.clone(),
                        receipt_handle: m.receipt_handle.clone(),
                    });
                    continue;
                }
                if let Some(l) = s.leases.get_mut(&m.message_id) {
                    // We already hold it (its visibility ran out and SQS gave it back to us): keep one copy,
                    // with the newest receipt handle, which is the only one SQS still honours.
                    l.receipt_handle = m.receipt_handle.clone();
                    l.visible_until = now + inner.cfg.visibility_timeout;
                    continue;
                }
                s.leases.insert(
                    m.message_id.clone(),
                    Lease {
                        receipt_handle: m.receipt_handle.clone(),
                        group_id: m.group_id.clone(),
                        sequence: m
                            .sequence_number
                            .as_deref()
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0),
                        received_at: now,
                        visible_until: now + inner.cfg.visibility_timeout,
                    },
                );
                match s.groups.get_mut(&m.group_id) {
                    Some(g) => g.pending.push_back(m),
                    None => {
                        let group = m.group_id.clone();
                        s.groups.insert(
                            group.clone(),
                            GroupQueue {
                                pending: VecDeque::from([m]),
                            },
                        );
                        inner.groups.spawn(self.clone().group_task(group));
                    }
                }
            }
            self.publish(&s);
        }
        if !late.is_empty() {
            self.release_untracked(late).await;
        }
    }

    fn publish(&self, s: &State) {
        let m = metrics();
        m.groups_in_flight
            .store(s.groups.len() as u64, Ordering::Relaxed);
        m.messages_in_flight
            .store(s.leases.len() as u64, Ordering::Relaxed);
        self.inner.groups_held.send_replace(s.groups.len());
    }

    // ---- one group ---------------------------------------------------------------------------------------

    /// Serve one group until its queue is empty: strictly one message after another.
    async fn group_task(self, group: String) {
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
                let next = {
                    let mut s = inner.state.lock().expect("state lock");
                    s.groups.get_mut(&group).and_then(|g| g.pending.pop_front())
                };
                let Some(m) = next else { break };
                if !inner.cfg.work_delay.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(inner.cfg.work_delay) => {}
                        _ = inner.control.abort.cancelled() => {
                            ids.push(m.message_id.clone());
                            self.give_up(&group, ids, 0, "deadline").await;
                            return;
                        }
                    }
                }
                ids.push(m.message_id.clone());
                run.push(self.record(&m));
            }
            if run.is_empty() {
                // Nothing taken: either the queue is empty (done) or we are draining (release the rest).
                let leftover = {
                    let mut guard = inner.state.lock().expect("state lock");
                    let s = &mut *guard;
                    let rest: Vec<Handle> = match s.groups.get_mut(&group) {
                        Some(g)
                            if !g.pending.is_empty() && !inner.control.draining.is_cancelled() =>
                        {
                            continue
                        }
                        Some(g) => g
                            .pending
                            .drain(..)
                            .filter_map(|m| {
                                s.leases
                                    .get(&m.message_id)
                                    .map(|l| handle(&m.message_id, l))
                            })
                            .collect(),
                        None => Vec::new(),
                    };
                    s.groups.remove(&group);
                    self.publish(s);
                    rest
                };
                inner.store.forget_group(&group);
                self.release(leftover, 0, "drain").await;
                return;
            }
            let (reply, rx) = oneshot::channel();
            let request = CommitRequest {
                run: Run {
                    group_id: group.clone(),
                    records: run,
                },
                message_ids: ids.clone(),
                reply,
            };
            if inner.commits.send(request).is_err() {
                self.give_up(&group, ids, 0, "shutdown").await;
                return;
            }
            let outcome = tokio::select! {
                r = rx => r.unwrap_or(Err(StoreError::Aborted)),
                _ = inner.control.abort.cancelled() => Err(StoreError::Aborted),
            };
            match outcome {
                Ok(applied) => {
                    for a in &applied {
                        let status = match a {
                            Applied::New { .. } => continue,
                            Applied::Duplicate => "duplicate",
                            Applied::Conflict => "conflict",
                        };
                        metrics().orders.inc(&[status]);
                    }
                    inner
                        .finished
                        .fetch_add(applied.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    let (visibility, reason) = match &e {
                        StoreError::Aborted => (0, "deadline"),
                        // A permanent refusal: keep the failed messages out of sight for a while so a fix (or
                        // the DLQ after maxReceiveCount) can happen without a hot loop; the group stays locked
                        // behind them, so order holds.
                        StoreError::Permanent(_) => (60, "commit-failed"),
                    };
                    tracing::error!(group = %group, cause = %e, orders = ids.len(), "run not committed; releasing it and the rest of its group");
                    self.give_up(&group, ids, visibility, reason).await;
                    return;
                }
            }
        }
    }

    /// Release a run that will not be committed, and everything held behind it in its group.
    async fn give_up(
        &self,
        group: &str,
        run_ids: Vec<String>,
        visibility: i32,
        reason: &'static str,
    ) {
        let (run, rest) = {
            let mut s = self.inner.state.lock().expect("state lock");
            let run: Vec<Handle> = run_ids
                .iter()
                .filter_map(|id| s.leases.get(id).map(|l| handle(id, l)))
                .collect();
            let rest: Vec<Handle> = match s.groups.remove(group) {
                Some(g) => g
                    .pending
                    .iter()
                    .filter_map(|m| {
                        s.leases
                            .get(&m.message_id)
                            .map(|l| handle(&m.message_id, l))
                    })
                    .collect(),
                None => Vec::new(),
            };
            self.publish(&s);
            (run, rest)
        };
        self.inner.store.forget_group(group);
        self.release(run, visibility, reason).await;
        self.release(rest, 0, reason).await;
    }

    fn record(&self, m: &Received) -> Record {
        let e = evaluate(&m.body, &m.message_id, &m.group_id);
        let (status, reason, total_cents, currency) = match e.verdict {
            Verdict::Accepted {
                total_cents,
                currency,
            } => ("ACCEPTED", None, Some(total_cents), Some(currency)),
            Verdict::Rejected { reason } => ("REJECTED", Some(reason), None, None),
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
            processed_by: self.inner.instance_id.read().expect("id lock").clone(),
            processed_at: now_rfc3339_millis(),
        }
    }

    // ---- committing --------------------------------------------------------------------------------------

    async fn commit_loop(self, mut rx: mpsc::UnboundedReceiver<CommitRequest>) {
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
            // Everything that queued up while the permits were busy goes into this transaction, and the runs
            // of one receive (its groups' tasks submit microseconds apart) are gathered for up to
            // COMMIT_LINGER until ten orders are in: one transaction and one full DeleteMessageBatch instead
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
            tokio::spawn(async move {
                me.commit_batch(batch).await;
                drop(permit);
            });
        }
    }

    async fn commit_batch(&self, batch: Vec<CommitRequest>) {
        let inner = &self.inner;
        let runs: Vec<Run> = batch.iter().map(|b| b.run.clone()).collect();
        let result = inner.store.commit(&runs, &inner.control.abort).await;
        let results: Vec<Result<Vec<Applied>, StoreError>> = match result {
            Ok(all) => all.into_iter().map(Ok).collect(),
            Err(StoreError::Permanent(e)) if batch.len() > 1 => {
                // One group's bad record must not fail the others: commit each run on its own.
                tracing::warn!(cause = %e, runs = batch.len(), "batch refused; committing its runs one by one");
                let mut each = Vec::new();
                for run in &runs {
                    each.push(
                        inner
                            .store
                            .commit(std::slice::from_ref(run), &inner.control.abort)
                            .await
                            .map(|mut v| v.remove(0)),
                    );
                }
                each
            }
            Err(e) => {
                let text = e.to_string();
                batch
                    .iter()
                    .map(|_| {
                        Err(if matches!(e, StoreError::Aborted) {
                            StoreError::Aborted
                        } else {
                            StoreError::Permanent(text.clone())
                        })
                    })
                    .collect()
            }
        };
        // Delete what is committed (only after the commit: a failed write is never followed by a delete).
        let mut done: Vec<String> = Vec::new();
        for (req, r) in batch.iter().zip(&results) {
            if let Ok(applied) = r {
                for (rec, a) in req.run.records.iter().zip(applied) {
                    if let Applied::New { .. } = a {
                        metrics().orders.inc(&[&rec.status.to_ascii_lowercase()]);
                    }
                }
                done.extend(req.message_ids.iter().cloned());
            }
        }
        self.delete(&done).await;
        for (req, r) in batch.into_iter().zip(results) {
            let _ = req.reply.send(r);
        }
    }

    /// Delete committed messages and drop their leases. A failure here is harmless: the message comes back and
    /// its write is found to be a duplicate.
    async fn delete(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let handles: Vec<Handle> = {
            let s = self.inner.state.lock().expect("state lock");
            let now = Instant::now();
            for id in ids {
                if let Some(l) = s.leases.get(id) {
                    metrics().latency.observe(now - l.received_at);
                }
            }
            ids.iter()
                .filter_map(|id| s.leases.get(id).map(|l| handle(id, l)))
                .collect()
        };
        let failed = self
            .with_retries("DeleteMessageBatch", || self.inner.queue.delete(&handles))
            .await;
        for (id, code) in failed {
            metrics().delete_failures.inc(&[&code]);
            tracing::warn!(message_id = %id, code = %code, "delete refused (receipt handle expired?); the redelivery will be recognised as a duplicate");
        }
        let mut s = self.inner.state.lock().expect("state lock");
        for id in ids {
            s.leases.remove(id);
        }
        self.publish(&s);
    }

    // ---- visibility --------------------------------------------------------------------------------------

    /// Release messages we track: set their visibility and forget their leases. Sorted by group and sequence so
    /// a group's messages go back in order.
    async fn release(&self, mut handles: Vec<Handle>, visibility: i32, reason: &'static str) {
        if handles.is_empty() {
            return;
        }
        let _serial = self.inner.visibility.lock().await;
        {
            let mut s = self.inner.state.lock().expect("state lock");
            handles.sort_by_key(|h| {
                s.leases
                    .get(&h.message_id)
                    .map(|l| (l.group_id.clone(), l.sequence))
            });
            for h in &handles {
                s.leases.remove(&h.message_id);
            }
            self.publish(&s);
        }
        self.change_visibility(handles, visibility, reason).await;
    }

    async fn release_untracked(&self, handles: Vec<Handle>) {
        self.change_visibility(handles, 0, "drain").await;
    }

    async fn change_visibility(&self, handles: Vec<Handle>, visibility: i32, reason: &'static str) {
        let n = handles.len() as u64;
        let failed = self
            .with_retries("ChangeMessageVisibilityBatch", || {
                self.inner.queue.change_visibility(&handles, visibility)
            })
            .await;
        for (id, code) in &failed {
            tracing::warn!(message_id = %id, code = %code, "release refused; the message returns when its visibility times out");
        }
        metrics().releases.add(&[reason], n as f64);
        self.inner.released.fetch_add(n, Ordering::Relaxed);
    }

    /// A batch call retried briefly on transient failure. Giving up is safe for both users: an undeleted
    /// message comes back as a duplicate, an unreleased one when its visibility times out.
    async fn with_retries<F, Fut>(&self, operation: &str, mut call: F) -> Vec<(String, String)>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<(String, String)>, crate::queue::SqsError>>,
    {
        for attempt in 0..3u32 {
            match call().await {
                Ok(failed) => return failed,
                Err(e) => {
                    tracing::warn!(cause = %e, attempt, operation, "batch call failed");
                    if !e.transient || attempt == 2 {
                        break;
                    }
                    tokio::time::sleep(backoff(
                        attempt,
                        Duration::from_millis(100),
                        Duration::from_secs(1),
                    ))
                    .await;
                }
            }
        }
        Vec::new()
    }

    /// Extend the visibility of every held message before half its timeout has passed, so long work (or a
    /// DynamoDB outage) never lets a message return to another worker while we still hold it.
    async fn heartbeat_loop(self) {
        let vis = self.inner.cfg.visibility_timeout;
        let every = (vis / 6).max(Duration::from_millis(500));
        let stop = self.inner.shutdown.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let _serial = self.inner.visibility.lock().await;
            let now = Instant::now();
            let due: Vec<Handle> = {
                let mut s = self.inner.state.lock().expect("state lock");
                s.leases
                    .iter_mut()
                    .filter(|(_, l)| l.visible_until.saturating_duration_since(now) < vis / 2)
                    .map(|(id, l)| {
                        l.visible_until = now + vis;
                        handle(id, l)
                    })
                    .collect()
            };
            if due.is_empty() {
                continue;
            }
            match self
                .inner
                .queue
                .change_visibility(&due, vis.as_secs() as i32)
                .await
            {
                Ok(failed) => {
                    metrics()
                        .visibility_extensions
                        .add(&[], (due.len() - failed.len()) as f64);
                    for (id, code) in failed {
                        tracing::warn!(message_id = %id, code = %code, "could not extend visibility; another worker may receive it (the write stays idempotent)");
                    }
                }
                Err(e) => {
                    tracing::warn!(cause = %e, count = due.len(), "visibility extension failed; retrying next tick")
                }
            }
        }
    }
}

fn handle(id: &str, l: &Lease) -> Handle {
    Handle {
        message_id: id.to_owned(),
        receipt_handle: l.receipt_handle.clone(),
    }
}

/// Now, RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339_millis() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let now = OffsetDateTime::now_utc();
    now.format(&format).unwrap_or_else(|_| now.to_string())
}
