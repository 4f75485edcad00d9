//! The `/_sim/` control API (JSON): what a test or a chaos script does to the region that AWS would do on its own
//! schedule (interrupt, recommend a rebalance, scale in), plus fault injection and the status document.

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

use crate::fleet::{Fault, Lifecycle, Sim};
use crate::{clock, fis, process};

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
}

/// A refused control call: status and a message, as `{"error": ...}`.
#[derive(Debug)]
struct CtlError(StatusCode, String);

impl IntoResponse for CtlError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({"error": self.1}))).into_response()
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
    let mut v = sim.status_json();
    v["experiments"] = Value::Array(fis::summary(&sim.lock()));
    axum::Json(v).into_response()
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
    let mut st = sim.lock();
    match sim.launch(&mut st, b.external, true, None, "control API") {
        Ok((id, imds_url)) => {
            st.desired += 1;
            let i = st.get(&id).expect("just launched");
            let v = json!({"id": id, "imds_url": imds_url, "metrics_addr": i.metrics_addr, "pid": i.pid});
            Ok((StatusCode::CREATED, axum::Json(v)).into_response())
        }
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

fn find(sim: &Sim, id: &str) -> Result<usize, CtlError> {
    sim.lock()
        .find(id)
        .ok_or_else(|| CtlError(StatusCode::NOT_FOUND, format!("no instance {id}")))
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
    let idx = find(&sim, &id)?;
    let mut st = sim.lock();
    if st.instances[idx].lifecycle == Lifecycle::Terminated {
        return err(StatusCode::CONFLICT, format!("{id} is terminated"));
    }
    let end = sim
        .clock
        .deadline_after(clock::Now::read(), Duration::from_secs_f64(secs));
    if b.rebalance {
        sim.recommend_rebalance(&mut st, idx, "control API");
    }
    sim.schedule_interruption(&mut st, idx, end, None);
    // The notice shows at once for a direct interrupt, whatever the lead.
    if let Some(i) = st.instances[idx].interruption.as_mut() {
        i.notice_at = std::time::Instant::now();
    }
    drop(st);
    // Apply now rather than on the next tick, so the caller can read the notice as soon as this returns.
    sim.tick();
    Ok(
        axum::Json(json!({"id": id, "terminate_at": clock::rfc3339_seconds(end.wall)}))
            .into_response(),
    )
}

async fn rebalance(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Reply {
    let idx = find(&sim, &id)?;
    let mut st = sim.lock();
    sim.recommend_rebalance(&mut st, idx, "control API");
    let t = st.instances[idx].rebalance.map(clock::rfc3339_seconds);
    Ok(axum::Json(json!({"id": id, "noticeTime": t})).into_response())
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
    let idx = find(&sim, &id)?;
    let mut st = sim.lock();
    if !st.instances[idx].lifecycle.counts_as_capacity() {
        let state = st.instances[idx].lifecycle.as_str();
        return err(
            StatusCode::CONFLICT,
            format!("{id} is {state}, not Pending or InService"),
        );
    }
    if b.decrement {
        st.desired = st.desired.saturating_sub(1);
    }
    sim.begin_termination(&mut st, idx, "scale in (control API)");
    let token = st.instances[idx].hook.as_ref().map(|h| h.token.clone());
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
    let idx = find(&sim, &id)?;
    let mut st = sim.lock();
    let inst = &mut st.instances[idx];
    if let Some(m) = mode {
        inst.imds.fault = (m != Fault::None).then_some(m);
    }
    if b.expire_tokens {
        inst.imds.tokens.clear();
    }
    let fault = inst.imds.fault.unwrap_or(Fault::None).as_str();
    st.event(
        Some(&id),
        format!(
            "imds fault {fault}{}",
            if b.expire_tokens {
                ", tokens expired"
            } else {
                ""
            }
        ),
    );
    Ok(axum::Json(json!({"id": id, "mode": fault})).into_response())
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
    let Some(sig) = process::parse_signal(&b.signal) else {
        return err(
            StatusCode::BAD_REQUEST,
            format!("unknown signal {}", b.signal),
        );
    };
    let idx = find(&sim, &id)?;
    let mut st = sim.lock();
    let Some(pid) = st.instances[idx].pid else {
        return err(StatusCode::CONFLICT, format!("{id} has no running process"));
    };
    if let Err(e) = process::signal(pid, sig) {
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("kill({pid}, {}): {e}", b.signal),
        );
    }
    st.event(
        Some(&id),
        format!("signal {} to pid {pid} (control API)", b.signal),
    );
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
