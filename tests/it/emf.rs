//! The worker's CloudWatch Embedded Metric Format records, read from its real JSON log after a run against
//! the emulator, checked against the format's rules, and against what the worker really did.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use serde_json::Value;

/// CloudWatch's unit names (the EMF specification's list).
const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// Check one record against the EMF specification; returns every rule it breaks.
fn emf_problems(v: &Value, not_before_ms: i64, not_after_ms: i64) -> Vec<String> {
    let mut p = Vec::new();
    let Some(root) = v.as_object() else {
        return vec!["the record is not a JSON object".into()];
    };
    let Some(aws) = root.get("_aws").and_then(Value::as_object) else {
        return vec!["no _aws object".into()];
    };
    match aws.get("Timestamp").and_then(Value::as_i64) {
        Some(t) if (not_before_ms..=not_after_ms).contains(&t) => {}
        Some(t) => p.push(format!(
            "Timestamp {t} is not epoch milliseconds within the run"
        )),
        None => p.push("_aws.Timestamp is not an integer".into()),
    }
    let Some(directives) = aws.get("CloudWatchMetrics").and_then(Value::as_array) else {
        p.push("_aws.CloudWatchMetrics is not an array".into());
        return p;
    };
    if directives.is_empty() {
        p.push("_aws.CloudWatchMetrics is empty".into());
    }
    for d in directives {
        match d.get("Namespace").and_then(Value::as_str) {
            Some(ns) if (1..=255).contains(&ns.len()) && !ns.starts_with("AWS/") => {}
            other => p.push(format!("bad Namespace {other:?}")),
        }
        match d.get("Dimensions").and_then(Value::as_array) {
            None => p.push("Dimensions is not an array".into()),
            Some(sets) => {
                for set in sets {
                    let Some(names) = set.as_array() else {
                        p.push(format!("dimension set {set} is not an array"));
                        continue;
                    };
                    if names.len() > 30 {
                        p.push(format!("dimension set of {} names (max 30)", names.len()));
                    }
                    for n in names {
                        let Some(n) = n.as_str() else {
                            p.push(format!("dimension name {n} is not a string"));
                            continue;
                        };
                        match root.get(n) {
                            Some(Value::String(s)) if (1..=1024).contains(&s.len()) => {}
                            other => p.push(format!(
                                "dimension {n} has no string value at the top level: {other:?}"
                            )),
                        }
                    }
                }
            }
        }
        match d.get("Metrics").and_then(Value::as_array) {
            None => p.push("Metrics is not an array".into()),
            Some(metrics) => {
                if metrics.len() > 100 {
                    p.push(format!(
                        "{} metrics in one directive (max 100)",
                        metrics.len()
                    ));
                }
                for m in metrics {
                    let Some(name) = m.get("Name").and_then(Value::as_str) else {
                        p.push(format!("metric without a Name: {m}"));
                        continue;
                    };
                    if !(1..=255).contains(&name.len()) || name == "_aws" {
                        p.push(format!("bad metric name {name:?}"));
                    }
                    if let Some(u) = m.get("Unit") {
                        if !u.as_str().is_some_and(|u| UNITS.contains(&u)) {
                            p.push(format!("{name}: unit {u} is not a CloudWatch unit"));
                        }
                    }
                    match root.get(name) {
                        Some(Value::Number(_)) => {}
                        Some(Value::Array(a))
                            if a.len() <= 100 && a.iter().all(Value::is_number) => {}
                        other => p.push(format!(
                            "metric {name} has no numeric value at the top level: {other:?}"
                        )),
                    }
                }
            }
        }
    }
    p
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The EMF records of a JSON log, in order (every line of the log must be JSON).
fn emf_records(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|v| v.get("_aws").is_some())
        .collect()
}

/// The metrics address from the JSON log line `metrics on /metrics, ...` (field `addr`).
fn sum(records: &[&Value], metric: &str) -> f64 {
    records.iter().filter_map(|r| r[metric].as_f64()).sum()
}

