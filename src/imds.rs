//! Instance metadata (IMDSv2): a small client, pure parsers for the documents we read, and the
//! watcher that turns metadata into [`Notice`]s for the drain.
//!
//! Why our own client instead of the SDK's: the watcher polls three paths every second for the
//! life of the instance, so it must classify every outcome precisely (404 is "nothing yet", 401 is
//! "refresh the token", 403 is "metadata is off") and count errors by kind for the metrics, while
//! never giving up. A plain HTTP client with explicit rules keeps that visible and testable.
//!
//! Rules this module follows (see the AWS facts guide):
//! - Token: `PUT /latest/api/token` with a TTL of [`DEFAULT_TOKEN_TTL`]; cached and shared by
//!   clones; refreshed before it expires (one refresh at a time); a 401 drops it and the request
//!   is retried once with a fresh token.
//! - Transport errors, timeouts, 429/503 (throttling) and other 5xx are retried a bounded number of
//!   times with a short, jittered exponential backoff.
//! - Never through an HTTP proxy: IMDS is link-local, a proxy from the environment would break it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::telemetry::{IMDS_ERRORS, IMDS_NOTICES};

/// The instance metadata endpoint on EC2 (IPv4).
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Spot interruption notice: 404 until the instance is marked for interruption.
pub const PATH_INSTANCE_ACTION: &str = "/latest/meta-data/spot/instance-action";
/// Rebalance recommendation: 404 until EC2 recommends a rebalance.
pub const PATH_REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";
/// Auto Scaling target lifecycle state: 404 before the first transition.
pub const PATH_TARGET_LIFECYCLE: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";
/// This instance's id.
pub const PATH_INSTANCE_ID: &str = "/latest/meta-data/instance-id";
/// Prefix of instance tags (only present when tags in metadata are enabled).
pub const PATH_TAGS_PREFIX: &str = "/latest/meta-data/tags/instance/";
const PATH_TOKEN: &str = "/latest/api/token";

const HEADER_TOKEN_TTL: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const HEADER_TOKEN: &str = "x-aws-ec2-metadata-token";

/// Token lifetime we ask for: the maximum IMDS allows, so a healthy instance refreshes rarely.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(21_600);
/// Per-request timeout. IMDS answers in milliseconds; a request that takes a second is lost
/// (typically a PUT dropped by the hop limit inside a container).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Attempts per call (first try included) for retryable failures.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// First retry delay; doubled each retry up to [`DEFAULT_BACKOFF_CAP`], with jitter.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Largest delay between two attempts of one call.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_millis(500);
/// Refresh the token when less than this is left (or a tenth of the TTL, whichever is smaller),
/// so a token never expires between our check and IMDS's.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(120);

/// While metadata keeps failing, repeat the warning at most this often.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// A 403 means metadata is turned off: an operator decision that will not change by itself, so
/// after the first clear error it is only repeated this rarely.
const FORBIDDEN_WARN_EVERY: Duration = Duration::from_secs(600);
/// Longest pause between polls while every poll fails (to stop hammering a throttling IMDS); the
/// interruption notice gives two minutes, so a few seconds are affordable.
const FAILING_POLL_CAP: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a document could not be parsed. Carries a human-readable reason only: the input may be
/// arbitrary bytes, and callers log it rather than branch on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

/// Everything that can go wrong talking to instance metadata. `Ok(None)` (a 404) is not an error.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// The configured endpoint is not a usable `http://host[:port]` URL.
    #[error("invalid instance metadata endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No answer within the per-request timeout.
    #[error("instance metadata request {path} timed out")]
    Timeout {
        /// The metadata path requested.
        path: String,
        /// The underlying HTTP client error.
        #[source]
        source: reqwest::Error,
    },
    /// Connection refused/reset, broken body, and similar.
    #[error("instance metadata request {path} failed in transport")]
    Transport {
        /// The metadata path requested.
        path: String,
        /// The underlying HTTP client error.
        #[source]
        source: reqwest::Error,
    },
    /// 401 even with a freshly fetched token.
    #[error("instance metadata rejected the token for {path} (401) even after a refresh")]
    Unauthorized {
        /// The metadata path requested.
        path: String,
    },
    /// 403: instance metadata is turned off (or blocked) for this instance.
    #[error(
        "instance metadata refused {path} with 403: the metadata service is turned off for this \
         instance (enable http-endpoint, or run with --imds-disabled off EC2)"
    )]
    Forbidden {
        /// The metadata path requested.
        path: String,
    },
    /// 429 or 503: IMDS throttles requests per instance.
    #[error("instance metadata throttled {path} (HTTP {status})")]
    Throttled {
        /// The metadata path requested.
        path: String,
        /// The HTTP status.
        status: u16,
    },
    /// Any other 5xx.
    #[error("instance metadata server error on {path} (HTTP {status})")]
    ServerError {
        /// The metadata path requested.
        path: String,
        /// The HTTP status.
        status: u16,
    },
    /// A status we have no rule for (for example 400 on the token request).
    #[error("unexpected HTTP {status} from instance metadata for {path}")]
    UnexpectedStatus {
        /// The metadata path requested.
        path: String,
        /// The HTTP status.
        status: u16,
    },
    /// The document at `path` did not parse.
    #[error("malformed instance metadata at {path}")]
    Malformed {
        /// The metadata path requested.
        path: String,
        /// What did not parse.
        #[source]
        source: ParseError,
    },
}

impl ImdsError {
    /// Every [`ImdsError::kind`], for the metrics: each is exported from the start, at 0.
    pub const KINDS: [&'static str; 7] = [
        "timeout",
        "transport",
        "unauthorized",
        "forbidden",
        "throttled",
        "server_error",
        "malformed",
    ];

    /// Short label used as the metrics `kind` of `order_worker_imds_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ImdsError::Timeout { .. } => "timeout",
            ImdsError::Transport { .. } | ImdsError::InvalidEndpoint { .. } => "transport",
            ImdsError::Unauthorized { .. } => "unauthorized",
            ImdsError::Forbidden { .. } => "forbidden",
            ImdsError::Throttled { .. } => "throttled",
            ImdsError::ServerError { .. } => "server_error",
            // An unknown status is a protocol surprise, like a body we cannot read.
            ImdsError::UnexpectedStatus { .. } | ImdsError::Malformed { .. } => "malformed",
        }
    }

    /// Count this error (one failed HTTP attempt, or a document that did not parse).
    fn count(&self) {
        metrics::counter!(IMDS_ERRORS, "kind" => self.kind()).increment(1);
    }

    /// Whether trying again soon may help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ImdsError::Timeout { .. }
                | ImdsError::Transport { .. }
                | ImdsError::Throttled { .. }
                | ImdsError::ServerError { .. }
        )
    }

    fn from_reqwest(path: &str, source: reqwest::Error) -> Self {
        let path = path.to_owned();
        if source.is_timeout() {
            ImdsError::Timeout { path, source }
        } else {
            ImdsError::Transport { path, source }
        }
    }
}

/// Maps a non-success, non-404 HTTP status to its error. 2xx and 404 are handled by the caller.
fn status_error(path: &str, status: u16) -> ImdsError {
    let path = path.to_owned();
    match status {
        401 => ImdsError::Unauthorized { path },
        403 => ImdsError::Forbidden { path },
        // IMDS signals throttling with 429; 503 is what a busy metadata proxy answers. Both mean
        // "slow down", not "broken".
        429 | 503 => ImdsError::Throttled { path, status },
        500..=599 => ImdsError::ServerError { path, status },
        _ => ImdsError::UnexpectedStatus { path, status },
    }
}

// ---------------------------------------------------------------------------------------------
// Documents and parsers (pure)
// ---------------------------------------------------------------------------------------------

/// What EC2 will do to a Spot instance at the interruption time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpotAction {
    /// The instance will be terminated.
    Terminate,
    /// The instance will be stopped.
    Stop,
    /// The instance will be hibernated.
    Hibernate,
}

