//! FIS templates and experiments running `aws:ec2:send-spot-instance-interruptions` against the fleet: target
//! resolution (ARNs or tags, filters, ALL / COUNT / PERCENT, at most five per target), the effects on each chosen
//! instance (a rebalance recommendation at once, the interruption at the end), stop and completion.
//!
//! Templates arrive already parsed (the REST-JSON parsing and documents are in the `fis` API module); the
//! template document is kept as the opaque JSON FIS echoes back.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;
use time::OffsetDateTime;

use super::fleet::{Ec2State, EventKind, Fleet, Instance, Lifecycle};
use super::{Effect, Refusal};
use crate::clock::Now;

/// FIS resolves at most this many instances per `aws:ec2:spot-instance` target.
pub const MAX_SPOT_TARGETS: usize = 5;
pub const SPOT_RESOURCE: &str = "aws:ec2:spot-instance";

/// How targets are picked from the resolved set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    All,
    Count(usize),
    Percent(u32),
}

impl Selection {
    pub fn parse(s: &str) -> Result<Selection, String> {
        let bad = || format!("Invalid selectionMode {s}: expected ALL, COUNT(n) or PERCENT(n)");
        if s == "ALL" {
            return Ok(Selection::All);
        }
        let inner = |prefix: &str| -> Option<u64> {
            s.strip_prefix(prefix)?.strip_suffix(')')?.parse().ok()
        };
        if let Some(n) = inner("COUNT(") {
            return if n >= 1 {
                Ok(Selection::Count(n as usize))
            } else {
                Err(bad())
            };
        }
        if let Some(n) = inner("PERCENT(") {
            return if (1..=100).contains(&n) {
                Ok(Selection::Percent(n as u32))
            } else {
                Err(bad())
            };
        }
        Err(bad())
    }

    /// How many of `n` resolved resources are chosen. PERCENT rounds up, so a non-empty set never yields zero.
    pub fn how_many(self, n: usize) -> usize {
        match self {
            Selection::All => n,
            Selection::Count(c) => c.min(n),
            Selection::Percent(p) => (n * p as usize).div_ceil(100),
        }
    }
}

/// A target filter (`filters[]`), its values parsed once at template creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `State.Name`: any of these EC2 states. A value no instance can be in (a typo, or `stopped`, which this
    /// group never reaches) is dropped at parse time: as on EC2, it matches nothing.
    State(Vec<Ec2State>),
    /// `Placement.AvailabilityZone`: any of these zones.
    Zone(Vec<String>),
}

impl Filter {
    /// The filter at `path` with `values`; `None` for a path spot-sim does not support.
    pub fn parse(path: &str, values: &[&str]) -> Option<Filter> {
        match path {
            "State.Name" => Some(Filter::State(
                values.iter().filter_map(|v| Ec2State::parse(v)).collect(),
            )),
            "Placement.AvailabilityZone" => {
                Some(Filter::Zone(values.iter().map(|v| v.to_string()).collect()))
            }
            _ => None,
        }
    }

    fn admits(&self, i: &Instance) -> bool {
        match self {
            Filter::State(states) => states.contains(&i.lifecycle.ec2_state()),
            Filter::Zone(zones) => zones.contains(&i.az),
        }
    }
}

/// A validated target.
#[derive(Debug, Clone)]
pub struct Target {
    /// `resourceArns` (at most 5); empty when chosen by tags.
    pub arns: Vec<String>,
    /// `resourceTags`: every pair must match.
    pub tags: BTreeMap<String, String>,
    /// `filters`: every filter must admit the instance.
    pub filters: Vec<Filter>,
    pub selection: Selection,
}

/// A validated action.
#[derive(Debug, Clone)]
pub struct Action {
    /// `durationBeforeInterruption` (sim time).
    pub duration: Duration,
    /// Name of the template target it acts on (`targets.SpotInstances`).
    pub target: String,
}

#[derive(Debug, Clone)]
pub struct Template {
    /// The template as FIS returns it.
    pub doc: Value,
    /// Parsed once at creation, so a bad template is refused then, not at start.
    pub targets: BTreeMap<String, Target>,
    pub actions: BTreeMap<String, Action>,
    /// `experimentOptions.emptyTargetResolutionMode` is `skip` (default `fail`).
    pub skip_empty: bool,
}

