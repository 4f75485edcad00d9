//! Two store protocols on the same tables: the protocol fence through a rolling replacement.
//!
//! The older build is simulated here, in-process: a worker of the transactional design (protocol 1) as it was
//! written before claims (`git show 9badd3a:src/store.rs`): per message, read the group row, then one
//! `TransactWriteItems` of the record (`attribute_not_exists(OrderID)`) and the row (`SET LastPosition = base+1`
//! conditional on `LastPosition = base`, or on its absence for a new group); a cancelled transaction whose row
//! condition failed (or a row it cannot read as a number) leaves the message for later (released, and the rest
//! of its group behind it); one whose record condition alone failed is a duplicate (deleted). It writes every
//! attribute the real one did that verify reads. The newer build is the real `order-worker`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use aws_sdk_sqs::types::{MessageSystemAttributeName, SendMessageBatchRequestEntry};
use order_worker::verify::Sent;

/// What the transactional worker did with one message.
#[derive(Debug, PartialEq, Eq)]
enum Old {
    Written,
    Duplicate,
    /// The row is not one it can write on (fenced): nothing written.
    Fenced,
}

/// The transactional design's write of one message.
async fn old_apply(
    ddb: &aws_sdk_dynamodb::Client,
    fx: &Fixture,
    group: &str,
    m: &aws_sdk_sqs::types::Message,
) -> Old {
    let body = m.body().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let order_id = v["order_id"].as_str().unwrap().to_owned();
    let row = ddb
        .get_item()
        .table_name(&fx.groups_table)
        .key("MessageGroupId", AttributeValue::S(group.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    let base = match row.item().and_then(|i| i.get("LastPosition")) {
        None => None,
        Some(AttributeValue::N(n)) => Some(n.parse::<u64>().unwrap()),
        // "LastPosition ... is not a number; fix or delete the item": it waits.
        Some(_) => return Old::Fenced,
    };
    let position = base.unwrap_or(0) + 1;
    let seq = m.attributes().unwrap()[&MessageSystemAttributeName::SequenceNumber].clone();
    let put = Put::builder()
        .table_name(&fx.orders_table)
        .item("OrderID", AttributeValue::S(order_id))
        .item("MessageGroupId", AttributeValue::S(group.into()))
        .item("GroupPosition", AttributeValue::N(position.to_string()))
        .item("Status", AttributeValue::S("ACCEPTED".into()))
        .item(
            "PayloadSha256",
            AttributeValue::S(order_worker::order::sha256_hex(body.as_bytes())),
        )
        .item(
            "SqsMessageId",
            AttributeValue::S(m.message_id().unwrap().into()),
        )
        .item("SqsSequenceNumber", AttributeValue::S(seq))
        .item("ProcessedBy", AttributeValue::S("transactional".into()))
        .condition_expression("attribute_not_exists(OrderID)")
        .build()
        .unwrap();
    let update = Update::builder()
        .table_name(&fx.groups_table)
        .key("MessageGroupId", AttributeValue::S(group.into()))
        .update_expression("SET LastPosition = :last")
        .expression_attribute_values(":last", AttributeValue::N(position.to_string()));
    let update = match base {
        None => update.condition_expression("attribute_not_exists(LastPosition)"),
        Some(b) => update
            .condition_expression("LastPosition = :base")
            .expression_attribute_values(":base", AttributeValue::N(b.to_string())),
    };
    let out = ddb
        .transact_write_items()
        .transact_items(TransactWriteItem::builder().put(put).build())
        .transact_items(
            TransactWriteItem::builder()
                .update(update.build().unwrap())
                .build(),
        )
        .send()
        .await;
    match out {
        Ok(_) => Old::Written,
        Err(e) => {
            let reasons: Vec<Option<String>> = match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c)) => c
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().map(str::to_owned))
                    .collect(),
                _ => panic!("transactional worker: {e:?}"),
            };
            let failed = |i: usize| {
                reasons
                    .get(i)
                    .and_then(|r| r.as_deref())
                    .is_some_and(|c| c != "None")
            };
            if failed(1) || reasons.is_empty() {
                Old::Fenced
            } else if failed(0) {
                Old::Duplicate
            } else {
                Old::Fenced
            }
        }
    }
}

/// The transactional worker's loop, until `stop`: receive, apply each message in order, delete what it
/// wrote (or found recorded), release a fenced group's messages (the rest of its group behind them too).
async fn old_worker(fx: Arc<Fixture>, stop: Arc<AtomicBool>, written: Arc<AtomicUsize>) {
    old_worker_counting(fx, stop, written, Arc::new(AtomicUsize::new(0))).await
}

