//! The worker against the real emulator: exactly once, in exact order, nothing lost.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_orders_over_five_groups_applied_once_in_send_order() {
    let emu = Emulator::start("hundred").await;
    let fx = Fixture::new(&emu, "hundred").await;
    let manifest = send_interleaved(&fx, 5, 20).await;
    let worker = fx.worker("w1", &[]);
    let records = fx.wait_records(100, Duration::from_secs(60)).await;
    assert_eq!(records.len(), 100);
    let report = fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    assert_eq!(report.accepted, 100);
    // Every record carries the whole shape.
    for r in &records {
        for k in order_worker::schema::ACCEPTED_ATTRIBUTES {
            assert!(r.contains_key(*k), "record lacks {k}: {r:?}");
        }
        assert_eq!(s(r, "TotalCents"), "2598");
        assert_eq!(s(r, "ProcessedBy"), "w1");
    }
    assert_eq!(
        metric(&worker, "order_worker_orders_total{status=\"accepted\"}").await,
        100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_bodies_are_rejected_without_blocking_their_group() {
    let emu = Emulator::start("malformed").await;
    let fx = Fixture::new(&emu, "malformed").await;
    let g = "cust-9";
    let huge = format!(
        r#"{{"order_id":"ord-huge","customer_id":"{g}","pad":"{}"}}"#,
        "x".repeat(255 * 1024)
    );
    let bodies: Vec<(&str, String)> = vec![
        ("first", order_body("ord-first", g)),
        ("notjson", "this is not json".into()),
        ("blank", " ".into()),
        (
            "wrongtypes",
            format!(
                r#"{{"order_id":"ord-types","customer_id":"{g}","items":"many","currency":1,"placed_at":true}}"#
            ),
        ),
        ("huge", huge),
        (
            "unknown",
            order_body("ord-unknown", g)
                .replace("\"currency\"", "\"coupon\":\"FREE\",\"currency\""),
        ),
        (
            "negative",
            order_body("ord-neg", g).replace("\"qty\":2", "\"qty\":-2"),
        ),
        (
            "overflow",
            order_body("ord-over", g).replace("1299", "184467440737095516150"),
        ),
        ("nonascii", order_body("ordé-1", g)),
        ("array", "[1,2,3]".into()),
        // The order's fields by position: serde would fill the struct from it, and each re-send (new dedup id)
        // was applied again under a new rejected:<MessageId> key.
        (
            "positional",
            format!(r#"["ord-pos","{g}",[["SKU-1",2,1299]],"EUR","2026-11-25T12:00:00Z"]"#),
        ),
        (
            "positional-again",
            format!(r#"["ord-pos","{g}",[["SKU-1",2,1299]],"EUR","2026-11-25T12:00:00Z"]"#),
        ),
        (
            "array-items",
            order_body("ord-arr-items", g).replace(
                r#"[{"sku":"SKU-1","qty":2,"unit_price_cents":1299}]"#,
                r#"[["SKU-1",2,1299]]"#,
            ),
        ),
        ("last", order_body("ord-last", g)),
    ];
    let msgs: Vec<(String, String)> = bodies
        .iter()
        .map(|(d, b)| (d.to_string(), b.clone()))
        .collect();
    fx.send(g, &msgs).await;
    let _worker = fx.worker("w1", &[]);
    let records = fx.wait_records(bodies.len(), Duration::from_secs(60)).await;
    let mut by_pos: Vec<_> = records
        .iter()
        .map(|r| {
            (
                s(r, "GroupPosition").parse::<u64>().unwrap(),
                s(r, "OrderID"),
                s(r, "Status"),
                s(r, "Reason"),
            )
        })
        .collect();
    by_pos.sort();
    assert_eq!(by_pos.len(), bodies.len());
    assert_eq!(by_pos.first().unwrap().1, "ord-first");
    assert_eq!(by_pos.first().unwrap().2, "ACCEPTED");
    assert_eq!(by_pos.last().unwrap().1, "ord-last");
    assert_eq!(by_pos.last().unwrap().2, "ACCEPTED");
    for (pos, id, status, reason) in &by_pos[1..by_pos.len() - 1] {
        assert_eq!(status, "REJECTED", "#{pos} {id}");
        assert!(!reason.is_empty(), "#{pos} {id} has no reason");
        assert!(reason.len() < 400, "#{pos} reason too long");
    }
    // Bodies with a usable id are recorded under it; the others under rejected:<MessageId>.
    let ids: Vec<&str> = by_pos.iter().map(|p| p.1.as_str()).collect();
    for id in [
        "ord-types",
        "ord-huge",
        "ord-unknown",
        "ord-neg",
        "ord-over",
        "ord-arr-items",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    assert_eq!(
        ids.iter().filter(|i| i.starts_with("rejected:")).count(),
        6,
        "{ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_and_releases_held_messages_at_once() {
    let emu = Emulator::start("sigterm").await;
    // Through the fault proxy: the local region's SQS ends a poll whose caller hung up and honours
    // ReceiveRequestAttemptId, as SQS does; the drain ends its poll and asks again (see spot.rs).
    let proxy = crate::common::proxy::FaultProxy::start("sigterm", &emu.endpoint).await;
    let fx = Fixture::new(&emu, "sigterm").await.through(proxy.url());
    let g = "cust-1";
    let orders = ids("ord", 10);
    fx.send_orders(g, &orders).await;
    let mut worker = fx.worker(
        "w1",
        &[
            "--work-delay",
            "1s",
            "--visibility-timeout",
            "100s",
            "--drain-timeout",
            "30s",
        ],
    );
    wait_for(
        "the worker to hold the group",
        Duration::from_secs(30),
        || async {
            (metric(&worker, "order_worker_messages_in_flight").await >= 10.0).then_some(())
        },
    )
    .await;
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit {status:?}\n{}", worker.log_text());
    let log = worker.log_text();
    assert!(log.contains("drain complete"), "{log}");
    let applied = fx.records().await.len();
    assert!(
        (1..10).contains(&applied),
        "{applied} applied: the in-flight order must finish and the rest be released"
    );
    // The released messages are available at once (not after the 100 s visibility timeout), next in order.
    let next = wait_for("the released messages", Duration::from_secs(5), || async {
        let m = fx.receive_now(10).await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    let first_body = next[0].body().unwrap();
    assert!(
        first_body.contains(&format!("\"{}\"", orders[applied])),
        "expected {} next, got {first_body}",
        orders[applied]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_a_thousand_orders_in_order() {
    let emu = Emulator::start("thousand").await;
    let fx = Fixture::new(&emu, "thousand").await;
    let manifest = send_interleaved(&fx, 20, 50).await;
    let _w1 = fx.worker("w1", &[]);
    let _w2 = fx.worker("w2", &[]);
    fx.wait_records(1000, Duration::from_secs(240)).await;
    let report = fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    assert_eq!(report.records, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_fail_at_start_naming_the_setting() {
    let emu = Emulator::start("settings").await;
    let fx = Fixture::new(&emu, "settings").await;
    let mut w = fx.worker(
        "not-fifo",
        &["--queue-url", "http://127.0.0.1:1/000000000000/orders"],
    );
    let status = w.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(2));
    assert!(w.log_text().contains("--queue-url"), "{}", w.log_text());
    let mut w = fx.worker(
        "vis",
        &["--visibility-timeout", "30s", "--drain-timeout", "60s"],
    );
    assert_eq!(w.wait_exit(Duration::from_secs(10)).await.code(), Some(2));
    assert!(
        w.log_text().contains("--visibility-timeout"),
        "{}",
        w.log_text()
    );
    // On AWS a role scoped to the stack's tables is refused any other table before anyone looks whether it
    // exists: the worker waits (a new role's grants can take a while to propagate) and the log names the
    // action and the table. The local region's IAM gate answers the same.
    emu.expect_denial("table/no-such-table");
    let w = fx.worker("table-denied", &["--orders-table", "no-such-table"]);
    wait_log(
        &w,
        "dynamodb:DescribeTable on resource: arn:aws:dynamodb:us-east-1:000000000000:table/no-such-table",
        Duration::from_secs(20),
    )
    .await;
    drop(w);
    // A role that may see every table (the deployer's): the missing table itself fails the start, naming it.
    let mut w = fx.worker_as("table", TEST_KEY, &["--orders-table", "no-such-table"]);
    assert!(!w.wait_exit(Duration::from_secs(20)).await.success());
    assert!(w.log_text().contains("no-such-table"), "{}", w.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_out_an_emulator_outage_instead_of_crashing() {
    let port = free_port();
    let mut emu = Emulator::start_on("outage", port).await;
    let fx = Fixture::new(&emu, "outage").await;
    fx.send_orders("cust-1", &ids("before", 5)).await;
    let worker = fx.worker("w1", &[]);
    fx.wait_records(5, Duration::from_secs(30)).await;
    // The emulator dies (its in-memory state with it); the worker must keep retrying, not exit.
    emu.stop();
    let mut worker = worker;
    // A failed receive is what the outage looks like from the worker: wait for it, then check it is alive.
    wait_for(
        "the worker to say what it waits for",
        Duration::from_secs(20),
        || async {
            worker
                .log_text()
                .contains("waiting_for=\"SQS\"")
                .then_some(())
        },
    )
    .await;
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "worker exited during the outage:\n{}",
        worker.log_text()
    );
    // The region comes back (empty, as an emulator restarts): the same queue and tables, new orders.
    let emu2 = Emulator::start_on("outage", port).await;
    // Until the stack is registered again the restarted region does not know the worker's key: AWS's answer to an
    // unknown key, which the worker waits out like any account-wide error.
    emu2.expect_denial(&format!("principal=key {}", worker_key(&fx.suffix)));
    let fx2 = Fixture::named(&emu2, "outage", &fx.suffix, &[]).await;
    fx2.send_orders("cust-1", &ids("after", 5)).await;
    fx2.wait_records(5, Duration::from_secs(60)).await;
    let report = fx2
        .audit(
            &ids("after", 5)
                .iter()
                .map(|i| sent(i, "cust-1", "accepted"))
                .collect::<Vec<_>>(),
        )
        .await;
    assert!(report.ok(), "{}", report.summary());
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "worker exited:\n{}",
        worker.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_wait_for_an_unreachable_region() {
    let mut emu = Emulator::start("unreachable").await;
    let fx = Fixture::new(&emu, "unreachable").await;
    emu.stop();
    let mut worker = fx.worker("w1", &[]);
    wait_for(
        "the worker to say what it waits for",
        Duration::from_secs(20),
        || async {
            worker
                .log_text()
                .contains("waiting for SQS/DynamoDB")
                .then_some(())
        },
    )
    .await;
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}\n{}", worker.log_text());
}

/// A region whose worker role is the deployed one edited by `plant`, expecting the gate to deny `action`, and a
/// fixture on it; None (said on stderr) unless the gate is strict: then nothing is refused, nothing to check.
async fn planted_worker_role(
    test: &str,
    action: &str,
    plant: impl Fn(&str) -> String,
) -> Option<(Emulator, Fixture)> {
    if iam_mode() != "strict" {
        eprintln!(
            "LOCAL_IAM={}: nothing is refused, nothing to check",
            iam_mode()
        );
        return None;
    }
    let emu = Emulator::start(test).await;
    emu.expect_denial(&format!("action={action}"));
    let dir = planted_policies(test, "worker", plant);
    let fx = Fixture::with_policies(&emu, test, &dir).await;
    Some((emu, fx))
}

/// The local region refuses what an AWS account refuses (issue 19): a worker whose role lacks
/// dynamodb:PartiQLInsert (the grant terraform/iam.tf once missed: every record is a PartiQL INSERT) records
/// nothing, holds its messages, and the gate names the action, the principal and the table.
#[tokio::test]
async fn a_worker_role_without_partiql_insert_is_refused_naming_the_action() {
    // InsertRecords' grant (on the orders table), not ClaimPositions' (the first claims, groups table).
    let plant = |t: &str| {
        t.replace(
            "\"Action\": \"dynamodb:PartiQLInsert\"",
            "\"Action\": \"dynamodb:PartiQLSelect\"",
        )
    };
    let Some((emu, fx)) = planted_worker_role("iam-plant", "dynamodb:PartiQLInsert", plant).await
    else {
        return;
    };
    let w = fx.worker("w1", &[]);
    fx.send_orders("g1", &ids("plant", 3)).await;
    let line = wait_for(
        "the gate to deny dynamodb:PartiQLInsert",
        Duration::from_secs(30),
        || async {
            emu.denials()
                .into_iter()
                .find(|l| l.contains("action=dynamodb:PartiQLInsert"))
        },
    )
    .await;
    assert!(
        line.contains(&format!("table/{}", fx.orders_table))
            && line.contains("assumed-role/order-worker"),
        "the denial names the worker role and the orders table: {line}"
    );
    // The worker saw AWS's answer (a per-statement AccessDenied: account-wide) and wrote nothing.
    wait_log(&w, "AccessDenied", Duration::from_secs(20)).await;
    assert!(fx.records().await.is_empty(), "nothing may be recorded");
}

/// A role granted the claim's UpdateItem but not dynamodb:PartiQLUpdate (the batched claims: a binary
/// deployed before its policy, issue 23): the batched claims are refused, go one by one as UpdateItem, and
/// every order is recorded once, in order; the log says what is missing, once.
#[tokio::test]
async fn a_worker_role_without_partiql_update_claims_one_by_one_and_records_everything() {
    let plant = |t: &str| t.replace(",\n        \"dynamodb:PartiQLUpdate\"", "");
    let Some((emu, fx)) =
        planted_worker_role("iam-noupdate", "dynamodb:PartiQLUpdate", plant).await
    else {
        return;
    };
    let mut manifest = Vec::new();
    // More orders per group than one run takes (16): every group needs a claim on its row, a batched one.
    for g in ["g1", "g2", "g3"] {
        let orders = ids(&format!("{g}-noupd"), 25);
        fx.send_orders(g, &orders).await;
        manifest.extend(orders.iter().map(|id| sent(id, g, "accepted")));
    }
    let w = fx.worker("w1", &[]);
    fx.wait_records(75, Duration::from_secs(90)).await;
    let report = fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    assert_eq!((report.records, report.markers), (75, 0));
    assert!(
        emu.denials()
            .iter()
            .any(|l| l.contains("action=dynamodb:PartiQLUpdate")),
        "no batched claim was sent"
    );
    let log = w.log_text();
    assert_eq!(
        log.matches("are dynamodb:PartiQLUpdate and dynamodb:PartiQLInsert granted")
            .count(),
        1,
        "{log}"
    );
}
