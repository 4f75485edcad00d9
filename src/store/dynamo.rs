//! The DynamoDB calls of the store, each one attempt, cut at its deadline, its answer classified: the
//! claim (`UpdateItem`), the inserts (`BatchExecuteStatement`), the consistent reads (`BatchGetItem`) and
//! the start-up table check. Retrying is the caller's ([`super::Store::commit`]), but for the keys a
//! `BatchGetItem` leaves unprocessed, asked again here (through [`crate::retry::Retry`]).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::operation::batch_execute_statement::BatchExecuteStatementOutput;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, BatchStatementErrorCodeEnum, BatchStatementRequest, BatchStatementResponse,
    KeysAndAttributes, ReturnConsumedCapacity, ReturnValuesOnConditionCheckFailure,
};
use aws_sdk_dynamodb::Client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tokio::time::Instant;

use super::protocol::{parse_seq, Claim, ClaimAnswer, Existing, GroupRow};
use super::{CommitContext, Record};
use crate::aws::{describe, error_code};
use crate::retry::{Class, Pace, Retry, Stop};
use crate::schema::{self, Item};
use crate::telemetry::{request, CLAIMS, READ_UNITS, WRITE_UNITS};

/// Longest one DynamoDB attempt may take: writes answer in milliseconds; a service that accepts the
/// connection and never answers must not hold a run (or a drain) for the SDK's long-poll-sized timeout.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the tables are not usable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TableError {
    /// A setting to fix: the table is missing or has another key.
    #[error("{0}")]
    Wrong(String),
    /// Worth waiting for: an outage, throttling, or an access denial that a policy fix clears.
    #[error("{0}")]
    Unavailable(String),
}

/// A failed DynamoDB call, classified.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    /// The DynamoDB operation that failed: an account-wide block it causes is lifted by that operation only.
    pub operation: &'static str,
    pub class: Class,
    pub code: Option<String>,
    pub detail: String,
}

impl Failure {
    fn of<E>(e: &SdkError<E, HttpResponse>, operation: &'static str) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        Failure {
            operation,
            class: crate::retry::classify(e),
            code: error_code(e),
            detail: format!("{operation}: {}", describe(e)),
        }
    }

    fn timeout(operation: &'static str) -> Self {
        Failure {
            operation,
            class: Class::Transient,
            code: None,
            detail: format!("{operation}: no answer within {ATTEMPT_TIMEOUT:?}"),
        }
    }

    fn statement(code: &str, message: &str) -> Self {
        Failure {
            operation: "BatchExecuteStatement",
            class: crate::retry::classify_code(Some(code), None),
            code: Some(code.to_owned()),
            detail: format!("BatchExecuteStatement statement: {code}: {message}"),
        }
    }
}

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

fn count_claim(applied: bool) {
    let result = if applied { "applied" } else { "refused" };
    metrics::counter!(CLAIMS, "result" => result).increment(1);
}

fn add_write_units(units: f64) {
    // Write units are whole numbers (1 per KB, rounded up), and the exporter's counters are integers.
    metrics::counter!(WRITE_UNITS).increment(units.round() as u64);
}

/// What became of a claim.
pub(super) enum ClaimResult {
    Answer(ClaimAnswer),
    /// The row DynamoDB returned is not a row this protocol writes: named.
    BadRow(String),
    /// No answer, or an error (the claim may or may not have been applied).
    Failed(Failure),
}

