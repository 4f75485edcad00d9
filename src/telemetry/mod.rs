//! Logging and metrics: the one place that names, describes and exports every figure the worker keeps.
//!
//! Figures are recorded with the `metrics` macros (`counter!`, `gauge!`, `histogram!`) under the names below
//! and exported by `metrics-exporter-prometheus`. Its own HTTP listener stays off: [`crate::http::serve`]
//! renders the same recorder into our `/metrics`, beside `/healthz` and `/readyz`, so one port answers all three. The EMF
//! records ([`crate::emf`]) read the same recorder through [`snapshot()`], so the two exports cannot disagree.
//!
//! The names, labels and buckets are an interface: the README lists them, the tests, the bench and the soak
//! scrape them. Change them only with all of those.

pub mod snapshot;

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio_util::sync::CancellationToken;

use crate::config::LogFormat;
pub use snapshot::Snapshot;

/// Orders handled, by `status`: accepted, rejected (both newly applied), duplicate, conflict.
pub const ORDERS: &str = "order_worker_orders_total";
/// Messages released (visibility 0) so another receive gets them at once, by `reason`.
pub const RELEASES: &str = "order_worker_releases_total";
/// AWS requests, by `service` and `operation`.
pub const REQUESTS: &str = "order_worker_requests_total";
/// Failed AWS requests, by `service` and `operation`.
pub const REQUEST_ERRORS: &str = "order_worker_request_errors_total";
/// Held messages whose visibility was extended (long work).
pub const VISIBILITY_EXTENSIONS: &str = "order_worker_visibility_extensions_total";
/// Extensions SQS refused (the hold on that message is lost), by `code`.
pub const VISIBILITY_LOST: &str = "order_worker_visibility_lost_total";
/// DeleteMessageBatch entries that failed, by `code` (an expired receipt handle: a harmless duplicate later).
pub const DELETE_FAILURES: &str = "order_worker_delete_failures_total";
/// DynamoDB write capacity units consumed (as DynamoDB reports them; a failed claim by the billing rule).
pub const WRITE_UNITS: &str = "order_worker_dynamodb_write_units_total";
/// DynamoDB read capacity units consumed (by the billing rule: neither engine reports all of them).
pub const READ_UNITS: &str = "order_worker_dynamodb_read_units_total";
/// Claims of a run's positions that DynamoDB answered, by `result`: `applied`, or `refused` (the group row had
/// moved: a stale cached row, or another worker). Sent alone (`UpdateItem`) or together with other groups'
/// (`BatchExecuteStatement`), so the request counters do not tell them apart.
pub const CLAIMS: &str = "order_worker_claims_total";
/// Notices acted on, by `kind`.
pub const NOTICES: &str = "order_worker_notices_total";
/// Drains, by `trigger`.
pub const DRAINS: &str = "order_worker_drains_total";
/// Orders during drains, by `outcome`: finished or released.
pub const DRAIN_ORDERS: &str = "order_worker_drain_orders_total";
/// CompleteLifecycleAction calls, by `result`.
pub const HOOK_COMPLETIONS: &str = "order_worker_hook_completions_total";
/// RecordLifecycleActionHeartbeat calls, by `result`: ok, no_active_action, failed.
pub const HOOK_HEARTBEATS: &str = "order_worker_hook_heartbeats_total";
/// Failed instance metadata requests, by `kind` (each failed HTTP attempt, retries included).
pub const IMDS_ERRORS: &str = "order_worker_imds_errors_total";
/// Distinct notices the metadata watcher sent, by `kind`.
pub const IMDS_NOTICES: &str = "order_worker_imds_notices_total";
/// Time from receive to the committed record.
pub const ORDER_LATENCY: &str = "order_worker_order_latency_seconds";
/// 1 while an account-wide error blocks new work, by `service`.
pub const BLOCKED: &str = "order_worker_blocked";
/// Message groups held.
pub const GROUPS_IN_FLIGHT: &str = "order_worker_groups_in_flight";
/// Messages held.
pub const MESSAGES_IN_FLIGHT: &str = "order_worker_messages_in_flight";
/// 1 while taking new work: set from [`crate::admission::Admission`] when exported, never kept here.
pub const READY: &str = "order_worker_ready";
/// Duration of the last drain.
pub const LAST_DRAIN_SECONDS: &str = "order_worker_last_drain_seconds";

