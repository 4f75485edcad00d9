//! AWS FIS over its real REST-JSON protocol, carrying out `aws:ec2:send-spot-instance-interruptions` against the
//! simulated instances.
//!
//! Routes (what aws-sdk-fis and `aws fis` send): `POST/GET /experimentTemplates`, `GET/DELETE
//! /experimentTemplates/{id}`, `POST/GET /experiments`, `GET/DELETE /experiments/{id}`. Errors carry the
//! `x-amzn-ErrorType` header and a `{"message": ...}` body. Timestamps are epoch seconds (the REST-JSON default).
//!
//! Effects of one interruption on each chosen instance: a rebalance recommendation at once, the interruption
//! notice two (scaled) minutes before the end, and at the end the instance is reclaimed (see `fleet`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::clock::{self, epoch_seconds, parse_iso8601_duration};
use crate::fleet::{Lifecycle, Sim, State as FleetState};

pub const SPOT_ACTION: &str = "aws:ec2:send-spot-instance-interruptions";
pub const SPOT_RESOURCE: &str = "aws:ec2:spot-instance";
/// FIS resolves at most this many instances per `aws:ec2:spot-instance` target.
pub const MAX_SPOT_TARGETS: usize = 5;
const MIN_DURATION: Duration = Duration::from_secs(120);
const MAX_DURATION: Duration = Duration::from_secs(900);

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

/// A validated target.
#[derive(Debug, Clone)]
struct Target {
    /// `resourceArns` (at most 5); empty when chosen by tags.
    arns: Vec<String>,
    /// `resourceTags`: every pair must match.
    tags: BTreeMap<String, String>,
    /// `filters`: (path, accepted values); any value matches.
    filters: Vec<(String, Vec<String>)>,
    selection: Selection,
}

/// A validated action.
#[derive(Debug, Clone)]
struct Action {
    /// `durationBeforeInterruption` (sim time).
    duration: Duration,
    /// Name of the template target it acts on (`targets.SpotInstances`).
    target: String,
}

#[derive(Debug, Clone)]
struct Template {
    /// The template as FIS returns it.
    doc: Value,
    /// Parsed once at creation, so a bad template is refused then, not at start.
    targets: BTreeMap<String, Target>,
    actions: BTreeMap<String, Action>,
}

#[derive(Debug, Clone)]
struct ActionRun {
    /// FIS action status: running, completed, stopped, cancelled.
    status: &'static str,
    reason: String,
    start: Option<OffsetDateTime>,
    end: Option<OffsetDateTime>,
}

#[derive(Debug, Clone)]
struct Experiment {
    id: String,
    template_id: String,
    /// The template as it was at start (it may be deleted later; the experiment still shows it).
    template: Value,
    /// FIS experiment status: running, completed, stopped, failed.
    status: &'static str,
    reason: String,
    actions: BTreeMap<String, ActionRun>,
    created: OffsetDateTime,
    start: OffsetDateTime,
    end: Option<OffsetDateTime>,
    /// Completes (running -> completed) at this instant.
    end_at: Option<Instant>,
    /// Instances chosen per target.
    resolved: BTreeMap<String, Vec<String>>,
    tags: Value,
}

/// Templates and experiments.
#[derive(Debug, Default)]
pub struct FisState {
    /// By id (`EXT...`).
    templates: BTreeMap<String, Template>,
    /// By id (`EXP...`); kept after they end, for GetExperiment / ListExperiments.
    experiments: BTreeMap<String, Experiment>,
    /// StartExperiment clientToken -> experiment id (idempotent retries).
    client_tokens: HashMap<String, String>,
}

/// A FIS error response.
#[derive(Debug)]
pub struct FisError {
    status: StatusCode,
    /// The `x-amzn-ErrorType` the SDKs map to an error type.
    kind: &'static str,
    message: String,
}

fn validation(m: impl Into<String>) -> FisError {
    FisError {
        status: StatusCode::BAD_REQUEST,
        kind: "ValidationException",
        message: m.into(),
    }
}

