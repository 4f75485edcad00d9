//! The simulated region's state: one Auto Scaling group, its instances and their lifecycle, and the clock-driven
//! transitions (Pending -> InService, hook timeouts, Spot interruptions, SIGTERM -> SIGKILL, replacements).
//!
//! All state sits behind one `std::sync::Mutex` that is never held across an `.await`: every API call and every
//! tick is a short, synchronous step, so the APIs always see a consistent fleet. A single ticker task (every
//! [`TICK`]) applies whatever deadlines have passed; nothing else sleeps.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::clock::{self, Clock, Deadline};
use crate::config::RunArgs;
use crate::fis::FisState;
use crate::{imds, process};

/// How often deadlines are checked. 50 ms keeps a 6-second PT2M run accurate to about 1 %.
pub const TICK: Duration = Duration::from_millis(50);

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
    pub fn ec2_state(self) -> &'static str {
        match self {
            Lifecycle::Pending | Lifecycle::InService | Lifecycle::TerminatingWait => "running",
            Lifecycle::TerminatingProceed => "shutting-down",
            Lifecycle::Terminated => "terminated",
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
    pub action: &'static str,
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

/// One timeline entry.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: OffsetDateTime,
    pub instance: Option<String>,
    pub what: String,
}

impl Event {
    fn json(&self) -> Value {
        json!({"at": clock::iso_millis(self.at), "instance": self.instance, "event": self.what})
    }
}

/// One simulated Spot instance.
#[derive(Debug)]
pub struct Instance {
    /// `i-` + 17 hex digits.
    pub id: String,
    /// Round-robin over the region's a/b/c zones.
    pub az: String,
    /// Its own IMDS server.
    pub imds_url: String,
    /// No process behind it: a test drives a worker against `imds_url` itself.
    pub external: bool,
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
    pub target_state: Option<&'static str>,
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

/// Everything mutable.
#[derive(Debug, Default)]
pub struct State {
    /// The group's desired capacity; the ticker launches until Pending + InService reaches it.
    pub desired: u32,
    /// Every instance ever launched, in launch order (terminated ones stay for the status view).
    pub instances: Vec<Instance>,
    /// Everything that happened, for the status document.
    pub timeline: Vec<Event>,
    /// FIS templates and experiments (here so one lock covers the fleet and the experiments acting on it).
    pub fis: FisState,
    /// Set once shutdown starts: no more launches.
    pub shutting_down: bool,
    /// Next zone in the round-robin.
    next_az: usize,
}

impl State {
    pub fn find(&self, id: &str) -> Option<usize> {
        self.instances.iter().position(|i| i.id == id)
    }

    pub fn get(&self, id: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.id == id)
    }

    pub fn capacity(&self) -> u32 {
        self.instances
            .iter()
            .filter(|i| i.lifecycle.counts_as_capacity())
            .count() as u32
    }

