//! The commit protocol of one run, as a pure state machine: which claim to send, which records to write,
//! and what each answer means. [`super::Store`] carries its steps out on DynamoDB; the randomized model in
//! `model.rs` carries them out on a simulated SQS FIFO queue and table with every fault we know of.
//!
//! # The argument
//! A group's row is `{LastPosition: p, Claimed: [s_1 .. s_k]}`: the SQS `SequenceNumber`s of the last k
//! positions handed out, `s_i` at position `p - k + i`. SequenceNumbers are stable across redeliveries and
//! increase within a group, so a row says of any message of the group where it stands:
//! - `s < s_1`: it was recorded before (see the invariant), write nothing;
//! - `s = s_i`: its position is `p - k + i`, whoever claimed it;
//! - `s > s_k`: nobody has claimed it yet.
//!
//! **Invariant: a position, once claimed for a sequence number, never changes, and every message below
//! `s_1` is recorded.** It holds because
//! 1. a claim is one conditional update of the row from the `LastPosition` the claimer based it on to that
//!    plus the number of new messages, so claims are serialized and each one is based on the row it replaces;
//! 2. a claim keeps every entry of the old row from the claimer's first held message on, then appends the new
//!    ones: an entry is only dropped when it is below a message the claimer received, and SQS FIFO hands out a
//!    message only after every earlier message of its group was deleted, which the worker does only once the
//!    record is confirmed;
//! 3. positions come only from a row DynamoDB really applied: the answer to our successful claim, or the row
//!    DynamoDB returns (`ALL_OLD`) when a claim's condition fails. After an unknown outcome (a lost response,
//!    a timeout) nothing is written: the identical claim is sent again, and its answer (success, or the row)
//!    says what happened. A cached row may be old; positions read from it are still right (1.), and a claim
//!    based on it fails and brings the new row at the cost of that one failed write.
//!
//! The records then follow as plain inserts that fail if the OrderID exists (1 write unit each, where a
//! transaction costs 2). An insert that finds its OrderID taken reads the item: the same sequence number at
//! the same position is an earlier completion of this very write; anything else (the same order sent again
//! as another message, another order under the same id, a record from before this protocol) gets a marker
//! at this message's position under its own key, `duplicate:<MessageId>` or `conflict:<MessageId>`, so every
//! position has exactly one item and nothing is applied twice. Two writes of one OrderID are never in flight
//! at once (a later message of the same id waits for the earlier one's answer), so the first message sent
//! with an id is the one recorded. A message is reported settled only once its item is confirmed, and only
//! settled messages are deleted.
//!
//! What this costs: one claim per run (1 unit for a row under 1 KB) plus one unit per record, where the
//! transaction paid 2 per record and 2 per group update.

use std::fmt;

/// An SQS FIFO SequenceNumber: up to 128 bits, compared as an integer.
pub type Seq = u128;

/// Parse a SequenceNumber as SQS sends it (decimal digits).
pub fn parse_seq(s: &str) -> Option<Seq> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A group row as DynamoDB holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    /// The last position handed out.
    pub last: u64,
    /// The sequence numbers of the last `claimed.len()` positions, increasing.
    pub claimed: Vec<Seq>,
}

impl GroupRow {
    /// A row as read: fails (saying why) unless the entries increase and fit below `last`.
    pub fn new(last: u64, claimed: Vec<Seq>) -> Result<Self, String> {
        if claimed.len() as u64 > last {
            return Err(format!(
                "{} claimed entries but LastPosition is {last}",
                claimed.len()
            ));
        }
        if claimed.windows(2).any(|w| w[0] >= w[1]) {
            return Err("Claimed sequence numbers do not increase".into());
        }
        Ok(GroupRow { last, claimed })
    }

    /// Where a message with sequence number `s` stands.
    pub fn place(&self, s: Seq) -> Place {
        let (Some(first), Some(last)) = (self.claimed.first(), self.claimed.last()) else {
            // A row from before claims existed (LastPosition only): everything held is new to it; an order
            // it recorded comes back as "exists" on insert and gets a marker (see `answered`).
            return Place::New;
        };
        if s < *first {
            Place::Recorded
        } else if s > *last {
            Place::New
        } else {
            match self.claimed.binary_search(&s) {
                Ok(i) => Place::At(self.last - self.claimed.len() as u64 + 1 + i as u64),
                Err(_) => Place::Unplaceable,
            }
        }
    }
}

