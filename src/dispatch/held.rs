//! The held-message state: which messages this worker holds, in which group, in what phase, with which receipt
//! handle and until when SQS keeps them hidden. Pure (time is passed in), so every rule the guarantees rest on
//! is here once and unit-tested:
//!
//! - a group's messages are taken strictly in the order they were received, one at a time;
//! - a redelivery of a message already held keeps one copy and its newest receipt handle (the only one SQS
//!   still honours), and never queues it twice;
//! - a visibility extension is recorded only once SQS confirmed it, and only for the receipt handle it was
//!   sent with (a newer receive wins);
//! - what is released goes back sorted by group and sequence number, so the group resumes in order;
//! - a committed message stays held (and extended) until it is deleted: releasing it would hand a finished
//!   order to another worker.
//!
//! [`SharedHeld`] is the one way the engine's loops reach it: every lock of the held state is in this file.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::queue::{BatchOutcome, Handle, Received};
use crate::telemetry::{GROUPS_IN_FLIGHT, MESSAGES_IN_FLIGHT};

/// Where a held message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting in its group's queue.
    Pending,
    /// Taken by its group's task: being processed or committed.
    Working,
    /// Its record is committed; only the delete is left.
    Committed,
}

/// One held message.
#[derive(Debug, Clone)]
pub struct Lease {
    pub receipt_handle: String,
    /// Bumped with every new receipt handle: an extension confirmed for an older handle says nothing about
    /// the newer one.
    pub generation: u64,
    pub group_id: String,
    pub sequence: u128,
    pub received_at: Instant,
    /// Until when SQS keeps it hidden, as far as SQS has confirmed.
    pub visible_until: Instant,
    pub phase: Phase,
    /// SQS refused to extend it: another consumer may already have it.
    pub lost: bool,
}

/// What admitting a received message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Queued into a group nobody serves yet: start a task for it.
    NewGroup(String),
    /// Queued behind the group's earlier messages.
    Queued,
    /// Already held (SQS gave it back after its visibility lapsed): the receipt handle was refreshed.
    Redelivered,
}

/// A message that is due for a visibility extension, with the handle generation the request will carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub handle: Handle,
    pub generation: u64,
}

#[derive(Debug, Default)]
pub struct Held {
    groups: HashMap<String, VecDeque<Received>>,
    leases: HashMap<String, Lease>,
}

impl Held {
    /// Groups held (served by a task) and messages held.
    pub fn counts(&self) -> (usize, usize) {
        (self.groups.len(), self.leases.len())
    }

