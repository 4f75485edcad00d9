//! One Auto Scaling group and its instances: the lifecycle (Pending -> InService -> Terminating:Wait ->
//! Terminating:Proceed -> Terminated), the termination hook and its heartbeat timeout, Spot interruptions
//! (rebalance, notice, reclaim), capacity rebalancing, replacement of lost capacity, and the event log.
//!
//! Every transition is a method taking the present ([`Now`]); those that need the outside world return
//! [`Effect`]s. The model never binds, spawns or signals: a worker's pid is only data here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use time::OffsetDateTime;
use tracing::info;

use super::{Effect, Refusal, Signal};
use crate::clock::{self, Clock, Deadline, Now};

/// Timeline entries kept in the status document.
const MAX_TIMELINE: usize = 20_000;

/// The sim lead of the interruption notice before the end (AWS: two minutes).
pub const NOTICE_LEAD: Duration = Duration::from_secs(120);

/// Auto Scaling lifecycle states this simulator models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Pending,
    InService,
    TerminatingWait,
    TerminatingProceed,
    Terminated,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Pending => "Pending",
            Lifecycle::InService => "InService",
            Lifecycle::TerminatingWait => "Terminating:Wait",
            Lifecycle::TerminatingProceed => "Terminating:Proceed",
            Lifecycle::Terminated => "Terminated",
        }
    }

    /// Counted toward the desired capacity (AWS counts Pending and InService).
    pub fn counts_as_capacity(self) -> bool {
        matches!(self, Lifecycle::Pending | Lifecycle::InService)
    }

    /// The EC2 state a FIS filter `State.Name` sees.
    pub fn ec2_state(self) -> Ec2State {
        match self {
            Lifecycle::Pending | Lifecycle::InService | Lifecycle::TerminatingWait => {
                Ec2State::Running
            }
            Lifecycle::TerminatingProceed => Ec2State::ShuttingDown,
            Lifecycle::Terminated => Ec2State::Terminated,
        }
    }
}

/// EC2 instance states (status `state`, FIS filter `State.Name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ec2State {
    Running,
    ShuttingDown,
    Terminated,
}

impl Ec2State {
    pub const ALL: [Ec2State; 3] = [
        Ec2State::Running,
        Ec2State::ShuttingDown,
        Ec2State::Terminated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Ec2State::Running => "running",
            Ec2State::ShuttingDown => "shutting-down",
            Ec2State::Terminated => "terminated",
        }
    }

    /// The state EC2 spells `s`, if this simulator models it.
    pub fn parse(s: &str) -> Option<Ec2State> {
        Ec2State::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

/// IMDS `autoscaling/target-lifecycle-state`: what the group intends for the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetLifecycle {
    InService,
    Terminated,
}

impl TargetLifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetLifecycle::InService => "InService",
            TargetLifecycle::Terminated => "Terminated",
        }
    }
}

/// IMDS `spot/instance-action` `action`. Spot also has stop and hibernate; this group only terminates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceAction {
    Terminate,
}

impl InstanceAction {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceAction::Terminate => "terminate",
        }
    }
}

/// CompleteLifecycleAction's `LifecycleActionResult`. Both end the wait here: there is no launch hook whose
/// ABANDON would differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleResult {
    Continue,
    Abandon,
}

impl LifecycleResult {
    pub fn parse(s: &str) -> Option<LifecycleResult> {
        match s {
            "CONTINUE" => Some(LifecycleResult::Continue),
            "ABANDON" => Some(LifecycleResult::Abandon),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleResult::Continue => "CONTINUE",
            LifecycleResult::Abandon => "ABANDON",
        }
    }
}

/// IMDS fault injection modes (control API `imds-fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Error500,
    Hang,
    Malformed,
    Forbidden,
    Throttle,
}

impl Fault {
    pub fn parse(s: &str) -> Option<Fault> {
        Some(match s {
            "none" => Fault::None,
            "error500" => Fault::Error500,
            "hang" => Fault::Hang,
            "malformed" => Fault::Malformed,
            "forbidden" => Fault::Forbidden,
            "throttle" => Fault::Throttle,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Error500 => "error500",
            Fault::Hang => "hang",
            Fault::Malformed => "malformed",
            Fault::Forbidden => "forbidden",
            Fault::Throttle => "throttle",
        }
    }
}

/// An active termination lifecycle action (the instance is in Terminating:Wait).
#[derive(Debug, Clone)]
pub struct Hook {
    /// LifecycleActionToken, accepted instead of the instance id.
    pub token: String,
    /// Heartbeat deadline; RecordLifecycleActionHeartbeat moves it.
    pub deadline: Instant,
    /// AWS caps the whole wait at 100 heartbeat timeouts (or 48 h); heartbeats cannot pass this.
    pub global_deadline: Instant,
}

/// A scheduled Spot interruption (from FIS or the control API).
#[derive(Debug, Clone)]
pub struct Interruption {
    /// The FIS experiment that scheduled it, so StopExperiment can cancel it.
    pub experiment: Option<String>,
    /// When the notice appears in IMDS (two minutes, scaled, before the end).
    pub notice_at: Instant,
    /// Whether the notice has been shown (it cannot be taken back).
    pub notice_shown: bool,
    /// When the group starts the termination lifecycle action (set when the notice is shown).
    pub termination_at: Option<Instant>,
    /// The interruption itself: the instance dies then, hook or no hook.
    pub end: Deadline,
}

/// The interruption notice as IMDS serves it; fixed once shown (the notice time never moves).
#[derive(Debug, Clone)]
pub struct Notice {
    pub action: InstanceAction,
    pub time: OffsetDateTime,
}

/// Per-instance IMDS state.
#[derive(Debug, Default)]
pub struct ImdsState {
    /// IMDSv2 tokens and when each expires.
    pub tokens: HashMap<String, Instant>,
    /// The injected fault, if any.
    pub fault: Option<Fault>,
}

/// What an event records, for harnesses that must not parse the human text. Serialised snake_case in the
/// status document's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An instance was launched (its IMDS server listens).
    Launched,
    /// An instance could not be launched (its IMDS server could not bind).
    LaunchFailed,
    /// Pending -> InService.
    InService,
    WorkerStarted,
    /// The worker could not be started (no metrics port, spawn failed).
    WorkerFailed,
    WorkerExited,
    /// A rebalance recommendation.
    Rebalance,
    /// A Spot interruption was scheduled (notice not yet shown).
    InterruptionScheduled,
    /// The Spot interruption notice is shown in IMDS.
    Notice,
    /// The Spot interruption ended: the instance is reclaimed.
    Reclaimed,
    /// The instance entered Terminating:Wait and its hook started.
    TerminatingWait,
    /// CompleteLifecycleAction was accepted.
    HookCompleted,
    /// RecordLifecycleActionHeartbeat was accepted.
    HookHeartbeat,
    /// The hook is done (completed or timed out): Terminating:Proceed.
    TerminatingProceed,
    Sigterm,
    Sigkill,
    Terminated,
    /// A signal sent through the control API.
    Signal,
    ImdsFault,
    DesiredCapacity,
    ShuttingDown,
    FisTemplateCreated,
    FisTemplateDeleted,
    ExperimentRunning,
    ExperimentFailed,
    ExperimentStopped,
    ExperimentCompleted,
}

