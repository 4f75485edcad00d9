//! CloudWatch Embedded Metric Format (EMF) records in the worker's JSON log: CloudWatch Logs extracts the
//! metrics from the log line itself, so an instance needs no scraper, no `PutMetricData` call and no
//! `cloudwatch:PutMetricData` permission, and the figures of an interrupted instance are in CloudWatch as soon
//! as its log lines are.
//!
//! Hand-built with `serde_json` from the figures of the one metrics recorder ([`crate::telemetry::snapshot()`]:
//! read, never changed), so EMF and `/metrics` report the same counts. Readiness comes from
//! [`crate::admission::Admission`], whose state it is.
//!
//! Why not `metrics_cloudwatch_embedded` (0.10, Apache-2.0, EMF from the `metrics` crate): tried in a scratch
//! build beside our recorder. Its only constructor, `Builder::init`, installs it as the process's global
//! recorder, and its collector's configuration is not exported, so it cannot sit behind a fan-out: with the
//! Prometheus recorder of `/metrics` installed first, `init` fails ("attempted to set a recorder after the
//! metrics system was already initialized"), and the other way round `/metrics` would be empty. It also turns
//! every label into a CloudWatch dimension (`sqs_requests_total{operation, result}` came out as one document
//! with dimensions `[QueueName, operation, result]`): each label combination a custom metric, where this file
//! chooses 19 per stack and the names the alarms use. The two record kinds below (an interval of deltas, a
//! drain's one-off figures) and the line shape of our JSON log are what is left to write, and they are ours.
//!
//! # Records
//! - **interval** (every `--emf-interval`, and once more at exit): counters as **deltas since the previous
//!   record** (CloudWatch sums EMF values per period, so totals would be counted again every minute), gauges as
//!   the value at that instant: `OrdersAccepted`, `OrdersRejected`, `OrdersDuplicate`, `OrdersConflict`,
//!   `MessagesReleased` (Count), `CommitLatency` (Milliseconds: the mean receive-to-commit time of the orders
//!   committed in the interval; left out when none were), `MessagesHeld`, `GroupsHeld`, `Ready` (Count/None).
//! - **drain** (once, when the drain is done, before the wait for the last long poll): `Drains` (1), `DrainDeadlineHit` (0/1), `DrainSeconds` (Seconds),
//!   `DrainOrdersFinished`, `DrainOrdersReleased` (Count), `HookCompleted`, `HookNotCompleted` (0/1; both 0 when
//!   no hook was due), plus `Drains` again under the dimensions `QueueName` + `Trigger`
//!   (`signal` / `interruption` / `lifecycle`).
//!
//! # Dimensions and cost
//! One dimension, `QueueName` (the queue's name, e.g. `orders.fifo`): one value per stack, known to Terraform,
//! so the alarms can name it. No instance id as a dimension: Spot replaces instances all the time and every
//! new id would create new custom metrics; the id is a plain property of each record (searchable in Logs
//! Insights, free). That makes 9 (interval) + 7 (drain) + 3 (`Drains` by `Trigger`) = 19 custom metrics per
//! stack, whatever the fleet size.
//!
//! # Where the lines go
//! Only with `--log-format json`: each record is one JSON line on stderr, where the `tracing` JSON lines go,
//! written with a single `write_all` on the locked stream so it never interleaves with a log line. It carries
//! `timestamp`, `level`, `target` and `message` like the other lines, so a reader of the JSON log sees one
//! format (a report picks the records out by their `record` member: `interval` or `drain`).

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::drain::{DrainReport, HookOutcome};
use crate::instance::InstanceId;
use crate::telemetry::{self, Snapshot};

/// EMF's limits per directive (the format's specification).
pub const MAX_METRICS: usize = 100;
pub const MAX_DIMENSIONS: usize = 30;

/// CloudWatch units used here (a subset of the format's list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    Seconds,
    None,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Seconds => "Seconds",
            Unit::None => "None",
        }
    }
}

struct Directive {
    namespace: String,
    dimensions: Vec<Vec<String>>,
    metrics: Vec<(String, Unit)>,
}

