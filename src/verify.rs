//! The auditor: read the orders table and a manifest of what was sent, and report what was lost, applied
//! twice, applied out of order, or given the wrong verdict. Used by the tests, the demo, the chaos runs and
//! the aws-cli ordering check; runs unchanged against AWS.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use serde::{Deserialize, Serialize};

use crate::schema::{self, Status};

/// One line of the manifest: a message as it was sent, in send order.
#[derive(Debug, Clone, Deserialize)]
pub struct Sent {
    /// The order id, when the body had a usable one.
    #[serde(default)]
    pub order_id: Option<String>,
    /// The message group (the customer).
    pub group: String,
    /// `accepted` or `rejected`, when the sender knows.
    #[serde(default)]
    pub expect: Option<String>,
    /// The SQS MessageId, when known: finds `rejected:<MessageId>` records of bodies without an order id.
    #[serde(default)]
    pub message_id: Option<String>,
}

/// One record as read back.
#[derive(Debug, Clone)]
pub struct Stored {
    pub order_id: String,
    pub group: String,
    pub position: u64,
    pub status: String,
    pub message_id: String,
    pub processed_by: String,
    /// A marker's order: the OrderID whose record holds the order this message carried again.
    pub marker_of: Option<String>,
}

impl Stored {
    fn status(&self) -> Option<Status> {
        Status::parse(&self.status)
    }

    fn is_marker(&self) -> bool {
        self.status().is_some_and(Status::is_marker)
    }
}

