//! The record: apply orders to DynamoDB exactly once and in group order. Knows DynamoDB, nothing about SQS
//! beyond a message's SequenceNumber.
//!
//! A run of a group's messages is committed by a **claim** on the group's row, then plain inserts of the
//! records: the protocol and the argument that it keeps every guarantee are in [`protocol`] (pure, with unit
//! tests and a randomized model in `model.rs`); this module carries its steps out on DynamoDB:
//! - claims are conditional writes of the group's row, one per run, those of one commit together in
//!   `BatchExecuteStatement`s of up to 25 (one call per commit, not per run: issue 23): a PartiQL `UPDATE` with
//!   `ReturnValuesOnConditionCheckFailure: ALL_OLD` on a row, a PartiQL `INSERT` for a group's first claim (no
//!   row yet); a failed condition brings the row back, so a stale cache costs one failed write and no read (a
//!   batched claim refused without a row it can use is sent again alone, as an `UpdateItem`, see
//!   [`dynamo::claim_batch`]);
//! - records go out as PartiQL `INSERT`s in `BatchExecuteStatement`s of up to 25, the runs of several groups
//!   together, each statement with its own answer; an insert that finds its key taken reads the item
//!   (neither engine returns it with the error) and the protocol decides: done, or a marker;
//! - each group's row is cached across holds (positions read from an old row stay right; see [`protocol`]).
//!
//! A commit goes in rounds (`Store::rounds`): `plan` takes each run's next step, `send` sends the round's
//! claims and inserts together, `settle_claims` / `per_statement` / `settle_writes` give each run its answers,
//! and what finished is answered before any wait. Every wait (a failure, contention on a group row) goes
//! through the [`crate::retry::Retry`] driver, within the commit's budget and the drain's abort.
//!
//! Costs (on-demand): one write unit per record, one per run's claim (a row under 1 KB), one per failed claim
//! (AWS bills a failed condition), one read unit per existing item read back.

mod dynamo;
#[cfg(test)]
mod model;
pub mod protocol;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use aws_sdk_dynamodb::Client;
use futures_util::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::retry::{Budget, Class, Pace, Retry};
pub use crate::schema::Record;
use crate::schema::{Item, Status};
use dynamo::{BatchClaim, ClaimResult, Failure, InsertResult, CLAIM_BATCH};
pub use dynamo::{TableError, ATTEMPT_TIMEOUT};
use protocol::{
    parse_seq, Claim, ClaimAnswer, GroupRow, MarkerKind, Msg, RunProtocol, Settled, Step, Write,
    WriteAnswer,
};

/// Most records (plus one per run) one commit takes: four `BatchExecuteStatement`s.
pub const MAX_ACTIONS: usize = 100;
/// Most statements DynamoDB takes in one `BatchExecuteStatement`.
pub const MAX_STATEMENTS: usize = 25;
/// Cached group rows kept before the cache starts over (a row is ~200 bytes: a few MiB at most).
const MAX_CACHED_ROWS: usize = 50_000;

/// Whether this build writes on a group row as stored (its LastPosition and Claimed), or why not: what
/// `order-worker repair --all` looks for.
pub fn check_row(table: &str, group: &str, item: &Item) -> Result<(), String> {
    dynamo::row_of(table, group, item).map(|_| ())
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
    /// Already recorded: a redelivery of the same message, or the same order sent again as another message
    /// (a `duplicate:` marker holds its position).
    Duplicate,
    /// Another payload under an OrderID already recorded: not applied, a `conflict:` marker holds its position.
    Conflict,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// DynamoDB refused for a reason retrying will not fix (validation, a refused stand-in).
    #[error("DynamoDB refused the write: {0}")]
    Permanent(String),
    /// The group's row in the groups table is not usable (written by something else), or the messages are not
    /// what SQS FIFO delivers: retry later; the messages stay held. Names the item.
    #[error("waiting for bad data to be fixed: {0}")]
    Deferred(String),
    /// The caller's deadline fired while we were waiting for DynamoDB.
    #[error("abandoned: the drain deadline passed while waiting for DynamoDB")]
    Aborted,
}

/// What a commit call runs under: its budget, the drain's abort, and where account-wide errors are reported.
pub struct CommitContext<'a> {
    pub budget: Budget,
    pub abort: &'a CancellationToken,
    pub admission: &'a Admission,
}

