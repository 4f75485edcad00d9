//! One drain path for every trigger.
//!
//! | trigger                              | what happens                                                          |
//! |--------------------------------------|-----------------------------------------------------------------------|
//! | SIGTERM / SIGINT                     | drain (deadline `--drain-timeout`), exit 0                            |
//! | Spot interruption notice             | drain (deadline: notice time - `--drain-margin`, or the timeout, whichever is earlier), complete the hook, exit 0 |
//! | target lifecycle state `Terminated`  | drain, complete the hook, exit 0                                      |
//! | rebalance recommendation             | no drain: the policy is the supervisor's (`crate::supervisor`)        |
//!
//! A drain: receiving stops; held-but-not-started messages are released at once (visibility 0, in group
//! order); in-flight runs finish before the deadline or are abandoned and released (what a run claimed but did
//! not write is written by the next holder, at the same positions); then the lifecycle hook is completed
//! ([`LifecycleHook::finish`]), with heartbeats while the drain outlasts the heartbeat interval. One log line
//! says what the drain did; the caller gets the same figures as a [`DrainReport`].

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dispatch::{Counts, Dispatcher, RELEASE_GRACE};
use crate::imds::{ImdsClient, LifecycleState, Notice, SpotAction};
use crate::instance::InstanceId;
pub use crate::lifecycle::HookOutcome;
use crate::lifecycle::{heartbeat_until, resolve_group, LifecycleHook};
use crate::supervisor::{Heard, Inbox};
use crate::telemetry::{DRAINS, DRAIN_ORDERS, LAST_DRAIN_SECONDS};
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
    /// The trigger a notice is, if it calls for a drain (the one place a notice becomes a trigger).
    pub fn from_notice(notice: &Notice) -> Option<Trigger> {
        match notice {
            Notice::Interruption(a) => Some(Trigger::Interruption {
                action: a.action,
                time: a.time,
            }),
            Notice::TargetLifecycle(LifecycleState::Terminated) => {
                Some(Trigger::LifecycleTerminated)
            }
            Notice::TargetLifecycle(_) | Notice::Rebalance(_) => None,
        }
    }

    /// Its name as a metric label and an EMF dimension value.
    pub fn label(&self) -> &'static str {
        match self {
            Trigger::Signal(_) => "signal",
            Trigger::Interruption { .. } => "interruption",
            Trigger::LifecycleTerminated => "lifecycle",
        }
    }
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

/// A drain that is done: its report, to be sent out at once (on a Spot instance the power may go at any moment
/// after the hook), then [`Drained::stop_loops`].
pub struct Drained {
    pub report: DrainReport,
    /// The engine, whose receive loop may still be recovering the poll the drain ended.
    dispatcher: Dispatcher,
    /// Past this (the deadline and the release grace) that loop is abandoned.
    until: Instant,
}

impl Drained {
    /// Wait for the receive loop to end: it may still be recovering the poll it ended (asked again with its
    /// attempt id, what it brings released). It does not hold up the hook or the report; past the deadline (SQS
    /// not answering) it is abandoned.
    pub async fn stop_loops(self) -> DrainReport {
        self.dispatcher.stop_loops(self.until).await;
        self.report
    }
}

/// What the hook step needs.
pub struct HookContext {
    pub autoscaling: Option<aws_sdk_autoscaling::Client>,
    pub imds: Option<ImdsClient>,
    /// The hook is addressed by instance id: learned here from metadata if nobody has yet.
    pub instance_id: Arc<InstanceId>,
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
pub(crate) struct Drain<'a> {
    pub cfg: &'a Config,
    pub dispatcher: Dispatcher,
    /// Signals (a second one abandons in-flight work at once) and notices (a termination makes the hook due;
    /// an interruption may bring the deadline forward).
    pub inbox: &'a mut Inbox,
    pub hooks: &'a HookContext,
    /// A termination was seen: the hook is due.
    pub termination_seen: bool,
}

/// How the wait for the groups ended.
struct Waited {
    deadline: Instant,
    deadline_hit: bool,
    held_up_by: Option<String>,
}