fn not_found(m: impl Into<String>) -> FisError {
    FisError {
        status: StatusCode::NOT_FOUND,
        kind: "ResourceNotFoundException",
        message: m.into(),
    }
}

impl IntoResponse for FisError {
    fn into_response(self) -> Response {
        (
            self.status,
            [
                ("content-type", "application/json"),
                ("x-amzn-ErrorType", self.kind),
            ],
            json!({"message": self.message}).to_string(),
        )
            .into_response()
    }
}

fn ok_json(v: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn rand_id(prefix: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let tail: String = (0..14)
        .map(|_| A[fastrand::usize(0..A.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

pub fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route(
            "/experimentTemplates",
            get(list_templates).post(create_template),
        )
        .route(
            "/experimentTemplates/{id}",
            get(get_template).delete(delete_template),
        )
        .route("/experiments", get(list_experiments).post(start_experiment))
        .route(
            "/experiments/{id}",
            get(get_experiment).delete(stop_experiment),
        )
}

fn parse_body(body: &[u8]) -> Result<Map<String, Value>, FisError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(validation("Request body must be a JSON object")),
    }
}

fn str_field<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn parse_target(name: &str, t: &Value) -> Result<Target, FisError> {
    let t = t
        .as_object()
        .ok_or_else(|| validation(format!("Target {name} must be an object")))?;
    let rt = str_field(t, "resourceType")
        .ok_or_else(|| validation(format!("Target {name}: resourceType is required")))?;
    if rt != SPOT_RESOURCE {
        return Err(validation(format!(
            "Target {name}: resource type {rt} is not supported by spot-sim (only {SPOT_RESOURCE})"
        )));
    }
    let arns: Vec<String> = t
        .get("resourceArns")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let tags: BTreeMap<String, String> = t
        .get("resourceTags")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    if arns.is_empty() && tags.is_empty() {
        return Err(validation(format!(
            "Target {name}: specify resourceArns or resourceTags"
        )));
    }
    if !arns.is_empty() && !tags.is_empty() {
        return Err(validation(format!(
            "Target {name}: resourceArns and resourceTags cannot be used together"
        )));
    }
    if arns.len() > MAX_SPOT_TARGETS {
        return Err(validation(format!(
            "Target {name}: {} resource ARNs exceed the limit of {MAX_SPOT_TARGETS} for resource type {SPOT_RESOURCE}",
            arns.len()
        )));
    }
    for a in &arns {
        if instance_id_of(a).is_none() {
            return Err(validation(format!(
                "Target {name}: invalid instance ARN {a}"
            )));
        }
    }
    let mut filters = Vec::new();
    for f in t
        .get("filters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let path = f
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if path != "State.Name" && path != "Placement.AvailabilityZone" {
            return Err(validation(format!(
                "Target {name}: filter path {path} is not supported by spot-sim (State.Name, Placement.AvailabilityZone)"
            )));
        }
        let values = f
            .get("values")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        filters.push((path, values));
    }
    let selection =
        Selection::parse(str_field(t, "selectionMode").unwrap_or("ALL")).map_err(validation)?;
    Ok(Target {
        arns,
        tags,
        filters,
        selection,
    })
}

fn parse_action(
    name: &str,
    a: &Value,
    targets: &BTreeMap<String, Target>,
) -> Result<Action, FisError> {
    let a = a
        .as_object()
        .ok_or_else(|| validation(format!("Action {name} must be an object")))?;
    let id = str_field(a, "actionId")
        .ok_or_else(|| validation(format!("Action {name}: actionId is required")))?;
    if id != SPOT_ACTION {
        return Err(validation(format!(
            "Action {name}: action {id} is not supported by spot-sim (only {SPOT_ACTION})"
        )));
    }
    let params = a.get("parameters").and_then(Value::as_object);
    let raw = params
        .and_then(|p| p.get("durationBeforeInterruption"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            validation(format!(
                "Action {name}: parameter durationBeforeInterruption is required"
            ))
        })?;
    let duration =
        parse_iso8601_duration(raw).map_err(|e| validation(format!("Action {name}: {e}")))?;
    if !(MIN_DURATION..=MAX_DURATION).contains(&duration) {
        return Err(validation(format!(
            "Action {name}: durationBeforeInterruption {raw} must be between PT2M and PT15M"
        )));
    }
    let target = a
        .get("targets")
        .and_then(Value::as_object)
        .and_then(|t| t.get("SpotInstances"))
        .and_then(Value::as_str)
        .ok_or_else(|| validation(format!("Action {name}: targets.SpotInstances is required")))?;
    if !targets.contains_key(target) {
        return Err(validation(format!(
            "Action {name}: target {target} is not defined in the template"
        )));
    }
    Ok(Action {
        duration,
        target: target.to_string(),
    })
}

fn instance_id_of(arn: &str) -> Option<&str> {
    let id = arn
        .strip_prefix("arn:aws:ec2:")?
        .split(":instance/")
        .nth(1)?;
    id.starts_with("i-").then_some(id)
}

async fn create_template(State(sim): State<Arc<Sim>>, body: Bytes) -> Result<Response, FisError> {
    let m = parse_body(&body)?;
    for required in ["description", "roleArn"] {
        if str_field(&m, required).is_none() {
            return Err(validation(format!("{required} is required")));
        }
    }
    if !m.get("stopConditions").is_some_and(Value::is_array) {
        return Err(validation("stopConditions is required"));
    }
    let mut targets = BTreeMap::new();
    for (name, t) in m
        .get("targets")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        targets.insert(name.clone(), parse_target(name, t)?);
    }
    let raw_actions = m
        .get("actions")
        .and_then(Value::as_object)
        .filter(|a| !a.is_empty());
    let raw_actions = raw_actions.ok_or_else(|| validation("actions is required"))?;
    let mut actions = BTreeMap::new();
    for (name, a) in raw_actions {
        actions.insert(name.clone(), parse_action(name, a, &targets)?);
    }
    let s = &sim.settings;
    let id = rand_id("EXT");
    let now = epoch_seconds(OffsetDateTime::now_utc());
    let doc = json!({
        "id": id,
        "arn": format!("arn:aws:fis:{}:{}:experiment-template/{id}", s.region, s.account),
        "description": m.get("description"),
        "targets": m.get("targets").cloned().unwrap_or(json!({})),
        "actions": m.get("actions"),
        "stopConditions": m.get("stopConditions"),
        "roleArn": m.get("roleArn"),
        "tags": m.get("tags").cloned().unwrap_or(json!({})),
        "creationTime": now,
        "lastUpdateTime": now,
        "experimentOptions": m.get("experimentOptions").cloned().unwrap_or(json!({"accountTargeting": "single-account", "emptyTargetResolutionMode": "fail"})),
    });
    let mut st = sim.lock();
    st.fis.templates.insert(
        id.clone(),
        Template {
            doc: doc.clone(),
            targets,
            actions,
        },
    );
    st.event(None, format!("FIS experiment template {id} created"));
    Ok(ok_json(json!({"experimentTemplate": doc})))
}

async fn list_templates(State(sim): State<Arc<Sim>>) -> Response {
    let st = sim.lock();
    let list: Vec<Value> = st
        .fis
        .templates
        .values()
        .map(|t| {
            json!({"id": t.doc["id"], "arn": t.doc["arn"], "description": t.doc["description"],
                   "creationTime": t.doc["creationTime"], "lastUpdateTime": t.doc["lastUpdateTime"], "tags": t.doc["tags"]})
        })
        .collect();
    ok_json(json!({"experimentTemplates": list}))
}

async fn get_template(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
) -> Result<Response, FisError> {
    let st = sim.lock();
    let t = st
        .fis
        .templates
        .get(&id)
        .ok_or_else(|| not_found(format!("Experiment template {id} not found.")))?;
    Ok(ok_json(json!({"experimentTemplate": t.doc})))
}

async fn delete_template(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
) -> Result<Response, FisError> {
    let mut st = sim.lock();
    let t = st
        .fis
        .templates
        .remove(&id)
        .ok_or_else(|| not_found(format!("Experiment template {id} not found.")))?;
    st.event(None, format!("FIS experiment template {id} deleted"));
    Ok(ok_json(json!({"experimentTemplate": t.doc})))
}

/// Resolve one target against the fleet: matching, filtered, then selected at random.
fn resolve(st: &FleetState, sim: &Sim, t: &Target) -> Vec<String> {
    let group_tags = [
        ("Name", "order-worker"),
        ("aws:autoscaling:groupName", sim.settings.group.as_str()),
    ];
    let mut matched: Vec<String> = st
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
        .filter(|i| {
            t.filters.iter().all(|(path, values)| {
                let actual = match path.as_str() {
                    "State.Name" => i.lifecycle.ec2_state(),
                    _ => i.az.as_str(),
                };
                values.iter().any(|v| v == actual)
            })
        })
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

async fn start_experiment(State(sim): State<Arc<Sim>>, body: Bytes) -> Result<Response, FisError> {
    let m = parse_body(&body)?;
    let tid = str_field(&m, "experimentTemplateId")
        .ok_or_else(|| validation("experimentTemplateId is required"))?;
    let client_token = str_field(&m, "clientToken").map(str::to_string);
    let mut st = sim.lock();
    if let Some(existing) = client_token
        .as_ref()
        .and_then(|c| st.fis.client_tokens.get(c))
    {
        let e = &st.fis.experiments[existing];
        return Ok(ok_json(json!({"experiment": experiment_json(&sim, e)})));
    }
    let tpl = st
        .fis
        .templates
        .get(tid)
        .cloned()
        .ok_or_else(|| not_found(format!("Experiment template {tid} not found.")))?;
    let id = rand_id("EXP");
    let now = OffsetDateTime::now_utc();
    let mut exp = Experiment {
        id: id.clone(),
        template_id: tid.to_string(),
        template: tpl.doc.clone(),
        status: "running",
        reason: "Experiment is running.".into(),
        actions: BTreeMap::new(),
        created: now,
        start: now,
        end: None,
        end_at: None,
        resolved: BTreeMap::new(),
        tags: m.get("tags").cloned().unwrap_or(json!({})),
    };
    // Resolve every target first: a target that resolves to nothing or to too much fails the experiment before
    // any instance is touched, as FIS does.
    let mut failure = None;
    // experimentOptions.emptyTargetResolutionMode: "fail" (default) or "skip".
    let skip_empty = tpl.doc["experimentOptions"]["emptyTargetResolutionMode"] == "skip";
    for (name, t) in &tpl.targets {
        let chosen = resolve(&st, &sim, t);
        if chosen.is_empty() && !skip_empty {
            failure.get_or_insert(format!(
                "Target resolution returned empty set for target {name}."
            ));
        } else if chosen.len() > MAX_SPOT_TARGETS {
            failure.get_or_insert(format!(
                "Target {name} resolved to {} resources; {SPOT_RESOURCE} targets allow at most {MAX_SPOT_TARGETS}.",
                chosen.len()
            ));
        }
        exp.resolved.insert(name.clone(), chosen);
    }
    if let Some(reason) = failure {
        exp.status = "failed";
        exp.reason = reason.clone();
        exp.end = Some(now);
        for name in tpl.actions.keys() {
            exp.actions.insert(
                name.clone(),
                ActionRun {
                    status: "cancelled",
                    reason: "Experiment failed.".into(),
                    start: None,
                    end: None,
                },
            );
        }
        st.event(None, format!("FIS experiment {id} failed: {reason}"));
    } else {
        let mut last_end: Option<Instant> = None;
        for (name, a) in &tpl.actions {
            let end = sim.clock.deadline_after(clock::Now::read(), a.duration);
            last_end = Some(last_end.map_or(end.at, |l| l.max(end.at)));
            for iid in exp.resolved.get(&a.target).cloned().unwrap_or_default() {
                if let Some(idx) = st.find(&iid) {
                    sim.recommend_rebalance(&mut st, idx, &format!("FIS experiment {id}"));
                    sim.schedule_interruption(&mut st, idx, end, Some(id.clone()));
                }
            }
            exp.actions.insert(
                name.clone(),
                ActionRun {
                    status: "running",
                    reason: "Action is running.".into(),
                    start: Some(now),
                    end: None,
                },
            );
        }
        exp.end_at = last_end;
        let chosen: Vec<String> = exp.resolved.values().flatten().cloned().collect();
        st.event(
            None,
            format!("FIS experiment {id} running against {}", chosen.join(", ")),
        );
    }
    let doc = experiment_json(&sim, &exp);
    if let Some(c) = client_token {
        st.fis.client_tokens.insert(c, id.clone());
    }
    st.fis.experiments.insert(id, exp);
    Ok(ok_json(json!({"experiment": doc})))
}

fn experiment_json(sim: &Sim, e: &Experiment) -> Value {
    let s = &sim.settings;
    let mut actions = Map::new();
    let tpl_actions = e.template.get("actions").and_then(Value::as_object);
    for (name, run) in &e.actions {
        let tpl = tpl_actions
            .and_then(|a| a.get(name))
            .cloned()
            .unwrap_or(json!({}));
        let mut a = Map::new();
        for k in [
            "actionId",
            "description",
            "parameters",
            "targets",
            "startAfter",
        ] {
            if let Some(v) = tpl.get(k) {
                a.insert(k.into(), v.clone());
            }
        }
        a.insert(
            "state".into(),
            json!({"status": run.status, "reason": run.reason}),
        );
        if let Some(t) = run.start {
            a.insert("startTime".into(), json!(epoch_seconds(t)));
        }
        if let Some(t) = run.end {
            a.insert("endTime".into(), json!(epoch_seconds(t)));
        }
        actions.insert(name.clone(), Value::Object(a));
    }
    let mut v = json!({
        "id": e.id,
        "arn": format!("arn:aws:fis:{}:{}:experiment/{}", s.region, s.account, e.id),
        "experimentTemplateId": e.template_id,
        "roleArn": e.template.get("roleArn"),
        "state": {"status": e.status, "reason": e.reason},
        "targets": e.template.get("targets").cloned().unwrap_or(json!({})),
        "actions": actions,
        "stopConditions": e.template.get("stopConditions"),
        "creationTime": epoch_seconds(e.created),
        "startTime": epoch_seconds(e.start),
        "tags": e.tags,
        "experimentOptions": e.template.get("experimentOptions"),
        // Not in the FIS API (ListExperimentResolvedTargets has it there); handy for tests and the status view.
        "spotSimResolvedTargets": e.resolved,
    });
    if let Some(t) = e.end {
        v["endTime"] = json!(epoch_seconds(t));
    }
    v
}

async fn get_experiment(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
) -> Result<Response, FisError> {
    let st = sim.lock();
    let e = st
        .fis
        .experiments
        .get(&id)
        .ok_or_else(|| not_found(format!("Experiment {id} not found.")))?;
    Ok(ok_json(json!({"experiment": experiment_json(&sim, e)})))
}

#[derive(serde::Deserialize)]
struct ListQuery {
    #[serde(rename = "experimentTemplateId")]
    template_id: Option<String>,
}

async fn list_experiments(State(sim): State<Arc<Sim>>, Query(q): Query<ListQuery>) -> Response {
    let st = sim.lock();
    let list: Vec<Value> = st
        .fis
        .experiments
        .values()
        .filter(|e| q.template_id.as_ref().map_or(true, |t| *t == e.template_id))
        .map(|e| {
            let full = experiment_json(&sim, e);
            let mut v = json!({
                "id": full["id"], "arn": full["arn"], "experimentTemplateId": full["experimentTemplateId"],
                "state": full["state"], "creationTime": full["creationTime"], "tags": full["tags"],
                "experimentOptions": full["experimentOptions"],
            });
            if let Some(t) = full.get("endTime") {
                v["endTime"] = t.clone();
            }
            v
        })
        .collect();
    ok_json(json!({"experiments": list}))
}

/// StopExperiment: pending effects are cancelled; a notice already shown stays shown (it cannot be unsent).
async fn stop_experiment(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
) -> Result<Response, FisError> {
    let mut st = sim.lock();
    let status = st
        .fis
        .experiments
        .get(&id)
        .map(|e| e.status)
        .ok_or_else(|| not_found(format!("Experiment {id} not found.")))?;
    if matches!(status, "pending" | "initiating" | "running") {
        let mut cancelled = Vec::new();
        for inst in st.instances.iter_mut() {
            if inst
                .interruption
                .as_ref()
                .is_some_and(|i| i.experiment.as_deref() == Some(id.as_str()))
            {
                inst.interruption = None;
                cancelled.push(inst.id.clone());
            }
        }
        let now = OffsetDateTime::now_utc();
        let e = st.fis.experiments.get_mut(&id).expect("checked above");
        e.status = "stopped";
        e.reason = "Experiment stopped by user.".into();
        e.end = Some(now);
        e.end_at = None;
        for run in e.actions.values_mut() {
            if run.status == "running" {
                run.status = "stopped";
                run.reason = "Action stopped.".into();
                run.end = Some(now);
            }
        }
        st.event(
            None,
            format!(
                "FIS experiment {id} stopped; cancelled interruptions of [{}]",
                cancelled.join(", ")
            ),
        );
    }
    let e = &st.fis.experiments[&id];
    Ok(ok_json(json!({"experiment": experiment_json(&sim, e)})))
}

/// Complete experiments whose interruptions have all happened.
pub fn tick(st: &mut FleetState, now: Instant) {
    let mut done = Vec::new();
    for e in st.fis.experiments.values_mut() {
        if e.status == "running" && e.end_at.is_some_and(|t| now >= t) {
            let wall = OffsetDateTime::now_utc();
            e.status = "completed";
            e.reason = "Experiment completed.".into();
            e.end = Some(wall);
            e.end_at = None;
            for run in e.actions.values_mut() {
                run.status = "completed";
                run.reason = "Action completed.".into();
                run.end = Some(wall);
            }
            done.push(e.id.clone());
        }
    }
    for id in done {
        st.event(None, format!("FIS experiment {id} completed"));
    }
}

/// For the status view.
pub fn summary(st: &FleetState) -> Vec<Value> {
    st.fis
        .experiments
        .values()
        .map(|e| json!({"id": e.id, "status": e.status, "targets": e.resolved, "start": clock::iso_millis(e.start)}))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn action_duration_range() {
        let mut targets = BTreeMap::new();
        targets.insert(
            "t".to_string(),
            Target {
                arns: vec![],
                tags: BTreeMap::new(),
                filters: vec![],
                selection: Selection::All,
            },
        );
        let mk = |d: &str| json!({"actionId": SPOT_ACTION, "parameters": {"durationBeforeInterruption": d}, "targets": {"SpotInstances": "t"}});
        assert!(parse_action("a", &mk("PT2M"), &targets).is_ok());
        assert!(parse_action("a", &mk("PT15M"), &targets).is_ok());
        assert!(parse_action("a", &mk("PT1M"), &targets).is_err());
        assert!(parse_action("a", &mk("PT16M"), &targets).is_err());
        assert!(parse_action("a", &mk("2 minutes"), &targets).is_err());
    }
}