/// What became of one run: its settled prefix, and why the rest is not settled (if it is not).
#[derive(Debug)]
pub struct RunOutcome {
    pub applied: Vec<Applied>,
    pub error: Option<StoreError>,
}

/// The two tables and each group's row as last seen applied (a hint: the claim's condition is the truth).
pub struct Store {
    client: Client,
    orders_table: String,
    groups_table: String,
    /// None: the group has no row (as last seen).
    rows: Mutex<HashMap<String, Option<GroupRow>>>,
    /// The operation whose account-wide error blocks DynamoDB work (see [`BlockedBy`]).
    blocked_by: Mutex<BlockedBy>,
    /// The batched claims met an account-wide refusal once (said once in the log).
    batch_denied: AtomicBool,
}

/// One run being committed: where it stands in the protocol, and why it stopped short (if it did).
struct Committing {
    protocol: RunProtocol,
    /// Why it stopped short, if it did.
    error: Option<StoreError>,
    /// Claims in a row that found the row moved: another worker on the same group.
    stale_claims: u32,
    /// Its claims go alone (`UpdateItem`), not in a batch: a batched one was refused without deciding
    /// anything (see [`BatchClaim::Alone`]).
    alone: bool,
    /// Its outcome went to the caller.
    reported: bool,
}

impl Store {
    pub fn new(client: Client, orders_table: String, groups_table: String) -> Self {
        Store {
            client,
            orders_table,
            groups_table,
            rows: Mutex::new(HashMap::new()),
            blocked_by: Mutex::new(BlockedBy::default()),
            batch_denied: AtomicBool::new(false),
        }
    }

    /// Fail unless both tables exist with the key schema we write.
    pub async fn check_tables(&self) -> Result<(), TableError> {
        dynamo::check_tables(&self.client, &self.orders_table, &self.groups_table).await
    }

    /// Apply the runs. Each run's outcome says how many of its records are settled (a prefix, each New,
    /// Duplicate or Conflict) and, if not all, why the rest is not. A record DynamoDB refuses on its own (an
    /// item too large) is recorded as REJECTED with DynamoDB's reason at its position, so its group goes on.
    pub async fn commit(&self, runs: &[Run], ctx: &CommitContext<'_>) -> Vec<RunOutcome> {
        let mut out: Vec<Option<RunOutcome>> = runs.iter().map(|_| None).collect();
        self.commit_each(runs, ctx, &mut |done| {
            for (i, o) in done {
                out[i] = Some(o);
            }
        })
        .await;
        out.into_iter()
            .map(|o| o.expect("every run is answered"))
            .collect()
    }

    /// [`Store::commit`], answering each run as soon as it is finished: `on_done` gets the runs (by index) that
    /// finished together, once each. A run that keeps retrying (contention, throttling, a refused item) does
    /// not hold up the answers of the others in the same commit.
    pub async fn commit_each(
        &self,
        runs: &[Run],
        ctx: &CommitContext<'_>,
        on_done: &mut (dyn FnMut(Vec<(usize, RunOutcome)>) + Send),
    ) {
        let mut active = match self.start(runs, ctx).await {
            Ok(a) => a,
            Err(e) => {
                on_done(
                    (0..runs.len())
                        .map(|i| {
                            (
                                i,
                                RunOutcome {
                                    applied: Vec::new(),
                                    error: Some(e.clone()),
                                },
                            )
                        })
                        .collect(),
                );
                return;
            }
        };
        if let Err(e) = self.rounds(runs, &mut active, ctx, on_done).await {
            for a in active.iter_mut() {
                if !a.protocol.is_done() && a.error.is_none() {
                    a.error = Some(e.clone());
                }
            }
        }
        self.report(runs, &mut active, on_done, true);
    }

    /// Answer the runs that are finished (all, when `all`) and not answered yet; cache their rows.
    fn report(
        &self,
        runs: &[Run],
        active: &mut [Committing],
        on_done: &mut (dyn FnMut(Vec<(usize, RunOutcome)>) + Send),
        all: bool,
    ) {
        let mut done = Vec::new();
        {
            let mut cache = self.rows.lock().expect("cache lock");
            if cache.len() > MAX_CACHED_ROWS {
                cache.clear();
            }
            for (i, (run, a)) in runs.iter().zip(active.iter_mut()).enumerate() {
                if a.reported || !(all || a.protocol.is_done() || a.error.is_some()) {
                    continue;
                }
                a.reported = true;
                if let (Some(row), None) = (a.protocol.row(), &a.error) {
                    cache.insert(run.group_id.clone(), Some(row.clone()));
                }
                let applied: Vec<Applied> = a.protocol.settled().into_iter().map(applied).collect();
                // A run is complete only when every one of its records is settled (a run refused before it
                // started has no messages in its commit, and its error stands).
                let error = if applied.len() == run.records.len() {
                    None
                } else {
                    a.error.clone().or(Some(StoreError::Aborted))
                };
                done.push((i, RunOutcome { applied, error }));
            }
        }
        if !done.is_empty() {
            on_done(done);
        }
    }