/// [`old_worker`], counting the messages it found fenced too.
async fn old_worker_counting(
    fx: Arc<Fixture>,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicUsize>,
    fenced_count: Arc<AtomicUsize>,
) {
    let sqs = fx.sqs.clone();
    let ddb = fx.ddb.clone();
    while !stop.load(Ordering::Relaxed) {
        let got = sqs
            .receive_message()
            .queue_url(&fx.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(10)
            .message_system_attribute_names(MessageSystemAttributeName::SequenceNumber)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send()
            .await
            .unwrap();
        let mut fenced: HashSet<String> = HashSet::new();
        for m in got.messages() {
            let group =
                m.attributes().unwrap()[&MessageSystemAttributeName::MessageGroupId].clone();
            let outcome = if fenced.contains(&group) || stop.load(Ordering::Relaxed) {
                Old::Fenced
            } else {
                old_apply(&ddb, &fx, &group, m).await
            };
            let handle = m.receipt_handle().unwrap();
            match outcome {
                Old::Written | Old::Duplicate => {
                    if outcome == Old::Written {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    sqs.delete_message()
                        .queue_url(&fx.queue_url)
                        .receipt_handle(handle)
                        .send()
                        .await
                        .unwrap();
                }
                Old::Fenced => {
                    fenced_count.fetch_add(1, Ordering::Relaxed);
                    fenced.insert(group);
                    sqs.change_message_visibility()
                        .queue_url(&fx.queue_url)
                        .receipt_handle(handle)
                        .visibility_timeout(0)
                        .send()
                        .await
                        .unwrap();
                }
            }
        }
    }
}

/// Send `per_group` orders to each group, ten per batch round robin, pausing between batches; the manifest
/// names each send's MessageId and SequenceNumber.
async fn produce(fx: Arc<Fixture>, groups: usize, per_group: usize, pause: Duration) -> Vec<Sent> {
    let mut manifest = Vec::new();
    for round in 0..per_group.div_ceil(10) {
        for g in 0..groups {
            let group = format!("roll-{g}");
            let ids: Vec<String> = (round * 10..((round + 1) * 10).min(per_group))
                .map(|i| format!("roll-{g}-{i:04}"))
                .collect();
            let entries = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(order_body(id, &group))
                        .message_group_id(&group)
                        .message_deduplication_id(id)
                        .build()
                        .unwrap()
                })
                .collect();
            let out = fx
                .sqs
                .send_message_batch()
                .queue_url(&fx.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .unwrap();
            assert!(out.failed().is_empty(), "{:?}", out.failed());
            for (i, id) in ids.iter().enumerate() {
                let ok = out
                    .successful()
                    .iter()
                    .find(|e| e.id() == i.to_string())
                    .unwrap();
                manifest.push(Sent {
                    message_id: Some(ok.message_id().to_owned()),
                    sequence_number: ok.sequence_number().map(str::to_owned),
                    ..sent(id, &group, "accepted")
                });
            }
            tokio::time::sleep(pause).await;
        }
    }
    manifest
}

fn repair_all(fx: &Fixture) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_order-worker"))
        .env_clear()
        .envs(fx.operator_env())
        .args(["repair", "--all", "--apply"])
        .output()
        .expect("run order-worker repair");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_write_fails_on_a_row_this_build_claimed() {
    // The state: a claim worker claimed positions 1 and 2 (its row), wrote 1 and was killed; the
    // transactional worker gets message 2. Its transaction must fail, and leave nothing.
    let region = Region::start("fence-direct", Engine::Ministack).await;
    let fx = region.fixture().await;
    let g = "cust-fence";
    fx.send_orders(g, &ids("f", 2)).await;
    let got = wait_for("both messages", Duration::from_secs(20), || async {
        let out = fx
            .sqs
            .receive_message()
            .queue_url(&fx.queue_url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        (out.messages().len() == 2).then(|| out.messages().to_vec())
    })
    .await;
    let seq = |m: &aws_sdk_sqs::types::Message| {
        m.attributes().unwrap()[&MessageSystemAttributeName::SequenceNumber].clone()
    };
    // The row as this build's claim writes it.
    fx.ddb
        .put_item()
        .table_name(&fx.groups_table)
        .item("MessageGroupId", AttributeValue::S(g.into()))
        .item("LastPosition", AttributeValue::S("2".into()))
        .item("Protocol", AttributeValue::N("2".into()))
        .item(
            "Claimed",
            AttributeValue::L(vec![
                AttributeValue::S(seq(&got[0])),
                AttributeValue::S(seq(&got[1])),
            ]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(old_apply(&fx.ddb, &fx, g, &got[1]).await, Old::Fenced);
    // Even with the base it would have had (a cached row, a read racing the claim): the condition fails.
    let row = fx.group_row(g).await;
    assert_eq!(
        row.item().unwrap()["LastPosition"],
        AttributeValue::S("2".into())
    );
    for base in ["0", "1", "2"] {
        let r = fx
            .ddb
            .update_item()
            .table_name(&fx.groups_table)
            .key("MessageGroupId", AttributeValue::S(g.into()))
            .update_expression("SET LastPosition = :last")
            .condition_expression("LastPosition = :base")
            .expression_attribute_values(":base", AttributeValue::N(base.into()))
            .expression_attribute_values(":last", AttributeValue::N("3".into()))
            .send()
            .await;
        assert!(r.is_err(), "a transactional write on base {base} applied");
    }
    assert!(fx.records().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_replacement_from_the_transactional_design_loses_and_repeats_nothing() {
    let region = Region::start("rolling", Engine::Ministack).await;
    let fx = Arc::new(region.fixture().await);
    let (groups, per_group) = (8, 40);
    let total = groups * per_group;
    let producer = tokio::spawn(produce(
        fx.clone(),
        groups,
        per_group,
        Duration::from_millis(60),
    ));
    // 1. The old build alone.
    let stop_old = Arc::new(AtomicBool::new(false));
    let old_written = Arc::new(AtomicUsize::new(0));
    let old = tokio::spawn(old_worker(
        fx.clone(),
        stop_old.clone(),
        old_written.clone(),
    ));
    wait_for("the old build at work", Duration::from_secs(60), || async {
        (old_written.load(Ordering::Relaxed) >= 40).then_some(())
    })
    .await;
    // 2. The new build joins: it refuses the groups the old one wrote (holding their messages) and fences every
    // row it claims.
    let mut w1 = fx.worker("new-1", &[]);
    wait_log(
        &w1,
        "a row of the transactional design",
        Duration::from_secs(60),
    )
    .await;
    // 3. The one-time upgrade step, while the old build still runs: until no row is refused (a row the old build
    // moves between the read and the write fails the repair's condition, and is repaired on the next pass).
    let mut passes = Vec::new();
    wait_for("every row upgraded", Duration::from_secs(60), || {
        let text = repair_all(&fx);
        let done = text.contains("no group row the worker refuses");
        passes.push(text);
        async move { done.then_some(()) }
    })
    .await;
    // 4. The old build goes; a second new worker comes, and the first is replaced.
    stop_old.store(true, Ordering::Relaxed);
    old.await.unwrap();
    let w2 = fx.worker("new-2", &[]);
    let manifest = producer.await.unwrap();
    fx.wait_records(total / 2 + 40, Duration::from_secs(120))
        .await;
    w1.signal("TERM");
    w1.wait_exit(Duration::from_secs(60)).await;
    fx.wait_records(total, Duration::from_secs(180)).await;
    // Nothing left in the queue, then the audit.
    fx.wait_queue_drained(Duration::from_secs(60)).await;
    let report = fx.audit(&manifest).await;
    assert!(
        report.ok(),
        "{}\nrepair passes:\n{}",
        report.summary(),
        passes.join("\n---\n")
    );
    assert_eq!(
        (
            report.lost,
            report.applied_twice,
            report.out_of_order,
            report.position_gaps
        ),
        (0, 0, 0, 0)
    );
    let by_old = report
        .per_instance
        .get("transactional")
        .copied()
        .unwrap_or(0);
    assert!(
        by_old >= 40 && by_old < total,
        "both builds wrote: {:?}",
        report.per_instance
    );
    eprintln!("{}repair passes: {}", report.summary(), passes.len());
    drop(w2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_claimed_by_a_killed_worker_is_not_overwritten_by_the_transactional_build() {
    // The sequence, live: this build claims a run and is killed before its inserts land; the run's
    // messages come back while a transactional worker runs. Unfenced, that worker wrote them after the claimed
    // positions (the claimed ones empty forever). Fenced, it cannot write on the row; the next worker of this
    // build writes the run at its claimed positions.
    let emu = Emulator::start("fence-killed").await;
    let fx = Arc::new(Fixture::new(&emu, "fence-killed").await);
    let proxy = crate::common::proxy::FaultProxy::start("fence-killed", &emu.endpoint).await;
    let via = fx.through(proxy.url());
    let g = "cust-killed";
    let orders = ids("k", 5);
    let mut manifest = Vec::new();
    fx.send_orders(g, &orders).await;
    manifest.extend(orders.iter().map(|id| sent(id, g, "accepted")));
    // Inserts fail (a fault the worker retries) while the claim goes through.
    proxy
        .rule(
            serde_json::json!({"service": "dynamodb", "operation": "BatchExecuteStatement",
                                 "table": fx.orders_table, "action": "error", "code": "InternalServerError", "status": 500,
                                 "count": 100000}),
        )
        .await;
    let w1 = via.worker(
        "claims-then-killed",
        &["--visibility-timeout", "4s", "--drain-timeout", "2s"],
    );
    wait_for("the run claimed", Duration::from_secs(30), || async {
        let row = fx.group_row(g).await;
        row.item().is_some().then_some(())
    })
    .await;
    w1.signal("KILL");
    proxy.clear().await;
    assert!(fx.records().await.is_empty());
    // The transactional build meets the messages when they come back.
    let stop = Arc::new(AtomicBool::new(false));
    let (written, fenced) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let old = tokio::spawn(old_worker_counting(
        fx.clone(),
        stop.clone(),
        written.clone(),
        fenced.clone(),
    ));
    wait_for(
        "the transactional build to meet the run",
        Duration::from_secs(30),
        || async {
            (fenced.load(Ordering::Relaxed) + written.load(Ordering::Relaxed) > 0).then_some(())
        },
    )
    .await;
    let _w2 = fx.worker("next-holder", &[]);
    fx.wait_records(5, Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    old.await.unwrap();
    let report = fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    assert_eq!(written.load(Ordering::Relaxed), 0, "{}", report.summary());
}
