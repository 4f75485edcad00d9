//! The scaling policy wired to its queue: a backlog that cannot be read is no datapoint, never a zero, so a
//! group whose SQS endpoint is down keeps its capacity (a zero would scale it in after 15 periods).

use std::time::Duration;

use crate::common::*;

#[tokio::test]
async fn an_unreadable_backlog_is_a_missing_datapoint_and_scales_nothing_in() {
    // Scale 0.01: a one-minute period is 0.6 s. Nothing listens on port 1.
    let sim = SimProc::start_with_env(
        &[
            "--desired",
            "3",
            "--min-size",
            "1",
            "--time-scale",
            "0.01",
            "--launch-delay",
            "0s",
            "--instance-warmup",
            "0s",
            "--scaling-queue-url",
            "http://127.0.0.1:1/000000000000/orders.fifo",
        ],
        &[
            ("AWS_ENDPOINT_URL_SQS", "http://127.0.0.1:1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    let s = sim
        .wait_status("16 datapoints", Duration::from_secs(90), |s| {
            s["scaling"]["datapoints"]
                .as_array()
                .is_some_and(|d| d.len() >= 16)
        })
        .await;
    let points = s["scaling"]["datapoints"].as_array().unwrap();
    assert!(
        points
            .iter()
            .all(|p| p["visible"].is_null() && p["metric"].is_null()),
        "{points:?}"
    );
    assert!(points.iter().all(|p| p["alarm"] == "ok"));
    assert_eq!(s["desired"], 3);
    assert_eq!(s["scaling"]["target"], 100.0);
    assert_eq!(s["min_size"], 1);
}