    /// Each run's commit, from its group's cached row or (on a miss) one consistent read of all missing rows.
    async fn start(
        &self,
        runs: &[Run],
        ctx: &CommitContext<'_>,
    ) -> Result<Vec<Committing>, StoreError> {
        let mut missing: Vec<String> = {
            let cache = self.rows.lock().expect("cache lock");
            runs.iter()
                .map(|r| r.group_id.clone())
                .filter(|g| !cache.contains_key(g))
                .collect()
        };
        missing.sort();
        missing.dedup();
        let mut read: HashMap<String, Result<Option<GroupRow>, String>> = HashMap::new();
        let mut waits = waits(ctx);
        while !missing.is_empty() {
            match dynamo::read_rows(&self.client, &self.groups_table, &missing, ctx).await {
                Ok(found) => {
                    self.answered(ctx, "BatchGetItem");
                    read = found;
                    break;
                }
                Err(f) => self.wait(&mut waits, f, ctx).await?,
            }
        }
        let cache = self.rows.lock().expect("cache lock");
        Ok(runs
            .iter()
            .map(|run| {
                let row = match cache.get(&run.group_id) {
                    Some(r) => Ok(r.clone()),
                    None => read.get(&run.group_id).cloned().unwrap_or(Ok(None)),
                };
                let (row, mut error) = match row {
                    Ok(r) => (r, None),
                    Err(detail) => {
                        tracing::error!(group = %run.group_id, cause = %detail, "group row is not one this build writes on; its orders stay held until it is (see `order-worker repair`)");
                        (None, Some(StoreError::Deferred(detail)))
                    }
                };
                let msgs: Option<Vec<Msg>> = run
                    .records
                    .iter()
                    .map(|r| {
                        Some(Msg {
                            seq: parse_seq(r.sqs_sequence_number.as_deref()?)?,
                            key: r.order_key.clone(),
                            sha: r.payload_sha256.clone(),
                            message_id: r.sqs_message_id.clone(),
                        })
                    })
                    .collect();
                let msgs = msgs.unwrap_or_else(|| {
                    error = Some(StoreError::Permanent(format!(
                        "a message of group {} has no SequenceNumber (is the queue FIFO?)",
                        run.group_id
                    )));
                    Vec::new()
                });
                let active = msgs.len() == run.records.len();
                Committing {
                    protocol: RunProtocol::new(if active { msgs } else { Vec::new() }, row),
                    error,
                    stale_claims: 0,
                    alone: false,
                    reported: false,
                }
            })
            .collect())
    }

    /// Carry the runs' steps out until each is done or stopped. Failures are waited out (with backoff, within
    /// the budget); a stopped run keeps its settled prefix.
    async fn rounds(
        &self,
        runs: &[Run],
        active: &mut [Committing],
        ctx: &CommitContext<'_>,
        on_done: &mut (dyn FnMut(Vec<(usize, RunOutcome)>) + Send),
    ) -> Result<(), StoreError> {
        let mut waits = waits(ctx);
        // The row moved again right after we read it: another worker is claiming the same group. Back off a
        // little, growing, instead of spinning.
        let mut contention = Retry::new("UpdateItem")
            .pace(Pace::CONTENTION)
            .budget(ctx.budget)
            .cancel(ctx.abort)
            .says("claims keep finding the group row moved (another worker on the same groups?)");
        let mut carry = Carry::default();
        loop {
            if ctx.abort.is_cancelled() || ctx.budget.expired(Instant::now()) {
                return Err(StoreError::Aborted);
            }
            if let Err(f) = self.read_unread(runs, active, &mut carry.unread, ctx).await {
                self.wait(&mut waits, f, ctx).await?;
                continue;
            }
            let round = self.plan(runs, active, carry.one_by_one);
            self.report(runs, active, on_done, false);
            if round.claims.is_empty() && round.writes.is_empty() {
                return Ok(());
            }
            let sent = self.send(runs, active, &round, &mut carry, ctx).await;
            // What finished in this round is answered before any wait for what did not.
            self.report(runs, active, on_done, false);
            if let Some(f) = sent.failure {
                self.wait(&mut waits, f, ctx).await?;
                continue;
            }
            waits.succeeded();
            if sent.contention > 1 {
                let cause = format!("{} claims in a row found the row moved", sent.contention);
                contention
                    .failed(Class::Transient, &cause)
                    .await
                    .map_err(|_| StoreError::Aborted)?;
            } else {
                contention.succeeded();
            }
        }
    }

