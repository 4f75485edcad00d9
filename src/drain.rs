//! One drain path for every trigger, and the policy that decides when to take it.
//!
//! | trigger                              | what happens                                                          |
//! |--------------------------------------|-----------------------------------------------------------------------|
//! | SIGTERM / SIGINT                     | drain (deadline `--drain-timeout`), exit 0                            |
//! | Spot interruption notice             | drain (deadline: notice time - `--drain-margin`, or the timeout, whichever is earlier), complete the hook, exit 0 |
//! | target lifecycle state `Terminated`  | drain, complete the hook, exit 0                                      |
//! | rebalance recommendation             | `ignore`; `soft`: pause receiving, finish what is held; `drain`: pause and release what is not started. Back to normal after `--rebalance-recovery` if no interruption follows |
//!
//! A drain: receiving stops; held-but-not-started messages are released at once (visibility 0, in group
//! order); in-flight runs finish before the deadline or are abandoned and released (what a run claimed but did
//! not write is written by the next holder, at the same positions); then the lifecycle hook is completed, with heartbeats while the drain outlasts the
//! heartbeat interval. One log line says what the drain did.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RebalancePolicy};
use crate::dispatch::{Dispatcher, RELEASE_GRACE};
use crate::imds::{ImdsClient, LifecycleState, Notice, SpotAction};
use crate::instance::InstanceId;
use crate::lifecycle::{heartbeat_until, resolve_group, HookResult, LifecycleHook};
use crate::telemetry::{DRAINS, DRAIN_ORDERS, HOOK_COMPLETIONS, LAST_DRAIN_SECONDS, NOTICES};
use metrics::{counter, gauge};

/// What started a drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Signal(&'static str),
    Interruption {
        action: SpotAction,
        time: OffsetDateTime,
    },
    LifecycleTerminated,
}

impl Trigger {
    /// Its name as a metric label and an EMF dimension value.
    pub fn label(&self) -> &'static str {
        match self {
            Trigger::Signal(_) => "signal",
            Trigger::Interruption { .. } => "interruption",
            Trigger::LifecycleTerminated => "lifecycle",
        }
    }
}

/// How the hook step went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// No hook to complete (SIGTERM outside a termination, hooks disabled, no metadata).
    NotNeeded,
    Completed,
    /// Could not: the reason, e.g. a refusal by Auto Scaling or a missing group name.
    Failed(String),
}

/// What the drain did: the figures of its one log line.
#[derive(Debug, Clone)]
pub struct DrainReport {
    pub trigger: Trigger,
    pub took: Duration,
    pub finished: u64,
    pub released: u64,
    pub deadline_hit: bool,
    pub held_up_by: Option<String>,
    pub hook: HookOutcome,
}

/// What the hook step needs.
pub struct HookContext {
    pub autoscaling: Option<aws_sdk_autoscaling::Client>,
    pub imds: Option<ImdsClient>,
    /// The hook is addressed by instance id: learned here from metadata if nobody has yet.
    pub instance_id: Arc<InstanceId>,
}

/// Run the policy until a terminal trigger, then drain. `signals` carries SIGTERM/SIGINT (a second signal
/// during a drain abandons in-flight work at once). `on_report` gets the drain's report as soon as the drain
/// is done, before the wait for the receive loop to end: on a Spot instance the power may go at any moment after
/// the hook, and the report's log line and figures must be out by then.
pub async fn supervise(
    cfg: &Config,
    dispatcher: Dispatcher,
    mut notices: mpsc::Receiver<Notice>,
    mut signals: mpsc::Receiver<&'static str>,
    hooks: HookContext,
    on_report: impl FnOnce(&DrainReport),
) -> DrainReport {
    dispatcher.health().set_ready(true);
    let mut recover_at: Option<Instant> = None;
    let mut notices_open = true;
    let mut termination_seen = false;
    let trigger = loop {
        let recovery = async {
            match recover_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(s) = signals.recv() => break Trigger::Signal(s),
            n = notices.recv(), if notices_open => match n {
                None => notices_open = false,
                Some(n) => {
                    if let Some(t) = act_on(cfg, &dispatcher, n, &mut recover_at, &mut termination_seen) {
                        break t;
                    }
                }
            },
            _ = recovery => {
                recover_at = None;
                dispatcher.set_paused(false);
                dispatcher.health().set_ready(true);
                tracing::info!("no interruption followed the rebalance recommendation; taking new work again");
            }
        }
    };
    Drain {
        cfg,
        dispatcher,
        notices,
        notices_open,
        signals,
        hooks,
        termination_seen,
    }
    .run(trigger, on_report)
    .await
}

