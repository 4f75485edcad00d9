//! The auditor: read the orders table and a manifest of what was sent, and fail every state the guarantees
//! forbid. Used by the tests, the demo, the soaks, the benchmark and the aws-cli ordering check; runs
//! unchanged against AWS.
//!
//! What it checks, from the table and the manifest alone (each with a planted-state test below):
//! - **one item per SQS message**: no MessageId, and no (group, SequenceNumber), holds two items (a message
//!   recorded and marked again, or written at two positions); every message the manifest names by its
//!   MessageId holds one item (its record, or a marker), and every order sent has its record;
//! - **every item in the group its message was sent to**: a record or marker is compared with the manifest's
//!   group of its message (by MessageId, else by its order id's first send); any group holding an item of the
//!   manifest is audited, not only the manifest's groups;
//! - **dense 1..n in send order, markers included**: positions 1..max(LastPosition, highest) each hold exactly
//!   one item, and the send index of the items (a marker's by its own MessageId: it stands at its message's
//!   place) increases along the positions;
//! - **nothing nobody sent**: a record (REJECTED `rejected:` ones included) or a marker that no manifest line
//!   accounts for fails the verdict;
//! - **right verdicts**: each order's record carries the status the sender expected; a marker's key names its
//!   own message and its kind (`DUPLICATE`: the same payload as the record it names, `CONFLICT`: another);
//!   an item with a status the worker never writes is a wrong verdict.
//!
//! Markers can only be placed exactly when the manifest carries the MessageId of each send (every producer
//! here writes it); without it a marker is checked for its record and key only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use aws_sdk_dynamodb::Client;
use serde::{Deserialize, Serialize};

use crate::schema::{self, Item, Status};

/// One line of the manifest: a message as it was sent, in send order.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sent {
    /// The order id, when the body had a usable one.
    #[serde(default)]
    pub order_id: Option<String>,
    /// The message group (the customer).
    pub group: String,
    /// `accepted` or `rejected`, when the sender knows.
    #[serde(default)]
    pub expect: Option<String>,
    /// The SQS MessageId: places the message's item (record or marker) and finds `rejected:<MessageId>`
    /// records of bodies without an order id. The same MessageId twice is one message (SQS deduplicated it).
    #[serde(default)]
    pub message_id: Option<String>,
    /// The SQS SequenceNumber, when known: the message's item must carry it.
    #[serde(default)]
    pub sequence_number: Option<String>,
}

/// One item of the orders table as read back.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub order_id: String,
    pub group: String,
    pub position: u64,
    pub status: String,
    pub message_id: String,
    pub sequence_number: Option<String>,
    pub processed_by: String,
    /// A marker's order: the OrderID whose record holds the order this message carried again.
    pub marker_of: Option<String>,
    /// The SHA-256 of the body that wrote it.
    pub payload_sha256: Option<String>,
}

impl Stored {
    fn status(&self) -> Option<Status> {
        Status::parse(&self.status)
    }

    fn is_marker(&self) -> bool {
        self.status().is_some_and(Status::is_marker)
    }

    fn at(&self) -> String {
        format!(
            "{} (group {}, position {})",
            self.order_id, self.group, self.position
        )
    }
}

/// The audit's findings. Every count but the totals fails the verdict when it is not 0.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub sent: usize,
    pub distinct_orders: usize,
    /// Distinct MessageIds the manifest names.
    pub messages_named: usize,
    pub records: usize,
    /// An order sent with no record, or a message the manifest names with no item of its own.
    pub lost: usize,
    /// A position used twice, or a message (MessageId, or group and SequenceNumber) holding two items.
    pub applied_twice: usize,
    pub out_of_order: usize,
    /// Positions in 1..=max(LastPosition, highest position) of a group with no record: a record is missing
    /// (lost, or deleted) even if its order was re-applied elsewhere.
    pub position_gaps: usize,
    pub wrong_status: usize,
    /// An item nobody sent: a record (`rejected:` included) or a marker the manifest does not account for.
    pub unexpected: usize,
    /// An item in another group than the one its message (or its order) was sent to.
    pub misplaced: usize,
    pub accepted: usize,
    pub rejected: usize,
    /// Positions held by a marker: a message that carried an order already recorded (`duplicate:`) or
    /// another payload under a recorded OrderID (`conflict:`).
    pub markers: usize,
    /// Markers whose OrderID has no record: the order they stand for is not in the table.
    pub orphan_markers: usize,
    pub groups: usize,
    pub per_instance: BTreeMap<String, usize>,
    /// `ok()`, for readers of the JSON report.
    pub verdict_ok: bool,
    /// A few examples of each problem, for a person to look at.
    pub examples: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.applied_twice == 0
            && self.out_of_order == 0
            && self.position_gaps == 0
            && self.wrong_status == 0
            && self.orphan_markers == 0
            && self.unexpected == 0
            && self.misplaced == 0
    }

    fn example(&mut self, s: String) {
        if self.examples.len() < 30 {
            self.examples.push(s);
        }
    }

    pub fn summary(&self) -> String {
        let mut out = format!(
            "sent {} messages ({} distinct orders, {} MessageIds, {} groups); records {} (accepted {}, rejected {}, markers {})\n\
             lost {}  applied twice {}  out of order {}  position gaps {}  wrong verdict {}  orphan markers {}  unexpected {}  misplaced {}\n",
            self.sent,
            self.distinct_orders,
            self.messages_named,
            self.groups,
            self.records,
            self.accepted,
            self.rejected,
            self.markers,
            self.lost,
            self.applied_twice,
            self.out_of_order,
            self.position_gaps,
            self.wrong_status,
            self.orphan_markers,
            self.unexpected,
            self.misplaced
        );
        for (instance, n) in &self.per_instance {
            out.push_str(&format!("  {instance}: {n} records\n"));
        }
        for e in &self.examples {
            out.push_str(&format!("  ! {e}\n"));
        }
        out.push_str(if self.ok() {
            "VERDICT: OK\n"
        } else {
            "VERDICT: FAILED\n"
        });
        out
    }
}