/// Send one claim: `LastPosition` from `expect` to the claim's, `Claimed` replaced, conditional on the
/// `LastPosition` it is based on; a failed condition returns the row as it is.
pub(super) async fn claim(
    client: &Client,
    table: &str,
    group: &str,
    c: &Claim,
    at: &str,
    ctx: &CommitContext<'_>,
) -> ClaimResult {
    let req = client
        .update_item()
        .table_name(table)
        .key(schema::GROUP_KEY, AttributeValue::S(group.to_owned()))
        .update_expression("SET #last = :last, #claimed = :claimed, #at = :at, #proto = :proto")
        .expression_attribute_names("#last", schema::LAST_POSITION)
        .expression_attribute_names("#claimed", schema::CLAIMED)
        .expression_attribute_names("#at", schema::UPDATED_AT)
        .expression_attribute_names("#proto", schema::PROTOCOL)
        .expression_attribute_values(":last", AttributeValue::S(c.row.last.to_string()))
        .expression_attribute_values(":claimed", claimed_list(c))
        .expression_attribute_values(":at", AttributeValue::S(at.to_owned()))
        .expression_attribute_values(":proto", protocol_value())
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .return_consumed_capacity(ReturnConsumedCapacity::Total);
    let (condition, base) = claim_condition(c.expect);
    let req = req.condition_expression(condition);
    let req = match base {
        None => req,
        Some((s, n)) => req
            .expression_attribute_values(":base_s", s)
            .expression_attribute_values(":base_n", n),
    };
    let Some(sent) = bounded(req.send(), ctx).await else {
        request("dynamodb", "UpdateItem", false);
        return ClaimResult::Failed(Failure::timeout("UpdateItem"));
    };
    match sent {
        Ok(out) => {
            request("dynamodb", "UpdateItem", true);
            count_claim(true);
            add_write_units(
                out.consumed_capacity()
                    .and_then(|c| c.capacity_units())
                    .unwrap_or(1.0),
            );
            ClaimResult::Answer(ClaimAnswer::Applied)
        }
        Err(e) => {
            request("dynamodb", "UpdateItem", false);
            if let Some(UpdateItemError::ConditionalCheckFailedException(cf)) = e.as_service_error()
            {
                // Billed like a write of the item (AWS bills failed conditions); neither engine reports it.
                add_write_units(1.0);
                count_claim(false);
                return match cf.item().map(|i| row_of(table, group, i)) {
                    None => ClaimResult::Answer(ClaimAnswer::Stale(None)),
                    Some(Ok(row)) => ClaimResult::Answer(ClaimAnswer::Stale(row)),
                    Some(Err(bad)) => ClaimResult::BadRow(bad),
                };
            }
            ClaimResult::Failed(Failure::of(&e, "UpdateItem"))
        }
    }
}

/// What became of one claim sent in a batch ([`claim_batch`]).
#[derive(Debug)]
pub(super) enum BatchClaim {
    /// Decided: applied, or refused with the row DynamoDB returned, whose `LastPosition` moved.
    Answer(ClaimAnswer),
    /// The row DynamoDB returned is not a row this protocol writes: named.
    BadRow(String),
    /// Refused without deciding anything: no row came back (an engine that returns none, or no row at all), or
    /// the row is at the claim's own base (a row from before the fence, which the batch's condition does not
    /// take), or DynamoDB refused the statement itself. Not applied: sent alone next ([`claim`]), whose refusal
    /// returns the row.
    Alone,
    /// No answer, or an error after which it may or may not have been applied.
    Failed(Failure),
}

/// The `BatchExecuteStatement` a batch of claims is sent as, named apart from the inserts: an account-wide
/// error of one is lifted only by an answer of the same (see `BlockedBy`).
pub(super) const CLAIM_BATCH: &str = "BatchExecuteStatement(claims)";

