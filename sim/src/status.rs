//! The human view: a compact table of instances (state, target state, process, notices, orders applied), printed
//! every `--status-every` by the server and on demand by `spot-sim status --api URL`.
//!
//! Orders per instance come from each worker's Prometheus endpoint (`order_worker_orders_total` accepted +
//! rejected). A plain HTTP/1.0 GET over a TcpStream is enough for both that and the status document, so the
//! simulator needs no HTTP client library.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GET `http://host:port/path` (HTTP/1.0, no TLS); returns the status code and body.
pub async fn http_get(url: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let fut = async {
        let mut s = TcpStream::connect(authority).await?;
        s.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: */*\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(timeout, fut)
        .await
        .context("timed out")??;
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("malformed HTTP response")
    };
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    Ok((code, body.to_string()))
}

/// Sum of `order_worker_orders_total{status="accepted"}` and `{status="rejected"}` in Prometheus text.
pub fn orders_applied(metrics: &str) -> Option<u64> {
    let mut total = None;
    for line in metrics.lines() {
        let line = line.trim();
        if !line.starts_with("order_worker_orders_total{") {
            continue;
        }
        if !(line.contains("status=\"accepted\"") || line.contains("status=\"rejected\"")) {
            continue;
        }
        let v: f64 = line.rsplit(' ').next()?.parse().ok()?;
        total = Some(total.unwrap_or(0) + v as u64);
    }
    total
}

/// The value of an unlabelled gauge in Prometheus text, if present.
pub fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (n, v) = l.trim().split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Fetch the status document and every worker's order count, then render the table.
pub async fn fetch_table(api: &str) -> anyhow::Result<String> {
    let (code, body) = http_get(
        &format!("{}/_sim/status", api.trim_end_matches('/')),
        Duration::from_secs(5),
    )
    .await?;
    if code != 200 {
        bail!("status endpoint answered {code}: {body}");
    }
    let status: Value = serde_json::from_str(&body).context("status is not JSON")?;
    Ok(render(&status, &scrape_orders(&status).await))
}

/// Orders per instance, for instances whose worker is alive and answers.
pub async fn scrape_orders(status: &Value) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for i in status["instances"].as_array().into_iter().flatten() {
        let (Some(id), Some(addr)) = (i["id"].as_str(), i["metrics_addr"].as_str()) else {
            continue;
        };
        if i["process_alive"] != Value::Bool(true) {
            continue;
        }
        if let Ok((200, body)) = http_get(
            &format!("http://{addr}/metrics"),
            Duration::from_millis(500),
        )
        .await
        {
            // A worker that answers but has applied nothing yet exports no sample: that is 0, not unknown.
            out.push((id.to_string(), orders_applied(&body).unwrap_or(0)));
        }
    }
    out
}

/// The table itself (pure, tested).
pub fn render(status: &Value, orders: &[(String, u64)]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "group {} desired {} capacity {} time-scale {}",
        status["group"].as_str().unwrap_or("?"),
        status["desired"],
        status["capacity"],
        status["time_scale"]
    );
    let _ = writeln!(
        t,
        "{:<20} {:<20} {:<10} {:>7} {:>7} {:<9} {:<9} {:<22}",
        "INSTANCE", "LIFECYCLE", "TARGET", "PID", "ORDERS", "REBAL", "NOTICE", "IMDS"
    );
    for i in status["instances"].as_array().into_iter().flatten() {
        let id = i["id"].as_str().unwrap_or("?");
        let pid = match (&i["pid"], i["process_alive"].as_bool()) {
            (Value::Number(n), Some(true)) => n.to_string(),
            (Value::Number(n), _) => format!("({n})"),
            _ => "ext".into(),
        };
        let orders = orders
            .iter()
            .find(|(o, _)| o == id)
            .map(|(_, n)| n.to_string())
            .unwrap_or_else(|| "-".into());
        let hhmmss = |v: &Value| {
            v.as_str()
                .and_then(|s| s.get(11..19))
                .unwrap_or("-")
                .to_string()
        };
        let _ = writeln!(
            t,
            "{:<20} {:<20} {:<10} {:>7} {:>7} {:<9} {:<9} {:<22}",
            id,
            i["lifecycle_state"].as_str().unwrap_or("?"),
            i["target_lifecycle_state"].as_str().unwrap_or("-"),
            pid,
            orders,
            hhmmss(&i["rebalance_notice_time"]),
            hhmmss(&i["interruption_notice"]["time"]),
            i["imds_url"]
                .as_str()
                .unwrap_or("?")
                .trim_start_matches("http://"),
        );
    }
    // Fixed-width columns leave trailing blanks; drop them.
    t.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn orders_from_prometheus_text() {
        let m = "# HELP order_worker_orders_total x\n# TYPE order_worker_orders_total counter\n\
                 order_worker_orders_total{status=\"accepted\"} 41\n\
                 order_worker_orders_total{status=\"rejected\"} 2\n\
                 order_worker_orders_total{status=\"duplicate\"} 7\n";
        assert_eq!(orders_applied(m), Some(43));
        assert_eq!(orders_applied("order_worker_drains_total 1\n"), None);
    }

    #[test]
    fn table_rows() {
        let s = json!({"group": "order-workers", "desired": 1, "capacity": 1, "time_scale": 0.05, "instances": [
            {"id": "i-0123456789abcdef0", "lifecycle_state": "Terminating:Wait", "target_lifecycle_state": "Terminated",
             "pid": 42, "process_alive": true, "imds_url": "http://127.0.0.1:5000",
             "interruption_notice": {"action": "terminate", "time": "2026-11-25T08:22:00Z"}}]});
        let t = render(&s, &[("i-0123456789abcdef0".into(), 12)]);
        assert!(t.contains("Terminating:Wait"), "{t}");
        assert!(t.contains("08:22:00"), "{t}");
        assert!(t.contains(" 12 "), "{t}");
    }

    #[test]
    fn a_gauge_is_read_by_its_exact_name() {
        let m = "# TYPE order_worker_groups_in_flight gauge\norder_worker_groups_in_flight 3\norder_worker_groups_in_flight_x 9\n";
        assert_eq!(gauge(m, "order_worker_groups_in_flight"), Some(3.0));
        assert_eq!(gauge(m, "order_worker_nothing"), None);
    }
}
