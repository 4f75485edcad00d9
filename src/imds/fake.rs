//! A scripted IMDSv2 server over real HTTP, for the tests of everything that reads instance metadata (the
//! client, the watcher, the lifecycle hook's group lookup): it issues tokens, checks them on every GET (401 if
//! unknown), and answers each path from a script (the last reply of a script repeats; unscripted paths are 404).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use super::{ImdsClient, HEADER_TOKEN, HEADER_TOKEN_TTL, PATH_TOKEN};
use crate::telemetry::{LocalRecorder, IMDS_ERRORS, IMDS_NOTICES};

/// One scripted answer for a path.
#[derive(Debug, Clone)]
pub enum Reply {
    Body(&'static str),
    Status(u16),
    /// Never answer (to exercise the timeout).
    Hang,
}

/// A fake IMDSv2: issues tokens, checks them on GETs (401 if unknown), and answers each path
/// from a script (the last reply of a script repeats; unscripted paths are 404).
#[derive(Default)]
pub struct Fake {
    scripts: StdMutex<HashMap<String, VecDeque<Reply>>>,
    token_script: StdMutex<VecDeque<Reply>>,
    valid_token: StdMutex<Option<String>>,
    pub tokens_issued: AtomicU32,
    hits: StdMutex<HashMap<String, u32>>,
    pub bad_ttl_requests: AtomicU32,
}

impl Fake {
    pub fn script(&self, path: &str, replies: &[Reply]) {
        self.scripts
            .lock()
            .unwrap()
            .insert(path.to_owned(), replies.iter().cloned().collect());
    }
    pub fn script_token(&self, replies: &[Reply]) {
        *self.token_script.lock().unwrap() = replies.iter().cloned().collect();
    }
    pub fn revoke_tokens(&self) {
        *self.valid_token.lock().unwrap() = None;
    }
    pub fn hits(&self, path: &str) -> u32 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
    fn next(queue: &mut VecDeque<Reply>) -> Option<Reply> {
        if queue.len() > 1 {
            queue.pop_front()
        } else {
            queue.front().cloned()
        }
    }
}

async fn respond(reply: Reply) -> axum::response::Response {
    use axum::response::IntoResponse;
    match reply {
        Reply::Body(b) => b.into_response(),
        Reply::Status(s) => axum::http::StatusCode::from_u16(s).unwrap().into_response(),
        Reply::Hang => std::future::pending().await,
    }
}

async fn handle(
    axum::extract::State(fake): axum::extract::State<Arc<Fake>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = uri.path().to_owned();
    *fake.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    if path == PATH_TOKEN {
        if method != axum::http::Method::PUT {
            return axum::http::StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        let scripted = Fake::next(&mut fake.token_script.lock().unwrap());
        if let Some(reply) = scripted {
            if !matches!(reply, Reply::Body(_)) {
                return respond(reply).await;
            }
        }
        let ttl = headers
            .get(HEADER_TOKEN_TTL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if !matches!(ttl, Some(1..=21_600)) {
            fake.bad_ttl_requests.fetch_add(1, Ordering::SeqCst);
            return axum::http::StatusCode::BAD_REQUEST.into_response();
        }
        let n = fake.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("token-{n}");
        *fake.valid_token.lock().unwrap() = Some(token.clone());
        return ([(HEADER_TOKEN_TTL, ttl.unwrap().to_string())], token).into_response();
    }
    let presented = headers.get(HEADER_TOKEN).and_then(|v| v.to_str().ok());
    let valid = fake.valid_token.lock().unwrap().clone();
    if presented.is_none() || presented != valid.as_deref() {
        return axum::http::StatusCode::UNAUTHORIZED.into_response();
    }
    let reply = fake
        .scripts
        .lock()
        .unwrap()
        .get_mut(&path)
        .and_then(Fake::next)
        .unwrap_or(Reply::Status(404));
    respond(reply).await
}

/// Starts the fake on an ephemeral port; the server task dies with the test runtime.
pub async fn serve() -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake::default());
    let addr = serve_router(
        axum::Router::new()
            .fallback(handle)
            .with_state(fake.clone()),
    )
    .await;
    (fake, format!("http://{addr}/"))
}

/// Serve a test's fake on an ephemeral port of 127.0.0.1 (the metadata fake here, the Auto Scaling fake of the
/// lifecycle tests); the task dies with the test runtime.
pub async fn serve_router(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A client with short timeouts and backoff so failure tests finish fast.
pub fn fast(endpoint: &str) -> ImdsClient {
    ImdsClient::builder(endpoint)
        .timeout(Duration::from_millis(300))
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .build()
        .unwrap()
}

pub const DEADLINE: Duration = Duration::from_secs(5);

pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("deadline exceeded")
}

/// Errors of one kind counted in the test's own recorder.
pub fn error_count(m: &LocalRecorder, kind: &str) -> u64 {
    m.snapshot().value(IMDS_ERRORS, &[("kind", kind)]) as u64
}

/// Notices of one kind counted in the test's own recorder.
pub fn notice_count(m: &LocalRecorder, kind: &str) -> u64 {
    m.snapshot().value(IMDS_NOTICES, &[("kind", kind)]) as u64
}
