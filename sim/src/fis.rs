//! AWS FIS over its real REST-JSON protocol, carrying out `aws:ec2:send-spot-instance-interruptions` against the
//! simulated instances.
//!
//! Routes (what aws-sdk-fis and `aws fis` send): `POST/GET /experimentTemplates`, `GET/DELETE
//! /experimentTemplates/{id}`, `POST/GET /experiments`, `GET/DELETE /experiments/{id}`. Errors carry the
//! `x-amzn-ErrorType` header and a `{"message": ...}` body. Timestamps are epoch seconds (the REST-JSON default).
//!
//! This module parses requests into the model's templates and renders its experiments; what an experiment does
//! to the fleet is in `model::fis`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::clock::{epoch_seconds, parse_iso8601_duration, Now};
use crate::model::fis::{
    instance_id_of, rand_id, resolve, Action, Experiment, Filter, Selection, Target, Template,
    MAX_SPOT_TARGETS, SPOT_RESOURCE,
};
use crate::model::Refusal;
use crate::runtime::Sim;

pub const SPOT_ACTION: &str = "aws:ec2:send-spot-instance-interruptions";
const MIN_DURATION: Duration = Duration::from_secs(120);
const MAX_DURATION: Duration = Duration::from_secs(900);

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

impl From<Refusal> for FisError {
    fn from(r: Refusal) -> FisError {
        match r {
            Refusal::NotFound(m) => not_found(m),
            Refusal::WrongState(m) | Refusal::Invalid(m) => validation(m),
        }
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
        let raw = f.get("path").and_then(Value::as_str).unwrap_or_default();
        let values: Vec<&str> = f
            .get("values")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let filter = Filter::parse(raw, &values).ok_or_else(|| {
            validation(format!(
                "Target {name}: filter path {raw} is not supported by spot-sim (State.Name, Placement.AvailabilityZone)"
            ))
        })?;
        filters.push(filter);
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
    // experimentOptions.emptyTargetResolutionMode: "fail" (default) or "skip".
    let skip_empty = doc["experimentOptions"]["emptyTargetResolutionMode"] == "skip";
    let template = Template {
        doc: doc.clone(),
        targets,
        actions,
        skip_empty,
    };
    let st = &mut *sim.lock();
    st.fis
        .add_template(&mut st.fleet, Now::read(), id, template);
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
    let st = &mut *sim.lock();
    let t = st.fis.delete_template(&mut st.fleet, Now::read(), &id)?;
    Ok(ok_json(json!({"experimentTemplate": t.doc})))
}

async fn start_experiment(State(sim): State<Arc<Sim>>, body: Bytes) -> Result<Response, FisError> {
    let m = parse_body(&body)?;
    let tid = str_field(&m, "experimentTemplateId")
        .ok_or_else(|| validation("experimentTemplateId is required"))?;
    let client_token = str_field(&m, "clientToken").map(str::to_string);
    let tags = m.get("tags").cloned().unwrap_or(json!({}));
    let refused = authorize_role(&sim, tid).await;
    let doc = sim.step(|st, now| {
        match st
            .fis
            .start(&mut st.fleet, now, tid, client_token, tags, refused)
        {
            Ok((id, effects)) => (Ok(experiment_json(&sim, &st.fis.experiments[&id])), effects),
            Err(e) => (Err(e), Vec::new()),
        }
    })?;
    Ok(ok_json(json!({"experiment": doc})))
}

/// With an IAM gate (`--authorizer`): may the template's role do what the action does? FIS resolves targets with
/// `ec2:DescribeInstances` and interrupts each with `ec2:SendSpotInstanceInterruptions` on the instance, whose
/// `aws:autoscaling:groupName` tag the role's policy may require (terraform/policies/fis.json.tftpl). Every
/// instance the targets could pick is asked for (the pick itself is random, later). Some(reason): the experiment
/// fails with it, as FIS fails an experiment whose role is refused; an unreachable gate refuses too.
async fn authorize_role(sim: &Arc<Sim>, template_id: &str) -> Option<String> {
    let url = sim.authorizer.get()?;
    let (role, candidates) = {
        let st = sim.lock();
        let tpl = st.fis.templates.get(template_id)?;
        let role = tpl
            .doc
            .get("roleArn")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut ids: Vec<String> = Vec::new();
        for t in tpl.targets.values() {
            let mut all = t.clone();
            all.selection = Selection::All;
            ids.extend(resolve(&st.fleet, &all));
        }
        ids.sort();
        ids.dedup();
        (role, ids)
    };
    let s = &sim.settings;
    let mut asks =
        vec![json!({"principal": role, "action": "ec2:DescribeInstances", "resource": "*"})];
    for id in candidates {
        asks.push(json!({
            "principal": role,
            "action": "ec2:SendSpotInstanceInterruptions",
            "resource": format!("arn:aws:ec2:{}:{}:instance/{id}", s.region, s.account),
            "context": {"aws:ResourceTag/aws:autoscaling:groupName": s.group},
        }));
    }
    let http = reqwest::Client::new();
    for ask in asks {
        let answer: Result<Value, reqwest::Error> = async {
            http.post(url)
                .json(&ask)
                .timeout(Duration::from_secs(10))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await;
        match answer {
            Ok(v) if v["allowed"].as_bool() == Some(true) => {}
            Ok(v) => return Some(v["message"].as_str().unwrap_or("access denied").to_string()),
            Err(e) => return Some(format!("the IAM gate did not answer ({e})")),
        }
    }
    None
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
            json!({"status": run.status.as_str(), "reason": run.reason}),
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
        "state": {"status": e.status.as_str(), "reason": e.reason},
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
        .filter(|e| q.template_id.as_ref().is_none_or(|t| *t == e.template_id))
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
    let st = &mut *sim.lock();
    st.fis.stop(&mut st.fleet, Now::read(), &id)?;
    let e = &st.fis.experiments[&id];
    Ok(ok_json(json!({"experiment": experiment_json(&sim, e)})))
}

#[cfg(test)]
mod tests {
    use super::*;

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
