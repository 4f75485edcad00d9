//! Whether the worker should take work: the drain's readiness, and the services an account-wide error blocks.
//!
//! An account-wide error (access denied, a missing table or queue, expired credentials, a KMS key we may not
//! use) is not about one order: retrying the order elsewhere or later burns its receive count and, after
//! `maxReceiveCount`, moves every message the fleet touches into the DLQ. So the first caller that meets one
//! blocks its service here; the receive loop takes no new work while anything is blocked, `/readyz` fails, the
//! held messages stay held, and the caller's own retry (with backoff) is the probe: its first success clears
//! the block and work resumes by itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::watch;
use tokio::time::Instant;

/// Why a service is blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub code: String,
    pub detail: String,
    pub since: Instant,
}

/// Shared by the engine, the drain and the HTTP endpoint.
#[derive(Debug)]
pub struct Admission {
    /// Taking work, as the drain and the rebalance policy decide (false while draining or paused).
    ready: AtomicBool,
    blocked: Mutex<BTreeMap<&'static str, Blocker>>,
    /// Counts changes of `blocked`, so the receive loop can wait for the block to lift.
    changed: watch::Sender<u64>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            ready: AtomicBool::new(false),
            blocked: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
        }
    }
}

impl Admission {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Ready to take work: the drain says so and no service is blocked.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.is_blocked()
    }

    pub fn is_blocked(&self) -> bool {
        !self.blocked.lock().expect("admission lock").is_empty()
    }

    /// The blocked services and why, for logs and `/readyz`.
    pub fn blockers(&self) -> Vec<(&'static str, Blocker)> {
        self.blocked
            .lock()
            .expect("admission lock")
            .iter()
            .map(|(s, b)| (*s, b.clone()))
            .collect()
    }

    /// An account-wide error from `service`. Returns true when this newly blocks it (log loudly then).
    pub fn block(&self, service: &'static str, code: &str, detail: &str) -> bool {
        let mut b = self.blocked.lock().expect("admission lock");
        if b.contains_key(service) {
            return false;
        }
        b.insert(
            service,
            Blocker {
                code: code.to_owned(),
                detail: detail.to_owned(),
                since: Instant::now(),
            },
        );
        drop(b);
        metrics::gauge!(crate::telemetry::BLOCKED, "service" => service).increment(1.0);
        self.changed.send_modify(|n| *n += 1);
        true
    }

    /// A call to `service` succeeded. Returns the block it lifts, if any.
    pub fn clear(&self, service: &'static str) -> Option<Blocker> {
        let lifted = self.blocked.lock().expect("admission lock").remove(service);
        if lifted.is_some() {
            metrics::gauge!(crate::telemetry::BLOCKED, "service" => service).decrement(1.0);
            self.changed.send_modify(|n| *n += 1);
        }
        lifted
    }

    /// Wait until no service is blocked.
    pub async fn wait_unblocked(&self) {
        let mut rx = self.changed.subscribe();
        while self.is_blocked() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_block_makes_the_worker_unready_until_the_service_answers() {
        let h = Arc::new(Admission::default());
        h.set_ready(true);
        assert!(h.ready());
        assert!(h.block("dynamodb", "AccessDeniedException", "denied"));
        assert!(
            !h.block("dynamodb", "AccessDeniedException", "again"),
            "logged once"
        );
        assert!(!h.ready());
        assert_eq!(h.blockers()[0].1.code, "AccessDeniedException");
        let waiter = {
            let h = h.clone();
            tokio::spawn(async move { h.wait_unblocked().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "returned while blocked");
        assert!(h.clear("sqs").is_none());
        assert!(h.clear("dynamodb").is_some());
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("waiter not woken")
            .unwrap();
        assert!(h.ready());
    }
}
