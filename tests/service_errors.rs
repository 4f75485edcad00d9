//! A service's error is not an order's fault, live: the real worker behind the fault proxy, the errors in
//! DynamoDB's own wire shape. A claim that meets a transaction is retried at once (it was released for 60 s);
//! a whole `BatchExecuteStatement` refused with a 4xx the worker does not know is waited out, never recorded as
//! the order's REJECTED verdict (it was, with one statement in the batch).

mod common;

use std::time::Duration;

use common::proxy::FaultProxy;
use common::*;
use serde_json::json;

struct Rig {
    _emu: Emulator,
    fx: Fixture,
    via: Fixture,
    proxy: FaultProxy,
}

async fn rig(test: &str) -> Rig {
    let emu = Emulator::start(test).await;
    let fx = Fixture::new(&emu, test).await;
    let proxy = FaultProxy::start(test, &emu.endpoint).await;
    let via = fx.through(proxy.url());
    Rig {
        _emu: emu,
        fx,
        via,
        proxy,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_meets_a_transaction_is_retried_not_released() {
    let r = rig("claim-txconflict").await;
    r.proxy
        .rule(
            json!({"service": "dynamodb", "operation": "UpdateItem", "action": "error",
                     "code": "TransactionConflictException", "status": 400, "count": 2}),
        )
        .await;
    let g = "cust-tx";
    let order_ids = ids("tx", 3);
    r.fx.send_orders(g, &order_ids).await;
    let w = r.via.worker("w-tx", &[]);
    // Released for 60 s it would take a minute; retried, a few seconds.
    r.fx.wait_records(3, Duration::from_secs(20)).await;
    let manifest: Vec<_> = order_ids.iter().map(|id| sent(id, g, "accepted")).collect();
    let report = r.fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    assert!(!w.log_text().contains("commit-failed"), "{}", w.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_4xx_of_a_whole_batch_is_not_an_orders_verdict() {
    let r = rig("batch-unknown-4xx").await;
    r.proxy
        .rule(
            json!({"service": "dynamodb", "operation": "BatchExecuteStatement", "action": "error",
                     "code": "SomeNewServiceException", "status": 400, "count": 1,
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