/// Read a JSON-lines manifest.
pub fn read_manifest(path: &Path) -> anyhow::Result<Vec<Sent>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read manifest {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| anyhow::anyhow!("manifest line {}: {e}", i + 1))
        })
        .collect()
}

/// The key a send's record is stored under: its order id, or `rejected:<MessageId>` without one.
fn record_key(s: &Sent) -> Option<String> {
    match (&s.order_id, &s.message_id) {
        (Some(id), _) => Some(id.clone()),
        (None, Some(m)) => Some(format!("rejected:{m}")),
        (None, None) => None,
    }
}

/// The manifest, indexed: the first send of an order id fixes its record's place; each MessageId its own item's.
struct Manifest<'a> {
    sent: &'a [Sent],
    /// Record key -> index of its first send.
    index_of: HashMap<String, usize>,
    /// Record key -> the verdict its first send expects.
    expect_of: HashMap<String, Option<String>>,
    /// MessageId -> its (first) send.
    message: HashMap<&'a str, (usize, &'a Sent)>,
    /// Per group, sends with neither an order id nor a MessageId: each may account for one `rejected:` record.
    anonymous: HashMap<&'a str, usize>,
    /// Groups where some send has no MessageId: their markers cannot be matched to a send.
    unnamed: HashSet<&'a str>,
}

impl<'a> Manifest<'a> {
    fn index(sent: &'a [Sent]) -> Self {
        let mut m = Manifest {
            sent,
            index_of: HashMap::new(),
            expect_of: HashMap::new(),
            message: HashMap::new(),
            anonymous: HashMap::new(),
            unnamed: HashSet::new(),
        };
        for (i, s) in sent.iter().enumerate() {
            match &s.message_id {
                Some(id) => {
                    m.message.entry(id.as_str()).or_insert((i, s));
                }
                None => {
                    m.unnamed.insert(s.group.as_str());
                }
            }
            let Some(key) = record_key(s) else {
                *m.anonymous.entry(s.group.as_str()).or_default() += 1;
                continue;
            };
            m.index_of.entry(key.clone()).or_insert(i);
            m.expect_of.entry(key).or_insert_with(|| s.expect.clone());
        }
        m
    }

    fn group_of_key(&self, key: &str) -> Option<&'a str> {
        self.index_of.get(key).map(|i| self.sent[*i].group.as_str())
    }

    fn sent_as(&self, s: &Stored) -> Option<&'a Sent> {
        self.message.get(s.message_id.as_str()).map(|(_, m)| *m)
    }

    /// Whether an item belongs to something the manifest sent.
    fn names(&self, s: &Stored) -> bool {
        self.message.contains_key(s.message_id.as_str())
            || self.index_of.contains_key(&s.order_id)
            || s.marker_of
                .as_deref()
                .is_some_and(|k| self.index_of.contains_key(k))
    }

    /// An item's place in the send order: its own message's when the manifest names it (a marker stands
    /// there), else its order's first send; a marker the manifest cannot place has none.
    fn place(&self, s: &Stored) -> Option<usize> {
        match self.message.get(s.message_id.as_str()) {
            Some((i, _)) => Some(*i),
            None if !s.is_marker() => self.index_of.get(&s.order_id).copied(),
            None => None,
        }
    }
}

/// One audit in progress: the indexed manifest, the records by key, and the report it fills.
struct Audit<'a> {
    m: Manifest<'a>,
    /// Records (not markers) by key, wherever they are: a marker's order and a lost order are looked up here.
    by_id: HashMap<&'a str, &'a Stored>,
    r: Report,
}

