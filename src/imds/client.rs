//! The IMDSv2 client: tokens (cached, shared by clones, refreshed before expiry, one refresh at a time), and
//! GETs that tell "nothing yet" (404) from errors, with bounded retries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::documents::{parse_instance_action, parse_lifecycle_state, parse_rebalance};
use super::errors::status_error;
use super::*;
use crate::retry::{Pace, Retry};

/// Refresh the token when less than this is left (or a tenth of the TTL, whichever is smaller),
/// so a token never expires between our check and IMDS's.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(120);

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
        if url.host_str().is_none_or(str::is_empty) {
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
    /// throttling and 5xx up to the configured attempts, at the configured pace (the one driver,
    /// [`Retry`]); on 401 fetches a new token and retries once.
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let pace = Pace {
            base: self.settings.backoff_base,
            cap: self.settings.backoff_cap,
        };
        let refreshed_after_401 = AtomicBool::new(false);
        let fetched = Retry::new("instance metadata GET")
            .pace(pace)
            .attempts(self.settings.attempts)
            // The watcher tells an outage in its own rate-limited lines.
            .quiet()
            .run_fn(
                |_| self.get_refreshing(path, &refreshed_after_401),
                ImdsError::class,
            )
            .await;
        match fetched {
            Ok(Fetched::Body(body)) => Ok(Some(body)),
            Ok(Fetched::NotFound) => Ok(None),
            Err(gave_up) => Err(gave_up
                .last
                .expect("no attempt limit, no budget: every attempt ends with its error")),
        }
    }

    /// One attempt, counted: on the first 401 of a call the token is dropped and the GET made again at once
    /// with a new one (a protocol step, not a retry: it does not count against the attempts).
    async fn get_refreshing(
        &self,
        path: &str,
        refreshed: &AtomicBool,
    ) -> Result<Fetched, ImdsError> {
        loop {
            let mut used = None;
            let err = match self.get_once(path, &mut used).await {
                Ok(fetched) => return Ok(fetched),
                Err(err) => err,
            };
            err.count();
            if !matches!(err, ImdsError::Unauthorized { .. })
                || refreshed.swap(true, Ordering::Relaxed)
            {
                return Err(err);
            }
            // The token expired or IMDS restarted: drop it and try once more with a new one.
            tracing::debug!(path, "instance metadata answered 401; refreshing the token");
            let mut cached = self.token.lock().await;
            // Only drop the token we used: a concurrent request may already have fetched a new one, and
            // dropping that would cost another PUT.
            if cached.as_ref().map(|t| &t.value) == used.as_ref() {
                *cached = None;
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
    pub async fn target_lifecycle_state(&self) -> Result<Option<LifecycleState>, ImdsError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imds::fake::{error_count, fast, serve, within, Reply};
    use crate::telemetry::{LocalRecorder, IMDS_ERRORS};
    use std::sync::atomic::Ordering;

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

    #[test]
    fn the_worst_retry_case_fits_a_poll_budget() {
        // The formula is the crate's one backoff (tested in `retry`); what matters here is our settings.
        let backoff = crate::retry::backoff_with;
        // The worst case of one call with default settings stays well under a poll budget.
        let worst: Duration = (0..DEFAULT_ATTEMPTS - 1)
            .map(|r| backoff(r, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP, 1.0))
            .sum::<Duration>()
            + DEFAULT_TIMEOUT * DEFAULT_ATTEMPTS * 2;
        assert!(worst < Duration::from_secs(8), "{worst:?}");
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
                c.target_lifecycle_state().await.unwrap(),
                Some(LifecycleState::Terminated)
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
}
