//! The SQS FIFO queue: receive, delete, change visibility. Knows SQS, nothing about orders.

use std::collections::HashMap;

use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};
use aws_sdk_sqs::Client;

use std::time::Duration;

use tokio::time::Instant;

use crate::admission::Admission;
use crate::aws::{describe, error_code};
use crate::retry::{classify, Budget, Class, Retry};
use crate::telemetry::request;

/// One message as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    pub group_id: String,
    /// SQS's per-group sequence number (large, increasing, not contiguous).
    pub sequence_number: Option<String>,
    pub receive_count: u32,
    pub dedup_id: Option<String>,
}

/// A message we hold and may delete or release: its id and current receipt handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle {
    pub message_id: String,
    pub receipt_handle: String,
}

/// An SQS call that failed, with its [`Class`] (what retrying can do about it).
#[derive(Debug, Clone, thiserror::Error)]
#[error("SQS {operation} failed ({}): {detail}", class.as_str())]
pub struct SqsError {
    pub operation: &'static str,
    pub class: Class,
    pub code: Option<String>,
    pub detail: String,
}

impl SqsError {
    /// Retrying the same call later can succeed (anything but a refusal of this very request).
    pub fn retryable(&self) -> bool {
        self.class.retryable()
    }

    /// An attempt cut by the caller after `after` (counted as a failed request, classed transient).
    pub fn no_answer(operation: &'static str, after: Duration) -> Self {
        Self::timed_out(operation, after)
    }

    fn timed_out(operation: &'static str, after: Duration) -> Self {
        request("sqs", operation, false);
        SqsError {
            operation,
            class: Class::Transient,
            code: None,
            detail: format!("no answer within {after:?}"),
        }
    }
}

fn sqs_error<E>(
    operation: &'static str,
    err: &aws_smithy_runtime_api::client::result::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> SqsError
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
{
    request("sqs", operation, false);
    SqsError {
        operation,
        class: classify(err),
        code: error_code(err),
        detail: describe(err),
    }
}

/// Longest one batch call (delete, change visibility) may take before it counts as failed: they answer in
/// milliseconds, and a drain cannot afford the SDK's 30 s attempt timeout of a long poll.
pub const BATCH_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// What became of each entry of a batch operation over many handles.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Applied.
    pub ok: Vec<String>,
    /// Refused by SQS for this entry (message id, code): an expired or superseded receipt handle.
    pub refused: Vec<(String, String)>,
    /// Not applied because the whole call failed within the budget; the last error says why.
    pub unsent: Vec<Handle>,
    pub last_error: Option<SqsError>,
}

/// The queue and the client that talks to it. Every call reports account-wide errors to `admission` (and lifts
/// the block when SQS answers again), so whichever call meets an IAM mistake first stops new work.
#[derive(Clone)]
pub struct Queue {
    client: Client,
    url: String,
    admission: std::sync::Arc<Admission>,
}

impl Queue {
    pub fn new(client: Client, url: String, admission: std::sync::Arc<Admission>) -> Self {
        Queue {
            client,
            url,
            admission,
        }
    }

    /// Tell admission what a call's outcome says about SQS as a whole.
    fn report<T>(&self, r: &Result<T, SqsError>) {
        match r {
            Ok(_) => {
                if let Some(b) = self.admission.clear("sqs") {
                    tracing::warn!(code = %b.code, blocked_s = b.since.elapsed().as_secs(), "SQS answers again; taking new work");
                }
            }
            Err(e) if e.class == Class::AccountWide => {
                if self
                    .admission
                    .block("sqs", e.code.as_deref().unwrap_or("-"), &e.detail)
                {
                    tracing::error!(waiting_for = "SQS", code = e.code.as_deref().unwrap_or("-"), operation = e.operation, cause = %e.detail, "SQS refuses this worker (permissions, queue, credentials or KMS): taking no new work, keeping what is held, retrying until it clears");
                }
            }
            Err(_) => {}
        }
    }