impl Drain<'_> {
    pub(crate) async fn run(mut self, trigger: Trigger) -> Drained {
        let started = Instant::now();
        let before = self.dispatcher.counts();
        let deadline = self.begin(&trigger, started);
        // Release (in the background: it waits for the poll in flight to be ended and recovered first) while
        // the hook is resolved, which may wait on slow metadata.
        let begin = tokio::spawn({
            let d = self.dispatcher.clone();
            async move { d.begin_drain(deadline).await }
        });
        let hook = if self.termination_seen {
            resolve_hook(self.cfg, self.hooks).await
        } else {
            Err(NoHook::NotAttempted)
        };
        let heartbeats = CancellationToken::new();
        if let Ok(h) = &hook {
            let (h, every, done) = (h.clone(), self.cfg.hook_heartbeat, heartbeats.clone());
            tokio::spawn(async move { heartbeat_until(&h, every, done).await });
        }
        let until = hook_deadline(self.cfg, &trigger, started);
        let waited = self.wait_for_groups(begin, deadline, until).await;
        let hook = hook_step(self.cfg, self.hooks, self.termination_seen, hook, until).await;
        heartbeats.cancel();
        let report = self.report(trigger, started, before, &waited, hook);
        Drained {
            report,
            dispatcher: self.dispatcher,
            until: (waited.deadline + RELEASE_GRACE).max(Instant::now()),
        }
    }

    /// Stop taking work by the trigger's deadline, say so, and count the drain.
    fn begin(&self, trigger: &Trigger, started: Instant) -> Instant {
        let deadline = deadline_for(self.cfg, trigger, started, OffsetDateTime::now_utc());
        self.dispatcher.admission().set_ready(false);
        counter!(DRAINS, "trigger" => trigger.label()).increment(1);
        let (groups, messages) = self.dispatcher.held();
        // From here on no held message starts: what has not started waits only to be released.
        self.dispatcher.stop_taking(deadline);
        let deadline_in_ms = deadline.saturating_duration_since(started).as_millis() as u64;
        if matches!(trigger, Trigger::Signal(_)) {
            // A routine stop (deploy, scale-in through systemd): not a warning.
            tracing::info!(trigger = ?trigger, deadline_in_ms, groups_held = groups, messages_held = messages, "draining");
        } else {
            tracing::warn!(trigger = ?trigger, deadline_in_ms, groups_held = groups, messages_held = messages, "draining");
        }
        deadline
    }

    /// Wait for the groups to finish (after the releases `begin` started), until the deadline and its grace
    /// (never past what the hook, due by `hook_until`, needs: see [`grace_end`]). Meanwhile a second signal
    /// abandons in-flight work at once, and a termination notice makes the hook due (an interruption's may bring
    /// the deadline forward).
    async fn wait_for_groups(
        &mut self,
        begin: JoinHandle<()>,
        mut deadline: Instant,
        hook_until: Instant,
    ) -> Waited {
        let dispatcher = self.dispatcher.clone();
        let mut deadline_hit = false;
        let mut held_up_by = None;
        let finish = async {
            let _ = begin.await;
            // The select below bounds this; the far bound only keeps the types simple.
            dispatcher
                .finish_groups(Instant::now() + Duration::from_secs(24 * 3600))
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
                _ = tokio::time::sleep_until(grace_end(deadline, hook_until)), if deadline_hit => {
                    tracing::warn!(still_held = %dispatcher.describe_held(), "releases or deletes still out after the grace: going on without them (the messages return when their visibility times out)");
                    break;
                }
                heard = self.inbox.next() => match heard {
                    Heard::Signal(_) if deadline_hit => {}
                    Heard::Signal(s) => {
                        tracing::warn!(signal = s, "second signal: abandoning in-flight orders now");
                        deadline = Instant::now();
                        dispatcher.set_deadline(deadline);
                    }
                    Heard::Notice(n) => {
                        let Some(t) = Trigger::from_notice(&n) else { continue };
                        self.termination_seen = true;
                        let earlier = deadline_for(self.cfg, &t, Instant::now(), OffsetDateTime::now_utc());
                        if earlier < deadline && !deadline_hit {
                            deadline = earlier;
                            dispatcher.set_deadline(deadline);
                            tracing::warn!(trigger = ?t, "interruption notice during the drain; deadline brought forward");
                        }
                    }
                },
            }
        }
        Waited {
            deadline,
            deadline_hit,
            held_up_by,
        }
    }

    /// The report, its figures counted and its one line logged.
    fn report(
        &self,
        trigger: Trigger,
        started: Instant,
        before: Counts,
        waited: &Waited,
        hook: HookOutcome,
    ) -> DrainReport {
        // The drain's own time: up to the completed hook, not the wait for the receive loop.
        let took = started.elapsed();
        let after = self.dispatcher.counts();
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
            deadline_hit: waited.deadline_hit,
            held_up_by: waited.held_up_by.clone(),
            hook,
        };
        report.log();
        report
    }
}