/// Where a message stands against a group row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Below the claimed entries: recorded before.
    Recorded,
    /// Claimed, at this position.
    At(u64),
    /// Above the claimed entries: needs a claim.
    New,
    /// Between claimed entries but not one of them: not a message of this group as SQS delivered it.
    Unplaceable,
}

/// A conditional update of a group row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The `LastPosition` the claim is based on (None: the row must not exist).
    pub expect: Option<u64>,
    /// The row it writes.
    pub row: GroupRow,
}

/// What DynamoDB said to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimAnswer {
    Applied,
    /// The condition failed; the row as it is (None: there is no row).
    Stale(Option<GroupRow>),
    /// No answer, or an error after which it may or may not have been applied.
    Unknown,
    /// Not applied (throttled, refused before it ran).
    NotApplied,
}

/// One message of a run, as the protocol needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub seq: Seq,
    /// The record's key (the OrderID).
    pub key: String,
    pub sha: String,
    pub message_id: String,
}

/// A marker's kind: the same payload as the record under its OrderID, or another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    Duplicate,
    Conflict,
}

impl MarkerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MarkerKind::Duplicate => "duplicate",
            MarkerKind::Conflict => "conflict",
        }
    }
}

/// What to write for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Its record under its OrderID.
    Record { idx: usize, position: u64 },
    /// Its record replaced by a REJECTED stand-in (DynamoDB refused the record itself), same key.
    StandIn {
        idx: usize,
        position: u64,
        reason: String,
    },
    /// A marker under `<kind>:<MessageId>`.
    Marker {
        idx: usize,
        position: u64,
        kind: MarkerKind,
        /// The OrderID whose record is already there.
        of: String,
    },
}

impl Write {
    pub fn idx(&self) -> usize {
        match self {
            Write::Record { idx, .. } | Write::StandIn { idx, .. } | Write::Marker { idx, .. } => {
                *idx
            }
        }
    }

    pub fn position(&self) -> u64 {
        match self {
            Write::Record { position, .. }
            | Write::StandIn { position, .. }
            | Write::Marker { position, .. } => *position,
        }
    }

    /// The item key this write inserts.
    pub fn key(&self, msgs: &[Msg]) -> String {
        match self {
            Write::Record { idx, .. } | Write::StandIn { idx, .. } => msgs[*idx].key.clone(),
            Write::Marker { idx, kind, .. } => marker_key(*kind, &msgs[*idx].message_id),
        }
    }
}

/// The key of a marker.
pub fn marker_key(kind: MarkerKind, message_id: &str) -> String {
    format!("{}:{message_id}", kind.as_str())
}

/// The item found under a key an insert wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub seq: Option<Seq>,
    pub position: Option<u64>,
    /// None: the item has no PayloadSha256 (not written by this worker).
    pub sha: Option<String>,
    /// Written by this worker for this delivery (ProcessedBy and ReceiveCount match): our own earlier try.
    pub ours: bool,
    /// In the run's own message group. SequenceNumbers increase within a group; AWS does not promise them
    /// unique across groups, so the same number at the same position in another group is another message.
    pub same_group: bool,
}

/// What DynamoDB said to one insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteAnswer {
    Written,
    /// The key exists; the item, when it could be read (None: it is gone again).
    Exists(Option<Existing>),
    /// Throttled or failed before it ran, or no answer: may be sent again as it is.
    Retry,
    /// DynamoDB refuses this item itself (too large, invalid), with its reason.
    Refused(String),
}

/// How a message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Its record was written (now, or by our own earlier try whose answer was lost), at this position.
    New { position: u64, stand_in: bool },
    /// Already recorded by an earlier delivery of the same message.
    Redelivered,
    /// Its position holds a marker: the order id was recorded by another message.
    Marker { position: u64, kind: MarkerKind },
}

