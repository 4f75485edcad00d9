//! A service's error is not an order's fault, live: the real worker behind the fault proxy, the errors in
//! DynamoDB's own wire shape. A claim that meets a transaction is retried at once (it was released for 60 s);
//! a whole `BatchExecuteStatement` refused with a 4xx the worker does not know is waited out, never recorded as
//! the order's REJECTED verdict (it was, with one statement in the batch).

use std::time::Duration;

use crate::common::proxy::{rig, Rig};
use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_meets_a_transaction_is_retried_not_released() {
    let r = rig("claim-txconflict").await;
    let rule = r
        .proxy
        .rule(
            json!({"service": "dynamodb", "operation": "UpdateItem", "action": "error",
                     "code": "TransactionConflictException", "status": 400, "count": 2}),
        )
        .await;
    let g = "cust-tx";
    // An item with the group's key and no row in it (made by hand): the batched first claim (an INSERT) is
    // refused and the claim goes alone, as the UpdateItem that meets the transaction.
    r.fx.ddb
        .put_item()
        .table_name(&r.fx.groups_table)
        .item(
            "MessageGroupId",
            aws_sdk_dynamodb::types::AttributeValue::S(g.into()),
        )
        .send()
        .await
        .unwrap();
    let order_ids = ids("tx", 3);
    r.fx.send_orders(g, &order_ids).await;
    let w = r.via.worker("w-tx", &[]);
    // Released for 60 s it would take a minute; retried, a few seconds.
    r.fx.wait_records(3, Duration::from_secs(20)).await;
    let manifest: Vec<_> = order_ids.iter().map(|id| sent(id, g, "accepted")).collect();
    let report = r.fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    assert!(!w.log_text().contains("commit-failed"), "{}", w.log_text());
    assert_eq!(
        r.proxy.rule_status(rule["id"].as_u64().unwrap()).await["hits"],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_4xx_of_a_whole_batch_is_not_an_orders_verdict() {
    let r = rig("batch-unknown-4xx").await;
    r.proxy
        .rule(
            json!({"service": "dynamodb", "operation": "BatchExecuteStatement", "action": "error",
                     "table": r.fx.orders_table, "code": "SomeNewServiceException", "status": 400, "count": 1,
                     "message": "a service error this build has never seen"}),
        )
        .await;
    let g = "cust-4xx";
    let order_ids = ids("x4", 1);
    r.fx.send_orders(g, &order_ids).await;
    let _w = r.via.worker("w-4xx", &[]);
    let records = r.fx.wait_records(1, Duration::from_secs(30)).await;
    assert_eq!(s(&records[0], "Status"), "ACCEPTED", "{records:?}");
    let manifest: Vec<_> = order_ids.iter().map(|id| sent(id, g, "accepted")).collect();
    let report = r.fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
}

/// The store on its own through the proxy: one run of one record whose OrderID is taken by an earlier
/// message's record, and (with `marked`) whose own marker is there too (a holder wrote it and died before
/// the delete). Returns the BatchGetItem and BatchExecuteStatement calls the commit made.
async fn commit_taken(r: &Rig, marked: bool, failed_read: bool) -> (u64, u64) {
    use aws_sdk_dynamodb::types::AttributeValue;
    use order_worker::schema::Record;
    use order_worker::store::Run;
    let put = |key: &str, pos: &str, mid: &str, seq: &str| {
        r.fx.ddb
            .put_item()
            .table_name(&r.fx.orders_table)
            .item("OrderID", AttributeValue::S(key.into()))
            .item("MessageGroupId", AttributeValue::S("g".into()))
            .item("GroupPosition", AttributeValue::N(pos.into()))
            .item("Status", AttributeValue::S("ACCEPTED".into()))
            .item("PayloadSha256", AttributeValue::S("sha".into()))
            .item("SqsMessageId", AttributeValue::S(mid.into()))
            .item("SqsSequenceNumber", AttributeValue::S(seq.into()))
            .send()
    };
    put("taken", "1", "m-1", "1").await.unwrap();
    if marked {
        put("duplicate:m-2", "2", "m-2", "2").await.unwrap();
    }
    let record = |key: &str, mid: &str, seq: &str| Record {
        receive_count: 2,
        ..accepted_record(key, "g", mid, seq)
    };
    // The row as the claim that placed m-2 at 2 left it.
    r.fx.ddb
        .put_item()
        .table_name(&r.fx.groups_table)
        .item("MessageGroupId", AttributeValue::S("g".into()))
        .item("LastPosition", AttributeValue::S("2".into()))
        .item("Protocol", AttributeValue::N("2".into()))
        .item(
            "Claimed",
            AttributeValue::L(vec![
                AttributeValue::S("1".into()),
                AttributeValue::S("2".into()),
            ]),
        )
        .send()
        .await
        .unwrap();
    let store =
        r.fx.store_via(aws_sdk_dynamodb::Client::new(&r.proxy.sdk(1, None).await));
    let env = CommitEnv::default();
    let ctx = env.ctx();
    // A message below the row's claimed entries (recorded before): settled with no write; the row is cached.
    let warm = Run {
        group_id: "g".into(),
        records: vec![record("warm", "m-0", "0")],
    };
    assert!(store.commit(&[warm], &ctx).await[0].error.is_none());
    if failed_read {
        r.proxy
            .rule(
                json!({"service": "dynamodb", "operation": "BatchGetItem", "action": "error",
                         "code": "InternalServerError", "status": 500, "count": 1}),
            )
            .await;
    }
    let run = Run {
        group_id: "g".into(),
        records: vec![record("taken", "m-2", "2")],
    };
    let (gets, inserts) = (
        r.proxy.count("dynamodb", "BatchGetItem").await,
        r.proxy.count("dynamodb", "BatchExecuteStatement").await,
    );
    let out = store.commit(&[run], &ctx).await;
    assert!(
        out[0].error.is_none() && out[0].applied.len() == 1,
        "{out:?}"
    );
    let keys: Vec<String> =
        r.fx.records()
            .await
            .iter()
            .map(|x| s(x, "OrderID"))
            .collect();
    assert!(keys.contains(&"duplicate:m-2".to_string()), "{keys:?}");
    (
        r.proxy.count("dynamodb", "BatchGetItem").await - gets,
        r.proxy.count("dynamodb", "BatchExecuteStatement").await - inserts,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_marker_key_is_not_read_back() {
    let r = rig("marker-not-read").await;
    // The record's key is read; the marker's key taken: done, not read.
    assert_eq!(commit_taken(&r, true, false).await, (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_of_a_taken_key_is_read_again_not_inserted_again() {
    let r = rig("taken-read-fails").await;
    // The record's key read twice (one failed), and the inserts of the record and of its marker only.
    assert_eq!(commit_taken(&r, false, true).await, (2, 2));
}