/// Claims of several groups in one `BatchExecuteStatement` (up to 25), each answering on its own, exactly as
/// the `UpdateItem` of [`claim`] would (one write unit each):
/// - a claim based on a row of this protocol (`expect` is set) is a PartiQL `UPDATE` conditional on its base as
///   this protocol writes it (`LastPosition` = the base as a string, `Protocol` = 2); a refused condition
///   returns the row (`ReturnValuesOnConditionCheckFailure: ALL_OLD`);
/// - a group's first claim (no row) is a PartiQL `INSERT` of the row, refused (`DuplicateItem`) when any item
///   has the key: stricter than the `UpdateItem`'s condition (no `LastPosition`, no `Protocol`), so a refusal
///   decides nothing and the claim goes alone. With many groups, most claims are first claims (a group per
///   customer, each ordering now and then): alone, they were a call per run.
///
/// One call per commit instead of one per run: with runs of one order, a call per order was most of the
/// worker's CPU (issue 23). Err: the call as a whole failed (nothing known of any claim).
pub(super) async fn claim_batch(
    client: &Client,
    table: &str,
    claims: &[(&str, &Claim, &str)],
    ctx: &CommitContext<'_>,
) -> Result<Vec<BatchClaim>, Failure> {
    let out = send_statements(client, claim_statements(table, claims), CLAIM_BATCH, ctx).await?;
    let mut billed = 0usize;
    let results: Vec<BatchClaim> = out
        .responses()
        .iter()
        .zip(claims)
        .map(|(r, (group, c, _))| {
            let (answer, bills) = batch_claim_answer(table, group, c, r);
            billed += usize::from(bills);
            answer
        })
        .collect();
    let reported = reported_units(&out);
    // DynamoDB Local reports no capacity for PartiQL, and a refused condition may not be in what an engine
    // reports (the UpdateItem path adds it itself): at least the billing rule's count, a claim applied or
    // refused by its condition being one unit (the row is under 1 KB).
    add_write_units(reported.unwrap_or(0.0).max(billed as f64));
    Ok(results)
}

/// The statements of [`claim_batch`]: an `UPDATE` of a claim based on a row, an `INSERT` of a first claim's
/// row (the same statement as a record's, [`insert_statement`]).
fn claim_statements(table: &str, claims: &[(&str, &Claim, &str)]) -> Vec<BatchStatementRequest> {
    let (key, last, claimed, at, proto) = (
        schema::GROUP_KEY,
        schema::LAST_POSITION,
        schema::CLAIMED,
        schema::UPDATED_AT,
        schema::PROTOCOL,
    );
    let update = format!(
        "UPDATE \"{table}\" SET {last} = ? SET {claimed} = ? SET {at} = ? WHERE {key} = ? AND {last} = ? AND {proto} = ?"
    );
    claims
        .iter()
        .map(|(group, c, when)| {
            let last_v = AttributeValue::S(c.row.last.to_string());
            let at_v = AttributeValue::S((*when).to_owned());
            let group_v = AttributeValue::S((*group).to_owned());
            let Some(base) = c.expect else {
                let row = Item::from([
                    (key.to_owned(), group_v),
                    (last.to_owned(), last_v),
                    (claimed.to_owned(), claimed_list(c)),
                    (at.to_owned(), at_v),
                    (proto.to_owned(), protocol_value()),
                ]);
                return insert_statement(table, &row);
            };
            BatchStatementRequest::builder()
                .statement(update.clone())
                .set_parameters(Some(vec![
                    last_v,
                    claimed_list(c),
                    at_v,
                    group_v,
                    AttributeValue::S(base.to_string()),
                    protocol_value(),
                ]))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .build()
                .expect("statement is set")
        })
        .collect()
}

/// What one statement's answer of [`claim_batch`] says of its claim, and whether it is billed (applied, or
/// refused by its condition or by a taken key: one write unit).
fn batch_claim_answer(
    table: &str,
    group: &str,
    c: &Claim,
    r: &BatchStatementResponse,
) -> (BatchClaim, bool) {
    let Some(err) = r.error() else {
        count_claim(true);
        return (BatchClaim::Answer(ClaimAnswer::Applied), true);
    };
    match err.code() {
        Some(BatchStatementErrorCodeEnum::ConditionalCheckFailed) => {
            count_claim(false);
            let answer = match err.item().map(|i| row_of(table, group, i)) {
                Some(Ok(Some(row))) if Some(row.last) != c.expect => {
                    BatchClaim::Answer(ClaimAnswer::Stale(Some(row)))
                }
                Some(Err(bad)) => BatchClaim::BadRow(bad),
                _ => BatchClaim::Alone,
            };
            (answer, true)
        }
        // A first claim found an item with its key: who wrote it and what it holds, the claim alone finds out
        // (its refusal returns the row).
        Some(BatchStatementErrorCodeEnum::DuplicateItem) => {
            count_claim(false);
            (BatchClaim::Alone, true)
        }
        Some(BatchStatementErrorCodeEnum::ValidationError) => (BatchClaim::Alone, false),
        code => {
            let failure = Failure {
                operation: CLAIM_BATCH,
                ..Failure::statement(
                    code.map_or("None", BatchStatementErrorCodeEnum::as_str),
                    err.message().unwrap_or_default(),
                )
            };
            (BatchClaim::Failed(failure), false)
        }
    }
}

