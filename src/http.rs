//! The one HTTP port: `/metrics` (Prometheus text), `/healthz` (the process is alive) and `/readyz` (taking
//! work: false while draining, paused or blocked).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::telemetry;

/// Serve `/metrics`, `/healthz` and `/readyz` until `stop` fires. Returns the bound address (port 0 works).
pub async fn serve(
    addr: SocketAddr,
    admission: Arc<Admission>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(admission);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(cause = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

/// The exposition, with `order_worker_ready` read from [`Admission`] at this instant: readiness is the drain's
/// state, the gauge only shows it.
async fn metrics(State(admission): State<Arc<Admission>>) -> String {
    metrics::gauge!(telemetry::READY).set(if admission.ready() { 1.0 } else { 0.0 });
    telemetry::render()
}

async fn readyz(State(admission): State<Arc<Admission>>) -> (StatusCode, String) {
    if admission.ready() {
        return (StatusCode::OK, "ready\n".into());
    }
    let blockers = admission.blockers();
    if blockers.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining, paused or not started\n".into(),
        );
    }
    let why: Vec<String> = blockers
        .iter()
        .map(|(service, b)| format!("{service} blocked by {}: {}", b.code, b.detail))
        .collect();
    (StatusCode::SERVICE_UNAVAILABLE, why.join("\n") + "\n")
}
