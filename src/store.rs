//! The record: apply orders to DynamoDB exactly once and in group order. Knows DynamoDB, nothing about SQS.
//!
//! One `TransactWriteItems` commits the runs of several groups at once. For every group it holds
//! - a `Put` of each order record, conditional on `attribute_not_exists(OrderID)`: a redelivery can never
//!   apply twice, and
//! - an `Update` of the group's `LastPosition`, conditional on the value we based the positions on: two
//!   workers can never hand out the same `GroupPosition`, and positions follow commit order.
//!
//! All or nothing: a cancelled transaction says which action failed; an order that already exists is sorted
//! into duplicate (same payload hash) or conflict (different payload), a stale position is re-read, and the
//! rest is tried again. A `ClientRequestToken` derived from the content makes a retry after a lost response
//! idempotent instead of a spurious "duplicate".

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, Put, ReturnConsumedCapacity,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use tokio_util::sync::CancellationToken;

use crate::aws::{backoff, describe, error_code, is_transient};
use crate::metrics::{metrics, request};

/// Most actions DynamoDB allows in one transaction.
pub const MAX_ACTIONS: usize = 100;

/// Every attribute an accepted order's record carries (a rejected one has `Reason` instead of the total).
pub const ACCEPTED_ATTRIBUTES: &[&str] = &[
    "OrderID",
    "MessageGroupId",
    "GroupPosition",
    "Status",
    "TotalCents",
    "Currency",
    "ItemCount",
    "PayloadSha256",
    "SqsMessageId",
    "SqsSequenceNumber",
    "ReceiveCount",
    "ProcessedBy",
    "ProcessedAt",
];

/// One order record, ready to write except for its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub order_key: String,
    pub group_id: String,
    /// ACCEPTED or REJECTED.
    pub status: &'static str,
    pub reason: Option<String>,
    pub total_cents: Option<u64>,
    pub currency: Option<String>,
    pub item_count: u32,
    pub payload_sha256: String,
    pub sqs_message_id: String,
    pub sqs_sequence_number: Option<String>,
    pub receive_count: u32,
    pub processed_by: String,
    pub processed_at: String,
}

/// Consecutive records of one group, in the order they must be applied.
#[derive(Debug, Clone)]
pub struct Run {
    pub group_id: String,
    pub records: Vec<Record>,
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Written now, at this position in its group.
    New { position: u64 },
    /// Already there with the same payload: a redelivery, nothing to do.
    Duplicate,
    /// Already there with a different payload: not applied, reported.
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// DynamoDB refused for a reason retrying will not fix (validation, missing table, access).
    #[error("DynamoDB refused the write: {0}")]
    Permanent(String),
    /// The caller's deadline fired while we were waiting for DynamoDB.
    #[error("abandoned: the drain deadline passed while waiting for DynamoDB")]
    Aborted,
}

/// Where each action of a transaction came from.
enum Action {
    Put { run: usize, idx: usize },
    Group { run: usize },
}

/// The two tables and a cache of each group's last position (a hint: the condition is the truth).
pub struct Store {
    client: Client,
    orders_table: String,
    groups_table: String,
    positions: Mutex<HashMap<String, u64>>,
}

impl Store {
    pub fn new(client: Client, orders_table: String, groups_table: String) -> Self {
        Store {
            client,
            orders_table,
            groups_table,
            positions: Mutex::new(HashMap::new()),
        }
    }

    /// Forget a group's cached position. Called when we stop holding the group: its next messages may go
    /// to another worker, and a stale cache costs a whole cancelled transaction (measured with two workers:
    /// 37 % of transactions cancelled) where a fresh read costs one batched BatchGetItem.
    pub fn forget_group(&self, group: &str) {
        self.positions.lock().expect("cache lock").remove(group);
    }

