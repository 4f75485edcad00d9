//! Counters and gauges, rendered as Prometheus text, and the small HTTP endpoint that serves them with
//! `/healthz` (the process is alive) and `/readyz` (taking work: false while draining).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

/// A counter with labels, e.g. `requests_total{service="sqs",operation="ReceiveMessage"}`.
pub struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, f64>>,
}

impl Family {
    const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Family {
            name,
            help,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Add `n` to the series with these label values (in the order of `labels`).
    pub fn add(&self, values: &[&str], n: f64) {
        debug_assert_eq!(values.len(), self.labels.len());
        let key = values.iter().map(|s| s.to_string()).collect();
        *self
            .values
            .lock()
            .expect("metrics lock")
            .entry(key)
            .or_default() += n;
    }

    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1.0);
    }

    /// Current value of one series (0 when never touched).
    pub fn get(&self, values: &[&str]) -> f64 {
        let key: Vec<String> = values.iter().map(|s| s.to_string()).collect();
        self.values
            .lock()
            .expect("metrics lock")
            .get(&key)
            .copied()
            .unwrap_or(0.0)
    }

    /// Sum over every series (read-only; the EMF records use it).
    pub fn total(&self) -> f64 {
        self.values.lock().expect("metrics lock").values().sum()
    }

    fn render(&self, kind: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, kind);
        for (key, v) in self.values.lock().expect("metrics lock").iter() {
            let labels: Vec<String> = self
                .labels
                .iter()
                .zip(key)
                .map(|(l, v)| format!("{l}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            let _ = writeln!(out, "{}{{{}}} {}", self.name, labels.join(","), v);
        }
    }
}

/// A latency histogram with fixed buckets (seconds).
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    counts: Mutex<(Vec<u64>, u64, f64)>,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let mut g = self.counts.lock().expect("metrics lock");
        if g.0.is_empty() {
            g.0 = vec![0; self.bounds.len()];
        }
        for (i, b) in self.bounds.iter().enumerate() {
            if s <= *b {
                g.0[i] += 1;
            }
        }
        g.1 += 1;
        g.2 += s;
    }

    /// Observations so far and their sum in seconds (read-only; the EMF records use it).
    pub fn count_and_sum(&self) -> (u64, f64) {
        let g = self.counts.lock().expect("metrics lock");
        (g.1, g.2)
    }

    fn render(&self, out: &mut String) {
        let g = self.counts.lock().expect("metrics lock");
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        for (i, b) in self.bounds.iter().enumerate() {
            let c = g.0.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{}_bucket{{le=\"{b}\"}} {c}", self.name);
        }
        let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {}", self.name, g.1);
        let _ = writeln!(out, "{}_sum {}", self.name, g.2);
        let _ = writeln!(out, "{}_count {}", self.name, g.1);
    }
}

/// Every figure the worker exports. One static instance: see [`metrics`].
pub struct Metrics {
    /// Orders by outcome: accepted, rejected (both newly applied), duplicate (already applied), conflict.
    pub orders: Family,
    /// Messages whose visibility was set to 0 so another receive gets them at once.
    pub releases: Family,
    /// AWS calls by service and operation, and those that failed.
    pub requests: Family,
    pub request_errors: Family,
    /// Visibility extensions of held messages (long work).
    pub visibility_extensions: Family,
    /// Extensions SQS refused: the hold on that message is lost, by code.
    pub visibility_lost: Family,
    /// Services an account-wide error blocks right now (1) or not (0): a gauge.
    pub blocked: Family,
    /// DeleteMessageBatch entries that failed (an expired receipt handle; the redelivery is a harmless duplicate).
    pub delete_failures: Family,
    /// DynamoDB write units consumed (as DynamoDB reports them; a failed claim by the billing rule).
    pub write_units: Family,
    /// DynamoDB read units consumed (by the billing rule: neither engine reports all of them).
    pub read_units: Family,
    /// Notices acted on, by kind.
    pub notices: Family,
    /// Drains by trigger, and orders finished / released during drains.
    pub drains: Family,
    pub drain_orders: Family,
    /// Lifecycle hook completions and heartbeats by result.
    pub hook_completions: Family,
    pub hook_heartbeats: Family,
    /// Time from receive to the commit of an order.
    pub latency: Histogram,
    /// Seconds the last drain took.
    pub last_drain_seconds: Mutex<f64>,
    pub groups_in_flight: AtomicU64,
    pub messages_in_flight: AtomicU64,
    /// False while draining, paused or blocked (a mirror of [`crate::health::Health::ready`] for the gauge).
    pub ready: AtomicBool,
    /// Instance metadata errors and notices seen, owned by the watcher.
    pub imds: OnceLock<Arc<crate::imds::ImdsStats>>,
}