/// One EMF record: `_aws.Timestamp`, `_aws.CloudWatchMetrics` (one or more directives) and the values,
/// dimension values and properties as top-level members. Pure: no clock, no I/O.
pub struct Record {
    timestamp_ms: i64,
    directives: Vec<Directive>,
    fields: Map<String, Value>,
}

impl Record {
    pub fn new(timestamp_ms: i64) -> Record {
        Record {
            timestamp_ms,
            directives: Vec::new(),
            fields: Map::new(),
        }
    }

    /// Start a directive: its namespace and dimension sets (each a list of dimension names whose values are
    /// set with [`Record::dimension`]). The metrics added next belong to it.
    pub fn directive(mut self, namespace: &str, dimension_sets: &[&[&str]]) -> Record {
        let dimensions: Vec<Vec<String>> = dimension_sets
            .iter()
            .map(|set| set.iter().map(|d| d.to_string()).collect())
            .collect();
        assert!(
            dimensions.iter().all(|s| s.len() <= MAX_DIMENSIONS),
            "EMF allows at most {MAX_DIMENSIONS} dimensions per set"
        );
        self.directives.push(Directive {
            namespace: namespace.to_string(),
            dimensions,
            metrics: Vec::new(),
        });
        self
    }

    /// A dimension's value (a top-level string member).
    pub fn dimension(mut self, name: &str, value: &str) -> Record {
        self.fields.insert(name.to_string(), Value::from(value));
        self
    }

    /// A metric of the current directive and its value.
    pub fn metric(mut self, name: &str, unit: Unit, value: f64) -> Record {
        let d = self
            .directives
            .last_mut()
            .expect("Record::directive before Record::metric");
        assert!(
            d.metrics.len() < MAX_METRICS,
            "EMF allows at most {MAX_METRICS} metrics per directive"
        );
        if !d.metrics.iter().any(|(n, _)| n == name) {
            d.metrics.push((name.to_string(), unit));
        }
        self.fields.insert(name.to_string(), json!(value));
        self
    }

    /// A property: logged, searchable, not a metric and not billed as one.
    pub fn property(mut self, name: &str, value: impl Into<Value>) -> Record {
        self.fields.insert(name.to_string(), value.into());
        self
    }