/// React to one notice in normal operation; Some(trigger) when it calls for a drain. Never waits on AWS: the
/// supervisor must keep seeing notices and signals whatever SQS does.
fn act_on(
    cfg: &Config,
    dispatcher: &Dispatcher,
    notice: Notice,
    recover_at: &mut Option<Instant>,
    termination_seen: &mut bool,
) -> Option<Trigger> {
    match notice {
        Notice::Interruption(a) => {
            counter!(NOTICES, "kind" => "interruption").increment(1);
            *termination_seen = true;
            tracing::warn!(action = %a.action, time = %a.time, "Spot interruption notice");
            Some(Trigger::Interruption {
                action: a.action,
                time: a.time,
            })
        }
        Notice::TargetLifecycle(LifecycleState::Terminated) => {
            counter!(NOTICES, "kind" => "target_lifecycle").increment(1);
            *termination_seen = true;
            tracing::warn!("target lifecycle state Terminated (scale-in or rebalancing replaces this instance)");
            Some(Trigger::LifecycleTerminated)
        }
        Notice::TargetLifecycle(state) => {
            tracing::info!(state = %state, "target lifecycle state");
            None
        }
        Notice::Rebalance(r) => {
            counter!(NOTICES, "kind" => "rebalance").increment(1);
            match cfg.on_rebalance {
                RebalancePolicy::Ignore => {
                    tracing::info!(notice_time = %r.notice_time, "rebalance recommendation ignored (--on-rebalance ignore)");
                }
                RebalancePolicy::Soft | RebalancePolicy::Drain => {
                    dispatcher.set_paused(true);
                    dispatcher.health().set_ready(false);
                    if cfg.on_rebalance == RebalancePolicy::Drain {
                        dispatcher.release_pending();
                    }
                    *recover_at = Some(Instant::now() + cfg.rebalance_recovery);
                    tracing::warn!(
                        notice_time = %r.notice_time,
                        policy = ?cfg.on_rebalance,
                        recovery = %humantime::format_duration(cfg.rebalance_recovery),
                        "rebalance recommendation: taking no new message groups"
                    );
                }
            }
            None
        }
    }
}

/// The deadline a trigger allows: the timeout, or the interruption time minus the margin if earlier.
pub fn deadline_for(
    cfg: &Config,
    trigger: &Trigger,
    now: Instant,
    wall_now: OffsetDateTime,
) -> Instant {
    let timeout = now + cfg.drain_timeout;
    match trigger {
        Trigger::Interruption { time, .. } => {
            let left = *time - wall_now - cfg.drain_margin;
            let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
            timeout.min(now + left)
        }
        _ => timeout,
    }
}

/// One drain: what it needs while it runs.
struct Drain<'a> {
    cfg: &'a Config,
    dispatcher: Dispatcher,
    notices: mpsc::Receiver<Notice>,
    notices_open: bool,
    signals: mpsc::Receiver<&'static str>,
    hooks: HookContext,
    termination_seen: bool,
}