/// The sequence numbers a claim writes into the row's `Claimed`.
fn claimed_list(c: &Claim) -> AttributeValue {
    AttributeValue::L(
        c.row
            .claimed
            .iter()
            .map(|s| AttributeValue::S(s.to_string()))
            .collect(),
    )
}

/// This build's protocol, as the row carries it.
fn protocol_value() -> AttributeValue {
    AttributeValue::N(schema::STORE_PROTOCOL.to_string())
}

/// The condition of a claim based on `expect` (None: no row), and its base as protocol 2 writes it (S) and as
/// a claim row from before the fence has it (N). The fence: a row of this protocol matches only with
/// `Protocol` = 2; a row from before the fence (no `Protocol`) only with a numeric `LastPosition`, so a
/// row of any later protocol (another `Protocol`) fails it, and every write of an earlier build (conditional
/// on a numeric `LastPosition`, or on its absence) fails on a row this build wrote. No row and a row at 0 are
/// different conditions: a row written with LastPosition 0 (by a tool, or a reset) never satisfies
/// attribute_not_exists.
fn claim_condition(
    expect: Option<u64>,
) -> (&'static str, Option<(AttributeValue, AttributeValue)>) {
    match expect {
        None => ("attribute_not_exists(#last) AND attribute_not_exists(#proto)", None),
        Some(base) => (
            "(#last = :base_s AND #proto = :proto) OR (#last = :base_n AND attribute_not_exists(#proto))",
            Some((
                AttributeValue::S(base.to_string()),
                AttributeValue::N(base.to_string()),
            )),
        ),
    }
}

/// A group row as read (None: the item has no LastPosition and no Protocol, so for the claim's condition there
/// is no row), or why this build does not write on it, naming the item and what to do. The fence:
/// - `Protocol` 2 (this build's): `LastPosition` a string of digits, `Claimed` a list;
/// - no `Protocol`, `LastPosition` a number, a non-empty `Claimed`: a claim row of a build from before the fence,
///   the same protocol; continued, and fenced (rewritten as protocol 2) by the next claim;
/// - no `Protocol`, `LastPosition` a number above 0, no `Claimed`: the transactional design's row (protocol 1).
///   Refused: a message it recorded but did not delete cannot be recognised without its SequenceNumber in
///   `Claimed` (it would be marked a duplicate of itself at a new position). The one-time upgrade step is
///   `order-worker repair`, which rebuilds the row from the group's records;
/// - any other `Protocol`: a protocol this build does not speak. Refused, its messages held.
pub(super) fn row_of(table: &str, group: &str, item: &Item) -> Result<Option<GroupRow>, String> {
    let name = format!("{table} item MessageGroupId={group:?}");
    let repair = format!("inspect it with `order-worker repair --group {group}` (a dry run; --apply rebuilds the row from the group's records)");
    let protocol = match item.get(schema::PROTOCOL) {
        None => None,
        Some(AttributeValue::N(n)) if n.parse::<u64>() == Ok(schema::STORE_PROTOCOL) => {
            Some(schema::STORE_PROTOCOL)
        }
        Some(other) => {
            return Err(format!(
                "{name}: written by store protocol {other:?}; this build speaks protocol {} only and does not write on it (its messages stay held, no receive count burnt): run a build that speaks it",
                schema::STORE_PROTOCOL
            ))
        }
    };
    let last = match (item.get(schema::LAST_POSITION), protocol) {
        (None, None) => return Ok(None),
        (None, Some(_)) => return Err(format!("{name}: Protocol without LastPosition; {repair}")),
        (Some(AttributeValue::S(s)), Some(_)) | (Some(AttributeValue::N(s)), None) => s
            .parse::<u64>()
            .ok()
            .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("{name}: LastPosition {s:?} is not a whole number; {repair}"))?,
        (Some(other), _) => {
            return Err(format!(
                "{name}: LastPosition is {other:?}, not what protocol {} writes; {repair}",
                protocol.map_or("1 (a number)".to_owned(), |_| format!(
                    "{} (a string of digits)",
                    schema::STORE_PROTOCOL
                ))
            ))
        }
    };
    let claimed = match item.get(schema::CLAIMED) {
        None => Vec::new(),
        Some(AttributeValue::L(l)) => l
            .iter()
            .map(|v| v.as_s().ok().and_then(|s| parse_seq(s)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                format!("{name}: Claimed holds something that is not a SequenceNumber; {repair}")
            })?,
        Some(other) => {
            return Err(format!(
                "{name}: Claimed is {other:?}, not a list; {repair}"
            ))
        }
    };
    if protocol.is_none() && claimed.is_empty() && last > 0 {
        return Err(format!(
            "{name}: a row of the transactional design (LastPosition {last}, no Claimed); this build does not continue it (a message recorded but not deleted would be recorded again as a duplicate of itself). One-time upgrade: `order-worker repair --group {group} --apply` (or `repair --all --apply`), safe while transactional workers still run"
        ));
    }
    GroupRow::new(last, claimed)
        .map(Some)
        .map_err(|e| format!("{name}: {e}; {repair}"))
}