/// The next step of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Claim(Claim),
    /// Inserts that may be sent now (each key at most once).
    Write(Vec<Write>),
    /// Every message is settled.
    Done,
    /// The run cannot go on: the row or the messages are not what SQS and this protocol produce.
    Stuck(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Unplaced,
    Placed(u64),
    /// Waiting to write this (a marker or a stand-in decided by an earlier answer).
    Pending(Write),
    Done(Settled),
}

/// A protocol variant, for showing that the model test catches a wrong one.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planted {
    /// A claim lists only its new messages, dropping the claimed ones still held.
    NoCarry,
    /// After an unknown outcome, assume the claim applied and write at its positions.
    TrustUnknown,
}

/// One run of one group going through the commit protocol: its messages, the row it knows, and where each
/// message stands.
#[derive(Debug, Clone)]
pub struct RunProtocol {
    msgs: Vec<Msg>,
    /// The newest row known to have been applied (None: none, or no row).
    row: Option<GroupRow>,
    /// A claim whose outcome is unknown: sent again as it is before anything else.
    outstanding: Option<Claim>,
    states: Vec<State>,
    #[cfg(test)]
    planted: Option<Planted>,
}

impl RunProtocol {
    /// A run of messages in their group's order, and the row the caller knows (possibly old).
    pub fn new(msgs: Vec<Msg>, row: Option<GroupRow>) -> Self {
        let states = vec![State::Unplaced; msgs.len()];
        RunProtocol {
            msgs,
            row,
            outstanding: None,
            states,
            #[cfg(test)]
            planted: None,
        }
    }

    #[cfg(test)]
    pub fn planted(mut self, p: Option<Planted>) -> Self {
        self.planted = p;
        self
    }

    pub fn msgs(&self) -> &[Msg] {
        &self.msgs
    }

    /// The newest row known to have been applied: what the caller may cache.
    pub fn row(&self) -> Option<&GroupRow> {
        self.row.as_ref()
    }

    /// The next step: places what the known row allows; asking twice without an answer asks the same.
    pub fn step(&mut self) -> Step {
        if let Some(c) = &self.outstanding {
            return Step::Claim(c.clone());
        }
        if self.msgs.windows(2).any(|w| w[0].seq >= w[1].seq) {
            return Step::Stuck("the run's sequence numbers do not increase".into());
        }
        // Place what can be placed against the row.
        let mut new = Vec::new();
        for i in 0..self.msgs.len() {
            if self.states[i] != State::Unplaced {
                continue;
            }
            let place = match &self.row {
                Some(r) => r.place(self.msgs[i].seq),
                None => Place::New,
            };
            match place {
                Place::Recorded => self.states[i] = State::Done(Settled::Redelivered),
                Place::At(p) => self.states[i] = State::Placed(p),
                Place::New => new.push(i),
                Place::Unplaceable => {
                    return Step::Stuck(format!(
                        "message {} (SequenceNumber {}) lies between the group's claimed entries without being one",
                        self.msgs[i].message_id, self.msgs[i].seq
                    ))
                }
            }
        }
        if !new.is_empty() {
            return Step::Claim(self.claim_for(&new));
        }
        let mut writes = Vec::new();
        for i in 0..self.msgs.len() {
            let w = match &self.states[i] {
                State::Placed(p) => Write::Record {
                    idx: i,
                    position: *p,
                },
                State::Pending(w) => w.clone(),
                _ => continue,
            };
            // The first message of an OrderID is the one recorded: a later one waits for its answer.
            let blocked = (0..i).any(|j| {
                self.msgs[j].key == self.msgs[i].key && !matches!(self.states[j], State::Done(_))
            });
            if !blocked {
                writes.push(w);
            }
        }
        if writes.is_empty() {
            Step::Done
        } else {
            Step::Write(writes)
        }
    }

    fn claim_for(&self, new: &[usize]) -> Claim {
        let expect = self.row.as_ref().map(|r| r.last);
        let first_held = self.msgs[0].seq;
        let mut claimed: Vec<Seq> = self
            .row
            .as_ref()
            .map(|r| {
                r.claimed
                    .iter()
                    .copied()
                    .filter(|s| *s >= first_held)
                    .collect()
            })
            .unwrap_or_default();
        #[cfg(test)]
        if self.planted == Some(Planted::NoCarry) {
            claimed.clear();
        }
        claimed.extend(new.iter().map(|i| self.msgs[*i].seq));
        Claim {
            expect,
            row: GroupRow {
                last: expect.unwrap_or(0) + new.len() as u64,
                claimed,
            },
        }
    }