    /// Read the items of inserts that found their key taken and whose read failed: each run then decides.
    async fn read_unread(
        &self,
        runs: &[Run],
        active: &mut [Committing],
        unread: &mut Vec<(usize, Write, String)>,
        ctx: &CommitContext<'_>,
    ) -> Result<(), Failure> {
        if unread.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = unread.iter().map(|(_, _, k)| k.clone()).collect();
        let found = dynamo::read_existing(&self.client, &self.orders_table, &keys, ctx).await?;
        self.answered(ctx, "BatchGetItem");
        for (i, w, key) in unread.drain(..) {
            let record = &runs[i].records[w.idx()];
            let e = found.get(&key).map(|e| e.existing(record));
            active[i].protocol.answered(&w, WriteAnswer::Exists(e));
        }
        Ok(())
    }

    /// This round's calls: each run's next step. A run that cannot go on is stopped here.
    fn plan(&self, runs: &[Run], active: &mut [Committing], one_by_one: bool) -> Round {
        let mut round = Round::default();
        let mut keys: HashSet<String> = HashSet::new();
        for (i, a) in active.iter_mut().enumerate() {
            if a.error.is_some() {
                continue;
            }
            match a.protocol.step() {
                Step::Claim(c) => round.claims.push((i, c)),
                Step::Write(ws) => {
                    for w in ws {
                        // One by one means one statement in flight at a time: the refused one is then the
                        // one that was sent.
                        if one_by_one && !round.writes.is_empty() {
                            break;
                        }
                        // DynamoDB refuses a batch that names one key twice (DynamoDB Local refuses the
                        // whole call): a second group's write of the same OrderID waits a round.
                        let key = w.key(a.protocol.msgs());
                        if keys.insert(key.clone()) {
                            round.items.push((key, self.item(&runs[i], &w)));
                            round.writes.push((i, w));
                        }
                    }
                }
                Step::Done => {}
                Step::Stuck(why) => {
                    tracing::error!(group = %runs[i].group_id, cause = %why, "run cannot be committed; its orders wait");
                    a.error = Some(StoreError::Deferred(why));
                }
            }
        }
        round
    }

    /// Send a round's claims and inserts together and give each run its answers.
    async fn send(
        &self,
        runs: &[Run],
        active: &mut [Committing],
        round: &Round,
        carry: &mut Carry,
        ctx: &CommitContext<'_>,
    ) -> Sent {
        // Claims go out together, one BatchExecuteStatement per 25 (issue 23: with runs of one order, an
        // UpdateItem per run was a call per order and most of the worker's CPU); a claim the batch could not
        // decide goes alone, as an UpdateItem.
        let (batched, alone): (Vec<_>, Vec<_>) =
            round.claims.iter().partition(|(i, _)| !active[*i].alone);
        let batch_args: Vec<(&str, &Claim, &str)> = batched
            .iter()
            .map(|(i, c)| {
                let run = &runs[*i];
                (
                    run.group_id.as_str(),
                    c,
                    run.records[0].processed_at.as_str(),
                )
            })
            .collect();
        let batch_calls = batch_args
            .chunks(MAX_STATEMENTS)
            .map(|b| dynamo::claim_batch(&self.client, &self.groups_table, b, ctx));
        let claim_calls = alone.iter().map(|(i, c)| {
            dynamo::claim(
                &self.client,
                &self.groups_table,
                &runs[*i].group_id,
                c,
                &runs[*i].records[0].processed_at,
                ctx,
            )
        });
        let insert_calls = round
            .items
            .chunks(MAX_STATEMENTS)
            .map(|c| dynamo::insert(&self.client, &self.orders_table, c, ctx));
        let (claim_results, batch_results, insert_results) = tokio::join!(
            join_all(claim_calls),
            join_all(batch_calls),
            join_all(insert_calls)
        );
        let mut results: Vec<(usize, &Claim, ClaimResult)> = Vec::new();
        for ((i, c), r) in alone.into_iter().zip(claim_results) {
            if matches!(r, ClaimResult::Answer(_)) {
                self.answered(ctx, "UpdateItem");
            }
            results.push((*i, c, r));
        }
        for (chunk, r) in batched.chunks(MAX_STATEMENTS).zip(batch_results) {
            results.extend(self.per_claim(active, chunk, r, ctx));
        }
        let mut sent = self.settle_claims(runs, active, results);
        let answers = self.per_statement(&round.items, insert_results, carry, &mut sent, ctx);
        if let Some(f) = self
            .settle_writes(runs, active, round, answers, carry, ctx)
            .await
        {
            sent.failure.get_or_insert(f);
        }
        sent
    }

