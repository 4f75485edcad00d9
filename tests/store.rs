//! The store on both DynamoDB engines: ministack (what the project was tuned on) and DynamoDB Local (AWS's own
//! engine). SQS stays on ministack; the real worker commits through claims and PartiQL inserts, and the
//! table is audited. Each test runs once per engine.

mod common;

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;

/// One test per engine, named `<test>::ministack` and `<test>::dynamodb_local`.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ministack() {
                super::$name(super::Engine::Ministack).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dynamodb_local() {
                super::$name(super::Engine::DynamoLocal).await
            }
        }
    )*};
}

on_both_engines!(
    runs_sent_back_to_back_are_claimed_once_per_run_at_dense_positions,
    duplicates_and_conflicts_are_not_applied_and_do_not_block_the_group,
    worker_killed_mid_batch_and_restarted_applies_nothing_twice_and_loses_nothing,
    a_group_row_from_before_claims_is_continued_without_a_gap,
);

async fn metric_of(w: &Proc, op: &str) -> f64 {
    metric(
        w,
        &format!("order_worker_requests_total{{service=\"dynamodb\",operation=\"{op}\"}}"),
    )
    .await
}

async fn runs_sent_back_to_back_are_claimed_once_per_run_at_dense_positions(engine: Engine) {
    let region = Region::start("backtoback", engine).await;
    let fx = region.fixture().await;
    let mut manifest = Vec::new();
    for g in ["cust-a", "cust-b", "cust-c"] {
        let orders = ids(&format!("{g}-ord"), 20);
        fx.send_orders(g, &orders).await;
        manifest.extend(orders.iter().map(|id| sent(id, g, "accepted")));
    }
    let w = fx.worker("w1", &[]);
    fx.wait_records(60, Duration::from_secs(90)).await;
    let report = fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    assert_eq!((report.records, report.markers), (60, 0));
    // Each group row ends at its last position, naming the sequence numbers of its last claim.
    for g in ["cust-a", "cust-b", "cust-c"] {
        let row = fx
            .ddb
            .get_item()
            .table_name(&fx.groups_table)
            .key("MessageGroupId", AttributeValue::S(g.into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        let row = row.item().expect("a group row");
        assert_eq!(s(row, "LastPosition"), "20");
        let claimed = row["Claimed"].as_l().expect("Claimed is a list");
        assert!(
            !claimed.is_empty() && claimed.len() <= 20,
            "{g}: {claimed:?}"
        );
    }
    // A receive returns several orders of one group: a claim covers a run, not an order.
    let claims = metric_of(&w, "UpdateItem").await;
    assert!(
        claims > 0.0 && claims < 60.0,
        "{claims} claims for 60 orders"
    );
    assert_eq!(metric_of(&w, "TransactWriteItems").await, 0.0);
}

async fn a_group_row_from_before_claims_is_continued_without_a_gap(engine: Engine) {
    let region = Region::start("legacyrow", engine).await;
    let fx = region.fixture().await;
    let g = "cust-old";
    // What the transactional design left: two records at 1 and 2, the row's LastPosition 2, no Claimed.
    for (i, id) in ["old-1", "old-2"].iter().enumerate() {
        fx.ddb
            .put_item()
            .table_name(&fx.orders_table)
            .item("OrderID", AttributeValue::S(id.to_string()))
            .item("MessageGroupId", AttributeValue::S(g.into()))
            .item("GroupPosition", AttributeValue::N((i + 1).to_string()))
            .item("Status", AttributeValue::S("ACCEPTED".into()))
            .item("PayloadSha256", AttributeValue::S("earlier".into()))
            .item("SqsSequenceNumber", AttributeValue::S("1".into()))
            .send()
            .await
            .unwrap();
    }
    fx.ddb
        .put_item()
        .table_name(&fx.groups_table)
        .item("MessageGroupId", AttributeValue::S(g.into()))
        .item("LastPosition", AttributeValue::N("2".into()))
        .send()
        .await
        .unwrap();
    // One of them comes again (another message), then two new orders.
    let orders: Vec<String> = ["old-2", "new-1", "new-2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    fx.send(
        g,
        &orders
            .iter()
            .map(|id| (format!("{id}-again"), order_body(id, g)))
            .collect::<Vec<_>>(),
    )
    .await;
    let _w = fx.worker("w1", &[]);
    let records = fx.wait_records(5, Duration::from_secs(60)).await;
    let mut by_pos: Vec<(u64, String)> = records
        .iter()
        .map(|r| (s(r, "GroupPosition").parse().unwrap(), s(r, "Status")))
        .collect();
    by_pos.sort();
    let statuses: Vec<&str> = by_pos.iter().map(|(_, st)| st.as_str()).collect();
    // old-2 sent again with another payload than the stored one: a conflict marker at 3.
    assert_eq!(
        statuses,
        ["ACCEPTED", "ACCEPTED", "CONFLICT", "ACCEPTED", "ACCEPTED"],
        "{by_pos:?}"
    );
    let manifest: Vec<_> = ["old-1", "old-2", "new-1", "new-2"]
        .iter()
        .map(|id| sent(id, g, "accepted"))
        .collect();
    let report = fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
}

async fn duplicates_and_conflicts_are_not_applied_and_do_not_block_the_group(engine: Engine) {
    let region = Region::start("duplicates", engine).await;
    let fx = region.fixture().await;
    let g = "cust-1";
    let a = order_body("ord-a", g);
    let b = order_body("ord-b", g);
    let conflicting_b = b.replace("\"qty\":2", "\"qty\":3");
    fx.send(
        g,
        &[
            ("ord-a".into(), a.clone()),
            // Same dedup id inside the 5-minute window: SQS drops it.
            ("ord-a".into(), a.clone()),
            ("ord-b".into(), b.clone()),
            // Same order sent again after the window (a new dedup id stands in for the expired one).
            ("ord-a-late".into(), a.clone()),
            // The same order id with another payload: a conflict, never applied.
            ("ord-b-changed".into(), conflicting_b),
            ("ord-c".into(), order_body("ord-c", g)),
        ],
    )
    .await;
    let worker = fx.worker("w1", &[]);
    // Three records and two markers: each message that reached the worker holds one position.
    fx.wait_records(5, Duration::from_secs(60)).await;
    wait_for(
        "the conflict to be counted",
        Duration::from_secs(30),
        || async {
            (metric(&worker, "order_worker_orders_total{status=\"conflict\"}").await == 1.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        metric(&worker, "order_worker_orders_total{status=\"duplicate\"}").await,
        1.0
    );
    assert_eq!(
        metric(&worker, "order_worker_orders_total{status=\"accepted\"}").await,
        3.0
    );
    let manifest = vec![
        sent("ord-a", g, "accepted"),
        sent("ord-b", g, "accepted"),
        sent("ord-c", g, "accepted"),
    ];
    let report = fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    let records = fx.records().await;
    let mut by_pos: Vec<(u64, String, String, String)> = records
        .iter()
        .map(|r| {
            (
                s(r, "GroupPosition").parse().unwrap(),
                s(r, "OrderID"),
                s(r, "Status"),
                s(r, "MarkerOf"),
            )
        })
        .collect();
    by_pos.sort();
    let shape: Vec<(u64, &str, &str)> = by_pos
        .iter()
        .map(|(p, id, st, of)| {
            let id = if st == "ACCEPTED" {
                id.as_str()
            } else {
                of.as_str()
            };
            (*p, st.as_str(), id)
        })
        .collect();
    assert_eq!(
        shape,
        [
            (1, "ACCEPTED", "ord-a"),
            (2, "ACCEPTED", "ord-b"),
            (3, "DUPLICATE", "ord-a"),
            (4, "CONFLICT", "ord-b"),
            (5, "ACCEPTED", "ord-c"),
        ],
        "{by_pos:?}"
    );
    assert!(by_pos[2].1.starts_with("duplicate:") && by_pos[3].1.starts_with("conflict:"));
    let b_rec = records.iter().find(|r| s(r, "OrderID") == "ord-b").unwrap();
    assert_eq!(s(b_rec, "ItemCount"), "1");
    assert_eq!(
        s(b_rec, "TotalCents"),
        "2598",
        "the first payload of ord-b stays applied"
    );
    // Nothing left in the queue: duplicates and conflicts were deleted, not retried forever.
    wait_for("the queue to be empty", Duration::from_secs(20), || async {
        fx.receive_now(10).await.is_empty().then_some(())
    })
    .await;
}

async fn worker_killed_mid_batch_and_restarted_applies_nothing_twice_and_loses_nothing(
    engine: Engine,
) {
    let region = Region::start("sigkill", engine).await;
    let fx = region.fixture().await;
    let manifest = send_interleaved(&fx, 10, 20).await;
    // Short visibility so the killed worker's messages come back quickly; slow work so it dies mid-run.
    let args = [
        "--visibility-timeout",
        "4s",
        "--drain-timeout",
        "2s",
        "--work-delay",
        "30ms",
    ];
    let mut first = fx.worker("w1", &args);
    fx.wait_records(40, Duration::from_secs(60)).await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10)).await;
    let before = fx.records().await.len();
    assert!(
        before < 200,
        "the worker finished before it was killed; the test proves nothing"
    );
    let _second = fx.worker("w2", &args);
    fx.wait_records(200, Duration::from_secs(120)).await;
    let report = fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    assert_eq!(report.records, 200);
    assert!(
        report.per_instance.contains_key("w2"),
        "{}",
        report.summary()
    );
}