/// Compare what was sent with what was stored. Pure: the tests feed it directly.
pub fn audit(
    sent: &[Sent],
    stored: &[Stored],
    last_positions: &HashMap<String, u64>,
    only_manifest_groups: bool,
) -> Report {
    let m = Manifest::index(sent);
    let mut a = Audit {
        r: Report {
            sent: sent.len(),
            distinct_orders: m.index_of.len(),
            messages_named: m.message.len(),
            ..Report::default()
        },
        by_id: stored
            .iter()
            .filter(|s| !s.is_marker())
            .map(|s| (s.order_id.as_str(), s))
            .collect(),
        m,
    };
    let mut items = a.audited_items(stored, only_manifest_groups);
    a.one_item_per_message(&items);
    items.sort_by(|x, y| (&x.group, x.position).cmp(&(&y.group, y.position)));
    let mut anonymous_left = a.m.anonymous.clone();
    for s in &items {
        a.item(s, &mut anonymous_left);
    }
    a.lost(stored);
    a.verdicts();
    let mut per_group: BTreeMap<&str, Vec<&Stored>> = BTreeMap::new();
    for s in &items {
        per_group.entry(&s.group).or_default().push(s);
    }
    for (g, recs) in per_group {
        a.positions(g, &recs, last_positions.get(g).copied().unwrap_or(0));
    }
    a.r.verdict_ok = a.r.ok();
    a.r
}

