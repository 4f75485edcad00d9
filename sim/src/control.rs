//! The `/_sim/` control API (JSON): what a test or a chaos script does to the region that AWS would do on its own
//! schedule (interrupt, recommend a rebalance, scale in), plus fault injection and the status document.
//! Each handler is one model step; the runtime carries out its effects before the handler answers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::clock::{self, Now};
use crate::model::fleet::{Event, EventKind, Fault};
use crate::model::{Effect, Refusal, Signal};
use crate::runtime::Sim;

pub fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/_sim/status", get(status))
        .route("/_sim/instances", post(launch))
        .route("/_sim/instances/{id}/interrupt", post(interrupt))
        .route("/_sim/instances/{id}/rebalance", post(rebalance))
        .route("/_sim/instances/{id}/scale-in", post(scale_in))
        .route("/_sim/instances/{id}/imds-fault", post(imds_fault))
        .route("/_sim/instances/{id}/signal", post(signal))
        .route("/_sim/shutdown", post(shutdown))
        .route("/_sim/launch-template", post(launch_template))
}

/// A refused control call: status and a message, as `{"error": ...}`.
#[derive(Debug)]
struct CtlError(StatusCode, String);

impl IntoResponse for CtlError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({"error": self.1}))).into_response()
    }
}

impl From<Refusal> for CtlError {
    fn from(r: Refusal) -> CtlError {
        let status = match r {
            Refusal::NotFound(_) => StatusCode::NOT_FOUND,
            Refusal::WrongState(_) => StatusCode::CONFLICT,
            Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
        };
        CtlError(status, r.message().to_string())
    }
}

type Reply = Result<Response, CtlError>;

/// A refusal, ready to `return`.
fn err<T>(status: StatusCode, msg: impl Into<String>) -> Result<T, CtlError> {
    Err(CtlError(status, msg.into()))
}

