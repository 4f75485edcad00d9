//! `order-worker repair`: inspect a group and rebuild its row in the groups table from its records, instead of
//! deleting the row (which restarts the group's positions at 1: repeated positions, held messages marked at
//! them). A dry run by default: it prints the row, what the records say and the row it would write; `--apply`
//! writes it, conditional on the row being exactly as read (a worker's claim or an old build's write in
//! between makes it fail, and nothing is written: run it again).
//!
//! It is also the one-time upgrade step of a row of the transactional design (protocol 1: `LastPosition`, no
//! `Claimed`), which this build refuses (see [`crate::store`], the protocol fence). The rebuilt row is this
//! build's (protocol 2): `LastPosition` the highest recorded position, `Claimed` the SequenceNumbers of the
//! group's last records (up to [`MAX_CLAIMED`], consecutive positions with increasing numbers), so a message
//! the old design recorded but did not delete is recognised as recorded (same SequenceNumber, same position)
//! and not marked again. Safe while transactional workers still run: every write of theirs is conditional on a
//! numeric `LastPosition`, which the rebuilt row no longer has, and one that lands between the read and the
//! write fails the repair's condition.
//!
//! It refuses to write when the records themselves break the guarantees (a position missing or used twice):
//! no row can fix that; `order-worker verify` names the items. Reads the whole orders table (a Scan: the
//! table has no index by group); run it with a group in hand, not in a loop.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use crate::schema::{self, Item};
use crate::store::protocol::{parse_seq, Seq};

/// Most SequenceNumbers a rebuilt row names: more than any run a worker holds (16) times the runs it may have
/// committed and not yet deleted.
pub const MAX_CLAIMED: usize = 100;

/// One record (or marker) of the group, as the repair needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub key: String,
    pub position: Option<u64>,
    pub seq: Option<String>,
}

/// What the repair would do to one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub group: String,
    pub records: usize,
    pub highest: u64,
    /// Positions in 1..=highest with no record.
    pub missing: Vec<u64>,
    /// Positions held by more than one record.
    pub repeated: Vec<u64>,
    /// Records without a usable GroupPosition.
    pub unplaced: Vec<String>,
    /// The row's LastPosition when it is above the highest record: positions handed out and not (yet)
    /// written, or records read before a write that moved the row.
    pub row_ahead: Option<u64>,
    /// The row it would write: LastPosition and Claimed.
    pub last: u64,
    pub claimed: Vec<Seq>,
}

impl Plan {
    /// The records are dense 1..highest, each position once: a row can be rebuilt from them.
    pub fn can_apply(&self) -> bool {
        self.missing.is_empty()
            && self.repeated.is_empty()
            && self.unplaced.is_empty()
            && self.row_ahead.is_none()
    }

    pub fn describe(&self, row: &str) -> String {
        let mut out = format!(
            "group {:?}\n  row now:   {row}\n  records:   {} at positions 1..{}",
            self.group, self.records, self.highest
        );
        if !self.missing.is_empty() {
            out.push_str(&format!("; missing {}", list(&self.missing)));
        }
        if !self.repeated.is_empty() {
            out.push_str(&format!("; used twice {}", list(&self.repeated)));
        }
        if !self.unplaced.is_empty() {
            out.push_str(&format!(
                "; without a position: {}",
                self.unplaced.join(", ")
            ));
        }
        out.push_str(&format!(
            "\n  new row:   Protocol {} LastPosition {:?} Claimed {:?} (the SequenceNumbers at positions {}..{})\n",
            schema::STORE_PROTOCOL,
            self.last.to_string(),
            self.claimed.iter().map(u128::to_string).collect::<Vec<_>>(),
            self.last + 1 - self.claimed.len() as u64,
            self.last
        ));
        if let Some(last) = self.row_ahead {
            out.push_str(&format!("  REFUSED: the row says LastPosition {last}, above the records: a run claimed and not yet written (its holder, or the next, writes it), or a write since the records were read; run it again once the group is quiet\n"));
        } else if !self.can_apply() {
            out.push_str("  REFUSED: the records are not one per position 1..n; no row fixes that (`order-worker verify` names the items)\n");
        }
        out
    }
}

