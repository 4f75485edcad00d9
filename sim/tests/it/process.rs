//! Real worker processes: endpoints in the environment, SIGTERM on termination, replacements, no orphans.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

fn alive(pid: u64) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[tokio::test]
async fn worker_gets_its_endpoints_and_logs_to_its_file() {
    let script = "echo imds=$AWS_EC2_METADATA_SERVICE_ENDPOINT; echo asg=$AWS_ENDPOINT_URL_AUTO_SCALING; \
                  echo metrics=$ORDER_WORKER_METRICS_ADDR; echo inherited=$SPOT_SIM_TEST_MARK; exec sleep 1000";
    let sim = SimProc::start_with_env(
        &[
            "--desired",
            "1",
            "--launch-delay",
            "0s",
            "--worker-cmd",
            "/bin/sh",
            "--worker-arg",
            "-c",
            "--worker-arg",
            script,
        ],
        &[("SPOT_SIM_TEST_MARK", "yes")],
    )
    .await;
    let s = sim.wait_worker_alive().await;
    let i = &s["instances"][0];
    let log = i["log_path"].as_str().unwrap().to_string();
    assert!(log.ends_with(&format!("{}.log", i["id"].as_str().unwrap())));
    let text = eventually("the worker's log", Duration::from_secs(5), || async {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        t.contains("inherited=").then_some(t)
    })
    .await;
    assert!(
        text.contains(&format!("imds={}", i["imds_url"].as_str().unwrap())),
        "{text}"
    );
    assert!(text.contains(&format!("asg={}", sim.api)), "{text}");
    assert!(
        text.contains(&format!("metrics={}", i["metrics_addr"].as_str().unwrap())),
        "{text}"
    );
    assert!(text.contains("inherited=yes"), "{text}");
}

#[tokio::test]
async fn fis_termination_sigterms_the_worker_and_a_replacement_starts() {
    let sim = SimProc::start(&[
        "--desired",
        "1",
        "--launch-delay",
        "0s",
        "--time-scale",
        "0.01",
        "--capacity-rebalance",
        "false",
        "--hook-timeout",
        "1h",
        "--worker-cmd",
        "/bin/sleep",
        "--worker-arg",
        "1000",
    ])
    .await;
    let s = sim.wait_worker_alive().await;
    let first = s["instances"][0].clone();
    let id = first["id"].as_str().unwrap().to_string();
    let pid = first["pid"].as_u64().unwrap();
    assert!(alive(pid));

    let tpl = json!({
        "description": "d", "roleArn": "arn:aws:iam::123456789012:role/fis", "stopConditions": [{"source": "none"}],
        "targets": {"w": {"resourceType": "aws:ec2:spot-instance", "selectionMode": "ALL",
                          "resourceTags": {"aws:autoscaling:groupName": "order-workers"}}},
        "actions": {"i": {"actionId": "aws:ec2:send-spot-instance-interruptions",
                          "parameters": {"durationBeforeInterruption": "PT2M"}, "targets": {"SpotInstances": "w"}}}
    });
    let r: Value = sim
        .http
        .post(format!("{}/experimentTemplates", sim.api))
        .json(&tpl)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tid = r["experimentTemplate"]["id"].as_str().unwrap();
    let r: Value = sim
        .http
        .post(format!("{}/experiments", sim.api))
        .json(&json!({"experimentTemplateId": tid, "clientToken": "x"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["experiment"]["state"]["status"], "running", "{r}");

    // PT2M at 0.01 = 1.2 s; sleep dies of SIGTERM (signal 15) and the instance is Terminated.
    let i = sim
        .wait_lifecycle(&id, "Terminated", Duration::from_secs(10))
        .await;
    assert_eq!(i["process_exit"], "killed by signal 15", "{i}");
    assert!(!alive(pid));
    // A replacement with its own live process.
    let s = sim
        .wait_status("a replacement worker", Duration::from_secs(10), |s| {
            s["instances"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["id"] != id.as_str() && i["process_alive"] == true)
        })
        .await;
    let repl = s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] != id.as_str())
        .unwrap();
    assert_ne!(repl["pid"], pid);
}