    pub fn to_json(&self) -> Value {
        let directives: Vec<Value> = self
            .directives
            .iter()
            .map(|d| {
                json!({
                    "Namespace": d.namespace,
                    "Dimensions": d.dimensions,
                    "Metrics": d.metrics.iter().map(|(n, u)| json!({"Name": n, "Unit": u.as_str()})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut out = Map::new();
        out.insert(
            "_aws".into(),
            json!({"Timestamp": self.timestamp_ms, "CloudWatchMetrics": directives}),
        );
        for (k, v) in &self.fields {
            out.insert(k.clone(), v.clone());
        }
        Value::Object(out)
    }
}

/// The counters an interval record reports as deltas.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub accepted: f64,
    pub rejected: f64,
    pub duplicate: f64,
    pub conflict: f64,
    pub released: f64,
    pub committed: u64,
    pub latency_sum_s: f64,
}

impl Counters {
    /// The counters in one snapshot of the recorder.
    pub fn read(s: &Snapshot) -> Counters {
        let orders = |status| s.value(telemetry::ORDERS, &[("status", status)]);
        let latency = |part| s.value(&format!("{}_{part}", telemetry::ORDER_LATENCY), &[]);
        Counters {
            accepted: orders("accepted"),
            rejected: orders("rejected"),
            duplicate: orders("duplicate"),
            conflict: orders("conflict"),
            released: s.sum(telemetry::RELEASES),
            committed: latency("count") as u64,
            latency_sum_s: latency("sum"),
        }
    }
}

/// The gauges an interval record reports as values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gauges {
    pub messages_held: u64,
    pub groups_held: u64,
    pub ready: bool,
}

impl Gauges {
    /// The held counts from a snapshot, readiness from its owner.
    pub fn read(s: &Snapshot, admission: &Admission) -> Gauges {
        Gauges {
            messages_held: s.value(telemetry::MESSAGES_IN_FLIGHT, &[]) as u64,
            groups_held: s.value(telemetry::GROUPS_IN_FLIGHT, &[]) as u64,
            ready: admission.ready(),
        }
    }
}

/// What every record carries besides its metrics.
#[derive(Debug, Clone)]
pub struct Context {
    pub namespace: String,
    pub queue_name: String,
    pub instance_id: String,
}

impl Context {
    fn record(&self, timestamp_ms: i64, kind: &str, message: &str) -> Record {
        // The same `timestamp` member as the tracing JSON lines, so a reader of the log can place it in time.
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(timestamp_ms as i128 * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        Record::new(timestamp_ms)
            .property("timestamp", at)
            .property("level", "INFO")
            .property("target", "order_worker::emf")
            .property("message", message)
            .property("record", kind)
            .property("instance_id", self.instance_id.clone())
            .dimension("QueueName", &self.queue_name)
    }
}

/// The interval record: counters as deltas from `prev` to `cur`, gauges as values.
pub fn interval_record(
    ctx: &Context,
    timestamp_ms: i64,
    interval: Duration,
    prev: &Counters,
    cur: &Counters,
    g: &Gauges,
) -> Record {
    let d = |a: f64, b: f64| (b - a).max(0.0);
    let mut r = ctx
        .record(timestamp_ms, "interval", "metrics")
        .property("interval_s", interval.as_secs_f64())
        .directive(&ctx.namespace, &[&["QueueName"]])
        .metric(
            "OrdersAccepted",
            Unit::Count,
            d(prev.accepted, cur.accepted),
        )
        .metric(
            "OrdersRejected",
            Unit::Count,
            d(prev.rejected, cur.rejected),
        )
        .metric(
            "OrdersDuplicate",
            Unit::Count,
            d(prev.duplicate, cur.duplicate),
        )
        .metric(
            "OrdersConflict",
            Unit::Count,
            d(prev.conflict, cur.conflict),
        )
        .metric(
            "MessagesReleased",
            Unit::Count,
            d(prev.released, cur.released),
        );
    let committed = cur.committed.saturating_sub(prev.committed);
    if committed > 0 {
        let mean_ms = d(prev.latency_sum_s, cur.latency_sum_s) / committed as f64 * 1000.0;
        r = r
            .metric("CommitLatency", Unit::Milliseconds, mean_ms)
            .property("committed", committed);
    }
    r.metric("MessagesHeld", Unit::Count, g.messages_held as f64)
        .metric("GroupsHeld", Unit::Count, g.groups_held as f64)
        .metric("Ready", Unit::None, if g.ready { 1.0 } else { 0.0 })
}

/// The drain record: what the drain summary line says, as metrics.
pub fn drain_record(ctx: &Context, timestamp_ms: i64, report: &DrainReport) -> Record {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let (completed, not_completed, hook) = match &report.hook {
        HookOutcome::NotNeeded => (false, false, "not-needed".to_string()),
        HookOutcome::Completed => (true, false, "completed".to_string()),
        HookOutcome::Failed(why) => (false, true, format!("failed: {why}")),
    };
    let trigger = report.trigger.label();
    ctx.record(timestamp_ms, "drain", "drain metrics")
        .dimension("Trigger", trigger)
        .property("trigger_detail", format!("{:?}", report.trigger))
        .property("hook", hook)
        .property(
            "held_up_by",
            report.held_up_by.clone().unwrap_or_else(|| "-".into()),
        )
        .directive(&ctx.namespace, &[&["QueueName"]])
        .metric("Drains", Unit::Count, 1.0)
        .metric("DrainDeadlineHit", Unit::Count, flag(report.deadline_hit))
        .metric("DrainSeconds", Unit::Seconds, report.took.as_secs_f64())
        .metric("DrainOrdersFinished", Unit::Count, report.finished as f64)
        .metric("DrainOrdersReleased", Unit::Count, report.released as f64)
        .metric("HookCompleted", Unit::Count, flag(completed))
        .metric("HookNotCompleted", Unit::Count, flag(not_completed))
        .directive(&ctx.namespace, &[&["QueueName", "Trigger"]])
        .metric("Drains", Unit::Count, 1.0)
}

/// The queue's name from its URL (`https://sqs.../123/orders.fifo` -> `orders.fifo`).
pub fn queue_name(queue_url: &str) -> String {
    queue_url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(queue_url)
        .to_string()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Write one record as one line on stderr (one `write_all` on the locked stream: never interleaved).
pub fn write(record: &Record) {
    let mut line = record.to_json().to_string();
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The running emitter: the last counters reported, so the final record reports only what is new.
pub struct Emitter {
    namespace: String,
    queue_name: String,
    /// Named in every record (the id once known, the fallback until then).
    instance_id: Arc<InstanceId>,
    /// Readiness, for the `Ready` gauge.
    admission: Arc<Admission>,
    last: Mutex<(Counters, std::time::Instant)>,
}

impl Emitter {
    pub fn new(
        namespace: &str,
        queue_url: &str,
        instance_id: Arc<InstanceId>,
        admission: Arc<Admission>,
    ) -> Arc<Emitter> {
        Arc::new(Emitter {
            namespace: namespace.to_string(),
            queue_name: queue_name(queue_url),
            instance_id,
            admission,
            last: Mutex::new((
                Counters::read(&telemetry::snapshot()),
                std::time::Instant::now(),
            )),
        })
    }

    fn ctx(&self) -> Context {
        Context {
            namespace: self.namespace.clone(),
            queue_name: self.queue_name.clone(),
            instance_id: self.instance_id.name().to_owned(),
        }
    }

    /// Write an interval record with the deltas since the previous one.
    pub fn emit_interval(&self) {
        let snapshot = telemetry::snapshot();
        let cur = Counters::read(&snapshot);
        let mut last = self.last.lock().expect("emf lock");
        let record = interval_record(
            &self.ctx(),
            now_ms(),
            last.1.elapsed(),
            &last.0,
            &cur,
            &Gauges::read(&snapshot, &self.admission),
        );
        *last = (cur, std::time::Instant::now());
        write(&record);
    }

    /// Write the drain record.
    pub fn emit_drain(&self, report: &DrainReport) {
        write(&drain_record(&self.ctx(), now_ms(), report));
    }

    /// Emit an interval record every `every` until `stop` fires (the caller writes the last one).
    pub async fn run(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.emit_interval(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::Trigger;

    fn ctx() -> Context {
        Context {
            namespace: "OrderWorker".into(),
            queue_name: "orders.fifo".into(),
            instance_id: "i-0abc".into(),
        }
    }

    fn names(directive: &Value) -> Vec<String> {
        directive["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn interval_reports_counter_deltas_and_gauge_values() {
        let prev = Counters {
            accepted: 10.0,
            rejected: 1.0,
            committed: 11,
            latency_sum_s: 1.1,
            ..Default::default()
        };
        let cur = Counters {
            accepted: 14.0,
            rejected: 2.0,
            conflict: 1.0,
            released: 3.0,
            committed: 16,
            latency_sum_s: 1.6,
            ..Default::default()
        };
        let g = Gauges {
            messages_held: 7,
            groups_held: 2,
            ready: true,
        };
        let v = interval_record(
            &ctx(),
            1_700_000_000_123,
            Duration::from_secs(60),
            &prev,
            &cur,
            &g,
        )
        .to_json();
        assert_eq!(v["_aws"]["Timestamp"], 1_700_000_000_123i64);
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.123Z");
        let d = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(d["Namespace"], "OrderWorker");
        assert_eq!(d["Dimensions"], json!([["QueueName"]]));
        assert_eq!(v["QueueName"], "orders.fifo");
        assert_eq!(v["OrdersAccepted"], 4.0);
        assert_eq!(v["OrdersRejected"], 1.0);
        assert_eq!(v["OrdersDuplicate"], 0.0);
        assert_eq!(v["OrdersConflict"], 1.0);
        assert_eq!(v["MessagesReleased"], 3.0);
        // 5 orders committed in 0.5 s total: 100 ms each.
        assert!(
            (v["CommitLatency"].as_f64().unwrap() - 100.0).abs() < 1e-6,
            "{v}"
        );
        assert_eq!(v["MessagesHeld"], 7.0);
        assert_eq!(v["Ready"], 1.0);
        assert_eq!(v["instance_id"], "i-0abc");
        for name in names(d) {
            assert!(v[&name].is_number(), "{name} has no value in {v}");
        }
        let units: Vec<&str> = d["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Unit"].as_str().unwrap())
            .collect();
        assert!(units.contains(&"Milliseconds"));
    }

    #[test]
    fn no_commit_no_latency_metric() {
        let c = Counters::default();
        let v = interval_record(
            &ctx(),
            1,
            Duration::from_secs(1),
            &c,
            &c,
            &Gauges::default(),
        )
        .to_json();
        let d = &v["_aws"]["CloudWatchMetrics"][0];
        assert!(!names(d).contains(&"CommitLatency".to_string()), "{v}");
        assert!(v.get("CommitLatency").is_none());
        assert_eq!(v["Ready"], 0.0);
    }

    #[test]
    fn a_counter_reset_never_reports_a_negative_delta() {
        let prev = Counters {
            accepted: 5.0,
            ..Default::default()
        };
        let v = interval_record(
            &ctx(),
            1,
            Duration::from_secs(1),
            &prev,
            &Counters::default(),
            &Gauges::default(),
        )
        .to_json();
        assert_eq!(v["OrdersAccepted"], 0.0);
    }

    #[test]
    fn drain_record_has_trigger_dimension_and_hook_flags() {
        let report = DrainReport {
            trigger: Trigger::LifecycleTerminated,
            took: Duration::from_millis(1500),
            finished: 4,
            released: 32,
            deadline_hit: true,
            held_up_by: Some("g1 (3s)".into()),
            hook: HookOutcome::Failed("refused".into()),
        };
        let v = drain_record(&ctx(), 5, &report).to_json();
        let ds = v["_aws"]["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds[1]["Dimensions"], json!([["QueueName", "Trigger"]]));
        assert_eq!(names(&ds[1]), vec!["Drains"]);
        assert_eq!(v["Trigger"], "lifecycle");
        assert_eq!(v["Drains"], 1.0);
        assert_eq!(v["DrainDeadlineHit"], 1.0);
        assert_eq!(v["DrainSeconds"], 1.5);
        assert_eq!(v["DrainOrdersReleased"], 32.0);
        assert_eq!(v["HookCompleted"], 0.0);
        assert_eq!(v["HookNotCompleted"], 1.0);
        assert_eq!(v["hook"], "failed: refused");
        assert_eq!(v["record"], "drain");
    }

    #[test]
    fn counters_and_gauges_are_read_from_the_recorder() {
        let local = telemetry::LocalRecorder::install();
        metrics::counter!(telemetry::ORDERS, "status" => "accepted").increment(4);
        metrics::counter!(telemetry::ORDERS, "status" => "conflict").increment(1);
        metrics::counter!(telemetry::RELEASES, "reason" => "drain").increment(2);
        metrics::counter!(telemetry::RELEASES, "reason" => "rebalance").increment(1);
        metrics::histogram!(telemetry::ORDER_LATENCY).record(0.25);
        metrics::histogram!(telemetry::ORDER_LATENCY).record(0.5);
        metrics::gauge!(telemetry::MESSAGES_IN_FLIGHT).set(7.0);
        metrics::gauge!(telemetry::GROUPS_IN_FLIGHT).set(2.0);
        let s = local.snapshot();
        let c = Counters::read(&s);
        assert_eq!(
            c,
            Counters {
                accepted: 4.0,
                rejected: 0.0,
                duplicate: 0.0,
                conflict: 1.0,
                released: 3.0,
                committed: 2,
                latency_sum_s: 0.75,
            }
        );
        let admission = Admission::default();
        assert!(!Gauges::read(&s, &admission).ready);
        admission.set_ready(true);
        assert_eq!(
            Gauges::read(&s, &admission),
            Gauges {
                messages_held: 7,
                groups_held: 2,
                ready: true,
            }
        );
    }

    #[test]
    fn queue_name_from_url() {
        assert_eq!(
            queue_name("https://sqs.eu-west-1.amazonaws.com/123/orders.fifo"),
            "orders.fifo"
        );
        assert_eq!(queue_name("http://127.0.0.1:1/000/q.fifo/"), "q.fifo");
    }

    #[test]
    #[should_panic(expected = "at most 100 metrics")]
    fn refuses_more_than_100_metrics() {
        let mut r = Record::new(0).directive("N", &[&[]]);
        for i in 0..=MAX_METRICS {
            r = r.metric(&format!("m{i}"), Unit::Count, 0.0);
        }
    }
}
