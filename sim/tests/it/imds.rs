//! IMDSv2 as a Spot instance sees it: token rules, notices, target lifecycle state, tags, faults.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

const SPOT: &str = "/latest/meta-data/spot/instance-action";
const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";
const TARGET: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";

#[tokio::test]
async fn token_rules() {
    let sim = SimProc::start(&["--desired", "0"]).await;
    let (id, imds) = sim.external().await;
    let h = &sim.http;

    // TTL must be an integer 1..21600.
    for bad in ["0", "21601", "abc", "-1", ""] {
        assert_eq!(token(h, &imds, bad).await.0, 400, "ttl {bad:?}");
    }
    let r = h
        .put(format!("{imds}/latest/api/token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "missing TTL header");
    let (code, tok) = token(h, &imds, "21600").await;
    assert_eq!(code, 200);
    assert!(!tok.is_empty());

    // GET needs a live token.
    assert_eq!(
        md(h, &imds, "/latest/meta-data/instance-id", None).await.0,
        401
    );
    assert_eq!(
        md(h, &imds, "/latest/meta-data/instance-id", Some("bogus"))
            .await
            .0,
        401
    );
    assert_eq!(
        md(h, &imds, "/latest/meta-data/instance-id", Some(&tok)).await,
        (200, id.clone())
    );

    // A 1-second token expires.
    let (_, short) = token(h, &imds, "1").await;
    assert_eq!(
        md(h, &imds, "/latest/meta-data/instance-id", Some(&short))
            .await
            .0,
        200
    );
    eventually(
        "the 1 s token to expire",
        Duration::from_secs(5),
        || async {
            (md(h, &imds, "/latest/meta-data/instance-id", Some(&short))
                .await
                .0
                == 401)
                .then_some(())
        },
    )
    .await;
    // The long one still works; expiring all tokens makes it 401 too.
    assert_eq!(
        md(h, &imds, "/latest/meta-data/instance-id", Some(&tok))
            .await
            .0,
        200
    );
    let (code, _) = sim
        .post(
            &format!("/_sim/instances/{id}/imds-fault"),
            json!({"expire_tokens": true}),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        md(h, &imds, "/latest/meta-data/instance-id", Some(&tok))
            .await
            .0,
        401
    );
    let (_, fresh) = token(h, &imds, "60").await;
    assert_eq!(
        md(h, &imds, "/latest/meta-data/instance-id", Some(&fresh))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn metadata_paths_and_tags() {
    let sim = SimProc::start(&[
        "--desired",
        "0",
        "--group-name",
        "g1",
        "--instance-type",
        "m7g.medium",
    ])
    .await;
    let (id, imds) = sim.external().await;
    let h = &sim.http;
    let (_, tok) = token(h, &imds, "300").await;
    let t = Some(tok.as_str());
    assert_eq!(
        md(h, &imds, "/latest/meta-data/instance-type", t).await,
        (200, "m7g.medium".into())
    );
    let (code, az) = md(h, &imds, "/latest/meta-data/placement/availability-zone", t).await;
    assert_eq!(code, 200);
    assert!(az.starts_with("us-east-1"), "{az}");
    let (code, keys) = md(h, &imds, "/latest/meta-data/tags/instance/", t).await;
    assert_eq!(code, 200);
    assert!(
        keys.lines().any(|k| k == "aws:autoscaling:groupName"),
        "{keys}"
    );
    assert_eq!(
        md(
            h,
            &imds,
            "/latest/meta-data/tags/instance/aws:autoscaling:groupName",
            t
        )
        .await,
        (200, "g1".into())
    );
    assert_eq!(
        md(h, &imds, "/latest/meta-data/tags/instance/nope", t)
            .await
            .0,
        404
    );
    assert_eq!(
        md(h, &imds, "/latest/meta-data/no/such/path", t).await.0,
        404
    );
    // The status document points at the same server.
    assert_eq!(sim.instance(&id).await["imds_url"], imds.as_str());
}

#[tokio::test]
async fn notice_appears_with_a_fixed_time() {
    let sim = SimProc::start(&["--desired", "0", "--time-scale", "1"]).await;
    let (id, imds) = sim.external().await;
    let h = &sim.http;
    let (_, tok) = token(h, &imds, "300").await;
    let t = Some(tok.as_str());
    assert_eq!(md(h, &imds, SPOT, t).await.0, 404);
    assert_eq!(md(h, &imds, REBALANCE, t).await.0, 404);

    let before = now_epoch();
    let (code, v) = sim
        .post(
            &format!("/_sim/instances/{id}/interrupt"),
            json!({"in_seconds": 120}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let (code, body) = md(h, &imds, SPOT, t).await;
    assert_eq!(code, 200);
    let notice: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(notice["action"], "terminate");
    let time = notice["time"].as_str().unwrap().to_string();
    assert!(
        time.ends_with('Z') && time.len() == 20,
        "RFC 3339 with seconds: {time}"
    );
    let at = epoch(&time);
    assert!(
        at >= before + 119.0 && at <= before + 122.0,
        "notice time {time} should be ~2 min ahead"
    );
    assert_eq!(v["terminate_at"], time.as_str());

    // Polled again later, the time does not move.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, again) = md(h, &imds, SPOT, t).await;
    assert_eq!(
        serde_json::from_str::<Value>(&again).unwrap()["time"],
        time.as_str()
    );

    // The group learned of the interruption: Terminating:Wait, target Terminated.
    assert_eq!(md(h, &imds, TARGET, t).await, (200, "Terminated".into()));
    assert_eq!(
        sim.instance(&id).await["lifecycle_state"],
        "Terminating:Wait"
    );

    // A rebalance recommendation is separate.
    let (code, _) = sim
        .post(&format!("/_sim/instances/{id}/rebalance"), json!({}))
        .await;
    assert_eq!(code, 200);
    let (code, body) = md(h, &imds, REBALANCE, t).await;
    assert_eq!(code, 200);
    let reb: Value = serde_json::from_str(&body).unwrap();
    assert!(reb["noticeTime"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn target_lifecycle_state_follows_the_group() {
    // An auto-launched instance stays Pending for an hour: no transition yet -> 404.
    let sim = SimProc::start(&["--desired", "1", "--launch-delay", "1h"]).await;
    let s = sim
        .wait_status("the first launch", Duration::from_secs(5), |s| {
            !ids_in(s, "Pending").is_empty()
        })
        .await;
    let pending = find(&s, &ids_in(&s, "Pending")[0]).unwrap().clone();
    let h = &sim.http;
    let pimds = pending["imds_url"].as_str().unwrap();
    let (_, ptok) = token(h, pimds, "60").await;
    assert_eq!(md(h, pimds, TARGET, Some(&ptok)).await.0, 404);

    // A registered instance is InService; scale-in makes it Terminated while the hook holds it.
    let (id, imds) = sim.external().await;
    let (_, tok) = token(h, &imds, "60").await;
    assert_eq!(
        md(h, &imds, TARGET, Some(&tok)).await,
        (200, "InService".into())
    );
    let (code, v) = sim
        .post(&format!("/_sim/instances/{id}/scale-in"), json!({}))
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        md(h, &imds, TARGET, Some(&tok)).await,
        (200, "Terminated".into())
    );
    assert_eq!(
        sim.instance(&id).await["lifecycle_state"],
        "Terminating:Wait"
    );
}

#[tokio::test]
async fn fault_modes() {
    let sim = SimProc::start(&["--desired", "0"]).await;
    let (id, imds) = sim.external().await;
    let h = &sim.http;
    let (_, tok) = token(h, &imds, "300").await;
    let t = Some(tok.as_str());
    let fault = |mode: &'static str| {
        let sim = &sim;
        let id = id.clone();
        async move {
            let (code, v) = sim
                .post(
                    &format!("/_sim/instances/{id}/imds-fault"),
                    json!({"mode": mode}),
                )
                .await;
            assert_eq!(code, 200, "{v}");
        }
    };
    sim.post(
        &format!("/_sim/instances/{id}/interrupt"),
        json!({"in_seconds": 600}),
    )
    .await;

    fault("error500").await;
    assert_eq!(md(h, &imds, SPOT, t).await.0, 500);
    assert_eq!(token(h, &imds, "60").await.0, 500);

    fault("forbidden").await;
    assert_eq!(md(h, &imds, SPOT, t).await.0, 403);

    fault("throttle").await;
    for _ in 0..5 {
        let c = md(h, &imds, SPOT, t).await.0;
        assert!(c == 429 || c == 503, "throttle answered {c}");
    }

    fault("malformed").await;
    let (code, body) = md(h, &imds, SPOT, t).await;
    assert_eq!(code, 200);
    assert!(
        serde_json::from_str::<Value>(&body).is_err(),
        "malformed body parsed: {body}"
    );
    // Non-JSON paths still answer normally.
    assert_eq!(
        md(h, &imds, "/latest/meta-data/instance-id", t).await,
        (200, id.clone())
    );

    fault("hang").await;
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let r = quick
        .get(format!("{imds}{SPOT}"))
        .header("X-aws-ec2-metadata-token", &tok)
        .send()
        .await;
    assert!(r.is_err_and(|e| e.is_timeout()), "hang must not answer");

    fault("none").await;
    let (code, body) = md(h, &imds, SPOT, t).await;
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["action"],
        "terminate"
    );

    let (code, _) = sim
        .post(
            &format!("/_sim/instances/{id}/imds-fault"),
            json!({"mode": "bogus"}),
        )
        .await;
    assert_eq!(code, 400);
}

/// The AWS SDK's own IMDS client (what the worker may use) works against the simulator.
#[tokio::test]
async fn aws_sdk_imds_client_works() {
    use aws_config::imds::client::error::ImdsError;
    let sim = SimProc::start(&["--desired", "0"]).await;
    let (id, imds) = sim.external().await;
    let client = aws_config::imds::Client::builder()
        .endpoint(&imds)
        .unwrap()
        .build();
    let got = client.get("/latest/meta-data/instance-id").await.unwrap();
    assert_eq!(got.as_ref(), id);
    match client.get(SPOT).await {
        Err(ImdsError::ErrorResponse(r)) => assert_eq!(r.response().status().as_u16(), 404),
        other => panic!("expected a 404 error response, got {other:?}"),
    }
    sim.post(
        &format!("/_sim/instances/{id}/interrupt"),
        json!({"in_seconds": 120}),
    )
    .await;
    let notice: Value = serde_json::from_str(client.get(SPOT).await.unwrap().as_ref()).unwrap();
    assert_eq!(notice["action"], "terminate");
    // Expire every token. The SDK client keeps its cached token (it only refetches when its own TTL says so,
    // and retries a 401 with the same token), so it now fails; a fresh client fetches a new token and works.
    // Workers that must survive a token reset should drop their client on 401.
    sim.post(
        &format!("/_sim/instances/{id}/imds-fault"),
        json!({"expire_tokens": true}),
    )
    .await;
    match client.get(SPOT).await {
        Err(ImdsError::ErrorResponse(r)) => assert_eq!(r.response().status().as_u16(), 401),
        other => panic!("expected 401 with the cached token, got {other:?}"),
    }
    let client = aws_config::imds::Client::builder()
        .endpoint(&imds)
        .unwrap()
        .build();
    let again: Value = serde_json::from_str(client.get(SPOT).await.unwrap().as_ref()).unwrap();
    assert_eq!(again["time"], notice["time"]);
    assert_eq!(client.get(TARGET).await.unwrap().as_ref(), "Terminated");
}