/// What became of one insert.
#[derive(Debug)]
pub(super) enum InsertResult {
    Written,
    /// The key exists.
    Exists,
    /// Not written (throttled, failed, or no answer): send it again; with the failure to wait out, if any.
    Retry(Option<Failure>),
    /// DynamoDB refuses this item itself.
    Refused(String),
}

/// Insert up to 25 items, each only if its key does not exist, in one `BatchExecuteStatement`: each statement
/// answers on its own. Err: the call as a whole failed (nothing known of any statement).
pub(super) async fn insert(
    client: &Client,
    table: &str,
    items: &[(String, Item)],
    ctx: &CommitContext<'_>,
) -> Result<Vec<InsertResult>, Failure> {
    let statements: Vec<BatchStatementRequest> = items
        .iter()
        .map(|(_, item)| insert_statement(table, item))
        .collect();
    let out = send_statements(client, statements, "BatchExecuteStatement", ctx).await?;
    let responses = out.responses();
    let results: Vec<InsertResult> = responses
        .iter()
        .map(|r| {
            let Some(err) = r.error() else {
                return InsertResult::Written;
            };
            let message = err.message().unwrap_or_default();
            match err.code() {
                Some(BatchStatementErrorCodeEnum::DuplicateItem)
                | Some(BatchStatementErrorCodeEnum::ConditionalCheckFailed) => InsertResult::Exists,
                Some(BatchStatementErrorCodeEnum::ValidationError) => {
                    InsertResult::Refused(format!("ValidationError: {message}"))
                }
                Some(code) => InsertResult::Retry(Some(Failure::statement(code.as_str(), message))),
                None => InsertResult::Retry(Some(Failure::statement("None", message))),
            }
        })
        .collect();
    let reported = reported_units(&out);
    // DynamoDB Local reports no capacity for PartiQL: count by the billing rule (an item under 1 KB written or
    // refused by its condition is one unit).
    let counted = results
        .iter()
        .filter(|r| matches!(r, InsertResult::Written | InsertResult::Exists))
        .count() as f64;
    add_write_units(reported.unwrap_or(counted));
    Ok(results)
}

/// The write units a `BatchExecuteStatement` says it consumed, summed over its tables; None: it said nothing.
fn reported_units(out: &BatchExecuteStatementOutput) -> Option<f64> {
    out.consumed_capacity()
        .iter()
        .filter_map(|c| c.capacity_units())
        .reduce(|a, b| a + b)
}

/// `INSERT INTO "table" VALUE {'A': ?, ...}`: fails with `DuplicateItem` when the key exists.
fn insert_statement(table: &str, item: &Item) -> BatchStatementRequest {
    let mut names: Vec<&String> = item.keys().collect();
    names.sort();
    let fields: Vec<String> = names.iter().map(|n| format!("'{n}': ?")).collect();
    BatchStatementRequest::builder()
        .statement(format!(
            "INSERT INTO \"{table}\" VALUE {{{}}}",
            fields.join(", ")
        ))
        .set_parameters(Some(names.iter().map(|n| item[*n].clone()).collect()))
        .build()
        .expect("statement is set")
}

