//! Spot interruptions and the lifecycle hook, against spot-sim (metadata + Auto Scaling) and the emulator.

use std::time::Duration;

use crate::common::proxy::FaultProxy;
use crate::common::*;

/// The emulator's queue and tables, reached by the workers through the fault proxy with no rules: the local
/// region's SQS honours ReceiveRequestAttemptId and ends a poll whose caller hung up, as SQS does (a drain ends
/// its long poll and asks again with the same attempt id; the bare emulator would go on polling for the dead
/// connection and hide what the drain releases). The test's own clients talk to the emulator directly.
async fn via_proxy(emu: &Emulator, test: &str) -> (FaultProxy, Fixture) {
    let proxy = FaultProxy::start(test, &emu.endpoint).await;
    let fx = Fixture::new(emu, test).await.through(proxy.url());
    (proxy, fx)
}

/// The emulator, a fixture, spot-sim, one external instance and a worker on it that has learnt its id.
async fn on_instance(
    test: &str,
    sim_args: &[&str],
    worker_args: &[&str],
) -> (Emulator, (FaultProxy, Fixture), Sim, Instance, Proc) {
    let emu = Emulator::start(test).await;
    let (_proxy, fx) = via_proxy(&emu, test).await;
    let sim = Sim::start(test, sim_args).await;
    let inst = sim.launch_external().await;
    let worker = fx.worker_on(&sim, &inst, worker_args);
    wait_log(
        &worker,
        "instance id from metadata",
        Duration::from_secs(20),
    )
    .await;
    (emu, (_proxy, fx), sim, inst, worker)
}

/// Whether spot-sim saw CompleteLifecycleAction for this instance.
async fn hook_completed(sim: &Sim, id: &str) -> bool {
    sim.events(id)
        .await
        .iter()
        .any(|e| e.starts_with("CompleteLifecycleAction"))
}