/// The audit's findings. The three invariants are `lost`, `applied_twice` and `out_of_order`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub sent: usize,
    pub distinct_orders: usize,
    pub records: usize,
    pub lost: usize,
    pub applied_twice: usize,
    pub out_of_order: usize,
    /// Positions in 1..=max(LastPosition, highest position) of a group with no record: a record is missing
    /// (lost, or deleted) even if its order was re-applied elsewhere.
    pub position_gaps: usize,
    pub wrong_status: usize,
    pub unexpected: usize,
    pub accepted: usize,
    pub rejected: usize,
    /// Positions held by a marker: a message that carried an order already recorded (`duplicate:`) or
    /// another payload under a recorded OrderID (`conflict:`).
    pub markers: usize,
    /// Markers whose OrderID has no record: the order they stand for is not in the table.
    pub orphan_markers: usize,
    pub groups: usize,
    pub per_instance: BTreeMap<String, usize>,
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
    }

    fn example(&mut self, s: String) {
        if self.examples.len() < 20 {
            self.examples.push(s);
        }
    }

    pub fn summary(&self) -> String {
        let mut out = format!(
            "sent {} messages ({} distinct orders, {} groups); records {} (accepted {}, rejected {}, markers {})\n\
             lost {}  applied twice {}  out of order {}  position gaps {}  wrong verdict {}  orphan markers {}  unexpected {}\n",
            self.sent,
            self.distinct_orders,
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
            self.unexpected
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

/// Compare what was sent with what was stored. Pure: the tests feed it directly.
pub fn audit(
    sent: &[Sent],
    stored: &[Stored],
    last_positions: &HashMap<String, u64>,
    only_manifest_groups: bool,
) -> Report {
    let mut r = Report {
        sent: sent.len(),
        ..Report::default()
    };
    // A shared table may hold other runs' groups; by default only the manifest's are audited, and with
    // `--only-manifest-groups false` every group in the table is (their records then count as unexpected).
    let groups: HashSet<&str> = if only_manifest_groups {
        sent.iter().map(|s| s.group.as_str()).collect()
    } else {
        sent.iter()
            .map(|s| s.group.as_str())
            .chain(stored.iter().map(|s| s.group.as_str()))
            .collect()
    };
    r.groups = groups.len();
    // The first send of an order id fixes its place; later sends of the same id are duplicates to drop.
    let mut index_of: HashMap<String, usize> = HashMap::new();
    let mut expect_of: HashMap<String, Option<String>> = HashMap::new();
    for (i, s) in sent.iter().enumerate() {
        let key = match (&s.order_id, &s.message_id) {
            (Some(id), _) => id.clone(),
            (None, Some(m)) => format!("rejected:{m}"),
            (None, None) => continue,
        };
        index_of.entry(key.clone()).or_insert(i);
        expect_of.entry(key).or_insert_with(|| s.expect.clone());
    }
    r.distinct_orders = index_of.len();
    let by_id: HashMap<&str, &Stored> = stored.iter().map(|s| (s.order_id.as_str(), s)).collect();
    r.records = stored
        .iter()
        .filter(|s| groups.contains(s.group.as_str()))
        .count();
    for s in stored.iter().filter(|s| groups.contains(s.group.as_str())) {
        match s.status() {
            Some(Status::Accepted) => r.accepted += 1,
            Some(Status::Duplicate | Status::Conflict) => r.markers += 1,
            _ => r.rejected += 1,
        }
        *r.per_instance.entry(s.processed_by.clone()).or_default() += 1;
        if s.is_marker() {
            // A marker stands for a message whose order is recorded under its OrderID: that record must exist.
            let of = s.marker_of.as_deref().unwrap_or_default();
            if !by_id.get(of).is_some_and(|o| !o.is_marker()) {
                r.orphan_markers += 1;
                r.example(format!(
                    "marker {} (group {}, position {}) names order {of:?}, which has no record",
                    s.order_id, s.group, s.position
                ));
            }
        } else if !index_of.contains_key(&s.order_id) && !s.order_id.starts_with("rejected:") {
            r.unexpected += 1;
            r.example(format!(
                "record {} (group {}) was never sent",
                s.order_id, s.group
            ));
        }
    }
    let mut lost: Vec<(&String, &usize)> = index_of
        .iter()
        .filter(|(k, _)| !by_id.get(k.as_str()).is_some_and(|s| !s.is_marker()))
        .collect();
    lost.sort_by_key(|(_, i)| **i);
    r.lost = lost.len();
    for (k, i) in lost.iter().take(5) {
        r.example(format!("lost: {k} (sent #{i})"));
    }
    let mut wrong = Vec::new();
    for (k, expect) in &expect_of {
        if let (Some(e), Some(s)) = (expect, by_id.get(k.as_str())) {
            if !s.status.eq_ignore_ascii_case(e) {
                wrong.push(format!("{k}: expected {e}, recorded {}", s.status));
            }
        }
    }
    wrong.sort();
    r.wrong_status = wrong.len();
    for w in wrong.into_iter().take(5) {
        r.example(format!("wrong verdict: {w}"));
    }
    // Per group: positions exactly 1..n, and the send order increasing along them.
    let mut per_group: HashMap<&str, Vec<&Stored>> = HashMap::new();
    for s in stored.iter().filter(|s| groups.contains(s.group.as_str())) {
        per_group.entry(&s.group).or_default().push(s);
    }
    let mut group_names: Vec<&&str> = per_group.keys().collect();
    group_names.sort();
    for g in group_names {
        let mut recs = per_group[*g].clone();
        recs.sort_by_key(|s| s.position);
        let mut seen = HashSet::new();
        for s in &recs {
            if !seen.insert(s.position) {
                r.applied_twice += 1;
                r.example(format!("group {g}: position {} used twice", s.position));
            }
        }
        // Every position from 1 to the group's end has exactly one record; the end is the higher of the
        // highest record and the group row's LastPosition (a LastPosition above the records means records
        // are missing, not applied twice).
        let highest_pos = recs.last().map_or(0, |s| s.position);
        let end = last_positions
            .get(*g)
            .copied()
            .unwrap_or(0)
            .max(highest_pos);
        let missing: Vec<u64> = (1..=end).filter(|p| !seen.contains(p)).collect();
        if !missing.is_empty() {
            r.position_gaps += missing.len();
            let shown: Vec<String> = missing.iter().take(5).map(u64::to_string).collect();
            r.example(format!(
                "group {g}: no record at position(s) {} of 1..{end}{}",
                shown.join(", "),
                if missing.len() > 5 { ", ..." } else { "" }
            ));
        }
        if seen.contains(&0) {
            r.position_gaps += 1;
            r.example(format!("group {g}: a record without a position"));
        }
        let mut highest: Option<(usize, &str)> = None;
        for s in &recs {
            let Some(i) = index_of.get(&s.order_id) else {
                continue;
            };
            if let Some((h, prev)) = highest {
                if *i < h {
                    r.out_of_order += 1;
                    r.example(format!(
                        "group {g}: {} (sent #{i}) applied after {prev} (sent #{h})",
                        s.order_id
                    ));
                    continue;
                }
            }
            highest = Some((*i, &s.order_id));
        }
    }
    r
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
    let stored = scan_all(client, table)
        .await?
        .iter()
        .map(|item| Stored {
            order_id: s(item, schema::ORDER_ID).unwrap_or_default(),
            group: s(item, schema::GROUP_ID).unwrap_or_default(),
            position: n(item, schema::POSITION).unwrap_or(0),
            status: s(item, schema::STATUS).unwrap_or_default(),
            message_id: s(item, schema::MESSAGE_ID).unwrap_or_default(),
            processed_by: s(item, schema::PROCESSED_BY).unwrap_or_default(),
            marker_of: s(item, schema::MARKER_OF),
        })
        .collect();
    let last = scan_all(client, groups_table)
        .await?
        .iter()
        .filter_map(|item| Some((s(item, schema::GROUP_KEY)?, n(item, schema::LAST_POSITION)?)))
        .collect();
    Ok((stored, last))
}

type Item = HashMap<String, AttributeValue>;

/// Every item of a table (consistent reads, all pages).
async fn scan_all(client: &Client, table: &str) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let out = client
            .scan()
            .table_name(table)
            .consistent_read(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(id: &str, g: &str) -> Sent {
        Sent {
            order_id: Some(id.into()),
            group: g.into(),
            expect: Some("accepted".into()),
            message_id: None,
        }
    }

    fn stored(id: &str, g: &str, pos: u64) -> Stored {
        Stored {
            order_id: id.into(),
            group: g.into(),
            position: pos,
            status: "ACCEPTED".into(),
            message_id: "m".into(),
            processed_by: "i-1".into(),
            marker_of: None,
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
        }];
        let mut rec = stored("rejected:m-1", "g", 1);
        rec.status = "REJECTED".into();
        let r = audit(&s, &[rec], &HashMap::new(), true);
        assert!(r.ok(), "{}", r.summary());
    }

    fn marker(key: &str, of: &str, g: &str, pos: u64) -> Stored {
        Stored {
            status: "DUPLICATE".into(),
            marker_of: Some(of.into()),
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
        // A marker does not make its order recorded, and one naming nothing recorded is unexpected.
        let t = vec![marker("duplicate:m1", "a", "g", 1), stored("b", "g", 2)];
        let r = audit(&s[1..], &t, &HashMap::from([("g".into(), 2)]), true);
        assert_eq!((r.lost, r.orphan_markers), (1, 1), "{}", r.summary());
        assert!(!r.ok());
    }
}