    /// One answer per claim of a batch of claims. DynamoDB refusing the call itself (or a statement) for the
    /// request or the caller decides nothing: not applied, and each claim goes alone next round, whose own
    /// answer says what is wrong (an `UpdateItem` refused too blocks new work, as before batching; one that
    /// works carries on: a role without PartiQLUpdate or PartiQLInsert on the groups table).
    fn per_claim<'c>(
        &self,
        active: &mut [Committing],
        chunk: &[&'c (usize, Claim)],
        result: Result<Vec<BatchClaim>, Failure>,
        ctx: &CommitContext<'_>,
    ) -> Vec<(usize, &'c Claim, ClaimResult)> {
        let per: Vec<BatchClaim> = match result {
            Ok(per) => {
                self.answered(ctx, CLAIM_BATCH);
                per
            }
            Err(f) if refused_alone(&f) => {
                self.batch_refused(&f);
                chunk.iter().map(|_| BatchClaim::Alone).collect()
            }
            Err(f) => chunk
                .iter()
                .map(|_| BatchClaim::Failed(f.clone()))
                .collect(),
        };
        let mut out = Vec::new();
        for ((i, c), b) in chunk.iter().map(|x| (x.0, &x.1)).zip(per) {
            let r = match b {
                BatchClaim::Answer(answer) => ClaimResult::Answer(answer),
                BatchClaim::BadRow(detail) => ClaimResult::BadRow(detail),
                BatchClaim::Failed(f) if !refused_alone(&f) => ClaimResult::Failed(f),
                BatchClaim::Failed(f) => {
                    self.batch_refused(&f);
                    active[i].alone = true;
                    ClaimResult::Answer(ClaimAnswer::NotApplied)
                }
                BatchClaim::Alone => {
                    active[i].alone = true;
                    ClaimResult::Answer(ClaimAnswer::NotApplied)
                }
            };
            out.push((i, c, r));
        }
        out
    }

    /// A batch of claims refused account-wide: say so once (the claims go alone, as UpdateItem).
    fn batch_refused(&self, f: &Failure) {
        if f.class == Class::AccountWide && !self.batch_denied.swap(true, Ordering::Relaxed) {
            tracing::warn!(code = f.code.as_deref().unwrap_or("-"), cause = %f.detail, "DynamoDB refused the batched claims (PartiQL UPDATE and INSERT on the groups table: are dynamodb:PartiQLUpdate and dynamodb:PartiQLInsert granted on it?); the refused claims go one by one as UpdateItem, a call per run");
        }
    }

    /// Give each run its claim's answer; how many claims in a row the most contended run found the row moved.
    fn settle_claims(
        &self,
        runs: &[Run],
        active: &mut [Committing],
        results: Vec<(usize, &Claim, ClaimResult)>,
    ) -> Sent {
        let mut sent = Sent::default();
        for (i, c, r) in results {
            let a = &mut active[i];
            match r {
                ClaimResult::Answer(answer) => {
                    if matches!(answer, ClaimAnswer::Stale(_)) {
                        a.stale_claims += 1;
                        sent.contention = sent.contention.max(a.stale_claims);
                    } else {
                        a.stale_claims = 0;
                    }
                    a.protocol.claimed(c, answer);
                }
                ClaimResult::BadRow(detail) => {
                    tracing::error!(group = %runs[i].group_id, cause = %detail, "group row is not one this build writes on; its orders stay held until it is (see `order-worker repair`)");
                    self.rows
                        .lock()
                        .expect("cache lock")
                        .remove(&runs[i].group_id);
                    a.error = Some(StoreError::Deferred(detail));
                }
                ClaimResult::Failed(f) => {
                    if f.class == Class::Request {
                        a.error = Some(StoreError::Permanent(f.detail.clone()));
                    } else {
                        a.protocol.claimed(c, ClaimAnswer::Unknown);
                        sent.failure.get_or_insert(f);
                    }
                }
            }
        }
        sent
    }

