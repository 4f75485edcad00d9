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
//!
//! # Layout
//! - `errors`: [`ImdsError`] (what callers branch on: 404 is not one, 401 refreshes, 403 is "metadata off") and
//!   [`ParseError`].
//! - `documents`: the documents and their pure parsers ([`InstanceAction`], [`Rebalance`], [`LifecycleState`]).
//! - `client`: [`ImdsClient`], tokens and retries.
//! - `watcher`: [`watch`], which turns polls into [`Notice`]s, once each.
//! - `fake` (tests only): one scripted metadata server for every test that reads metadata.

mod client;
mod documents;
mod errors;
#[cfg(test)]
pub(crate) mod fake;
mod watcher;

use std::time::Duration;

pub use client::{ImdsClient, ImdsClientBuilder};
pub use documents::{
    parse_instance_action, parse_lifecycle_state, parse_rebalance, InstanceAction, LifecycleState,
    Rebalance, SpotAction, LIFECYCLE_STATES,
};
pub use errors::{ImdsError, ParseError};
pub use watcher::{watch, Notice, NoticeFilter};

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
pub(crate) const PATH_TOKEN: &str = "/latest/api/token";

pub(crate) const HEADER_TOKEN_TTL: &str = "x-aws-ec2-metadata-token-ttl-seconds";
pub(crate) const HEADER_TOKEN: &str = "x-aws-ec2-metadata-token";

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
