//! The store on both DynamoDB engines: ministack (what the project was tuned on) and DynamoDB Local (AWS's own
//! engine). SQS stays on ministack; the real worker commits through claims and PartiQL inserts, and the
//! table is audited. Each test runs once per engine.

use std::time::Duration;

use crate::common::*;
use aws_sdk_dynamodb::types::AttributeValue;

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
    a_run_that_needs_more_rounds_does_not_hold_up_the_answer_of_another,
    runs_sent_back_to_back_are_claimed_once_per_run_at_dense_positions,
    duplicates_and_conflicts_are_not_applied_and_do_not_block_the_group,
    worker_killed_mid_batch_and_restarted_applies_nothing_twice_and_loses_nothing,
    a_transactional_row_is_refused_until_repair_rebuilds_it_and_nothing_is_recorded_twice,
    batched_claims_on_a_moved_row_or_one_from_before_the_fence_land_at_the_right_positions,
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
        let row = fx.group_row(g).await;
        let row = row.item().expect("a group row");
        assert_eq!(s(row, "LastPosition"), "20");
        let claimed = row["Claimed"].as_l().expect("Claimed is a list");
        assert!(
            !claimed.is_empty() && claimed.len() <= 20,
            "{g}: {claimed:?}"
        );
    }
    // A receive returns several orders of one group: a claim covers a run, not an order. Claims go in a batch
    // with the other groups' (BatchExecuteStatement), a group's first claim too (a PartiQL INSERT).
    let claims = metric(&w, "order_worker_claims_total{result=\"applied\"}").await;
    assert!(
        (3.0..60.0).contains(&claims),
        "{claims} claims for 60 orders"
    );
    assert_eq!(
        metric_of(&w, "UpdateItem").await,
        0.0,
        "no claim alone: first claims are batched too"
    );
    assert_eq!(metric_of(&w, "TransactWriteItems").await, 0.0);
}

async fn a_transactional_row_is_refused_until_repair_rebuilds_it_and_nothing_is_recorded_twice(
    engine: Engine,
) {
    let region = Region::start("legacyrow", engine).await;
    let fx = region.fixture().await;
    let g = "cust-old";
    // The transactional design at work: it received old-1 and old-2, recorded both (positions 1 and 2, its
    // row at LastPosition 2, no Claimed), deleted old-1 and was killed before deleting old-2. Then new-1 and
    // new-2 were sent.
    let ids: Vec<String> = ["old-1", "old-2", "new-1", "new-2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    fx.send_orders(g, &ids[..2]).await;
    let got = wait_for(
        "old-1 and old-2 received",
        Duration::from_secs(20),
        || async {
            let out = fx
                .sqs
                .receive_message()
                .queue_url(&fx.queue_url)
                .max_number_of_messages(10)
                .message_system_attribute_names(
                    aws_sdk_sqs::types::MessageSystemAttributeName::SequenceNumber,
                )
                .visibility_timeout(60)
                .send()
                .await
                .unwrap();
            (out.messages().len() == 2).then(|| out.messages().to_vec())
        },
    )
    .await;
    let mut manifest = Vec::new();
    for (i, m) in got.iter().enumerate() {
        let seq = m.attributes().unwrap()
            [&aws_sdk_sqs::types::MessageSystemAttributeName::SequenceNumber]
            .clone();
        fx.ddb
            .put_item()
            .table_name(&fx.orders_table)
            .item("OrderID", AttributeValue::S(ids[i].clone()))
            .item("MessageGroupId", AttributeValue::S(g.into()))
            .item("GroupPosition", AttributeValue::N((i + 1).to_string()))
            .item("Status", AttributeValue::S("ACCEPTED".into()))
            .item(
                "PayloadSha256",
                AttributeValue::S("from-the-old-build".into()),
            )
            .item(
                "SqsMessageId",
                AttributeValue::S(m.message_id().unwrap().into()),
            )
            .item("SqsSequenceNumber", AttributeValue::S(seq))
            .send()
            .await
            .unwrap();
        manifest.push(order_worker::verify::Sent {
            message_id: m.message_id().map(str::to_owned),
            ..sent(&ids[i], g, "accepted")
        });
    }
    fx.ddb
        .put_item()
        .table_name(&fx.groups_table)
        .item("MessageGroupId", AttributeValue::S(g.into()))
        .item("LastPosition", AttributeValue::N("2".into()))
        .send()
        .await
        .unwrap();
    fx.sqs
        .delete_message()
        .queue_url(&fx.queue_url)
        .receipt_handle(got[0].receipt_handle().unwrap())
        .send()
        .await
        .unwrap();
    fx.sqs
        .change_message_visibility()
        .queue_url(&fx.queue_url)
        .receipt_handle(got[1].receipt_handle().unwrap())
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    fx.send_orders(g, &ids[2..]).await;
    manifest.extend(ids[2..].iter().map(|id| sent(id, g, "accepted")));

    // The worker refuses the row (holding the group's messages) and says what to run.
    let w = fx.worker("w1", &[]);
    wait_log(
        &w,
        "order-worker repair --group cust-old --apply",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        fx.records().await.len(),
        2,
        "nothing written on a refused row"
    );
    // The dry run prints the plan and writes nothing.
    let repair = |apply: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_order-worker"));
        cmd.env_clear()
            .envs(fx.operator_env())
            .args(["repair", "--group", g]);
        if apply {
            cmd.arg("--apply");
        }
        cmd.output().expect("run order-worker repair")
    };
    let dry = repair(false);
    let text = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(dry.status.success(), "{text}");
    assert!(
        text.contains("LastPosition \"2\"")
            && text.contains("dry run")
            && text.contains("transactional"),
        "{text}"
    );
    let before = fx.group_row(g).await;
    assert_eq!(
        before.item().unwrap()["LastPosition"],
        AttributeValue::N("2".into())
    );
    let applied = repair(true);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stdout)
    );
    // The worker goes on: old-2 (recorded, not deleted) is recognised by its SequenceNumber at position 2,
    // not marked a duplicate of itself; new-1 and new-2 at 3 and 4.
    fx.wait_records(4, Duration::from_secs(60)).await;
    fx.wait_queue_drained(Duration::from_secs(60)).await;
    let report = fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    assert_eq!(
        (report.records, report.markers),
        (4, 0),
        "{}",
        report.summary()
    );
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

