//! One Auto Scaling group and its instances: the lifecycle (Pending -> InService -> Terminating:Wait ->
//! Terminating:Proceed -> Terminated), the termination hook and its heartbeat timeout, Spot interruptions
//! (rebalance, notice, reclaim), capacity rebalancing, replacement of lost capacity, and the event log.
//!
//! Every transition is a method taking the present ([`Now`]); those that need the outside world return
//! [`Effect`]s. The model never binds, spawns or signals: a worker's pid is only data here.
//!
//! - `states`: the states as enums and the per-instance records.
//! - `termination`: the termination hook, interruptions, rebalancing, scale-in and power-off.
//! - here: the group itself (launch, attach, the worker's process, desired capacity, IMDS tokens and faults,
//!   shutdown) and the tick that moves time on.

mod refresh;
mod states;
mod termination;

pub use refresh::{Refresh, RefreshPrefs};

pub use states::*;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tracing::info;

use super::scaling::{Capacity, Decision, Tracker};
use super::{Effect, Refusal, Signal};
use crate::clock::{self, Clock, Deadline, Now};

/// Timeline entries kept in the status document.
const MAX_TIMELINE: usize = 20_000;

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
    /// Launch template versions, version 1 first.
    pub templates: Vec<TemplateVersion>,
    /// The version the group launches (UpdateAutoScalingGroup's launch template version).
    pub version: u32,
    /// Instance refreshes, oldest first; at most one is not finished.
    pub refreshes: Vec<Refresh>,
    /// The target-tracking policy, when the group has one (`--scaling-queue-url`).
    pub scaling: Option<Tracker>,
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
            templates: vec![TemplateVersion {
                version: 1,
                cmd: None,
                args: Vec::new(),
                description: "the --worker-cmd".into(),
            }],
            version: 1,
            refreshes: Vec::new(),
            scaling: None,
        }
    }

    /// The version new instances launch from: an instance refresh's desired one while it runs, else the group's.
    pub fn launch_version(&self) -> u32 {
        self.active_refresh()
            .map(|r| r.version)
            .unwrap_or(self.version)
    }

    pub fn template(&self, version: u32) -> Option<&TemplateVersion> {
        self.templates.iter().find(|t| t.version == version)
    }

    /// A new launch template version (what `aws ec2 create-launch-template-version` makes); with `make_default`
    /// the group launches it from now on (what Terraform's apply does to the group's version).
    pub fn add_template(
        &mut self,
        now: Now,
        cmd: Option<PathBuf>,
        args: Vec<String>,
        description: String,
        make_default: bool,
    ) -> u32 {
        let version = self.templates.len() as u32 + 1;
        let what = format!(
            "launch template version {version}{}: {}",
            if make_default { " (group default)" } else { "" },
            description
        );
        self.templates.push(TemplateVersion {
            version,
            cmd,
            args,
            description,
        });
        if make_default {
            self.version = version;
        }
        self.event(now, None, EventKind::LaunchTemplateVersion, what);
        version
    }

    /// Whether an InService instance's warmup (`warmup`, sim time) is over.
    pub fn warmed(&self, i: &Instance, now: Instant, warmup: Duration) -> bool {
        i.lifecycle == Lifecycle::InService
            && i.in_service_since
                .is_some_and(|t| now >= t + self.clock.real(warmup))
    }

    /// InService instances (GroupInServiceInstances).
    pub fn in_service(&self) -> u32 {
        self.instances
            .iter()
            .filter(|i| i.lifecycle == Lifecycle::InService)
            .count() as u32
    }

    /// The group as the scaling policy sees it.
    pub fn scaling_capacity(&self, now: Instant) -> Capacity {
        let warmup = self.settings.instance_warmup;
        let counted = self
            .instances
            .iter()
            .filter(|i| self.warmed(i, now, warmup))
            .count() as u32;
        Capacity {
            desired: self.desired,
            counted,
            warming: self.capacity() - counted,
        }
    }

    /// The termination policy (`Default`): from the zone with the most instances, an instance of the oldest
    /// launch template version; then the oldest instance (AWS's next criterion, the billing hour, means
    /// nothing with per-second billing; its last one is random). `n` choices, zones recounted after each.
    pub fn choose_to_terminate(&self, n: usize) -> Vec<usize> {
        let mut chosen: Vec<usize> = Vec::new();
        for _ in 0..n {
            let left: Vec<usize> = (0..self.instances.len())
                .filter(|&i| {
                    self.instances[i].lifecycle.counts_as_capacity() && !chosen.contains(&i)
                })
                .collect();
            let per_zone = |az: &str| left.iter().filter(|&&i| self.instances[i].az == az).count();
            let Some(pick) = left.iter().copied().min_by_key(|&i| {
                let inst = &self.instances[i];
                (std::cmp::Reverse(per_zone(&inst.az)), inst.version, i)
            }) else {
                break;
            };
            chosen.push(pick);
        }
        chosen
    }

    /// Lower the desired capacity to `n`: the termination policy sends the excess through the hook.
    fn lower_to(&mut self, now: Now, n: u32, cause: &str) {
        self.desired = n;
        let excess = self.capacity().saturating_sub(self.desired);
        for idx in self.choose_to_terminate(excess as usize) {
            self.begin_termination(now, idx, cause);
        }
    }

    /// A one-minute period ended with `visible` messages in the queue (and `busy` workers holding a message
    /// group, when the FIFO-aware metric is in use): run the scaling policy.
    pub fn close_period(
        &mut self,
        now: Now,
        visible: Option<u64>,
        busy: Option<u32>,
    ) -> Option<Decision> {
        let cap = self.scaling_capacity(now.at);
        let in_service = self.in_service();
        let tracker = self.scaling.as_mut()?;
        let d = tracker.close_period(now.wall, visible, busy, in_service, cap);
        let metric = tracker
            .history
            .last()
            .and_then(|p| p.metric)
            .map_or("no datapoint".to_string(), |m| {
                format!("{m:.1} per instance")
            });
        let target = tracker.policy.target;
        match d.desired {
            Some(n) if n > cap.desired => {
                self.desired = n;
                let what = format!(
                    "scale out {} -> {n}: backlog {metric} > target {target} for 3 periods ({} warmed)",
                    cap.desired, cap.counted
                );
                self.event(now, None, EventKind::ScaleOut, what);
            }
            Some(n) => {
                let what = format!(
                    "scale in {} -> {n}: backlog {metric} < 90% of target {target} for 15 periods",
                    cap.desired
                );
                self.event(now, None, EventKind::ScaleIn, what);
                self.lower_to(now, n, "scale in (target tracking)");
            }
            None => {}
        }
        Some(d)
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
        let version = self.launch_version();
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
            in_service_since: in_service.then_some(now.at),
            version,
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

    /// SetDesiredCapacity: lowering it sends instances chosen by the termination policy through the hook;
    /// raising it launches on the next tick.
    pub fn set_desired(&mut self, now: Now, n: u32) -> Result<(), Refusal> {
        if n > self.settings.max_size {
            return Err(Refusal::Invalid(format!(
                "New SetDesiredCapacity value {n} is above max value {} for the AutoScalingGroup.",
                self.settings.max_size
            )));
        }
        if n < self.settings.min_size {
            return Err(Refusal::Invalid(format!(
                "New SetDesiredCapacity value {n} is below min value {} for the AutoScalingGroup.",
                self.settings.min_size
            )));
        }
        self.event(
            now,
            None,
            EventKind::DesiredCapacity,
            format!("SetDesiredCapacity {n}"),
        );
        self.lower_to(now, n, "scale in (desired capacity lowered)");
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
            self.tick_pending(now, idx);
            effects.extend(self.tick_interruption(now, idx));
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
        if let Some(t) = self.scaling.as_mut() {
            let n = self
                .instances
                .iter()
                .filter(|i| i.lifecycle == Lifecycle::InService)
                .count() as u32;
            t.sample_in_service(n);
        }
        self.refresh_tick(now);
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

    /// Pending -> InService when its time comes; a capacity-rebalance replacement in service ends the
    /// instance it replaces.
    fn tick_pending(&mut self, now: Now, idx: usize) {
        let inst = &mut self.instances[idx];
        if inst.lifecycle != Lifecycle::Pending || inst.in_service_at.is_none_or(|t| now.at < t) {
            return;
        }
        inst.lifecycle = Lifecycle::InService;
        inst.in_service_at = None;
        inst.in_service_since = Some(now.at);
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

    /// A Spot interruption: the notice, then (with the notice, after --hook-start-delay) the group's
    /// termination hook, then the end; the instance dies at the end whether or not the hook completed.
    fn tick_interruption(&mut self, now: Now, idx: usize) -> Vec<Effect> {
        let Some(intr) = self.instances[idx].interruption.clone() else {
            return Vec::new();
        };
        if !intr.notice_shown && now.at >= intr.notice_at {
            let termination_at = now.at + self.clock.real(self.settings.hook_start_delay);
            let inst = &mut self.instances[idx];
            inst.notice = Some(Notice {
                action: InstanceAction::Terminate,
                time: intr.end.wall,
            });
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
        if now.at < intr.end.at {
            return Vec::new();
        }
        self.instances[idx].interruption = None;
        let id = self.instances[idx].id.clone();
        self.event(
            now,
            Some(&id),
            EventKind::Reclaimed,
            "spot interruption: instance reclaimed",
        );
        self.power_off(now, idx, "spot interruption")
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
            min_size: 0,
            instance_warmup: Duration::from_secs(120),
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

    #[test]
    fn the_termination_policy_balances_zones_then_takes_the_oldest_version_then_the_oldest() {
        let t0 = Now::read();
        let mut f = fleet(settings(), 0.01, 4, t0);
        // Zones a, b, c, a: zone a has two, so one of them goes first, the older.
        let ids: Vec<String> = f.instances.iter().map(|i| i.id.clone()).collect();
        assert_eq!(f.choose_to_terminate(1), vec![0]);
        // Then one per zone, oldest first.
        assert_eq!(f.choose_to_terminate(4), vec![0, 1, 2, 3]);
        // An instance of an older launch template version goes before a newer one in the same zone count.
        f.instances[2].version = 0;
        assert_eq!(f.choose_to_terminate(2), vec![0, 2]);
        // Pending + InService only.
        f.set_desired(t0, 3).unwrap();
        assert_eq!(state(&f, &ids[0]), Lifecycle::TerminatingWait);
        assert!(!f.choose_to_terminate(4).contains(&0));
        // Below min_size is refused.
        f.settings.min_size = 2;
        assert!(matches!(f.set_desired(t0, 1), Err(Refusal::Invalid(_))));
    }

    #[test]
    fn the_policy_scales_out_after_three_periods_and_in_through_the_hook_after_fifteen() {
        use crate::model::scaling::{Alarm, Policy, Tracker};
        let t0 = Now::read();
        let s = Settings {
            min_size: 1,
            ..settings()
        };
        // Scale 0.001: launch delay 5 ms, warmup 120 ms.
        let mut f = fleet(s, 0.001, 2, t0);
        f.scaling = Some(Tracker::new(Policy {
            target: 100.0,
            min_size: 1,
            max_size: 10,
            metric: crate::model::scaling::MetricKind::Backlog,
        }));
        let mut t = t0.after(Duration::from_millis(10));
        f.tick(t);
        t = t.after(Duration::from_millis(200));
        f.tick(t);
        // 1,000 visible on 2 instances: 500 per instance. Two periods: nothing.
        for _ in 0..2 {
            assert_eq!(f.close_period(t, Some(1000), None).unwrap().desired, None);
        }
        let d = f.close_period(t, Some(1000), None).unwrap();
        assert_eq!((d.alarm, d.desired), (Alarm::High, Some(10)));
        assert_eq!(f.desired, 10);
        assert_eq!(f.timeline.last().unwrap().kind, EventKind::ScaleOut);
        let effects = f.tick(t);
        carry_out(&mut f, t, effects);
        assert_eq!(f.capacity(), 10);
        // The queue empties. While the new ones warm up, no scale-in however long the metric is low.
        for _ in 0..20 {
            assert_eq!(f.close_period(t, Some(0), None).unwrap().desired, None);
        }
        t = t.after(Duration::from_millis(10));
        f.tick(t);
        t = t.after(Duration::from_millis(200));
        f.tick(t);
        let d = f.close_period(t, Some(0), None).unwrap();
        assert_eq!((d.alarm, d.desired), (Alarm::Low, Some(1)));
        assert_eq!(ids(&f, Lifecycle::TerminatingWait).len(), 9);
        assert_eq!(
            f.timeline
                .iter()
                .filter(|e| e.kind == EventKind::ScaleIn)
                .count(),
            1
        );
        // The hook runs for each: the scale-in is not an instant kill.
        for id in ids(&f, Lifecycle::TerminatingWait) {
            assert_eq!(
                f.get(&id).unwrap().target_state,
                Some(TargetLifecycle::Terminated)
            );
        }
    }
}