/// Parse an optional JSON body; an empty body means all defaults.
fn body<T: for<'de> Deserialize<'de> + Default>(b: &[u8]) -> Result<T, CtlError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(b)
        .map_err(|e| CtlError(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

async fn status(State(sim): State<Arc<Sim>>) -> Response {
    axum::Json(status_json(&sim)).into_response()
}

fn event_json(e: &Event) -> Value {
    json!({"at": clock::iso_millis(e.at), "instance": e.instance, "kind": e.kind, "event": e.what})
}

/// The status document (also rendered as the `--status-every` table).
pub fn status_json(sim: &Sim) -> Value {
    let st = sim.lock();
    let s = &sim.settings;
    let instances: Vec<Value> = st
        .fleet
        .instances
        .iter()
        // Shown once its IMDS server listens (a moment after launch), so every instance shown has its URL.
        .filter(|i| i.imds_url.is_some())
        .map(|i| {
            json!({
                "id": i.id,
                "arn": s.instance_arn(&i.id),
                "state": i.lifecycle.ec2_state().as_str(),
                "lifecycle_state": i.lifecycle.as_str(),
                "target_lifecycle_state": i.target_state.map(|t| t.as_str()),
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
                "interruption_notice": i.notice.as_ref().map(|n| json!({"action": n.action.as_str(), "time": clock::rfc3339_seconds(n.time)})),
                "interruption_scheduled": i.interruption.as_ref().map(|x| clock::rfc3339_seconds(x.end.wall)),
                "lifecycle_action_token": i.hook.as_ref().map(|h| h.token.clone()),
                "replaces": i.replaces,
                "version": i.version,
                "imds_fault": i.imds.fault.unwrap_or(Fault::None).as_str(),
                "events": i.events.iter().map(event_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    let experiments: Vec<Value> = st
        .fis
        .experiments
        .values()
        .map(|e| json!({"id": e.id, "status": e.status.as_str(), "targets": e.resolved, "start": clock::iso_millis(e.start)}))
        .collect();
    json!({
        "group": s.group,
        "hook": s.hook,
        "desired": st.fleet.desired,
        "capacity": st.fleet.capacity(),
        "time_scale": sim.clock.scale(),
        "capacity_rebalance": s.capacity_rebalance,
        "instances": instances,
        "timeline": st.fleet.timeline.iter().map(event_json).collect::<Vec<_>>(),
        "experiments": experiments,
        "min_size": s.min_size,
        "max_size": s.max_size,
        "version": st.fleet.version,
        "launch_templates": st.fleet.templates.iter().map(|t| json!({"version": t.version, "cmd": t.cmd, "args": t.args, "description": t.description})).collect::<Vec<_>>(),
        "scaling": st.fleet.scaling.as_ref().map(|t| json!({
            "target": t.policy.target,
            "metric": match t.policy.metric { crate::model::scaling::MetricKind::Backlog => "backlog", crate::model::scaling::MetricKind::FifoAware => "fifo-aware" },
            "min_size": t.policy.min_size,
            "max_size": t.policy.max_size,
            "instance_warmup_seconds": s.instance_warmup.as_secs(),
            "datapoints": t.history.iter().map(|d| json!({
                "at": clock::iso_millis(d.at),
                "visible": d.visible,
                "in_service": d.in_service,
                "metric": d.metric,
                "alarm": d.alarm,
                "desired": d.desired,
                "counted": d.counted,
                "warming": d.warming,
                "busy": d.busy,
            })).collect::<Vec<_>>(),
        })),
        "instance_refreshes": st.fleet.refreshes.iter().map(|r| json!({
            "id": r.id,
            "status": r.status.as_str(),
            "version": r.version,
            "min_healthy_percentage": r.prefs.min_healthy_percentage,
            "instance_warmup_seconds": r.prefs.instance_warmup.as_secs(),
            "skip_matching": r.prefs.skip_matching,
            "start": clock::iso_millis(r.start),
            "end": r.end.map(clock::iso_millis),
            "to_replace": r.to_replace,
            "replaced": r.replaced,
            "percentage_complete": r.percentage_complete(&st.fleet),
        })).collect::<Vec<_>>(),
    })
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct TemplateBody {
    /// The worker command of the new version (default: version 1's).
    cmd: Option<std::path::PathBuf>,
    /// Its arguments (not merged with version 1's).
    args: Vec<String>,
    description: String,
    /// Launch it from now on (as Terraform's apply sets the group's version); default true.
    make_default: Option<bool>,
}

/// A new launch template version: another worker command or other flags. What `aws ec2
/// create-launch-template-version` + UpdateAutoScalingGroup do; spot-sim serves no EC2 API.
async fn launch_template(State(sim): State<Arc<Sim>>, b: Bytes) -> Reply {
    let b: TemplateBody = body(&b)?;
    if let Some(c) = &b.cmd {
        if !c.is_file() {
            return err(
                StatusCode::BAD_REQUEST,
                format!("cmd {} is not a file", c.display()),
            );
        }
    }
    let make_default = b.make_default.unwrap_or(true);
    let v = sim.step(|st, now| {
        let cmd = b.cmd.clone().or_else(|| st.fleet.templates[0].cmd.clone());
        (
            st.fleet.add_template(
                now,
                cmd,
                b.args.clone(),
                b.description.clone(),
                make_default,
            ),
            Vec::new(),
        )
    });
    Ok((StatusCode::CREATED, axum::Json(json!({"version": v}))).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct LaunchBody {
    /// No process: the caller runs the worker against the returned IMDS URL.
    external: bool,
}

/// Launch an instance registered InService at once; like AttachInstances, it raises the desired capacity by one
/// so the group does not scale something else in to make room.
async fn launch(State(sim): State<Arc<Sim>>, b: Bytes) -> Reply {
    let b: LaunchBody = body(&b)?;
    let id = sim.step(|st, now| st.fleet.attach(now, b.external));
    let st = sim.lock();
    match st.fleet.get(&id) {
        Some(i) => {
            let v = json!({"id": id, "imds_url": i.imds_url, "metrics_addr": i.metrics_addr, "pid": i.pid});
            Ok((StatusCode::CREATED, axum::Json(v)).into_response())
        }
        // Its IMDS server could not bind; the timeline says why.
        None => {
            let why = st.fleet.timeline.last().map(|e| e.what.clone());
            err(StatusCode::INTERNAL_SERVER_ERROR, why.unwrap_or_default())
        }
    }
}

/// A model step that may be refused: no effects then.
fn refusable<T>(r: Result<(T, Vec<Effect>), Refusal>) -> (Result<T, Refusal>, Vec<Effect>) {
    match r {
        Ok((t, effects)) => (Ok(t), effects),
        Err(e) => (Err(e), Vec::new()),
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct InterruptBody {
    /// Simulated seconds until termination (default 120, the Spot notice).
    in_seconds: Option<f64>,
    /// Also recommend a rebalance at once.
    rebalance: bool,
}

/// A direct Spot interruption: the notice at once, with `time` = now + in_seconds (scaled), termination then.
async fn interrupt(State(sim): State<Arc<Sim>>, Path(id): Path<String>, b: Bytes) -> Reply {
    let b: InterruptBody = body(&b)?;
    let secs = b.in_seconds.unwrap_or(120.0);
    if !(secs.is_finite() && secs >= 0.0) {
        return err(StatusCode::BAD_REQUEST, "in_seconds must be >= 0");
    }
    let end = sim.step(|st, now| {
        let end = sim.clock.deadline_after(now, Duration::from_secs_f64(secs));
        refusable(st.interrupt(now, &id, end, b.rebalance).map(|e| (end, e)))
    })?;
    Ok(
        axum::Json(json!({"id": id, "terminate_at": clock::rfc3339_seconds(end.wall)}))
            .into_response(),
    )
}

async fn rebalance(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Reply {
    let t = sim.step(|st, now| refusable(st.fleet.rebalance(now, &id)))?;
    Ok(axum::Json(json!({"id": id, "noticeTime": t.map(clock::rfc3339_seconds)})).into_response())
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ScaleInBody {
    /// Lower the desired capacity by one (a scale-in), so no replacement is launched.
    decrement: bool,
}

impl Default for ScaleInBody {
    fn default() -> Self {
        ScaleInBody { decrement: true }
    }
}

async fn scale_in(State(sim): State<Arc<Sim>>, Path(id): Path<String>, b: Bytes) -> Reply {
    let b: ScaleInBody = body(&b)?;
    let token = sim.lock().fleet.scale_in(Now::read(), &id, b.decrement)?;
    Ok(axum::Json(
        json!({"id": id, "lifecycle_state": "Terminating:Wait", "lifecycle_action_token": token}),
    )
    .into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct FaultBody {
    mode: Option<String>,
    /// Forget every token now, so the next GET gets 401.
    expire_tokens: bool,
}

async fn imds_fault(State(sim): State<Arc<Sim>>, Path(id): Path<String>, b: Bytes) -> Reply {
    let b: FaultBody = body(&b)?;
    let mode = match b.mode.as_deref().map(Fault::parse) {
        Some(None) => {
            return err(
                StatusCode::BAD_REQUEST,
                "mode must be one of none, error500, hang, malformed, forbidden, throttle",
            )
        }
        Some(Some(m)) => Some(m),
        None => None,
    };
    let fault = sim
        .lock()
        .fleet
        .set_imds_fault(Now::read(), &id, mode, b.expire_tokens)?;
    Ok(axum::Json(json!({"id": id, "mode": fault.as_str()})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalBody {
    signal: String,
}

async fn signal(State(sim): State<Arc<Sim>>, Path(id): Path<String>, b: Bytes) -> Reply {
    let b: SignalBody = match serde_json::from_slice(&b) {
        Ok(b) => b,
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("body must be {{\"signal\": \"TERM|KILL|STOP|CONT\"}}: {e}"),
            )
        }
    };
    let Some(sig) = Signal::parse(&b.signal) else {
        return err(
            StatusCode::BAD_REQUEST,
            format!("unknown signal {}", b.signal),
        );
    };
    let pid = sim.lock().fleet.pid_of(&id)?;
    if let Err(e) = sim.signal(pid, sig) {
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("kill({pid}, {}): {e}", b.signal),
        );
    }
    let note = format!("signal {} to pid {pid} (control API)", b.signal);
    sim.lock()
        .fleet
        .event(Now::read(), Some(&id), EventKind::Signal, note);
    Ok(axum::Json(json!({"id": id, "pid": pid, "signal": b.signal})).into_response())
}

async fn shutdown(State(sim): State<Arc<Sim>>) -> Response {
    sim.shutdown.notify_one();
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"shutting_down": true})),
    )
        .into_response()
}