/// An existing item's attributes that decide what an insert that found it means.
#[derive(Debug, Clone)]
pub(super) struct Found {
    group: Option<String>,
    seq: Option<String>,
    position: Option<u64>,
    sha: Option<String>,
    processed_by: Option<String>,
    receive_count: Option<u32>,
}

impl Found {
    /// As the protocol sees it, for the record that wanted the key.
    pub fn existing(&self, mine: &Record) -> Existing {
        Existing {
            seq: self.seq.as_deref().and_then(parse_seq),
            position: self.position,
            sha: self.sha.clone(),
            ours: self.processed_by.as_deref() == Some(mine.processed_by.as_str())
                && self.receive_count == Some(mine.receive_count),
            same_group: self.group.as_deref() == Some(mine.group_id.as_str()),
        }
    }
}

/// The items under these keys of the orders table (consistent reads); absent keys are not in the answer.
pub(super) async fn read_existing(
    client: &Client,
    table: &str,
    keys: &[String],
    ctx: &CommitContext<'_>,
) -> Result<HashMap<String, Found>, Failure> {
    let attrs = [
        schema::ORDER_ID,
        schema::GROUP_ID,
        schema::SEQUENCE_NUMBER,
        schema::POSITION,
        schema::PAYLOAD_SHA256,
        schema::PROCESSED_BY,
        schema::RECEIVE_COUNT,
    ];
    let items = batch_get(client, table, schema::ORDER_ID, keys, &attrs, ctx).await?;
    let s = |i: &Item, k: &str| i.get(k).and_then(|v| v.as_s().ok()).cloned();
    let n = |i: &Item, k: &str| {
        i.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
    };
    Ok(items
        .into_iter()
        .map(|(k, i)| {
            (
                k,
                Found {
                    group: s(&i, schema::GROUP_ID),
                    seq: s(&i, schema::SEQUENCE_NUMBER),
                    position: n(&i, schema::POSITION),
                    sha: s(&i, schema::PAYLOAD_SHA256),
                    processed_by: s(&i, schema::PROCESSED_BY),
                    receive_count: n(&i, schema::RECEIVE_COUNT).map(|v: u64| v as u32),
                },
            )
        })
        .collect())
}

/// The rows of these groups (consistent reads): group -> its row (None: no row), or what is wrong with it.
pub(super) async fn read_rows(
    client: &Client,
    table: &str,
    groups: &[String],
    ctx: &CommitContext<'_>,
) -> Result<HashMap<String, Result<Option<GroupRow>, String>>, Failure> {
    let attrs = [
        schema::GROUP_KEY,
        schema::LAST_POSITION,
        schema::CLAIMED,
        schema::PROTOCOL,
    ];
    let items = batch_get(client, table, schema::GROUP_KEY, groups, &attrs, ctx).await?;
    Ok(groups
        .iter()
        .map(|g| {
            let row = match items.get(g) {
                None => Ok(None),
                Some(item) => row_of(table, g, item),
            };
            (g.clone(), row)
        })
        .collect())
}

