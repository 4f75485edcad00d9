//! FIS over raw REST-JSON: templates, experiments, target selection and the timing of the interruption.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

fn template(target: Value, duration: &str) -> Value {
    json!({
        "clientToken": "t1",
        "description": "spot interruption",
        "roleArn": "arn:aws:iam::123456789012:role/fis",
        "stopConditions": [{"source": "none"}],
        "targets": {"workers": target},
        "actions": {"interrupt": {
            "actionId": "aws:ec2:send-spot-instance-interruptions",
            "parameters": {"durationBeforeInterruption": duration},
            "targets": {"SpotInstances": "workers"}
        }},
        "tags": {"Name": "t"}
    })
}

fn by_tag(selection: &str) -> Value {
    json!({
        "resourceType": "aws:ec2:spot-instance",
        "resourceTags": {"aws:autoscaling:groupName": "order-workers"},
        "filters": [{"path": "State.Name", "values": ["running"]}],
        "selectionMode": selection
    })
}

/// A raw FIS call: (status, x-amzn-ErrorType, JSON body).
async fn call(
    sim: &SimProc,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let mut rq = sim.http.request(method, format!("{}{path}", sim.api));
    if let Some(b) = body {
        rq = rq.json(&b);
    }
    let r = rq.send().await.unwrap();
    let code = r.status().as_u16();
    let et = r
        .headers()
        .get("x-amzn-ErrorType")
        .map(|v| v.to_str().unwrap().to_string());
    (code, et, r.json().await.unwrap_or(Value::Null))
}

async fn create(sim: &SimProc, t: Value) -> String {
    let (code, et, v) = call(sim, reqwest::Method::POST, "/experimentTemplates", Some(t)).await;
    assert_eq!(code, 200, "{et:?} {v}");
    v["experimentTemplate"]["id"].as_str().unwrap().to_string()
}

async fn start(sim: &SimProc, tid: &str) -> Value {
    let body =
        json!({"experimentTemplateId": tid, "clientToken": format!("c-{tid}-{}", now_epoch())});
    let (code, et, v) = call(sim, reqwest::Method::POST, "/experiments", Some(body)).await;
    assert_eq!(code, 200, "{et:?} {v}");
    v["experiment"].clone()
}

async fn experiment(sim: &SimProc, id: &str) -> Value {
    call(
        sim,
        reqwest::Method::GET,
        &format!("/experiments/{id}"),
        None,
    )
    .await
    .2["experiment"]
        .clone()
}

