//! Instance refresh (`Rolling`, as terraform/compute.tf's `instance_refresh` block asks for it): replace the
//! instances that do not run the desired launch template version, a batch at a time, each old instance leaving
//! through the termination hook like any scale-in, while at least `MinHealthyPercentage` of the desired capacity
//! stays healthy (InService and past the refresh's instance warmup).
//!
//! With AWS's default `MaxHealthyPercentage` of 100 a batch is terminated first and its replacements launched
//! after (the group never goes above its desired capacity): batch = healthy - ceil(desired * min% / 100), at
//! least one, and the next batch waits until every replacement is healthy. `SkipMatching` leaves instances that
//! already run the desired version alone; without it every instance that existed at the start is replaced.
//! While the refresh runs, new instances (replacements, scale-out, Spot replacements) launch the desired version;
//! at the end it becomes the group's version.

use super::*;

/// DescribeInstanceRefreshes' `Status` values this simulator reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshStatus {
    InProgress,
    Successful,
    Cancelled,
}

impl RefreshStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshStatus::InProgress => "InProgress",
            RefreshStatus::Successful => "Successful",
            RefreshStatus::Cancelled => "Cancelled",
        }
    }
}

/// StartInstanceRefresh's `Preferences` (AWS's defaults in [`RefreshPrefs::default_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshPrefs {
    pub min_healthy_percentage: u32,
    /// Sim time.
    pub instance_warmup: Duration,
    pub skip_matching: bool,
}

impl RefreshPrefs {
    /// MinHealthyPercentage 90, the group's default instance warmup, SkipMatching false.
    pub fn default_for(settings: &Settings) -> RefreshPrefs {
        RefreshPrefs {
            min_healthy_percentage: 90,
            instance_warmup: settings.instance_warmup,
            skip_matching: false,
        }
    }
}

/// One instance refresh.
#[derive(Debug, Clone)]
pub struct Refresh {
    pub id: String,
    pub status: RefreshStatus,
    pub status_reason: String,
    pub prefs: RefreshPrefs,
    /// The launch template version instances are replaced with.
    pub version: u32,
    pub start: OffsetDateTime,
    pub end: Option<OffsetDateTime>,
    /// Instances to replace, fixed at the start (SkipMatching: only those of another version).
    pub to_replace: Vec<String>,
    /// Of those, the ones the refresh has sent through the hook (the others left on their own: Spot, scale-in).
    pub replaced: Vec<String>,
}

impl Refresh {
    /// Instances of `to_replace` still in the group.
    fn remaining<'a>(&'a self, fleet: &'a Fleet) -> impl Iterator<Item = &'a Instance> + 'a {
        fleet
            .instances
            .iter()
            .filter(|i| i.lifecycle.counts_as_capacity() && self.to_replace.contains(&i.id))
    }

    pub fn instances_to_update(&self, fleet: &Fleet) -> u32 {
        self.remaining(fleet).count() as u32
    }

    /// PercentageComplete: the share of `to_replace` that has left the group.
    pub fn percentage_complete(&self, fleet: &Fleet) -> u32 {
        if self.status == RefreshStatus::Successful || self.to_replace.is_empty() {
            return 100;
        }
        let left = self.to_replace.len() as u32 - self.instances_to_update(fleet);
        left * 100 / self.to_replace.len() as u32
    }
}

impl Fleet {
    pub fn active_refresh(&self) -> Option<&Refresh> {
        self.refreshes
            .iter()
            .find(|r| r.status == RefreshStatus::InProgress)
    }

    /// StartInstanceRefresh. `version` None: the group's version. Refused while another refresh runs.
    pub fn start_refresh(
        &mut self,
        now: Now,
        version: Option<u32>,
        prefs: RefreshPrefs,
    ) -> Result<String, Refusal> {
        if let Some(r) = self.active_refresh() {
            return Err(Refusal::WrongState(format!(
                "An Instance Refresh is already in progress and blocks the execution of this Instance Refresh ({}).",
                r.id
            )));
        }
        if prefs.min_healthy_percentage > 100 {
            return Err(Refusal::Invalid(
                "MinHealthyPercentage must be between 0 and 100.".into(),
            ));
        }
        let version = version.unwrap_or(self.version);
        if self.template(version).is_none() {
            return Err(Refusal::Invalid(format!(
                "The specified launch template version {version} does not exist."
            )));
        }
        let to_replace = self
            .instances
            .iter()
            .filter(|i| i.lifecycle.counts_as_capacity())
            .filter(|i| !prefs.skip_matching || i.version != version)
            .map(|i| i.id.clone())
            .collect::<Vec<_>>();
        let id = uuid();
        let what = format!(
            "instance refresh {id} started: {} instances to version {version} (MinHealthyPercentage {}, warmup {} s, SkipMatching {})",
            to_replace.len(),
            prefs.min_healthy_percentage,
            prefs.instance_warmup.as_secs(),
            prefs.skip_matching
        );
        self.refreshes.push(Refresh {
            id: id.clone(),
            status: RefreshStatus::InProgress,
            status_reason: String::new(),
            prefs,
            version,
            start: now.wall,
            end: None,
            to_replace,
            replaced: Vec::new(),
        });
        self.event(now, None, EventKind::InstanceRefresh, what);
        self.refresh_tick(now);
        Ok(id)
    }