#[test]
fn the_validator_catches_broken_records() {
    let ok = serde_json::json!({
        "_aws": {"Timestamp": 5, "CloudWatchMetrics": [
            {"Namespace": "N", "Dimensions": [["Q"]], "Metrics": [{"Name": "M", "Unit": "Count"}]}]},
        "Q": "orders.fifo", "M": 1.0
    });
    assert!(emf_problems(&ok, 0, 10).is_empty());
    let mut no_value = ok.clone();
    no_value.as_object_mut().unwrap().remove("M");
    assert!(!emf_problems(&no_value, 0, 10).is_empty());
    let mut bad_unit = ok.clone();
    bad_unit["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"] = "Orders".into();
    assert!(!emf_problems(&bad_unit, 0, 10).is_empty());
    let mut no_dim = ok.clone();
    no_dim.as_object_mut().unwrap().remove("Q");
    assert!(!emf_problems(&no_dim, 0, 10).is_empty());
    assert!(
        !emf_problems(&ok, 6, 10).is_empty(),
        "timestamp out of range"
    );
    let many: Vec<Value> = (0..101)
        .map(|i| serde_json::json!({"Name": format!("m{i}")}))
        .collect();
    let mut too_many = ok.clone();
    too_many["_aws"]["CloudWatchMetrics"][0]["Metrics"] = Value::Array(many);
    for i in 0..101 {
        too_many[format!("m{i}")] = 1.into();
    }
    assert!(!emf_problems(&too_many, 0, 10).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emf_records_in_the_json_log_follow_the_format_and_match_the_work() {
    let started_ms = now_ms();
    let emu = Emulator::start("emf").await;
    let fx = Fixture::new(&emu, "emf").await;
    let g = "cust-1";
    let ids: Vec<String> = (1..=5).map(|i| format!("emf-{i}")).collect();
    let mut msgs: Vec<(String, String)> = ids
        .iter()
        .map(|id| (id.clone(), order_body(id, g)))
        .collect();
    // One malformed body (REJECTED) and one reuse of an id with another payload (a conflict).
    msgs.push(("bad-1".into(), "{not json".into()));
    msgs.push((
        "emf-1-changed".into(),
        order_body("emf-1", g).replace("\"qty\":2", "\"qty\":3"),
    ));
    fx.send(g, &msgs).await;

    let mut worker = fx.worker("emf", &["--log-format", "json", "--emf-interval", "1s"]);
    fx.wait_records(6, Duration::from_secs(60)).await;
    // The interval records must come to report all of it (a condition with a deadline, not a sleep).
    wait_for(
        "interval records adding up to 5 accepted, 1 rejected, 1 conflict",
        Duration::from_secs(30),
        || async {
            let records = emf_records(&worker.log_text());
            let intervals: Vec<&Value> = records
                .iter()
                .filter(|r| r["record"] == "interval")
                .collect();
            (sum(&intervals, "OrdersAccepted") == 5.0
                && sum(&intervals, "OrdersRejected") == 1.0
                && sum(&intervals, "OrdersConflict") == 1.0)
                .then_some(())
        },
    )
    .await;
    // The Prometheus endpoint stays, and agrees.
    assert_eq!(
        metric(&worker, "order_worker_orders_total{status=\"accepted\"}").await,
        5.0
    );
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    let finished_ms = now_ms();

    let log = worker.log_text();
    let records = emf_records(&log);
    for r in &records {
        let problems = emf_problems(r, started_ms, finished_ms);
        assert!(problems.is_empty(), "{problems:?} in {r}");
        assert_eq!(r["QueueName"], fx.queue_url.rsplit('/').next().unwrap());
        assert_eq!(r["instance_id"], "emf");
        assert_eq!(
            r["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "OrderWorker"
        );
    }
    let intervals: Vec<&Value> = records
        .iter()
        .filter(|r| r["record"] == "interval")
        .collect();
    let drains: Vec<&Value> = records.iter().filter(|r| r["record"] == "drain").collect();
    assert!(intervals.len() >= 2, "{log}");
    // Deltas: the whole run adds up to what was done, the last interval record included, nothing twice.
    assert_eq!(sum(&intervals, "OrdersAccepted"), 5.0, "{log}");
    assert_eq!(sum(&intervals, "OrdersRejected"), 1.0, "{log}");
    assert_eq!(sum(&intervals, "OrdersConflict"), 1.0, "{log}");
    assert!(
        intervals
            .iter()
            .any(|r| r["CommitLatency"].as_f64().is_some_and(|l| l > 0.0)),
        "{log}"
    );
    // Exactly one drain record, last, after the drain summary line, saying what the drain did.
    assert_eq!(drains.len(), 1, "{log}");
    let d = drains[0];
    assert_eq!(records.last().unwrap(), d);
    assert_eq!(d["Trigger"], "signal");
    assert_eq!(d["Drains"], 1.0);
    assert_eq!(d["DrainDeadlineHit"], 0.0);
    assert_eq!(d["HookCompleted"], 0.0);
    assert_eq!(d["HookNotCompleted"], 0.0);
    assert_eq!(d["hook"], "not-needed");
    let dims: Vec<&Value> = d["_aws"]["CloudWatchMetrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| &x["Dimensions"])
        .collect();
    assert!(dims.contains(&&serde_json::json!([["QueueName", "Trigger"]])));
    let summary = log.find("drain complete").expect("the drain summary line");
    let drain_line = log.find("\"record\":\"drain\"").expect("the drain record");
    assert!(summary < drain_line);
    // After the drain nothing is held and the worker is not ready.
    let last_interval = intervals.last().unwrap();
    assert_eq!(last_interval["Ready"], 0.0);
    assert_eq!(last_interval["MessagesHeld"], 0.0);
}
