//! chaos/proxy.py against the real emulator and the real SDK clients: each fault arrives the way AWS's own
//! failure does (the same error code, the same retry classification, the same transport error), for exactly
//! the service and operation a rule names.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;
use serde_json::json;

use crate::common::proxy::FaultProxy;
use crate::common::*;

/// One test's emulator, the proxy in front of it, and a fixture whose own clients talk to the emulator directly
/// (setup and checks are not under test).
struct Setup {
    fx: Fixture,
    proxy: FaultProxy,
    _emu: Emulator,
}

async fn setup(test: &str) -> Setup {
    let emu = Emulator::start(test).await;
    let proxy = FaultProxy::start(test, &emu.endpoint).await;
    let fx = Fixture::new(&emu, test).await;
    Setup {
        fx,
        proxy,
        _emu: emu,
    }
}

impl Setup {
    async fn sqs(&self, attempts: u32, timeout: Option<Duration>) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.proxy.sdk(attempts, timeout).await)
    }

    async fn ddb(&self, attempts: u32, timeout: Option<Duration>) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.proxy.sdk(attempts, timeout).await)
    }

    async fn item_exists(&self, id: &str) -> bool {
        self.fx
            .ddb
            .get_item()
            .table_name(&self.fx.orders_table)
            .key("OrderID", AttributeValue::S(id.into()))
            .consistent_read(true)
            .send()
            .await
            .expect("get item directly")
            .item()
            .is_some()
    }
}

/// What kind of failure the caller saw.
fn kind<E, R>(e: &SdkError<E, R>) -> &'static str {
    match e {
        SdkError::ConstructionFailure(_) => "construction",
        SdkError::TimeoutError(_) => "timeout",
        SdkError::DispatchFailure(_) => "dispatch",
        SdkError::ResponseError(_) => "response",
        SdkError::ServiceError(_) => "service",
        _ => "other",
    }
}

/// A transport failure (the connection reset under the call), not an answer from the service.
fn assert_transport<E: std::fmt::Debug, R: std::fmt::Debug>(e: &SdkError<E, R>) {
    assert!(
        matches!(kind(e), "dispatch" | "response"),
        "expected a dispatch/response failure, got {e:?}"
    );
}

fn status_of<E>(
    e: &SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> u16 {
    e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0)
}

async fn receive(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
) -> Result<
    aws_sdk_sqs::operation::receive_message::ReceiveMessageOutput,
    SdkError<aws_sdk_sqs::operation::receive_message::ReceiveMessageError>,
> {
    sqs.receive_message()
        .queue_url(url)
        .wait_time_seconds(0)
        .max_number_of_messages(10)
        .send()
        .await
}

async fn send(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    id: &str,
) -> Result<(), SdkError<aws_sdk_sqs::operation::send_message::SendMessageError>> {
    sqs.send_message()
        .queue_url(url)
        .message_body(order_body(id, "cust-1"))
        .message_group_id("cust-1")
        .message_deduplication_id(id)
        .send()
        .await
        .map(|_| ())
}

async fn list_queues(
    sqs: &aws_sdk_sqs::Client,
) -> Result<(), SdkError<aws_sdk_sqs::operation::list_queues::ListQueuesError>> {
    sqs.list_queues().send().await.map(|_| ())
}

async fn put(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    id: &str,
) -> Result<(), SdkError<aws_sdk_dynamodb::operation::put_item::PutItemError>> {
    ddb.put_item()
        .table_name(table)
        .item("OrderID", AttributeValue::S(id.into()))
        .send()
        .await
        .map(|_| ())
}

/// A conditional Put in a transaction with a ClientRequestToken: an idempotent write whose replay shows whether a
/// lost answer's request was applied (the worker's own writes are claims and PartiQL inserts; see faults.rs).
async fn transact(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    id: &str,
    token: &str,
) -> Result<(), SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError>>
{
    let item = Put::builder()
        .table_name(table)
        .item("OrderID", AttributeValue::S(id.into()))
        .condition_expression("attribute_not_exists(OrderID)")
        .build()
        .unwrap();
    ddb.transact_write_items()
        .transact_items(TransactWriteItem::builder().put(item).build())
        .client_request_token(token)
        .send()
        .await
        .map(|_| ())
}