/// FIS experiment states this simulator reaches (no pending/initiating: it starts at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExperimentStatus {
    Running,
    Completed,
    Stopped,
    Failed,
}

impl ExperimentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExperimentStatus::Running => "running",
            ExperimentStatus::Completed => "completed",
            ExperimentStatus::Stopped => "stopped",
            ExperimentStatus::Failed => "failed",
        }
    }
}

/// FIS action states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionStatus {
    Running,
    Completed,
    Stopped,
    Cancelled,
}

impl ActionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Running => "running",
            ActionStatus::Completed => "completed",
            ActionStatus::Stopped => "stopped",
            ActionStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ActionRun {
    pub status: ActionStatus,
    pub reason: String,
    pub start: Option<OffsetDateTime>,
    pub end: Option<OffsetDateTime>,
}

#[derive(Debug, Clone)]
pub struct Experiment {
    pub id: String,
    pub template_id: String,
    /// The template as it was at start (it may be deleted later; the experiment still shows it).
    pub template: Value,
    pub status: ExperimentStatus,
    pub reason: String,
    pub actions: BTreeMap<String, ActionRun>,
    pub created: OffsetDateTime,
    pub start: OffsetDateTime,
    pub end: Option<OffsetDateTime>,
    /// Completes (running -> completed) at this instant.
    end_at: Option<Instant>,
    /// Instances chosen per target.
    pub resolved: BTreeMap<String, Vec<String>>,
    pub tags: Value,
}

/// Templates and experiments.
#[derive(Debug, Default)]
pub struct Fis {
    /// By id (`EXT...`).
    pub templates: BTreeMap<String, Template>,
    /// By id (`EXP...`); kept after they end, for GetExperiment / ListExperiments.
    pub experiments: BTreeMap<String, Experiment>,
    /// StartExperiment clientToken -> experiment id (idempotent retries).
    client_tokens: HashMap<String, String>,
}