/// Consistent BatchGetItem of some attributes by key: key -> item; keys whose item does not exist are absent.
async fn batch_get(
    client: &Client,
    table: &str,
    key: &str,
    ids: &[String],
    attrs: &[&str],
    ctx: &CommitContext<'_>,
) -> Result<HashMap<String, Item>, Failure> {
    let mut found = HashMap::new();
    let projection: Vec<String> = (0..attrs.len()).map(|i| format!("#a{i}")).collect();
    for chunk in ids.chunks(100) {
        let keys = chunk
            .iter()
            .map(|id| HashMap::from([(key.to_owned(), AttributeValue::S(id.clone()))]))
            .collect();
        let mut wanted = KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .consistent_read(true)
            .projection_expression(projection.join(", "));
        for (i, a) in attrs.iter().enumerate() {
            wanted = wanted.expression_attribute_names(format!("#a{i}"), *a);
        }
        let mut request_items =
            HashMap::from([(table.to_owned(), wanted.build().expect("keys are set"))]);
        // Unprocessed keys are asked for again, at most 9 calls in all.
        let mut unprocessed = Retry::new("BatchGetItem")
            .pace(Pace::UNPROCESSED)
            .budget(ctx.budget)
            .cancel(ctx.abort)
            .attempts(9)
            .says("returned unprocessed keys; asking again for them");
        while !request_items.is_empty() {
            let call = client
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
            let items = out
                .responses()
                .and_then(|r| r.get(table))
                .map(Vec::as_slice)
                .unwrap_or_default();
            // A consistent read of an item under 4 KB is one unit, found or not (ministack reports none).
            let asked = request_items.get(table).map_or(0, |k| k.keys().len());
            metrics::counter!(READ_UNITS).increment(asked as u64);
            for item in items {
                if let Some(id) = item.get(key).and_then(|v| v.as_s().ok()) {
                    found.insert(id.clone(), item.clone());
                }
            }
            request_items = out.unprocessed_keys().cloned().unwrap_or_default();
            if request_items.is_empty() {
                break;
            }
            let left = request_items.get(table).map_or(0, |k| k.keys().len());
            match unprocessed.failed(Class::Transient, &left).await {
                Ok(()) => {}
                Err(Stop::Attempts) => {
                    return Err(Failure {
                        operation: "BatchGetItem",
                        class: Class::Throttled,
                        code: None,
                        detail: "BatchGetItem kept returning unprocessed keys".into(),
                    })
                }
                Err(_) => return Err(Failure::timeout("BatchGetItem")),
            }
        }
    }
    Ok(found)
}