    /// Record an event on the timeline and on the instance.
    pub fn event(&mut self, instance: Option<&str>, what: impl Into<String>) {
        let ev = Event {
            at: OffsetDateTime::now_utc(),
            instance: instance.map(str::to_string),
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
    /// The worker to run per instance; None: every instance is external.
    pub worker_cmd: Option<PathBuf>,
    pub worker_args: Vec<String>,
    /// Where `<instance-id>.log` files go.
    pub log_dir: PathBuf,
    /// Shown in ARNs, zones and metadata.
    pub region: String,
    pub account: String,
    pub instance_type: String,
    /// The group's CreatedTime.
    pub created_at: OffsetDateTime,
}

impl Settings {
    pub fn from_args(a: &RunArgs, log_dir: PathBuf) -> Self {
        Settings {
            group: a.group_name.clone(),
            hook: a.hook_name.clone(),
            hook_timeout: a.hook_timeout,
            launch_delay: a.launch_delay,
            hook_start_delay: a.hook_start_delay,
            kill_grace: a.kill_grace,
            capacity_rebalance: a.capacity_rebalance,
            max_size: a.max_size,
            worker_cmd: a.worker_cmd.clone(),
            worker_args: a.worker_args.clone(),
            log_dir,
            region: a.region.clone(),
            account: a.account.clone(),
            instance_type: a.instance_type.clone(),
            created_at: OffsetDateTime::now_utc(),
        }
    }

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

/// The simulator, shared by every server and task.
pub struct Sim {
    pub settings: Settings,
    pub clock: Clock,
    state: Mutex<State>,
    /// Base URL of the API server, known once it listens (workers get it as their Auto Scaling endpoint).
    pub api_url: OnceLock<String>,
    /// Fired by POST /_sim/shutdown.
    pub shutdown: tokio::sync::Notify,
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

impl Sim {
    pub fn new(settings: Settings, clock: Clock, desired: u32) -> Arc<Sim> {
        Arc::new(Sim {
            settings,
            clock,
            state: Mutex::new(State {
                desired,
                ..State::default()
            }),
            api_url: OnceLock::new(),
            shutdown: tokio::sync::Notify::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a simulator bug; keep serving rather than poison everything.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Launch one instance: its IMDS server, and its worker process unless external.
    /// `in_service` registers it InService at once (control API); otherwise it starts Pending.
    pub fn launch(
        self: &Arc<Self>,
        st: &mut State,
        external: bool,
        in_service: bool,
        replaces: Option<String>,
        cause: &str,
    ) -> anyhow::Result<(String, String)> {
        let id = format!("i-{}", hex(17));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let imds_url = format!("http://{}", listener.local_addr()?);
        imds::serve(
            self.clone(),
            id.clone(),
            tokio::net::TcpListener::from_std(listener)?,
        );
        let zones = self.settings.zones();
        let az = zones[st.next_az % zones.len()].clone();
        st.next_az += 1;
        let external = external || self.settings.worker_cmd.is_none();
        let now = Instant::now();
        st.instances.push(Instance {
            id: id.clone(),
            az,
            imds_url: imds_url.clone(),
            external,
            metrics_addr: None,
            pid: None,
            last_pid: None,
            exit: None,
            log_path: None,
            launched_at: OffsetDateTime::now_utc(),
            terminated_at: None,
            lifecycle: if in_service {
                Lifecycle::InService
            } else {
                Lifecycle::Pending
            },
            in_service_at: (!in_service).then(|| now + self.clock.real(self.settings.launch_delay)),
            target_state: in_service.then_some("InService"),
            hook: None,
            rebalance: None,
            notice: None,
            interruption: None,
            kill_at: None,
            replaces,
            imds: ImdsState::default(),
            events: Vec::new(),
        });
        let kind = if external { "external" } else { "with worker" };
        let state = if in_service { "InService" } else { "Pending" };
        st.event(
            Some(&id),
            format!("launched ({kind}, {state}): {cause}; imds {imds_url}"),
        );
        if !external {
            self.start_worker(st, &id);
        }
        Ok((id, imds_url))
    }

    fn start_worker(self: &Arc<Self>, st: &mut State, id: &str) {
        let Some(cmd) = self.settings.worker_cmd.clone() else {
            return;
        };
        let idx = st.find(id).expect("just launched");
        let metrics_addr = match process::free_local_port() {
            Ok(p) => format!("127.0.0.1:{p}"),
            Err(e) => {
                st.event(Some(id), format!("no free metrics port: {e}"));
                return;
            }
        };
        let api_url = self.api_url.get().cloned().unwrap_or_default();
        let imds_url = st.instances[idx].imds_url.clone();
        let spawned = process::spawn(&process::Spawn {
            cmd: &cmd,
            args: &self.settings.worker_args,
            imds_url: &imds_url,
            api_url: &api_url,
            metrics_addr: &metrics_addr,
            instance_id: id,
            log_dir: &self.settings.log_dir,
            region: &self.settings.region,
        });
        match spawned {
            Ok((mut child, log_path)) => {
                let pid = child.id();
                let inst = &mut st.instances[idx];
                inst.pid = pid;
                inst.last_pid = pid;
                inst.metrics_addr = Some(metrics_addr.clone());
                inst.log_path = Some(log_path.clone());
                st.event(
                    Some(id),
                    format!(
                        "worker started pid {} metrics {metrics_addr} log {}",
                        pid.unwrap_or(0),
                        log_path.display()
                    ),
                );
                let sim = self.clone();
                let id = id.to_string();
                tokio::spawn(async move {
                    let status = child.wait().await;
                    let what = match status {
                        Ok(s) => describe_exit(s),
                        Err(e) => format!("wait failed: {e}"),
                    };
                    sim.on_process_exit(&id, what);
                });
            }
            Err(e) => {
                warn!(instance = id, cause = %e, "worker did not start");
                st.event(Some(id), format!("worker failed to start: {e:#}"));
            }
        }
    }

    fn on_process_exit(&self, id: &str, what: String) {
        let mut st = self.lock();
        let Some(idx) = st.find(id) else { return };
        let inst = &mut st.instances[idx];
        inst.pid = None;
        inst.kill_at = None;
        inst.exit = Some(what.clone());
        let proceeding = inst.lifecycle == Lifecycle::TerminatingProceed;
        st.event(Some(id), format!("worker exited: {what}"));
        if proceeding {
            self.mark_terminated(&mut st, idx);
        }
    }

    /// Put an instance into Terminating:Wait: target-lifecycle-state becomes Terminated and the hook starts.
    /// No-op unless it is Pending or InService.
    pub fn begin_termination(&self, st: &mut State, idx: usize, cause: &str) -> bool {
        let inst = &mut st.instances[idx];
        if !inst.lifecycle.counts_as_capacity() {
            return false;
        }
        let now = Instant::now();
        inst.lifecycle = Lifecycle::TerminatingWait;
        inst.in_service_at = None;
        inst.target_state = Some("Terminated");
        inst.hook = Some(Hook {
            token: uuid(),
            deadline: now + self.clock.real(self.settings.hook_timeout),
            global_deadline: now + self.clock.real(self.settings.hook_global_timeout()),
        });
        let id = inst.id.clone();
        st.event(
            Some(&id),
            format!("Terminating:Wait (hook {}): {cause}", self.settings.hook),
        );
        true
    }

    /// Leave Terminating:Wait: the hook is done (completed, abandoned or timed out).
    pub fn proceed(&self, st: &mut State, idx: usize, why: &str) {
        if st.instances[idx].lifecycle != Lifecycle::TerminatingWait {
            return;
        }
        st.instances[idx].hook = None;
        let id = st.instances[idx].id.clone();
        st.event(Some(&id), format!("Terminating:Proceed: {why}"));
        self.power_off(st, idx, "lifecycle hook done");
    }

    /// Shut the instance down: SIGTERM now, SIGKILL after the grace, Terminated once the process is gone.
    pub fn power_off(&self, st: &mut State, idx: usize, why: &str) {
        let grace = self.settings.kill_grace;
        let inst = &mut st.instances[idx];
        if matches!(inst.lifecycle, Lifecycle::Terminated) {
            return;
        }
        inst.lifecycle = Lifecycle::TerminatingProceed;
        inst.hook = None;
        inst.in_service_at = None;
        inst.target_state = Some("Terminated");
        let id = inst.id.clone();
        match inst.pid {
            Some(pid) if inst.kill_at.is_none() => {
                inst.kill_at = Some(Instant::now() + grace);
                let r = process::signal(pid, libc::SIGTERM);
                st.event(
                    Some(&id),
                    format!("SIGTERM to pid {pid} ({why}){}", err_suffix(r)),
                );
            }
            Some(_) => {} // already SIGTERMed; the kill deadline stands
            None => self.mark_terminated(st, idx),
        }
    }

    fn mark_terminated(&self, st: &mut State, idx: usize) {
        let inst = &mut st.instances[idx];
        if inst.lifecycle == Lifecycle::Terminated {
            return;
        }
        inst.lifecycle = Lifecycle::Terminated;
        inst.terminated_at = Some(OffsetDateTime::now_utc());
        inst.hook = None;
        inst.kill_at = None;
        inst.interruption = None;
        let id = inst.id.clone();
        st.event(Some(&id), "Terminated");
    }

    /// A rebalance recommendation: shown in IMDS at once; with capacity rebalancing, a replacement launches and
    /// the old instance is terminated (its hook runs) once the replacement is InService.
    pub fn recommend_rebalance(self: &Arc<Self>, st: &mut State, idx: usize, cause: &str) {
        let inst = &mut st.instances[idx];
        if inst.lifecycle == Lifecycle::Terminated {
            return;
        }
        if inst.rebalance.is_none() {
            inst.rebalance = Some(OffsetDateTime::now_utc());
        }
        let id = inst.id.clone();
        let in_service = inst.lifecycle == Lifecycle::InService;
        st.event(Some(&id), format!("rebalance recommendation: {cause}"));
        let already = st
            .instances
            .iter()
            .any(|i| i.replaces.as_deref() == Some(&id) && i.lifecycle != Lifecycle::Terminated);
        if self.settings.capacity_rebalance && in_service && !already && !st.shutting_down {
            let external = st.instances[idx].external;
            if let Err(e) = self.launch(
                st,
                external,
                false,
                Some(id.clone()),
                &format!("capacity rebalance for {id}"),
            ) {
                st.event(Some(&id), format!("replacement launch failed: {e:#}"));
            }
        }
    }

    /// Schedule a Spot interruption ending at `end`; the notice shows `lead` (real) before it, or at once.
    pub fn schedule_interruption(
        &self,
        st: &mut State,
        idx: usize,
        end: Deadline,
        experiment: Option<String>,
    ) {
        let lead = self.clock.real(NOTICE_LEAD);
        let notice_at = end
            .at
            .checked_sub(lead)
            .unwrap_or(end.at)
            .max(Instant::now());
        let inst = &mut st.instances[idx];
        inst.interruption = Some(Interruption {
            experiment: experiment.clone(),
            notice_at,
            notice_shown: false,
            termination_at: None,
            end,
        });
        let id = inst.id.clone();
        let by = experiment.map(|e| format!(" by {e}")).unwrap_or_default();
        st.event(
            Some(&id),
            format!(
                "spot interruption scheduled{by}: terminate at {}",
                clock::rfc3339_seconds(end.wall)
            ),
        );
    }

    /// One pass over every deadline.
    pub fn tick(self: &Arc<Self>) {
        let mut st = self.lock();
        let now = Instant::now();
        for idx in 0..st.instances.len() {
            // Pending -> InService.
            if st.instances[idx].lifecycle == Lifecycle::Pending
                && st.instances[idx].in_service_at.is_some_and(|t| now >= t)
            {
                let inst = &mut st.instances[idx];
                inst.lifecycle = Lifecycle::InService;
                inst.in_service_at = None;
                inst.target_state = Some("InService");
                let id = inst.id.clone();
                let replaces = inst.replaces.clone();
                st.event(Some(&id), "InService");
                if let Some(old) = replaces {
                    if let Some(o) = st.find(&old) {
                        if st.instances[o].lifecycle == Lifecycle::InService {
                            self.begin_termination(
                                &mut st,
                                o,
                                &format!("capacity rebalance: replacement {id} is InService"),
                            );
                        }
                    }
                }
            }
            // Spot interruption: notice, then the end.
            if let Some(intr) = st.instances[idx].interruption.clone() {
                if !intr.notice_shown && now >= intr.notice_at {
                    let inst = &mut st.instances[idx];
                    inst.notice = Some(Notice {
                        action: "terminate",
                        time: intr.end.wall,
                    });
                    let termination_at = now + self.clock.real(self.settings.hook_start_delay);
                    if let Some(i) = inst.interruption.as_mut() {
                        i.notice_shown = true;
                        i.termination_at = Some(termination_at);
                    }
                    let id = inst.id.clone();
                    st.event(
                        Some(&id),
                        format!(
                            "spot interruption notice: terminate at {}",
                            clock::rfc3339_seconds(intr.end.wall)
                        ),
                    );
                }
                // The group learns of the interruption with the notice and starts the termination hook (after
                // --hook-start-delay); the instance still dies at the end whether or not the hook completes.
                let due = st.instances[idx]
                    .interruption
                    .as_ref()
                    .and_then(|i| i.termination_at)
                    .is_some_and(|t| now >= t);
                if due {
                    if let Some(i) = st.instances[idx].interruption.as_mut() {
                        i.termination_at = None;
                    }
                    self.begin_termination(&mut st, idx, "spot interruption notice");
                }
                if now >= intr.end.at {
                    st.instances[idx].interruption = None;
                    let id = st.instances[idx].id.clone();
                    st.event(Some(&id), "spot interruption: instance reclaimed");
                    self.power_off(&mut st, idx, "spot interruption");
                }
            }
            // Hook heartbeat timeout -> default result CONTINUE.
            if let Some(h) = st.instances[idx].hook.clone() {
                if now >= h.deadline || now >= h.global_deadline {
                    self.proceed(
                        &mut st,
                        idx,
                        "lifecycle hook timed out (default result CONTINUE)",
                    );
                }
            }
            // SIGKILL after the grace.
            if st.instances[idx].kill_at.is_some_and(|t| now >= t) {
                let inst = &mut st.instances[idx];
                inst.kill_at = None;
                let id = inst.id.clone();
                if let Some(pid) = inst.pid {
                    let r = process::signal(pid, libc::SIGKILL);
                    st.event(
                        Some(&id),
                        format!("SIGKILL to pid {pid} after the grace{}", err_suffix(r)),
                    );
                }
            }
        }
        // Replace lost capacity.
        if !st.shutting_down {
            let missing = st.desired.saturating_sub(st.capacity());
            for _ in 0..missing {
                if let Err(e) = self.launch(&mut st, false, false, None, "capacity below desired") {
                    st.event(None, format!("launch failed: {e:#}"));
                    break;
                }
            }
        }
        crate::fis::tick(&mut st, now);
    }

    /// Stop every worker: SIGTERM, wait up to the grace, SIGKILL the rest.
    pub async fn stop_all(&self) {
        let pids: Vec<u32> = {
            let mut st = self.lock();
            st.shutting_down = true;
            st.event(None, "shutting down: SIGTERM to every worker");
            st.instances.iter().filter_map(|i| i.pid).collect()
        };
        for pid in &pids {
            let _ = process::signal(*pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + self.settings.kill_grace;
        loop {
            let alive: Vec<u32> = self.lock().instances.iter().filter_map(|i| i.pid).collect();
            if alive.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for pid in alive {
                    let _ = process::signal(pid, libc::SIGKILL);
                }
                // Give the reapers a moment so the log says who was killed.
                tokio::time::sleep(Duration::from_millis(200)).await;
                break;
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// The control API's status document.
    pub fn status_json(&self) -> Value {
        let st = self.lock();
        let s = &self.settings;
        let instances: Vec<Value> = st
            .instances
            .iter()
            .map(|i| {
                json!({
                    "id": i.id,
                    "arn": s.instance_arn(&i.id),
                    "state": i.lifecycle.ec2_state(),
                    "lifecycle_state": i.lifecycle.as_str(),
                    "target_lifecycle_state": i.target_state,
                    "availability_zone": i.az,
                    "external": i.external,
                    "imds_url": i.imds_url,
                    "metrics_addr": i.metrics_addr,
                    "pid": i.pid.or(i.last_pid),
                    "process_alive": i.pid.is_some(),
                    "process_exit": i.exit,
                    "log_path": i.log_path,
                    "launched_at": clock::iso_millis(i.launched_at),
                    "terminated_at": i.terminated_at.map(clock::iso_millis),
                    "rebalance_notice_time": i.rebalance.map(clock::rfc3339_seconds),
                    "interruption_notice": i.notice.as_ref().map(|n| json!({"action": n.action, "time": clock::rfc3339_seconds(n.time)})),
                    "interruption_scheduled": i.interruption.as_ref().map(|x| clock::rfc3339_seconds(x.end.wall)),
                    "lifecycle_action_token": i.hook.as_ref().map(|h| h.token.clone()),
                    "replaces": i.replaces,
                    "imds_fault": i.imds.fault.unwrap_or(Fault::None).as_str(),
                    "events": i.events.iter().map(Event::json).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "group": s.group,
            "hook": s.hook,
            "desired": st.desired,
            "capacity": st.capacity(),
            "time_scale": self.clock.scale(),
            "capacity_rebalance": s.capacity_rebalance,
            "instances": instances,
            "timeline": st.timeline.iter().map(Event::json).collect::<Vec<_>>(),
        })
    }
}

fn err_suffix(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => String::new(),
        Err(e) => format!(" (failed: {e})"),
    }
}

fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown exit".into(),
    }
}

/// Run the ticker until the process exits.
pub fn start_ticker(sim: Arc<Sim>) {
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(TICK);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            iv.tick().await;
            sim.tick();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(Lifecycle::TerminatingWait.ec2_state(), "running");
        assert_eq!(Fault::parse("hang"), Some(Fault::Hang));
        assert_eq!(Fault::parse("nope"), None);
    }
}