/// A FIS-shaped id: prefix + 14 alphanumerics.
pub fn rand_id(prefix: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let tail: String = (0..14)
        .map(|_| A[fastrand::usize(0..A.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

/// The instance id in `arn:aws:ec2:REGION:ACCOUNT:instance/i-...`.
pub fn instance_id_of(arn: &str) -> Option<&str> {
    let id = arn
        .strip_prefix("arn:aws:ec2:")?
        .split(":instance/")
        .nth(1)?;
    id.starts_with("i-").then_some(id)
}

fn template_not_found(id: &str) -> Refusal {
    Refusal::NotFound(format!("Experiment template {id} not found."))
}

/// Resolve one target against the fleet: matching, filtered, then selected at random.
pub fn resolve(fleet: &Fleet, t: &Target) -> Vec<String> {
    let group_tags = [
        ("Name", "order-worker"),
        ("aws:autoscaling:groupName", fleet.settings.group.as_str()),
    ];
    let mut matched: Vec<String> = fleet
        .instances
        .iter()
        .filter(|i| {
            if !t.arns.is_empty() {
                t.arns
                    .iter()
                    .any(|a| instance_id_of(a) == Some(i.id.as_str()))
            } else {
                t.tags
                    .iter()
                    .all(|(k, v)| group_tags.iter().any(|(gk, gv)| gk == k && gv == v))
            }
        })
        .filter(|i| t.filters.iter().all(|f| f.admits(i)))
        // A terminated instance is never a target, filter or not.
        .filter(|i| i.lifecycle != Lifecycle::Terminated)
        .map(|i| i.id.clone())
        .collect();
    fastrand::shuffle(&mut matched);
    let n = t.selection.how_many(matched.len());
    matched.truncate(n);
    matched.sort();
    matched
}

impl Fis {
    pub fn add_template(&mut self, fleet: &mut Fleet, now: Now, id: String, t: Template) {
        fleet.event(
            now,
            None,
            EventKind::FisTemplateCreated,
            format!("FIS experiment template {id} created"),
        );
        self.templates.insert(id, t);
    }

    pub fn delete_template(
        &mut self,
        fleet: &mut Fleet,
        now: Now,
        id: &str,
    ) -> Result<Template, Refusal> {
        let t = self
            .templates
            .remove(id)
            .ok_or_else(|| template_not_found(id))?;
        fleet.event(
            now,
            None,
            EventKind::FisTemplateDeleted,
            format!("FIS experiment template {id} deleted"),
        );
        Ok(t)
    }

    /// StartExperiment: returns the experiment's id (an earlier one for a repeated `client_token`) and the
    /// effects of the rebalance recommendations (capacity rebalancing may launch replacements). `refused`: the
    /// experiment's role may not act on its targets (the IAM gate said why): it fails before touching any.
    pub fn start(
        &mut self,
        fleet: &mut Fleet,
        now: Now,
        template_id: &str,
        client_token: Option<String>,
        tags: Value,
        refused: Option<String>,
    ) -> Result<(String, Vec<Effect>), Refusal> {
        if let Some(existing) = client_token
            .as_ref()
            .and_then(|c| self.client_tokens.get(c))
        {
            return Ok((existing.clone(), Vec::new()));
        }
        let tpl = self
            .templates
            .get(template_id)
            .cloned()
            .ok_or_else(|| template_not_found(template_id))?;
        let id = rand_id("EXP");
        let mut exp = Experiment {
            id: id.clone(),
            template_id: template_id.to_string(),
            template: tpl.doc.clone(),
            status: ExperimentStatus::Running,
            reason: "Experiment is running.".into(),
            actions: BTreeMap::new(),
            created: now.wall,
            start: now.wall,
            end: None,
            end_at: None,
            resolved: BTreeMap::new(),
            tags,
        };
        // Resolve every target first: a target that resolves to nothing or to too much fails the experiment before
        // any instance is touched, as FIS does.
        // (resolved even when the role is refused: the experiment shows its targets, as FIS does).
        let unresolved = resolve_targets(fleet, &tpl, &mut exp.resolved);
        let effects = match refused.or(unresolved) {
            Some(reason) => {
                fail(fleet, now, &tpl, &mut exp, reason);
                Vec::new()
            }
            None => run(fleet, now, &tpl, &mut exp),
        };
        if let Some(c) = client_token {
            self.client_tokens.insert(c, id.clone());
        }
        self.experiments.insert(id.clone(), exp);
        Ok((id, effects))
    }

    /// StopExperiment: pending effects are cancelled; a notice already shown stays shown (it cannot be unsent).
    pub fn stop(&mut self, fleet: &mut Fleet, now: Now, id: &str) -> Result<(), Refusal> {
        let e = self
            .experiments
            .get_mut(id)
            .ok_or_else(|| Refusal::NotFound(format!("Experiment {id} not found.")))?;
        if e.status != ExperimentStatus::Running {
            return Ok(());
        }
        let cancelled = fleet.cancel_interruptions(id);
        e.status = ExperimentStatus::Stopped;
        e.reason = "Experiment stopped by user.".into();
        e.end = Some(now.wall);
        e.end_at = None;
        for run in e.actions.values_mut() {
            if run.status == ActionStatus::Running {
                run.status = ActionStatus::Stopped;
                run.reason = "Action stopped.".into();
                run.end = Some(now.wall);
            }
        }
        fleet.event(
            now,
            None,
            EventKind::ExperimentStopped,
            format!(
                "FIS experiment {id} stopped; cancelled interruptions of [{}]",
                cancelled.join(", ")
            ),
        );
        Ok(())
    }

    /// Complete experiments whose interruptions have all happened.
    pub fn tick(&mut self, fleet: &mut Fleet, now: Now) {
        for e in self.experiments.values_mut() {
            if e.status == ExperimentStatus::Running && e.end_at.is_some_and(|t| now.at >= t) {
                e.status = ExperimentStatus::Completed;
                e.reason = "Experiment completed.".into();
                e.end = Some(now.wall);
                e.end_at = None;
                for run in e.actions.values_mut() {
                    run.status = ActionStatus::Completed;
                    run.reason = "Action completed.".into();
                    run.end = Some(now.wall);
                }
                fleet.event(
                    now,
                    None,
                    EventKind::ExperimentCompleted,
                    format!("FIS experiment {} completed", e.id),
                );
            }
        }
    }
}

/// Resolve each target of `tpl` into `resolved`; the first reason the experiment must fail, if any.
fn resolve_targets(
    fleet: &Fleet,
    tpl: &Template,
    resolved: &mut BTreeMap<String, Vec<String>>,
) -> Option<String> {
    let mut failure = None;
    for (name, t) in &tpl.targets {
        let chosen = resolve(fleet, t);
        if chosen.is_empty() && !tpl.skip_empty {
            failure.get_or_insert(format!(
                "Target resolution returned empty set for target {name}."
            ));
        } else if chosen.len() > MAX_SPOT_TARGETS {
            failure.get_or_insert(format!(
                "Target {name} resolved to {} resources; {SPOT_RESOURCE} targets allow at most {MAX_SPOT_TARGETS}.",
                chosen.len()
            ));
        }
        resolved.insert(name.clone(), chosen);
    }
    failure
}

/// The experiment fails before touching any instance: every action cancelled.
fn fail(fleet: &mut Fleet, now: Now, tpl: &Template, exp: &mut Experiment, reason: String) {
    exp.status = ExperimentStatus::Failed;
    exp.end = Some(now.wall);
    for name in tpl.actions.keys() {
        exp.actions.insert(
            name.clone(),
            ActionRun {
                status: ActionStatus::Cancelled,
                reason: "Experiment failed.".into(),
                start: None,
                end: None,
            },
        );
    }
    fleet.event(
        now,
        None,
        EventKind::ExperimentFailed,
        format!("FIS experiment {} failed: {reason}", exp.id),
    );
    exp.reason = reason;
}

/// Every action runs: its targets get a rebalance recommendation now and an interruption at the action's
/// end. Returns the recommendations' effects.
fn run(fleet: &mut Fleet, now: Now, tpl: &Template, exp: &mut Experiment) -> Vec<Effect> {
    let mut effects = Vec::new();
    let mut last_end: Option<Instant> = None;
    for (name, a) in &tpl.actions {
        let end = fleet.clock.deadline_after(now, a.duration);
        last_end = Some(last_end.map_or(end.at, |l| l.max(end.at)));
        for iid in exp.resolved.get(&a.target).cloned().unwrap_or_default() {
            if let Some(idx) = fleet.find(&iid) {
                let cause = format!("FIS experiment {}", exp.id);
                effects.extend(fleet.recommend_rebalance(now, idx, &cause));
                fleet.schedule_interruption(now, idx, end, Some(exp.id.clone()));
            }
        }
        exp.actions.insert(
            name.clone(),
            ActionRun {
                status: ActionStatus::Running,
                reason: "Action is running.".into(),
                start: Some(now.wall),
                end: None,
            },
        );
    }
    exp.end_at = last_end;
    let chosen: Vec<String> = exp.resolved.values().flatten().cloned().collect();
    fleet.event(
        now,
        None,
        EventKind::ExperimentRunning,
        format!(
            "FIS experiment {} running against {}",
            exp.id,
            chosen.join(", ")
        ),
    );
    effects
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fleet::tests::{carry_out, fleet, settings};
    use crate::model::Settings;
    use serde_json::json;

    #[test]
    fn selection_modes() {
        assert_eq!(Selection::parse("ALL"), Ok(Selection::All));
        assert_eq!(Selection::parse("COUNT(2)"), Ok(Selection::Count(2)));
        assert_eq!(Selection::parse("PERCENT(50)"), Ok(Selection::Percent(50)));
        for bad in [
            "all",
            "COUNT(0)",
            "COUNT()",
            "COUNT(x)",
            "PERCENT(0)",
            "PERCENT(101)",
            "PERCENT(5",
            "SOME",
        ] {
            assert!(Selection::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Selection::All.how_many(7), 7);
        assert_eq!(Selection::Count(2).how_many(4), 2);
        assert_eq!(Selection::Count(9).how_many(4), 4);
        assert_eq!(Selection::Percent(50).how_many(4), 2);
        assert_eq!(Selection::Percent(50).how_many(3), 2);
        assert_eq!(Selection::Percent(10).how_many(3), 1);
        assert_eq!(Selection::Percent(100).how_many(0), 0);
    }

    #[test]
    fn instance_arns() {
        assert_eq!(
            instance_id_of("arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"),
            Some("i-0123456789abcdef0")
        );
        assert_eq!(
            instance_id_of("arn:aws:ec2:us-east-1:123456789012:volume/vol-1"),
            None
        );
        assert_eq!(instance_id_of("i-0123"), None);
    }

    fn by_tag(selection: Selection) -> Target {
        Target {
            arns: vec![],
            tags: [("Name".to_string(), "order-worker".to_string())].into(),
            filters: vec![],
            selection,
        }
    }

    fn template(target: Target) -> Template {
        Template {
            doc: json!({}),
            targets: [("SpotInstances".to_string(), target)].into(),
            actions: [(
                "interrupt".to_string(),
                Action {
                    duration: Duration::from_secs(120),
                    target: "SpotInstances".into(),
                },
            )]
            .into(),
            skip_empty: false,
        }
    }

    #[test]
    fn all_count_and_percent_choose_from_the_live_matching_instances() {
        let now = Now::read();
        let mut f = fleet(settings(), 0.01, 4, now);
        assert_eq!(resolve(&f, &by_tag(Selection::All)).len(), 4);
        assert_eq!(resolve(&f, &by_tag(Selection::Count(3))).len(), 3);
        assert_eq!(resolve(&f, &by_tag(Selection::Percent(50))).len(), 2);
        assert_eq!(resolve(&f, &by_tag(Selection::Percent(1))).len(), 1);
        // A tag the instances do not carry matches nothing.
        let mut other = by_tag(Selection::All);
        other.tags.insert("team".into(), "x".into());
        assert!(resolve(&f, &other).is_empty());
        // By ARN; a terminated instance is never chosen.
        let id = f.instances[0].id.clone();
        let arn = Target {
            arns: vec![f.settings.instance_arn(&id)],
            tags: BTreeMap::new(),
            filters: vec![],
            selection: Selection::All,
        };
        assert_eq!(resolve(&f, &arn), vec![id.clone()]);
        f.instances[0].lifecycle = Lifecycle::Terminated;
        assert!(resolve(&f, &arn).is_empty());
        // Filters: zones go a, b, c, a, so zone b holds instance 1 alone; running excludes shutting-down.
        let mut zone = by_tag(Selection::All);
        zone.filters = vec![Filter::parse("Placement.AvailabilityZone", &["us-east-1b"]).unwrap()];
        assert_eq!(resolve(&f, &zone), vec![f.instances[1].id.clone()]);
        f.instances[2].lifecycle = Lifecycle::TerminatingProceed;
        let mut running = by_tag(Selection::All);
        running.filters = vec![Filter::parse("State.Name", &["running"]).unwrap()];
        assert_eq!(resolve(&f, &running).len(), 2);
        running.filters = vec![Filter::parse("State.Name", &["shutting-down", "stopped"]).unwrap()];
        assert_eq!(resolve(&f, &running), vec![f.instances[2].id.clone()]);
        running.filters = vec![Filter::parse("State.Name", &["Running"]).unwrap()];
        assert!(
            resolve(&f, &running).is_empty(),
            "state names are exact, as on EC2"
        );
        assert_eq!(Filter::parse("InstanceType", &["t3.micro"]), None);
    }

    #[test]
    fn more_than_five_instances_per_target_fails_the_experiment_and_touches_nothing() {
        let now = Now::read();
        let mut f = fleet(settings(), 0.01, 6, now);
        let mut fis = Fis::default();
        fis.add_template(&mut f, now, "EXT1".into(), template(by_tag(Selection::All)));
        let (id, effects) = fis
            .start(&mut f, now, "EXT1", None, json!({}), None)
            .unwrap();
        assert!(effects.is_empty());
        let e = &fis.experiments[&id];
        assert_eq!(e.status, ExperimentStatus::Failed);
        assert_eq!(
            e.reason,
            "Target SpotInstances resolved to 6 resources; aws:ec2:spot-instance targets allow at most 5."
        );
        assert!(f
            .instances
            .iter()
            .all(|i| i.interruption.is_none() && i.rebalance.is_none()));
        // COUNT(5) of the same six is allowed.
        fis.add_template(
            &mut f,
            now,
            "EXT2".into(),
            template(by_tag(Selection::Count(5))),
        );
        let (id, _) = fis
            .start(&mut f, now, "EXT2", None, json!({}), None)
            .unwrap();
        assert_eq!(fis.experiments[&id].status, ExperimentStatus::Running);
        assert_eq!(
            f.instances
                .iter()
                .filter(|i| i.interruption.is_some())
                .count(),
            5
        );
    }

    #[test]
    fn an_empty_target_fails_unless_skip_and_unknown_templates_are_not_found() {
        let now = Now::read();
        let mut f = fleet(settings(), 0.01, 0, now);
        let mut fis = Fis::default();
        fis.add_template(&mut f, now, "EXT1".into(), template(by_tag(Selection::All)));
        let (id, _) = fis
            .start(&mut f, now, "EXT1", None, json!({}), None)
            .unwrap();
        assert_eq!(fis.experiments[&id].status, ExperimentStatus::Failed);
        let mut skip = template(by_tag(Selection::All));
        skip.skip_empty = true;
        fis.add_template(&mut f, now, "EXT2".into(), skip);
        let (id, _) = fis
            .start(&mut f, now, "EXT2", None, json!({}), None)
            .unwrap();
        assert_eq!(fis.experiments[&id].status, ExperimentStatus::Running);
        assert!(matches!(
            fis.start(&mut f, now, "EXTnope", None, json!({}), None),
            Err(Refusal::NotFound(_))
        ));
    }

    #[test]
    fn an_experiment_rebalances_at_once_completes_at_the_end_and_a_client_token_repeats_it() {
        let now = Now::read();
        let s = Settings {
            launch_delay: Duration::ZERO,
            ..settings()
        };
        let mut f = fleet(s, 0.01, 1, now);
        f.tick(now);
        let mut fis = Fis::default();
        fis.add_template(&mut f, now, "EXT1".into(), template(by_tag(Selection::All)));
        let token = Some("tok".to_string());
        let (id, effects) = fis
            .start(&mut f, now, "EXT1", token.clone(), json!({}), None)
            .unwrap();
        // Capacity rebalancing: a replacement for the InService target.
        assert!(matches!(&effects[..], [Effect::StartImds { .. }]));
        carry_out(&mut f, now, effects);
        assert!(f.instances[0].rebalance.is_some());
        assert_eq!(
            fis.start(&mut f, now, "EXT1", token, json!({}), None)
                .unwrap()
                .0,
            id
        );
        // PT2M at scale 0.01 is 1.2 s (plus the round-up to a whole second).
        fis.tick(&mut f, now.after(Duration::from_millis(1100)));
        assert_eq!(fis.experiments[&id].status, ExperimentStatus::Running);
        fis.tick(&mut f, now.after(Duration::from_millis(2300)));
        assert_eq!(fis.experiments[&id].status, ExperimentStatus::Completed);
        assert_eq!(
            f.timeline.last().unwrap().kind,
            EventKind::ExperimentCompleted
        );
    }

    #[test]
    fn stop_cancels_interruptions_not_yet_applied() {
        let now = Now::read();
        let mut f = fleet(settings(), 0.01, 2, now);
        let mut fis = Fis::default();
        fis.add_template(&mut f, now, "EXT1".into(), template(by_tag(Selection::All)));
        let (id, _) = fis
            .start(&mut f, now, "EXT1", None, json!({}), None)
            .unwrap();
        fis.stop(&mut f, now, &id).unwrap();
        assert_eq!(fis.experiments[&id].status, ExperimentStatus::Stopped);
        assert!(f.instances.iter().all(|i| i.interruption.is_none()));
        assert!(matches!(
            fis.stop(&mut f, now, "EXPx"),
            Err(Refusal::NotFound(_))
        ));
    }
}