fn list(v: &[u64]) -> String {
    let shown: Vec<String> = v.iter().take(10).map(u64::to_string).collect();
    format!(
        "{}{}",
        shown.join(", "),
        if v.len() > 10 { ", ..." } else { "" }
    )
}

/// The row a group's records call for, given the LastPosition the row has now (when it can be read). Pure.
pub fn plan(group: &str, records: &[Found], row_last: Option<u64>) -> Plan {
    let mut at: BTreeMap<u64, Vec<&Found>> = BTreeMap::new();
    let mut unplaced = Vec::new();
    for r in records {
        match r.position {
            Some(p) if p > 0 => at.entry(p).or_default().push(r),
            _ => unplaced.push(r.key.clone()),
        }
    }
    let highest = at.keys().next_back().copied().unwrap_or(0);
    let missing = (1..=highest).filter(|p| !at.contains_key(p)).collect();
    let repeated = at
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(p, _)| *p)
        .collect();
    // The tail of consecutive positions ending at the highest whose SequenceNumbers increase.
    let mut claimed: Vec<Seq> = Vec::new();
    let mut p = highest;
    while p > 0 && claimed.len() < MAX_CLAIMED {
        let Some([one]) = at.get(&p).map(Vec::as_slice) else {
            break;
        };
        let Some(seq) = one.seq.as_deref().and_then(parse_seq) else {
            break;
        };
        if claimed.last().is_some_and(|next| seq >= *next) {
            break;
        }
        claimed.push(seq);
        p -= 1;
    }
    claimed.reverse();
    Plan {
        group: group.to_owned(),
        records: records.len(),
        highest,
        missing,
        repeated,
        unplaced,
        row_ahead: row_last.filter(|l| *l > highest),
        last: highest,
        claimed,
    }
}