/// Time the hook keeps for itself before its own deadline: the release grace ends this long before it, so that
/// `CompleteLifecycleAction` is asked while the instance is still there.
const HOOK_RESERVE: Duration = Duration::from_secs(1);

/// When the release grace after the deadline ends: [`RELEASE_GRACE`] after it, but no later than
/// [`HOOK_RESERVE`] before the hook's deadline (a drain margin shorter than the grace, or a drain timeout that
/// leaves less than it before the interruption, would otherwise spend the hook's time on releases: the soak
/// saw the hook asked 0.2 s after the instance was reclaimed), and never before the deadline itself.
fn grace_end(deadline: Instant, hook_until: Instant) -> Instant {
    (deadline + RELEASE_GRACE)
        .min(hook_until.checked_sub(HOOK_RESERVE).unwrap_or(hook_until))
        .max(deadline)
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

/// The hook step of every drain: nothing is due without a termination; otherwise the hook (resolved again
/// if it could not be before) is finished by `until`.
async fn hook_step(
    cfg: &Config,
    hooks: &HookContext,
    termination_seen: bool,
    resolved: Result<LifecycleHook, NoHook>,
    until: Instant,
) -> HookOutcome {
    if !termination_seen {
        return HookOutcome::NotNeeded;
    }
    let hook = match resolved {
        Ok(h) => Ok(h),
        Err(_) => resolve_hook(cfg, hooks).await,
    };
    match hook {
        Ok(h) => h.finish(until).await,
        Err(NoHook::Disabled) => HookOutcome::NotNeeded,
        Err(why) => HookOutcome::failed(why.to_string()),
    }
}

/// A termination before any work was taken (the worker still waits for SQS or DynamoDB at start): nothing to
/// release, only the hook to complete, and the same one-line report.
pub async fn without_work(cfg: &Config, hooks: &HookContext, trigger: Trigger) -> DrainReport {
    let started = Instant::now();
    counter!(DRAINS, "trigger" => trigger.label()).increment(1);
    tracing::warn!(trigger = ?trigger, "termination notice while waiting to start: nothing is held");
    let until = hook_deadline(cfg, &trigger, started);
    let hook = hook_step(cfg, hooks, true, Err(NoHook::NotAttempted), until).await;
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
    fn the_release_grace_leaves_the_hook_its_reserve() {
        let d = Instant::now();
        // Room enough (AWS's defaults: the hook due 10 s after the deadline): the whole grace.
        assert_eq!(grace_end(d, d + Duration::from_secs(10)), d + RELEASE_GRACE);
        // The hook due 2 s after the deadline (a 6 s notice, a 4 s drain timeout): the grace ends 1 s before.
        assert_eq!(
            grace_end(d, d + Duration::from_secs(2)),
            d + Duration::from_secs(1)
        );
        // The hook already as good as due: no grace, but never before the deadline.
        assert_eq!(grace_end(d, d + Duration::from_millis(300)), d);
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
        let terminal = Trigger::from_notice;
        assert_eq!(
            terminal(&Notice::TargetLifecycle(LifecycleState::Terminated)),
            Some(Trigger::LifecycleTerminated)
        );
        for state in LifecycleState::ALL {
            if state != LifecycleState::Terminated {
                assert_eq!(terminal(&Notice::TargetLifecycle(state)), None, "{state}");
            }
        }
        let rebalance = crate::imds::Rebalance {
            notice_time: OffsetDateTime::now_utc(),
        };
        assert_eq!(terminal(&Notice::Rebalance(rebalance)), None);
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