impl<'a> Audit<'a> {
    /// The items of the audited groups: the manifest's, and any group holding an item of the manifest (an
    /// order applied in another group is found there); every group when asked.
    fn audited_items(
        &mut self,
        stored: &'a [Stored],
        only_manifest_groups: bool,
    ) -> Vec<&'a Stored> {
        let mut groups: HashSet<&str> = self.m.sent.iter().map(|s| s.group.as_str()).collect();
        for s in stored {
            if !only_manifest_groups || self.m.names(s) {
                groups.insert(s.group.as_str());
            }
        }
        self.r.groups = groups.len();
        let items: Vec<&Stored> = stored
            .iter()
            .filter(|s| groups.contains(s.group.as_str()))
            .collect();
        self.r.records = items.len();
        items
    }

    /// One item per SQS message: by MessageId, and by (group, SequenceNumber).
    fn one_item_per_message(&mut self, items: &[&Stored]) {
        let mut by_message: BTreeMap<&str, Vec<&Stored>> = BTreeMap::new();
        let mut by_seq: BTreeMap<(&str, &str), Vec<&Stored>> = BTreeMap::new();
        for s in items {
            if !s.message_id.is_empty() {
                by_message.entry(&s.message_id).or_default().push(s);
            }
            if let Some(seq) = &s.sequence_number {
                by_seq.entry((&s.group, seq)).or_default().push(s);
            }
        }
        let at = |list: &[&Stored]| list.iter().map(|s| s.at()).collect::<Vec<_>>().join(", ");
        for (m, list) in &by_message {
            if list.len() > 1 {
                self.r.applied_twice += list.len() - 1;
                let e = format!("message {m} holds {} items: {}", list.len(), at(list));
                self.r.example(e);
            }
        }
        for ((g, seq), list) in &by_seq {
            let ids: HashSet<&str> = list.iter().map(|s| s.message_id.as_str()).collect();
            if ids.len() > 1 {
                self.r.applied_twice += ids.len() - 1;
                let e = format!(
                    "group {g}: SequenceNumber {seq} holds items of {} messages: {}",
                    ids.len(),
                    at(list)
                );
                self.r.example(e);
            }
        }
    }

    /// Each item: its kind, its group, whether anyone sent it, and a marker's key and record.
    fn item(&mut self, s: &Stored, anonymous_left: &mut HashMap<&str, usize>) {
        let r = &mut self.r;
        match s.status() {
            Some(Status::Accepted) => r.accepted += 1,
            Some(Status::Duplicate | Status::Conflict) => r.markers += 1,
            Some(Status::Rejected) => r.rejected += 1,
            None => {
                r.wrong_status += 1;
                r.example(format!(
                    "{}: status {:?} is not one the worker writes",
                    s.at(),
                    s.status
                ));
            }
        }
        *r.per_instance.entry(s.processed_by.clone()).or_default() += 1;
        let sent_as = self.m.sent_as(s);
        self.group_and_sequence(s, sent_as);
        if s.is_marker() {
            self.marker(s, sent_as);
        } else {
            self.record(s, sent_as, anonymous_left);
        }
    }

    /// The group it must be in (its message's, else its record key's first send) and its message's
    /// SequenceNumber.
    fn group_and_sequence(&mut self, s: &Stored, sent_as: Option<&Sent>) {
        let want_group = match sent_as {
            Some(m) => Some(m.group.as_str()),
            None if !s.is_marker() => self.m.group_of_key(&s.order_id),
            None => None,
        };
        if let Some(g) = want_group {
            if g != s.group {
                self.r.misplaced += 1;
                self.r.example(format!("{} was sent to group {g}", s.at()));
            }
        }
        if let Some(m) = sent_as {
            if let (Some(want), Some(have)) = (&m.sequence_number, &s.sequence_number) {
                if want != have {
                    self.r.misplaced += 1;
                    self.r.example(format!(
                        "{} carries SequenceNumber {have}, its message {} was sent as {want}",
                        s.at(),
                        s.message_id
                    ));
                }
            }
        }
    }

    /// A marker stands for its own message: its key names that message and its kind; the order it names has a
    /// record, with the same payload for a duplicate and another for a conflict.
    fn marker(&mut self, s: &Stored, sent_as: Option<&Sent>) {
        let duplicate = s.status() == Some(Status::Duplicate);
        let kind = if duplicate { "duplicate" } else { "conflict" };
        let of = s.marker_of.as_deref().unwrap_or_default();
        let r = &mut self.r;
        if s.order_id != format!("{kind}:{}", s.message_id) {
            r.wrong_status += 1;
            r.example(format!(
                "marker {} is not keyed {kind}:<its own MessageId {}>",
                s.at(),
                s.message_id
            ));
        }
        if let Some(m) = sent_as {
            if m.order_id.as_deref().is_some_and(|o| o != of) {
                r.wrong_status += 1;
                r.example(format!(
                    "marker {} names order {of:?}, its message carried {:?}",
                    s.at(),
                    m.order_id
                ));
            }
        }
        match self.by_id.get(of) {
            None => {
                r.orphan_markers += 1;
                r.example(format!(
                    "marker {} names order {of:?}, which has no record",
                    s.at()
                ));
            }
            // The same message holding the record and the marker is counted as a message holding two items.
            Some(rec) if rec.message_id == s.message_id => {}
            Some(rec) => {
                if let (Some(a), Some(b)) = (&rec.payload_sha256, &s.payload_sha256) {
                    if (a == b) != duplicate {
                        r.wrong_status += 1;
                        r.example(format!(
                            "marker {} is {} but its payload {} the record's",
                            s.at(),
                            s.status,
                            if a == b { "equals" } else { "differs from" }
                        ));
                    }
                }
            }
        }
        if sent_as.is_none() && !self.m.unnamed.contains(s.group.as_str()) {
            r.unexpected += 1;
            r.example(format!(
                "marker {} stands for message {}, which was never sent",
                s.at(),
                s.message_id
            ));
        }
    }

    /// A record: sent by someone (a `rejected:` record may stand for an anonymous send of its group), and
    /// written by the message that carried its order.
    fn record(
        &mut self,
        s: &Stored,
        sent_as: Option<&Sent>,
        anonymous_left: &mut HashMap<&str, usize>,
    ) {
        let named = self.m.index_of.contains_key(&s.order_id);
        let known = named || sent_as.is_some();
        let anonymous_rejected = !known
            && s.order_id.starts_with("rejected:")
            && anonymous_left
                .get_mut(s.group.as_str())
                .is_some_and(|n| match n.checked_sub(1) {
                    Some(left) => {
                        *n = left;
                        true
                    }
                    None => false,
                });
        if !known && !anonymous_rejected {
            self.r.unexpected += 1;
            self.r.example(format!("record {} was never sent", s.at()));
        } else if let (Some(m), true) = (sent_as, named) {
            // Recorded by a message that carried another order.
            if record_key(m).is_some_and(|k| k != s.order_id) {
                self.r.misplaced += 1;
                self.r.example(format!(
                    "record {} was written by message {}, which carried {:?}",
                    s.at(),
                    s.message_id,
                    m.order_id
                ));
            }
        }
    }

    /// Lost: an order with no record anywhere; a message named by its MessageId with no item of its own.
    fn lost(&mut self, stored: &[Stored]) {
        let mut lost: Vec<(usize, String)> = self
            .m
            .index_of
            .iter()
            .filter(|(k, _)| !self.by_id.contains_key(k.as_str()))
            .map(|(k, i)| (*i, format!("order {k}")))
            .collect();
        let lost_orders: HashSet<usize> = lost.iter().map(|(i, _)| *i).collect();
        let with_item: HashSet<&str> = stored.iter().map(|s| s.message_id.as_str()).collect();
        for (m, (i, s)) in &self.m.message {
            if !with_item.contains(m) && !lost_orders.contains(i) {
                lost.push((
                    *i,
                    format!("message {m} (order {:?}) has no item", s.order_id),
                ));
            }
        }
        lost.sort();
        self.r.lost = lost.len();
        for (i, what) in lost.iter().take(5) {
            self.r.example(format!("lost: {what} (sent #{i})"));
        }
    }

    /// Each order's record carries the verdict its sender expected.
    fn verdicts(&mut self) {
        let mut wrong = Vec::new();
        for (k, expect) in &self.m.expect_of {
            if let (Some(e), Some(s)) = (expect, self.by_id.get(k.as_str())) {
                if !s.status.eq_ignore_ascii_case(e) {
                    wrong.push(format!("{k}: expected {e}, recorded {}", s.status));
                }
            }
        }
        wrong.sort();
        self.r.wrong_status += wrong.len();
        for w in wrong.into_iter().take(5) {
            self.r.example(format!("wrong verdict: {w}"));
        }
    }

    /// One group's items, by position: positions exactly 1..n, and the send order increasing along them.
    fn positions(&mut self, g: &str, recs: &[&Stored], last_position: u64) {
        let r = &mut self.r;
        let mut seen = HashSet::new();
        for s in recs {
            if !seen.insert(s.position) {
                r.applied_twice += 1;
                r.example(format!("group {g}: position {} used twice", s.position));
            }
        }
        // Every position from 1 to the group's end has exactly one item; the end is the higher of the
        // highest item and the group row's LastPosition (a LastPosition above the items means items are
        // missing, not applied twice).
        let end = last_position.max(recs.last().map_or(0, |s| s.position));
        let missing: Vec<u64> = (1..=end).filter(|p| !seen.contains(p)).collect();
        if !missing.is_empty() {
            r.position_gaps += missing.len();
            let shown: Vec<String> = missing.iter().take(5).map(u64::to_string).collect();
            r.example(format!(
                "group {g}: no item at position(s) {} of 1..{end}{}",
                shown.join(", "),
                if missing.len() > 5 { ", ..." } else { "" }
            ));
        }
        if seen.contains(&0) {
            r.position_gaps += 1;
            r.example(format!("group {g}: an item without a position"));
        }
        let mut highest: Option<(usize, &str)> = None;
        for s in recs {
            let Some(i) = self.m.place(s) else { continue };
            if let Some((h, prev)) = highest {
                if i < h {
                    r.out_of_order += 1;
                    r.example(format!(
                        "group {g}: {} at position {} (sent #{i}) after {prev} (sent #{h})",
                        s.order_id, s.position
                    ));
                    continue;
                }
            }
            highest = Some((i, &s.order_id));
        }
    }
}