    pub fn holds_group(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    pub fn lease(&self, id: &str) -> Option<&Lease> {
        self.leases.get(id)
    }

    /// Take in one received message, hidden until `now + visibility`.
    pub fn admit(&mut self, m: Received, now: Instant, visibility: Duration) -> Admitted {
        if let Some(l) = self.leases.get_mut(&m.message_id) {
            l.receipt_handle = m.receipt_handle;
            l.generation += 1;
            l.visible_until = now + visibility;
            l.lost = false;
            return Admitted::Redelivered;
        }
        self.leases.insert(
            m.message_id.clone(),
            Lease {
                receipt_handle: m.receipt_handle.clone(),
                generation: 0,
                group_id: m.group_id.clone(),
                sequence: m
                    .sequence_number
                    .as_deref()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
                received_at: now,
                visible_until: now + visibility,
                phase: Phase::Pending,
                lost: false,
            },
        );
        match self.groups.get_mut(&m.group_id) {
            Some(q) => {
                q.push_back(m);
                Admitted::Queued
            }
            None => {
                let group = m.group_id.clone();
                self.groups.insert(group.clone(), VecDeque::from([m]));
                Admitted::NewGroup(group)
            }
        }
    }

    /// The group's next message, in receive order; it becomes Working.
    pub fn next(&mut self, group: &str) -> Option<Received> {
        let m = self.groups.get_mut(group)?.pop_front()?;
        if let Some(l) = self.leases.get_mut(&m.message_id) {
            l.phase = Phase::Working;
        }
        Some(m)
    }

    /// Messages waiting in any group (held, not started).
    pub fn pending(&self) -> usize {
        self.groups.values().map(VecDeque::len).sum()
    }

    /// Whether the group has messages waiting.
    pub fn has_pending(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(|q| !q.is_empty())
    }

    /// Stop serving a group whose queue is empty. Returns false (and keeps it) when messages arrived meanwhile.
    pub fn close_if_empty(&mut self, group: &str) -> bool {
        if self.has_pending(group) {
            return false;
        }
        self.groups.remove(group);
        true
    }

    /// Stop serving a group and take what was waiting in it (to be released, in order).
    pub fn close(&mut self, group: &str) -> Vec<Handle> {
        let rest: Vec<String> = self
            .groups
            .remove(group)
            .map(|q| q.into_iter().map(|m| m.message_id).collect())
            .unwrap_or_default();
        self.take(&rest)
    }

    /// Take every waiting (not started) message of every group, for release; the groups stay served until their
    /// tasks see the queue empty.
    pub fn take_pending(&mut self) -> Vec<Handle> {
        let ids: Vec<String> = self
            .groups
            .values_mut()
            .flat_map(|q| q.drain(..).map(|m| m.message_id))
            .collect();
        self.take(&ids)
    }

    /// Forget these messages and return their handles in release order (group, then sequence number).
    /// Committed messages are never handed out for release: they wait for their delete.
    pub fn take(&mut self, ids: &[String]) -> Vec<Handle> {
        let mut taken: Vec<(String, u128, Handle)> = Vec::new();
        for id in ids {
            let committed = self
                .leases
                .get(id)
                .is_some_and(|l| l.phase == Phase::Committed);
            if committed {
                continue;
            }
            if let Some(l) = self.leases.remove(id) {
                taken.push((
                    l.group_id,
                    l.sequence,
                    Handle {
                        message_id: id.clone(),
                        receipt_handle: l.receipt_handle,
                    },
                ));
            }
        }
        release_order(taken)
    }

    /// Their records are committed: hold them until deleted.
    pub fn committed(&mut self, ids: &[String]) {
        for id in ids {
            if let Some(l) = self.leases.get_mut(id) {
                l.phase = Phase::Committed;
            }
        }
    }

    /// Current handles of held messages (for a delete).
    pub fn handles(&self, ids: &[String]) -> Vec<Handle> {
        ids.iter()
            .filter_map(|id| {
                self.leases.get(id).map(|l| Handle {
                    message_id: id.clone(),
                    receipt_handle: l.receipt_handle.clone(),
                })
            })
            .collect()
    }

    /// Deleted (or given up on): forget them.
    pub fn forget(&mut self, ids: &[String]) {
        for id in ids {
            self.leases.remove(id);
        }
    }

    /// Messages whose confirmed visibility ends within `margin`: extend them now. Nothing is changed until SQS
    /// confirms ([`Held::extended`]), so a failed call is tried again on the next tick.
    pub fn due(&self, now: Instant, margin: Duration) -> Vec<Due> {
        let mut due: Vec<(&Lease, Due)> = self
            .leases
            .iter()
            .filter(|(_, l)| !l.lost && l.visible_until.saturating_duration_since(now) < margin)
            .map(|(id, l)| {
                let d = Due {
                    handle: Handle {
                        message_id: id.clone(),
                        receipt_handle: l.receipt_handle.clone(),
                    },
                    generation: l.generation,
                };
                (l, d)
            })
            .collect();
        // The most urgent first: if SQS only takes some calls, those go first.
        due.sort_by_key(|(l, _)| l.visible_until);
        due.into_iter().map(|(_, d)| d).collect()
    }

    /// SQS confirmed an extension sent at `sent_at` for `generation` of the handle: hidden until
    /// `sent_at + visibility` (counted from when the request left, which is earlier than SQS applied it).
    pub fn extended(&mut self, id: &str, generation: u64, sent_at: Instant, visibility: Duration) {
        if let Some(l) = self.leases.get_mut(id) {
            if l.generation == generation {
                l.visible_until = l.visible_until.max(sent_at + visibility);
            }
        }
    }

    /// SQS refused to extend it (the handle is no longer current: another consumer may have the message).
    /// Work on it goes on (the write is idempotent), but it is not extended again.
    pub fn lost(&mut self, id: &str, generation: u64) -> bool {
        match self.leases.get_mut(id) {
            Some(l) if l.generation == generation => {
                l.lost = true;
                true
            }
            _ => false,
        }
    }

    /// Per group: messages held and the oldest receive, for a drain that hit its deadline.
    pub fn describe(&self, now: Instant) -> String {
        let mut per_group: HashMap<&str, (usize, Instant)> = HashMap::new();
        for l in self.leases.values() {
            let e = per_group.entry(&l.group_id).or_insert((0, l.received_at));
            e.0 += 1;
            e.1 = e.1.min(l.received_at);
        }
        let mut parts: Vec<String> = per_group
            .iter()
            .map(|(g, (n, t))| {
                format!(
                    "group {g}: {n} held for {}s",
                    now.saturating_duration_since(*t).as_secs()
                )
            })
            .collect();
        parts.sort();
        if parts.is_empty() {
            "nothing held".into()
        } else {
            parts.join("; ")
        }
    }
}

/// Sort handles by (group, sequence number): a group's messages go back in the order SQS must hand them out.
pub fn release_order(mut taken: Vec<(String, u128, Handle)>) -> Vec<Handle> {
    taken.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    taken.into_iter().map(|(_, _, h)| h).collect()
}

/// Which messages of a poll the worker may not take in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refuse {
    /// Normal running: take everything.
    Nothing,
    /// Paused: messages of groups already held are fine, new groups are not taken.
    NewGroups,
    /// A drain began: take nothing new (a redelivery of a message already held still refreshes it).
    All,
}

