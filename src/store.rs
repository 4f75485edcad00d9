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
use std::time::Duration;

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, Put, ReturnConsumedCapacity,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use tokio_util::sync::CancellationToken;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tokio::time::Instant;

use crate::aws::{describe, error_code};
use crate::health::Health;
use crate::retry::{backoff, backoff_for, Budget, Class};
use crate::telemetry::{request, WRITE_UNITS};

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

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// DynamoDB refused for a reason retrying will not fix (validation, missing table, access).
    #[error("DynamoDB refused the write: {0}")]
    Permanent(String),
    /// The group's row in the groups table is not usable (written by something else): retry later; the
    /// messages stay held. Names the item.
    #[error("waiting for bad data to be fixed: {0}")]
    Deferred(String),
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
    /// None: the group has no row yet (a row at 0 is another condition).
    positions: Mutex<HashMap<String, Option<u64>>>,
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

    /// Fail unless both tables exist with the key schema we write. Err(true, ..) is worth waiting for: an outage,
    /// throttling, or an access denial that a policy fix clears without restarting the worker.
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
                        crate::retry::classify(&e).retryable(),
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

    /// Apply the runs. Each run's outcome says how many of its records are settled (a prefix, each New,
    /// Duplicate or Conflict) and, if not all, why the rest is not. One run's record that DynamoDB refuses on
    /// its own (an item too large) is isolated: the others commit, and the refused record is recorded as
    /// REJECTED with DynamoDB's reason, so its position is filled and its group goes on.
    pub async fn commit(&self, runs: &[Run], ctx: &CommitContext<'_>) -> Vec<RunOutcome> {
        let mut state = Rounds::new(runs);
        let stop = self.rounds(runs, &mut state, ctx).await;
        match stop {
            Ok(()) => state.outcomes(runs, None),
            Err(Stop::Refused(why)) => {
                tracing::warn!(cause = %why, runs = runs.len(), "DynamoDB refused a transaction; committing its records one by one to isolate the refused one");
                let mut out = state.outcomes(runs, None);
                for (i, run) in runs.iter().enumerate() {
                    // Complete, or deferred (bad group row): nothing to isolate.
                    if out[i].error.is_some() || out[i].applied.len() == run.records.len() {
                        continue;
                    }
                    let done = out[i].applied.len();
                    out[i] = self
                        .commit_one_by_one(run, done, &out[i].applied, ctx)
                        .await;
                }
                out
            }
            Err(stop) => {
                let err = stop.into_error();
                state.outcomes(runs, Some(err))
            }
        }
    }

    /// Commit a run's records from `from` on, each in its own transaction, in order; a record refused on its
    /// own is replaced by a REJECTED record carrying DynamoDB's reason.
    async fn commit_one_by_one(
        &self,
        run: &Run,
        from: usize,
        settled: &[Applied],
        ctx: &CommitContext<'_>,
    ) -> RunOutcome {
        let mut applied = settled.to_vec();
        for record in &run.records[from..] {
            let mut single = Run {
                group_id: run.group_id.clone(),
                records: vec![record.clone()],
            };
            let mut tried_fallback = false;
            loop {
                let mut state = Rounds::new(std::slice::from_ref(&single));
                match self
                    .rounds(std::slice::from_ref(&single), &mut state, ctx)
                    .await
                {
                    Ok(()) => {
                        applied.extend(
                            state.outcomes(std::slice::from_ref(&single), None)[0]
                                .applied
                                .clone(),
                        );
                        break;
                    }
                    Err(Stop::Refused(why)) if !tried_fallback => {
                        tracing::error!(order = %record.order_key, group = %run.group_id, message_id = %record.sqs_message_id, cause = %why, "DynamoDB refused this record; recording it as REJECTED instead");
                        single.records[0] = refused_record(record, &why);
                        tried_fallback = true;
                    }
                    Err(stop) => {
                        return RunOutcome {
                            applied,
                            error: Some(stop.into_error()),
                        }
                    }
                }
            }
        }
        RunOutcome {
            applied,
            error: None,
        }
    }

    /// Commit rounds until every pending record is settled. Transient, throttled and account-wide failures are
    /// waited out (with backoff, within the budget); a refusal of the request itself stops with `Refused`.
    async fn rounds(
        &self,
        runs: &[Run],
        st: &mut Rounds,
        ctx: &CommitContext<'_>,
    ) -> Result<(), Stop> {
        let mut waits = Waits::default();
        // Cancelled rounds in a row: contention with another worker is normal, a row written by something
        // else is not; either way a repeat must slow down instead of spinning.
        let mut cancelled_in_a_row = 0u32;
        while st.pending.iter().any(|p| !p.is_empty()) {
            if ctx.abort.is_cancelled() || ctx.budget.expired(Instant::now()) {
                return Err(Stop::Aborted);
            }
            let (bases, bad) = match self.bases(runs, &st.pending, ctx).await {
                Ok(b) => b,
                Err(f) => {
                    self.wait(&mut waits, f, ctx).await?;
                    continue;
                }
            };
            // A group whose row is bad data waits alone: its runs are deferred (the group task retries them
            // with backoff, its messages stay held), the other groups of the batch go on.
            for (group, detail) in bad {
                tracing::error!(group = %group, cause = %detail, "group row is not usable; its orders wait until the item is fixed or deleted");
                for (i, run) in runs.iter().enumerate() {
                    if run.group_id == group && !st.pending[i].is_empty() {
                        st.deferred[i] = Some(detail.clone());
                        st.pending[i].clear();
                    }
                }
            }
            if st.pending.iter().all(|p| p.is_empty()) {
                break;
            }
            let (items, actions, token) = self.build(runs, &st.pending, &bases);
            if items.is_empty() {
                return Err(Stop::Permanent("no action could be built".into()));
            }
            let call = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .client_request_token(token)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send();
            let sent = match bounded(call, ctx).await {
                Some(r) => r,
                None => {
                    request("dynamodb", "TransactWriteItems", false);
                    // The outcome is unknown: the positions may or may not be written. A retry sends the same
                    // token (idempotent); a drain that stops here releases the run, and the next worker's
                    // conditions sort it out.
                    if ctx.abort.is_cancelled() || ctx.budget.expired(Instant::now()) {
                        return Err(Stop::Aborted);
                    }
                    self.wait(&mut waits, Failure::timeout("TransactWriteItems"), ctx)
                        .await?;
                    continue;
                }
            };
            match sent {
                Ok(out) => {
                    request("dynamodb", "TransactWriteItems", true);
                    self.answered(ctx);
                    let units: f64 = out
                        .consumed_capacity()
                        .iter()
                        .filter_map(|c| c.capacity_units())
                        .sum();
                    metrics::counter!(WRITE_UNITS).increment(units.round() as u64); // WCUs are whole numbers
                    waits = Waits::default();
                    cancelled_in_a_row = 0;
                    let mut applied: HashMap<usize, Vec<usize>> = HashMap::new();
                    for a in &actions {
                        if let Action::Put { run, idx } = a {
                            applied.entry(*run).or_default().push(*idx);
                        }
                    }
                    for (run, idxs) in applied {
                        let base = bases[&runs[run].group_id].unwrap_or(0);
                        for (k, idx) in idxs.iter().enumerate() {
                            st.results[run][*idx] = Some(Applied::New {
                                position: base + k as u64 + 1,
                            });
                        }
                        st.pending[run].retain(|i| !idxs.contains(i));
                        self.positions
                            .lock()
                            .expect("cache lock")
                            .insert(runs[run].group_id.clone(), Some(base + idxs.len() as u64));
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
                            // Same token, other content: our position cache was stale. Re-read, rebuild, and
                            // back off like any other failed round.
                            self.forget(runs, &st.pending);
                            self.wait(&mut waits, Failure::of(&e, "TransactWriteItems"), ctx)
                                .await?;
                            continue;
                        }
                        let f = Failure::of(&e, "TransactWriteItems");
                        if f.class == Class::Request {
                            return Err(Stop::Refused(f.detail));
                        }
                        self.wait(&mut waits, f, ctx).await?;
                        continue;
                    };
                    // A cancellation is an answer: the service works.
                    self.answered(ctx);
                    cancelled_in_a_row += 1;
                    let mut retry_later = false;
                    let mut refused: Option<String> = None;
                    let mut to_classify: Vec<(usize, usize)> = Vec::new();
                    let mut any_reason = false;
                    for (action, reason) in actions.iter().zip(reasons.iter()) {
                        let code = reason.code().unwrap_or("None");
                        any_reason |= code != "None";
                        match (code, action) {
                            ("None", _) => {}
                            ("ConditionalCheckFailed", Action::Put { run, idx }) => {
                                let record = &runs[*run].records[*idx];
                                match reason.item().map(|i| i.get("PayloadSha256")) {
                                    Some(Some(AttributeValue::S(sha))) => {
                                        st.settle(*run, *idx, classify(record, sha));
                                    }
                                    Some(_) if reason.item().is_some_and(|i| !i.is_empty()) => {
                                        st.settle(*run, *idx, foreign(record));
                                    }
                                    _ => to_classify.push((*run, *idx)),
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
                            ) => retry_later = true,
                            (code, _) => {
                                let msg = reason.message().unwrap_or_default();
                                refused = Some(format!("transaction cancelled: {code}: {msg}"));
                            }
                        }
                    }
                    if let Some(why) = refused {
                        return Err(Stop::Refused(why));
                    }
                    if !any_reason {
                        return Err(Stop::Permanent(
                            "transaction cancelled without a reason for any action".into(),
                        ));
                    }
                    if !to_classify.is_empty() {
                        match self.existing_hashes(runs, &to_classify, ctx).await {
                            Ok(found) => {
                                for (run, idx) in to_classify {
                                    let record = &runs[run].records[idx];
                                    match found.get(&record.order_key) {
                                        Some(Some(sha)) => {
                                            st.settle(run, idx, classify(record, sha))
                                        }
                                        Some(None) => st.settle(run, idx, foreign(record)),
                                        // Gone again (deleted by someone): the next round puts it.
                                        None => {}
                                    }
                                }
                            }
                            Err(f) => self.wait(&mut waits, f, ctx).await?,
                        }
                    }
                    if retry_later {
                        self.wait(
                            &mut waits,
                            Failure::throttled("transaction conflict or throttling"),
                            ctx,
                        )
                        .await?;
                    } else if cancelled_in_a_row > 1 {
                        // The same condition failed again right after a fresh read: another writer is racing us
                        // (or a row was written by something else). Back off a little, growing.
                        let pause = backoff(
                            cancelled_in_a_row - 2,
                            Duration::from_millis(20),
                            Duration::from_secs(5),
                        );
                        if !ctx.budget.sleep(pause).await || ctx.abort.is_cancelled() {
                            return Err(Stop::Aborted);
                        }
                        if cancelled_in_a_row.is_power_of_two() {
                            tracing::warn!(rounds = cancelled_in_a_row, groups = ?st.pending_groups(runs), "transactions keep being cancelled (another worker on the same groups, or rows written by something else)");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A DynamoDB call answered: lift an account-wide block.
    fn answered(&self, ctx: &CommitContext<'_>) {
        if let Some(b) = ctx.health.clear("dynamodb") {
            tracing::warn!(code = %b.code, blocked_s = b.since.elapsed().as_secs(), "DynamoDB answers again; taking new work");
        }
    }

    /// Wait before retrying a failure, within the budget; say what we are waiting for, without flooding the
    /// log. Account-wide failures block new work (see [`crate::health`]); bad data in a group row is waited out
    /// like one, naming the item.
    async fn wait(
        &self,
        waits: &mut Waits,
        f: Failure,
        ctx: &CommitContext<'_>,
    ) -> Result<(), Stop> {
        if f.class == Class::Request {
            return Err(Stop::Refused(f.detail));
        }
        let started = *waits.since.get_or_insert_with(Instant::now);
        let n = waits.failures;
        if f.class == Class::AccountWide {
            if ctx
                .health
                .block("dynamodb", f.code.as_deref().unwrap_or("-"), &f.detail)
            {
                tracing::error!(waiting_for = "DynamoDB", code = f.code.as_deref().unwrap_or("-"), cause = %f.detail, "DynamoDB refuses every write (permissions, table, credentials or KMS): taking no new work, keeping what is held, retrying until it clears");
            }
        } else if n == 0 || n.is_power_of_two() {
            tracing::warn!(
                waiting_for = "DynamoDB",
                failures = n + 1,
                waited_s = started.elapsed().as_secs(),
                class = f.class.as_str(),
                cause = %f.detail,
                "DynamoDB write not done; messages stay held (visibility extended) and the write is retried"
            );
        }
        let pause = backoff_for(f.class, n);
        waits.failures += 1;
        tokio::select! {
            _ = ctx.abort.cancelled() => Err(Stop::Aborted),
            more = ctx.budget.sleep(pause) => if more { Ok(()) } else { Err(Stop::Aborted) },
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

    /// The last applied position of every group with pending records (None: the group has no row yet): cached,
    /// else read consistently. A row with a LastPosition that is not a whole number is bad data, named.
    async fn bases(
        &self,
        runs: &[Run],
        pending: &[Vec<usize>],
        ctx: &CommitContext<'_>,
    ) -> Result<(HashMap<String, Option<u64>>, Vec<(String, String)>), Failure> {
        let mut bases = HashMap::new();
        let mut bad = Vec::new();
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
                ctx,
            )
            .await?;
        let mut cache = self.positions.lock().expect("cache lock");
        for g in missing {
            let pos = match found.get(&g) {
                None | Some(None) => None,
                Some(Some(v)) => match last_position(&self.groups_table, &g, v) {
                    Ok(p) => Some(p),
                    Err(detail) => {
                        // Not cached: the next try reads the row again (someone may have fixed it).
                        bad.push((g, detail));
                        continue;
                    }
                },
            };
            cache.insert(g.clone(), pos);
            bases.insert(g, pos);
        }
        Ok((bases, bad))
    }

    /// PayloadSha256 of existing order records: key -> Some(hash), or None when the item exists without one.
    async fn existing_hashes(
        &self,
        runs: &[Run],
        which: &[(usize, usize)],
        ctx: &CommitContext<'_>,
    ) -> Result<HashMap<String, Option<String>>, Failure> {
        let mut keys: Vec<String> = which
            .iter()
            .map(|(r, i)| runs[*r].records[*i].order_key.clone())
            .collect();
        keys.sort();
        keys.dedup();
        let found = self
            .batch_get(&self.orders_table, "OrderID", &keys, "PayloadSha256", ctx)
            .await?;
        Ok(found
            .into_iter()
            .map(|(k, v)| (k, v.and_then(|v| v.as_s().ok().cloned())))
            .collect())
    }

    /// Consistent BatchGetItem of one attribute by key: key -> Some(value) or None (item without it); keys
    /// whose item does not exist are absent.
    async fn batch_get(
        &self,
        table: &str,
        key: &str,
        ids: &[String],
        attr: &str,
        ctx: &CommitContext<'_>,
    ) -> Result<HashMap<String, Option<AttributeValue>>, Failure> {
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
                let call = self
                    .client
                    .batch_get_item()
                    .set_request_items(Some(request_items.clone()))
                    .send();
                let out = match bounded(call, ctx).await {
                    Some(Ok(out)) => out,
                    Some(Err(e)) => {
                        request("dynamodb", "BatchGetItem", false);
                        return Err(Failure::of(&e, "BatchGetItem"));
                    }
                    None => {
                        request("dynamodb", "BatchGetItem", false);
                        return Err(Failure::timeout("BatchGetItem"));
                    }
                };
                request("dynamodb", "BatchGetItem", true);
                self.answered(ctx);
                for item in out
                    .responses()
                    .and_then(|r| r.get(table))
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    if let Some(id) = item.get(key).and_then(|v| v.as_s().ok()) {
                        found.insert(id.clone(), item.get(attr).cloned());
                    }
                }
                request_items = out.unprocessed_keys().cloned().unwrap_or_default();
                if !request_items.is_empty() {
                    if attempts > 8 {
                        return Err(Failure::throttled(
                            "BatchGetItem kept returning unprocessed keys",
                        ));
                    }
                    if !ctx
                        .budget
                        .sleep(backoff(
                            attempts,
                            Duration::from_millis(50),
                            Duration::from_secs(2),
                        ))
                        .await
                    {
                        return Err(Failure::timeout("BatchGetItem"));
                    }
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
        bases: &HashMap<String, Option<u64>>,
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
            let row = bases[&run.group_id];
            let base = row.unwrap_or(0);
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
            // No row yet and a row at 0 are different conditions: a row written with LastPosition 0 (by a tool,
            // or a reset) never satisfies attribute_not_exists, and treating it as "no row" looped forever.
            let update = match row {
                None => update.condition_expression("attribute_not_exists(LastPosition)"),
                Some(base) => update
                    .condition_expression("LastPosition = :base")
                    .expression_attribute_values(":base", AttributeValue::N(base.to_string())),
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
            fingerprint.push_str(&format!("G{}|{row:?}|{last};", run.group_id));
            groups.insert(run.group_id.as_str());
        }
        // The token only has to be identical for an identical transaction (DynamoDB keeps it 10 minutes).
        let token = crate::order::sha256_hex(fingerprint.as_bytes())[..36].to_string();
        (items, actions, token)
    }
}

/// What a commit call runs under: its budget, the drain's abort, and where account-wide errors are reported.
pub struct CommitContext<'a> {
    pub budget: Budget,
    pub abort: &'a CancellationToken,
    pub health: &'a Health,
}

/// What became of one run: its settled prefix, and why the rest is not settled (if it is not).
#[derive(Debug)]
pub struct RunOutcome {
    pub applied: Vec<Applied>,
    pub error: Option<StoreError>,
}

/// The working state of a commit: per run, each record's outcome so far and the records still pending.
struct Rounds {
    results: Vec<Vec<Option<Applied>>>,
    pending: Vec<Vec<usize>>,
    /// Runs set aside because their group's row is bad data: why.
    deferred: Vec<Option<String>>,
}

impl Rounds {
    fn new(runs: &[Run]) -> Self {
        Rounds {
            results: runs.iter().map(|r| vec![None; r.records.len()]).collect(),
            pending: runs
                .iter()
                .map(|r| (0..r.records.len()).collect())
                .collect(),
            deferred: vec![None; runs.len()],
        }
    }

    fn settle(&mut self, run: usize, idx: usize, a: Applied) {
        self.results[run][idx] = Some(a);
        self.pending[run].retain(|i| *i != idx);
    }

    fn pending_groups<'r>(&self, runs: &'r [Run]) -> Vec<&'r str> {
        runs.iter()
            .zip(&self.pending)
            .filter(|(_, p)| !p.is_empty())
            .map(|(r, _)| r.group_id.as_str())
            .collect()
    }

    /// Each run's settled prefix; a run with unsettled records carries `error` (or none, for the caller to
    /// go on with).
    fn outcomes(&self, runs: &[Run], error: Option<StoreError>) -> Vec<RunOutcome> {
        runs.iter()
            .zip(&self.results)
            .zip(&self.deferred)
            .map(|((run, res), deferred)| {
                let applied: Vec<Applied> = res.iter().map_while(|a| a.clone()).collect();
                let complete = applied.len() == run.records.len();
                let error = match deferred {
                    _ if complete => None,
                    Some(why) => Some(StoreError::Deferred(why.clone())),
                    None => error.clone(),
                };
                RunOutcome { applied, error }
            })
            .collect()
    }
}

/// Why the rounds stopped short.
enum Stop {
    /// The budget ended or the drain aborted.
    Aborted,
    /// DynamoDB refused the request itself: something in it cannot be written.
    Refused(String),
    Permanent(String),
}

impl Stop {
    fn into_error(self) -> StoreError {
        match self {
            Stop::Aborted => StoreError::Aborted,
            Stop::Refused(d) | Stop::Permanent(d) => StoreError::Permanent(d),
        }
    }
}

#[derive(Default)]
struct Waits {
    failures: u32,
    since: Option<Instant>,
}

/// A failed DynamoDB call, classified.
struct Failure {
    class: Class,
    code: Option<String>,
    detail: String,
}

impl Failure {
    fn of<E>(e: &SdkError<E, HttpResponse>, operation: &str) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        Failure {
            class: crate::retry::classify(e),
            code: error_code(e),
            detail: format!("{operation}: {}", describe(e)),
        }
    }

    fn timeout(operation: &str) -> Self {
        Failure {
            class: Class::Transient,
            code: None,
            detail: format!("{operation}: no answer within {ATTEMPT_TIMEOUT:?}"),
        }
    }

    fn throttled(detail: &str) -> Self {
        Failure {
            class: Class::Throttled,
            code: None,
            detail: detail.to_owned(),
        }
    }
}

/// Longest one DynamoDB attempt may take: transactions answer in milliseconds; a service that accepts the
/// connection and never answers must not hold a run (or a drain) for the SDK's long-poll-sized timeout.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Await an SDK call cut at the attempt timeout, the budget and the abort. None: no answer (outcome unknown).
async fn bounded<T>(
    call: impl std::future::Future<Output = T>,
    ctx: &CommitContext<'_>,
) -> Option<T> {
    let limit = ctx.budget.attempt_limit(ATTEMPT_TIMEOUT, Instant::now());
    tokio::select! {
        r = tokio::time::timeout(limit, call) => r.ok(),
        _ = ctx.abort.cancelled() => None,
    }
}

/// A group row's LastPosition: a whole number, or what is wrong with the item (named).
fn last_position(table: &str, group: &str, v: &AttributeValue) -> Result<u64, String> {
    match v {
        AttributeValue::N(n) => n.parse::<u64>().map_err(|_| {
            format!(
                "{table} item MessageGroupId={group:?}: LastPosition {n} is not a whole number; fix or delete the item"
            )
        }),
        other => Err(format!(
            "{table} item MessageGroupId={group:?}: LastPosition is {other:?}, not a number; fix or delete the item"
        )),
    }
}

fn classify(record: &Record, existing_sha: &str) -> Applied {
    if existing_sha == record.payload_sha256 {
        Applied::Duplicate
    } else {
        Applied::Conflict
    }
}

/// An existing record without PayloadSha256 was not written by this worker: it cannot be the same order,
/// so it is a conflict (logged, never applied over), never a retry loop.
fn foreign(record: &Record) -> Applied {
    tracing::warn!(order = %record.order_key, group = %record.group_id, "an existing record with this OrderID has no PayloadSha256 (written by something else); counted as a conflict");
    Applied::Conflict
}

/// The record written in place of one DynamoDB refuses on its own: REJECTED, with the reason, no total.
fn refused_record(r: &Record, why: &str) -> Record {
    Record {
        status: "REJECTED",
        reason: Some(crate::order::truncate(
            &format!("DynamoDB refused the record: {why}"),
            crate::order::MAX_REASON_LEN,
        )),
        total_cents: None,
        currency: None,
        ..r.clone()
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
        let bases = HashMap::from([("g1".to_string(), Some(7)), ("g2".to_string(), None)]);
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
        let bases = HashMap::from([("g1".to_string(), None), ("g2".to_string(), None)]);
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
        let bases = HashMap::from([("g1".to_string(), None), ("g2".to_string(), None)]);
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