impl Drain<'_> {
    async fn run(mut self, trigger: Trigger, on_report: impl FnOnce(&DrainReport)) -> DrainReport {
        let cfg = self.cfg;
        let dispatcher = self.dispatcher.clone();
        let started = Instant::now();
        let before = dispatcher.counts();
        let mut deadline = deadline_for(cfg, &trigger, started, OffsetDateTime::now_utc());
        dispatcher.health().set_ready(false);
        counter!(DRAINS, "trigger" => trigger.label()).increment(1);
        let (groups, messages) = dispatcher.held();
        // From here on no held message starts: what has not started waits only to be released.
        dispatcher.stop_taking(deadline);
        let deadline_in_ms = deadline.saturating_duration_since(started).as_millis() as u64;
        if matches!(trigger, Trigger::Signal(_)) {
            // A routine stop (deploy, scale-in through systemd): not a warning.
            tracing::info!(trigger = ?trigger, deadline_in_ms, groups_held = groups, messages_held = messages, "draining");
        } else {
            tracing::warn!(trigger = ?trigger, deadline_in_ms, groups_held = groups, messages_held = messages, "draining");
        }

        // Release (in the background: it waits for the poll in flight to be ended and recovered first) while the
        // hook is resolved, which
        // may wait on slow metadata.
        let begin = tokio::spawn({
            let d = dispatcher.clone();
            async move { d.begin_drain(deadline).await }
        });
        let hook = if self.termination_seen {
            resolve_hook(cfg, &self.hooks).await
        } else {
            Err(NoHook::NotAttempted)
        };
        let heartbeat_done = CancellationToken::new();
        if let Ok(h) = &hook {
            let h = h.clone();
            let every = cfg.hook_heartbeat;
            let done = heartbeat_done.clone();
            tokio::spawn(async move { heartbeat_until(&h, every, done).await });
        }

        let mut held_up_by = None;
        let mut deadline_hit = false;
        {
            let d = dispatcher.clone();
            let finish = async move {
                let _ = begin.await;
                // The caller's select bounds this; the far bound only keeps the types simple.
                d.finish_groups(Instant::now() + Duration::from_secs(24 * 3600))
                    .await
            };
            tokio::pin!(finish);
            loop {
                tokio::select! {
                    _ = &mut finish => break,
                    _ = tokio::time::sleep_until(deadline), if !deadline_hit => {
                        deadline_hit = true;
                        held_up_by = Some(dispatcher.describe_held());
                        dispatcher.control().abort.cancel();
                    }
                    _ = tokio::time::sleep_until(deadline + RELEASE_GRACE), if deadline_hit => {
                        tracing::warn!(still_held = %dispatcher.describe_held(), "releases or deletes still out after the grace: going on without them (the messages return when their visibility times out)");
                        break;
                    }
                    Some(s) = self.signals.recv(), if !deadline_hit => {
                        tracing::warn!(signal = s, "second signal: abandoning in-flight orders now");
                        deadline = Instant::now();
                        dispatcher.set_deadline(deadline);
                    }
                    n = self.notices.recv(), if self.notices_open => match n {
                        None => self.notices_open = false,
                        Some(Notice::Interruption(a)) => {
                            self.termination_seen = true;
                            let t = Trigger::Interruption { action: a.action, time: a.time };
                            let earlier = deadline_for(cfg, &t, Instant::now(), OffsetDateTime::now_utc());
                            if earlier < deadline && !deadline_hit {
                                deadline = earlier;
                                dispatcher.set_deadline(deadline);
                                tracing::warn!(time = %a.time, "interruption notice during the drain; deadline brought forward");
                            }
                        }
                        Some(Notice::TargetLifecycle(LifecycleState::Terminated)) => self.termination_seen = true,
                        Some(_) => {}
                    },
                }
            }
        }

        let hook_outcome = if !self.termination_seen {
            HookOutcome::NotNeeded
        } else {
            let hook = match hook {
                Ok(h) => Ok(h),
                Err(_) => resolve_hook(cfg, &self.hooks).await,
            };
            match hook {
                Ok(h) => complete(&h, hook_deadline(cfg, &trigger, started)).await,
                Err(NoHook::Disabled) => HookOutcome::NotNeeded,
                Err(why) => {
                    counter!(HOOK_COMPLETIONS, "result" => "failed").increment(1);
                    HookOutcome::Failed(why.to_string())
                }
            }
        };
        heartbeat_done.cancel();

        // The drain's own time: up to the completed hook, not the wait for the receive loop below.
        let took = started.elapsed();
        let after = dispatcher.counts();
        let finished = after.finished - before.finished;
        let released = after.released - before.released;
        counter!(DRAIN_ORDERS, "outcome" => "finished").increment(finished);
        counter!(DRAIN_ORDERS, "outcome" => "released").increment(released);
        gauge!(LAST_DRAIN_SECONDS).set(took.as_secs_f64());
        let report = DrainReport {
            trigger,
            took,
            finished,
            released,
            deadline_hit,
            held_up_by,
            hook: hook_outcome,
        };
        report.log();
        on_report(&report);
        // The receive loop may still be recovering the poll it ended (asked again with its attempt id, what it
        // brings released): it does not hold up the hook or the report. Past the deadline (SQS not answering)
        // it is abandoned.
        let until = (deadline + RELEASE_GRACE).max(Instant::now());
        dispatcher.stop_loops(until).await;
        report
    }
}

/// Until when completing the hook is worth trying: the interruption itself, or the stop budget systemd gives
/// a drain (`--drain-timeout` + `--drain-margin`) for the other triggers.
pub fn hook_deadline(cfg: &Config, trigger: &Trigger, started: Instant) -> Instant {
    let stop_budget = started + cfg.drain_timeout + cfg.drain_margin;
    match trigger {
        Trigger::Interruption { time, .. } => {
            let left =
                Duration::try_from(*time - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO);
            (Instant::now() + left).min(stop_budget)
        }
        _ => stop_budget,
    }
}

/// The trigger a notice is, if it calls for a drain.
pub fn terminal(notice: &Notice) -> Option<Trigger> {
    match notice {
        Notice::Interruption(a) => Some(Trigger::Interruption {
            action: a.action,
            time: a.time,
        }),
        Notice::TargetLifecycle(LifecycleState::Terminated) => Some(Trigger::LifecycleTerminated),
        _ => None,
    }
}