fn chosen(exp: &Value) -> Vec<String> {
    exp["spotSimResolvedTargets"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

async fn fleet_of(sim: &SimProc, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(sim.external().await.0);
    }
    ids
}

#[tokio::test]
async fn template_lifecycle_and_errors() {
    let sim = SimProc::start(&["--desired", "0"]).await;
    let tid = create(&sim, template(by_tag("ALL"), "PT2M")).await;
    assert!(tid.starts_with("EXT"));
    let (code, _, v) = call(
        &sim,
        reqwest::Method::GET,
        &format!("/experimentTemplates/{tid}"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(v["experimentTemplate"]["id"], tid.as_str());
    assert_eq!(
        v["experimentTemplate"]["actions"]["interrupt"]["parameters"]["durationBeforeInterruption"],
        "PT2M"
    );
    let (code, _, v) = call(
        &sim,
        reqwest::Method::DELETE,
        &format!("/experimentTemplates/{tid}"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(v["experimentTemplate"]["id"], tid.as_str());
    let (code, et, v) = call(
        &sim,
        reqwest::Method::GET,
        &format!("/experimentTemplates/{tid}"),
        None,
    )
    .await;
    assert_eq!(
        (code, et.as_deref()),
        (404, Some("ResourceNotFoundException"))
    );
    assert!(v["message"].is_string());
    // Nothing to target: the experiment fails (emptyTargetResolutionMode defaults to fail).
    let tid2 = create(&sim, template(by_tag("ALL"), "PT2M")).await;
    let empty = start(&sim, &tid2).await;
    assert_eq!(empty["state"]["status"], "failed", "{empty}");
    assert!(empty["state"]["reason"].as_str().unwrap().contains("empty"));
    let (code, et, _) = call(&sim, reqwest::Method::GET, "/experiments/EXPnope", None).await;
    assert_eq!(
        (code, et.as_deref()),
        (404, Some("ResourceNotFoundException"))
    );
    let (code, et, _) = call(
        &sim,
        reqwest::Method::POST,
        "/experiments",
        Some(json!({"experimentTemplateId": "EXTnope"})),
    )
    .await;
    assert_eq!(
        (code, et.as_deref()),
        (404, Some("ResourceNotFoundException"))
    );

    // Validation: PT1M and PT16M, a bad selection mode, more than 5 ARNs.
    for bad in [
        template(by_tag("ALL"), "PT1M"),
        template(by_tag("ALL"), "PT16M"),
        template(by_tag("SOME(3)"), "PT2M"),
        template(
            json!({"resourceType": "aws:ec2:spot-instance", "selectionMode": "ALL",
                   "resourceArns": (0..6).map(|i| format!("arn:aws:ec2:us-east-1:123456789012:instance/i-0000000000000000{i}")).collect::<Vec<_>>()}),
            "PT2M",
        ),
        json!({"description": "x"}),
    ] {
        let (code, et, v) = call(
            &sim,
            reqwest::Method::POST,
            "/experimentTemplates",
            Some(bad.clone()),
        )
        .await;
        assert_eq!(
            (code, et.as_deref()),
            (400, Some("ValidationException")),
            "{bad} -> {v}"
        );
        assert!(v["message"].is_string());
    }
}

#[tokio::test]
async fn selection_modes_pick_the_right_number() {
    let sim = SimProc::start(&["--desired", "0", "--capacity-rebalance", "false"]).await;
    let ids = fleet_of(&sim, 4).await;
    // PT15M: nothing terminates during this test.
    let count = start(
        &sim,
        &create(&sim, template(by_tag("COUNT(2)"), "PT15M")).await,
    )
    .await;
    assert_eq!(count["state"]["status"], "running", "{count}");
    assert_eq!(chosen(&count).len(), 2);
    let pct = start(
        &sim,
        &create(&sim, template(by_tag("PERCENT(50)"), "PT15M")).await,
    )
    .await;
    assert_eq!(chosen(&pct).len(), 2);
    let all = start(&sim, &create(&sim, template(by_tag("ALL"), "PT15M")).await).await;
    assert_eq!(chosen(&all).len(), 4);
    // By ARN: exactly those.
    let arns = json!({"resourceType": "aws:ec2:spot-instance", "selectionMode": "ALL",
                      "resourceArns": [format!("arn:aws:ec2:us-east-1:123456789012:instance/{}", ids[3])]});
    let one = start(&sim, &create(&sim, template(arns, "PT15M")).await).await;
    assert_eq!(chosen(&one), vec![ids[3].clone()]);
    // Every chosen instance got its rebalance recommendation at once.
    let s = sim.status().await;
    for id in chosen(&all) {
        assert!(find(&s, &id).unwrap()["rebalance_notice_time"].is_string());
    }
    let (code, _, list) = call(&sim, reqwest::Method::GET, "/experiments", None).await;
    assert_eq!(code, 200);
    assert_eq!(list["experiments"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn more_than_five_targets_fail_the_experiment() {
    let sim = SimProc::start(&["--desired", "0", "--capacity-rebalance", "false"]).await;
    let ids = fleet_of(&sim, 6).await;
    let exp = start(&sim, &create(&sim, template(by_tag("ALL"), "PT2M")).await).await;
    assert_eq!(exp["state"]["status"], "failed", "{exp}");
    assert!(exp["state"]["reason"]
        .as_str()
        .unwrap()
        .contains("at most 5"));
    // Nothing was touched.
    let s = sim.status().await;
    for id in ids {
        let i = find(&s, &id).unwrap();
        assert!(i["rebalance_notice_time"].is_null() && i["interruption_scheduled"].is_null());
    }
    // COUNT(5) of the same six is fine.
    let ok = start(
        &sim,
        &create(&sim, template(by_tag("COUNT(5)"), "PT15M")).await,
    )
    .await;
    assert_eq!(ok["state"]["status"], "running");
}

#[tokio::test]
async fn interruption_timing_rebalance_notice_termination() {
    // Scale 0.02: PT3M = 3.6 s; the notice shows 2 min (2.4 s) before the end, at ~1.2 s. The hook timeout is
    // an hour, so only the interruption itself can end the instance.
    let sim = SimProc::start(&[
        "--desired",
        "0",
        "--time-scale",
        "0.02",
        "--capacity-rebalance",
        "false",
        "--hook-timeout",
        "1h",
    ])
    .await;
    let (id, imds) = sim.external().await;
    let h = &sim.http;
    let (_, tok) = token(h, &imds, "300").await;
    let t = Some(tok.as_str());
    let arns = json!({"resourceType": "aws:ec2:spot-instance", "selectionMode": "ALL",
                      "resourceArns": [format!("arn:aws:ec2:us-east-1:123456789012:instance/{id}")]});
    let tid = create(&sim, template(arns, "PT3M")).await;
    let exp = start(&sim, &tid).await;
    // Timed from the experiment's own start, as the simulator recorded it: the test's clock before the start
    // call also counts the call, slow with the suite's other tests beside it (2.23 s once, against ~1.2 s).
    let t0 = exp["startTime"]
        .as_f64()
        .expect("the experiment's startTime");
    let eid = exp["id"].as_str().unwrap().to_string();
    assert_eq!(exp["actions"]["interrupt"]["state"]["status"], "running");

    // Rebalance at once, no notice yet.
    assert_eq!(
        md(
            h,
            &imds,
            "/latest/meta-data/events/recommendations/rebalance",
            t
        )
        .await
        .0,
        200
    );
    assert_eq!(
        md(h, &imds, "/latest/meta-data/spot/instance-action", t)
            .await
            .0,
        404
    );
    assert_eq!(sim.instance(&id).await["lifecycle_state"], "InService");

    // The notice: about 1.2 s after the start, time = the end.
    let body = eventually("the notice", Duration::from_secs(5), || async {
        let (c, b) = md(h, &imds, "/latest/meta-data/spot/instance-action", t).await;
        (c == 200).then_some(b)
    })
    .await;
    // When the simulator showed it (its own event time), not when this test's polling saw it: with the suite's
    // other tests beside it, the polling alone once added a second.
    let inst = sim.instance(&id).await;
    let shown = inst["events"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["kind"] == "notice"))
        .and_then(|e| e["at"].as_str())
        .map(epoch)
        .unwrap_or_else(|| panic!("no notice event: {inst}"));
    let seen = shown - t0;
    assert!(
        (0.9..2.2).contains(&seen),
        "notice after {seen:.2}s, expected ~1.2s"
    );
    let notice: Value = serde_json::from_str(&body).unwrap();
    let end = epoch(notice["time"].as_str().unwrap());
    assert!(
        (t0 + 3.3..t0 + 5.0).contains(&end),
        "end {:.2}s after start",
        end - t0
    );
    // The group learned of it: the hook started.
    assert_eq!(
        sim.instance(&id).await["lifecycle_state"],
        "Terminating:Wait"
    );
    assert_eq!(
        md(
            h,
            &imds,
            "/latest/meta-data/autoscaling/target-lifecycle-state",
            t
        )
        .await
        .1,
        "Terminated"
    );

    // Termination at the notice time, not before, though nobody completed the hook (120 s sim = 2.4 s).
    let i = sim
        .wait_lifecycle(&id, "Terminated", Duration::from_secs(8))
        .await;
    let died = epoch(i["terminated_at"].as_str().unwrap());
    assert!(
        died >= end - 0.01 && died < end + 0.6,
        "terminated {:.2}s vs notice time",
        died - end
    );
    assert!(i["events"]
        .to_string()
        .contains("spot interruption: instance reclaimed"));

    let exp = eventually("completed", Duration::from_secs(3), || async {
        let e = experiment(&sim, &eid).await;
        (e["state"]["status"] == "completed").then_some(e)
    })
    .await;
    assert_eq!(exp["actions"]["interrupt"]["state"]["status"], "completed");
    assert!(exp["endTime"].is_number());
}

#[tokio::test]
async fn stop_experiment_cancels_pending_effects() {
    let sim = SimProc::start(&[
        "--desired",
        "0",
        "--time-scale",
        "0.01",
        "--capacity-rebalance",
        "false",
    ])
    .await;
    let (id, _) = sim.external().await;
    // PT3M at 0.01: the notice would show at 0.6 s and the instance die at 1.8 s.
    let t0 = std::time::Instant::now();
    let exp = start(&sim, &create(&sim, template(by_tag("ALL"), "PT3M")).await).await;
    let eid = exp["id"].as_str().unwrap();
    assert!(sim.instance(&id).await["interruption_scheduled"].is_string());
    let (code, _, v) = call(
        &sim,
        reqwest::Method::DELETE,
        &format!("/experiments/{eid}"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(v["experiment"]["state"]["status"], "stopped");
    let i = sim.instance(&id).await;
    assert!(i["interruption_scheduled"].is_null());
    assert!(i["interruption_notice"].is_null());
    // Past the would-be end, nothing has happened: no notice, still InService, experiment still stopped.
    tokio::time::sleep(Duration::from_millis(2300).saturating_sub(t0.elapsed())).await;
    let i = sim.instance(&id).await;
    assert_eq!(i["lifecycle_state"], "InService", "{i}");
    assert!(i["interruption_notice"].is_null());
    assert_eq!(experiment(&sim, eid).await["state"]["status"], "stopped");
}