/// Fail unless both tables exist with the key schema we write.
pub(super) async fn check_tables(
    client: &Client,
    orders_table: &str,
    groups_table: &str,
) -> Result<(), TableError> {
    for (table, key) in [
        (orders_table, schema::ORDER_ID),
        (groups_table, schema::GROUP_KEY),
    ] {
        let out = match client.describe_table().table_name(table).send().await {
            Ok(out) => out,
            Err(e) => {
                request("dynamodb", "DescribeTable", false);
                if error_code(&e).as_deref() == Some("ResourceNotFoundException") {
                    return Err(TableError::Wrong(format!(
                        "DynamoDB table {table:?} does not exist"
                    )));
                }
                let detail = format!("DescribeTable {table:?}: {}", describe(&e));
                return Err(if crate::retry::classify(&e).retryable() {
                    TableError::Unavailable(detail)
                } else {
                    TableError::Wrong(detail)
                });
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
            return Err(TableError::Wrong(format!(
                "table {table:?} must have partition key {key:?}, has {hash:?}"
            )));
        }
    }
    Ok(())
}

/// One `BatchExecuteStatement` (claims or inserts, `operation` names which in failures), bounded by the
/// attempt limit and the budget, counted; its answer has one response per statement, or it is a failure.
async fn send_statements(
    client: &Client,
    statements: Vec<BatchStatementRequest>,
    operation: &'static str,
    ctx: &CommitContext<'_>,
) -> Result<BatchExecuteStatementOutput, Failure> {
    let sent = statements.len();
    let call = client
        .batch_execute_statement()
        .set_statements(Some(statements))
        .return_consumed_capacity(ReturnConsumedCapacity::Total)
        .send();
    let out = match bounded(call, ctx).await {
        None => {
            request("dynamodb", "BatchExecuteStatement", false);
            return Err(Failure::timeout(operation));
        }
        Some(Err(e)) => {
            request("dynamodb", "BatchExecuteStatement", false);
            return Err(Failure::of(&e, operation));
        }
        Some(Ok(out)) => out,
    };
    request("dynamodb", "BatchExecuteStatement", true);
    let answered = out.responses().len();
    if answered != sent {
        return Err(Failure {
            operation,
            class: Class::Transient,
            code: None,
            detail: format!("{operation}: {answered} answers to {sent} statements"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pairs: &[(&str, AttributeValue)]) -> Item {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn a_row_is_read_or_named_as_bad() {
        let n = |v: &str| AttributeValue::N(v.into());
        let s = |v: &str| AttributeValue::S(v.into());
        let claimed = || AttributeValue::L(vec![s("7"), s("9")]);
        // This protocol's row: LastPosition a string of digits, Protocol 2.
        let ok = item(&[
            ("LastPosition", s("3")),
            ("Claimed", claimed()),
            ("Protocol", n("2")),
        ]);
        assert_eq!(
            row_of("t", "g", &ok).unwrap(),
            Some(GroupRow::new(3, vec![7, 9]).unwrap())
        );
        // A claim row from before the fence: LastPosition a number, no Protocol.
        let before = item(&[("LastPosition", n("3")), ("Claimed", claimed())]);
        assert_eq!(
            row_of("t", "g", &before).unwrap(),
            Some(GroupRow::new(3, vec![7, 9]).unwrap())
        );
        // A row at 0 with nothing recorded (a tool, a reset): nothing to recognise, continued.
        assert_eq!(
            row_of("t", "g", &item(&[("LastPosition", n("0"))])).unwrap(),
            Some(GroupRow::new(0, vec![]).unwrap())
        );
        assert_eq!(row_of("t", "g", &item(&[])).unwrap(), None);
        // The transactional design's row: refused, pointing at the upgrade step.
        let e = row_of("t", "g", &item(&[("LastPosition", n("2"))])).unwrap_err();
        assert!(
            e.contains("transactional") && e.contains("order-worker repair --group g --apply"),
            "{e}"
        );
        // A protocol this build does not speak.
        let e = row_of(
            "t",
            "g",
            &item(&[("LastPosition", s("3")), ("Protocol", n("3"))]),
        )
        .unwrap_err();
        assert!(e.contains("does not write on it"), "{e}");
        for bad in [
            item(&[("LastPosition", s("abc"))]),
            item(&[("LastPosition", s("3"))]),
            item(&[("LastPosition", n("3")), ("Protocol", n("2"))]),
            item(&[("LastPosition", s("-1")), ("Protocol", n("2"))]),
            item(&[("LastPosition", n("1.5"))]),
            item(&[("Protocol", n("2"))]),
            item(&[
                ("LastPosition", n("1")),
                ("Claimed", AttributeValue::L(vec![s("x")])),
            ]),
            item(&[
                ("LastPosition", n("1")),
                ("Claimed", AttributeValue::L(vec![s("1"), s("2")])),
            ]),
        ] {
            let e = row_of("groups", "g", &bad).unwrap_err();
            assert!(e.contains("groups item MessageGroupId=\"g\""), "{e}");
            assert!(e.contains("order-worker repair --group g"), "{e}");
            assert!(!e.contains("delete the item"), "{e}");
        }
    }

    #[test]
    fn a_claim_is_conditional_on_the_protocol_and_a_fenced_base() {
        let (c, base) = claim_condition(None);
        assert!(c.contains("attribute_not_exists(#proto)"), "{c}");
        assert!(base.is_none());
        let (c, base) = claim_condition(Some(4));
        assert!(
            c.contains("#proto = :proto") && c.contains("attribute_not_exists(#proto)"),
            "{c}"
        );
        let (s, n) = base.unwrap();
        assert_eq!(
            (s, n),
            (AttributeValue::S("4".into()), AttributeValue::N("4".into()))
        );
        assert_eq!(protocol_value(), AttributeValue::N("2".into()));
    }

    #[test]
    fn an_insert_names_every_attribute_once_with_its_parameter() {
        let it = item(&[
            ("OrderID", AttributeValue::S("a".into())),
            ("GroupPosition", AttributeValue::N("2".into())),
        ]);
        let st = insert_statement("orders", &it);
        assert_eq!(
            st.statement(),
            "INSERT INTO \"orders\" VALUE {'GroupPosition': ?, 'OrderID': ?}"
        );
        assert_eq!(
            st.parameters(),
            &[AttributeValue::N("2".into()), AttributeValue::S("a".into())]
        );
    }
}