    /// One answer per statement from the answers of the `BatchExecuteStatement` calls; a whole batch refused
    /// for one statement in it turns on sending one statement a call.
    fn per_statement(
        &self,
        items: &[(String, Item)],
        results: Vec<Result<Vec<InsertResult>, Failure>>,
        carry: &mut Carry,
        sent: &mut Sent,
        ctx: &CommitContext<'_>,
    ) -> Vec<InsertResult> {
        let mut answers: Vec<InsertResult> = Vec::new();
        let mut whole_refused = false;
        for (r, n) in results
            .into_iter()
            .zip(items.chunks(MAX_STATEMENTS).map(<[_]>::len))
        {
            match r {
                Ok(per) => {
                    self.answered(ctx, "BatchExecuteStatement");
                    answers.extend(per);
                }
                Err(f) => match whole_call(&f, n) {
                    WholeCall::Isolate => {
                        whole_refused = true;
                        answers.extend((0..n).map(|_| InsertResult::Retry(None)));
                    }
                    WholeCall::Refused => answers.push(InsertResult::Refused(f.detail)),
                    WholeCall::Wait => {
                        answers.extend((0..n).map(|_| InsertResult::Retry(None)));
                        sent.failure.get_or_insert(f);
                    }
                },
            }
        }
        if whole_refused && !carry.one_by_one {
            tracing::warn!(
                statements = items.len(),
                "DynamoDB refused a whole batch of inserts; sending them one by one to find the refused one"
            );
            carry.one_by_one = true;
        }
        answers
    }

    /// Give each run its writes' answers. Keys that exist are read in one consistent BatchGetItem first, so
    /// each run can decide (a marker's key names its own message: taken means written, nothing to read). A
    /// failure to wait out is returned.
    async fn settle_writes(
        &self,
        runs: &[Run],
        active: &mut [Committing],
        round: &Round,
        answers: Vec<InsertResult>,
        carry: &mut Carry,
        ctx: &CommitContext<'_>,
    ) -> Option<Failure> {
        let mut failure = None;
        let taken: Vec<String> = answers
            .iter()
            .zip(&round.items)
            .zip(&round.writes)
            .filter(|((r, _), (_, w))| {
                matches!(r, InsertResult::Exists) && !matches!(w, Write::Marker { .. })
            })
            .map(|((_, (k, _)), _)| k.clone())
            .collect();
        let existing = if taken.is_empty() {
            Some(HashMap::new())
        } else {
            match dynamo::read_existing(&self.client, &self.orders_table, &taken, ctx).await {
                Ok(e) => {
                    self.answered(ctx, "BatchGetItem");
                    Some(e)
                }
                Err(f) => {
                    failure = Some(f);
                    None
                }
            }
        };
        for (((i, w), r), (key, _)) in round.writes.iter().zip(answers).zip(&round.items) {
            let a = &mut active[*i];
            let record = &runs[*i].records[w.idx()];
            let answer = match r {
                InsertResult::Written => WriteAnswer::Written,
                InsertResult::Exists if matches!(w, Write::Marker { .. }) => {
                    WriteAnswer::Exists(None)
                }
                InsertResult::Exists => match &existing {
                    Some(found) => {
                        let e = found.get(key).map(|e| e.existing(record));
                        if e.as_ref().is_some_and(|e| e.sha.is_none()) {
                            tracing::warn!(order = %record.order_key, group = %record.group_id, "an existing record with this OrderID has no PayloadSha256 (written by something else); counted as a conflict");
                        }
                        WriteAnswer::Exists(e)
                    }
                    None => {
                        // The key is taken and the read failed: read it again next round, never insert it
                        // again (a write unit each, to learn what we know).
                        carry.unread.push((*i, w.clone(), key.clone()));
                        continue;
                    }
                },
                InsertResult::Retry(f) => {
                    if let Some(f) = f {
                        failure.get_or_insert(f);
                    }
                    WriteAnswer::Retry
                }
                InsertResult::Refused(why) => {
                    if matches!(w, Write::Record { .. }) {
                        tracing::error!(order = %record.order_key, group = %record.group_id, message_id = %record.sqs_message_id, cause = %why, "DynamoDB refused this record; recording it as REJECTED instead");
                    } else {
                        a.error = Some(StoreError::Permanent(why.clone()));
                    }
                    WriteAnswer::Refused(why)
                }
            };
            a.protocol.answered(w, answer);
        }
        failure
    }

