//! Instance refresh through the real aws-sdk-autoscaling client: a new launch template version (another worker
//! command line), StartInstanceRefresh with terraform's preferences, DescribeInstanceRefreshes until it is
//! Successful, every old instance through the termination hook, the minimum healthy share kept throughout.

use std::time::{Duration, Instant};

use crate::common::*;
use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use aws_sdk_autoscaling::types::{InstanceRefreshStatus, LifecycleState, RefreshPreferences};
use serde_json::json;

/// The command line of a live process.
fn cmdline(pid: u64) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[tokio::test]
async fn a_rolling_refresh_replaces_every_worker_with_the_new_version_through_the_hook() {
    // Scale 0.02: launch delay 5 s = 100 ms, warmup 10 s = 200 ms, hook timeout 120 s = 2.4 s.
    let sim = SimProc::start(&[
        "--desired",
        "4",
        "--time-scale",
        "0.02",
        "--launch-delay",
        "5s",
        "--kill-grace",
        "1s",
        "--worker-cmd",
        "/bin/sleep",
        "--worker-arg",
        "1000",
    ])
    .await;
    sim.wait_in_service(4).await;
    let old = ids_in(&sim.status().await, "InService");
    let asg = sim.asg();

    // Build B: another command line, made the group's version (as Terraform's apply would).
    let (code, v) = sim
        .post(
            "/_sim/launch-template",
            json!({"cmd": "/bin/sleep", "args": ["1001"], "description": "build B"}),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["version"], 2);
    let (code, _) = sim
        .post(
            "/_sim/launch-template",
            json!({"cmd": "/nonexistent/worker"}),
        )
        .await;
    assert_eq!(code, 400);

    let id = asg
        .start_instance_refresh()
        .auto_scaling_group_name("order-workers")
        .preferences(
            RefreshPreferences::builder()
                .min_healthy_percentage(50)
                .instance_warmup(10)
                .skip_matching(true)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .instance_refresh_id()
        .unwrap()
        .to_string();
    // One at a time: a second start is refused with AWS's code.
    let e = asg
        .start_instance_refresh()
        .auto_scaling_group_name("order-workers")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InstanceRefreshInProgress"));

    // Act as the workers: complete each hook (sleep would not), and watch the group never drop below 50 %.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut hooks_completed = Vec::new();
    let mut least_in_service = usize::MAX;
    loop {
        assert!(Instant::now() < deadline, "the refresh did not finish");
        let g = asg
            .describe_auto_scaling_groups()
            .auto_scaling_group_names("order-workers")
            .send()
            .await
            .unwrap();
        let g = &g.auto_scaling_groups()[0];
        let in_service = g
            .instances()
            .iter()
            .filter(|i| i.lifecycle_state() == Some(&LifecycleState::InService))
            .count();
        least_in_service = least_in_service.min(in_service);
        for i in g.instances() {
            if i.lifecycle_state() == Some(&LifecycleState::TerminatingWait) {
                let iid = i.instance_id().unwrap().to_string();
                asg.complete_lifecycle_action()
                    .auto_scaling_group_name("order-workers")
                    .lifecycle_hook_name("order-worker-drain")
                    .instance_id(&iid)
                    .lifecycle_action_result("CONTINUE")
                    .send()
                    .await
                    .unwrap();
                hooks_completed.push(iid);
            }
        }
        let r = asg
            .describe_instance_refreshes()
            .auto_scaling_group_name("order-workers")
            .send()
            .await
            .unwrap();
        let r = &r.instance_refreshes()[0];
        assert_eq!(r.instance_refresh_id(), Some(id.as_str()));
        assert_eq!(
            r.preferences().and_then(|p| p.min_healthy_percentage()),
            Some(50)
        );
        if r.status() == Some(&InstanceRefreshStatus::Successful) {
            assert_eq!(r.percentage_complete(), Some(100));
            assert_eq!(r.instances_to_update(), Some(0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    hooks_completed.sort();
    let mut expected = old.clone();
    expected.sort();
    assert_eq!(
        hooks_completed, expected,
        "every old instance, through the hook"
    );
    assert!(
        least_in_service >= 2,
        "in service fell to {least_in_service}"
    );

    // The group now launches version 2, and every instance runs build B's command line.
    let g = asg.describe_auto_scaling_groups().send().await.unwrap();
    let g = &g.auto_scaling_groups()[0];
    assert_eq!(g.launch_template().and_then(|t| t.version()), Some("2"));
    let s = sim.wait_in_service(4).await;
    for iid in ids_in(&s, "InService") {
        let i = find(&s, &iid).unwrap();
        assert_eq!(i["version"], 2);
        let pid = i["pid"].as_u64().unwrap();
        assert!(cmdline(pid).contains("1001"), "{iid}: {}", cmdline(pid));
        assert!(!old.contains(&iid));
    }
}