impl SpotAction {
    /// The value as IMDS spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SpotAction::Terminate => "terminate",
            SpotAction::Stop => "stop",
            SpotAction::Hibernate => "hibernate",
        }
    }
}

impl fmt::Display for SpotAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Spot interruption notice (`spot/instance-action`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceAction {
    /// What will happen.
    pub action: SpotAction,
    /// When it will happen (about two minutes after the notice appears).
    pub time: OffsetDateTime,
}

/// A rebalance recommendation (`events/recommendations/rebalance`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rebalance {
    /// When EC2 emitted the recommendation.
    pub notice_time: OffsetDateTime,
}

/// The Auto Scaling target lifecycle states IMDS reports; anything else is malformed.
pub const LIFECYCLE_STATES: &[&str] = &[
    "InService",
    "Terminated",
    "Standby",
    "Detached",
    "Warmed:Running",
    "Warmed:Stopped",
    "Warmed:Hibernated",
    "Warmed:Terminated",
];

fn parse_time(field: &str, value: &str) -> Result<OffsetDateTime, ParseError> {
    OffsetDateTime::parse(value, &Rfc3339).map_err(|e| {
        ParseError(format!(
            "field {field:?}: {value:?} is not an RFC 3339 time: {e}"
        ))
    })
}

/// Parses `{"action":"terminate"|"stop"|"hibernate","time":"2026-11-25T08:22:00Z"}`. Unknown
/// extra fields are ignored (AWS may add some); an unknown action is an error.
pub fn parse_instance_action(body: &str) -> Result<InstanceAction, ParseError> {
    #[derive(Deserialize)]
    struct Raw {
        action: String,
        time: String,
    }
    let raw: Raw =
        serde_json::from_str(body).map_err(|e| ParseError(format!("invalid JSON: {e}")))?;
    let action = match raw.action.as_str() {
        "terminate" => SpotAction::Terminate,
        "stop" => SpotAction::Stop,
        "hibernate" => SpotAction::Hibernate,
        other => {
            return Err(ParseError(format!(
                "unknown action {:?}",
                crate::order::truncate(other, 64)
            )))
        }
    };
    Ok(InstanceAction {
        action,
        time: parse_time("time", &raw.time)?,
    })
}

/// Parses `{"noticeTime":"2026-11-25T08:17:00Z"}`.
pub fn parse_rebalance(body: &str) -> Result<Rebalance, ParseError> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "noticeTime")]
        notice_time: String,
    }
    let raw: Raw =
        serde_json::from_str(body).map_err(|e| ParseError(format!("invalid JSON: {e}")))?;
    Ok(Rebalance {
        notice_time: parse_time("noticeTime", &raw.notice_time)?,
    })
}

/// Parses the plain-text target lifecycle state (surrounding whitespace ignored); only the values
/// in [`LIFECYCLE_STATES`] are accepted.
pub fn parse_lifecycle_state(body: &str) -> Result<String, ParseError> {
    let state = body.trim();
    if LIFECYCLE_STATES.contains(&state) {
        Ok(state.to_owned())
    } else {
        // Bounded so a garbage body cannot produce a giant log line.
        let shown: String = state.chars().take(64).collect();
        Err(ParseError(format!("unknown lifecycle state {shown:?}")))
    }
}

/// Percent-encodes a tag key for use as one path segment. Tag keys such as
/// `aws:autoscaling:groupName` pass through unchanged.
fn encode_segment(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@+=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Delay before retry number `retry` (0 for the first retry): exponential from `base`, capped at
/// `cap`, with "equal jitter" so it stays within `[d/2, d]`. `unit` is a random number in `[0, 1)`.
fn backoff(retry: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(retry.min(16)));
    let d = exp.min(cap);
    d / 2 + d.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
}

/// The poll interval with ±10 % jitter, so a fleet started together does not poll in lockstep.
fn jittered(poll: Duration, unit: f64) -> Duration {
    poll.mul_f64(0.9 + 0.2 * unit.clamp(0.0, 1.0))
}

/// Pause before the next poll: `poll` while metadata answers; doubling per failing poll (capped at
/// the larger of `poll` and [`FAILING_POLL_CAP`]) while it keeps failing.
fn poll_delay(poll: Duration, failing_polls: u32, unit: f64) -> Duration {
    let base = if failing_polls == 0 {
        poll
    } else {
        let cap = poll.max(FAILING_POLL_CAP);
        poll.saturating_mul(2u32.saturating_pow(failing_polls.min(8)))
            .min(cap)
    };
    jittered(base, unit)
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A cached session token.
#[derive(Debug, Clone)]
struct Token {
    /// The opaque token value sent in `X-aws-ec2-metadata-token`.
    value: String,
    /// When to fetch a new one (before the real expiry, see [`TOKEN_REFRESH_MARGIN`]).
    refresh_at: Instant,
}

/// Tunables of [`ImdsClient`]; the defaults suit EC2, tests shorten them.
#[derive(Debug, Clone)]
pub struct ImdsClientBuilder {
    /// Base URL, e.g. `http://169.254.169.254`.
    endpoint: String,
    /// Per-request timeout (token PUT and each GET separately).
    timeout: Duration,
    /// Attempts per call for retryable failures, first included (at least 1).
    attempts: u32,
    /// First retry delay.
    backoff_base: Duration,
    /// Largest retry delay.
    backoff_cap: Duration,
    /// Token TTL requested from IMDS (1 s ..= 6 h).
    token_ttl: Duration,
}

impl ImdsClientBuilder {
    /// Per-request timeout (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Attempts per call for retryable failures, first included (default [`DEFAULT_ATTEMPTS`];
    /// values below 1 mean 1).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Retry backoff: first delay and cap (defaults [`DEFAULT_BACKOFF_BASE`],
    /// [`DEFAULT_BACKOFF_CAP`]).
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_cap = cap.max(base);
        self
    }

    /// Token TTL to request (default [`DEFAULT_TOKEN_TTL`]); clamped to IMDS's 1 s ..= 21600 s.
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl.clamp(Duration::from_secs(1), DEFAULT_TOKEN_TTL);
        self
    }

    /// Validates the endpoint and builds the client.
    pub fn build(self) -> Result<ImdsClient, ImdsError> {
        let invalid = |reason: String| ImdsError::InvalidEndpoint {
            endpoint: self.endpoint.clone(),
            reason,
        };
        let trimmed = self.endpoint.trim().trim_end_matches('/');
        let url = reqwest::Url::parse(trimmed).map_err(|e| invalid(e.to_string()))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(invalid(format!("scheme {:?} is not http", url.scheme())));
        }
        if url.host_str().map_or(true, str::is_empty) {
            return Err(invalid("no host".to_owned()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("query or fragment not allowed".to_owned()));
        }
        let http = reqwest::Client::builder()
            // IMDS is link-local: never send it to a proxy configured in the environment.
            .no_proxy()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .build()
            .map_err(|e| invalid(format!("cannot build HTTP client: {e}")))?;
        Ok(ImdsClient {
            http,
            base: Arc::from(trimmed),
            token: Arc::new(Mutex::new(None)),
            settings: self,
        })
    }
}

/// An IMDSv2 client. Cheap to clone; clones share the HTTP connection pool and the token.
#[derive(Debug, Clone)]
pub struct ImdsClient {
    /// Plain-HTTP client with the per-request timeout set.
    http: reqwest::Client,
    /// Endpoint without trailing slash; paths (starting with `/`) are appended.
    base: Arc<str>,
    /// The cached token. A mutex, not a lock-free cell, so that only one refresh runs at a time
    /// and concurrent requests wait for it instead of fetching tokens of their own.
    token: Arc<Mutex<Option<Token>>>,
    /// Timeouts, retries, TTL.
    settings: ImdsClientBuilder,
}

/// Outcome of one HTTP attempt that did not fail.
enum Fetched {
    /// 2xx with this body.
    Body(String),
    /// 404: the document does not exist (yet).
    NotFound,
}