    /// CancelInstanceRefresh: no further batches; instances already leaving finish leaving.
    pub fn cancel_refresh(&mut self, now: Now) -> Result<String, Refusal> {
        let Some(r) = self
            .refreshes
            .iter_mut()
            .find(|r| r.status == RefreshStatus::InProgress)
        else {
            return Err(Refusal::WrongState(
                "No in progress or pending Instance Refresh found for Auto Scaling group".into(),
            ));
        };
        r.status = RefreshStatus::Cancelled;
        r.end = Some(now.wall);
        let id = r.id.clone();
        self.event(
            now,
            None,
            EventKind::InstanceRefresh,
            format!("instance refresh {id} cancelled"),
        );
        Ok(id)
    }

    /// Move the running refresh on: finish it, or send the next batch through the hook.
    pub(super) fn refresh_tick(&mut self, now: Now) {
        let Some(ri) = self
            .refreshes
            .iter()
            .position(|r| r.status == RefreshStatus::InProgress)
        else {
            return;
        };
        let r = &self.refreshes[ri];
        let warmup = r.prefs.instance_warmup;
        let healthy = |f: &Fleet, i: &Instance| f.warmed(i, now.at, warmup);
        let remaining: Vec<String> = r.remaining(self).map(|i| i.id.clone()).collect();
        // Replacements (any instance not being replaced) still Pending or warming up.
        let unsettled = self
            .instances
            .iter()
            .filter(|i| i.lifecycle.counts_as_capacity())
            .filter(|i| !remaining.contains(&i.id))
            .any(|i| !healthy(self, i))
            // Replacements not launched yet (they launch on the tick after a batch leaves).
            || self.capacity() < self.desired;
        if remaining.is_empty() {
            if !unsettled {
                let version = r.version;
                let id = r.id.clone();
                let r = &mut self.refreshes[ri];
                r.status = RefreshStatus::Successful;
                r.end = Some(now.wall);
                self.version = version;
                let what =
                    format!("instance refresh {id} successful: the group runs version {version}");
                self.event(now, None, EventKind::InstanceRefresh, what);
            }
            return;
        }
        if unsettled {
            return;
        }
        let healthy_n = self.instances.iter().filter(|i| healthy(self, i)).count() as u32;
        let min_healthy = (self.desired * r.prefs.min_healthy_percentage).div_ceil(100);
        let batch = healthy_n.saturating_sub(min_healthy).max(1) as usize;
        // The termination policy's order, among the instances still to replace.
        let order = self.choose_to_terminate(self.instances.len());
        let victims: Vec<usize> = order
            .into_iter()
            .filter(|&i| remaining.contains(&self.instances[i].id))
            .take(batch)
            .collect();
        let id = r.id.clone();
        let names: Vec<String> = victims
            .iter()
            .map(|&i| self.instances[i].id.clone())
            .collect();
        let what = format!(
            "instance refresh {id}: replacing {} ({} healthy, at least {min_healthy} must stay)",
            names.join(", "),
            healthy_n
        );
        self.event(now, None, EventKind::InstanceRefresh, what);
        for idx in victims {
            self.begin_termination(now, idx, &format!("instance refresh {id}"));
        }
        self.refreshes[ri].replaced.extend(names);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{carry_out, fleet, settings};
    use super::*;

    fn prefs(pct: u32, skip: bool) -> RefreshPrefs {
        RefreshPrefs {
            min_healthy_percentage: pct,
            instance_warmup: Duration::from_secs(10),
            skip_matching: skip,
        }
    }

    /// Tick at `t`, completing every hook at once (an ideal worker) and carrying out the effects.
    fn step(f: &mut Fleet, t: Now) {
        let effects = f.tick(t);
        carry_out(f, t, effects);
        let waiting: Vec<String> = f
            .instances
            .iter()
            .filter(|i| i.lifecycle == Lifecycle::TerminatingWait)
            .map(|i| i.id.clone())
            .collect();
        for id in waiting {
            let target = ActionRef {
                instance: Some(&id),
                token: None,
            };
            let hook = f.settings.hook.clone();
            let group = f.settings.group.clone();
            let e = f
                .complete_lifecycle_action(t, &group, &hook, target, LifecycleResult::Continue)
                .unwrap();
            carry_out(f, t, e);
        }
    }

    fn healthy(f: &Fleet, t: Now) -> usize {
        f.instances
            .iter()
            .filter(|i| f.warmed(i, t.at, Duration::from_secs(10)))
            .count()
    }

    #[test]
    fn a_rolling_refresh_replaces_in_batches_and_keeps_the_minimum_healthy() {
        let t0 = Now::read();
        // Scale 0.01: launch delay 5 s = 50 ms, warmup 10 s = 100 ms.
        let mut f = fleet(settings(), 0.01, 6, t0);
        step(&mut f, t0.after(Duration::from_millis(60)));
        let mut t = t0.after(Duration::from_millis(200));
        step(&mut f, t);
        assert_eq!(healthy(&f, t), 6);
        let v2 = f.add_template(t, None, vec!["--b".into()], "build B".into(), true);
        assert_eq!(f.launch_version(), 2);
        f.start_refresh(t, None, prefs(66, true)).unwrap();
        // 66 % of 6 = 3.96 -> 4 must stay healthy: the first batch is 2.
        let leaving = f
            .instances
            .iter()
            .filter(|i| i.lifecycle == Lifecycle::TerminatingWait)
            .count();
        assert_eq!(leaving, 2);
        // A second start is refused while this one runs.
        assert!(matches!(
            f.start_refresh(t, None, prefs(66, true)),
            Err(Refusal::WrongState(_))
        ));
        let mut min_seen = usize::MAX;
        for _ in 0..200 {
            t = t.after(Duration::from_millis(10));
            step(&mut f, t);
            if f.active_refresh().is_none() {
                break;
            }
            min_seen = min_seen.min(healthy(&f, t));
        }
        let r = f.refreshes.last().unwrap();
        assert_eq!(r.status, RefreshStatus::Successful);
        assert_eq!(r.replaced.len(), 6);
        assert_eq!(r.percentage_complete(&f), 100);
        assert!(min_seen >= 4, "healthy fell to {min_seen}");
        assert_eq!(f.version, v2);
        let live: Vec<&Instance> = f
            .instances
            .iter()
            .filter(|i| i.lifecycle == Lifecycle::InService)
            .collect();
        assert_eq!(live.len(), 6);
        assert!(live.iter().all(|i| i.version == v2));
        // Every old instance left through the hook.
        for old in &r.replaced {
            let kinds: Vec<EventKind> = f.get(old).unwrap().events.iter().map(|e| e.kind).collect();
            assert!(
                kinds.contains(&EventKind::HookCompleted),
                "{old}: {kinds:?}"
            );
        }
    }

    #[test]
    fn skip_matching_with_nothing_to_replace_succeeds_at_once_and_min_100_replaces_one_at_a_time() {
        let t0 = Now::read();
        let mut f = fleet(settings(), 0.01, 3, t0);
        step(&mut f, t0.after(Duration::from_millis(60)));
        let mut t = t0.after(Duration::from_millis(200));
        step(&mut f, t);
        f.start_refresh(t, None, prefs(90, true)).unwrap();
        assert_eq!(f.refreshes[0].status, RefreshStatus::Successful);
        // SkipMatching false replaces the matching ones too, one at a time at 100 %.
        f.start_refresh(t, None, prefs(100, false)).unwrap();
        let waiting = |f: &Fleet| {
            f.instances
                .iter()
                .filter(|i| i.lifecycle == Lifecycle::TerminatingWait)
                .count()
        };
        assert_eq!(waiting(&f), 1);
        for _ in 0..300 {
            t = t.after(Duration::from_millis(10));
            let effects = f.tick(t);
            carry_out(&mut f, t, effects);
            assert!(waiting(&f) <= 1);
            step(&mut f, t);
            if f.active_refresh().is_none() {
                break;
            }
        }
        assert_eq!(f.refreshes[1].status, RefreshStatus::Successful);
        assert_eq!(f.refreshes[1].replaced.len(), 3);
        // An unknown version is refused.
        assert!(matches!(
            f.start_refresh(t, Some(9), prefs(90, false)),
            Err(Refusal::Invalid(_))
        ));
    }
}