async fn a_run_that_needs_more_rounds_does_not_hold_up_the_answer_of_another(engine: Engine) {
    // The store itself, on a real engine: two groups' runs in one commit. Group "slow"'s order is already
    // recorded by another message (its insert finds the key, reads it, then writes a marker: three calls more);
    // group "fast" is done after the first round of inserts and must be answered then, alone.
    use order_worker::store::Run;
    let region = Region::start("perrun", engine).await;
    let fx = region.fixture().await;
    fx.ddb
        .put_item()
        .table_name(&fx.orders_table)
        .item("OrderID", AttributeValue::S("taken".into()))
        .item("MessageGroupId", AttributeValue::S("other".into()))
        .item("GroupPosition", AttributeValue::N("1".into()))
        .item("Status", AttributeValue::S("ACCEPTED".into()))
        .item("PayloadSha256", AttributeValue::S("sha".into()))
        .item("SqsMessageId", AttributeValue::S("m-earlier".into()))
        .item("SqsSequenceNumber", AttributeValue::S("5".into()))
        .send()
        .await
        .unwrap();
    let record = |key: &str, group: &str, seq: &str| {
        accepted_record(key, group, &format!("m-{key}-{group}"), seq)
    };
    let runs = vec![
        Run {
            group_id: "slow".into(),
            records: vec![record("taken", "slow", "10")],
        },
        Run {
            group_id: "fast".into(),
            records: vec![record("fresh", "fast", "11")],
        },
    ];
    let store = fx.store_via(fx.ddb.clone());
    let env = CommitEnv::default();
    let ctx = env.ctx();
    let mut answers: Vec<Vec<(usize, usize)>> = Vec::new();
    store
        .commit_each(&runs, &ctx, &mut |done| {
            answers.push(done.iter().map(|(i, o)| (*i, o.applied.len())).collect());
            assert!(done.iter().all(|(_, o)| o.error.is_none()), "{done:?}");
        })
        .await;
    // "fast" (index 1) first and alone, then "slow" (index 0) with its marker.
    assert_eq!(answers, vec![vec![(1, 1)], vec![(0, 1)]]);
    let keys: Vec<String> = fx.records().await.iter().map(|r| s(r, "OrderID")).collect();
    assert!(
        keys.contains(&"duplicate:m-taken-slow".to_string()),
        "{keys:?}"
    );
}