/// One timeline entry.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: OffsetDateTime,
    pub instance: Option<String>,
    pub kind: EventKind,
    /// The human text (Python harnesses still read it: keep it stable).
    pub what: String,
}

/// One simulated Spot instance.
#[derive(Debug)]
pub struct Instance {
    /// `i-` + 17 hex digits.
    pub id: String,
    /// Round-robin over the region's a/b/c zones.
    pub az: String,
    /// Its own IMDS server; None until the runtime has bound it (`StartImds`).
    pub imds_url: Option<String>,
    /// No process behind it: a test drives a worker against `imds_url` itself.
    pub external: bool,
    /// Launched by the control API InService (like AttachInstances), which raised the desired capacity.
    pub attached: bool,
    /// Why it was launched, for the `launched` event once its IMDS listens.
    pub launch_cause: String,
    /// The runtime is starting its worker (`SpawnWorker` not yet reported): a power-off waits for the pid.
    pub worker_starting: bool,
    /// Where its worker serves metrics (chosen by spot-sim, passed as ORDER_WORKER_METRICS_ADDR).
    pub metrics_addr: Option<String>,
    /// Pid of the live worker process; cleared when it exits so a recycled pid is never signalled.
    pub pid: Option<u32>,
    /// Pid it had, for the status view after it exited.
    pub last_pid: Option<u32>,
    /// How the process ended.
    pub exit: Option<String>,
    pub log_path: Option<PathBuf>,
    pub launched_at: OffsetDateTime,
    pub terminated_at: Option<OffsetDateTime>,
    pub lifecycle: Lifecycle,
    /// Pending -> InService at this instant.
    pub in_service_at: Option<Instant>,
    /// IMDS autoscaling/target-lifecycle-state; None = 404 (before the first transition).
    pub target_state: Option<TargetLifecycle>,
    pub hook: Option<Hook>,
    pub rebalance: Option<OffsetDateTime>,
    pub notice: Option<Notice>,
    pub interruption: Option<Interruption>,
    /// SIGKILL deadline once SIGTERM was sent.
    pub kill_at: Option<Instant>,
    /// Capacity rebalancing: the instance this one replaces (terminated once this is InService).
    pub replaces: Option<String>,
    pub imds: ImdsState,
    pub events: Vec<Event>,
}

impl Instance {
    /// Whether `token` is a live IMDSv2 token of this instance.
    pub fn token_valid(&self, token: &str, now: Instant) -> bool {
        self.imds.tokens.get(token).is_some_and(|exp| *exp > now)
    }
}

/// Fixed settings derived from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The one Auto Scaling group; also the `aws:autoscaling:groupName` instance tag.
    pub group: String,
    /// The termination lifecycle hook's name.
    pub hook: String,
    /// Hook heartbeat timeout (sim time).
    pub hook_timeout: Duration,
    /// Pending -> InService (sim time).
    pub launch_delay: Duration,
    /// Interruption notice -> Terminating:Wait (sim time).
    pub hook_start_delay: Duration,
    /// SIGTERM -> SIGKILL (real time: it is the worker's shutdown budget, not a cloud delay).
    pub kill_grace: Duration,
    /// Launch a replacement on a rebalance recommendation.
    pub capacity_rebalance: bool,
    /// SetDesiredCapacity refuses more than this.
    pub max_size: u32,
    /// Instances get a worker process (`--worker-cmd`); false: every instance is external.
    pub workers: bool,
    /// Shown in ARNs, zones and metadata.
    pub region: String,
    pub account: String,
    pub instance_type: String,
    /// The group's CreatedTime.
    pub created_at: OffsetDateTime,
}

impl Settings {
    pub fn group_arn(&self) -> String {
        format!(
            "arn:aws:autoscaling:{}:{}:autoScalingGroup:5f6a7b8c-0000-4000-8000-000000000001:autoScalingGroupName/{}",
            self.region, self.account, self.group
        )
    }

    pub fn instance_arn(&self, id: &str) -> String {
        format!(
            "arn:aws:ec2:{}:{}:instance/{}",
            self.region, self.account, id
        )
    }

    pub fn zones(&self) -> [String; 3] {
        ["a", "b", "c"].map(|z| format!("{}{}", self.region, z))
    }

    /// AWS's hook global timeout: 100 x heartbeat timeout, at most 48 hours.
    pub fn hook_global_timeout(&self) -> Duration {
        (self.hook_timeout * 100).min(Duration::from_secs(48 * 3600))
    }
}

/// Which lifecycle action a CompleteLifecycleAction / RecordLifecycleActionHeartbeat names.
#[derive(Debug, Clone, Copy)]
pub struct ActionRef<'a> {
    pub instance: Option<&'a str>,
    pub token: Option<&'a str>,
}

/// Random lowercase hex.
pub fn hex(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap())
        .collect()
}

/// A UUID-shaped random id (lifecycle action tokens, request ids).
pub fn uuid() -> String {
    format!(
        "{}-{}-4{}-{}{}-{}",
        hex(8),
        hex(4),
        hex(3),
        ["8", "9", "a", "b"][fastrand::usize(0..4)],
        hex(3),
        hex(12)
    )
}

/// The group and everything that happened to it.
#[derive(Debug)]
pub struct Fleet {
    pub settings: Settings,
    /// Scales every sim duration the fleet waits on.
    pub clock: Clock,
    /// The group's desired capacity; the tick launches until Pending + InService reaches it.
    pub desired: u32,
    /// Every instance ever launched, in launch order (terminated ones stay for the status view).
    pub instances: Vec<Instance>,
    /// Everything that happened, for the status document.
    pub timeline: Vec<Event>,
    /// Set once shutdown starts: no more launches.
    pub shutting_down: bool,
    /// Next zone in the round-robin.
    next_az: usize,
}

impl Fleet {
    pub fn new(settings: Settings, clock: Clock, desired: u32) -> Fleet {
        Fleet {
            settings,
            clock,
            desired,
            instances: Vec::new(),
            timeline: Vec::new(),
            shutting_down: false,
            next_az: 0,
        }
    }

    pub fn find(&self, id: &str) -> Option<usize> {
        self.instances.iter().position(|i| i.id == id)
    }