/// A termination before any work was taken (the worker still waits for SQS or DynamoDB at start): nothing to
/// release, only the hook to complete, and the same one-line report.
pub async fn without_work(cfg: &Config, hooks: &HookContext, trigger: Trigger) -> DrainReport {
    let started = Instant::now();
    counter!(DRAINS, "trigger" => trigger.label()).increment(1);
    tracing::warn!(trigger = ?trigger, "termination notice while waiting to start: nothing is held");
    let hook = match resolve_hook(cfg, hooks).await {
        Ok(h) => complete(&h, hook_deadline(cfg, &trigger, started)).await,
        Err(NoHook::Disabled) => HookOutcome::NotNeeded,
        Err(why) => {
            counter!(HOOK_COMPLETIONS, "result" => "failed").increment(1);
            HookOutcome::Failed(why.to_string())
        }
    };
    let report = DrainReport {
        trigger,
        took: started.elapsed(),
        finished: 0,
        released: 0,
        deadline_hit: false,
        held_up_by: None,
        hook,
    };
    report.log();
    report
}

impl DrainReport {
    /// Why the hook was not completed, if it was due and failed.
    pub fn hook_failure(&self) -> Option<&str> {
        match &self.hook {
            HookOutcome::Failed(why) => Some(why),
            _ => None,
        }
    }

    /// The drain's one log line.
    fn log(&self) {
        tracing::info!(
            trigger = ?self.trigger,
            finished = self.finished,
            released = self.released,
            took_ms = self.took.as_millis() as u64,
            deadline_hit = self.deadline_hit,
            held_up_by = self.held_up_by.as_deref().unwrap_or("-"),
            hook = ?self.hook,
            "drain complete"
        );
    }
}

/// Why there is no hook to complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum NoHook {
    /// No `--lifecycle-hook` (or no Auto Scaling client): nothing is due, not a failure.
    #[error("no lifecycle hook configured")]
    Disabled,
    /// The drain started without a termination; resolved again if one arrives during the drain.
    #[error("no termination in progress")]
    NotAttempted,
    /// A hook is configured but cannot be addressed (instance id or group unknown): a failure, with the fix.
    #[error("{0}")]
    Unresolved(String),
}

/// The hook to complete: hook name (flag), group (flag or instance tag), instance id (flag or metadata).
async fn resolve_hook(cfg: &Config, hooks: &HookContext) -> Result<LifecycleHook, NoHook> {
    let Some(hook_name) = cfg.lifecycle_hook.clone() else {
        return Err(NoHook::Disabled);
    };
    let Some(client) = hooks.autoscaling.clone() else {
        return Err(NoHook::Disabled);
    };
    let unresolved = |why: String| Err(NoHook::Unresolved(why));
    let instance_id = match hooks.instance_id.known() {
        Some(id) => id.to_owned(),
        None => match &hooks.imds {
            Some(imds) => match imds.instance_id().await {
                Ok(Some(id)) => {
                    hooks.instance_id.learn(&id);
                    id
                }
                Ok(None) => return unresolved("instance metadata has no instance-id".into()),
                Err(e) => return unresolved(format!("instance id unknown: metadata failed: {e}")),
            },
            None => {
                return unresolved(
                    "instance id unknown: set --instance-id or enable instance metadata".into(),
                )
            }
        },
    };
    let Some(group) = resolve_group(cfg.asg_name.clone(), hooks.imds.as_ref()).await else {
        return unresolved("Auto Scaling group unknown: set --asg-name or allow instance metadata tags (aws:autoscaling:groupName)".into());
    };
    Ok(LifecycleHook::new(client, group, hook_name, instance_id))
}