/// What a poll's messages did to the held state.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// Groups nobody served yet: start a task for each.
    pub new_groups: Vec<String>,
    /// Refused (not held): release them at once.
    pub refused: Vec<Handle>,
}

/// A group task's next step.
#[derive(Debug)]
pub enum Take {
    /// These messages, in receive order: the task's to process.
    Run(Vec<Received>),
    /// The group is no longer served: release these (what waited in it when a drain ended it).
    Ended(Vec<Handle>),
}

/// The held state as the engine's loops share it. Every lock of it is taken here, one method a step, each
/// applying the rules of [`Held`] under one lock; a method that changes the counts publishes them (the gauges,
/// and the receive loop's capacity) once the lock is let go.
#[derive(Clone)]
pub struct SharedHeld {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Number of held groups: the receive loop waits on it for capacity.
    groups: watch::Sender<usize>,
}

#[derive(Default)]
struct State {
    held: Held,
    /// Taken out by a drain (not started, never to be started), in release order, waiting to be released
    /// once no poll can take them back.
    withheld: Vec<Handle>,
}

impl Default for SharedHeld {
    fn default() -> Self {
        SharedHeld {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                groups: watch::channel(0).0,
            }),
        }
    }
}

impl SharedHeld {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("held lock")
    }

    /// Publish the counts read under the lock that changed them.
    fn publish(&self, (groups, messages): (usize, usize)) {
        metrics::gauge!(GROUPS_IN_FLIGHT).set(groups as f64);
        metrics::gauge!(MESSAGES_IN_FLIGHT).set(messages as f64);
        self.shared.groups.send_replace(groups);
    }

    /// Groups and messages held right now.
    pub fn counts(&self) -> (usize, usize) {
        self.lock().held.counts()
    }

    /// The number of held groups, to wait on.
    pub fn groups_held(&self) -> watch::Receiver<usize> {
        self.shared.groups.subscribe()
    }

    /// Per group: messages held and the oldest receive.
    pub fn describe(&self, now: Instant) -> String {
        self.lock().held.describe(now)
    }

    /// Take in a poll's messages, hidden until `now + visibility`, except what `refuse` says not to take.
    pub fn admit(
        &self,
        messages: Vec<Received>,
        now: Instant,
        visibility: Duration,
        refuse: Refuse,
    ) -> Admission {
        let mut admission = Admission::default();
        let counts = {
            let held = &mut self.lock().held;
            for m in messages {
                let refused = match refuse {
                    Refuse::Nothing => false,
                    Refuse::NewGroups => !held.holds_group(&m.group_id),
                    Refuse::All => true,
                };
                if refused && held.lease(&m.message_id).is_none() {
                    admission.refused.push(Handle {
                        message_id: m.message_id,
                        receipt_handle: m.receipt_handle,
                    });
                    continue;
                }
                if let Admitted::NewGroup(group) = held.admit(m, now, visibility) {
                    admission.new_groups.push(group);
                }
            }
            held.counts()
        };
        self.publish(counts);
        admission
    }

    /// The start of a group's run: up to `max` of its next messages; or, when none waits (or `draining`), the
    /// end of the group, with what waited in it to release.
    pub fn take_or_end(&self, group: &str, max: usize, draining: bool) -> Take {
        let (ended, counts) = {
            let held = &mut self.lock().held;
            if !draining {
                let run: Vec<Received> = (0..max).map_while(|_| held.next(group)).collect();
                if !run.is_empty() {
                    return Take::Run(run);
                }
            }
            // Nothing waits (the queue is only filled under this lock): the group ends here.
            (held.close(group), held.counts())
        };
        self.publish(counts);
        Take::Ended(ended)
    }

    /// More of a run: up to `max` of the group's next messages (none: commit what the run has).
    pub fn take(&self, group: &str, max: usize) -> Vec<Received> {
        let held = &mut self.lock().held;
        (0..max).map_while(|_| held.next(group)).collect()
    }

    /// Give a group up: the unsettled part of its run and everything waiting behind it, each in release order.
    pub fn give_up(&self, group: &str, run: &[String]) -> (Vec<Handle>, Vec<Handle>) {
        let (taken, counts) = {
            let held = &mut self.lock().held;
            ((held.take(run), held.close(group)), held.counts())
        };
        self.publish(counts);
        taken
    }

    /// Their records are committed: held until deleted. Returns how long each has been held.
    pub fn committed(&self, ids: &[String], now: Instant) -> Vec<Duration> {
        let held = &mut self.lock().held;
        held.committed(ids);
        ids.iter()
            .filter_map(|id| held.lease(id))
            .map(|l| now.saturating_duration_since(l.received_at))
            .collect()
    }

    /// Current handles of held messages (for a delete).
    pub fn handles(&self, ids: &[String]) -> Vec<Handle> {
        self.lock().held.handles(ids)
    }

    /// Deleted (or given up on): forget them.
    pub fn forget(&self, ids: &[String]) {
        let counts = {
            let held = &mut self.lock().held;
            held.forget(ids);
            held.counts()
        };
        self.publish(counts);
    }

    /// Messages due for a visibility extension (see [`Held::due`]).
    pub fn due(&self, now: Instant, margin: Duration) -> Vec<Due> {
        self.lock().held.due(now, margin)
    }

    /// What SQS said to the extensions of `due` sent at `sent_at`: confirmed ones are hidden until
    /// `sent_at + visibility`; refused ones are lost. Returns the newly lost, with SQS's code.
    pub fn extensions(
        &self,
        due: &[Due],
        outcome: &BatchOutcome,
        sent_at: Instant,
        visibility: Duration,
    ) -> Vec<(String, String)> {
        let ok: HashSet<&str> = outcome.ok.iter().map(String::as_str).collect();
        let refused: HashMap<&str, &str> = outcome
            .refused
            .iter()
            .map(|(id, c)| (id.as_str(), c.as_str()))
            .collect();
        let mut lost = Vec::new();
        let held = &mut self.lock().held;
        for d in due {
            let id = d.handle.message_id.as_str();
            if ok.contains(id) {
                held.extended(id, d.generation, sent_at, visibility);
            } else if let Some(code) = refused.get(id) {
                if held.lost(id, d.generation) {
                    lost.push((id.to_owned(), (*code).to_owned()));
                }
            }
        }
        lost
    }

    /// Take every message not started out of the group tasks' reach, to be released by [`Self::take_withheld`]
    /// (a drain's first step).
    pub fn withhold_pending(&self) {
        let counts = {
            let state = &mut *self.lock();
            let taken = state.held.take_pending();
            state.withheld.extend(taken);
            state.held.counts()
        };
        self.publish(counts);
    }

    /// Whether a drain withheld messages that are not released yet.
    pub fn has_withheld(&self) -> bool {
        !self.lock().withheld.is_empty()
    }

    /// The withheld messages, to release now, in group order: each take is sorted, and a later take (none
    /// once receiving stopped) only adds later messages of a group.
    pub fn take_withheld(&self) -> Vec<Handle> {
        std::mem::take(&mut self.lock().withheld)
    }

    /// Every message not started, to release now (the rebalance policy that releases without stopping).
    pub fn take_pending(&self) -> Vec<Handle> {
        let (taken, counts) = {
            let held = &mut self.lock().held;
            (held.take_pending(), held.counts())
        };
        self.publish(counts);
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIS: Duration = Duration::from_secs(12);

    fn msg(id: &str, group: &str, seq: u128, receipt: &str) -> Received {
        Received {
            message_id: id.into(),
            receipt_handle: receipt.into(),
            body: String::new(),
            group_id: group.into(),
            sequence_number: Some(seq.to_string()),
            receive_count: 1,
            dedup_id: None,
        }
    }

    fn ids(hs: &[Handle]) -> Vec<&str> {
        hs.iter().map(|h| h.message_id.as_str()).collect()
    }

    #[test]
    fn a_group_is_served_in_receive_order_and_closed_only_when_empty() {
        let now = Instant::now();
        let mut h = Held::default();
        assert_eq!(
            h.admit(msg("a", "g", 1, "r1"), now, VIS),
            Admitted::NewGroup("g".into())
        );
        assert_eq!(h.admit(msg("b", "g", 2, "r2"), now, VIS), Admitted::Queued);
        assert_eq!(h.next("g").unwrap().message_id, "a");
        assert_eq!(h.lease("a").unwrap().phase, Phase::Working);
        assert!(!h.close_if_empty("g"), "b still waits");
        assert_eq!(h.next("g").unwrap().message_id, "b");
        assert!(h.close_if_empty("g"));
        assert!(!h.holds_group("g"));
        // The leases of a and b are still held (in flight) until deleted or released.
        assert_eq!(h.counts(), (0, 2));
    }

    #[test]
    fn a_redelivery_of_a_held_message_keeps_one_copy_with_the_newest_handle() {
        let now = Instant::now();
        let mut h = Held::default();
        h.admit(msg("a", "g", 1, "old"), now, VIS);
        let later = now + Duration::from_secs(13);
        assert_eq!(
            h.admit(msg("a", "g", 1, "new"), later, VIS),
            Admitted::Redelivered
        );
        assert_eq!(h.counts(), (1, 1));
        assert_eq!(h.next("g").unwrap().message_id, "a");
        assert!(h.next("g").is_none(), "queued twice");
        assert_eq!(h.handles(&["a".into()])[0].receipt_handle, "new");
        assert_eq!(h.lease("a").unwrap().visible_until, later + VIS);
    }

    #[test]
    fn an_extension_counts_only_once_confirmed_and_only_for_its_handle() {
        let now = Instant::now();
        let mut h = Held::default();
        h.admit(msg("a", "g", 1, "r1"), now, VIS);
        let t = now + Duration::from_secs(7);
        let due = h.due(t, VIS / 2);
        assert_eq!(due.len(), 1);
        // The call failed: nothing changed, it is still due on the next tick.
        assert_eq!(h.due(t + Duration::from_secs(2), VIS / 2).len(), 1);
        // A redelivery replaced the handle while an extension of the old one was in flight.
        h.admit(msg("a", "g", 1, "r2"), t, VIS);
        h.extended("a", due[0].generation, t, Duration::from_secs(600));
        assert_eq!(h.lease("a").unwrap().visible_until, t + VIS);
        // Confirmed for the current handle: no longer due.
        let due = h.due(t + Duration::from_secs(7), VIS / 2);
        h.extended("a", due[0].generation, t + Duration::from_secs(7), VIS);
        assert!(h.due(t + Duration::from_secs(8), VIS / 2).is_empty());
        // Refused: lost, never extended again, until a new receive gives it back.
        let due = h.due(t + Duration::from_secs(14), VIS / 2);
        assert!(h.lost("a", due[0].generation));
        assert!(h.due(t + Duration::from_secs(15), VIS / 2).is_empty());
    }

    #[test]
    fn release_goes_back_by_group_and_sequence_and_never_includes_committed_messages() {
        let now = Instant::now();
        let mut h = Held::default();
        for (id, g, seq) in [
            ("b2", "b", 20),
            ("a3", "a", 3),
            ("b1", "b", 10),
            ("a1", "a", 1),
        ] {
            h.admit(msg(id, g, seq, id), now, VIS);
        }
        // a1 is being worked on and then committed; the rest is pending.
        let first_a = h.next("a").unwrap();
        assert_eq!(first_a.message_id, "a3", "receive order within the group");
        h.committed(&["a3".into()]);
        let released = h.take(&["b2".into(), "a3".into(), "b1".into(), "a1".into()]);
        assert_eq!(ids(&released), ["a1", "b1", "b2"]);
        assert!(
            h.lease("a3").is_some(),
            "a committed message waits for its delete"
        );
    }

    #[test]
    fn a_drain_takes_only_what_has_not_started() {
        let now = Instant::now();
        let mut h = Held::default();
        for (id, seq) in [("m1", 1), ("m2", 2), ("m3", 3)] {
            h.admit(msg(id, "g", seq, id), now, VIS);
        }
        h.admit(msg("x1", "h", 5, "x1"), now, VIS);
        h.next("g");
        assert_eq!(h.pending(), 3);
        let released = h.take_pending();
        assert_eq!(h.pending(), 0);
        assert_eq!(ids(&released), ["m2", "m3", "x1"]);
        // The in-flight m1 is still held; the groups stay open until their tasks see them empty.
        assert_eq!(h.counts(), (2, 1));
        assert!(h.close_if_empty("g") && h.close_if_empty("h"));
    }

    #[test]
    fn giving_up_a_group_returns_its_run_and_its_rest_in_order() {
        let now = Instant::now();
        let mut h = Held::default();
        for (id, seq) in [("m1", 1), ("m2", 2), ("m3", 3), ("m4", 4)] {
            h.admit(msg(id, "g", seq, id), now, VIS);
        }
        let run: Vec<String> = (0..2).map(|_| h.next("g").unwrap().message_id).collect();
        let mut all = h.take(&run);
        all.extend(h.close("g"));
        assert_eq!(ids(&all), ["m1", "m2", "m3", "m4"]);
        assert_eq!(h.counts(), (0, 0));
    }

    #[test]
    fn a_group_left_over_in_a_drain_is_described() {
        let now = Instant::now();
        let mut h = Held::default();
        assert_eq!(h.describe(now), "nothing held");
        h.admit(msg("m1", "g", 1, "r"), now, VIS);
        h.admit(msg("m2", "g", 2, "r"), now, VIS);
        assert_eq!(
            h.describe(now + Duration::from_secs(3)),
            "group g: 2 held for 3s"
        );
    }
}