/// Read every record of the orders table and the groups' last positions.
pub async fn read_table(
    client: &Client,
    table: &str,
    groups_table: &str,
) -> anyhow::Result<(Vec<Stored>, HashMap<String, u64>)> {
    let s = |item: &Item, k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let n = |item: &Item, k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let stored = scan_all(client, table, &[])
        .await?
        .iter()
        .map(|item| Stored {
            order_id: s(item, schema::ORDER_ID).unwrap_or_default(),
            group: s(item, schema::GROUP_ID).unwrap_or_default(),
            position: n(item, schema::POSITION).unwrap_or(0),
            status: s(item, schema::STATUS).unwrap_or_default(),
            message_id: s(item, schema::MESSAGE_ID).unwrap_or_default(),
            sequence_number: s(item, schema::SEQUENCE_NUMBER),
            processed_by: s(item, schema::PROCESSED_BY).unwrap_or_default(),
            marker_of: s(item, schema::MARKER_OF),
            payload_sha256: s(item, schema::PAYLOAD_SHA256),
        })
        .collect();
    let last = scan_all(client, groups_table, &[])
        .await?
        .iter()
        .filter_map(|item| {
            // Protocol 2 keeps LastPosition as a string of digits; rows from before the fence, as a number.
            let last = n(item, schema::LAST_POSITION)
                .or_else(|| s(item, schema::LAST_POSITION)?.parse().ok())?;
            Some((s(item, schema::GROUP_KEY)?, last))
        })
        .collect();
    Ok((stored, last))
}

/// Every item of a table (consistent reads, all pages), with only `attributes` when some are named: the
/// operator tools' one table read (verify, repair).
pub async fn scan_all(
    client: &Client,
    table: &str,
    attributes: &[&str],
) -> anyhow::Result<Vec<Item>> {
    // Attribute names go through placeholders: some of ours are DynamoDB reserved words.
    let projection = (!attributes.is_empty()).then(|| {
        let names: Vec<String> = (0..attributes.len()).map(|i| format!("#a{i}")).collect();
        names.join(", ")
    });
    let names: Option<HashMap<String, String>> = (!attributes.is_empty()).then(|| {
        let names = attributes.iter().enumerate();
        names
            .map(|(i, a)| (format!("#a{i}"), a.to_string()))
            .collect()
    });
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let out = client
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_projection_expression(projection.clone())
            .set_expression_attribute_names(names.clone())
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("scan {table}: {}", crate::aws::describe(&e)))?;
        items.extend(out.items().iter().cloned());
        start = out.last_evaluated_key().cloned();
        if start.is_none() {
            return Ok(items);
        }
    }
}