/// `order-worker repair`: print each group's plan; with `--apply`, write the rows that can be rebuilt. Exit 1 when
/// a plan is refused or a write failed.
pub async fn run(args: crate::config::RepairArgs) -> anyhow::Result<std::process::ExitCode> {
    let sdk = crate::aws::load(std::time::Duration::from_secs(20), 3).await?;
    let client = Client::new(&sdk);
    // The rows first, then the records: a write that lands in between (a claim, an old build's transaction)
    // moves the row, and the repair's condition on the row as read fails; records read first could miss it.
    let groups: Vec<(String, Option<Item>)> = if args.all {
        read_rows(&client, &args.groups_table)
            .await?
            .into_iter()
            .filter(|(g, item)| crate::store::check_row(&args.groups_table, g, item).is_err())
            .map(|(g, item)| (g, Some(item)))
            .collect()
    } else {
        let mut out = Vec::new();
        for g in &args.groups {
            out.push((g.clone(), read_row(&client, &args.groups_table, g).await?));
        }
        out
    };
    let records = read_records(&client, &args.table).await?;
    if groups.is_empty() {
        println!("no group row the worker refuses");
    }
    let mut failed = false;
    for (g, row) in &groups {
        let p = plan(
            g,
            records.get(g).map(Vec::as_slice).unwrap_or_default(),
            row.as_ref().and_then(last_position),
        );
        print!("{}", p.describe(&show_row(row.as_ref())));
        if let Some(item) = row {
            match crate::store::check_row(&args.groups_table, g, item) {
                Ok(()) => println!("  the worker writes on the row as it is"),
                Err(why) => println!("  the worker refuses it: {why}"),
            }
        }
        if !p.can_apply() {
            failed = true;
            continue;
        }
        if !args.apply {
            println!("  dry run: nothing written (--apply writes the new row)");
            continue;
        }
        let at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        match apply(&client, &args.groups_table, &p, row.as_ref(), &at).await {
            Ok(()) => println!("  written"),
            Err(e) => {
                println!("  NOT written: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// The group's row as stored (None: no item).
pub async fn read_row(client: &Client, table: &str, group: &str) -> anyhow::Result<Option<Item>> {
    let out = client
        .get_item()
        .table_name(table)
        .key(schema::GROUP_KEY, AttributeValue::S(group.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("GetItem {table}: {}", crate::aws::describe(&e)))?;
    Ok(out.item().cloned())
}

/// Every record of the orders table by group (one consistent Scan of the attributes the plan needs).
pub async fn read_records(
    client: &Client,
    table: &str,
) -> anyhow::Result<HashMap<String, Vec<Found>>> {
    let attributes = [
        schema::ORDER_ID,
        schema::GROUP_ID,
        schema::POSITION,
        schema::SEQUENCE_NUMBER,
    ];
    let mut by_group: HashMap<String, Vec<Found>> = HashMap::new();
    for item in crate::verify::scan_all(client, table, &attributes).await? {
        let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
        let Some(group) = s(schema::GROUP_ID) else {
            continue;
        };
        by_group.entry(group).or_default().push(Found {
            key: s(schema::ORDER_ID).unwrap_or_default(),
            position: item
                .get(schema::POSITION)
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse().ok()),
            seq: s(schema::SEQUENCE_NUMBER),
        });
    }
    Ok(by_group)
}

/// Every row of the groups table: group -> item.
pub async fn read_rows(client: &Client, table: &str) -> anyhow::Result<BTreeMap<String, Item>> {
    let items = crate::verify::scan_all(client, table, &[]).await?;
    Ok(items
        .into_iter()
        .filter_map(|item| {
            let g = item.get(schema::GROUP_KEY)?.as_s().ok()?.clone();
            Some((g, item))
        })
        .collect())
}

/// A row's LastPosition, as either protocol keeps it (None: absent or unreadable).
fn last_position(row: &Item) -> Option<u64> {
    match row.get(schema::LAST_POSITION)? {
        AttributeValue::N(n) | AttributeValue::S(n) => n.parse().ok(),
        _ => None,
    }
}

/// The row's attributes that a claim reads, as text for the plan.
pub fn show_row(row: Option<&Item>) -> String {
    let Some(row) = row else {
        return "none".into();
    };
    let mut parts = Vec::new();
    for k in [schema::PROTOCOL, schema::LAST_POSITION, schema::CLAIMED] {
        match row.get(k) {
            Some(AttributeValue::N(n)) => parts.push(format!("{k} {n} (N)")),
            Some(AttributeValue::S(s)) => parts.push(format!("{k} {s:?} (S)")),
            Some(AttributeValue::L(l)) => parts.push(format!("{k} [{} entries]", l.len())),
            Some(other) => parts.push(format!("{k} {other:?}")),
            None => parts.push(format!("no {k}")),
        }
    }
    parts.join(", ")
}

/// Write the plan's row, conditional on the row's claim attributes being exactly `was` (absent: absent).
pub async fn apply(
    client: &Client,
    table: &str,
    plan: &Plan,
    was: Option<&Item>,
    at: &str,
) -> anyhow::Result<()> {
    let claimed = plan
        .claimed
        .iter()
        .map(|s| AttributeValue::S(s.to_string()))
        .collect();
    let mut req = client
        .update_item()
        .table_name(table)
        .key(schema::GROUP_KEY, AttributeValue::S(plan.group.clone()))
        .update_expression("SET #last = :last, #claimed = :claimed, #proto = :proto, #at = :at")
        .expression_attribute_names("#last", schema::LAST_POSITION)
        .expression_attribute_names("#claimed", schema::CLAIMED)
        .expression_attribute_names("#proto", schema::PROTOCOL)
        .expression_attribute_names("#at", schema::UPDATED_AT)
        .expression_attribute_values(":last", AttributeValue::S(plan.last.to_string()))
        .expression_attribute_values(":claimed", AttributeValue::L(claimed))
        .expression_attribute_values(
            ":proto",
            AttributeValue::N(schema::STORE_PROTOCOL.to_string()),
        )
        .expression_attribute_values(":at", AttributeValue::S(at.to_owned()));
    let mut conditions = Vec::new();
    for (name, k, v) in [
        ("#last", schema::LAST_POSITION, ":was_last"),
        ("#claimed", schema::CLAIMED, ":was_claimed"),
        ("#proto", schema::PROTOCOL, ":was_proto"),
    ] {
        match was.and_then(|w| w.get(k)) {
            None => conditions.push(format!("attribute_not_exists({name})")),
            Some(value) => {
                conditions.push(format!("{name} = {v}"));
                req = req.expression_attribute_values(v, value.clone());
            }
        }
    }
    req.condition_expression(conditions.join(" AND "))
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "UpdateItem {table} group {:?}: {} (if the condition failed, the row moved since it was read: run the repair again)",
                plan.group,
                crate::aws::describe(&e)
            )
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(key: &str, position: u64, seq: Option<&str>) -> Found {
        Found {
            key: key.into(),
            position: Some(position),
            seq: seq.map(str::to_owned),
        }
    }

    #[test]
    fn a_row_is_rebuilt_from_dense_records_with_their_last_sequence_numbers() {
        let recs = vec![
            found("a", 1, Some("10")),
            found("b", 2, Some("20")),
            found("duplicate:m3", 3, Some("30")),
        ];
        let p = plan("g", &recs, None);
        assert!(p.can_apply(), "{}", p.describe("-"));
        assert_eq!((p.last, p.claimed.clone()), (3, vec![10, 20, 30]));
        // A record without a SequenceNumber (written by something else) ends the claimed tail.
        let recs = vec![
            found("a", 1, Some("10")),
            found("b", 2, None),
            found("c", 3, Some("30")),
        ];
        assert_eq!(plan("g", &recs, None).claimed, vec![30]);
        // Numbers that do not increase end it too.
        let recs = vec![found("a", 1, Some("40")), found("c", 2, Some("30"))];
        assert_eq!(plan("g", &recs, None).claimed, vec![30]);
        // No records: a row at 0.
        let p = plan("g", &[], None);
        assert!(p.can_apply());
        assert_eq!((p.last, p.claimed.len()), (0, 0));
    }

    #[test]
    fn the_claimed_tail_is_bounded() {
        let recs: Vec<Found> = (1..=300)
            .map(|i| found(&format!("o{i}"), i, Some(&(i * 10).to_string())))
            .collect();
        let p = plan("g", &recs, None);
        assert_eq!(p.claimed.len(), MAX_CLAIMED);
        assert_eq!(p.claimed.last(), Some(&3000));
        assert!(p.describe("-").contains("positions 201..300"));
    }

    #[test]
    fn records_that_break_the_guarantees_are_refused() {
        let p = plan(
            "g",
            &[found("a", 1, Some("1")), found("b", 3, Some("3"))],
            None,
        );
        assert_eq!(p.missing, vec![2]);
        assert!(!p.can_apply());
        assert!(p.describe("-").contains("REFUSED"));
        let p = plan(
            "g",
            &[found("a", 1, Some("1")), found("b", 1, Some("3"))],
            None,
        );
        assert_eq!(p.repeated, vec![1]);
        assert!(!p.can_apply());
        let mut bad = found("c", 0, None);
        bad.position = None;
        assert!(!plan("g", &[bad], None).can_apply());
        // The row is ahead of the records (read before a write that moved it, or a claimed run not written):
        // rebuilding it lower would hand those positions out again.
        let recs = [found("a", 1, Some("1")), found("b", 2, Some("2"))];
        let p = plan("g", &recs, Some(3));
        assert_eq!(p.row_ahead, Some(3));
        assert!(!p.can_apply());
        assert!(p
            .describe("-")
            .contains("REFUSED: the row says LastPosition 3"));
        // Records ahead of the row (a row deleted or reset): rebuilt from the records.
        let p = plan("g", &recs, Some(0));
        assert!(p.can_apply());
        assert_eq!(p.last, 2);
    }
}