#[tokio::test]
async fn sigkill_after_the_grace_and_signals_from_the_control_api() {
    // A worker that ignores SIGTERM gets SIGKILL after --kill-grace.
    let sim = SimProc::start(&[
        "--desired",
        "0",
        "--kill-grace",
        "500ms",
        "--worker-cmd",
        "/bin/sh",
        "--worker-arg",
        "-c",
        "--worker-arg",
        "trap '' TERM; while true; do sleep 0.1; done",
    ])
    .await;
    let (code, v) = sim.post("/_sim/instances", json!({})).await;
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let pid = v["pid"].as_u64().unwrap();

    // STOP / CONT through the control API; an unknown signal is refused.
    for (signal, want) in [("STOP", 200), ("CONT", 200), ("NOPE", 400)] {
        let (code, _) = sim
            .post(
                &format!("/_sim/instances/{id}/signal"),
                json!({"signal": signal}),
            )
            .await;
        assert_eq!(code, want, "signal {signal}");
    }

    sim.post(
        &format!("/_sim/instances/{id}/interrupt"),
        json!({"in_seconds": 0}),
    )
    .await;
    let i = sim
        .wait_lifecycle(&id, "Terminated", Duration::from_secs(10))
        .await;
    assert_eq!(i["process_exit"], "killed by signal 9", "{i}");
    let ev = i["events"].to_string();
    assert!(ev.contains("SIGTERM") && ev.contains("SIGKILL"), "{ev}");
    assert!(!alive(pid));
}

#[tokio::test]
async fn shutdown_stops_every_worker_and_exits_zero() {
    let mut sim = SimProc::start(&[
        "--desired",
        "2",
        "--launch-delay",
        "0s",
        "--kill-grace",
        "2s",
        "--worker-cmd",
        "/bin/sleep",
        "--worker-arg",
        "1000",
    ])
    .await;
    let pids = two_live_workers(&sim).await;
    // SAFETY: plain kill(2).
    unsafe { libc::kill(sim.pid() as libc::pid_t, libc::SIGTERM) };
    let status = eventually("spot-sim to exit", Duration::from_secs(10), || {
        let r = sim.child.try_wait().unwrap();
        async move { r }
    })
    .await;
    assert!(status.success(), "{status:?}\n{}", sim.stderr_log());
    for pid in pids {
        eventually(
            "the worker to be gone",
            Duration::from_secs(2),
            || async move { (!alive(pid)).then_some(()) },
        )
        .await;
    }
}

#[tokio::test]
async fn shutdown_endpoint_exits() {
    let mut sim = SimProc::start(&["--desired", "1"]).await;
    let (code, _) = sim.post("/_sim/shutdown", json!({})).await;
    assert_eq!(code, 202);
    let status = eventually("spot-sim to exit", Duration::from_secs(10), || {
        let r = sim.child.try_wait().unwrap();
        async move { r }
    })
    .await;
    assert!(status.success());
}

#[tokio::test]
async fn status_subcommand_prints_the_table() {
    let sim = SimProc::start(&["--desired", "2", "--launch-delay", "0s"]).await;
    sim.wait_in_service(2).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_spot-sim"))
        .args(["status", "--api", &sim.api])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("INSTANCE") && text.matches("InService").count() >= 2,
        "{text}"
    );
}

/// Even if spot-sim is SIGKILLed (no chance to clean up), its workers die with it (PR_SET_PDEATHSIG).
#[tokio::test]
async fn workers_do_not_outlive_a_killed_simulator() {
    let mut sim = SimProc::start(&[
        "--desired",
        "2",
        "--launch-delay",
        "0s",
        "--worker-cmd",
        "/bin/sleep",
        "--worker-arg",
        "1000",
    ])
    .await;
    let pids = two_live_workers(&sim).await;
    sim.child.kill().unwrap();
    sim.child.wait().unwrap();
    for pid in pids {
        eventually("the orphan to die", Duration::from_secs(3), || async move {
            // A dead child of a dead parent is reaped by init; either way kill(pid, 0) fails.
            (!alive(pid)).then_some(())
        })
        .await;
    }
}

/// Wait until two worker processes are alive; their pids.
async fn two_live_workers(sim: &SimProc) -> Vec<u64> {
    let s = sim
        .wait_status("two workers", Duration::from_secs(10), |s| {
            s["instances"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["process_alive"] == true)
                .count()
                == 2
        })
        .await;
    s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_u64().unwrap())
        .collect()
}
