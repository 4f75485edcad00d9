//! The Auto Scaling lifecycle through the real aws-sdk-autoscaling client.

use std::time::{Duration, Instant};

use crate::common::*;
use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use aws_sdk_autoscaling::types::LifecycleState;
use serde_json::json;

/// The code of a refused call.
fn code<E: ProvideErrorMetadata>(e: &E) -> String {
    e.code().unwrap_or("<none>").to_string()
}

#[tokio::test]
async fn describe_calls_parse_with_the_sdk() {
    let sim = SimProc::start(&["--desired", "2", "--launch-delay", "0s"]).await;
    sim.wait_in_service(2).await;
    let asg = sim.asg();

    let groups = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names("order-workers")
        .send()
        .await
        .unwrap();
    let g = &groups.auto_scaling_groups()[0];
    assert_eq!(g.auto_scaling_group_name(), Some("order-workers"));
    assert_eq!(g.desired_capacity(), Some(2));
    assert_eq!(g.instances().len(), 2);
    assert_eq!(g.capacity_rebalance(), Some(true));
    assert!(g
        .instances()
        .iter()
        .all(|i| i.lifecycle_state() == Some(&LifecycleState::InService)));
    let none = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names("other")
        .send()
        .await
        .unwrap();
    assert!(none.auto_scaling_groups().is_empty());

    let id = g.instances()[0].instance_id().unwrap().to_string();
    let inst = asg
        .describe_auto_scaling_instances()
        .instance_ids(&id)
        .send()
        .await
        .unwrap();
    let d = &inst.auto_scaling_instances()[0];
    assert_eq!(d.instance_id(), Some(id.as_str()));
    assert_eq!(d.auto_scaling_group_name(), Some("order-workers"));
    assert_eq!(d.lifecycle_state(), Some("InService"));

    let hooks = asg
        .describe_lifecycle_hooks()
        .auto_scaling_group_name("order-workers")
        .send()
        .await
        .unwrap();
    let h = &hooks.lifecycle_hooks()[0];
    assert_eq!(h.lifecycle_hook_name(), Some("order-worker-drain"));
    assert_eq!(h.heartbeat_timeout(), Some(120));
    assert_eq!(h.default_result(), Some("CONTINUE"));
    assert_eq!(
        h.lifecycle_transition(),
        Some("autoscaling:EC2_INSTANCE_TERMINATING")
    );
    let e = asg
        .describe_lifecycle_hooks()
        .auto_scaling_group_name("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "ValidationError");
}

#[tokio::test]
async fn complete_refusals_then_complete_by_instance_id() {
    let sim = SimProc::start(&["--desired", "0", "--launch-delay", "0s"]).await;
    let (id, _) = sim.external().await;
    let (other, _) = sim.external().await;
    let asg = sim.asg();
    let complete = |group: &str, hook: &str, inst: &str| {
        asg.complete_lifecycle_action()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(inst)
            .lifecycle_action_result("CONTINUE")
            .send()
    };

    // Not in Terminating:Wait yet.
    let e = complete("order-workers", "order-worker-drain", &id)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "ValidationError", "{e:?}");
    assert!(
        e.message().unwrap().contains("No active Lifecycle Action"),
        "{:?}",
        e.message()
    );

    let (c, _) = sim
        .post(
            &format!("/_sim/instances/{id}/scale-in"),
            json!({"decrement": false}),
        )
        .await;
    assert_eq!(c, 200);
    sim.wait_lifecycle(&id, "Terminating:Wait", Duration::from_secs(2))
        .await;

    // Wrong hook, wrong group, unknown instance, another instance, a bad token: all ValidationError.
    for (g, h, i) in [
        ("order-workers", "wrong-hook", id.as_str()),
        ("other-group", "order-worker-drain", id.as_str()),
        ("order-workers", "order-worker-drain", "i-00000000000000000"),
        ("order-workers", "order-worker-drain", other.as_str()),
    ] {
        let e = complete(g, h, i).await.unwrap_err();
        assert_eq!(code(&e), "ValidationError", "{g} {h} {i}: {e:?}");
    }
    let e = asg
        .complete_lifecycle_action()
        .auto_scaling_group_name("order-workers")
        .lifecycle_hook_name("order-worker-drain")
        .lifecycle_action_token("00000000-0000-4000-8000-000000000000")
        .lifecycle_action_result("CONTINUE")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "ValidationError");
    let e = asg
        .complete_lifecycle_action()
        .auto_scaling_group_name("order-workers")
        .lifecycle_hook_name("order-worker-drain")
        .instance_id(&id)
        .lifecycle_action_result("MAYBE")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "ValidationError");
    // Still waiting after all the refusals.
    assert_eq!(
        sim.instance(&id).await["lifecycle_state"],
        "Terminating:Wait"
    );

    // The instance completes its own hook by instance id.
    complete("order-workers", "order-worker-drain", &id)
        .await
        .unwrap();
    let i = sim
        .wait_lifecycle(&id, "Terminated", Duration::from_secs(5))
        .await;
    assert!(i["terminated_at"].is_string());
    // Desired was not decremented: a replacement launches and goes InService.
    sim.wait_status("a replacement InService", Duration::from_secs(10), |s| {
        ids_in(s, "InService")
            .iter()
            .any(|x| *x != other && *x != id)
    })
    .await;
    // Completing twice is refused.
    let e = complete("order-workers", "order-worker-drain", &id)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "ValidationError");
}