    /// The item one write inserts.
    fn item(&self, run: &Run, w: &Write) -> Item {
        let r = &run.records[w.idx()];
        match w {
            Write::Record { position, .. } => crate::schema::record_item(r, *position),
            Write::StandIn {
                position, reason, ..
            } => crate::schema::record_item(&refused_record(r, reason), *position),
            Write::Marker { position, kind, .. } => {
                let status = match kind {
                    MarkerKind::Duplicate => Status::Duplicate,
                    MarkerKind::Conflict => Status::Conflict,
                };
                crate::schema::marker_item(
                    r,
                    &protocol::marker_key(*kind, &r.sqs_message_id),
                    status,
                    *position,
                )
            }
        }
    }

    /// A DynamoDB call of `operation` answered: lift an account-wide block that operation caused (a claim
    /// that works says nothing of inserts that are denied).
    fn answered(&self, ctx: &CommitContext<'_>, operation: &'static str) {
        if !self
            .blocked_by
            .lock()
            .expect("block lock")
            .answered(operation)
        {
            return;
        }
        if let Some(b) = ctx.admission.clear("dynamodb") {
            tracing::warn!(code = %b.code, blocked_s = b.since.elapsed().as_secs(), operation, "DynamoDB answers again; taking new work");
        }
    }

    /// Wait before retrying a failure, within the budget and the abort (the driver says what we wait for,
    /// without flooding the log). Account-wide failures block new work (see [`crate::admission`]).
    async fn wait(
        &self,
        waits: &mut Retry<'_>,
        f: Failure,
        ctx: &CommitContext<'_>,
    ) -> Result<(), StoreError> {
        if f.class == Class::AccountWide {
            self.blocked_by
                .lock()
                .expect("block lock")
                .blocked(f.operation);
            if ctx
                .admission
                .block("dynamodb", f.code.as_deref().unwrap_or("-"), &f.detail)
            {
                tracing::error!(waiting_for = "DynamoDB", code = f.code.as_deref().unwrap_or("-"), cause = %f.detail, "DynamoDB refuses every write (permissions, table, credentials or KMS): taking no new work, keeping what is held, retrying until it clears");
            }
        }
        // What reaches here is waited out: a 4xx the protocol does not take as a record's verdict included.
        let class = if f.class.retryable() {
            f.class
        } else {
            Class::Transient
        };
        waits
            .failed(class, &f.detail)
            .await
            .map_err(|_| StoreError::Aborted)
    }
}

/// The driver of one commit's waits for DynamoDB: within its budget and the drain's abort.
fn waits<'a>(ctx: &CommitContext<'a>) -> Retry<'a> {
    Retry::new("DynamoDB write")
        .waiting_for("DynamoDB")
        .budget(ctx.budget)
        .cancel(ctx.abort)
        .says("not done; messages stay held (visibility extended) and the write is retried")
}

/// One round of a commit: the claims and inserts sent together.
#[derive(Default)]
struct Round {
    claims: Vec<(usize, Claim)>,
    writes: Vec<(usize, Write)>,
    /// Each write's key and item, in the order of `writes`.
    items: Vec<(String, Item)>,
}

/// What a commit carries from one round to the next.
#[derive(Default)]
struct Carry {
    /// A whole batch refused (one statement in it that DynamoDB cannot take): send one statement a call
    /// until the refused one is found and replaced by its stand-in.
    one_by_one: bool,
    /// Inserts that found their key taken whose read failed: read before anything else.
    unread: Vec<(usize, Write, String)>,
}

/// What one round's calls came back with.
#[derive(Default)]
struct Sent {
    /// The first failure to wait out before the next round.
    failure: Option<Failure>,
    /// Claims in a row the most contended run found the row moved.
    contention: u32,
}

/// A batched claim refused for what DynamoDB says of the request or of the caller (validation, access): not
/// applied; sent again alone, whose own answer decides (waited out and blocking new work if the `UpdateItem`
/// is refused too; carrying on if not, e.g. a role granted `UpdateItem` but not `PartiQLUpdate`).
fn refused_alone(f: &Failure) -> bool {
    matches!(f.class, Class::Request | Class::AccountWide)
}