async fn send_groups(
    fx: &Fixture,
    groups: usize,
    per_group: usize,
    prefix: &str,
) -> Vec<order_worker::verify::Sent> {
    let mut manifest = Vec::new();
    for g in 0..groups {
        let group = format!("cust-{prefix}-{g}");
        let ids: Vec<String> = (0..per_group)
            .map(|i| format!("{prefix}-{g}-{i:04}"))
            .collect();
        fx.send_orders(&group, &ids).await;
        manifest.extend(ids.iter().map(|id| sent(id, &group, "accepted")));
    }
    manifest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_worker_completes_its_hook_on_a_notice_and_exits() {
    // The default 20 s long poll is in flight when the notice comes: the hook must not wait for it.
    let (_emu, _fx, sim, inst, mut worker) =
        on_instance("spot-idle", &[], &["--wait-time", "20s"]).await;
    sim.interrupt(&inst.id, 120.0).await;
    wait_for(
        "the hook to be completed, without waiting for the long poll",
        Duration::from_secs(4),
        || async { hook_completed(&sim, &inst.id).await.then_some(()) },
    )
    .await;
    let status = worker.wait_exit(Duration::from_secs(40)).await;
    assert!(status.success(), "{status:?}\n{}", worker.log_text());
    let log = worker.log_text();
    assert!(log.contains("lifecycle hook completed"), "{log}");
    assert!(log.contains("drain complete"), "{log}");
    // The drain's time runs to the hook, not to the end of the 20 s poll it did not wait for.
    let took_ms: u64 = log
        .lines()
        .find(|l| l.contains("drain complete"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("took_ms="))
        })
        .and_then(|v| v.parse().ok())
        .expect("took_ms");
    assert!(took_ms < 4_000, "took_ms={took_ms}\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_worker_finishes_in_flight_releases_the_rest_to_another_worker() {
    let emu = Emulator::start("spot-busy").await;
    let (_proxy, fx) = via_proxy(&emu, "spot-busy").await;
    let sim = Sim::start("spot-busy", &[]).await;
    let manifest = send_groups(&fx, 4, 10, "busy").await;
    let a = sim.launch_external().await;
    let mut wa = fx.worker_on(&sim, &a, &["--work-delay", "300ms"]);
    fx.wait_records(4, Duration::from_secs(30)).await;
    sim.interrupt(&a.id, 120.0).await;
    let status = wa.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{}", wa.log_text());
    let applied_by_a = fx.records().await.len();
    assert!(
        applied_by_a < 40,
        "worker A finished everything before the notice; the test proves nothing"
    );
    assert!(wa.log_text().contains("released="), "{}", wa.log_text());
    // The released messages are taken at once by a second worker: all applied once, in order.
    let b = sim.launch_external().await;
    let _wb = fx.worker_on(&sim, &b, &[]);
    fx.wait_records(40, Duration::from_secs(20)).await;
    let report = fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    assert!(
        hook_completed(&sim, &a.id).await,
        "the worker did not complete its hook"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_short_a_notice_releases_in_flight_orders_without_half_applying_them() {
    let emu = Emulator::start("spot-short").await;
    let (_proxy, fx) = via_proxy(&emu, "spot-short").await;
    let sim = Sim::start("spot-short", &[]).await;
    let manifest = send_groups(&fx, 2, 3, "short").await;
    let a = sim.launch_external().await;
    // Each order takes 5 s; the notice leaves 12 s - 10 s margin = 2 s: nothing in flight can finish.
    let mut wa = fx.worker_on(&sim, &a, &["--work-delay", "5s"]);
    wait_for(
        "the worker to hold both groups",
        Duration::from_secs(20),
        || async { (metric(&wa, "order_worker_groups_in_flight").await >= 2.0).then_some(()) },
    )
    .await;
    sim.interrupt(&a.id, 12.0).await;
    let status = wa.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{}", wa.log_text());
    let log = wa.log_text();
    assert!(log.contains("deadline_hit=true"), "{log}");
    assert!(
        log.contains("held_up_by=\"group"),
        "the report must say what held the drain up: {log}"
    );
    assert_eq!(
        fx.records().await.len(),
        0,
        "nothing may be applied when nothing finished"
    );
    let b = sim.launch_external().await;
    let _wb = fx.worker_on(&sim, &b, &[]);
    fx.wait_records(6, Duration::from_secs(20)).await;
    let report = fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_rebalance_takes_no_new_groups_then_recovers() {
    let emu = Emulator::start("spot-rebalance").await;
    let (_proxy, fx) = via_proxy(&emu, "spot-rebalance").await;
    // Capacity rebalancing off: here no replacement terminates us, so the recovery path is what is tested.
    let sim = Sim::start("spot-rebalance", &["--capacity-rebalance", "false"]).await;
    let inst = sim.launch_external().await;
    let worker = fx.worker_on(
        &sim,
        &inst,
        &["--on-rebalance", "soft", "--rebalance-recovery", "6s"],
    );
    wait_for("ready", Duration::from_secs(20), || async {
        (readyz(&worker).await == 200).then_some(())
    })
    .await;
    sim.post(
        &format!("/_sim/instances/{}/rebalance", inst.id),
        serde_json::json!({}),
    )
    .await;
    wait_for(
        "not ready after the rebalance",
        Duration::from_secs(10),
        || async { (readyz(&worker).await == 503).then_some(()) },
    )
    .await;
    let manifest = send_groups(&fx, 2, 3, "reb").await;
    // While paused, nothing new is taken (a bounded observation: the recovery is 6 s away).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fx.records().await.len(),
        0,
        "a paused worker took new groups"
    );
    // No interruption follows: back to normal after the recovery time.
    fx.wait_records(6, Duration::from_secs(20)).await;
    assert_eq!(readyz(&worker).await, 200);
    let report = fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_terminated_drains_and_completes_the_hook() {
    let (_emu, _fx, sim, inst, mut worker) = on_instance("spot-scalein", &[], &[]).await;
    sim.post(
        &format!("/_sim/instances/{}/scale-in", inst.id),
        serde_json::json!({}),
    )
    .await;
    let status = worker.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{}", worker.log_text());
    assert!(
        worker.log_text().contains("trigger=LifecycleTerminated"),
        "{}",
        worker.log_text()
    );
    wait_for(
        "the instance to terminate after the hook",
        Duration::from_secs(20),
        || async {
            (sim.instance(&inst.id).await["lifecycle_state"] == "Terminated").then_some(())
        },
    )
    .await;
    assert!(
        hook_completed(&sim, &inst.id).await,
        "the worker did not complete its hook"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_and_failing_metadata_do_not_stop_work_or_hide_a_notice() {
    let (_emu, (_proxy, fx), sim, inst, mut worker) = on_instance("spot-imds", &[], &[]).await;
    let mut manifest = Vec::new();
    for (round, mode) in ["error500", "hang", "malformed", "throttle", "forbidden"]
        .iter()
        .enumerate()
    {
        sim.fault(&inst.id, serde_json::json!({"mode": mode})).await;
        manifest.extend(send_groups(&fx, 1, 3, &format!("imds{round}")).await);
        fx.wait_records(manifest.len(), Duration::from_secs(20))
            .await;
        assert!(
            worker.child.try_wait().unwrap().is_none(),
            "worker died under {mode}:\n{}",
            worker.log_text()
        );
    }
    sim.fault(
        &inst.id,
        serde_json::json!({"mode": "none", "expire_tokens": true}),
    )
    .await;
    sim.interrupt(&inst.id, 120.0).await;
    let status = worker.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{}", worker.log_text());
    let report = fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    assert!(
        hook_completed(&sim, &inst.id).await,
        "the worker did not complete its hook"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_down_at_start_still_processes_orders() {
    let emu = Emulator::start("spot-nometa").await;
    let (_proxy, fx) = via_proxy(&emu, "spot-nometa").await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let mut worker = fx.worker_with_imds("nometa", &closed, &closed, &[]);
    let manifest = send_groups(&fx, 2, 5, "nometa").await;
    fx.wait_records(10, Duration::from_secs(30)).await;
    let report = fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "{}",
        worker.log_text()
    );
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(20)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_hook_is_reported_and_the_worker_still_exits() {
    let (_emu, _fx, sim, inst, mut worker) =
        on_instance("spot-refused", &[], &["--lifecycle-hook", "no-such-hook"]).await;
    sim.interrupt(&inst.id, 120.0).await;
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{}", worker.log_text());
    let log = worker.log_text();
    assert!(log.contains("lifecycle hook NOT completed"), "{log}");
    assert!(
        log.contains("no-such-hook"),
        "the error must name the hook: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifecycle_action_started_late_still_gets_its_hook_completed() {
    // Auto Scaling starts the termination lifecycle action 12 s after the notice; an idle worker drains in
    // milliseconds, so its first CompleteLifecycleAction answers "no active lifecycle action". Four tries 2 s
    // apart gave up at 6 s and left the instance waiting for the hook's timeout.
    let (_emu, _fx, sim, inst, mut worker) =
        on_instance("spot-late-hook", &["--hook-start-delay", "12s"], &[]).await;
    sim.interrupt(&inst.id, 120.0).await;
    // While the action has not started, heartbeats are answered "no active lifecycle action": counted.
    wait_for(
        "a hook heartbeat counted",
        Duration::from_secs(20),
        || async {
            (metric(
                &worker,
                "order_worker_hook_heartbeats_total{result=\"no_active_action\"}",
            )
            .await
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    wait_log(&worker, "drain complete", Duration::from_secs(30)).await;
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}\n{}", worker.log_text());
    let log = worker.log_text();
    assert!(log.contains("lifecycle hook completed"), "{log}");
    assert!(
        log.contains("no active lifecycle action for this instance yet"),
        "the action was not started late: {log}"
    );
    // 12 s of refusals: one warning that names the hook and says what it means, not one per try.
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("still finds no active lifecycle action"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("order-worker-drain") && warnings[0].contains("heartbeat timeout"),
        "{}",
        warnings[0]
    );
    assert!(hook_completed(&sim, &inst.id).await);
    // Completed by the worker, not by the hook's timeout.
    let events = sim.events(&inst.id).await;
    assert!(
        !events.iter().any(|e| e.contains("timed out")),
        "{events:?}"
    );
}

/// When a worker's log line containing `needle` was written (the text format starts with an RFC 3339 time).
fn logged_at(log: &str, needle: &str) -> time::OffsetDateTime {
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no log line with {needle:?}:\n{log}"));
    let stamp = line.split_whitespace().next().unwrap_or_default();
    time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("no time at the start of {line:?}: {e}"))
}

/// A busy worker (10 groups, 4 orders each, 2 s of work per order, the default 20 s long poll) gets a
/// termination: from the moment it sees it, it starts no held message. A record's ProcessedAt is written right
/// after its work, so the work began at ProcessedAt - 2 s; none may begin after the line that says the worker
/// saw the termination. Then a second worker takes the rest: nothing lost, nothing twice, in order.
async fn no_held_message_starts_after(test: &str, terminate: &str, seen: &str) {
    const WORK: Duration = Duration::from_secs(2);
    let emu = Emulator::start(test).await;
    let (_proxy, fx) = via_proxy(&emu, test).await;
    let sim = Sim::start(test, &[]).await;
    let manifest = send_groups(&fx, 10, 4, "nostart").await;
    let a = sim.launch_external().await;
    let mut wa = fx.worker_on(&sim, &a, &["--work-delay", "2s", "--wait-time", "20s"]);
    wait_for(
        "the worker to hold at least 30 messages",
        Duration::from_secs(30),
        || async { (metric(&wa, "order_worker_messages_in_flight").await >= 30.0).then_some(()) },
    )
    .await;
    match terminate {
        "notice" => {
            sim.interrupt(&a.id, 120.0).await;
        }
        _ => {
            sim.post(
                &format!("/_sim/instances/{}/scale-in", a.id),
                serde_json::json!({}),
            )
            .await;
        }
    }
    let status = wa.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{}", wa.log_text());
    let log = wa.log_text();
    let seen_at = logged_at(&log, seen);
    let work = time::Duration::try_from(WORK).unwrap();
    let mut started_after = Vec::new();
    for r in fx.records().await {
        let at = s(&r, "ProcessedAt");
        let done = time::OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("ProcessedAt {at:?}: {e}"));
        if done - work > seen_at {
            started_after.push(format!("{} started {}", s(&r, "OrderID"), done - work));
        }
    }
    assert!(
        started_after.is_empty(),
        "held messages started after the worker saw the termination at {seen_at}: {started_after:?}\n{log}"
    );
    assert!(
        hook_completed(&sim, &a.id).await,
        "hook not completed:\n{log}"
    );
    let b = sim.launch_external().await;
    let _wb = fx.worker_on(&sim, &b, &[]);
    fx.wait_records(40, Duration::from_secs(60)).await;
    let report = fx.audit(&manifest).await;
    assert!(report.ok(), "{}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_notice_no_held_message_is_started() {
    no_held_message_starts_after("spot-nostart", "notice", "Spot interruption notice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_terminated_state_no_held_message_is_started() {
    no_held_message_starts_after(
        "spot-nostart-scalein",
        "scale-in",
        "target lifecycle state Terminated",
    )
    .await;
}