    /// Fail unless the queue exists and is FIFO (its URL already ends in .fifo; this asks SQS itself).
    pub async fn check_fifo(&self) -> Result<(), SqsError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::FifoQueue)
            .send()
            .await
            .map_err(|e| sqs_error("GetQueueAttributes", &e))?;
        request("sqs", "GetQueueAttributes", true);
        let fifo = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::FifoQueue))
            .map(|v| v == "true")
            .unwrap_or(false);
        if !fifo {
            return Err(SqsError {
                operation: "GetQueueAttributes",
                class: Class::Request,
                code: None,
                detail: format!("{} is not a FIFO queue", self.url),
            });
        }
        Ok(())
    }

    /// One long poll. `attempt_id` is reused by the caller when this fails in transport, so SQS can hand back
    /// the same messages instead of hiding them for a whole visibility timeout.
    pub async fn receive(
        &self,
        max: i32,
        wait_secs: i32,
        visibility_secs: i32,
        attempt_id: &str,
    ) -> Result<Vec<Received>, SqsError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10))
            .wait_time_seconds(wait_secs)
            .visibility_timeout(visibility_secs)
            .receive_request_attempt_id(attempt_id)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_system_attribute_names(MessageSystemAttributeName::SequenceNumber)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::MessageDeduplicationId)
            .send()
            .await
            .map_err(|e| sqs_error("ReceiveMessage", &e));
        self.report(&out);
        let out = out?;
        request("sqs", "ReceiveMessage", true);
        let mut received = Vec::new();
        for m in out.messages() {
            let (Some(id), Some(receipt)) = (m.message_id(), m.receipt_handle()) else {
                tracing::warn!("SQS returned a message without id or receipt handle; skipped");
                continue;
            };
            let empty = HashMap::new();
            let attrs = m.attributes().unwrap_or(&empty);
            let attr = |k: MessageSystemAttributeName| attrs.get(&k).cloned();
            received.push(Received {
                message_id: id.to_owned(),
                receipt_handle: receipt.to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
                // A FIFO message always has a group; an empty one can only be rejected, never ordered wrongly.
                group_id: attr(MessageSystemAttributeName::MessageGroupId).unwrap_or_default(),
                sequence_number: attr(MessageSystemAttributeName::SequenceNumber),
                receive_count: attr(MessageSystemAttributeName::ApproximateReceiveCount)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1),
                dedup_id: attr(MessageSystemAttributeName::MessageDeduplicationId),
            });
        }
        Ok(received)
    }

    /// Delete messages, 10 per call, every chunk tried (one failing chunk does not stop the others), whole-call
    /// failures retried with backoff until `budget` ends or the failure cannot be retried.
    pub async fn delete(&self, handles: &[Handle], budget: Budget) -> BatchOutcome {
        in_batches(
            handles,
            budget,
            &self.admission_reporter(),
            |chunk| async move {
                let entries = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(&h.receipt_handle)
                            .build()
                            .expect("id and receipt handle are set")
                    })
                    .collect();
                let out = self
                    .client
                    .delete_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| sqs_error("DeleteMessageBatch", &e))?;
                request("sqs", "DeleteMessageBatch", true);
                Ok(out.failed().to_vec())
            },
            "DeleteMessageBatch",
        )
        .await
    }

    /// Set the visibility of messages, 10 per call: 0 releases them at once, more extends the hold. Retried
    /// like [`Queue::delete`].
    pub async fn change_visibility(
        &self,
        handles: &[Handle],
        secs: i32,
        budget: Budget,
    ) -> BatchOutcome {
        in_batches(
            handles,
            budget,
            &self.admission_reporter(),
            |chunk| async move {
                let entries = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        ChangeMessageVisibilityBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(&h.receipt_handle)
                            .visibility_timeout(secs)
                            .build()
                            .expect("id and receipt handle are set")
                    })
                    .collect();
                let out = self
                    .client
                    .change_message_visibility_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| sqs_error("ChangeMessageVisibilityBatch", &e))?;
                request("sqs", "ChangeMessageVisibilityBatch", true);
                Ok(out.failed().to_vec())
            },
            "ChangeMessageVisibilityBatch",
        )
        .await
    }
}

impl Queue {
    fn admission_reporter(&self) -> impl Fn(&Result<(), SqsError>) + Sync + '_ {
        move |r| self.report(r)
    }
}

/// Run a batch call over `handles`, 10 at a time (the SQS batch limit, entry ids "0".."9"), each attempt cut
/// at [`BATCH_ATTEMPT_TIMEOUT`] and the budget; chunks whose call failed are retried (the [`Retry`] driver's
/// pause for the last failure's class) while the budget lasts and the failure is retryable. Refused entries are
/// mapped back to their message ids.
async fn in_batches<'a, F, Fut>(
    handles: &'a [Handle],
    budget: Budget,
    report: &(dyn Fn(&Result<(), SqsError>) + Sync),
    mut call: F,
    operation: &'static str,
) -> BatchOutcome
where
    F: FnMut(&'a [Handle]) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<BatchResultErrorEntry>, SqsError>>,
{
    let mut outcome = BatchOutcome::default();
    let mut todo: Vec<&'a [Handle]> = handles.chunks(10).collect();
    let mut retry = Retry::new(operation).budget(budget);
    while !todo.is_empty() {
        let mut again = Vec::new();
        for chunk in todo {
            let now = Instant::now();
            if budget.expired(now) {
                again.push(chunk);
                continue;
            }
            let limit = budget.attempt_limit(BATCH_ATTEMPT_TIMEOUT, now);
            let result = match tokio::time::timeout(limit, call(chunk)).await {
                Ok(r) => r,
                Err(_) => Err(SqsError::timed_out(operation, limit)),
            };
            report(&result.as_ref().map(|_| ()).map_err(Clone::clone));
            match result {
                Ok(failed) => {
                    let mut refused = std::collections::HashSet::new();
                    for f in failed {
                        if let Some(h) = f.id().parse::<usize>().ok().and_then(|i| chunk.get(i)) {
                            refused.insert(h.message_id.clone());
                            outcome
                                .refused
                                .push((h.message_id.clone(), f.code().to_owned()));
                        }
                    }
                    outcome.ok.extend(
                        chunk
                            .iter()
                            .filter(|h| !refused.contains(&h.message_id))
                            .map(|h| h.message_id.clone()),
                    );
                }
                Err(e) => {
                    again.push(chunk);
                    outcome.last_error = Some(e);
                }
            }
        }
        let waited = match &outcome.last_error {
            Some(e) if !again.is_empty() => retry.failed(e.class, e).await.is_ok(),
            _ => false,
        };
        if !waited {
            outcome.unsent = again.into_iter().flatten().cloned().collect();
            break;
        }
        todo = again;
    }
    if outcome.unsent.is_empty() {
        outcome.last_error = None;
    }
    outcome
}

/// A fresh ReceiveRequestAttemptId (SQS allows up to 128 of `[A-Za-z0-9!-/:-@[-`{-~]`).
pub fn new_attempt_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}