/// Add a one-shot error rule.
async fn error_once(proxy: &FaultProxy, service: &str, operation: &str, code: &str) -> u64 {
    proxy
        .rule(json!({"service": service, "operation": operation, "action": "error", "code": code, "count": 1}))
        .await["id"]
        .as_u64()
        .unwrap()
}

// ---- error shapes ---------------------------------------------------------------------------------------------

/// (code asked of the proxy, HTTP status, the SDK's `.code()`, retried by the SDK's standard classifiers)
const SQS_CODES: &[(&str, u16, &str, bool)] = &[
    ("AccessDenied", 400, "AccessDenied", false),
    ("RequestThrottled", 400, "RequestThrottled", true),
    ("ThrottlingException", 400, "ThrottlingException", true),
    ("InternalFailure", 500, "InternalFailure", true),
    ("ServiceUnavailable", 503, "ServiceUnavailable", true),
    // SQS is query compatible: the code comes from `x-amzn-query-error`, as against real SQS.
    (
        "QueueDoesNotExist",
        400,
        "AWS.SimpleQueueService.NonExistentQueue",
        false,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_errors_have_real_sqs_codes_and_retry_class() {
    let t = setup("proxy_sqs_errors").await;
    let once = t.sqs(1, None).await;
    let twice = t.sqs(2, None).await;
    for &(code, status, sdk_code, retryable) in SQS_CODES {
        error_once(&t.proxy, "sqs", "ReceiveMessage", code).await;
        let err = receive(&once, &t.fx.queue_url).await.expect_err(code);
        assert_eq!(kind(&err), "service", "{code}: {err:?}");
        assert_eq!(err.code(), Some(sdk_code), "{code}: {err:?}");
        assert_eq!(status_of(&err), status, "{code}");
        assert!(
            !err.message().unwrap_or_default().is_empty(),
            "{code}: no message"
        );
        match code {
            "QueueDoesNotExist" => assert!(err.into_service_error().is_queue_does_not_exist()),
            "RequestThrottled" => assert!(err.into_service_error().is_request_throttled()),
            _ => {}
        }

        // The SDK's own retry classification: with two attempts, a retryable failure is retried and the second
        // attempt passes; anything else reaches the caller after one request.
        let before = t.proxy.count("sqs", "ReceiveMessage").await;
        error_once(&t.proxy, "sqs", "ReceiveMessage", code).await;
        let r = receive(&twice, &t.fx.queue_url).await;
        let requests = t.proxy.count("sqs", "ReceiveMessage").await - before;
        assert_eq!(r.is_ok(), retryable, "{code}: {r:?}");
        assert_eq!(requests, if retryable { 2 } else { 1 }, "{code}");
    }
}

const DDB_CODES: &[(&str, u16, bool)] = &[
    ("AccessDeniedException", 400, false),
    ("ResourceNotFoundException", 400, false),
    ("ThrottlingException", 400, true),
    ("ProvisionedThroughputExceededException", 400, true),
    ("RequestLimitExceeded", 400, true),
    ("UnrecognizedClientException", 400, false),
    ("ExpiredTokenException", 400, false),
    ("InternalServerError", 500, true),
    ("ValidationException", 400, false),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_errors_have_real_dynamodb_codes_and_retry_class() {
    let t = setup("proxy_ddb_errors").await;
    let once = t.ddb(1, None).await;
    let twice = t.ddb(2, None).await;
    let table = t.fx.orders_table.clone();
    for (i, &(code, status, retryable)) in DDB_CODES.iter().enumerate() {
        error_once(&t.proxy, "dynamodb", "TransactWriteItems", code).await;
        let err = transact(&once, &table, &format!("a-{i}"), &format!("ta-{i}"))
            .await
            .expect_err(code);
        assert_eq!(kind(&err), "service", "{code}: {err:?}");
        assert_eq!(err.code(), Some(code), "{code}: {err:?}");
        assert_eq!(status_of(&err), status, "{code}");
        if code == "ValidationException" {
            assert_eq!(
                err.message(),
                Some("Item size has exceeded the maximum allowed size")
            );
        }
        if code == "ResourceNotFoundException" {
            assert!(err.into_service_error().is_resource_not_found_exception());
        }
        assert!(!t.item_exists(&format!("a-{i}")).await, "{code}: applied");

        let before = t.proxy.count("dynamodb", "TransactWriteItems").await;
        error_once(&t.proxy, "dynamodb", "TransactWriteItems", code).await;
        let r = transact(&twice, &table, &format!("b-{i}"), &format!("tb-{i}")).await;
        let requests = t.proxy.count("dynamodb", "TransactWriteItems").await - before;
        assert_eq!(r.is_ok(), retryable, "{code}: {r:?}");
        assert_eq!(requests, if retryable { 2 } else { 1 }, "{code}");
    }
}

const ASG_CODES: &[(&str, u16, bool)] = &[
    ("ValidationError", 400, false),
    ("Throttling", 400, true),
    ("ResourceContention", 500, true),
    ("InternalFailure", 500, true),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaling_errors_have_the_query_protocol_shape() {
    let t = setup("proxy_asg_errors").await;
    let once = aws_sdk_autoscaling::Client::new(&t.proxy.sdk(1, None).await);
    let twice = aws_sdk_autoscaling::Client::new(&t.proxy.sdk(2, None).await);
    let complete = |c: &aws_sdk_autoscaling::Client| {
        c.complete_lifecycle_action()
            .auto_scaling_group_name("order-workers")
            .lifecycle_hook_name("drain")
            .instance_id("i-0123456789abcdef0")
            .lifecycle_action_result("CONTINUE")
            .send()
    };
    for &(code, status, retryable) in ASG_CODES {
        error_once(&t.proxy, "autoscaling", "CompleteLifecycleAction", code).await;
        let err = complete(&once).await.expect_err(code);
        assert_eq!(kind(&err), "service", "{code}: {err:?}");
        assert_eq!(err.code(), Some(code), "{code}: {err:?}");
        assert_eq!(status_of(&err), status, "{code}");
        assert!(
            !err.message().unwrap_or_default().is_empty(),
            "{code}: no message"
        );

        let before = t
            .proxy
            .count("autoscaling", "CompleteLifecycleAction")
            .await;
        error_once(&t.proxy, "autoscaling", "CompleteLifecycleAction", code).await;
        let r = complete(&twice).await;
        let requests = t
            .proxy
            .count("autoscaling", "CompleteLifecycleAction")
            .await
            - before;
        assert_eq!(r.is_ok(), retryable, "{code}: {r:?}");
        assert_eq!(requests, if retryable { 2 } else { 1 }, "{code}");
    }
    // A rule may set the status and message itself.
    t.proxy
        .rule(
            json!({"service": "autoscaling", "action": "error", "code": "ValidationError",
                     "message": "No active Lifecycle Action found", "status": 400, "count": 1}),
        )
        .await;
    let err = complete(&once).await.expect_err("custom message");
    assert_eq!(err.message(), Some("No active Lifecycle Action found"));
}

// ---- stall, reset, delay, pass-then-reset ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_holds_the_request_until_the_client_gives_up() {
    let t = setup("proxy_stall").await;
    let id = t
        .proxy
        .rule(json!({"service": "sqs", "operation": "ReceiveMessage", "action": "stall"}))
        .await["id"]
        .as_u64()
        .unwrap();
    let short = t.sqs(1, Some(Duration::from_secs(1))).await;
    let started = Instant::now();
    let err = receive(&short, &t.fx.queue_url).await.expect_err("stalled");
    assert_eq!(kind(&err), "timeout", "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(t.proxy.rule_status(id).await["hits"], 1);
    // The client hung up on the held request: the proxy notices and never forwards it.
    wait_for(
        "the proxy to see the hang-up",
        Duration::from_secs(10),
        || async { (t.proxy.status().await["abandoned"] == 1).then_some(()) },
    )
    .await;
    // Other operations of the same service go on meanwhile.
    short
        .get_queue_attributes()
        .queue_url(&t.fx.queue_url)
        .send()
        .await
        .expect("another operation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_for_seconds_answers_late_and_clear_releases_a_held_request() {
    let t = setup("proxy_stall_release").await;
    let sqs = t.sqs(1, Some(Duration::from_secs(30))).await;

    // A stall that lasts 1.5 s: the held request is forwarded when the rule ends, so the call succeeds late.
    t.proxy
        .rule(json!({"service": "sqs", "operation": "GetQueueAttributes", "action": "stall", "seconds": 1.5}))
        .await;
    let started = Instant::now();
    sqs.get_queue_attributes()
        .queue_url(&t.fx.queue_url)
        .send()
        .await
        .expect("answered once the stall ends");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );

    // A stall without an end holds until DELETE /rules, then the request goes through (and is applied).
    let id = t
        .proxy
        .rule(json!({"service": "sqs", "operation": "SendMessage", "action": "stall"}))
        .await["id"]
        .as_u64()
        .unwrap();
    let held = {
        let (sqs, url) = (sqs.clone(), t.fx.queue_url.clone());
        tokio::spawn(async move { send(&sqs, &url, "held-1").await })
    };
    wait_for("the send to be held", Duration::from_secs(10), || async {
        (t.proxy.rule_status(id).await["held"] == 1).then_some(())
    })
    .await;
    assert!(
        t.fx.receive_now(10).await.is_empty(),
        "forwarded while held"
    );
    t.proxy.clear().await;
    tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("released by clear")
        .unwrap()
        .expect("the released send succeeds");
    assert_eq!(t.fx.receive_now(10).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_fails_the_call_in_transport_and_applies_nothing() {
    let t = setup("proxy_reset").await;
    let sqs = t.sqs(1, None).await;
    t.proxy
        .rule(json!({"service": "sqs", "operation": "SendMessage", "action": "reset", "count": 1}))
        .await;
    let err = send(&sqs, &t.fx.queue_url, "r-1").await.expect_err("reset");
    assert_transport(&err);
    assert!(
        t.fx.receive_now(10).await.is_empty(),
        "a reset request must not be forwarded"
    );
    send(&sqs, &t.fx.queue_url, "r-2")
        .await
        .expect("the rule is spent");
    assert_eq!(t.proxy.count("sqs", "SendMessage").await, 2);
    assert_eq!(t.proxy.status().await["injected"]["reset"], 1);
    let got = t.fx.receive_now(10).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].body().unwrap().contains("r-2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_then_reset_applies_the_write_but_loses_the_answer() {
    let t = setup("proxy_pass_then_reset").await;
    let ddb = t.ddb(1, None).await;
    let table = t.fx.orders_table.clone();
    t.proxy
        .rule(
            json!({"service": "dynamodb", "operation": "TransactWriteItems",
                     "action": "pass-then-reset", "count": 1}),
        )
        .await;
    let err = transact(&ddb, &table, "lost-1", "token-lost-1")
        .await
        .expect_err("the answer is lost");
    assert_transport(&err);
    assert!(t.item_exists("lost-1").await, "the write was applied");
    // The caller retries the same transaction with the same token: DynamoDB answers it as done, where a new
    // token would fail the attribute_not_exists condition: the proxy applied the request and only lost its answer.
    transact(&ddb, &table, "lost-1", "token-lost-1")
        .await
        .expect("the replay with the same token succeeds");
    assert_eq!(t.proxy.count("dynamodb", "TransactWriteItems").await, 2);

    // The same for SQS: the message is enqueued although the sender saw an error.
    let sqs = t.sqs(1, None).await;
    t.proxy
        .rule(json!({"service": "sqs", "operation": "SendMessage", "action": "pass-then-reset", "count": 1}))
        .await;
    assert_transport(
        &send(&sqs, &t.fx.queue_url, "lost-2")
            .await
            .expect_err("lost"),
    );
    assert_eq!(t.fx.receive_now(10).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_answers_late_after_applying() {
    let t = setup("proxy_delay").await;
    let table = t.fx.orders_table.clone();
    t.proxy
        .rule(
            json!({"service": "dynamodb", "operation": "PutItem", "action": "delay",
                     "delay_seconds": 1.0, "count": 2}),
        )
        .await;
    // A client that gives up first sees a timeout, yet the write was applied.
    let impatient = t.ddb(1, Some(Duration::from_millis(300))).await;
    let err = put(&impatient, &table, "d-1").await.expect_err("too slow");
    assert_eq!(kind(&err), "timeout", "{err:?}");
    wait_for("the delayed write", Duration::from_secs(5), || async {
        t.item_exists("d-1").await.then_some(())
    })
    .await;
    // A patient one gets the answer, late.
    let patient = t.ddb(1, Some(Duration::from_secs(10))).await;
    let started = Instant::now();
    put(&patient, &table, "d-2").await.expect("late answer");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    // Spent: no delay now.
    let started = Instant::now();
    put(&patient, &table, "d-3").await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(900));
}

// ---- count, seconds, probability, scope -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_seconds_and_probability_bound_a_rule() {
    let t = setup("proxy_rule_bounds").await;
    let sqs = t.sqs(1, None).await;

    // count: exactly the next N matching requests.
    let id = t
        .proxy
        .rule(
            json!({"service": "sqs", "operation": "ListQueues", "action": "error",
                     "code": "InternalFailure", "count": 3}),
        )
        .await["id"]
        .as_u64()
        .unwrap();
    let mut results = Vec::new();
    for _ in 0..5 {
        results.push(list_queues(&sqs).await.is_ok());
    }
    assert_eq!(results, [false, false, false, true, true]);
    let r = t.proxy.rule_status(id).await;
    assert_eq!(
        (r["hits"].as_u64(), r["remaining"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(r["active"], false);
    t.proxy.clear().await;

    // seconds: every matching request fails until the rule ends, then they pass.
    let added = Instant::now();
    t.proxy
        .rule(
            json!({"service": "sqs", "operation": "ListQueues", "action": "error",
                     "code": "ServiceUnavailable", "seconds": 1.0}),
        )
        .await;
    assert_eq!(
        list_queues(&sqs).await.expect_err("in force").code(),
        Some("ServiceUnavailable")
    );
    wait_for("the rule to end", Duration::from_secs(10), || async {
        list_queues(&sqs).await.ok()
    })
    .await;
    assert!(added.elapsed() >= Duration::from_millis(950));
    t.proxy.clear().await;

    // probability: about that share of the matching requests, every one counted.
    let id = t
        .proxy
        .rule(
            json!({"service": "sqs", "operation": "ListQueues", "action": "error",
                     "code": "RequestThrottled", "probability": 0.5}),
        )
        .await["id"]
        .as_u64()
        .unwrap();
    let mut failed = 0;
    for _ in 0..100 {
        if list_queues(&sqs).await.is_err() {
            failed += 1;
        }
    }
    let r = t.proxy.rule_status(id).await;
    assert_eq!(r["matched"], 100);
    assert_eq!(r["hits"], failed);
    // Binomial(100, 0.5) falls outside [20, 80] with probability below 1e-9.
    assert!((20..=80).contains(&failed), "{failed} of 100 failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_touches_only_its_service_and_operation() {
    let t = setup("proxy_rule_scope").await;
    let sqs = t.sqs(1, None).await;
    let ddb = t.ddb(1, None).await;
    t.fx.send_orders("cust-1", &["s-1".to_string(), "s-2".to_string()])
        .await;
    t.proxy
        .rule(
            json!({"service": "sqs", "operation": "ChangeMessageVisibilityBatch", "action": "error",
                     "code": "AccessDenied", "message": "not allowed"}),
        )
        .await;
    let got = receive(&sqs, &t.fx.queue_url)
        .await
        .expect("receive passes");
    let msgs = got.messages();
    assert_eq!(msgs.len(), 2);
    let entries: Vec<_> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle().unwrap())
                .visibility_timeout(60)
                .build()
                .unwrap()
        })
        .collect();
    let err = sqs
        .change_message_visibility_batch()
        .queue_url(&t.fx.queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .expect_err("the named operation fails");
    assert_eq!(err.code(), Some("AccessDenied"));
    assert_eq!(err.message(), Some("not allowed"));
    // Its single-message sibling, the other SQS calls and DynamoDB are untouched.
    sqs.change_message_visibility()
        .queue_url(&t.fx.queue_url)
        .receipt_handle(msgs[0].receipt_handle().unwrap())
        .visibility_timeout(60)
        .send()
        .await
        .expect("ChangeMessageVisibility passes");
    let del = sqs
        .delete_message()
        .queue_url(&t.fx.queue_url)
        .receipt_handle(msgs[0].receipt_handle().unwrap())
        .send()
        .await;
    del.expect("DeleteMessage passes");
    put(&ddb, &t.fx.orders_table, "scope-1")
        .await
        .expect("DynamoDB passes");
    assert_eq!(
        t.proxy.count("sqs", "ChangeMessageVisibilityBatch").await,
        1
    );
    assert_eq!(t.proxy.count("sqs", "ChangeMessageVisibility").await, 1);
    assert_eq!(t.proxy.count("dynamodb", "PutItem").await, 1);
    t.proxy.clear().await;

    // Without an operation a rule covers every operation of its service, and no other service.
    t.proxy
        .rule(json!({"service": "dynamodb", "action": "error", "code": "AccessDeniedException"}))
        .await;
    let err = put(&ddb, &t.fx.orders_table, "scope-2")
        .await
        .expect_err("put");
    assert_eq!(err.code(), Some("AccessDeniedException"));
    let err = ddb
        .get_item()
        .table_name(&t.fx.orders_table)
        .key("OrderID", AttributeValue::S("scope-1".into()))
        .send()
        .await
        .expect_err("get");
    assert_eq!(err.code(), Some("AccessDeniedException"));
    list_queues(&sqs).await.expect("SQS passes");
}

// ---- whole-endpoint faults and the control API ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_endpoint_stall_and_drop_still_work() {
    let t = setup("proxy_whole_endpoint").await;
    let sqs = t.sqs(1, Some(Duration::from_secs(20))).await;
    list_queues(&sqs).await.expect("before");

    t.proxy.fault("drop", 1.0).await;
    assert_transport(&list_queues(&sqs).await.expect_err("dropped"));
    wait_for("the drop to end", Duration::from_secs(10), || async {
        list_queues(&sqs).await.ok()
    })
    .await;

    let started = Instant::now();
    t.proxy.fault("stall", 1.0).await;
    list_queues(&sqs).await.expect("held, then through");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    let s = t.proxy.status().await;
    assert_eq!(s["mode"], "pass");
    assert_eq!(
        (s["faults"]["drop"].as_u64(), s["faults"]["stall"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(s["reset"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["connections"].as_u64().unwrap() >= 2, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_refuses_bad_rules_and_identifies_unsigned_requests() {
    let t = setup("proxy_control").await;
    use reqwest::Method;
    for bad in [
        json!({"service": "sqs", "action": "error"}),
        json!({"service": "s3", "action": "reset"}),
        json!({"service": "sqs", "action": "explode"}),
        json!({"service": "sqs", "action": "reset", "second": 5}),
        json!({"service": "sqs", "action": "delay"}),
        json!({"service": "sqs", "action": "reset", "probability": 2}),
        json!({"service": "sqs", "action": "reset", "count": 0}),
    ] {
        let (status, body) = t
            .proxy
            .call(Method::POST, "/rules", Some(bad.clone()))
            .await;
        assert_eq!(status, 400, "{bad} -> {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (status, _) = t.proxy.call(Method::DELETE, "/rules/999", None).await;
    assert_eq!(status, 404);
    let id = t
        .proxy
        .rule(json!({"service": "sqs", "action": "reset"}))
        .await["id"]
        .as_u64()
        .unwrap();
    let (status, body) = t
        .proxy
        .call(Method::DELETE, &format!("/rules/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["rules"], json!([]));

    // Without a SigV4 header the service comes from the target prefix or the Query protocol version.
    let http = reqwest::Client::new();
    http.post(t.proxy.url())
        .header("x-amz-target", "AmazonSQS.ListQueues")
        .header("content-type", "application/x-amz-json-1.0")
        .body("{}")
        .send()
        .await
        .unwrap();
    http.post(t.proxy.url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("Action=DescribeAutoScalingGroups&Version=2011-01-01")
        .send()
        .await
        .unwrap();
    assert_eq!(t.proxy.count("sqs", "ListQueues").await, 1);
    assert_eq!(
        t.proxy
            .count("autoscaling", "DescribeAutoScalingGroups")
            .await,
        1
    );
    // Unsigned, so AWS refuses both, and so does the local region's IAM gate behind the proxy.
    t._emu.expect_denial("principal=anonymous");
    let denials = t._emu.denials();
    assert_eq!(denials.len(), 2, "{denials:?}");
    assert!(
        denials
            .iter()
            .all(|d| d.contains("principal=anonymous") && d.contains("MissingAuthenticationToken")),
        "{denials:?}"
    );
}

// ---- ReceiveRequestAttemptId ------------------------------------------------------------------------------------

/// Messages of the queue in flight (received, not deleted, not yet visible again), as the emulator counts them.
async fn not_visible(fx: &Fixture) -> u64 {
    let out = fx
        .sqs
        .get_queue_attributes()
        .queue_url(&fx.queue_url)
        .attribute_names(
            aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        )
        .send()
        .await
        .expect("queue attributes");
    out.attributes()
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A worker drains while its long poll's answer is on the wire (the proxy holds it for 30 s): the worker ends
/// the poll, asks again with the same ReceiveRequestAttemptId (the proxy answers with the same messages and
/// receipt handles, as SQS does), and releases them with the unstarted message it held. Nothing is lost, nothing
/// stays hidden for a visibility timeout, nothing is taken twice, and the drain does not wait for the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_ended_while_its_answer_is_on_the_wire_hides_nothing() {
    let t = setup("proxy_attempt_wire").await;
    let via = t.fx.through(t.proxy.url());
    t.fx.send_orders("held", &["held-1".into(), "held-2".into()])
        .await;
    // The first poll brings the held group (answered at once); the second is the one on the wire.
    t.proxy
        .rule(
            json!({"service": "sqs", "operation": "ReceiveMessage", "action": "delay",
                     "delay_seconds": 0.05, "count": 1}),
        )
        .await;
    let on_wire = t
        .proxy
        .rule(
            json!({"service": "sqs", "operation": "ReceiveMessage", "action": "delay",
                     "delay_seconds": 30.0, "count": 1}),
        )
        .await["id"]
        .as_u64()
        .unwrap();
    let mut w = via.worker("wire", &["--work-delay", "5s", "--wait-time", "20s"]);
    wait_for(
        "the worker to hold the group and poll again",
        Duration::from_secs(20),
        || async {
            let held = metric(&w, "order_worker_messages_in_flight").await >= 2.0;
            (held && t.proxy.rule_status(on_wire).await["hits"] == 1).then_some(())
        },
    )
    .await;
    let wire: Vec<String> = (1..=3).map(|i| format!("wire-{i}")).collect();
    t.fx.send_orders("wire", &wire).await;
    wait_for(
        "the poll to be handed the new group",
        Duration::from_secs(10),
        || async { (not_visible(&t.fx).await >= 5).then_some(()) },
    )
    .await;
    let started = Instant::now();
    w.signal("TERM");
    let status = w.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{}", w.log_text());
    let log = w.log_text();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the drain waited for the answer on the wire: {:?}\n{log}",
        started.elapsed()
    );
    assert_eq!(
        line_field(&log, "asked again with its attempt id", "recovered"),
        "3",
        "{log}"
    );
    assert_eq!(line_field(&log, "drain complete", "released"), "4", "{log}");
    assert_eq!(
        t.proxy.status().await["attempts"]["repeats_answered"],
        1,
        "{}",
        t.proxy.log_text()
    );
    // Visible right away (not after the 120 s visibility timeout): the three of the wire and held-2.
    let mut visible = std::collections::BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(5);
    while visible.len() < 4 && Instant::now() < until {
        for m in t.fx.receive_now(10).await {
            visible.insert(m.message_id().unwrap_or_default().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(visible.len(), 4, "{visible:?}");
    // Only held-1, which was being worked on, was applied.
    let records = t.fx.records().await;
    assert_eq!(records.len(), 1, "{log}");
    assert_eq!(s(&records[0], "OrderID"), "held-1");
}
