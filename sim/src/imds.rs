//! One IMDSv2 server per instance, on its own 127.0.0.1 port, as the instance would see 169.254.169.254.
//!
//! Token rules as AWS applies them: `PUT /latest/api/token` with a TTL of 1..21600 seconds (else 400); every GET
//! needs a live token (else 401). Fault injection sits in front of all of it so a worker's retry and back-off
//! paths can be exercised: 500, 403, 429/503, a hang, or a garbage 200 body on the JSON paths.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;

use crate::clock;
use crate::model::fleet::{hex, Fault, Instance, Settings};
use crate::runtime::Sim;

const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const MAX_TTL: u64 = 21_600;

/// The IMDS app of instance `id` (the runtime binds its port and serves it: `runtime::ImdsApp`).
pub fn app(sim: Arc<Sim>, id: String) -> Router {
    Router::new().fallback(handle).with_state((sim, id))
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [("content-type", "text/plain")], body.into()).into_response()
}

fn not_found() -> Response {
    // IMDS answers unknown paths (and not-yet-present notices) with this HTML page.
    (
        StatusCode::NOT_FOUND,
        [("content-type", "text/html")],
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<!DOCTYPE html>\n<html><head><title>404 - Not Found</title></head><body><h1>404 - Not Found</h1></body></html>\n",
    )
        .into_response()
}

/// Paths whose body is JSON: the `malformed` fault garbles exactly these.
fn is_json_path(path: &str) -> bool {
    matches!(
        path,
        "/latest/meta-data/spot/instance-action"
            | "/latest/meta-data/events/recommendations/rebalance"
            | "/latest/dynamic/instance-identity/document"
    )
}

/// Parse the TTL header: an integer 1..=21600, else None (-> 400).
pub fn parse_ttl(v: Option<&str>) -> Option<u64> {
    let n: u64 = v?.trim().parse().ok()?;
    (1..=MAX_TTL).contains(&n).then_some(n)
}

async fn handle(
    State((sim, id)): State<(Arc<Sim>, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path();
    let fault = {
        let st = sim.lock();
        st.fleet
            .get(&id)
            .and_then(|i| i.imds.fault)
            .unwrap_or(Fault::None)
    };
    if fault == Fault::Hang {
        return std::future::pending::<Response>().await;
    }
    if let Some(refused) = injected(fault) {
        return refused;
    }
    if path == TOKEN_PATH {
        return issue_token(&sim, &id, &method, &headers);
    }
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    let st = sim.lock();
    let Some(inst) = st.fleet.get(&id) else {
        return not_found();
    };
    let token_ok = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| inst.token_valid(t, Instant::now()));
    if !token_ok {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    if fault == Fault::Malformed && is_json_path(path) {
        return (
            StatusCode::OK,
            [("content-type", "text/plain")],
            "{\"action\": \"termin\u{0}<html>",
        )
            .into_response();
    }
    document(&sim.settings, inst, path)
}

/// The answer an injected fault gives instead of the document (`Hang` never answers; `Malformed` garbles the
/// document later).
fn injected(fault: Fault) -> Option<Response> {
    match fault {
        Fault::Error500 => Some(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
        )),
        Fault::Forbidden => Some(text(StatusCode::FORBIDDEN, "Forbidden")),
        Fault::Throttle => {
            let status = if fastrand::bool() {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Some(text(status, "Request limit exceeded"))
        }
        Fault::None | Fault::Malformed | Fault::Hang => None,
    }
}

/// `PUT /latest/api/token`: a session token for the TTL asked (IMDSv2).
fn issue_token(sim: &Sim, id: &str, method: &Method, headers: &HeaderMap) -> Response {
    if method != Method::PUT {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    let Some(ttl) = parse_ttl(headers.get(TTL_HEADER).and_then(|v| v.to_str().ok())) else {
        return text(StatusCode::BAD_REQUEST, "Bad Request");
    };
    let token = format!("AQAE{}", hex(52));
    let issued =
        sim.lock()
            .fleet
            .issue_token(Instant::now(), id, token.clone(), Duration::from_secs(ttl));
    if !issued {
        return not_found();
    }
    (
        StatusCode::OK,
        [
            ("content-type", "text/plain"),
            (TTL_HEADER, &ttl.to_string()),
        ],
        token,
    )
        .into_response()
}

/// The document at `path` for this instance, as IMDS serves it.
fn document(s: &Settings, inst: &Instance, path: &str) -> Response {
    let tags = [
        ("Name", "order-worker".to_string()),
        ("aws:autoscaling:groupName", s.group.clone()),
    ];
    let md = path
        .strip_prefix("/latest/meta-data")
        .map(|p| p.trim_start_matches('/'));
    match md {
        Some("") => text(
            StatusCode::OK,
            "autoscaling/\nevents/\ninstance-id\ninstance-type\nplacement/\nspot/\ntags/",
        ),
        Some("instance-id") => text(StatusCode::OK, inst.id.clone()),
        Some("instance-type") => text(StatusCode::OK, s.instance_type.clone()),
        Some("placement/availability-zone") => text(StatusCode::OK, inst.az.clone()),
        Some("placement/region") => text(StatusCode::OK, s.region.clone()),
        Some("spot/instance-action") => match &inst.notice {
            Some(n) => json_ok(
                json!({"action": n.action.as_str(), "time": clock::rfc3339_seconds(n.time)}),
            ),
            None => not_found(),
        },
        Some("spot/termination-time") => match &inst.notice {
            Some(n) => text(StatusCode::OK, clock::rfc3339_seconds(n.time)),
            None => not_found(),
        },
        Some("events/recommendations/rebalance") => match inst.rebalance {
            Some(t) => json_ok(json!({"noticeTime": clock::rfc3339_seconds(t)})),
            None => not_found(),
        },
        Some("autoscaling/target-lifecycle-state") => match inst.target_state {
            Some(t) => text(StatusCode::OK, t.as_str()),
            None => not_found(),
        },
        Some("tags/instance") | Some("tags/instance/") => text(
            StatusCode::OK,
            tags.iter().map(|(k, _)| *k).collect::<Vec<_>>().join("\n"),
        ),
        Some(p) if p.starts_with("tags/instance/") => {
            let key = &p["tags/instance/".len()..];
            match tags.iter().find(|(k, _)| *k == key) {
                Some((_, v)) => text(StatusCode::OK, v.clone()),
                None => not_found(),
            }
        }
        _ if path == "/latest/dynamic/instance-identity/document" => json_ok(json!({
            "accountId": s.account,
            "availabilityZone": inst.az,
            "instanceId": inst.id,
            "instanceType": s.instance_type,
            "region": s.region,
            "pendingTime": clock::rfc3339_seconds(inst.launched_at),
            "architecture": "arm64",
            "imageId": "ami-0123456789abcdef0",
            "privateIp": "127.0.0.1",
            "version": "2017-09-30",
        })),
        _ => not_found(),
    }
}

fn json_ok(v: serde_json::Value) -> Response {
    // IMDS serves these JSON documents as text/plain.
    (
        StatusCode::OK,
        [("content-type", "text/plain")],
        Body::from(v.to_string()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rules() {
        assert_eq!(parse_ttl(Some("21600")), Some(21_600));
        assert_eq!(parse_ttl(Some("1")), Some(1));
        assert_eq!(parse_ttl(Some("0")), None);
        assert_eq!(parse_ttl(Some("21601")), None);
        assert_eq!(parse_ttl(Some("abc")), None);
        assert_eq!(parse_ttl(Some("-5")), None);
        assert_eq!(parse_ttl(None), None);
    }
}