    pub fn get(&self, id: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.id == id)
    }

    fn index(&self, id: &str) -> Result<usize, Refusal> {
        self.find(id)
            .ok_or_else(|| Refusal::NotFound(format!("no instance {id}")))
    }

    pub fn capacity(&self) -> u32 {
        self.instances
            .iter()
            .filter(|i| i.lifecycle.counts_as_capacity())
            .count() as u32
    }

    /// Record an event on the timeline and on the instance.
    pub fn event(
        &mut self,
        now: Now,
        instance: Option<&str>,
        kind: EventKind,
        what: impl Into<String>,
    ) {
        let ev = Event {
            at: now.wall,
            instance: instance.map(str::to_string),
            kind,
            what: what.into(),
        };
        info!(instance = instance.unwrap_or("-"), "{}", ev.what);
        if let Some(id) = instance {
            if let Some(i) = self.instances.iter_mut().find(|i| i.id == id) {
                i.events.push(ev.clone());
            }
        }
        self.timeline.push(ev);
        // Bound memory in a long demo: the oldest entries go first (instances keep their own lists).
        if self.timeline.len() > MAX_TIMELINE {
            self.timeline.drain(..MAX_TIMELINE / 10);
        }
    }

    /// The one group exists under its name; anything else is refused as AWS refuses it.
    pub fn check_group(&self, name: &str) -> Result<(), Refusal> {
        if name == self.settings.group {
            Ok(())
        } else {
            Err(Refusal::NotFound(format!("Group {name} not found")))
        }
    }

    /// Launch one instance: it exists at once (Pending, or InService when `in_service`); the runtime starts its
    /// IMDS server and, unless external, its worker.
    pub fn launch(
        &mut self,
        now: Now,
        external: bool,
        in_service: bool,
        replaces: Option<String>,
        cause: &str,
    ) -> (String, Vec<Effect>) {
        let id = format!("i-{}", hex(17));
        let zones = self.settings.zones();
        let az = zones[self.next_az % zones.len()].clone();
        self.next_az += 1;
        let external = external || !self.settings.workers;
        self.instances.push(Instance {
            id: id.clone(),
            az,
            imds_url: None,
            external,
            attached: in_service,
            launch_cause: cause.to_string(),
            worker_starting: !external,
            metrics_addr: None,
            pid: None,
            last_pid: None,
            exit: None,
            log_path: None,
            launched_at: now.wall,
            terminated_at: None,
            lifecycle: if in_service {
                Lifecycle::InService
            } else {
                Lifecycle::Pending
            },
            in_service_at: (!in_service)
                .then(|| now.at + self.clock.real(self.settings.launch_delay)),
            target_state: in_service.then_some(TargetLifecycle::InService),
            hook: None,
            rebalance: None,
            notice: None,
            interruption: None,
            kill_at: None,
            replaces,
            imds: ImdsState::default(),
            events: Vec::new(),
        });
        let mut effects = vec![Effect::StartImds {
            instance: id.clone(),
        }];
        if !external {
            effects.push(Effect::SpawnWorker {
                instance: id.clone(),
            });
        }
        (id, effects)
    }

    /// Control API: an instance registered InService at once; like AttachInstances, it raises the desired
    /// capacity by one so the group does not scale something else in to make room.
    pub fn attach(&mut self, now: Now, external: bool) -> (String, Vec<Effect>) {
        let launched = self.launch(now, external, true, None, "control API");
        self.desired += 1;
        launched
    }

    /// The instance's IMDS server listens at `url`: the launch is complete.
    pub fn imds_bound(&mut self, now: Now, id: &str, url: String) {
        let Some(idx) = self.find(id) else { return };
        let inst = &mut self.instances[idx];
        inst.imds_url = Some(url.clone());
        let kind = if inst.external {
            "external"
        } else {
            "with worker"
        };
        let state = if inst.attached {
            Lifecycle::InService
        } else {
            Lifecycle::Pending
        }
        .as_str();
        let what = format!(
            "launched ({kind}, {state}): {}; imds {url}",
            inst.launch_cause
        );
        self.event(now, Some(id), EventKind::Launched, what);
    }

    /// The instance's IMDS server could not bind: the launch did not happen (the next tick tries again if
    /// capacity is missing).
    pub fn imds_failed(&mut self, now: Now, id: &str, error: &str) {
        let Some(idx) = self.find(id) else { return };
        let inst = self.instances.remove(idx);
        if inst.attached {
            self.desired = self.desired.saturating_sub(1);
        }
        match inst.replaces {
            Some(old) => self.event(
                now,
                Some(&old),
                EventKind::LaunchFailed,
                format!("replacement launch failed: {error}"),
            ),
            None => self.event(
                now,
                None,
                EventKind::LaunchFailed,
                format!("launch failed: {error}"),
            ),
        }
    }

    /// The worker process runs. If the instance was shut down while it started, it gets its SIGTERM now.
    pub fn worker_started(
        &mut self,
        now: Now,
        id: &str,
        pid: Option<u32>,
        metrics_addr: String,
        log_path: PathBuf,
    ) -> Vec<Effect> {
        let Some(idx) = self.find(id) else {
            return Vec::new();
        };
        let inst = &mut self.instances[idx];
        inst.worker_starting = false;
        inst.pid = pid;
        inst.last_pid = pid;
        let what = format!(
            "worker started pid {} metrics {metrics_addr} log {}",
            pid.unwrap_or(0),
            log_path.display()
        );
        inst.metrics_addr = Some(metrics_addr);
        inst.log_path = Some(log_path);
        let proceeding = inst.lifecycle == Lifecycle::TerminatingProceed;
        self.event(now, Some(id), EventKind::WorkerStarted, what);
        if proceeding {
            self.power_off(now, idx, "shut down while its worker started")
        } else {
            Vec::new()
        }
    }

    /// The worker could not be started (`what` is the whole message).
    pub fn worker_failed(&mut self, now: Now, id: &str, what: String) {
        let Some(idx) = self.find(id) else { return };
        self.instances[idx].worker_starting = false;
        let proceeding = self.instances[idx].lifecycle == Lifecycle::TerminatingProceed;
        self.event(now, Some(id), EventKind::WorkerFailed, what);
        if proceeding {
            self.mark_terminated(now, idx);
        }
    }

    /// The worker process is gone. Only a shutting-down instance becomes Terminated: on EC2 systemd would
    /// restart a worker that exited on its own, and the instance stays.
    pub fn process_exited(&mut self, now: Now, id: &str, what: String) {
        let Some(idx) = self.find(id) else { return };
        let inst = &mut self.instances[idx];
        inst.pid = None;
        inst.kill_at = None;
        inst.exit = Some(what.clone());
        let proceeding = inst.lifecycle == Lifecycle::TerminatingProceed;
        self.event(
            now,
            Some(id),
            EventKind::WorkerExited,
            format!("worker exited: {what}"),
        );
        if proceeding {
            self.mark_terminated(now, idx);
        }
    }

    /// A signal the runtime sent for an `Effect::Signal`, with its outcome.
    pub fn record_signal(
        &mut self,
        now: Now,
        id: &str,
        signal: Signal,
        note: &str,
        error: Option<String>,
    ) {
        let kind = match signal {
            Signal::Term => EventKind::Sigterm,
            Signal::Kill => EventKind::Sigkill,
            _ => EventKind::Signal,
        };
        let suffix = error.map(|e| format!(" (failed: {e})")).unwrap_or_default();
        self.event(now, Some(id), kind, format!("{note}{suffix}"));
    }

    /// Put an instance into Terminating:Wait: target-lifecycle-state becomes Terminated and the hook starts.
    /// No-op unless it is Pending or InService.
    pub fn begin_termination(&mut self, now: Now, idx: usize, cause: &str) -> bool {
        let inst = &mut self.instances[idx];
        if !inst.lifecycle.counts_as_capacity() {
            return false;
        }
        inst.lifecycle = Lifecycle::TerminatingWait;
        inst.in_service_at = None;
        inst.target_state = Some(TargetLifecycle::Terminated);
        inst.hook = Some(Hook {
            token: uuid(),
            deadline: now.at + self.clock.real(self.settings.hook_timeout),
            global_deadline: now.at + self.clock.real(self.settings.hook_global_timeout()),
        });
        let id = inst.id.clone();
        let what = format!("Terminating:Wait (hook {}): {cause}", self.settings.hook);
        self.event(now, Some(&id), EventKind::TerminatingWait, what);
        true
    }

    /// Leave Terminating:Wait: the hook is done (completed, abandoned or timed out).
    fn proceed(&mut self, now: Now, idx: usize, why: &str) -> Vec<Effect> {
        if self.instances[idx].lifecycle != Lifecycle::TerminatingWait {
            return Vec::new();
        }
        self.instances[idx].hook = None;
        let id = self.instances[idx].id.clone();
        self.event(
            now,
            Some(&id),
            EventKind::TerminatingProceed,
            format!("Terminating:Proceed: {why}"),
        );
        self.power_off(now, idx, "lifecycle hook done")
    }

    /// Shut the instance down: SIGTERM now, SIGKILL after the grace, Terminated once the process is gone.
    fn power_off(&mut self, now: Now, idx: usize, why: &str) -> Vec<Effect> {
        let grace = self.settings.kill_grace;
        let inst = &mut self.instances[idx];
        if inst.lifecycle == Lifecycle::Terminated {
            return Vec::new();
        }
        inst.lifecycle = Lifecycle::TerminatingProceed;
        inst.hook = None;
        inst.in_service_at = None;
        inst.target_state = Some(TargetLifecycle::Terminated);
        match inst.pid {
            Some(pid) if inst.kill_at.is_none() => {
                inst.kill_at = Some(now.at + grace);
                vec![Effect::Signal {
                    instance: inst.id.clone(),
                    pid,
                    signal: Signal::Term,
                    note: format!("SIGTERM to pid {pid} ({why})"),
                }]
            }
            Some(_) => Vec::new(), // already SIGTERMed; the kill deadline stands
            // Its worker is being started: worker_started / worker_failed finish the shutdown.
            None if inst.worker_starting => Vec::new(),
            None => {
                self.mark_terminated(now, idx);
                Vec::new()
            }
        }
    }

    fn mark_terminated(&mut self, now: Now, idx: usize) {
        let inst = &mut self.instances[idx];
        if inst.lifecycle == Lifecycle::Terminated {
            return;
        }
        inst.lifecycle = Lifecycle::Terminated;
        inst.terminated_at = Some(now.wall);
        inst.hook = None;
        inst.kill_at = None;
        inst.interruption = None;
        let id = inst.id.clone();
        self.event(now, Some(&id), EventKind::Terminated, "Terminated");
    }

    /// A rebalance recommendation: shown in IMDS at once; with capacity rebalancing, a replacement launches and
    /// the old instance is terminated (its hook runs) once the replacement is InService.
    pub fn recommend_rebalance(&mut self, now: Now, idx: usize, cause: &str) -> Vec<Effect> {
        let inst = &mut self.instances[idx];
        if inst.lifecycle == Lifecycle::Terminated {
            return Vec::new();
        }
        if inst.rebalance.is_none() {
            inst.rebalance = Some(now.wall);
        }
        let id = inst.id.clone();
        let in_service = inst.lifecycle == Lifecycle::InService;
        let external = inst.external;
        self.event(
            now,
            Some(&id),
            EventKind::Rebalance,
            format!("rebalance recommendation: {cause}"),
        );
        let already = self
            .instances
            .iter()
            .any(|i| i.replaces.as_deref() == Some(&id) && i.lifecycle != Lifecycle::Terminated);
        if self.settings.capacity_rebalance && in_service && !already && !self.shutting_down {
            let cause = format!("capacity rebalance for {id}");
            return self.launch(now, external, false, Some(id), &cause).1;
        }
        Vec::new()
    }

    /// Schedule a Spot interruption ending at `end`; the notice shows two (scaled) minutes before it, or at once.
    pub fn schedule_interruption(
        &mut self,
        now: Now,
        idx: usize,
        end: Deadline,
        experiment: Option<String>,
    ) {
        let lead = self.clock.real(NOTICE_LEAD);
        let notice_at = end.at.checked_sub(lead).unwrap_or(end.at).max(now.at);
        let inst = &mut self.instances[idx];
        inst.interruption = Some(Interruption {
            experiment: experiment.clone(),
            notice_at,
            notice_shown: false,
            termination_at: None,
            end,
        });
        let id = inst.id.clone();
        let by = experiment.map(|e| format!(" by {e}")).unwrap_or_default();
        let what = format!(
            "spot interruption scheduled{by}: terminate at {}",
            clock::rfc3339_seconds(end.wall)
        );
        self.event(now, Some(&id), EventKind::InterruptionScheduled, what);
    }

    /// StopExperiment: drop the interruptions `experiment` scheduled; a notice already shown stays shown.
    pub fn cancel_interruptions(&mut self, experiment: &str) -> Vec<String> {
        let mut cancelled = Vec::new();
        for inst in self.instances.iter_mut() {
            if inst
                .interruption
                .as_ref()
                .is_some_and(|i| i.experiment.as_deref() == Some(experiment))
            {
                inst.interruption = None;
                cancelled.push(inst.id.clone());
            }
        }
        cancelled
    }

    /// A direct interruption (control API) whose notice shows at once, whatever the lead.
    pub fn interrupt(
        &mut self,
        now: Now,
        id: &str,
        end: Deadline,
        rebalance: bool,
    ) -> Result<Vec<Effect>, Refusal> {
        let idx = self.index(id)?;
        if self.instances[idx].lifecycle == Lifecycle::Terminated {
            return Err(Refusal::WrongState(format!("{id} is terminated")));
        }
        let mut effects = Vec::new();
        if rebalance {
            effects = self.recommend_rebalance(now, idx, "control API");
        }
        self.schedule_interruption(now, idx, end, None);
        if let Some(i) = self.instances[idx].interruption.as_mut() {
            i.notice_at = now.at;
        }
        Ok(effects)
    }

    /// Control API rebalance: the recommendation's time (None for a terminated instance) and the effects.
    pub fn rebalance(
        &mut self,
        now: Now,
        id: &str,
    ) -> Result<(Option<OffsetDateTime>, Vec<Effect>), Refusal> {
        let idx = self.index(id)?;
        let effects = self.recommend_rebalance(now, idx, "control API");
        Ok((self.instances[idx].rebalance, effects))
    }

    /// Control API scale-in of one instance; returns its lifecycle action token.
    pub fn scale_in(&mut self, now: Now, id: &str, decrement: bool) -> Result<String, Refusal> {
        let idx = self.index(id)?;
        let state = self.instances[idx].lifecycle;
        if !state.counts_as_capacity() {
            return Err(Refusal::WrongState(format!(
                "{id} is {}, not Pending or InService",
                state.as_str()
            )));
        }
        if decrement {
            self.desired = self.desired.saturating_sub(1);
        }
        self.begin_termination(now, idx, "scale in (control API)");
        Ok(self.instances[idx]
            .hook
            .as_ref()
            .map(|h| h.token.clone())
            .unwrap_or_default())
    }

    /// The lifecycle action `target` names, refused as Auto Scaling refuses it.
    fn active_action(&self, group: &str, hook: &str, target: ActionRef) -> Result<usize, Refusal> {
        self.check_group(group)?;
        if hook != self.settings.hook {
            return Err(Refusal::NotFound(format!(
                "No Lifecycle Hook found with name {hook} for group {group}"
            )));
        }
        let no_token = |t: &str| {
            Refusal::WrongState(format!("No active Lifecycle Action found with token {t}"))
        };
        match (target.token, target.instance) {
            (None, None) => Err(Refusal::Invalid(
                "Either LifecycleActionToken or InstanceId must be specified".into(),
            )),
            (token, Some(id)) => {
                // Only an instance in Terminating:Wait has a hook; any other (or none) has no active action.
                let idx = self
                    .find(id)
                    .filter(|&i| self.instances[i].hook.is_some())
                    .ok_or_else(|| {
                        Refusal::WrongState(format!(
                            "No active Lifecycle Action found with instance ID {id}"
                        ))
                    })?;
                if let Some(t) = token {
                    if self.instances[idx].hook.as_ref().map(|h| h.token.as_str()) != Some(t) {
                        return Err(no_token(t));
                    }
                }
                Ok(idx)
            }
            (Some(t), None) => self
                .instances
                .iter()
                .position(|i| i.hook.as_ref().is_some_and(|h| h.token == t))
                .ok_or_else(|| no_token(t)),
        }
    }

    /// CompleteLifecycleAction: the hook is done, the instance proceeds to shut down.
    pub fn complete_lifecycle_action(
        &mut self,
        now: Now,
        group: &str,
        hook: &str,
        target: ActionRef,
        result: LifecycleResult,
    ) -> Result<Vec<Effect>, Refusal> {
        let idx = self.active_action(group, hook, target)?;
        let id = self.instances[idx].id.clone();
        let r = result.as_str();
        self.event(
            now,
            Some(&id),
            EventKind::HookCompleted,
            format!("CompleteLifecycleAction {r}"),
        );
        Ok(self.proceed(now, idx, &format!("lifecycle action completed ({r})")))
    }

    /// RecordLifecycleActionHeartbeat: the hook deadline moves to now + heartbeat timeout, capped by the global
    /// timeout.
    pub fn record_heartbeat(
        &mut self,
        now: Now,
        group: &str,
        hook: &str,
        target: ActionRef,
    ) -> Result<(), Refusal> {
        let idx = self.active_action(group, hook, target)?;
        let timeout = self.clock.real(self.settings.hook_timeout);
        if let Some(h) = self.instances[idx].hook.as_mut() {
            h.deadline = (now.at + timeout).min(h.global_deadline);
        }
        let id = self.instances[idx].id.clone();
        self.event(
            now,
            Some(&id),
            EventKind::HookHeartbeat,
            "RecordLifecycleActionHeartbeat",
        );
        Ok(())
    }

    /// SetDesiredCapacity: lowering it sends the oldest instances through the hook; raising it launches on the
    /// next tick.
    pub fn set_desired(&mut self, now: Now, n: u32) -> Result<(), Refusal> {
        if n > self.settings.max_size {
            return Err(Refusal::Invalid(format!(
                "New SetDesiredCapacity value {n} is above max value {} for the AutoScalingGroup.",
                self.settings.max_size
            )));
        }
        self.desired = n;
        self.event(
            now,
            None,
            EventKind::DesiredCapacity,
            format!("SetDesiredCapacity {n}"),
        );
        let excess = self.capacity().saturating_sub(self.desired);
        let victims: Vec<usize> = (0..self.instances.len())
            .filter(|&i| self.instances[i].lifecycle.counts_as_capacity())
            .take(excess as usize)
            .collect();
        for idx in victims {
            self.begin_termination(now, idx, "scale in (desired capacity lowered)");
        }
        Ok(())
    }

    /// TerminateInstanceInAutoScalingGroup: through the hook, like a scale-in.
    pub fn terminate_instance(
        &mut self,
        now: Now,
        id: &str,
        decrement: bool,
    ) -> Result<(), Refusal> {
        let idx = self
            .find(id)
            .filter(|&i| self.instances[i].lifecycle != Lifecycle::Terminated)
            .ok_or_else(|| {
                Refusal::NotFound(format!(
                    "Instance Id not found - No managed instance found for instance ID: {id}"
                ))
            })?;
        if decrement {
            self.desired = self.desired.saturating_sub(1);
        }
        let cause = format!(
            "TerminateInstanceInAutoScalingGroup (ShouldDecrementDesiredCapacity={decrement})"
        );
        self.begin_termination(now, idx, &cause);
        Ok(())
    }

    /// Control API IMDS fault injection; returns the fault now in force.
    pub fn set_imds_fault(
        &mut self,
        now: Now,
        id: &str,
        mode: Option<Fault>,
        expire_tokens: bool,
    ) -> Result<Fault, Refusal> {
        let idx = self.index(id)?;
        let inst = &mut self.instances[idx];
        if let Some(m) = mode {
            inst.imds.fault = (m != Fault::None).then_some(m);
        }
        if expire_tokens {
            inst.imds.tokens.clear();
        }
        let fault = inst.imds.fault.unwrap_or(Fault::None);
        let what = format!(
            "imds fault {}{}",
            fault.as_str(),
            if expire_tokens {
                ", tokens expired"
            } else {
                ""
            }
        );
        self.event(now, Some(id), EventKind::ImdsFault, what);
        Ok(fault)
    }

    /// Store a new IMDSv2 token (dropping expired ones); false when there is no such instance.
    pub fn issue_token(&mut self, now: Instant, id: &str, token: String, ttl: Duration) -> bool {
        let Some(idx) = self.find(id) else {
            return false;
        };
        let tokens = &mut self.instances[idx].imds.tokens;
        tokens.retain(|_, exp| *exp > now);
        tokens.insert(token, now + ttl);
        true
    }

    /// The live worker pid of an instance, for the control API's signal endpoint.
    pub fn pid_of(&self, id: &str) -> Result<u32, Refusal> {
        let idx = self.index(id)?;
        self.instances[idx]
            .pid
            .ok_or_else(|| Refusal::WrongState(format!("{id} has no running process")))
    }

    /// Shutdown starts: no more launches. Returns the live worker pids to stop.
    pub fn begin_shutdown(&mut self, now: Now) -> Vec<u32> {
        self.shutting_down = true;
        self.event(
            now,
            None,
            EventKind::ShuttingDown,
            "shutting down: SIGTERM to every worker",
        );
        self.live_pids()
    }

    pub fn live_pids(&self) -> Vec<u32> {
        self.instances.iter().filter_map(|i| i.pid).collect()
    }

    /// One pass over every deadline.
    pub fn tick(&mut self, now: Now) -> Vec<Effect> {
        let mut effects = Vec::new();
        for idx in 0..self.instances.len() {
            // Pending -> InService.
            if self.instances[idx].lifecycle == Lifecycle::Pending
                && self.instances[idx]
                    .in_service_at
                    .is_some_and(|t| now.at >= t)
            {
                let inst = &mut self.instances[idx];
                inst.lifecycle = Lifecycle::InService;
                inst.in_service_at = None;
                inst.target_state = Some(TargetLifecycle::InService);
                let id = inst.id.clone();
                let replaces = inst.replaces.clone();
                self.event(now, Some(&id), EventKind::InService, "InService");
                if let Some(o) = replaces.and_then(|old| self.find(&old)) {
                    if self.instances[o].lifecycle == Lifecycle::InService {
                        let cause = format!("capacity rebalance: replacement {id} is InService");
                        self.begin_termination(now, o, &cause);
                    }
                }
            }
            // Spot interruption: notice, then the end.
            if let Some(intr) = self.instances[idx].interruption.clone() {
                if !intr.notice_shown && now.at >= intr.notice_at {
                    let inst = &mut self.instances[idx];
                    inst.notice = Some(Notice {
                        action: InstanceAction::Terminate,
                        time: intr.end.wall,
                    });
                    let termination_at = now.at + self.clock.real(self.settings.hook_start_delay);
                    if let Some(i) = inst.interruption.as_mut() {
                        i.notice_shown = true;
                        i.termination_at = Some(termination_at);
                    }
                    let id = inst.id.clone();
                    let what = format!(
                        "spot interruption notice: terminate at {}",
                        clock::rfc3339_seconds(intr.end.wall)
                    );
                    self.event(now, Some(&id), EventKind::Notice, what);
                }
                // The group learns of the interruption with the notice and starts the termination hook (after
                // --hook-start-delay); the instance still dies at the end whether or not the hook completes.
                let due = self.instances[idx]
                    .interruption
                    .as_ref()
                    .and_then(|i| i.termination_at)
                    .is_some_and(|t| now.at >= t);
                if due {
                    if let Some(i) = self.instances[idx].interruption.as_mut() {
                        i.termination_at = None;
                    }
                    self.begin_termination(now, idx, "spot interruption notice");
                }
                if now.at >= intr.end.at {
                    self.instances[idx].interruption = None;
                    let id = self.instances[idx].id.clone();
                    self.event(
                        now,
                        Some(&id),
                        EventKind::Reclaimed,
                        "spot interruption: instance reclaimed",
                    );
                    effects.extend(self.power_off(now, idx, "spot interruption"));
                }
            }
            // Hook heartbeat timeout -> default result CONTINUE.
            if let Some(h) = self.instances[idx].hook.clone() {
                if now.at >= h.deadline || now.at >= h.global_deadline {
                    effects.extend(self.proceed(
                        now,
                        idx,
                        "lifecycle hook timed out (default result CONTINUE)",
                    ));
                }
            }
            // SIGKILL after the grace.
            if self.instances[idx].kill_at.is_some_and(|t| now.at >= t) {
                let inst = &mut self.instances[idx];
                inst.kill_at = None;
                if let Some(pid) = inst.pid {
                    effects.push(Effect::Signal {
                        instance: inst.id.clone(),
                        pid,
                        signal: Signal::Kill,
                        note: format!("SIGKILL to pid {pid} after the grace"),
                    });
                }
            }
        }
        // Replace lost capacity.
        if !self.shutting_down {
            let missing = self.desired.saturating_sub(self.capacity());
            for _ in 0..missing {
                effects.extend(
                    self.launch(now, false, false, None, "capacity below desired")
                        .1,
                );
            }
        }
        effects
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Settings for tests: time scale 1, a 5 s launch delay, 120 s hook timeout, no hook start delay.
    pub fn settings() -> Settings {
        Settings {
            group: "order-workers".into(),
            hook: "order-worker-drain".into(),
            hook_timeout: Duration::from_secs(120),
            launch_delay: Duration::from_secs(5),
            hook_start_delay: Duration::ZERO,
            kill_grace: Duration::from_secs(5),
            capacity_rebalance: true,
            max_size: 10,
            workers: false,
            region: "us-east-1".into(),
            account: "123456789012".into(),
            instance_type: "c7g.large".into(),
            created_at: OffsetDateTime::now_utc(),
        }
    }

    /// A fleet at time scale `scale`, its instances launched and their IMDS bound (as the runtime would).
    pub fn fleet(s: Settings, scale: f64, desired: u32, now: Now) -> Fleet {
        let mut f = Fleet::new(s, Clock::new(scale), desired);
        let effects = f.tick(now);
        carry_out(&mut f, now, effects);
        f
    }

    /// What the runtime would do, without I/O: IMDS binds at a made-up port, workers get made-up pids, signals
    /// are recorded as sent.
    pub fn carry_out(f: &mut Fleet, now: Now, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::StartImds { instance } => {
                    f.imds_bound(now, &instance, "http://127.0.0.1:1".into())
                }
                Effect::SpawnWorker { instance } => {
                    let more = f.worker_started(
                        now,
                        &instance,
                        Some(4242),
                        "127.0.0.1:2".into(),
                        PathBuf::from("/tmp/x.log"),
                    );
                    carry_out(f, now, more);
                }
                Effect::Signal {
                    instance,
                    signal,
                    note,
                    ..
                } => f.record_signal(now, &instance, signal, &note, None),
            }
        }
    }

    /// The moment a deadline names.
    fn at(d: Deadline) -> Now {
        Now {
            at: d.at,
            wall: d.wall,
        }
    }

    fn state(f: &Fleet, id: &str) -> Lifecycle {
        f.get(id).unwrap().lifecycle
    }

    fn kinds(f: &Fleet, id: &str) -> Vec<EventKind> {
        f.get(id).unwrap().events.iter().map(|e| e.kind).collect()
    }

    fn ids(f: &Fleet, l: Lifecycle) -> Vec<String> {
        f.instances
            .iter()
            .filter(|i| i.lifecycle == l)
            .map(|i| i.id.clone())
            .collect()
    }

    const GROUP: &str = "order-workers";
    const HOOK: &str = "order-worker-drain";

    fn by_id(id: &str) -> ActionRef<'_> {
        ActionRef {
            instance: Some(id),
            token: None,
        }
    }

    #[test]
    fn ids_have_aws_shapes() {
        let h = hex(17);
        assert_eq!(h.len(), 17);
        assert!(h
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let u = uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(u.matches('-').count(), 4);
    }

    #[test]
    fn lifecycle_names_and_capacity() {
        assert_eq!(Lifecycle::TerminatingWait.as_str(), "Terminating:Wait");
        assert!(Lifecycle::Pending.counts_as_capacity());
        assert!(!Lifecycle::TerminatingWait.counts_as_capacity());
        assert_eq!(Lifecycle::TerminatingWait.ec2_state().as_str(), "running");
        assert_eq!(
            Lifecycle::TerminatingProceed.ec2_state(),
            Ec2State::ShuttingDown
        );
        assert_eq!(Fault::parse("hang"), Some(Fault::Hang));
        assert_eq!(Fault::parse("nope"), None);
        assert_eq!(
            LifecycleResult::parse("CONTINUE"),
            Some(LifecycleResult::Continue)
        );
        assert_eq!(LifecycleResult::parse("continue"), None);
        assert_eq!(Signal::parse("SIGKILL"), Some(Signal::Kill));
        assert_eq!(Signal::parse("stop"), Some(Signal::Stop));
        assert_eq!(Signal::parse("BOGUS"), None);
    }

    #[test]
    fn event_kinds_serialise_snake_case() {
        let j = |k: EventKind| serde_json::to_value(k).unwrap();
        assert_eq!(j(EventKind::TerminatingWait), "terminating_wait");
        assert_eq!(j(EventKind::HookCompleted), "hook_completed");
        assert_eq!(j(EventKind::InService), "in_service");
        assert_eq!(j(EventKind::Rebalance), "rebalance");
    }

    #[test]
    fn launch_asks_for_imds_then_a_worker_and_the_instance_is_pending() {
        let now = Now::read();
        let mut f = Fleet::new(
            Settings {
                workers: true,
                ..settings()
            },
            Clock::new(1.0),
            0,
        );
        let (id, effects) = f.launch(now, false, false, None, "test");
        assert_eq!(
            effects,
            vec![
                Effect::StartImds {
                    instance: id.clone()
                },
                Effect::SpawnWorker {
                    instance: id.clone()
                }
            ]
        );
        assert_eq!(state(&f, &id), Lifecycle::Pending);
        assert_eq!(f.get(&id).unwrap().target_state, None);
        // An external one needs no worker.
        let (_, effects) = f.launch(now, true, false, None, "test");
        assert_eq!(effects.len(), 1);
        // The launched event waits for the IMDS address, which its text names.
        assert!(f.get(&id).unwrap().events.is_empty());
        f.imds_bound(now, &id, "http://127.0.0.1:9".into());
        let ev = &f.get(&id).unwrap().events[0];
        assert_eq!(ev.kind, EventKind::Launched);
        assert_eq!(
            ev.what,
            "launched (with worker, Pending): test; imds http://127.0.0.1:9"
        );
    }

    #[test]
    fn pending_becomes_in_service_after_the_scaled_launch_delay() {
        let t0 = Now::read();
        // Scale 0.1: the 5 s launch delay is 500 ms real.
        let mut f = fleet(settings(), 0.1, 2, t0);
        assert_eq!(ids(&f, Lifecycle::Pending).len(), 2);
        assert!(f.tick(t0.after(Duration::from_millis(499))).is_empty());
        assert_eq!(ids(&f, Lifecycle::Pending).len(), 2);
        assert!(f.tick(t0.after(Duration::from_millis(500))).is_empty());
        let up = ids(&f, Lifecycle::InService);
        assert_eq!(up.len(), 2);
        let i = f.get(&up[0]).unwrap();
        assert_eq!(i.target_state, Some(TargetLifecycle::InService));
        assert_eq!(
            kinds(&f, &up[0]),
            vec![EventKind::Launched, EventKind::InService]
        );
    }

    #[test]
    fn an_interruption_shows_rebalance_then_the_notice_two_minutes_before_the_end_then_terminating_wait(
    ) {
        let t0 = Now::read();
        let s = Settings {
            hook_start_delay: Duration::from_secs(10),
            capacity_rebalance: false,
            ..settings()
        };
        // Scale 0.01: PT2M lead = 1.2 s, hook start delay 100 ms, launch delay 50 ms.
        let mut f = fleet(s, 0.01, 1, t0);
        let t1 = t0.after(Duration::from_millis(50));
        f.tick(t1);
        let id = ids(&f, Lifecycle::InService)[0].clone();
        // As FIS does it: rebalance at once, interruption ending in PT3M (1.8 s real).
        let end = f.clock.deadline_after(t1, Duration::from_secs(180));
        let idx = f.find(&id).unwrap();
        assert!(f.recommend_rebalance(t1, idx, "test").is_empty());
        f.schedule_interruption(t1, idx, end, Some("EXP1".into()));
        assert!(f.get(&id).unwrap().rebalance.is_some());
        let notice_at = end.at - Duration::from_millis(1200);
        let before = Now {
            at: notice_at - Duration::from_millis(1),
            wall: t1.wall,
        };
        f.tick(before);
        assert!(f.get(&id).unwrap().notice.is_none());
        let shown = Now {
            at: notice_at,
            wall: t1.wall,
        };
        f.tick(shown);
        let n = f.get(&id).unwrap().notice.clone().unwrap();
        assert_eq!(n.action, InstanceAction::Terminate);
        assert_eq!(n.time, end.wall);
        // Still InService until the hook start delay has passed.
        assert_eq!(state(&f, &id), Lifecycle::InService);
        let later = |ms| Now {
            at: notice_at + Duration::from_millis(ms),
            wall: t1.wall,
        };
        f.tick(later(99));
        assert_eq!(state(&f, &id), Lifecycle::InService);
        f.tick(later(100));
        assert_eq!(state(&f, &id), Lifecycle::TerminatingWait);
        assert_eq!(
            f.get(&id).unwrap().target_state,
            Some(TargetLifecycle::Terminated)
        );
        assert_eq!(
            kinds(&f, &id),
            vec![
                EventKind::Launched,
                EventKind::InService,
                EventKind::Rebalance,
                EventKind::InterruptionScheduled,
                EventKind::Notice,
                EventKind::TerminatingWait,
            ]
        );
        // At the end it is reclaimed, hook or no hook (external: Terminated at once).
        f.tick(at(end));
        assert_eq!(state(&f, &id), Lifecycle::Terminated);
        assert!(kinds(&f, &id).contains(&EventKind::Reclaimed));
    }

    #[test]
    fn complete_lifecycle_action_refuses_what_aws_refuses() {
        let t0 = Now::read();
        let mut f = fleet(settings(), 0.01, 1, t0);
        f.tick(t0.after(Duration::from_millis(50)));
        let id = ids(&f, Lifecycle::InService)[0].clone();
        let go = LifecycleResult::Continue;
        let refused = |f: &mut Fleet, g: &str, h: &str, r: ActionRef| {
            f.complete_lifecycle_action(t0, g, h, r, go)
                .unwrap_err()
                .message()
                .to_string()
        };
        assert_eq!(
            refused(&mut f, "other", HOOK, by_id(&id)),
            "Group other not found"
        );
        assert_eq!(
            refused(&mut f, GROUP, "nope", by_id(&id)),
            "No Lifecycle Hook found with name nope for group order-workers"
        );
        assert_eq!(
            refused(&mut f, GROUP, HOOK, by_id("i-0000")),
            "No active Lifecycle Action found with instance ID i-0000"
        );
        // InService: no active lifecycle action.
        assert_eq!(
            refused(&mut f, GROUP, HOOK, by_id(&id)),
            format!("No active Lifecycle Action found with instance ID {id}")
        );
        let none = ActionRef {
            instance: None,
            token: None,
        };
        assert!(matches!(
            f.complete_lifecycle_action(t0, GROUP, HOOK, none, go),
            Err(Refusal::Invalid(_))
        ));
        // In Terminating:Wait: a wrong token is refused, the right one accepted.
        let token = f.scale_in(t0, &id, true).unwrap();
        let wrong = ActionRef {
            instance: Some(&id),
            token: Some("bad"),
        };
        assert_eq!(
            refused(&mut f, GROUP, HOOK, wrong),
            "No active Lifecycle Action found with token bad"
        );
        let right = ActionRef {
            instance: None,
            token: Some(&token),
        };
        assert!(f
            .complete_lifecycle_action(t0, GROUP, HOOK, right, go)
            .is_ok());
        assert_eq!(state(&f, &id), Lifecycle::Terminated);
        assert!(kinds(&f, &id).contains(&EventKind::HookCompleted));
        // Once done, it is no longer active.
        assert_eq!(
            refused(&mut f, GROUP, HOOK, by_id(&id)),
            format!("No active Lifecycle Action found with instance ID {id}")
        );
    }

    #[test]
    fn completing_the_hook_sigterms_the_worker_then_sigkills_after_the_grace() {
        let t0 = Now::read();
        let s = Settings {
            workers: true,
            ..settings()
        };
        let mut f = fleet(s, 0.01, 1, t0);
        let id = f.instances[0].id.clone();
        assert_eq!(f.get(&id).unwrap().pid, Some(4242));
        f.scale_in(t0, &id, true).unwrap();
        let effects = f
            .complete_lifecycle_action(t0, GROUP, HOOK, by_id(&id), LifecycleResult::Continue)
            .unwrap();
        assert_eq!(
            effects,
            vec![Effect::Signal {
                instance: id.clone(),
                pid: 4242,
                signal: Signal::Term,
                note: "SIGTERM to pid 4242 (lifecycle hook done)".into()
            }]
        );
        assert_eq!(state(&f, &id), Lifecycle::TerminatingProceed);
        assert!(f.tick(t0.after(Duration::from_millis(4999))).is_empty());
        let kill = f.tick(t0.after(Duration::from_secs(5)));
        assert!(matches!(
            &kill[..],
            [Effect::Signal {
                signal: Signal::Kill,
                ..
            }]
        ));
        // Terminated only once the process is gone.
        assert_eq!(state(&f, &id), Lifecycle::TerminatingProceed);
        f.process_exited(t0, &id, "killed by signal 9".into());
        assert_eq!(state(&f, &id), Lifecycle::Terminated);
    }

    #[test]
    fn a_shutdown_while_the_worker_starts_waits_for_its_pid_and_sigterms_it() {
        let t0 = Now::read();
        let s = Settings {
            workers: true,
            ..settings()
        };
        let mut f = Fleet::new(s, Clock::new(0.01), 0);
        let (id, _) = f.attach(t0, false);
        f.imds_bound(t0, &id, "http://127.0.0.1:1".into());
        let end = f.clock.deadline_after(t0, Duration::ZERO);
        f.interrupt(t0, &id, end, false).unwrap();
        let effects = f.tick(at(end));
        // No pid to signal yet (the only effects launch its replacement).
        assert!(!effects.iter().any(|e| matches!(e, Effect::Signal { .. })));
        // Not Terminated while a worker may still appear: it would be an orphan.
        assert_eq!(state(&f, &id), Lifecycle::TerminatingProceed);
        let effects = f.worker_started(t0, &id, Some(7), "127.0.0.1:2".into(), "/tmp/l".into());
        assert!(matches!(
            &effects[..],
            [Effect::Signal {
                pid: 7,
                signal: Signal::Term,
                ..
            }]
        ));
    }

    #[test]
    fn the_hook_heartbeat_timeout_proceeds_with_continue() {
        let t0 = Now::read();
        let mut f = fleet(settings(), 0.01, 1, t0);
        let id = f.instances[0].id.clone();
        f.scale_in(t0, &id, true).unwrap();
        // 120 s heartbeat timeout at scale 0.01 = 1.2 s. A heartbeat at 1 s moves it to 2.2 s.
        f.tick(t0.after(Duration::from_millis(1000)));
        f.record_heartbeat(
            t0.after(Duration::from_millis(1000)),
            GROUP,
            HOOK,
            by_id(&id),
        )
        .unwrap();
        f.tick(t0.after(Duration::from_millis(2199)));
        assert_eq!(state(&f, &id), Lifecycle::TerminatingWait);
        f.tick(t0.after(Duration::from_millis(2200)));
        assert_eq!(state(&f, &id), Lifecycle::Terminated);
        let ev = f
            .get(&id)
            .unwrap()
            .events
            .iter()
            .find(|e| e.kind == EventKind::TerminatingProceed);
        assert_eq!(
            ev.unwrap().what,
            "Terminating:Proceed: lifecycle hook timed out (default result CONTINUE)"
        );
    }

    #[test]
    fn a_terminated_instance_is_replaced() {
        let t0 = Now::read();
        let mut f = fleet(settings(), 0.01, 2, t0);
        let gone = f.instances[0].id.clone();
        let end = f.clock.deadline_after(t0, Duration::ZERO);
        f.interrupt(t0, &gone, end, false).unwrap();
        let effects = f.tick(at(end));
        assert_eq!(state(&f, &gone), Lifecycle::Terminated);
        // One launch to get back to the desired 2.
        assert!(matches!(&effects[..], [Effect::StartImds { .. }]));
        assert_eq!(f.capacity(), 2);
        assert_eq!(f.instances.len(), 3);
    }

    #[test]
    fn a_lowered_desired_capacity_is_not_replaced() {
        let t0 = Now::read();
        let mut f = fleet(settings(), 0.01, 2, t0);
        f.set_desired(t0, 1).unwrap();
        assert_eq!(
            ids(&f, Lifecycle::TerminatingWait),
            vec![f.instances[0].id.clone()]
        );
        assert!(f.tick(t0).is_empty());
        assert!(matches!(f.set_desired(t0, 11), Err(Refusal::Invalid(_))));
    }

    #[test]
    fn capacity_rebalance_launches_a_replacement_and_terminates_the_old_one_once_it_is_in_service()
    {
        let t0 = Now::read();
        let mut f = fleet(settings(), 0.01, 1, t0);
        let t1 = t0.after(Duration::from_millis(50));
        f.tick(t1);
        let old = f.instances[0].id.clone();
        let (_, effects) = f.rebalance(t1, &old).unwrap();
        assert!(matches!(&effects[..], [Effect::StartImds { .. }]));
        carry_out(&mut f, t1, effects);
        let new = f.instances[1].id.clone();
        assert_eq!(f.get(&new).unwrap().replaces.as_deref(), Some(old.as_str()));
        // A second recommendation does not launch a second replacement.
        assert!(f.rebalance(t1, &old).unwrap().1.is_empty());
        // The old one stays InService until the replacement is.
        f.tick(t1.after(Duration::from_millis(49)));
        assert_eq!(state(&f, &old), Lifecycle::InService);
        f.tick(t1.after(Duration::from_millis(50)));
        assert_eq!(state(&f, &new), Lifecycle::InService);
        assert_eq!(state(&f, &old), Lifecycle::TerminatingWait);
    }

    #[test]
    fn a_failed_imds_bind_undoes_the_launch() {
        let t0 = Now::read();
        let mut f = Fleet::new(settings(), Clock::new(0.01), 0);
        let (id, _) = f.attach(t0, true);
        assert_eq!(f.desired, 1);
        f.imds_failed(t0, &id, "address in use");
        assert!(f.get(&id).is_none());
        assert_eq!(f.desired, 0);
        let last = f.timeline.last().unwrap();
        assert_eq!(last.kind, EventKind::LaunchFailed);
        assert_eq!(last.what, "launch failed: address in use");
    }
}