static METRICS: Metrics = Metrics {
    orders: Family::new(
        "order_worker_orders_total",
        "Orders handled, by outcome.",
        &["status"],
    ),
    releases: Family::new(
        "order_worker_releases_total",
        "Messages released (visibility 0), by reason.",
        &["reason"],
    ),
    requests: Family::new(
        "order_worker_requests_total",
        "AWS requests, by service and operation.",
        &["service", "operation"],
    ),
    request_errors: Family::new(
        "order_worker_request_errors_total",
        "Failed AWS requests, by service and operation.",
        &["service", "operation"],
    ),
    visibility_extensions: Family::new(
        "order_worker_visibility_extensions_total",
        "Held messages whose visibility was extended.",
        &[],
    ),
    visibility_lost: Family::new(
        "order_worker_visibility_lost_total",
        "Held messages whose visibility extension SQS refused (the hold is lost), by code.",
        &["code"],
    ),
    blocked: Family::new(
        "order_worker_blocked",
        "1 while an account-wide error (access, missing resource, credentials, KMS) blocks new work, by service.",
        &["service"],
    ),
    delete_failures: Family::new(
        "order_worker_delete_failures_total",
        "DeleteMessageBatch entries that failed, by code.",
        &["code"],
    ),
    write_units: Family::new(
        "order_worker_dynamodb_write_units_total",
        "DynamoDB write capacity units consumed.",
        &[],
    ),
    read_units: Family::new(
        "order_worker_dynamodb_read_units_total",
        "DynamoDB read capacity units consumed.",
        &[],
    ),
    notices: Family::new(
        "order_worker_notices_total",
        "Notices acted on, by kind.",
        &["kind"],
    ),
    drains: Family::new(
        "order_worker_drains_total",
        "Drains, by trigger.",
        &["trigger"],
    ),
    drain_orders: Family::new(
        "order_worker_drain_orders_total",
        "Orders during drains: finished or released.",
        &["outcome"],
    ),
    hook_completions: Family::new(
        "order_worker_hook_completions_total",
        "CompleteLifecycleAction calls, by result.",
        &["result"],
    ),
    hook_heartbeats: Family::new(
        "order_worker_hook_heartbeats_total",
        "RecordLifecycleActionHeartbeat calls, by result.",
        &["result"],
    ),
    latency: Histogram {
        name: "order_worker_order_latency_seconds",
        help: "Time from receive to the committed record.",
        bounds: &[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ],
        counts: Mutex::new((Vec::new(), 0, 0.0)),
    },
    last_drain_seconds: Mutex::new(0.0),
    groups_in_flight: AtomicU64::new(0),
    messages_in_flight: AtomicU64::new(0),
    ready: AtomicBool::new(false),
    imds: OnceLock::new(),
};

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Count one AWS request (and its failure).
pub fn request(service: &str, operation: &str, ok: bool) {
    METRICS.requests.inc(&[service, operation]);
    if !ok {
        METRICS.request_errors.inc(&[service, operation]);
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in [
            &self.orders,
            &self.releases,
            &self.requests,
            &self.request_errors,
            &self.visibility_extensions,
            &self.visibility_lost,
            &self.delete_failures,
            &self.write_units,
            &self.read_units,
            &self.notices,
            &self.drains,
            &self.drain_orders,
            &self.hook_completions,
            &self.hook_heartbeats,
        ] {
            f.render("counter", &mut out);
        }
        self.blocked.render("gauge", &mut out);
        self.latency.render(&mut out);
        let gauges = [
            (
                "order_worker_groups_in_flight",
                "Message groups held.",
                self.groups_in_flight.load(Ordering::Relaxed) as f64,
            ),
            (
                "order_worker_messages_in_flight",
                "Messages held.",
                self.messages_in_flight.load(Ordering::Relaxed) as f64,
            ),
            (
                "order_worker_ready",
                "1 while taking new work.",
                u8::from(self.ready.load(Ordering::Relaxed)) as f64,
            ),
            (
                "order_worker_last_drain_seconds",
                "Duration of the last drain.",
                *self.last_drain_seconds.lock().expect("metrics lock"),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        if let Some(imds) = self.imds.get() {
            let _ = writeln!(
                out,
                "# HELP order_worker_imds_errors_total Instance metadata errors, by kind."
            );
            let _ = writeln!(out, "# TYPE order_worker_imds_errors_total counter");
            for (kind, n) in imds.errors() {
                let _ = writeln!(out, "order_worker_imds_errors_total{{kind=\"{kind}\"}} {n}");
            }
            let _ = writeln!(out, "# HELP order_worker_imds_notices_total Distinct notices seen in instance metadata, by kind.");
            let _ = writeln!(out, "# TYPE order_worker_imds_notices_total counter");
            for (kind, n) in imds.notices() {
                let _ = writeln!(
                    out,
                    "order_worker_imds_notices_total{{kind=\"{kind}\"}} {n}"
                );
            }
        }
        out
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` until `stop` fires. Returns the bound address (port 0 works).
pub async fn serve(
    addr: SocketAddr,
    health: Arc<crate::health::Health>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(|| async { metrics().render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(cause = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

async fn readyz(State(health): State<Arc<crate::health::Health>>) -> (StatusCode, String) {
    if health.ready() {
        return (StatusCode::OK, "ready\n".into());
    }
    let blockers = health.blockers();
    if blockers.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining, paused or not started\n".into(),
        );
    }
    let why: Vec<String> = blockers
        .iter()
        .map(|(service, b)| format!("{service} blocked by {}: {}", b.code, b.detail))
        .collect();
    (StatusCode::SERVICE_UNAVAILABLE, why.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_and_histogram() {
        let f = Family::new("t_total", "help", &["a", "b"]);
        f.inc(&["x", "y\"z"]);
        f.add(&["x", "y\"z"], 2.0);
        let mut out = String::new();
        f.render("counter", &mut out);
        assert!(out.contains("t_total{a=\"x\",b=\"y\\\"z\"} 3"), "{out}");
        assert_eq!(f.get(&["x", "y\"z"]), 3.0);
        let h = Histogram {
            name: "h",
            help: "h",
            bounds: &[0.1, 1.0],
            counts: Mutex::new((Vec::new(), 0, 0.0)),
        };
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        let mut out = String::new();
        h.render(&mut out);
        assert!(out.contains("h_bucket{le=\"0.1\"} 1"), "{out}");
        assert!(out.contains("h_bucket{le=\"1\"} 2"), "{out}");
        assert!(out.contains("h_count 2"), "{out}");
    }
}