/// Complete the hook (CONTINUE), trying until `until`: right after a quick drain the group may not have started
/// the lifecycle action yet ("no active lifecycle action"), and Auto Scaling may be slow or throttling; giving up
/// after a few seconds left the instance waiting for the hook's timeout. A refusal that waiting cannot fix
/// (a wrong hook or group name) ends at once.
async fn complete(hook: &LifecycleHook, until: Instant) -> HookOutcome {
    let mut last = String::new();
    let mut attempt = 0u32;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() && attempt > 0 {
            break;
        }
        let call = tokio::time::timeout(
            left.max(Duration::from_secs(1)),
            hook.complete(HookResult::Continue),
        );
        match call.await {
            Ok(Ok(())) => {
                counter!(HOOK_COMPLETIONS, "result" => "ok").increment(1);
                tracing::info!(group = %hook.group(), hook = %hook.hook(), instance = %hook.instance_id(), attempts = attempt + 1, "lifecycle hook completed (CONTINUE)");
                return HookOutcome::Completed;
            }
            Ok(Err(e)) => {
                last = e.to_string();
                if !e.is_no_active_action() && !e.is_retryable() {
                    tracing::warn!(cause = %e, attempt = attempt + 1, "CompleteLifecycleAction refused");
                    break;
                }
                if e.is_no_active_action() {
                    hook.refused("CompleteLifecycleAction", &e);
                } else if attempt == 0 || attempt.is_power_of_two() {
                    tracing::info!(cause = %e, attempt = attempt + 1, "CompleteLifecycleAction not accepted yet; retrying until the hook deadline");
                }
            }
            Err(_) => last = "CompleteLifecycleAction timed out".into(),
        }
        let pause =
            crate::retry::backoff(attempt, Duration::from_millis(500), Duration::from_secs(5));
        attempt += 1;
        if Instant::now() + pause >= until {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    counter!(HOOK_COMPLETIONS, "result" => "failed").increment(1);
    tracing::error!(cause = %last, "lifecycle hook NOT completed: the group proceeds when the hook times out");
    HookOutcome::Failed(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cfg() -> Config {
        crate::config::Cli::try_parse_from(["w", "--queue-url", "http://h/1/q.fifo"])
            .unwrap()
            .run
            .validate()
            .unwrap()
    }

    #[test]
    fn interruption_deadline_is_notice_minus_margin_or_timeout() {
        let cfg = cfg();
        let now = Instant::now();
        let wall = OffsetDateTime::now_utc();
        let t = Trigger::Interruption {
            action: SpotAction::Terminate,
            time: wall + time::Duration::seconds(120),
        };
        let d = deadline_for(&cfg, &t, now, wall);
        // 120 s notice - 10 s margin = 110 s, later than the 90 s timeout: the timeout wins.
        assert_eq!(d - now, Duration::from_secs(90));
        let t = Trigger::Interruption {
            action: SpotAction::Terminate,
            time: wall + time::Duration::seconds(30),
        };
        assert_eq!(
            deadline_for(&cfg, &t, now, wall) - now,
            Duration::from_secs(20)
        );
        let t = Trigger::Interruption {
            action: SpotAction::Terminate,
            time: wall - time::Duration::seconds(5),
        };
        assert_eq!(deadline_for(&cfg, &t, now, wall), now);
        assert_eq!(
            deadline_for(&cfg, &Trigger::Signal("SIGTERM"), now, wall) - now,
            Duration::from_secs(90)
        );
    }

    #[test]
    fn only_an_interruption_or_the_terminated_state_ends_the_worker() {
        assert_eq!(
            terminal(&Notice::TargetLifecycle(LifecycleState::Terminated)),
            Some(Trigger::LifecycleTerminated)
        );
        for state in LifecycleState::ALL {
            if state != LifecycleState::Terminated {
                assert_eq!(terminal(&Notice::TargetLifecycle(state)), None, "{state}");
            }
        }
        let time = OffsetDateTime::now_utc();
        let action = crate::imds::InstanceAction {
            action: SpotAction::Stop,
            time,
        };
        assert_eq!(
            terminal(&Notice::Interruption(action)),
            Some(Trigger::Interruption {
                action: SpotAction::Stop,
                time
            })
        );
    }

    #[tokio::test]
    async fn without_auto_scaling_nothing_is_due_and_a_hook_without_an_id_is_a_failure() {
        let hooks = |autoscaling| HookContext {
            autoscaling,
            imds: None,
            instance_id: Arc::new(InstanceId::new(None)),
        };
        assert_eq!(
            resolve_hook(&cfg(), &hooks(None)).await.unwrap_err(),
            NoHook::Disabled
        );
        let report = without_work(&cfg(), &hooks(None), Trigger::LifecycleTerminated).await;
        assert_eq!(report.hook, HookOutcome::NotNeeded);

        // The default --lifecycle-hook is set; with a client, what is missing is the instance id.
        let sdk = aws_sdk_autoscaling::Config::builder()
            .behavior_version(aws_sdk_autoscaling::config::BehaviorVersion::latest())
            .region(aws_sdk_autoscaling::config::Region::new("us-east-1"))
            .build();
        let client = aws_sdk_autoscaling::Client::from_conf(sdk);
        match resolve_hook(&cfg(), &hooks(Some(client))).await {
            Err(NoHook::Unresolved(why)) => assert!(why.contains("--instance-id"), "{why}"),
            other => panic!("{:?}", other.map(|h| h.hook().to_owned())),
        }
    }
}