/// `order-worker verify`: audit the table against the manifest, print the summary (and the JSON report with
/// `--json`). Exit 1 when an order is lost, applied twice or out of order.
pub async fn run(args: crate::config::VerifyArgs) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context;
    let sent = read_manifest(&args.manifest)?;
    let sdk = crate::aws::load(std::time::Duration::from_secs(20), 3).await?;
    let client = Client::new(&sdk);
    let (stored, last) = read_table(&client, &args.table, &args.groups_table).await?;
    let report = audit(&sent, &stored, &last, args.only_manifest_groups);
    print!("{}", report.summary());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(id: &str, g: &str) -> Sent {
        Sent {
            order_id: Some(id.into()),
            group: g.into(),
            expect: Some("accepted".into()),
            ..Sent::default()
        }
    }

    fn stored(id: &str, g: &str, pos: u64) -> Stored {
        Stored {
            order_id: id.into(),
            group: g.into(),
            position: pos,
            status: "ACCEPTED".into(),
            message_id: format!("m-{id}"),
            processed_by: "i-1".into(),
            payload_sha256: Some(format!("sha-{id}")),
            ..Stored::default()
        }
    }

    #[test]
    fn clean_run_is_ok() {
        let s = vec![
            sent("a", "g"),
            sent("b", "g"),
            sent("c", "h"),
            sent("a", "g"),
        ];
        let t = vec![
            stored("a", "g", 1),
            stored("b", "g", 2),
            stored("c", "h", 1),
        ];
        let r = audit(
            &s,
            &t,
            &HashMap::from([("g".into(), 2), ("h".into(), 1)]),
            true,
        );
        assert!(r.ok(), "{}", r.summary());
        assert!(r.verdict_ok);
        assert_eq!(r.distinct_orders, 3);
    }

    #[test]
    fn finds_lost_twice_out_of_order_and_wrong_verdicts() {
        let mut s = vec![
            sent("a", "g"),
            sent("b", "g"),
            sent("c", "g"),
            sent("d", "h"),
        ];
        s[3].expect = Some("rejected".into());
        let t = vec![
            stored("b", "g", 1),
            stored("a", "g", 2),
            stored("d", "h", 1),
        ];
        let r = audit(&s, &t, &HashMap::from([("g".into(), 3)]), true);
        assert_eq!(r.lost, 1, "{}", r.summary());
        assert_eq!(r.out_of_order, 1, "{}", r.summary());
        // LastPosition 3 with two records: a record is missing, nothing was applied twice.
        assert_eq!(r.applied_twice, 0, "{}", r.summary());
        assert_eq!(r.position_gaps, 1, "{}", r.summary());
        assert_eq!(r.wrong_status, 1, "{}", r.summary());
        assert!(!r.ok());
    }

    #[test]
    fn a_position_gap_fails_the_audit_and_a_repeat_is_applied_twice() {
        let s = vec![sent("a", "g"), sent("b", "g"), sent("c", "g")];
        // Every order recorded, in order, but position 2 is empty.
        let t = vec![
            stored("a", "g", 1),
            stored("b", "g", 3),
            stored("c", "g", 4),
        ];
        let r = audit(&s, &t, &HashMap::from([("g".into(), 4)]), true);
        assert_eq!((r.lost, r.out_of_order, r.applied_twice), (0, 0, 0));
        assert_eq!(r.position_gaps, 1, "{}", r.summary());
        assert!(!r.ok());
        assert!(
            r.summary().contains("position(s) 2 of 1..4"),
            "{}",
            r.summary()
        );
        let t = vec![
            stored("a", "g", 1),
            stored("b", "g", 1),
            stored("c", "g", 2),
        ];
        let r = audit(&s, &t, &HashMap::from([("g".into(), 2)]), true);
        assert_eq!(r.applied_twice, 1, "{}", r.summary());
    }

    #[test]
    fn other_groups_are_audited_only_when_asked() {
        let s = vec![sent("a", "g")];
        let t = vec![stored("a", "g", 1), stored("x", "other", 2)];
        let r = audit(&s, &t, &HashMap::new(), true);
        assert!(r.ok(), "{}", r.summary());
        let r = audit(&s, &t, &HashMap::new(), false);
        assert_eq!(r.unexpected, 1, "{}", r.summary());
        assert_eq!(r.position_gaps, 1, "{}", r.summary());
        assert!(!r.ok());
    }

    #[test]
    fn rejected_bodies_are_found_by_message_id() {
        let s = vec![Sent {
            order_id: None,
            group: "g".into(),
            expect: Some("rejected".into()),
            message_id: Some("m-1".into()),
            ..Sent::default()
        }];
        let mut rec = stored("rejected:m-1", "g", 1);
        rec.status = "REJECTED".into();
        rec.message_id = "m-1".into();
        let r = audit(&s, std::slice::from_ref(&rec), &HashMap::new(), true);
        assert!(r.ok(), "{}", r.summary());
        // A send the producer knows nothing of (no order id, no MessageId) accounts for one such record.
        let anon = Sent {
            message_id: None,
            ..s[0].clone()
        };
        let r = audit(
            std::slice::from_ref(&anon),
            std::slice::from_ref(&rec),
            &HashMap::new(),
            true,
        );
        assert!(r.ok(), "{}", r.summary());
        let mut second = stored("rejected:m-2", "g", 2);
        second.status = "REJECTED".into();
        let r = audit(&[anon], &[rec, second], &HashMap::new(), true);
        assert_eq!(r.unexpected, 1, "{}", r.summary());
    }

    fn marker(key: &str, of: &str, g: &str, pos: u64) -> Stored {
        let (kind, mid) = key.split_once(':').unwrap();
        Stored {
            status: kind.to_uppercase(),
            marker_of: Some(of.into()),
            message_id: mid.into(),
            payload_sha256: Some(if kind == "duplicate" {
                format!("sha-{of}")
            } else {
                "another payload".into()
            }),
            ..stored(key, g, pos)
        }
    }

    #[test]
    fn a_marker_fills_its_position_and_must_name_a_recorded_order() {
        // "a" sent twice as two messages: its record at 1, a marker at 2, "b" at 3.
        let s = vec![sent("a", "g"), sent("a", "g"), sent("b", "g")];
        let t = vec![
            stored("a", "g", 1),
            marker("duplicate:m2", "a", "g", 2),
            stored("b", "g", 3),
        ];
        let r = audit(&s, &t, &HashMap::from([("g".into(), 3)]), true);
        assert!(r.ok(), "{}", r.summary());
        assert_eq!((r.accepted, r.markers), (2, 1));
        // Without the marker, position 2 is a gap.
        let r = audit(
            &s,
            &[t[0].clone(), t[2].clone()],
            &HashMap::from([("g".into(), 3)]),
            true,
        );
        assert_eq!(r.position_gaps, 1, "{}", r.summary());
        // A marker does not make its order recorded, and one naming nothing recorded is an orphan.
        let t = vec![marker("duplicate:m1", "a", "g", 1), stored("b", "g", 2)];
        let r = audit(&s[1..], &t, &HashMap::from([("g".into(), 2)]), true);
        assert_eq!((r.lost, r.orphan_markers), (1, 1), "{}", r.summary());
        assert!(!r.ok());
    }

    // The states the guarantees forbid, planted: a manifest naming every MessageId (as the producers write
    // it), a table, and the verdict. Each planted state must fail; the clean one, with a duplicate marker, a
    // conflict marker and a rejected body, must pass.

    fn named(id: Option<&str>, g: &str, mid: &str) -> Sent {
        Sent {
            order_id: id.map(str::to_owned),
            group: g.into(),
            expect: Some(if id.is_some() { "accepted" } else { "rejected" }.into()),
            message_id: Some(mid.into()),
            sequence_number: None,
        }
    }

    fn rec(id: &str, g: &str, pos: u64, mid: &str) -> Stored {
        Stored {
            message_id: mid.into(),
            ..stored(id, g, pos)
        }
    }

    /// m1 a, m2 b, m3 a again (same payload), m4 c, m5 c with another payload, m6 a malformed body.
    fn clean() -> (Vec<Sent>, Vec<Stored>, HashMap<String, u64>) {
        let s = vec![
            named(Some("a"), "g", "m1"),
            named(Some("b"), "g", "m2"),
            named(Some("a"), "g", "m3"),
            named(Some("c"), "g", "m4"),
            named(Some("c"), "g", "m5"),
            named(None, "g", "m6"),
        ];
        let mut bad = rec("rejected:m6", "g", 6, "m6");
        bad.status = "REJECTED".into();
        let t = vec![
            rec("a", "g", 1, "m1"),
            rec("b", "g", 2, "m2"),
            marker("duplicate:m3", "a", "g", 3),
            rec("c", "g", 4, "m4"),
            marker("conflict:m5", "c", "g", 5),
            bad,
        ];
        (s, t, HashMap::from([("g".into(), 6)]))
    }

    fn failed(s: &[Sent], t: &[Stored], last: &HashMap<String, u64>) -> Report {
        let r = audit(s, t, last, true);
        assert!(!r.ok(), "planted state judged OK:\n{}", r.summary());
        assert!(r.summary().ends_with("VERDICT: FAILED\n"));
        r
    }

    #[test]
    fn the_clean_state_with_markers_and_a_rejected_body_passes() {
        let (s, t, last) = clean();
        let r = audit(&s, &t, &last, true);
        assert!(r.ok(), "{}", r.summary());
        assert_eq!(
            (r.accepted, r.rejected, r.markers, r.messages_named),
            (3, 1, 2, 6)
        );
    }

    #[test]
    fn a_message_recorded_and_marked_again_as_a_duplicate_of_itself_fails() {
        let s = vec![named(Some("a"), "g", "m1"), named(Some("b"), "g", "m2")];
        let t = vec![
            rec("a", "g", 1, "m1"),
            marker("duplicate:m1", "a", "g", 2),
            rec("b", "g", 3, "m2"),
        ];
        let last = HashMap::from([("g".into(), 3)]);
        let r = failed(&s, &t, &last);
        assert_eq!(r.applied_twice, 1, "{}", r.summary());
        // From the table alone, with a manifest that names no MessageId.
        let bare: Vec<Sent> = s
            .iter()
            .map(|x| Sent {
                message_id: None,
                ..x.clone()
            })
            .collect();
        assert_eq!(failed(&bare, &t, &last).applied_twice, 1);
        // Two messages at one SequenceNumber of a group: one of them is not what SQS delivered.
        let mut t2 = vec![rec("a", "g", 1, "m1"), rec("b", "g", 2, "m2")];
        t2[0].sequence_number = Some("100".into());
        t2[1].sequence_number = Some("100".into());
        let r = failed(&s, &t2, &HashMap::from([("g".into(), 2)]));
        assert_eq!(r.applied_twice, 1, "{}", r.summary());
    }

    #[test]
    fn a_record_nobody_sent_fails_rejected_ones_included() {
        let (s, mut t, _) = clean();
        t.push(rec("x", "g", 7, "m-x"));
        let r = failed(&s, &t, &HashMap::from([("g".into(), 7)]));
        assert_eq!(r.unexpected, 1, "{}", r.summary());
        let (s, mut t, _) = clean();
        let mut bad = rec("rejected:m-zz", "g", 7, "m-zz");
        bad.status = "REJECTED".into();
        t.push(bad);
        let r = failed(&s, &t, &HashMap::from([("g".into(), 7)]));
        assert_eq!(r.unexpected, 1, "{}", r.summary());
        // A marker of a message nobody sent.
        let (s, mut t, _) = clean();
        t.push(marker("duplicate:m-zz", "a", "g", 7));
        let r = failed(&s, &t, &HashMap::from([("g".into(), 7)]));
        assert_eq!(r.unexpected, 1, "{}", r.summary());
    }

    #[test]
    fn an_order_applied_in_another_group_fails_and_that_group_is_audited() {
        let s = vec![named(Some("a"), "g", "m1"), named(Some("b"), "g", "m2")];
        // "b" applied in group h at h's position 1; g's row says 1.
        let t = vec![rec("a", "g", 1, "m1"), rec("b", "h", 1, "m2")];
        let r = failed(&s, &t, &HashMap::from([("g".into(), 1), ("h".into(), 1)]));
        assert_eq!(r.misplaced, 1, "{}", r.summary());
        assert_eq!(r.groups, 2, "h is audited: {}", r.summary());
        // Without MessageIds, by the order's first send.
        let s = vec![sent("a", "g"), sent("b", "g")];
        let t = vec![stored("a", "g", 1), stored("b", "h", 1)];
        let r = failed(&s, &t, &HashMap::from([("g".into(), 1), ("h".into(), 1)]));
        assert_eq!(r.misplaced, 1, "{}", r.summary());
        // A marker in another group than its message's.
        let (s, mut t, last) = clean();
        t[2].group = "h".into();
        t[2].position = 1;
        let r = failed(&s, &t, &last);
        assert!(r.misplaced >= 1, "{}", r.summary());
    }

    #[test]
    fn a_marker_before_an_order_sent_earlier_fails() {
        // Sent a, b, a again; the re-send's marker at 2, before b.
        let s = vec![
            named(Some("a"), "g", "m1"),
            named(Some("b"), "g", "m2"),
            named(Some("a"), "g", "m3"),
        ];
        let t = vec![
            rec("a", "g", 1, "m1"),
            marker("duplicate:m3", "a", "g", 2),
            rec("b", "g", 3, "m2"),
        ];
        let r = failed(&s, &t, &HashMap::from([("g".into(), 3)]));
        assert_eq!(r.out_of_order, 1, "{}", r.summary());
    }

    #[test]
    fn a_message_without_its_own_item_is_lost_even_when_its_order_is_recorded() {
        let (s, t, _) = clean();
        // The re-send's marker is gone and the positions close up behind it.
        let mut t: Vec<Stored> = t
            .into_iter()
            .filter(|x| x.order_id != "duplicate:m3")
            .collect();
        for x in t.iter_mut().filter(|x| x.position > 3) {
            x.position -= 1;
        }
        let r = failed(&s, &t, &HashMap::from([("g".into(), 5)]));
        assert_eq!((r.lost, r.position_gaps), (1, 0), "{}", r.summary());
    }

    #[test]
    fn wrong_verdicts_and_wrong_markers_fail() {
        // The order is recorded REJECTED though it was valid.
        let (s, mut t, last) = clean();
        t[0].status = "REJECTED".into();
        assert_eq!(failed(&s, &t, &last).wrong_status, 1);
        // A status the worker never writes.
        let (s, mut t, last) = clean();
        t[1].status = "APPLIED".into();
        assert!(failed(&s, &t, &last).wrong_status >= 1);
        // A DUPLICATE marker whose payload differs from the record's (it is a conflict).
        let (s, mut t, last) = clean();
        t[2].payload_sha256 = Some("another payload".into());
        assert_eq!(failed(&s, &t, &last).wrong_status, 1);
        // A marker keyed with another message's id.
        let (s, mut t, last) = clean();
        t[2].order_id = "duplicate:m9".into();
        assert!(failed(&s, &t, &last).wrong_status >= 1);
        // A marker naming another order than its message carried.
        let (s, mut t, last) = clean();
        t[2].marker_of = Some("b".into());
        t[2].payload_sha256 = Some("sha-b".into());
        assert_eq!(failed(&s, &t, &last).wrong_status, 1);
    }
}