impl ImdsClient {
    /// A client with default settings for `endpoint` (e.g. `http://169.254.169.254`, or a local
    /// simulator; a trailing slash is tolerated).
    pub fn new(endpoint: &str) -> Result<Self, ImdsError> {
        Self::builder(endpoint).build()
    }

    /// A builder to change timeouts, retries or the token TTL.
    pub fn builder(endpoint: &str) -> ImdsClientBuilder {
        ImdsClientBuilder {
            endpoint: endpoint.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_cap: DEFAULT_BACKOFF_CAP,
            token_ttl: DEFAULT_TOKEN_TTL,
        }
    }

    /// The endpoint, without trailing slash.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// GETs `path` (starting with `/`). `Ok(None)` on 404. Retries transport errors, timeouts,
    /// throttling and 5xx up to the configured attempts; on 401 fetches a new token and retries
    /// once.
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let mut retries = 0u32;
        let mut refreshed_after_401 = false;
        loop {
            let mut used = None;
            let err = match self.get_once(path, &mut used).await {
                Ok(Fetched::Body(body)) => return Ok(Some(body)),
                Ok(Fetched::NotFound) => return Ok(None),
                Err(err) => err,
            };
            err.count();
            match err {
                ImdsError::Unauthorized { .. } if !refreshed_after_401 => {
                    // The token expired or IMDS restarted: drop it and retry once with a new one.
                    // This retry does not count against `attempts`: it is a protocol step.
                    refreshed_after_401 = true;
                    tracing::debug!(path, "instance metadata answered 401; refreshing the token");
                    let mut cached = self.token.lock().await;
                    // Only drop the token we used: a concurrent request may already have fetched
                    // a new one, and dropping that would cost another PUT.
                    if cached.as_ref().map(|t| &t.value) == used.as_ref() {
                        *cached = None;
                    }
                }
                err if err.is_retryable() && retries + 1 < self.settings.attempts => {
                    let delay = backoff(
                        retries,
                        self.settings.backoff_base,
                        self.settings.backoff_cap,
                        fastrand::f64(),
                    );
                    retries += 1;
                    tracing::debug!(path, error = %err, ?delay, retries, "retrying IMDS");
                    tokio::time::sleep(delay).await;
                }
                err => return Err(err),
            }
        }
    }

    /// This instance's id.
    pub async fn instance_id(&self) -> Result<Option<String>, ImdsError> {
        Ok(self.get(PATH_INSTANCE_ID).await?.and_then(non_empty))
    }

    /// An instance tag, if tags in metadata are enabled and the tag exists.
    pub async fn tag(&self, key: &str) -> Result<Option<String>, ImdsError> {
        let path = format!("{PATH_TAGS_PREFIX}{}", encode_segment(key));
        Ok(self.get(&path).await?.and_then(non_empty))
    }

    /// The Spot interruption notice, if the instance is marked for interruption.
    pub async fn spot_instance_action(&self) -> Result<Option<InstanceAction>, ImdsError> {
        self.get_parsed(PATH_INSTANCE_ACTION, parse_instance_action)
            .await
    }

    /// The rebalance recommendation, if there is one.
    pub async fn rebalance(&self) -> Result<Option<Rebalance>, ImdsError> {
        self.get_parsed(PATH_REBALANCE, parse_rebalance).await
    }

    /// The Auto Scaling target lifecycle state, once the instance has had a transition.
    pub async fn target_lifecycle_state(&self) -> Result<Option<String>, ImdsError> {
        self.get_parsed(PATH_TARGET_LIFECYCLE, parse_lifecycle_state)
            .await
    }

    async fn get_parsed<T>(
        &self,
        path: &str,
        parse: fn(&str) -> Result<T, ParseError>,
    ) -> Result<Option<T>, ImdsError> {
        match self.get(path).await? {
            None => Ok(None),
            Some(body) => parse(&body).map(Some).map_err(|source| {
                let err = ImdsError::Malformed {
                    path: path.to_owned(),
                    source,
                };
                err.count();
                err
            }),
        }
    }

    /// One attempt: obtain a token (cached or fresh), then GET.
    /// `used` receives the token sent, so a 401 can drop exactly that one.
    async fn get_once(&self, path: &str, used: &mut Option<String>) -> Result<Fetched, ImdsError> {
        let token = self.token().await?;
        let response = self
            .http
            .get(format!("{}{}", self.base, path))
            .header(HEADER_TOKEN, used.insert(token).as_str())
            .send()
            .await
            .map_err(|e| ImdsError::from_reqwest(path, e))?;
        let status = response.status().as_u16();
        if status == 404 {
            return Ok(Fetched::NotFound);
        }
        if !(200..300).contains(&status) {
            return Err(status_error(path, status));
        }
        let body = response
            .text()
            .await
            .map_err(|e| ImdsError::from_reqwest(path, e))?;
        Ok(Fetched::Body(body))
    }

    /// The current token, fetching one if there is none or it is due for refresh. Holding the
    /// mutex across the PUT is deliberate: concurrent callers wait for the one refresh.
    async fn token(&self) -> Result<String, ImdsError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref() {
            if Instant::now() < token.refresh_at {
                return Ok(token.value.clone());
            }
        }
        *cached = None;
        // Measured from before the request, so the real expiry is never earlier than we think.
        let requested_at = Instant::now();
        let ttl = self.settings.token_ttl;
        let response = self
            .http
            .put(format!("{}{}", self.base, PATH_TOKEN))
            .header(HEADER_TOKEN_TTL, ttl.as_secs().to_string())
            .send()
            .await
            .map_err(|e| ImdsError::from_reqwest(PATH_TOKEN, e))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            // 404/401 on the token path are not "nothing yet" or "refresh": report them as is.
            return Err(match status {
                401 | 404 => ImdsError::UnexpectedStatus {
                    path: PATH_TOKEN.to_owned(),
                    status,
                },
                _ => status_error(PATH_TOKEN, status),
            });
        }
        // IMDS echoes the granted TTL; trust it if it is shorter than what we asked for.
        let granted = response
            .headers()
            .get(HEADER_TOKEN_TTL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .map_or(ttl, |g| g.min(ttl));
        let value = response
            .text()
            .await
            .map_err(|e| ImdsError::from_reqwest(PATH_TOKEN, e))?
            .trim()
            .to_owned();
        if value.is_empty() {
            return Err(ImdsError::Malformed {
                path: PATH_TOKEN.to_owned(),
                source: ParseError("empty token".to_owned()),
            });
        }
        let margin = TOKEN_REFRESH_MARGIN.min(granted / 10);
        *cached = Some(Token {
            value: value.clone(),
            refresh_at: requested_at + granted - margin,
        });
        Ok(value)
    }
}

fn non_empty(s: String) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Watcher
// ---------------------------------------------------------------------------------------------

/// A distinct event seen in instance metadata, sent once by [`watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A Spot interruption notice (a new one if the action or time changed).
    Interruption(InstanceAction),
    /// A rebalance recommendation (a new one if the notice time changed).
    Rebalance(Rebalance),
    /// The target lifecycle state: the first one seen and each change. Only `Terminated` calls for
    /// a drain; the consumer decides.
    TargetLifecycle(String),
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rfc3339 = |t: &OffsetDateTime| t.format(&Rfc3339).unwrap_or_else(|_| t.to_string());
        match self {
            Notice::Interruption(a) => {
                write!(f, "spot interruption: {} at {}", a.action, rfc3339(&a.time))
            }
            Notice::Rebalance(r) => {
                write!(f, "rebalance recommendation at {}", rfc3339(&r.notice_time))
            }
            Notice::TargetLifecycle(s) => write!(f, "target lifecycle state {s}"),
        }
    }
}

impl Notice {
    /// Every [`Notice::kind`], for the metrics: each is exported from the start, at 0.
    pub const KINDS: [&'static str; 3] = ["interruption", "rebalance", "target_lifecycle"];

    /// The metrics `kind` label.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::Interruption(_) => "interruption",
            Notice::Rebalance(_) => "rebalance",
            Notice::TargetLifecycle(_) => "target_lifecycle",
        }
    }
}