/// The latency buckets (seconds) the README and the bench's quantiles rely on: 5 ms .. 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often buffered histogram samples are folded into the buckets. The exporter keeps each sample until a
/// render or an upkeep; a worker nobody scrapes would otherwise buffer every order's latency for its whole life.
/// Five seconds is the exporter's own default period.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The recorder with our buckets (the exporter's default for a histogram is a summary, not buckets).
fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ORDER_LATENCY.into()), LATENCY_BUCKETS)
        .expect("the latency buckets are not empty")
        .build_recorder()
}

/// Install the process-wide recorder and describe every figure. Call once, before anything records (a figure
/// recorded before has no recorder to go to); later calls return the same handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed; /metrics shows only this one's figures"
            );
        }
        describe();
        handle
    })
}

/// Fold buffered histogram samples into their buckets every [`UPKEEP_EVERY`] until `stop` fires.
pub async fn upkeep(stop: CancellationToken) {
    let Some(handle) = HANDLE.get() else { return };
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// The Prometheus text of the installed recorder (empty when none is installed).
pub fn render() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// The current figures, read back from the exporter's own text: what `/metrics` would show now.
pub fn snapshot() -> Snapshot {
    Snapshot::parse(&render())
}

/// Help text and unit of every figure, and the series that exist from the start: the gauges (a scraper sees 0,
/// not nothing, before the first message) and the latency histogram (its buckets at 0).
fn describe() {
    let counters: [(&'static str, &'static str); 17] = [
        (ORDERS, "Orders handled, by outcome."),
        (RELEASES, "Messages released (visibility 0), by reason."),
        (REQUESTS, "AWS requests, by service and operation."),
        (
            REQUEST_ERRORS,
            "Failed AWS requests, by service and operation.",
        ),
        (
            VISIBILITY_EXTENSIONS,
            "Held messages whose visibility was extended.",
        ),
        (
            VISIBILITY_LOST,
            "Held messages whose visibility extension SQS refused (the hold is lost), by code.",
        ),
        (
            DELETE_FAILURES,
            "DeleteMessageBatch entries that failed, by code.",
        ),
        (WRITE_UNITS, "DynamoDB write capacity units consumed."),
        (READ_UNITS, "DynamoDB read capacity units consumed."),
        (
            CLAIMS,
            "Claims of a run's positions DynamoDB answered, by result: applied or refused.",
        ),
        (NOTICES, "Notices acted on, by kind."),
        (DRAINS, "Drains, by trigger."),
        (DRAIN_ORDERS, "Orders during drains: finished or released."),
        (
            HOOK_COMPLETIONS,
            "CompleteLifecycleAction calls, by result.",
        ),
        (
            HOOK_HEARTBEATS,
            "RecordLifecycleActionHeartbeat calls, by result.",
        ),
        (IMDS_ERRORS, "Instance metadata errors, by kind."),
        (
            IMDS_NOTICES,
            "Distinct notices seen in instance metadata, by kind.",
        ),
    ];
    for (name, help) in counters {
        describe_counter!(name, Unit::Count, help);
    }
    describe_histogram!(
        ORDER_LATENCY,
        Unit::Seconds,
        "Time from receive to the committed record."
    );
    describe_gauge!(
        BLOCKED,
        Unit::Count,
        "1 while an account-wide error (access, missing resource, credentials, KMS) blocks new work, by service."
    );
    describe_gauge!(GROUPS_IN_FLIGHT, Unit::Count, "Message groups held.");
    describe_gauge!(MESSAGES_IN_FLIGHT, Unit::Count, "Messages held.");
    describe_gauge!(READY, Unit::Count, "1 while taking new work.");
    describe_gauge!(
        LAST_DRAIN_SECONDS,
        Unit::Seconds,
        "Duration of the last drain."
    );
    for gauge in [
        GROUPS_IN_FLIGHT,
        MESSAGES_IN_FLIGHT,
        READY,
        LAST_DRAIN_SECONDS,
    ] {
        metrics::gauge!(gauge).set(0.0);
    }
    // Registering the handle is enough: the exporter renders a registered histogram with empty buckets.
    let _ = metrics::histogram!(ORDER_LATENCY);
}

/// Count one AWS request (and its failure).
pub fn request(service: &'static str, operation: &'static str, ok: bool) {
    metrics::counter!(REQUESTS, "service" => service, "operation" => operation).increment(1);
    if !ok {
        metrics::counter!(REQUEST_ERRORS, "service" => service, "operation" => operation)
            .increment(1);
    }
}

/// Log lines on stderr, text or JSON, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// A recorder of the test's own: figures recorded on this thread go to it, not to the process's (tests run in
/// parallel, and each counts only what it caused). For `#[tokio::test]`s on the current-thread runtime, whose
/// spawned tasks run on the test's thread.
#[cfg(test)]
pub struct LocalRecorder {
    handle: PrometheusHandle,
    _guard: metrics::LocalRecorderGuard<'static>,
}

#[cfg(test)]
impl LocalRecorder {
    pub fn install() -> LocalRecorder {
        // Leaked so the guard can borrow it for 'static: a few bytes per test.
        let recorder: &'static PrometheusRecorder = Box::leak(Box::new(recorder()));
        let guard = metrics::set_default_local_recorder(recorder);
        describe();
        LocalRecorder {
            handle: recorder.handle(),
            _guard: guard,
        }
    }

    pub fn render(&self) -> String {
        self.handle.render()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot::parse(&self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_names_labels_and_buckets_are_exported() {
        let local = LocalRecorder::install();
        metrics::counter!(ORDERS, "status" => "accepted").increment(3);
        request("sqs", "ReceiveMessage", false);
        metrics::histogram!(ORDER_LATENCY).record(0.05);
        metrics::histogram!(ORDER_LATENCY).record(0.5);
        let text = local.render();
        for line in [
            "order_worker_orders_total{status=\"accepted\"} 3",
            "order_worker_requests_total{service=\"sqs\",operation=\"ReceiveMessage\"} 1",
            "order_worker_request_errors_total{service=\"sqs\",operation=\"ReceiveMessage\"} 1",
            "# TYPE order_worker_order_latency_seconds histogram",
            "order_worker_order_latency_seconds_bucket{le=\"0.025\"} 0",
            "order_worker_order_latency_seconds_bucket{le=\"0.05\"} 1",
            "order_worker_order_latency_seconds_bucket{le=\"1\"} 2",
            "order_worker_order_latency_seconds_bucket{le=\"30\"} 2",
            "order_worker_order_latency_seconds_bucket{le=\"+Inf\"} 2",
            "order_worker_order_latency_seconds_count 2",
            "# HELP order_worker_orders_total Orders handled, by outcome.",
            // Gauges exist before anything sets them.
            "order_worker_messages_in_flight 0",
            "order_worker_groups_in_flight 0",
            "order_worker_ready 0",
            "order_worker_last_drain_seconds 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        // Units describe, they never rename (the names are documented without them).
        assert!(!text.contains("order_worker_orders_total_count"), "{text}");
    }

    #[test]
    fn an_untouched_histogram_shows_empty_buckets() {
        let local = LocalRecorder::install();
        let s = local.snapshot();
        assert_eq!(
            s.get(
                "order_worker_order_latency_seconds_bucket",
                &[("le", "+Inf")]
            ),
            Some(0.0)
        );
        assert_eq!(
            s.get("order_worker_order_latency_seconds_count", &[]),
            Some(0.0)
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let local = LocalRecorder::install();
        metrics::counter!(DELETE_FAILURES, "code" => "a\"b").increment(1);
        assert!(
            local
                .render()
                .contains("order_worker_delete_failures_total{code=\"a\\\"b\"} 1"),
            "{}",
            local.render()
        );
        assert_eq!(
            local.snapshot().get(DELETE_FAILURES, &[("code", "a\"b")]),
            Some(1.0)
        );
    }
}
