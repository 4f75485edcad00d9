//! Who this worker is: the EC2 instance id, kept in one place for every reader (the `ProcessedBy` of each
//! record, the lifecycle hook, the EMF records).
//!
//! The id comes from `--instance-id` or, on EC2, from instance metadata, which may answer only later (it can be
//! down at start). Until it is known, records name the process with a fallback; the hook, which needs the real
//! id, waits for it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::imds::ImdsClient;
use crate::retry::{Class, Pace, Retry};

/// How long start-up waits for metadata to name the instance before it takes work anyway: on EC2 it answers
/// in milliseconds.
pub const FIRST_ASK: Duration = Duration::from_secs(3);

/// The instance id once learned, and the name used until then.
#[derive(Debug)]
pub struct InstanceId {
    /// Set once, by whoever learns the id first (the flag, the start-up probe, the background retry or the
    /// drain): an instance's id never changes, so the first answer is the answer.
    known: OnceLock<String>,
    /// What records say while the id is unknown: `unknown-<pid>-<random>`. The pid alone repeats across
    /// identically booted instances, and the store takes an item with our `ProcessedBy` and receive count for
    /// our own earlier write.
    fallback: String,
}

impl InstanceId {
    /// From the flag, if given (blank counts as not given).
    pub fn new(flag: Option<&str>) -> InstanceId {
        let id = InstanceId {
            known: OnceLock::new(),
            fallback: format!("unknown-{}-{:016x}", std::process::id(), fastrand::u64(..)),
        };
        if let Some(flag) = flag.map(str::trim).filter(|f| !f.is_empty()) {
            id.learn(flag);
        }
        id
    }

    /// The real id, if known.
    pub fn known(&self) -> Option<&str> {
        self.known.get().map(String::as_str)
    }

    /// Record the id; returns false when one was already known (the first stays).
    pub fn learn(&self, id: &str) -> bool {
        self.known.set(id.to_owned()).is_ok()
    }

    /// The name to put on records now: the real id, or the fallback until it is known.
    pub fn name(&self) -> &str {
        self.known().unwrap_or(&self.fallback)
    }
}

/// Learn `id` from metadata if nobody has: ask for at most [`FIRST_ASK`] (records name their instance), and if
/// metadata has not answered by then, keep asking in the background until it does or `stop` fires. Never
/// blocks work for longer than the first ask.
pub async fn learn_from_metadata(id: Arc<InstanceId>, client: ImdsClient, stop: CancellationToken) {
    if id.known().is_some() {
        return;
    }
    if let Ok(Ok(Some(found))) = tokio::time::timeout(FIRST_ASK, client.instance_id()).await {
        id.learned_from_metadata(&found);
        return;
    }
    tokio::spawn(async move {
        let asked = Retry::new("instance id")
            .says("not available from metadata yet; retrying")
            .pace(Pace::METADATA)
            .cancel(&stop)
            .run_fn(
                |_| async {
                    match client.instance_id().await {
                        Ok(Some(found)) => Ok(found),
                        Ok(None) => Err("metadata has no instance-id".to_owned()),
                        Err(e) => Err(e.to_string()),
                    }
                },
                // Metadata that is down or not there yet: waited for, never a reason to stop asking.
                |_| Class::Transient,
            )
            .await;
        if let Ok(found) = asked {
            id.learned_from_metadata(&found);
        }
    });
}

impl InstanceId {
    fn learned_from_metadata(&self, found: &str) {
        tracing::info!(instance_id = %found, "instance id from metadata");
        self.learn(found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_or_the_first_learned_id_wins_and_records_name_a_fallback_until_then() {
        let id = InstanceId::new(None);
        assert_eq!(id.known(), None);
        assert!(
            id.name()
                .starts_with(&format!("unknown-{}-", std::process::id())),
            "{}",
            id.name()
        );
        // Two processes with the same pid (identically booted instances) do not share a name.
        assert_ne!(InstanceId::new(None).name(), InstanceId::new(None).name());
        assert!(id.learn("i-1"));
        assert!(!id.learn("i-2"), "an instance's id never changes");
        assert_eq!(id.name(), "i-1");

        assert_eq!(InstanceId::new(Some("i-flag")).known(), Some("i-flag"));
        assert_eq!(InstanceId::new(Some("  ")).known(), None);
    }
}