/// What a failed `BatchExecuteStatement` as a whole means for its statements.
#[derive(Debug, PartialEq, Eq)]
enum WholeCall {
    /// DynamoDB refused the batch for one statement it cannot take: send one a call to find it.
    Isolate,
    /// The one statement sent is what DynamoDB refuses: its record gets a REJECTED stand-in.
    Refused,
    /// Not about any statement (a fault, throttling, an account-wide error, or a 4xx we do not know): wait
    /// and send again. A service's error never becomes an order's verdict.
    Wait,
}

/// Only a `ValidationException` is DynamoDB refusing what was sent; any other error of the whole call says
/// nothing about the records in it.
fn whole_call(f: &Failure, statements: usize) -> WholeCall {
    let refused = f.class == Class::Request && f.code.as_deref() == Some("ValidationException");
    match (refused, statements) {
        (false, _) => WholeCall::Wait,
        (true, 1) => WholeCall::Refused,
        (true, _) => WholeCall::Isolate,
    }
}

/// Which operations an account-wide error blocks: each operation that met one, until that operation answers
/// again. The admission block is lifted only when none is left.
#[derive(Debug, Default)]
struct BlockedBy(Vec<&'static str>);

impl BlockedBy {
    fn blocked(&mut self, operation: &'static str) {
        if !self.0.contains(&operation) {
            self.0.push(operation);
        }
    }

    /// `operation` answered: true when nothing blocks any more (the block may be lifted).
    fn answered(&mut self, operation: &'static str) -> bool {
        self.0.retain(|o| *o != operation);
        self.0.is_empty()
    }
}

fn applied(s: Settled) -> Applied {
    match s {
        Settled::New { position, .. } => Applied::New { position },
        Settled::Redelivered
        | Settled::Marker {
            kind: MarkerKind::Duplicate,
            ..
        } => Applied::Duplicate,
        Settled::Marker {
            kind: MarkerKind::Conflict,
            ..
        } => Applied::Conflict,
    }
}

/// The record written in place of one DynamoDB refuses on its own: REJECTED, with the reason, no total.
fn refused_record(r: &Record, why: &str) -> Record {
    Record {
        status: Status::Rejected,
        reason: Some(crate::order::truncate(
            &format!("DynamoDB refused the record: {why}"),
            crate::order::MAX_REASON_LEN,
        )),
        total_cents: None,
        currency: None,
        ..r.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(class: Class, code: &str) -> Failure {
        Failure {
            operation: "BatchExecuteStatement",
            class,
            code: Some(code.into()),
            detail: format!("BatchExecuteStatement: {code}"),
        }
    }

    #[test]
    fn a_block_is_lifted_only_by_the_operation_that_caused_it() {
        let mut b = BlockedBy::default();
        // Nothing blocked: any answer may lift (a block set elsewhere, e.g. at start).
        assert!(b.answered("UpdateItem"));
        b.blocked("BatchExecuteStatement");
        // Claims work while inserts are denied: the block stays.
        assert!(!b.answered("UpdateItem"));
        assert!(!b.answered("BatchGetItem"));
        assert!(b.answered("BatchExecuteStatement"));
        b.blocked("BatchExecuteStatement");
        b.blocked("UpdateItem");
        assert!(!b.answered("BatchExecuteStatement"));
        assert!(b.answered("UpdateItem"));
    }

    #[test]
    fn only_a_validation_error_of_a_whole_batch_is_about_its_records() {
        let v = failure(Class::Request, "ValidationException");
        assert_eq!(whole_call(&v, 25), WholeCall::Isolate);
        assert_eq!(whole_call(&v, 1), WholeCall::Refused);
        // An unknown 4xx of the service (classed "this request") with one statement in the batch: not the
        // order's verdict.
        let unknown = failure(Class::Request, "SomeNewServiceException");
        assert_eq!(whole_call(&unknown, 1), WholeCall::Wait);
        assert_eq!(whole_call(&unknown, 25), WholeCall::Wait);
        for (class, code) in [
            (Class::Throttled, "ThrottlingException"),
            (Class::Transient, "InternalServerError"),
            (Class::AccountWide, "AccessDeniedException"),
        ] {
            assert_eq!(
                whole_call(&failure(class, code), 1),
                WholeCall::Wait,
                "{code}"
            );
        }
    }
}