async fn batched_claims_on_a_moved_row_or_one_from_before_the_fence_land_at_the_right_positions(
    engine: Engine,
) {
    // The claims of one commit go out together as PartiQL UPDATEs conditional on this protocol's row. Two ways
    // such a claim is refused, on a real engine: group "moved" was claimed by another worker behind our cached
    // row (ministack returns the row with the refusal, DynamoDB Local does not: then the claim is sent again
    // alone, as an UpdateItem, whose refusal does); group "old" holds a claim row of a build from before the
    // fence (LastPosition a number, no Protocol) at the cached base, which only the UpdateItem's condition
    // takes. Both must end at the right positions, and "old" fenced.
    use order_worker::schema::Record;
    use order_worker::store::{Applied, Run};
    let region = Region::start("claimbatch", engine).await;
    let fx = region.fixture().await;
    let record = |key: &str, group: &str, seq: &str| Record {
        payload_sha256: format!("sha-{key}"),
        ..accepted_record(key, group, &format!("m-{key}"), seq)
    };
    let run = |group: &str, key: &str, seq: &str| Run {
        group_id: group.into(),
        records: vec![record(key, group, seq)],
    };
    let store = fx.store_via(fx.ddb.clone());
    let env = CommitEnv::default();
    let ctx = env.ctx();
    // Group "bare" has an item with its key and neither LastPosition nor Protocol (made by hand): no row as the
    // claim's condition sees it, so its first claim, a batched INSERT, is refused (DuplicateItem) and goes
    // alone (UpdateItem), whose condition takes the item.
    fx.ddb
        .put_item()
        .table_name(&fx.groups_table)
        .item("MessageGroupId", AttributeValue::S("bare".into()))
        .item("Note", AttributeValue::S("made by hand".into()))
        .send()
        .await
        .unwrap();
    // First runs: no rows yet (first claims, batched INSERTs); the rows cached at LastPosition 1.
    let first = [
        run("moved", "a1", "10"),
        run("old", "b1", "10"),
        run("bare", "c1", "10"),
    ];
    let out = tokio::time::timeout(Duration::from_secs(30), store.commit(&first, &ctx))
        .await
        .expect(
        "the first claims are decided (a refused INSERT goes alone, it is not retried as it was)",
    );
    assert!(out.iter().all(|o| o.error.is_none()), "{out:?}");
    assert_eq!(out[2].applied, vec![Applied::New { position: 1 }]);
    let bare = fx.group_row("bare").await;
    let bare = bare.item().expect("a group row");
    assert_eq!(
        bare["LastPosition"],
        AttributeValue::S("1".into()),
        "{bare:?}"
    );
    assert_eq!(
        bare["Note"],
        AttributeValue::S("made by hand".into()),
        "{bare:?}"
    );
    let row = |last: AttributeValue, claimed: &[&str], fenced: bool| {
        let mut req = fx
            .ddb
            .put_item()
            .table_name(&fx.groups_table)
            .item("LastPosition", last)
            .item(
                "Claimed",
                AttributeValue::L(
                    claimed
                        .iter()
                        .map(|c| AttributeValue::S((*c).into()))
                        .collect(),
                ),
            );
        if fenced {
            req = req.item("Protocol", AttributeValue::N("2".into()));
        }
        req
    };
    row(AttributeValue::S("2".into()), &["10", "20"], true)
        .item("MessageGroupId", AttributeValue::S("moved".into()))
        .send()
        .await
        .unwrap();
    row(AttributeValue::N("1".into()), &["10"], false)
        .item("MessageGroupId", AttributeValue::S("old".into()))
        .send()
        .await
        .unwrap();
    let out = store
        .commit(&[run("moved", "a3", "30"), run("old", "b2", "20")], &ctx)
        .await;
    assert!(out.iter().all(|o| o.error.is_none()), "{out:?}");
    assert_eq!(out[0].applied, vec![Applied::New { position: 3 }]);
    assert_eq!(out[1].applied, vec![Applied::New { position: 2 }]);
    for (g, last) in [("moved", "3"), ("old", "2")] {
        let r = fx.group_row(g).await;
        let r = r.item().expect("a group row");
        assert_eq!(
            r["LastPosition"],
            AttributeValue::S(last.into()),
            "{g}: {r:?}"
        );
        assert_eq!(r["Protocol"], AttributeValue::N("2".into()), "{g}: {r:?}");
    }
    // And the next claims of both go out batched and apply.
    let out = store
        .commit(&[run("moved", "a4", "40"), run("old", "b3", "30")], &ctx)
        .await;
    assert_eq!(out[0].applied, vec![Applied::New { position: 4 }]);
    assert_eq!(out[1].applied, vec![Applied::New { position: 3 }]);
}
