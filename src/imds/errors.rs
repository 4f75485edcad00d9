//! What can go wrong talking to instance metadata, as values the callers branch on.

use crate::retry::Class;
use crate::telemetry::IMDS_ERRORS;

/// Why a document could not be parsed. Carries a human-readable reason only: the input may be
/// arbitrary bytes, and callers log it rather than branch on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub(super) String);

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
    pub(super) fn count(&self) {
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

    /// Its class in the one retry vocabulary. Every retryable kind is [`Class::Transient`], throttling
    /// included: IMDS throttles by packet rate per instance, and the client's own short pace (not the floor
    /// [`crate::retry::Pace::THROTTLED`] kept for AWS APIs) is what its settings promise. The rest
    /// (403 "metadata off", a 401 after a refresh, a status we have no rule for) is not retried.
    pub fn class(&self) -> Class {
        if self.is_retryable() {
            Class::Transient
        } else {
            Class::Request
        }
    }

    pub(super) fn from_reqwest(path: &str, source: reqwest::Error) -> Self {
        let path = path.to_owned();
        if source.is_timeout() {
            ImdsError::Timeout { path, source }
        } else {
            ImdsError::Transport { path, source }
        }
    }
}

/// Maps a non-success, non-404 HTTP status to its error. 2xx and 404 are handled by the caller.
pub(super) fn status_error(path: &str, status: u16) -> ImdsError {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