    /// DynamoDB's answer to the claim `step` returned.
    pub fn claimed(&mut self, claim: &Claim, answer: ClaimAnswer) {
        match answer {
            ClaimAnswer::Applied => {
                self.row = Some(claim.row.clone());
                self.outstanding = None;
            }
            ClaimAnswer::Stale(row) => {
                self.row = row;
                self.outstanding = None;
            }
            ClaimAnswer::Unknown => {
                #[cfg(test)]
                if self.planted == Some(Planted::TrustUnknown) {
                    self.row = Some(claim.row.clone());
                    return;
                }
                self.outstanding = Some(claim.clone());
            }
            ClaimAnswer::NotApplied => {}
        }
    }

    /// DynamoDB's answer to one write `step` returned.
    pub fn answered(&mut self, w: &Write, answer: WriteAnswer) {
        let i = w.idx();
        let position = w.position();
        self.states[i] = match (w, answer) {
            (Write::Record { .. }, WriteAnswer::Written) => State::Done(Settled::New {
                position,
                stand_in: false,
            }),
            (Write::StandIn { .. }, WriteAnswer::Written) => State::Done(Settled::New {
                position,
                stand_in: true,
            }),
            (Write::Marker { kind, .. }, WriteAnswer::Written) => State::Done(Settled::Marker {
                position,
                kind: *kind,
            }),
            // A marker's key names this message: whoever wrote it wrote this marker.
            (Write::Marker { kind, .. }, WriteAnswer::Exists(_)) => State::Done(Settled::Marker {
                position,
                kind: *kind,
            }),
            (Write::Record { .. } | Write::StandIn { .. }, WriteAnswer::Exists(Some(e))) => {
                let me = &self.msgs[i];
                if e.same_group && e.seq == Some(me.seq) && e.position == Some(position) {
                    State::Done(if e.ours {
                        Settled::New {
                            position,
                            stand_in: matches!(w, Write::StandIn { .. }),
                        }
                    } else {
                        Settled::Redelivered
                    })
                } else {
                    let kind = if e.sha.as_deref() == Some(me.sha.as_str()) {
                        MarkerKind::Duplicate
                    } else {
                        MarkerKind::Conflict
                    };
                    State::Pending(Write::Marker {
                        idx: i,
                        position,
                        kind,
                        of: me.key.clone(),
                    })
                }
            }
            // Gone again between the insert and the read: insert again.
            (_, WriteAnswer::Exists(None)) | (_, WriteAnswer::Retry) => match w {
                Write::Record { .. } => State::Placed(position),
                other => State::Pending(other.clone()),
            },
            (Write::Record { .. }, WriteAnswer::Refused(reason)) => {
                State::Pending(Write::StandIn {
                    idx: i,
                    position,
                    reason,
                })
            }
            // A stand-in or a marker refused: nothing smaller to write; the caller gives the run up.
            (other, WriteAnswer::Refused(_)) => State::Pending(other.clone()),
        };
    }

