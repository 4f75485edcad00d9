//! The guarantees under faults in the services: the real worker against the emulator through chaos/proxy.py,
//! which makes one service and one operation fail the way AWS fails (error shapes, stalls, resets).
//! Each test is one observed failure of the guarantees; it failed before the engine was reworked.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::json;

use crate::common::proxy::rig;
use crate::common::*;

/// A `key=value` field of the worker's `drain complete` line.
fn drain_field(log: &str, key: &str) -> String {
    line_field(log, "drain complete", key)
}

async fn send_groups(
    fx: &Fixture,
    prefix: &str,
    groups: usize,
    per_group: usize,
) -> Vec<order_worker::verify::Sent> {
    let mut manifest = Vec::new();
    for g in 0..groups {
        let group = format!("cust-{prefix}-{g}");
        let ids = ids(&format!("{prefix}-{g}"), per_group);
        fx.send_orders(&group, &ids).await;
        manifest.extend(ids.iter().map(|id| sent(id, &group, "accepted")));
    }
    manifest
}

fn receive_counts(records: &[HashMap<String, AttributeValue>]) -> Vec<u64> {
    records
        .iter()
        .map(|r| s(r, "ReceiveCount").parse().unwrap_or(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_visibility_extension_does_not_lose_the_hold() {
    let r = rig("vis-fail").await;
    let g = "cust-vis";
    r.fx.send_orders(g, &ids("vis", 1)).await;
    // Visibility 12 s (heartbeat every 2 s, an extension due once less than 6 s is left), 16 s of work.
    let w = r.via.worker(
        "w-vis",
        &[
            "--visibility-timeout",
            "12s",
            "--drain-timeout",
            "5s",
            "--work-delay",
            "16s",
        ],
    );
    wait_for(
        "the worker to hold the message",
        Duration::from_secs(20),
        || async { (metric(&w, "order_worker_messages_in_flight").await == 1.0).then_some(()) },
    )
    .await;
    let held_at = Instant::now();
    // From now on only a second consumer can receive: the worker's own polls get no answer (otherwise its
    // poll would take a lapsed message back before anyone could see the hold was lost).
    r.proxy
        .rule(json!({"service": "sqs", "operation": "ReceiveMessage", "action": "stall"}))
        .await;
    // SQS is unavailable for visibility changes from 4.5 s to 8.5 s after the receive: around the first
    // extension (due between 6 and 8 s). It used to be recorded as done anyway, so the next try came after
    // the visibility had run out (12 s) and the message went to another consumer while still being worked on.
    tokio::time::sleep_until((held_at + Duration::from_millis(4500)).into()).await;
    let rule = r
        .proxy
        .rule(
            json!({"service": "sqs", "operation": "ChangeMessageVisibilityBatch",
                     "action": "error", "code": "ServiceUnavailable", "status": 503, "seconds": 4}),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let got =
            r.fx.sqs
                .receive_message()
                .queue_url(&r.fx.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .visibility_timeout(0)
                .send()
                .await
                .expect("receive");
        let stolen: Vec<&str> = got.messages().iter().filter_map(|m| m.body()).collect();
        assert!(
            stolen.is_empty(),
            "a second consumer received {stolen:?} while the worker held it ({:?} after the receive)\n{}",
            held_at.elapsed(),
            w.log_text()
        );
        if r.fx.records().await.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the order was not applied in 40 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let hits = r.proxy.rule_status(rule["id"].as_u64().unwrap()).await["hits"]
        .as_u64()
        .unwrap();
    assert!(
        hits >= 1,
        "no extension met the fault: the test proves nothing"
    );
    let log = w.log_text();
    assert!(!log.contains("the hold is lost"), "{log}");
    assert_eq!(receive_counts(&r.fx.records().await), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_under_an_sqs_that_never_answers_completes_the_hook_within_its_deadline() {
    let r = rig("sqs-stall").await;
    let sim = Sim::start("sqs-stall", &[]).await;
    let inst = sim.launch_external().await;
    send_groups(&r.fx, "stall", 4, 6).await;
    let mut w = r.via.worker_on(
        &sim,
        &inst,
        &[
            "--work-delay",
            "500ms",
            "--drain-timeout",
            "5s",
            "--visibility-timeout",
            "30s",
        ],
    );
    r.fx.wait_records(2, Duration::from_secs(30)).await;
    // SQS accepts connections and never answers, for every operation, from now on.
    r.proxy
        .rule(json!({"service": "sqs", "action": "stall"}))
        .await;
    let started = Instant::now();
    sim.interrupt(&inst.id, 60.0).await;
    let status = w.wait_exit(Duration::from_secs(40)).await;
    let took = started.elapsed();
    let log = w.log_text();
    assert!(status.success(), "{status:?}\n{log}");
    // The deadline is 5 s (--drain-timeout); the bound is the deadline plus 5 s (it was 400 s).
    assert!(
        took < Duration::from_secs(10),
        "exit {took:?} after the notice\n{log}"
    );
    assert!(log.contains("lifecycle hook completed"), "{log}");
    // Nothing could be released: the report must not say otherwise.
    assert_eq!(drain_field(&log, "released"), "0", "{log}");
    let took_ms: u64 = drain_field(&log, "took_ms").parse().unwrap();
    assert!(took_ms <= 8_000, "drain took_ms={took_ms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_delete_holds_up_neither_the_next_run_nor_the_drain_report() {
    let r = rig("delete-stall").await;
    // Deletes are never answered. SQS hands out no more of a group until its received messages are deleted,
    // so each group's messages must all come in the first receive: 3 groups of 3.
    r.proxy
        .rule(json!({"service": "sqs", "operation": "DeleteMessageBatch", "action": "stall"}))
        .await;
    let manifest = send_groups(&r.fx, "del", 3, 3).await;
    let mut w = r.via.worker(
        "w-del",
        &[
            "--work-delay",
            "500ms",
            "--drain-timeout",
            "3s",
            "--visibility-timeout",
            "30s",
        ],
    );
    wait_for(
        "the worker to hold all 9 messages",
        Duration::from_secs(20),
        || async { (metric(&w, "order_worker_messages_in_flight").await == 9.0).then_some(()) },
    )
    .await;
    // Every run is written although no delete is ever answered: a group's next run does not wait for the
    // delete of the one before (each order is its own run: 500 ms of work is longer than a run lingers).
    r.fx.wait_records(9, Duration::from_secs(20)).await;
    let report = r.fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    assert!(r.proxy.count("sqs", "DeleteMessageBatch").await >= 1);
    w.signal("TERM");
    let status = w.wait_exit(Duration::from_secs(15)).await;
    let log = w.log_text();
    assert!(status.success(), "{log}");
    // Committed work is not reported (or released) as not committed when the drain's deadline cuts the deletes.
    assert!(!log.contains("run not committed"), "{log}");
    // A routine SIGTERM is not a warning.
    let draining = log
        .lines()
        .find(|l| l.contains(" draining "))
        .expect("draining line");
    assert!(draining.contains(" INFO "), "{draining}");
    assert_eq!(drain_field(&log, "released"), "0", "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_by_dynamodb_pauses_new_work_keeps_what_is_held_and_burns_no_receive_count() {
    let r = rig("ddb-denied").await;
    let w = r.via.worker(
        "w-denied",
        &["--visibility-timeout", "10s", "--drain-timeout", "5s"],
    );
    wait_log(&w, "order-worker running", Duration::from_secs(30)).await;
    // An IAM mistake for 8 s: every DynamoDB call is refused.
    r.proxy
        .rule(json!({"service": "dynamodb", "action": "error",
                     "code": "AccessDeniedException", "status": 400, "seconds": 8}))
        .await;
    let manifest = send_groups(&r.fx, "deny", 3, 5).await;
    wait_for(
        "the worker to say it is not ready",
        Duration::from_secs(20),
        || async { (readyz(&w).await == 503).then_some(()) },
    )
    .await;
    wait_log(&w, "DynamoDB refuses every write", Duration::from_secs(20)).await;
    // Nothing is released (which would burn a receive count toward the DLQ) while the error lasts.
    assert_eq!(metric(&w, "order_worker_releases_total").await, 0.0);
    r.fx.wait_records(15, Duration::from_secs(60)).await;
    let report = r.fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    assert!(
        receive_counts(&r.fx.records().await)
            .iter()
            .all(|c| *c == 1),
        "a message was received again: {:?}",
        receive_counts(&r.fx.records().await)
    );
    wait_for("ready again", Duration::from_secs(10), || async {
        (readyz(&w).await == 200).then_some(())
    })
    .await;
    assert!(w.log_text().contains("DynamoDB answers again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_by_sqs_makes_the_worker_unready_until_it_clears() {
    let r = rig("sqs-denied").await;
    let w = r.via.worker("w-sqsdenied", &[]);
    wait_log(&w, "order-worker running", Duration::from_secs(30)).await;
    r.proxy
        .rule(
            json!({"service": "sqs", "operation": "ReceiveMessage", "action": "error",
                     "code": "AccessDenied", "status": 403, "seconds": 5}),
        )
        .await;
    wait_for(
        "the worker to say it is not ready",
        Duration::from_secs(20),
        || async { (readyz(&w).await == 503).then_some(()) },
    )
    .await;
    wait_log(&w, "SQS refuses this worker", Duration::from_secs(20)).await;
    let manifest = send_groups(&r.fx, "sqsdeny", 2, 3).await;
    r.fx.wait_records(6, Duration::from_secs(60)).await;
    let report = r.fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    wait_for("ready again", Duration::from_secs(10), || async {
        (readyz(&w).await == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_dynamodb_refuses_on_its_own_fails_alone() {
    let r = rig("ddb-refused").await;
    // The run's batch of inserts is refused as a whole, then the first record's own insert: that record (and
    // only it) cannot be written as it is. (The claims' batches, on the groups table, go through.)
    r.proxy
        .rule(
            json!({"service": "dynamodb", "operation": "BatchExecuteStatement", "action": "error",
                     "table": r.fx.orders_table, "code": "ValidationException", "status": 400, "count": 2,
                     "message": "Item size has exceeded the maximum allowed size"}),
        )
        .await;
    let g = "cust-refused";
    let order_ids = ids("ref", 5);
    r.fx.send_orders(g, &order_ids).await;
    let w = r.via.worker("w-refused", &[]);
    let records = r.fx.wait_records(5, Duration::from_secs(30)).await;
    // The records committed while isolating the refused one are new, not "duplicates" of themselves.
    assert_eq!(
        metric(&w, "order_worker_orders_total{status=\"duplicate\"}").await,
        0.0
    );
    let mut by_pos: Vec<(u64, String, String, String)> = records
        .iter()
        .map(|x| {
            (
                s(x, "GroupPosition").parse().unwrap(),
                s(x, "OrderID"),
                s(x, "Status"),
                s(x, "Reason"),
            )
        })
        .collect();
    by_pos.sort();
    let got: Vec<(u64, &str)> = by_pos.iter().map(|p| (p.0, p.1.as_str())).collect();
    let want: Vec<(u64, &str)> = order_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (i as u64 + 1, id.as_str()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(by_pos[0].2, "REJECTED");
    assert!(
        by_pos[0].3.contains("DynamoDB refused the record"),
        "{by_pos:?}"
    );
    assert!(by_pos[1..].iter().all(|p| p.2 == "ACCEPTED"), "{by_pos:?}");
}

async fn put_item(fx: &Fixture, table: &str, item: &[(&str, AttributeValue)]) {
    let mut req = fx.ddb.put_item().table_name(table);
    for (k, v) in item {
        req = req.item(*k, v.clone());
    }
    req.send().await.expect("put item");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_row_at_position_zero_is_a_row_not_a_hot_loop() {
    let r = rig("pos-zero").await;
    let g = "cust-zero";
    // Written by a tool or a reset: the group row exists with LastPosition 0.
    put_item(
        &r.fx,
        &r.fx.groups_table,
        &[
            ("MessageGroupId", AttributeValue::S(g.into())),
            ("LastPosition", AttributeValue::N("0".into())),
        ],
    )
    .await;
    let order_ids = ids("zero", 5);
    r.fx.send_orders(g, &order_ids).await;
    let _w = r.via.worker("w-zero", &[]);
    r.fx.wait_records(5, Duration::from_secs(30)).await;
    let manifest: Vec<_> = order_ids.iter().map(|id| sent(id, g, "accepted")).collect();
    let report = r.fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    // It took 1,001 transactions in 3 s before claims.
    let writes = r.proxy.count("dynamodb", "UpdateItem").await
        + r.proxy.count("dynamodb", "BatchExecuteStatement").await;
    assert!(writes <= 10, "{writes} write calls for 5 orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_group_row_is_named_and_waited_out_without_a_hot_loop() {
    let r = rig("pos-bad").await;
    let g = "cust-bad";
    put_item(
        &r.fx,
        &r.fx.groups_table,
        &[
            ("MessageGroupId", AttributeValue::S(g.into())),
            ("LastPosition", AttributeValue::S("abc".into())),
        ],
    )
    .await;
    let order_ids = ids("bad", 3);
    r.fx.send_orders(g, &order_ids).await;
    // Another group, committed in the same calls: it must not wait for the bad one.
    let good = "cust-good";
    let good_ids = ids("good", 3);
    r.fx.send_orders(good, &good_ids).await;
    let w = r.via.worker("w-bad", &[]);
    wait_log(&w, "LastPosition is", Duration::from_secs(20)).await;
    r.fx.wait_records(3, Duration::from_secs(20)).await;
    let early: Vec<String> =
        r.fx.records()
            .await
            .iter()
            .map(|x| s(x, "MessageGroupId"))
            .collect();
    assert!(early.iter().all(|x| x == good), "{early:?}");
    assert!(
        w.log_text().contains(&r.fx.groups_table),
        "the item is not named"
    );
    let count = || async {
        r.proxy.count("dynamodb", "BatchGetItem").await
            + r.proxy.count("dynamodb", "UpdateItem").await
            + r.proxy.count("dynamodb", "BatchExecuteStatement").await
    };
    let before = count().await;
    // A rate needs a window: 4 s of waiting out bad data must cost a handful of reads, not thousands.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let calls = count().await - before;
    assert!(calls <= 12, "{calls} DynamoDB calls in 4 s");
    // The log points to the repair, not to deleting the item (which restarts a group's positions at 1).
    let log = w.log_text();
    assert!(
        log.contains("order-worker repair --group cust-bad"),
        "{log}"
    );
    assert!(!log.contains("delete the item"), "{log}");
    // The operator runs it: the dry run writes nothing, --apply rebuilds the row from the group's records
    // (none here) and the group goes on by itself.
    let repair = |apply: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_order-worker"));
        cmd.env_clear()
            .envs(r.fx.operator_env())
            .args(["repair", "--group", g]);
        if apply {
            cmd.arg("--apply");
        }
        let out = cmd.output().expect("order-worker repair");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let plan = repair(false);
    assert!(
        plan.contains("LastPosition \"abc\" (S)") && plan.contains("dry run"),
        "{plan}"
    );
    assert_eq!(r.fx.records().await.len(), 3);
    assert!(repair(true).contains("written"));
    r.fx.wait_records(6, Duration::from_secs(40)).await;
    let manifest: Vec<_> = order_ids
        .iter()
        .map(|id| sent(id, g, "accepted"))
        .chain(good_ids.iter().map(|id| sent(id, good, "accepted")))
        .collect();
    let report = r.fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_written_by_something_else_is_a_logged_conflict_and_the_group_goes_on() {
    let r = rig("foreign").await;
    let g = "cust-foreign";
    // An item with the first order's id but no PayloadSha256 (not written by this worker).
    let order_ids = ids("foreign", 3);
    put_item(
        &r.fx,
        &r.fx.orders_table,
        &[
            ("OrderID", AttributeValue::S(order_ids[0].clone())),
            ("MessageGroupId", AttributeValue::S("elsewhere".into())),
        ],
    )
    .await;
    r.fx.send_orders(g, &order_ids).await;
    let w = r.via.worker("w-foreign", &[]);
    r.fx.wait_records(3, Duration::from_secs(30)).await;
    // The lines are written as the commit is answered, a moment after the records appear.
    wait_log(&w, "no PayloadSha256", Duration::from_secs(10)).await;
    wait_log(&w, "conflict:", Duration::from_secs(10)).await;
    wait_for("the conflict counted", Duration::from_secs(10), || async {
        (metric(&w, "order_worker_orders_total{status=\"conflict\"}").await == 1.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_does_not_take_back_what_it_released() {
    let r = rig("takeback").await;
    let manifest = send_groups(&r.fx, "back", 3, 8).await;
    // Room for more groups, so a long poll is out when the drain begins. Through the proxy, the local region's
    // SQS: the drain ends that poll and asks again with its attempt id, which the bare emulator ignores (its
    // poll would go on for the dead connection and take back what the drain released).
    let mut a = r.via.worker(
        "w-back-a",
        &[
            "--work-delay",
            "1s",
            "--wait-time",
            "5s",
            "--max-groups",
            "10",
        ],
    );
    r.fx.wait_records(3, Duration::from_secs(30)).await;
    a.signal("TERM");
    assert!(
        a.wait_exit(Duration::from_secs(30)).await.success(),
        "{}",
        a.log_text()
    );
    let released: u64 = drain_field(&a.log_text(), "released").parse().unwrap();
    assert!(
        released > 0,
        "nothing was held: the test proves nothing\n{}",
        a.log_text()
    );
    let _b = r.via.worker("w-back-b", &[]);
    let records = r.fx.wait_records(24, Duration::from_secs(60)).await;
    let report = r.fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    // Received by A once and by B once at most: A's own poll must not have taken them back in between.
    let counts = receive_counts(&records);
    assert!(counts.iter().all(|c| *c <= 2), "receive counts {counts:?}");
    // Each message is applied by A or released by A at most once: the issue saw released=34 for 24 held.
    let by_a = records
        .iter()
        .filter(|x| s(x, "ProcessedBy") == "w-back-a")
        .count() as u64;
    assert!(
        released + by_a <= 24,
        "A applied {by_a} and released {released} of 24 messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_still_waiting_to_start_completes_its_hook_on_an_interruption() {
    // Found by the long soak: a worker that started during a DynamoDB denial waited in its start-up checks,
    // never saw the interruption notice, and its instance waited for the hook's timeout.
    let r = rig("start-denied").await;
    let sim = Sim::start("start-denied", &[]).await;
    let inst = sim.launch_external().await;
    r.proxy
        .rule(json!({"service": "dynamodb", "action": "error",
                     "code": "AccessDeniedException", "status": 400}))
        .await;
    let mut w = r.via.worker_on(&sim, &inst, &[]);
    wait_log(
        &w,
        "waiting for SQS/DynamoDB before starting",
        Duration::from_secs(20),
    )
    .await;
    sim.interrupt(&inst.id, 60.0).await;
    let status = w.wait_exit(Duration::from_secs(20)).await;
    let log = w.log_text();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("lifecycle hook completed"), "{log}");
    let events = sim.events(&inst.id).await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("CompleteLifecycleAction")),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_to_a_claim_and_to_inserts_apply_nothing_twice_and_leave_no_gap() {
    let r = rig("lost-answers").await;
    // The first claim (a batched INSERT of the group's row) and the first batch of inserts are applied, and
    // their answers lost (the connection is reset instead): the claim is sent again unchanged, its INSERT
    // finds the row taken and it goes alone (UpdateItem, whose first answer is lost too), which finds its own
    // claim in the row; the inserts are sent again and find their own records.
    let mut rules = Vec::new();
    for table in [&r.fx.groups_table, &r.fx.orders_table] {
        let rule = json!({"service": "dynamodb", "operation": "BatchExecuteStatement", "table": table,
                          "action": "pass-then-reset", "count": 1});
        rules.push(r.proxy.rule(rule).await);
    }
    let rule = json!({"service": "dynamodb", "operation": "UpdateItem", "action": "pass-then-reset", "count": 1});
    rules.push(r.proxy.rule(rule).await);
    let g = "cust-lost";
    let order_ids = ids("lost", 8);
    r.fx.send_orders(g, &order_ids).await;
    let w = r.via.worker("w-lost", &[]);
    r.fx.wait_records(8, Duration::from_secs(60)).await;
    let manifest: Vec<_> = order_ids.iter().map(|id| sent(id, g, "accepted")).collect();
    let report = r.fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    // Our own earlier writes are recognised as ours: no markers, no "duplicates".
    assert_eq!(
        (report.records, report.markers),
        (8, 0),
        "{}",
        report.summary()
    );
    wait_for("every order counted", Duration::from_secs(10), || async {
        (metric(&w, "order_worker_orders_total{status=\"accepted\"}").await == 8.0).then_some(())
    })
    .await;
    assert_eq!(
        metric(&w, "order_worker_orders_total{status=\"duplicate\"}").await,
        0.0
    );
    // The three faults happened.
    for rule in rules {
        let status = r.proxy.rule_status(rule["id"].as_u64().unwrap()).await;
        assert_eq!(status["hits"], 1, "a fault did not happen: {status}");
    }
}