#[tokio::test]
async fn complete_by_token_with_abandon() {
    let sim = SimProc::start(&["--desired", "0"]).await;
    let (id, _) = sim.external().await;
    let (_, v) = sim
        .post(&format!("/_sim/instances/{id}/scale-in"), json!({}))
        .await;
    let token = v["lifecycle_action_token"].as_str().unwrap().to_string();
    sim.asg()
        .complete_lifecycle_action()
        .auto_scaling_group_name("order-workers")
        .lifecycle_hook_name("order-worker-drain")
        .lifecycle_action_token(&token)
        .lifecycle_action_result("ABANDON")
        .send()
        .await
        .unwrap();
    sim.wait_lifecycle(&id, "Terminated", Duration::from_secs(5))
        .await;
    // Scale-in decremented desired (it was 1 after the registration): nothing replaces it.
    let s = sim.status().await;
    assert_eq!(s["desired"], 0);
    assert!(ids_in(&s, "Pending").is_empty() && ids_in(&s, "InService").is_empty());
}

#[tokio::test]
async fn heartbeat_extends_the_timeout_and_timeout_proceeds() {
    // Hook timeout 60 s at scale 0.02 = 1.2 s real.
    let sim = SimProc::start(&[
        "--desired",
        "0",
        "--time-scale",
        "0.02",
        "--hook-timeout",
        "60s",
    ])
    .await;
    let (kept, _) = sim.external().await;
    let (lapsed, _) = sim.external().await;
    let asg = sim.asg();
    let started = Instant::now();
    sim.post(&format!("/_sim/instances/{kept}/scale-in"), json!({}))
        .await;
    sim.post(&format!("/_sim/instances/{lapsed}/scale-in"), json!({}))
        .await;

    // Heartbeat `kept` every 0.4 s for 3 s: it stays in Terminating:Wait well past 1.2 s.
    while started.elapsed() < Duration::from_secs(3) {
        asg.record_lifecycle_action_heartbeat()
            .auto_scaling_group_name("order-workers")
            .lifecycle_hook_name("order-worker-drain")
            .instance_id(&kept)
            .send()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(
        sim.instance(&kept).await["lifecycle_state"],
        "Terminating:Wait"
    );
    // `lapsed` timed out long ago and proceeded with the default result.
    let l = sim.instance(&lapsed).await;
    assert_eq!(l["lifecycle_state"], "Terminated", "{l}");
    assert!(l["events"].to_string().contains("timed out"));

    // Stop the heartbeats: `kept` times out too.
    sim.wait_lifecycle(&kept, "Terminated", Duration::from_secs(5))
        .await;
    // A heartbeat for a wrong hook is refused.
    let e = asg
        .record_lifecycle_action_heartbeat()
        .auto_scaling_group_name("order-workers")
        .lifecycle_hook_name("nope")
        .instance_id(&kept)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "ValidationError");
}

#[tokio::test]
async fn terminate_instance_and_set_desired_capacity() {
    let sim = SimProc::start(&[
        "--desired",
        "2",
        "--launch-delay",
        "0s",
        "--hook-timeout",
        "1h",
    ])
    .await;
    let s = sim.wait_in_service(2).await;
    let ids = ids_in(&s, "InService");
    let asg = sim.asg();

    let out = asg
        .terminate_instance_in_auto_scaling_group()
        .instance_id(&ids[0])
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .unwrap();
    let act = out.activity().unwrap();
    assert_eq!(act.auto_scaling_group_name(), Some("order-workers"));
    assert!(act.description().unwrap().contains(&ids[0]));
    sim.wait_lifecycle(&ids[0], "Terminating:Wait", Duration::from_secs(2))
        .await;
    assert_eq!(sim.status().await["desired"], 1);

    let e = asg
        .terminate_instance_in_auto_scaling_group()
        .instance_id("i-00000000000000000")
        .should_decrement_desired_capacity(false)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "ValidationError");

    // Scale to 3: two launches. Then to 1: the excess goes through the hook.
    asg.set_desired_capacity()
        .auto_scaling_group_name("order-workers")
        .desired_capacity(3)
        .send()
        .await
        .unwrap();
    sim.wait_in_service(3).await;
    asg.set_desired_capacity()
        .auto_scaling_group_name("order-workers")
        .desired_capacity(1)
        .send()
        .await
        .unwrap();
    let s = sim.status().await;
    assert_eq!(ids_in(&s, "InService").len(), 1);
    assert_eq!(ids_in(&s, "Terminating:Wait").len(), 3);
    let e = asg
        .set_desired_capacity()
        .auto_scaling_group_name("order-workers")
        .desired_capacity(99)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "ValidationError");
}

#[tokio::test]
async fn capacity_rebalance_replaces_then_terminates() {
    let sim = SimProc::start(&[
        "--desired",
        "1",
        "--launch-delay",
        "0s",
        "--time-scale",
        "0.05",
    ])
    .await;
    let s = sim.wait_in_service(1).await;
    let old = ids_in(&s, "InService")[0].clone();
    sim.post(&format!("/_sim/instances/{old}/rebalance"), json!({}))
        .await;
    // A replacement launches; once it is InService the old one enters Terminating:Wait.
    let s = sim
        .wait_lifecycle(&old, "Terminating:Wait", Duration::from_secs(10))
        .await;
    assert!(s["events"].to_string().contains("capacity rebalance"));
    let st = sim.status().await;
    let new = ids_in(&st, "InService");
    assert_eq!(new.len(), 1);
    assert_ne!(new[0], old);
    assert_eq!(find(&st, &new[0]).unwrap()["replaces"], old.as_str());
}