    /// The settled prefix, in order (what may be deleted and reported).
    pub fn settled(&self) -> Vec<Settled> {
        self.states
            .iter()
            .map_while(|s| match s {
                State::Done(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every message settled.
    pub fn is_done(&self) -> bool {
        self.states.iter().all(|s| matches!(s, State::Done(_)))
    }
}

impl fmt::Display for GroupRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LastPosition {} Claimed {:?}", self.last, self.claimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: Seq, key: &str) -> Msg {
        Msg {
            seq,
            key: key.into(),
            sha: format!("sha-{key}"),
            message_id: format!("m{seq}"),
        }
    }

    fn row(last: u64, claimed: &[Seq]) -> GroupRow {
        GroupRow::new(last, claimed.to_vec()).unwrap()
    }

    #[test]
    fn a_row_places_messages_below_at_and_above_its_claim() {
        let r = row(7, &[100, 200, 300]);
        assert_eq!(r.place(50), Place::Recorded);
        assert_eq!(r.place(100), Place::At(5));
        assert_eq!(r.place(300), Place::At(7));
        assert_eq!(r.place(301), Place::New);
        assert_eq!(r.place(150), Place::Unplaceable);
        // A row written before claims existed: everything held is new to it.
        assert_eq!(row(4, &[]).place(1), Place::New);
    }

    #[test]
    fn rows_that_cannot_be_are_refused() {
        assert!(GroupRow::new(1, vec![1, 2]).is_err());
        assert!(GroupRow::new(5, vec![2, 2]).is_err());
        assert_eq!(
            parse_seq("18849496460467696128"),
            Some(18849496460467696128)
        );
        assert_eq!(parse_seq("-1"), None);
        assert_eq!(parse_seq(""), None);
    }

    #[test]
    fn a_new_run_claims_then_writes_at_its_positions() {
        let mut c = RunProtocol::new(vec![msg(10, "a"), msg(11, "b")], Some(row(3, &[7, 8])));
        let Step::Claim(claim) = c.step() else {
            panic!()
        };
        // The claimed entries below the first held message are recorded: not carried.
        assert_eq!(claim.expect, Some(3));
        assert_eq!(claim.row, row(5, &[10, 11]));
        c.claimed(&claim, ClaimAnswer::Applied);
        let Step::Write(w) = c.step() else { panic!() };
        assert_eq!(
            w,
            vec![
                Write::Record {
                    idx: 0,
                    position: 4
                },
                Write::Record {
                    idx: 1,
                    position: 5
                }
            ]
        );
        for x in &w {
            c.answered(x, WriteAnswer::Written);
        }
        assert_eq!(c.step(), Step::Done);
        assert_eq!(c.settled().len(), 2);
    }

    #[test]
    fn a_claim_carries_the_held_claimed_messages_forward() {
        // Another worker claimed 10 and 11 at 4 and 5, wrote 10 and froze; we hold 11 and 12.
        let mut c = RunProtocol::new(vec![msg(11, "b"), msg(12, "c")], Some(row(5, &[10, 11])));
        let Step::Claim(claim) = c.step() else {
            panic!()
        };
        assert_eq!(claim.row, row(6, &[11, 12]));
        c.claimed(&claim, ClaimAnswer::Applied);
        let Step::Write(w) = c.step() else { panic!() };
        assert_eq!(w.iter().map(Write::position).collect::<Vec<_>>(), [5, 6]);
    }

    #[test]
    fn a_stale_claim_takes_the_row_it_gets_back() {
        let mut c = RunProtocol::new(vec![msg(11, "b")], Some(row(3, &[9])));
        let Step::Claim(claim) = c.step() else {
            panic!()
        };
        // Someone claimed 10 and 11 meanwhile.
        c.claimed(&claim, ClaimAnswer::Stale(Some(row(5, &[10, 11]))));
        let Step::Write(w) = c.step() else { panic!() };
        assert_eq!(
            w,
            vec![Write::Record {
                idx: 0,
                position: 5
            }]
        );
    }

    #[test]
    fn an_unknown_claim_is_sent_again_unchanged_and_nothing_is_written() {
        let mut c = RunProtocol::new(vec![msg(5, "a")], None);
        let Step::Claim(claim) = c.step() else {
            panic!()
        };
        assert_eq!(claim.expect, None);
        c.claimed(&claim, ClaimAnswer::Unknown);
        assert_eq!(c.step(), Step::Claim(claim.clone()));
        // It had applied: the resend fails and the row shows our own claim.
        c.claimed(&claim, ClaimAnswer::Stale(Some(row(1, &[5]))));
        assert!(matches!(c.step(), Step::Write(w) if w[0].position() == 1));
    }

    #[test]
    fn messages_below_the_claim_are_settled_without_a_write() {
        let mut c = RunProtocol::new(vec![msg(5, "a"), msg(6, "b")], Some(row(9, &[6])));
        let Step::Write(w) = c.step() else { panic!() };
        assert_eq!(w.len(), 1);
        assert_eq!(c.settled(), vec![Settled::Redelivered]);
    }

    #[test]
    fn a_second_message_of_an_order_id_waits_then_gets_a_marker() {
        let mut c = RunProtocol::new(vec![msg(1, "a"), msg(2, "a")], Some(row(2, &[1, 2])));
        let Step::Write(w) = c.step() else { panic!() };
        assert_eq!(w.len(), 1, "the second write of 'a' waits");
        c.answered(&w[0], WriteAnswer::Written);
        let Step::Write(w) = c.step() else { panic!() };
        let existing = Existing {
            seq: Some(1),
            position: Some(1),
            sha: Some("sha-a".into()),
            ours: true,
            same_group: true,
        };
        c.answered(&w[0], WriteAnswer::Exists(Some(existing)));
        let Step::Write(w) = c.step() else { panic!() };
        assert_eq!(
            w,
            vec![Write::Marker {
                idx: 1,
                position: 2,
                kind: MarkerKind::Duplicate,
                of: "a".into()
            }]
        );
        assert_eq!(w[0].key(c.msgs()), "duplicate:m2");
        c.answered(&w[0], WriteAnswer::Written);
        assert_eq!(c.step(), Step::Done);
    }

    #[test]
    fn an_existing_record_of_the_same_message_is_an_earlier_completion() {
        let mut c = RunProtocol::new(vec![msg(1, "a")], Some(row(1, &[1])));
        let Step::Write(w) = c.step() else { panic!() };
        let e = Existing {
            seq: Some(1),
            position: Some(1),
            sha: Some("sha-a".into()),
            ours: false,
            same_group: true,
        };
        c.answered(&w[0], WriteAnswer::Exists(Some(e.clone())));
        assert_eq!(c.settled(), vec![Settled::Redelivered]);
        // Another payload under the id: a conflict marker.
        let mut c = RunProtocol::new(vec![msg(1, "a")], Some(row(1, &[1])));
        let Step::Write(w) = c.step() else { panic!() };
        let other = Existing {
            seq: Some(0),
            sha: Some("x".into()),
            ..e
        };
        c.answered(&w[0], WriteAnswer::Exists(Some(other)));
        assert!(
            matches!(c.step(), Step::Write(w) if matches!(w[0], Write::Marker { kind: MarkerKind::Conflict, .. }))
        );
    }

    #[test]
    fn the_same_number_at_the_same_position_in_another_group_is_another_message() {
        // Order "a" reused in another group, whose message had the same SequenceNumber and position: not a
        // redelivery of ours (that would be deleted with no item of its own), a marker.
        let mut c = RunProtocol::new(vec![msg(1, "a")], Some(row(1, &[1])));
        let Step::Write(w) = c.step() else { panic!() };
        let elsewhere = Existing {
            seq: Some(1),
            position: Some(1),
            sha: Some("sha-a".into()),
            ours: false,
            same_group: false,
        };
        c.answered(&w[0], WriteAnswer::Exists(Some(elsewhere)));
        assert!(c.settled().is_empty());
        assert!(
            matches!(c.step(), Step::Write(w) if matches!(w[0], Write::Marker { kind: MarkerKind::Duplicate, position: 1, .. }))
        );
    }

    #[test]
    fn a_refused_record_is_replaced_by_a_stand_in_at_its_position() {
        let mut c = RunProtocol::new(vec![msg(1, "a")], Some(row(1, &[1])));
        let Step::Write(w) = c.step() else { panic!() };
        c.answered(&w[0], WriteAnswer::Refused("too large".into()));
        let Step::Write(w) = c.step() else { panic!() };
        assert!(
            matches!(&w[0], Write::StandIn { position: 1, reason, .. } if reason == "too large")
        );
        c.answered(&w[0], WriteAnswer::Written);
        assert_eq!(
            c.settled(),
            vec![Settled::New {
                position: 1,
                stand_in: true
            }]
        );
    }

    #[test]
    fn messages_that_are_not_a_fifo_run_stop_it() {
        let mut c = RunProtocol::new(vec![msg(2, "a"), msg(1, "b")], None);
        assert!(matches!(c.step(), Step::Stuck(_)));
        let mut c = RunProtocol::new(vec![msg(15, "a")], Some(row(3, &[10, 20])));
        assert!(matches!(c.step(), Step::Stuck(_)));
    }
}