/// Remembers what was sent so that a document seen on every poll is sent once, and so that metadata whose
/// times move on every poll (AWS's own metadata mock does this) cannot turn one event into a stream.
#[derive(Debug, Default)]
pub struct NoticeFilter {
    /// The interruption notice in force: the earliest time seen.
    interruption: Option<InstanceAction>,
    /// The rebalance recommendation, once seen: it stays in the metadata until the instance goes, and a new
    /// `noticeTime` on the same document is not a new recommendation.
    rebalance: Option<Rebalance>,
    /// Last lifecycle state sent.
    lifecycle: Option<String>,
}

impl NoticeFilter {
    /// True if `notice` is news (and remembers it): the first rebalance recommendation; an interruption notice
    /// that is the first, names another action, or brings the time forward (a later time changes nothing: the
    /// drain keeps the earliest deadline); a lifecycle state that differs from the last. A document that
    /// disappears (404) and comes back unchanged is still the same event.
    pub fn admit(&mut self, notice: &Notice) -> bool {
        match notice {
            Notice::Interruption(a) => {
                let news = match &self.interruption {
                    None => true,
                    Some(last) => a.action != last.action || a.time < last.time,
                };
                if news {
                    self.interruption = Some(a.clone());
                }
                news
            }
            Notice::Rebalance(r) => {
                if self.rebalance.is_some() {
                    return false;
                }
                self.rebalance = Some(r.clone());
                true
            }
            Notice::TargetLifecycle(s) => {
                if self.lifecycle.as_ref() == Some(s) {
                    return false;
                }
                self.lifecycle = Some(s.clone());
                true
            }
        }
    }
}

/// What to log about a failing request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogDecision {
    /// First failure after a healthy period: log it.
    First,
    /// A kind of failure not yet reported in this outage (e.g. 403 turned into timeouts): log it,
    /// so the log says what is failing now.
    NewKind,
    /// Still failing and the repeat interval has passed: log a reminder.
    Repeat,
    /// Stay quiet.
    Quiet,
}

/// Rate limits the "metadata is failing" log so a long outage gives one line per interval (and
/// one per new kind of failure), not one per poll.
#[derive(Debug, Default)]
struct FailureLog {
    /// Failed requests since the last healthy poll.
    failures: u64,
    /// When the current run of failures began.
    since: Option<Instant>,
    /// When we last logged about it.
    last_logged: Option<Instant>,
    /// Error kinds already reported in this outage.
    kinds_logged: Vec<&'static str>,
}

impl FailureLog {
    fn on_failure(&mut self, now: Instant, kind: &'static str) -> LogDecision {
        self.failures += 1;
        let every = if kind == "forbidden" {
            FORBIDDEN_WARN_EVERY
        } else {
            WARN_EVERY
        };
        let decision = match self.last_logged {
            None => {
                self.since = Some(now);
                LogDecision::First
            }
            Some(_) if !self.kinds_logged.contains(&kind) => LogDecision::NewKind,
            Some(at) if now.saturating_duration_since(at) >= every => LogDecision::Repeat,
            Some(_) => return LogDecision::Quiet,
        };
        self.last_logged = Some(now);
        if !self.kinds_logged.contains(&kind) {
            self.kinds_logged.push(kind);
        }
        decision
    }

    /// A fully healthy poll: returns (failures, outage length) if we were failing.
    fn on_success(&mut self, now: Instant) -> Option<(u64, Duration)> {
        let since = self.since.take()?;
        let failures = std::mem::take(&mut self.failures);
        self.last_logged = None;
        self.kinds_logged.clear();
        Some((failures, now.saturating_duration_since(since)))
    }

    fn log(&self, decision: LogDecision, path: &str, err: &ImdsError) {
        let since = self
            .since
            .map(|s| Instant::now().saturating_duration_since(s))
            .unwrap_or_default();
        let failing_for = humantime::format_duration(Duration::from_secs(since.as_secs()));
        match (decision, err) {
            (LogDecision::Quiet, _) => {}
            (LogDecision::First | LogDecision::NewKind, ImdsError::Forbidden { .. }) => {
                tracing::error!(
                    path,
                    error = %err,
                    "instance metadata is turned off (403): Spot interruption notices and \
                     lifecycle state cannot be seen; still polling in case it is turned back on"
                )
            }
            (_, _) => tracing::warn!(
                path,
                error = %err,
                kind = err.kind(),
                failures = self.failures,
                failing_for = %failing_for,
                "instance metadata unavailable; still polling"
            ),
        }
    }
}

