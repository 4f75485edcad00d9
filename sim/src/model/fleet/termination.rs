//! How an instance leaves the group: Terminating:Wait (the termination hook, its heartbeats and timeouts),
//! Spot interruptions (rebalance recommendation, notice, reclaim), scale-in, power-off.

use super::*;

impl Fleet {
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
    pub(super) fn proceed(&mut self, now: Now, idx: usize, why: &str) -> Vec<Effect> {
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
    pub(super) fn power_off(&mut self, now: Now, idx: usize, why: &str) -> Vec<Effect> {
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

    pub(super) fn mark_terminated(&mut self, now: Now, idx: usize) {
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
}
