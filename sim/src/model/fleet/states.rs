//! The vocabulary of the fleet: lifecycle and EC2 states, IMDS documents and faults as enums, and the
//! records kept per instance (hook, interruption, notice, events). Data only: the transitions are in
//! [`super::Fleet`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use time::OffsetDateTime;

use crate::clock::Deadline;

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
    /// The scaling policy raised the desired capacity.
    ScaleOut,
    /// The scaling policy lowered the desired capacity (the termination policy chose who leaves).
    ScaleIn,
    /// A launch template version was created (control API).
    LaunchTemplateVersion,
    /// An instance refresh started, replaced a batch, or ended.
    InstanceRefresh,
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
    /// When it became InService: its instance warmup runs from here.
    pub in_service_since: Option<Instant>,
    /// The launch template version it was launched from (1: `--worker-cmd`; later ones: the control API).
    pub version: u32,
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
    /// SetDesiredCapacity refuses less than this; scale-in stops here.
    pub min_size: u32,
    /// The group's default instance warmup (sim time): a new instance counts in the scaling ratio, and as
    /// healthy for an instance refresh, only this long after it is InService.
    pub instance_warmup: Duration,
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

/// One launch template version: what a new instance runs. Paths and flags are only data here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateVersion {
    pub version: u32,
    /// The worker command (None: the `--worker-cmd` of version 1, or external instances).
    pub cmd: Option<PathBuf>,
    pub args: Vec<String>,
    pub description: String,
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