/// Polls the Spot interruption notice, the rebalance recommendation and the target lifecycle
/// state every `poll` (±10 % jitter) and sends each distinct event once on `tx`.
///
/// Never returns on metadata errors: it logs them (rate limited), counts them
/// (`order_worker_imds_errors_total`), slows down while everything fails, and keeps polling. Returns when
/// `cancel` fires or the receiver is dropped.
pub async fn watch(
    client: ImdsClient,
    poll: Duration,
    tx: mpsc::Sender<Notice>,
    cancel: CancellationToken,
) {
    // A scraper sees every kind at 0 while metadata is watched, so "no errors" is a value, not a gap.
    for kind in ImdsError::KINDS {
        metrics::counter!(IMDS_ERRORS, "kind" => kind).increment(0);
    }
    for kind in Notice::KINDS {
        metrics::counter!(IMDS_NOTICES, "kind" => kind).increment(0);
    }
    let mut filter = NoticeFilter::default();
    let mut failures = FailureLog::default();
    let mut failing_polls = 0u32;
    tracing::info!(
        endpoint = client.endpoint(),
        ?poll,
        "watching instance metadata"
    );
    loop {
        let started = Instant::now();
        // The three paths are independent: ask concurrently so a slow one does not delay the
        // interruption notice.
        let polled = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tx.closed() => return,
            polled = async {
                tokio::join!(
                    client.spot_instance_action(),
                    client.target_lifecycle_state(),
                    client.rebalance(),
                )
            } => polled,
        };
        let (action, lifecycle, rebalance) = polled;

        let mut notices = Vec::new();
        let mut errors = Vec::new();
        match action {
            Ok(found) => notices.extend(found.map(Notice::Interruption)),
            Err(e) => errors.push((PATH_INSTANCE_ACTION, e)),
        }
        match lifecycle {
            Ok(found) => notices.extend(found.map(Notice::TargetLifecycle)),
            Err(e) => errors.push((PATH_TARGET_LIFECYCLE, e)),
        }
        match rebalance {
            Ok(found) => notices.extend(found.map(Notice::Rebalance)),
            Err(e) => errors.push((PATH_REBALANCE, e)),
        }

        let now = Instant::now();
        if errors.is_empty() {
            failing_polls = 0;
            if let Some((count, outage)) = failures.on_success(now) {
                let outage = Duration::from_millis(outage.as_millis() as u64);
                tracing::info!(
                    failures = count,
                    outage = %humantime::format_duration(outage),
                    "instance metadata recovered"
                );
            }
        } else {
            // Slow down only when IMDS itself is struggling or refusing; a malformed document says
            // nothing about load, and polling it slower would only delay the other paths.
            if errors
                .iter()
                .any(|(_, e)| !matches!(e, ImdsError::Malformed { .. }))
            {
                failing_polls = failing_polls.saturating_add(1);
            } else {
                failing_polls = 0;
            }
            for (path, err) in &errors {
                let decision = failures.on_failure(now, err.kind());
                failures.log(decision, path, err);
            }
        }

        // Send what the paths that did answer have to say, even when another path failed.
        for notice in notices {
            if !filter.admit(&notice) {
                continue;
            }
            metrics::counter!(IMDS_NOTICES, "kind" => notice.kind()).increment(1);
            tracing::info!(kind = notice.kind(), %notice, "instance metadata notice");
            tokio::select! {
                _ = cancel.cancelled() => return,
                sent = tx.send(notice) => if sent.is_err() { return },
            }
        }

        let next = started + poll_delay(poll, failing_polls, fastrand::f64());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tx.closed() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::LocalRecorder;
    use std::collections::{HashMap, VecDeque};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex as StdMutex;
    use time::macros::datetime;

    // ----- parsers -----

    #[test]
    fn parses_instance_action() {
        let a = parse_instance_action(r#"{"action":"terminate","time":"2026-11-25T08:22:00Z"}"#)
            .unwrap();
        assert_eq!(a.action, SpotAction::Terminate);
        assert_eq!(a.time, datetime!(2026-11-25 08:22:00 UTC));
        let a = parse_instance_action(
            r#" {"time":"2026-11-25T08:22:00Z", "action":"hibernate", "extra": 1} "#,
        )
        .unwrap();
        assert_eq!(a.action, SpotAction::Hibernate);
        assert_eq!(
            parse_instance_action(r#"{"action":"stop","time":"2026-11-25T08:22:00+01:00"}"#)
                .unwrap()
                .time,
            datetime!(2026-11-25 07:22:00 UTC)
        );
    }

    #[test]
    fn rejects_bad_instance_actions() {
        for body in [
            "",
            "null",
            "[]",
            "{",
            r#"{"action":"terminate"}"#,
            r#"{"time":"2026-11-25T08:22:00Z"}"#,
            r#"{"action":"reboot","time":"2026-11-25T08:22:00Z"}"#,
            r#"{"action":"Terminate","time":"2026-11-25T08:22:00Z"}"#,
            r#"{"action":"terminate","time":"tomorrow"}"#,
            r#"{"action":"terminate","time":"2026-11-25 08:22:00"}"#,
            r#"{"action":"terminate","time":1764058920}"#,
            r#"{"action":7,"time":"2026-11-25T08:22:00Z"}"#,
        ] {
            assert!(parse_instance_action(body).is_err(), "accepted {body:?}");
        }
    }

    #[test]
    fn parses_rebalance() {
        let r = parse_rebalance(r#"{"noticeTime":"2026-11-25T08:17:00Z"}"#).unwrap();
        assert_eq!(r.notice_time, datetime!(2026-11-25 08:17:00 UTC));
        for body in [
            "",
            "{}",
            r#"{"notice_time":"2026-11-25T08:17:00Z"}"#,
            r#"{"noticeTime":"soon"}"#,
        ] {
            assert!(parse_rebalance(body).is_err(), "accepted {body:?}");
        }
    }

    #[test]
    fn parses_lifecycle_states() {
        for s in LIFECYCLE_STATES {
            assert_eq!(parse_lifecycle_state(s).unwrap(), *s);
        }
        assert_eq!(parse_lifecycle_state("Terminated\n").unwrap(), "Terminated");
        assert_eq!(parse_lifecycle_state("  InService ").unwrap(), "InService");
        for bad in [
            "",
            "terminated",
            "Warmed:",
            "Warmed:Pending",
            "Pending:Wait",
            "In Service",
        ] {
            assert!(parse_lifecycle_state(bad).is_err(), "accepted {bad:?}");
        }
        let long = "x".repeat(10_000);
        assert!(parse_lifecycle_state(&long).unwrap_err().0.len() < 200);
    }

    #[test]
    fn parsers_never_panic_on_odd_input() {
        // A cheap property test: random bytes and mutated valid documents must give Ok or Err.
        let seeds = [
            r#"{"action":"terminate","time":"2026-11-25T08:22:00Z"}"#,
            r#"{"noticeTime":"2026-11-25T08:17:00Z"}"#,
            "Warmed:Hibernated",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..5_000 {
            let mut bytes = seeds[rng.usize(..seeds.len())].as_bytes().to_vec();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..bytes.len());
                match rng.u8(..3) {
                    0 => bytes[i] = rng.u8(..),
                    1 => {
                        bytes.remove(i);
                    }
                    _ => bytes.insert(i, rng.u8(..)),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let s = String::from_utf8_lossy(&bytes);
            let _ = parse_instance_action(&s);
            let _ = parse_rebalance(&s);
            let _ = parse_lifecycle_state(&s);
        }
    }

    #[test]
    fn encodes_tag_keys() {
        assert_eq!(
            encode_segment("aws:autoscaling:groupName"),
            "aws:autoscaling:groupName"
        );
        assert_eq!(encode_segment("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn classifies_statuses() {
        assert_eq!(status_error("/p", 401).kind(), "unauthorized");
        assert_eq!(status_error("/p", 403).kind(), "forbidden");
        assert_eq!(status_error("/p", 429).kind(), "throttled");
        assert_eq!(status_error("/p", 503).kind(), "throttled");
        assert_eq!(status_error("/p", 500).kind(), "server_error");
        assert_eq!(status_error("/p", 502).kind(), "server_error");
        assert_eq!(status_error("/p", 400).kind(), "malformed");
        assert!(status_error("/p", 500).is_retryable());
        assert!(status_error("/p", 429).is_retryable());
        assert!(!status_error("/p", 403).is_retryable());
        assert!(!status_error("/p", 401).is_retryable());
        assert!(!status_error("/p", 400).is_retryable());
    }

    #[test]
    fn rejects_bad_endpoints() {
        for bad in ["", "169.254.169.254", "ftp://x", "http://", "http://h?x=1"] {
            assert!(
                matches!(ImdsClient::new(bad), Err(ImdsError::InvalidEndpoint { .. })),
                "accepted {bad:?}"
            );
        }
        let c = ImdsClient::new("http://127.0.0.1:1234//").unwrap();
        assert_eq!(c.endpoint(), "http://127.0.0.1:1234");
        assert_eq!(
            ImdsClient::new(DEFAULT_ENDPOINT).unwrap().endpoint(),
            DEFAULT_ENDPOINT
        );
    }

    // ----- backoff, jitter, dedup, log rate limiting -----

    #[test]
    fn backoff_is_bounded_and_grows() {
        let base = Duration::from_millis(50);
        let cap = Duration::from_millis(500);
        let mut rng = fastrand::Rng::with_seed(1);
        for retry in 0..40 {
            let full = base
                .saturating_mul(2u32.saturating_pow(retry.min(16)))
                .min(cap);
            for _ in 0..100 {
                let d = backoff(retry, base, cap, rng.f64());
                assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
            }
            assert_eq!(backoff(retry, base, cap, 0.0), full / 2);
            assert_eq!(backoff(retry, base, cap, 1.0), full);
        }
        assert_eq!(backoff(0, base, cap, 1.0), base);
        assert_eq!(backoff(1, base, cap, 1.0), base * 2);
        assert_eq!(backoff(u32::MAX, base, cap, 0.5), cap / 2 + cap / 4);
        // The worst case of one call with default settings stays well under a poll budget.
        let worst: Duration = (0..DEFAULT_ATTEMPTS - 1)
            .map(|r| backoff(r, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP, 1.0))
            .sum::<Duration>()
            + DEFAULT_TIMEOUT * DEFAULT_ATTEMPTS * 2;
        assert!(worst < Duration::from_secs(8), "{worst:?}");
    }

    #[test]
    fn poll_jitter_and_slowdown_are_bounded() {
        let poll = Duration::from_secs(1);
        let mut rng = fastrand::Rng::with_seed(2);
        for _ in 0..1000 {
            let d = poll_delay(poll, 0, rng.f64());
            assert!(d >= poll.mul_f64(0.9) && d <= poll.mul_f64(1.1), "{d:?}");
        }
        assert!(poll_delay(poll, 1, 0.5) > poll_delay(poll, 0, 0.5));
        for n in [1, 3, 10, u32::MAX] {
            assert!(poll_delay(poll, n, 1.0) <= FAILING_POLL_CAP.mul_f64(1.1));
        }
        // A poll already slower than the cap is never made faster.
        let slow = Duration::from_secs(30);
        assert_eq!(poll_delay(slow, 5, 0.5), slow);
    }

    fn action(t: OffsetDateTime) -> Notice {
        Notice::Interruption(InstanceAction {
            action: SpotAction::Terminate,
            time: t,
        })
    }

    #[test]
    fn notices_display_readably() {
        let t = datetime!(2026-11-25 08:22:00 UTC);
        assert_eq!(
            action(t).to_string(),
            "spot interruption: terminate at 2026-11-25T08:22:00Z"
        );
        assert_eq!(
            Notice::Rebalance(Rebalance { notice_time: t }).to_string(),
            "rebalance recommendation at 2026-11-25T08:22:00Z"
        );
        assert_eq!(
            Notice::TargetLifecycle("Terminated".into()).to_string(),
            "target lifecycle state Terminated"
        );
    }

    #[test]
    fn filter_sends_each_distinct_event_once() {
        let mut f = NoticeFilter::default();
        let t1 = datetime!(2026-11-25 08:22:00 UTC);
        let t2 = datetime!(2026-11-25 08:24:00 UTC);
        assert!(f.admit(&action(t1)));
        assert!(!f.admit(&action(t1)));
        assert!(!f.admit(&action(t1)));
        // A time that moves later on every poll (AWS's metadata mock) is not news; an earlier one is.
        assert!(!f.admit(&action(t2)), "a later time is not a new event");
        let t0 = datetime!(2026-11-25 08:20:00 UTC);
        assert!(
            f.admit(&action(t0)),
            "an earlier time brings the deadline forward"
        );
        assert!(!f.admit(&action(t1)));
        assert!(f.admit(&Notice::Interruption(InstanceAction {
            action: SpotAction::Stop,
            time: t2
        })));
        let r = Notice::Rebalance(Rebalance { notice_time: t1 });
        assert!(f.admit(&r));
        assert!(!f.admit(&r));
        assert!(
            !f.admit(&Notice::Rebalance(Rebalance { notice_time: t2 })),
            "a moved noticeTime is the same recommendation"
        );
        let s = |v: &str| Notice::TargetLifecycle(v.to_owned());
        assert!(f.admit(&s("InService")), "first state is sent");
        assert!(!f.admit(&s("InService")));
        assert!(f.admit(&s("Terminated")));
        assert!(!f.admit(&s("Terminated")));
        assert!(f.admit(&s("InService")));
    }

    #[test]
    fn failure_log_is_rate_limited() {
        let t0 = Instant::now();
        let mut log = FailureLog::default();
        assert_eq!(log.on_success(t0), None, "nothing to report when healthy");
        assert_eq!(log.on_failure(t0, "timeout"), LogDecision::First);
        let mut decisions = Vec::new();
        // One failure per second for 95 s: First, then a reminder every 30 s.
        for s in 1..=95 {
            decisions.push(log.on_failure(t0 + Duration::from_secs(s), "timeout"));
        }
        let loud: Vec<_> = decisions
            .iter()
            .enumerate()
            .filter(|(_, d)| **d != LogDecision::Quiet)
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(loud, vec![30, 60, 90]);
        assert_eq!(
            log.on_success(t0 + Duration::from_secs(100)),
            Some((96, Duration::from_secs(100)))
        );
        assert_eq!(log.on_success(t0 + Duration::from_secs(101)), None);
        // After recovery the next failure is "first" again.
        assert_eq!(
            log.on_failure(t0 + Duration::from_secs(102), "timeout"),
            LogDecision::First
        );
        // 403 is repeated only every ten minutes.
        let mut log = FailureLog::default();
        assert_eq!(log.on_failure(t0, "forbidden"), LogDecision::First);
        let loud = (1..=1200)
            .filter(|s| {
                log.on_failure(t0 + Duration::from_secs(*s), "forbidden") != LogDecision::Quiet
            })
            .count();
        assert_eq!(loud, 2);

        // A new kind of failure is reported at once, once; alternating kinds do not flood.
        let mut log = FailureLog::default();
        assert_eq!(log.on_failure(t0, "forbidden"), LogDecision::First);
        let t = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(log.on_failure(t(100), "forbidden"), LogDecision::Quiet);
        assert_eq!(log.on_failure(t(200), "timeout"), LogDecision::NewKind);
        assert_eq!(log.on_failure(t(300), "server_error"), LogDecision::NewKind);
        for i in 0..100 {
            let kind = ["timeout", "server_error", "forbidden"][i % 3];
            assert_eq!(log.on_failure(t(400 + i as u64), kind), LogDecision::Quiet);
        }
        assert_eq!(log.on_failure(t(30_300), "timeout"), LogDecision::Repeat);
    }

    // ----- a scripted IMDS over real HTTP -----

    /// One scripted answer for a path.
    #[derive(Debug, Clone)]
    enum Reply {
        Body(&'static str),
        Status(u16),
        /// Never answer (to exercise the timeout).
        Hang,
    }

    /// A fake IMDSv2: issues tokens, checks them on GETs (401 if unknown), and answers each path
    /// from a script (the last reply of a script repeats; unscripted paths are 404).
    #[derive(Default)]
    struct Fake {
        scripts: StdMutex<HashMap<String, VecDeque<Reply>>>,
        token_script: StdMutex<VecDeque<Reply>>,
        valid_token: StdMutex<Option<String>>,
        tokens_issued: AtomicU32,
        hits: StdMutex<HashMap<String, u32>>,
        bad_ttl_requests: AtomicU32,
    }

    impl Fake {
        fn script(&self, path: &str, replies: &[Reply]) {
            self.scripts
                .lock()
                .unwrap()
                .insert(path.to_owned(), replies.iter().cloned().collect());
        }
        fn script_token(&self, replies: &[Reply]) {
            *self.token_script.lock().unwrap() = replies.iter().cloned().collect();
        }
        fn revoke_tokens(&self) {
            *self.valid_token.lock().unwrap() = None;
        }
        fn hits(&self, path: &str) -> u32 {
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
    async fn serve() -> (Arc<Fake>, String) {
        let fake = Arc::new(Fake::default());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, format!("http://{addr}/"))
    }

    /// A client with short timeouts and backoff so failure tests finish fast.
    fn fast(endpoint: &str) -> ImdsClient {
        ImdsClient::builder(endpoint)
            .timeout(Duration::from_millis(300))
            .backoff(Duration::from_millis(5), Duration::from_millis(20))
            .build()
            .unwrap()
    }

    const DEADLINE: Duration = Duration::from_secs(5);

    async fn within<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(DEADLINE, f)
            .await
            .expect("deadline exceeded")
    }

    #[tokio::test]
    async fn reads_documents_with_one_cached_token() {
        let m = LocalRecorder::install();
        let (fake, url) = serve().await;
        fake.script(PATH_INSTANCE_ID, &[Reply::Body("i-0123456789abcdef0\n")]);
        fake.script(
            "/latest/meta-data/tags/instance/aws:autoscaling:groupName",
            &[Reply::Body("order-workers")],
        );
        fake.script(
            PATH_INSTANCE_ACTION,
            &[Reply::Body(
                r#"{"action":"terminate","time":"2026-11-25T08:22:00Z"}"#,
            )],
        );
        fake.script(PATH_TARGET_LIFECYCLE, &[Reply::Body("Terminated")]);
        let c = fast(&url);
        within(async {
            assert_eq!(
                c.instance_id().await.unwrap().as_deref(),
                Some("i-0123456789abcdef0")
            );
            assert_eq!(
                c.tag("aws:autoscaling:groupName").await.unwrap().as_deref(),
                Some("order-workers")
            );
            assert_eq!(c.tag("absent").await.unwrap(), None);
            assert_eq!(
                c.spot_instance_action().await.unwrap().unwrap().action,
                SpotAction::Terminate
            );
            assert_eq!(c.rebalance().await.unwrap(), None, "404 is nothing yet");
            assert_eq!(
                c.target_lifecycle_state().await.unwrap().as_deref(),
                Some("Terminated")
            );
        })
        .await;
        assert_eq!(fake.tokens_issued.load(Ordering::SeqCst), 1);
        assert_eq!(fake.tokens_issued.load(Ordering::SeqCst), 1);
        assert_eq!(fake.bad_ttl_requests.load(Ordering::SeqCst), 0);
        assert_eq!(m.snapshot().sum(IMDS_ERRORS), 0.0);
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_token_fetch() {
        let (fake, url) = serve().await;
        let c = fast(&url);
        within(async {
            let results = futures_join_all(&c, 16).await;
            assert!(results.iter().all(|r| matches!(r, Ok(None))));
        })
        .await;
        assert_eq!(fake.tokens_issued.load(Ordering::SeqCst), 1);
    }

    async fn futures_join_all(c: &ImdsClient, n: usize) -> Vec<Result<Option<String>, ImdsError>> {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let c = c.clone();
            set.spawn(async move { c.get(PATH_REBALANCE).await });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn refreshes_the_token_on_401_and_retries_once() {
        let m = LocalRecorder::install();
        let (fake, url) = serve().await;
        fake.script(PATH_INSTANCE_ID, &[Reply::Body("i-1")]);
        let c = fast(&url);
        within(async {
            assert_eq!(c.instance_id().await.unwrap().as_deref(), Some("i-1"));
            fake.revoke_tokens();
            assert_eq!(c.instance_id().await.unwrap().as_deref(), Some("i-1"));
        })
        .await;
        assert_eq!(fake.tokens_issued.load(Ordering::SeqCst), 2);
        assert_eq!(fake.tokens_issued.load(Ordering::SeqCst), 2);
        assert_eq!(error_count(&m, "unauthorized"), 1);
    }

    #[tokio::test]
    async fn concurrent_401s_fetch_one_new_token() {
        let (fake, url) = serve().await;
        let c = fast(&url);
        within(c.get(PATH_REBALANCE)).await.unwrap();
        fake.revoke_tokens();
        within(async {
            let results = futures_join_all(&c, 16).await;
            assert!(results.iter().all(|r| matches!(r, Ok(None))), "{results:?}");
        })
        .await;
        assert_eq!(fake.tokens_issued.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn persistent_401_is_an_error_not_a_loop() {
        let (fake, url) = serve().await;
        // The path itself answers 401 even with a valid token.
        fake.script(PATH_INSTANCE_ID, &[Reply::Status(401)]);
        let c = fast(&url);
        let err = within(c.instance_id()).await.unwrap_err();
        assert!(matches!(err, ImdsError::Unauthorized { .. }), "{err:?}");
        assert_eq!(fake.hits(PATH_INSTANCE_ID), 2, "one retry with a new token");
        assert_eq!(fake.tokens_issued.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn refreshes_a_token_before_it_expires() {
        let m = LocalRecorder::install();
        let (fake, url) = serve().await;
        let c = ImdsClient::builder(&url)
            .token_ttl(Duration::from_secs(1))
            .build()
            .unwrap();
        within(async {
            c.get(PATH_REBALANCE).await.unwrap();
            // A 1 s token is refreshed 0.1 s before expiry; wait past that point.
            tokio::time::sleep(Duration::from_millis(950)).await;
            c.get(PATH_REBALANCE).await.unwrap();
        })
        .await;
        assert_eq!(fake.tokens_issued.load(Ordering::SeqCst), 2);
        assert_eq!(error_count(&m, "unauthorized"), 0);
    }

    #[tokio::test]
    async fn forbidden_is_reported_not_retried() {
        let m = LocalRecorder::install();
        let (fake, url) = serve().await;
        fake.script_token(&[Reply::Status(403)]);
        let c = fast(&url);
        let err = within(c.spot_instance_action()).await.unwrap_err();
        assert!(matches!(err, ImdsError::Forbidden { .. }), "{err:?}");
        assert_eq!(fake.hits(PATH_TOKEN), 1);
        assert_eq!(error_count(&m, "forbidden"), 1);

        // 403 on the document itself too.
        let (fake, url) = serve().await;
        fake.script(PATH_INSTANCE_ACTION, &[Reply::Status(403)]);
        let c = fast(&url);
        let err = within(c.spot_instance_action()).await.unwrap_err();
        assert!(matches!(err, ImdsError::Forbidden { .. }), "{err:?}");
        assert_eq!(fake.hits(PATH_INSTANCE_ACTION), 1);
    }

    #[tokio::test]
    async fn retries_server_errors_and_throttling() {
        let m = LocalRecorder::install();
        let (fake, url) = serve().await;
        fake.script(
            PATH_INSTANCE_ID,
            &[Reply::Status(500), Reply::Status(429), Reply::Body("i-2")],
        );
        let c = fast(&url);
        assert_eq!(
            within(c.instance_id()).await.unwrap().as_deref(),
            Some("i-2")
        );
        assert_eq!(fake.hits(PATH_INSTANCE_ID), 3);
        assert_eq!(error_count(&m, "server_error"), 1);
        assert_eq!(error_count(&m, "throttled"), 1);

        // A token endpoint that fails once is retried too.
        let (fake, url) = serve().await;
        fake.script_token(&[Reply::Status(503), Reply::Body("")]);
        fake.script(PATH_INSTANCE_ID, &[Reply::Body("i-3")]);
        let c = fast(&url);
        assert_eq!(
            within(c.instance_id()).await.unwrap().as_deref(),
            Some("i-3")
        );
    }

    #[tokio::test]
    async fn gives_up_after_the_configured_attempts() {
        let m = LocalRecorder::install();
        let (fake, url) = serve().await;
        fake.script(PATH_INSTANCE_ID, &[Reply::Status(500)]);
        let c = fast(&url);
        let err = within(c.instance_id()).await.unwrap_err();
        assert!(
            matches!(err, ImdsError::ServerError { status: 500, .. }),
            "{err:?}"
        );
        assert_eq!(fake.hits(PATH_INSTANCE_ID), DEFAULT_ATTEMPTS);
        assert_eq!(error_count(&m, "server_error"), u64::from(DEFAULT_ATTEMPTS));
    }

    #[tokio::test]
    async fn a_hanging_server_times_out_within_bounds() {
        let m = LocalRecorder::install();
        let (fake, url) = serve().await;
        fake.script(PATH_INSTANCE_ACTION, &[Reply::Hang]);
        let c = ImdsClient::builder(&url)
            .timeout(Duration::from_millis(200))
            .attempts(2)
            .backoff(Duration::from_millis(5), Duration::from_millis(5))
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let err = within(c.spot_instance_action()).await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, ImdsError::Timeout { .. }), "{err:?}");
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert_eq!(fake.hits(PATH_INSTANCE_ACTION), 2);
        assert_eq!(error_count(&m, "timeout"), 2);
    }

    #[tokio::test]
    async fn a_hanging_token_request_times_out() {
        let (fake, url) = serve().await;
        fake.script_token(&[Reply::Hang]);
        let c = fast(&url);
        let err = within(c.instance_id()).await.unwrap_err();
        assert!(matches!(err, ImdsError::Timeout { .. }), "{err:?}");
        assert_eq!(fake.hits(PATH_TOKEN), DEFAULT_ATTEMPTS);
    }

    #[tokio::test]
    async fn refused_connection_is_a_transport_error() {
        // Bind then drop to get a port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = fast(&format!("http://127.0.0.1:{port}"));
        let err = within(c.instance_id()).await.unwrap_err();
        assert!(
            matches!(err, ImdsError::Transport { .. } | ImdsError::Timeout { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn malformed_documents_are_errors_with_the_path() {
        let m = LocalRecorder::install();
        let (fake, url) = serve().await;
        fake.script(PATH_INSTANCE_ACTION, &[Reply::Body("{not json")]);
        fake.script(PATH_REBALANCE, &[Reply::Body(r#"{"noticeTime":"later"}"#)]);
        fake.script(PATH_TARGET_LIFECYCLE, &[Reply::Body("Pending:Wait")]);
        let c = fast(&url);
        within(async {
            for err in [
                c.spot_instance_action().await.unwrap_err(),
                c.rebalance().await.map(|_| ()).unwrap_err(),
                c.target_lifecycle_state().await.map(|_| ()).unwrap_err(),
            ] {
                assert!(matches!(err, ImdsError::Malformed { .. }), "{err:?}");
                assert_eq!(err.kind(), "malformed");
            }
            let err = c.spot_instance_action().await.unwrap_err();
            assert!(err.to_string().contains(PATH_INSTANCE_ACTION), "{err}");
            assert!(std::error::Error::source(&err).is_some());
        })
        .await;
        assert_eq!(
            fake.hits(PATH_INSTANCE_ACTION),
            2,
            "malformed is not retried"
        );
        assert_eq!(error_count(&m, "malformed"), 4);
    }

    fn error_count(m: &LocalRecorder, kind: &str) -> u64 {
        m.snapshot().value(IMDS_ERRORS, &[("kind", kind)]) as u64
    }

    fn notice_count(m: &LocalRecorder, kind: &str) -> u64 {
        m.snapshot().value(IMDS_NOTICES, &[("kind", kind)]) as u64
    }

    // ----- the watcher -----

    struct Watcher {
        rx: mpsc::Receiver<Notice>,
        /// Where this test's watcher counts (the test's own recorder).
        metrics: LocalRecorder,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn start_watch(url: &str) -> Watcher {
        let (tx, rx) = mpsc::channel(16);
        let metrics = LocalRecorder::install();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(watch(
            fast(url),
            Duration::from_millis(20),
            tx,
            cancel.clone(),
        ));
        Watcher {
            rx,
            metrics,
            cancel,
            task,
        }
    }

    /// Waits (with a deadline) until `cond` holds.
    async fn eventually(mut cond: impl FnMut() -> bool) {
        within(async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    #[tokio::test]
    async fn watcher_sends_each_distinct_notice_once() {
        let (fake, url) = serve().await;
        let mut w = start_watch(&url);
        fake.script(PATH_TARGET_LIFECYCLE, &[Reply::Body("InService")]);
        assert_eq!(
            within(w.rx.recv()).await,
            Some(Notice::TargetLifecycle("InService".into()))
        );

        fake.script(
            PATH_REBALANCE,
            &[Reply::Body(r#"{"noticeTime":"2026-11-25T08:17:00Z"}"#)],
        );
        assert!(matches!(
            within(w.rx.recv()).await,
            Some(Notice::Rebalance(_))
        ));

        let t1 = r#"{"action":"terminate","time":"2026-11-25T08:22:00Z"}"#;
        fake.script(PATH_INSTANCE_ACTION, &[Reply::Body(t1)]);
        let first = within(w.rx.recv()).await.unwrap();
        assert_eq!(
            first,
            Notice::Interruption(parse_instance_action(t1).unwrap())
        );
        // Let the same documents be polled many more times: no new notice may appear.
        let hits = fake.hits(PATH_INSTANCE_ACTION);
        eventually(|| fake.hits(PATH_INSTANCE_ACTION) >= hits + 5).await;
        assert!(w.rx.try_recv().is_err(), "duplicate notice sent");

        // A later time (metadata whose time moves on every poll) is not news; an earlier one is.
        fake.script(
            PATH_INSTANCE_ACTION,
            &[Reply::Body(
                r#"{"action":"terminate","time":"2026-11-25T08:23:00Z"}"#,
            )],
        );
        let hits = fake.hits(PATH_INSTANCE_ACTION);
        eventually(|| fake.hits(PATH_INSTANCE_ACTION) >= hits + 3).await;
        assert!(
            w.rx.try_recv().is_err(),
            "a later interruption time was sent"
        );
        fake.script(
            PATH_INSTANCE_ACTION,
            &[Reply::Body(
                r#"{"action":"terminate","time":"2026-11-25T08:21:00Z"}"#,
            )],
        );
        assert!(matches!(
            within(w.rx.recv()).await,
            Some(Notice::Interruption(a)) if a.time == datetime!(2026-11-25 08:21:00 UTC)
        ));
        // A rebalance recommendation whose noticeTime moves is still the one recommendation.
        fake.script(
            PATH_REBALANCE,
            &[Reply::Body(r#"{"noticeTime":"2026-11-25T08:19:00Z"}"#)],
        );
        let hits = fake.hits(PATH_REBALANCE);
        eventually(|| fake.hits(PATH_REBALANCE) >= hits + 3).await;
        assert!(
            w.rx.try_recv().is_err(),
            "a moved rebalance noticeTime was sent"
        );
        fake.script(PATH_TARGET_LIFECYCLE, &[Reply::Body("Terminated")]);
        assert_eq!(
            within(w.rx.recv()).await,
            Some(Notice::TargetLifecycle("Terminated".into()))
        );
        assert_eq!(notice_count(&w.metrics, "interruption"), 2);
        assert_eq!(notice_count(&w.metrics, "rebalance"), 1);
        assert_eq!(notice_count(&w.metrics, "target_lifecycle"), 2);

        w.cancel.cancel();
        within(w.task).await.unwrap();
    }

    #[tokio::test]
    async fn watcher_survives_failures_and_recovers() {
        let (fake, url) = serve().await;
        // IMDS is broken in several ways for a while...
        fake.script(PATH_INSTANCE_ACTION, &[Reply::Status(500)]);
        fake.script(PATH_REBALANCE, &[Reply::Body("garbage")]);
        fake.script(PATH_TARGET_LIFECYCLE, &[Reply::Status(429)]);
        let mut w = start_watch(&url);
        eventually(|| fake.hits(PATH_INSTANCE_ACTION) >= 2 * DEFAULT_ATTEMPTS).await;
        assert!(!w.task.is_finished());
        assert!(error_count(&w.metrics, "server_error") >= 2);
        assert!(error_count(&w.metrics, "malformed") >= 1);
        assert!(error_count(&w.metrics, "throttled") >= 2);

        // ... then a notice appears on one path while the others still fail.
        fake.script(
            PATH_INSTANCE_ACTION,
            &[Reply::Body(
                r#"{"action":"stop","time":"2026-11-25T08:22:00Z"}"#,
            )],
        );
        assert!(matches!(
            within(w.rx.recv()).await,
            Some(Notice::Interruption(InstanceAction {
                action: SpotAction::Stop,
                ..
            }))
        ));
        w.cancel.cancel();
        within(w.task).await.unwrap();
    }

    #[tokio::test]
    async fn watcher_keeps_going_when_metadata_is_forbidden() {
        let (fake, url) = serve().await;
        fake.script_token(&[Reply::Status(403)]);
        let mut w = start_watch(&url);
        // The fake counts a request when it arrives, the watcher its error once the answer is read: wait for both
        // (waiting for the hits alone raced the sixth error count).
        eventually(|| fake.hits(PATH_TOKEN) >= 6 && error_count(&w.metrics, "forbidden") >= 6)
            .await;
        assert!(!w.task.is_finished());
        assert!(error_count(&w.metrics, "forbidden") >= 6);
        // Metadata is turned back on: notices flow.
        fake.script_token(&[Reply::Body("")]);
        fake.script(PATH_TARGET_LIFECYCLE, &[Reply::Body("Terminated")]);
        assert_eq!(
            within(w.rx.recv()).await,
            Some(Notice::TargetLifecycle("Terminated".into()))
        );
        w.cancel.cancel();
        within(w.task).await.unwrap();
    }

    #[tokio::test]
    async fn watcher_stops_when_the_receiver_is_dropped() {
        let (_fake, url) = serve().await;
        let w = start_watch(&url);
        drop(w.rx);
        within(w.task).await.unwrap();
    }

    #[tokio::test]
    async fn watcher_stops_on_cancel_even_while_imds_hangs() {
        let (fake, url) = serve().await;
        fake.script_token(&[Reply::Hang]);
        let w = start_watch(&url);
        eventually(|| fake.hits(PATH_TOKEN) >= 1).await;
        w.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(1), w.task)
            .await
            .expect("watcher did not stop promptly")
            .unwrap();
    }
}