    /// Fail unless both tables exist with the key schema we write. Err(true, ..) is transient.
    pub async fn check_tables(&self) -> Result<(), (bool, String)> {
        for (table, key) in [
            (&self.orders_table, "OrderID"),
            (&self.groups_table, "MessageGroupId"),
        ] {
            let out = match self.client.describe_table().table_name(table).send().await {
                Ok(out) => out,
                Err(e) => {
                    request("dynamodb", "DescribeTable", false);
                    if error_code(&e).as_deref() == Some("ResourceNotFoundException") {
                        return Err((false, format!("DynamoDB table {table:?} does not exist")));
                    }
                    return Err((
                        is_transient(&e),
                        format!("DescribeTable {table:?}: {}", describe(&e)),
                    ));
                }
            };
            request("dynamodb", "DescribeTable", true);
            let hash = out
                .table()
                .map(|t| t.key_schema())
                .unwrap_or_default()
                .iter()
                .find(|k| k.key_type().as_str() == "HASH")
                .map(|k| k.attribute_name().to_owned());
            if hash.as_deref() != Some(key) {
                return Err((
                    false,
                    format!("table {table:?} must have partition key {key:?}, has {hash:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Apply the runs. Every record ends up New, Duplicate or Conflict, unless DynamoDB refuses permanently
    /// or `abort` fires while transient errors are being waited out.
    pub async fn commit(
        &self,
        runs: &[Run],
        abort: &CancellationToken,
    ) -> Result<Vec<Vec<Applied>>, StoreError> {
        let mut results: Vec<Vec<Option<Applied>>> =
            runs.iter().map(|r| vec![None; r.records.len()]).collect();
        let mut pending: Vec<Vec<usize>> = runs
            .iter()
            .map(|r| (0..r.records.len()).collect())
            .collect();
        let mut transient_failures = 0u32;
        let mut rounds = 0u32;
        let mut waiting_since: Option<Instant> = None;
        while pending.iter().any(|p| !p.is_empty()) {
            rounds += 1;
            if abort.is_cancelled() {
                return Err(StoreError::Aborted);
            }
            // Existing records whose payload we still have to compare.
            let mut to_classify: Vec<(usize, usize)> = Vec::new();
            let bases = match self.bases(runs, &pending).await {
                Ok(b) => b,
                Err(Failure::Transient(detail)) => {
                    self.wait_transient(
                        &mut transient_failures,
                        &mut waiting_since,
                        &detail,
                        abort,
                    )
                    .await?;
                    continue;
                }
                Err(Failure::Permanent(detail)) => return Err(StoreError::Permanent(detail)),
            };
            let (items, actions, token) = self.build(runs, &pending, &bases);
            if items.is_empty() {
                // Everything left collides with an id already in this round: cannot happen after a round
                // that applied them, but never spin.
                return Err(StoreError::Permanent("no action could be built".into()));
            }
            let sent = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .client_request_token(token)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            match sent {
                Ok(out) => {
                    request("dynamodb", "TransactWriteItems", true);
                    let units: f64 = out
                        .consumed_capacity()
                        .iter()
                        .filter_map(|c| c.capacity_units())
                        .sum();
                    metrics().write_units.add(&[], units);
                    transient_failures = 0;
                    waiting_since = None;
                    let mut applied: HashMap<usize, Vec<usize>> = HashMap::new();
                    for a in &actions {
                        if let Action::Put { run, idx } = a {
                            applied.entry(*run).or_default().push(*idx);
                        }
                    }
                    for (run, idxs) in applied {
                        let base = bases[&runs[run].group_id];
                        for (k, idx) in idxs.iter().enumerate() {
                            results[run][*idx] = Some(Applied::New {
                                position: base + k as u64 + 1,
                            });
                        }
                        pending[run].retain(|i| !idxs.contains(i));
                        self.positions
                            .lock()
                            .expect("cache lock")
                            .insert(runs[run].group_id.clone(), base + idxs.len() as u64);
                    }
                }
                Err(e) => {
                    request("dynamodb", "TransactWriteItems", false);
                    let cancelled = match e.as_service_error() {
                        Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                            Some(c.cancellation_reasons().to_vec())
                        }
                        _ => None,
                    };
                    let Some(reasons) = cancelled else {
                        if error_code(&e).as_deref() == Some("IdempotentParameterMismatchException")
                        {
                            // Same token, other content: our position cache was stale. Re-read and rebuild.
                            self.forget(runs, &pending);
                            continue;
                        }
                        if is_transient(&e) {
                            self.wait_transient(
                                &mut transient_failures,
                                &mut waiting_since,
                                &describe(&e),
                                abort,
                            )
                            .await?;
                            continue;
                        }
                        return Err(StoreError::Permanent(describe(&e)));
                    };
                    let mut retry_later = false;
                    // Something must change before the next round, or we would send the same refusal again.
                    let mut progress = false;
                    for (action, reason) in actions.iter().zip(reasons.iter()) {
                        let code = reason.code().unwrap_or("None");
                        progress |= code != "None";
                        match (code, action) {
                            ("None", _) => {}
                            ("ConditionalCheckFailed", Action::Put { run, idx }) => {
                                let record = &runs[*run].records[*idx];
                                match reason
                                    .item()
                                    .and_then(|i| i.get("PayloadSha256"))
                                    .and_then(|v| v.as_s().ok())
                                {
                                    Some(sha) => {
                                        results[*run][*idx] = Some(classify(record, sha));
                                        pending[*run].retain(|i| i != idx);
                                    }
                                    None => to_classify.push((*run, *idx)),
                                }
                            }
                            ("ConditionalCheckFailed", Action::Group { run }) => {
                                self.positions
                                    .lock()
                                    .expect("cache lock")
                                    .remove(&runs[*run].group_id);
                            }
                            (
                                "TransactionConflict"
                                | "ThrottlingError"
                                | "ProvisionedThroughputExceeded",
                                _,
                            ) => {
                                retry_later = true;
                            }
                            (code, _) => {
                                let msg = reason.message().unwrap_or_default();
                                return Err(StoreError::Permanent(format!(
                                    "transaction cancelled: {code}: {msg}"
                                )));
                            }
                        }
                    }
                    if !progress {
                        return Err(StoreError::Permanent(
                            "transaction cancelled without a reason for any action".into(),
                        ));
                    }
                    if !to_classify.is_empty() {
                        match self.existing_hashes(runs, &to_classify).await {
                            Ok(found) => {
                                for (run, idx) in to_classify {
                                    let record = &runs[run].records[idx];
                                    if let Some(sha) = found.get(&record.order_key) {
                                        results[run][idx] = Some(classify(record, sha));
                                        pending[run].retain(|i| *i != idx);
                                    }
                                }
                            }
                            Err(Failure::Transient(d)) => {
                                self.wait_transient(
                                    &mut transient_failures,
                                    &mut waiting_since,
                                    &d,
                                    abort,
                                )
                                .await?;
                            }
                            Err(Failure::Permanent(d)) => return Err(StoreError::Permanent(d)),
                        }
                    }
                    if retry_later {
                        self.wait_transient(
                            &mut transient_failures,
                            &mut waiting_since,
                            "transaction conflict or throttling",
                            abort,
                        )
                        .await?;
                    }
                    if rounds > 1000 {
                        return Err(StoreError::Permanent(
                            "gave up after 1000 cancelled transactions".into(),
                        ));
                    }
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|a| a.expect("every record resolved"))
                    .collect()
            })
            .collect())
    }

    /// Sleep before retrying a transient failure; say what we are waiting for, without flooding the log.
    async fn wait_transient(
        &self,
        failures: &mut u32,
        since: &mut Option<Instant>,
        detail: &str,
        abort: &CancellationToken,
    ) -> Result<(), StoreError> {
        let started = *since.get_or_insert_with(Instant::now);
        if failures.is_power_of_two() || *failures == 0 {
            tracing::warn!(
                waiting_for = "DynamoDB",
                failures = *failures + 1,
                waited_s = started.elapsed().as_secs(),
                cause = %detail,
                "DynamoDB unavailable; messages stay held (visibility extended) and the write is retried"
            );
        }
        let pause = backoff(
            *failures,
            Duration::from_millis(100),
            Duration::from_secs(10),
        );
        *failures += 1;
        tokio::select! {
            _ = abort.cancelled() => Err(StoreError::Aborted),
            _ = tokio::time::sleep(pause) => Ok(()),
        }
    }

    fn forget(&self, runs: &[Run], pending: &[Vec<usize>]) {
        let mut cache = self.positions.lock().expect("cache lock");
        for (run, p) in runs.iter().zip(pending) {
            if !p.is_empty() {
                cache.remove(&run.group_id);
            }
        }
    }

    /// The last applied position of every group with pending records: cached, else read (consistently).
    async fn bases(
        &self,
        runs: &[Run],
        pending: &[Vec<usize>],
    ) -> Result<HashMap<String, u64>, Failure> {
        let mut bases = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.positions.lock().expect("cache lock");
            for (run, p) in runs.iter().zip(pending) {
                if p.is_empty() {
                    continue;
                }
                match cache.get(&run.group_id) {
                    Some(pos) => {
                        bases.insert(run.group_id.clone(), *pos);
                    }
                    None => missing.push(run.group_id.clone()),
                }
            }
        }
        missing.sort();
        missing.dedup();
        let found = self
            .batch_get(
                &self.groups_table,
                "MessageGroupId",
                &missing,
                "LastPosition",
            )
            .await?;
        let mut cache = self.positions.lock().expect("cache lock");
        for g in missing {
            let pos = found
                .get(&g)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            cache.insert(g.clone(), pos);
            bases.insert(g, pos);
        }
        Ok(bases)
    }

    /// PayloadSha256 of existing order records.
    async fn existing_hashes(
        &self,
        runs: &[Run],
        which: &[(usize, usize)],
    ) -> Result<HashMap<String, String>, Failure> {
        let mut keys: Vec<String> = which
            .iter()
            .map(|(r, i)| runs[*r].records[*i].order_key.clone())
            .collect();
        keys.sort();
        keys.dedup();
        self.batch_get(&self.orders_table, "OrderID", &keys, "PayloadSha256")
            .await
    }

    /// Consistent BatchGetItem of one attribute (string or number, returned as text) by key.
    async fn batch_get(
        &self,
        table: &str,
        key: &str,
        ids: &[String],
        attr: &str,
    ) -> Result<HashMap<String, String>, Failure> {
        let mut found = HashMap::new();
        for chunk in ids.chunks(100) {
            let mut request_items: HashMap<String, KeysAndAttributes> = HashMap::new();
            let keys = chunk
                .iter()
                .map(|id| HashMap::from([(key.to_owned(), AttributeValue::S(id.clone()))]))
                .collect();
            request_items.insert(
                table.to_owned(),
                KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .projection_expression("#k, #a")
                    .expression_attribute_names("#k", key)
                    .expression_attribute_names("#a", attr)
                    .build()
                    .expect("keys are set"),
            );
            let mut attempts = 0;
            while !request_items.is_empty() {
                attempts += 1;
                let out = self
                    .client
                    .batch_get_item()
                    .set_request_items(Some(request_items.clone()))
                    .send()
                    .await
                    .map_err(|e| {
                        request("dynamodb", "BatchGetItem", false);
                        if is_transient(&e) {
                            Failure::Transient(describe(&e))
                        } else {
                            Failure::Permanent(describe(&e))
                        }
                    })?;
                request("dynamodb", "BatchGetItem", true);
                for item in out
                    .responses()
                    .and_then(|r| r.get(table))
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    let id = item.get(key).and_then(|v| v.as_s().ok()).cloned();
                    let value = item
                        .get(attr)
                        .and_then(|v| v.as_s().or_else(|_| v.as_n()).ok())
                        .cloned();
                    if let (Some(id), Some(value)) = (id, value) {
                        found.insert(id, value);
                    }
                }
                request_items = out.unprocessed_keys().cloned().unwrap_or_default();
                if !request_items.is_empty() {
                    if attempts > 8 {
                        return Err(Failure::Transient(
                            "BatchGetItem kept returning unprocessed keys".into(),
                        ));
                    }
                    tokio::time::sleep(backoff(
                        attempts,
                        Duration::from_millis(50),
                        Duration::from_secs(2),
                    ))
                    .await;
                }
            }
        }
        Ok(found)
    }

    /// Build one transaction from the pending records. A group contributes the longest prefix of its pending
    /// records whose ids are not already in this transaction (DynamoDB refuses two actions on one item).
    fn build(
        &self,
        runs: &[Run],
        pending: &[Vec<usize>],
        bases: &HashMap<String, u64>,
    ) -> (Vec<TransactWriteItem>, Vec<Action>, String) {
        let mut items = Vec::new();
        let mut actions = Vec::new();
        let mut ids: HashSet<&str> = HashSet::new();
        let mut groups: HashSet<&str> = HashSet::new();
        let mut fingerprint = String::new();
        for (run_idx, run) in runs.iter().enumerate() {
            let p = &pending[run_idx];
            if p.is_empty() || groups.contains(run.group_id.as_str()) {
                continue;
            }
            let mut take = Vec::new();
            for idx in p {
                let key = run.records[*idx].order_key.as_str();
                if ids.contains(key)
                    || take
                        .iter()
                        .any(|i: &usize| run.records[*i].order_key == key)
                {
                    break;
                }
                take.push(*idx);
            }
            if take.is_empty() || items.len() + take.len() + 1 > MAX_ACTIONS {
                continue;
            }
            let base = bases[&run.group_id];
            for (k, idx) in take.iter().enumerate() {
                let record = &run.records[*idx];
                let position = base + k as u64 + 1;
                fingerprint.push_str(&format!(
                    "{}|{}|{}|{};",
                    record.order_key, record.sqs_message_id, record.payload_sha256, position
                ));
                items.push(
                    TransactWriteItem::builder()
                        .put(
                            Put::builder()
                                .table_name(&self.orders_table)
                                .set_item(Some(item(record, position)))
                                .condition_expression("attribute_not_exists(OrderID)")
                                .return_values_on_condition_check_failure(
                                    ReturnValuesOnConditionCheckFailure::AllOld,
                                )
                                .build()
                                .expect("table and item are set"),
                        )
                        .build(),
                );
                actions.push(Action::Put {
                    run: run_idx,
                    idx: *idx,
                });
                ids.insert(record.order_key.as_str());
            }
            let last = base + take.len() as u64;
            let last_key = &run.records[*take.last().expect("non-empty")].order_key;
            let update = Update::builder()
                .table_name(&self.groups_table)
                .key("MessageGroupId", AttributeValue::S(run.group_id.clone()))
                .update_expression("SET LastPosition = :last, LastOrderID = :oid, UpdatedAt = :at");
            let update = if base == 0 {
                update.condition_expression("attribute_not_exists(LastPosition)")
            } else {
                update
                    .condition_expression("LastPosition = :base")
                    .expression_attribute_values(":base", AttributeValue::N(base.to_string()))
            };
            items.push(
                TransactWriteItem::builder()
                    .update(
                        update
                            .expression_attribute_values(
                                ":last",
                                AttributeValue::N(last.to_string()),
                            )
                            .expression_attribute_values(
                                ":oid",
                                AttributeValue::S(last_key.clone()),
                            )
                            .expression_attribute_values(
                                ":at",
                                AttributeValue::S(run.records[take[0]].processed_at.clone()),
                            )
                            .build()
                            .expect("table, key and expression are set"),
                    )
                    .build(),
            );
            actions.push(Action::Group { run: run_idx });
            fingerprint.push_str(&format!("G{}|{base}|{last};", run.group_id));
            groups.insert(run.group_id.as_str());
        }
        // The token only has to be identical for an identical transaction (DynamoDB keeps it 10 minutes).
        let token = crate::order::sha256_hex(fingerprint.as_bytes())[..36].to_string();
        (items, actions, token)
    }
}

enum Failure {
    Transient(String),
    Permanent(String),
}

fn classify(record: &Record, existing_sha: &str) -> Applied {
    if existing_sha == record.payload_sha256 {
        Applied::Duplicate
    } else {
        Applied::Conflict
    }
}

/// The DynamoDB item of one record at one position.
pub fn item(r: &Record, position: u64) -> HashMap<String, AttributeValue> {
    let mut m = HashMap::from([
        ("OrderID".to_owned(), AttributeValue::S(r.order_key.clone())),
        (
            "MessageGroupId".to_owned(),
            AttributeValue::S(r.group_id.clone()),
        ),
        (
            "GroupPosition".to_owned(),
            AttributeValue::N(position.to_string()),
        ),
        ("Status".to_owned(), AttributeValue::S(r.status.to_owned())),
        (
            "ItemCount".to_owned(),
            AttributeValue::N(r.item_count.to_string()),
        ),
        (
            "PayloadSha256".to_owned(),
            AttributeValue::S(r.payload_sha256.clone()),
        ),
        (
            "SqsMessageId".to_owned(),
            AttributeValue::S(r.sqs_message_id.clone()),
        ),
        (
            "ReceiveCount".to_owned(),
            AttributeValue::N(r.receive_count.to_string()),
        ),
        (
            "ProcessedBy".to_owned(),
            AttributeValue::S(r.processed_by.clone()),
        ),
        (
            "ProcessedAt".to_owned(),
            AttributeValue::S(r.processed_at.clone()),
        ),
    ]);
    if let Some(reason) = &r.reason {
        m.insert("Reason".to_owned(), AttributeValue::S(reason.clone()));
    }
    if let Some(total) = r.total_cents {
        m.insert(
            "TotalCents".to_owned(),
            AttributeValue::N(total.to_string()),
        );
    }
    if let Some(currency) = &r.currency {
        m.insert("Currency".to_owned(), AttributeValue::S(currency.clone()));
    }
    if let Some(seq) = &r.sqs_sequence_number {
        m.insert(
            "SqsSequenceNumber".to_owned(),
            AttributeValue::S(seq.clone()),
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, group: &str) -> Record {
        Record {
            order_key: key.into(),
            group_id: group.into(),
            status: "ACCEPTED",
            reason: None,
            total_cents: Some(10),
            currency: Some("EUR".into()),
            item_count: 1,
            payload_sha256: "ab".into(),
            sqs_message_id: format!("m-{key}"),
            sqs_sequence_number: Some("1".into()),
            receive_count: 1,
            processed_by: "i-1".into(),
            processed_at: "2026-11-25T12:00:00.000Z".into(),
        }
    }

    fn store() -> Store {
        let conf = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .build();
        Store::new(
            Client::from_conf(conf),
            "orders".into(),
            "order-groups".into(),
        )
    }

    #[test]
    fn build_assigns_consecutive_positions_and_one_group_update() {
        let runs = vec![
            Run {
                group_id: "g1".into(),
                records: vec![record("a", "g1"), record("b", "g1")],
            },
            Run {
                group_id: "g2".into(),
                records: vec![record("c", "g2")],
            },
        ];
        let pending = vec![vec![0, 1], vec![0]];
        let bases = HashMap::from([("g1".to_string(), 7), ("g2".to_string(), 0)]);
        let (items, actions, token) = store().build(&runs, &pending, &bases);
        assert_eq!(items.len(), 5);
        assert_eq!(actions.len(), 5);
        assert_eq!(token.len(), 36);
        let pos = |i: usize| {
            items[i]
                .put()
                .unwrap()
                .item()
                .get("GroupPosition")
                .unwrap()
                .as_n()
                .unwrap()
                .clone()
        };
        assert_eq!(pos(0), "8");
        assert_eq!(pos(1), "9");
        assert_eq!(pos(3), "1");
        let g1 = items[2].update().unwrap();
        assert_eq!(g1.condition_expression(), Some("LastPosition = :base"));
        let g2 = items[4].update().unwrap();
        assert_eq!(
            g2.condition_expression(),
            Some("attribute_not_exists(LastPosition)")
        );
        // Same content, same token: a retry after a lost response is idempotent.
        let (_, _, again) = store().build(&runs, &pending, &bases);
        assert_eq!(token, again);
    }

    #[test]
    fn build_stops_a_group_at_a_repeated_id() {
        let runs = vec![
            Run {
                group_id: "g1".into(),
                records: vec![record("a", "g1"), record("a", "g1"), record("b", "g1")],
            },
            Run {
                group_id: "g2".into(),
                records: vec![record("b", "g2")],
            },
        ];
        let pending = vec![vec![0, 1, 2], vec![0]];
        let bases = HashMap::from([("g1".to_string(), 0), ("g2".to_string(), 0)]);
        let (items, actions, _) = store().build(&runs, &pending, &bases);
        // g1 contributes only "a" (the second "a" must wait for the first), g2 its "b".
        assert_eq!(items.len(), 4);
        assert!(matches!(actions[0], Action::Put { run: 0, idx: 0 }));
        assert!(matches!(actions[2], Action::Put { run: 1, idx: 0 }));
    }

    #[test]
    fn build_respects_the_action_limit() {
        let big: Vec<Record> = (0..60).map(|i| record(&format!("o{i}"), "g1")).collect();
        let big2: Vec<Record> = (0..60).map(|i| record(&format!("p{i}"), "g2")).collect();
        let runs = vec![
            Run {
                group_id: "g1".into(),
                records: big,
            },
            Run {
                group_id: "g2".into(),
                records: big2,
            },
        ];
        let pending = vec![(0..60).collect(), (0..60).collect()];
        let bases = HashMap::from([("g1".to_string(), 0), ("g2".to_string(), 0)]);
        let (items, _, _) = store().build(&runs, &pending, &bases);
        assert_eq!(items.len(), 61);
    }

    #[test]
    fn item_has_every_attribute() {
        let mut r = record("a", "g");
        let m = item(&r, 3);
        for k in ACCEPTED_ATTRIBUTES {
            assert!(m.contains_key(*k), "{k}");
        }
        assert!(!m.contains_key("Reason"));
        r.status = "REJECTED";
        r.reason = Some("bad".into());
        r.total_cents = None;
        r.currency = None;
        let m = item(&r, 1);
        assert!(
            m.contains_key("Reason")
                && !m.contains_key("TotalCents")
                && !m.contains_key("Currency")
        );
    }

    #[test]
    fn classify_by_hash() {
        let r = record("a", "g");
        assert_eq!(classify(&r, "ab"), Applied::Duplicate);
        assert_eq!(classify(&r, "cd"), Applied::Conflict);
    }
}
