//! The SQS FIFO queue: receive, delete, change visibility. Knows SQS, nothing about orders.

use std::collections::HashMap;

use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};
use aws_sdk_sqs::Client;

use crate::aws::{describe, is_transient};
use crate::metrics::request;

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

/// An SQS call that failed; `transient` says whether retrying later can help.
#[derive(Debug, thiserror::Error)]
#[error("SQS {operation} failed: {detail}")]
pub struct SqsError {
    pub operation: &'static str,
    pub transient: bool,
    pub detail: String,
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
        transient: is_transient(err),
        detail: describe(err),
    }
}

/// Entries that a batch call could not apply: (message id, error code).
pub type Failed = Vec<(String, String)>;

/// The queue and the client that talks to it.
#[derive(Clone)]
pub struct Queue {
    client: Client,
    url: String,
}

impl Queue {
    pub fn new(client: Client, url: String) -> Self {
        Queue { client, url }
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
                transient: false,
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
            .map_err(|e| sqs_error("ReceiveMessage", &e))?;
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

    /// Delete up to any number of messages, 10 per call. Returns the entries SQS refused (an expired FIFO
    /// receipt handle, typically); a whole-call failure is an error.
    pub async fn delete(&self, handles: &[Handle]) -> Result<Failed, SqsError> {
        in_batches(handles, |chunk| async move {
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
        })
        .await
    }

    /// Set the visibility of messages, 10 per call: 0 releases them at once, more extends the hold.
    pub async fn change_visibility(
        &self,
        handles: &[Handle],
        secs: i32,
    ) -> Result<Failed, SqsError> {
        in_batches(handles, |chunk| async move {
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
        })
        .await
    }
}

/// Run a batch call over `handles`, 10 at a time (the SQS batch limit, entry ids "0".."9"), and map the
/// refused entries back to their message ids.
async fn in_batches<'a, F, Fut>(handles: &'a [Handle], mut call: F) -> Result<Failed, SqsError>
where
    F: FnMut(&'a [Handle]) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<BatchResultErrorEntry>, SqsError>>,
{
    let mut failed = Vec::new();
    for chunk in handles.chunks(10) {
        for f in call(chunk).await? {
            if let Some(h) = f.id().parse::<usize>().ok().and_then(|i| chunk.get(i)) {
                failed.push((h.message_id.clone(), f.code().to_owned()));
            }
        }
    }
    Ok(failed)
}

/// A fresh ReceiveRequestAttemptId (SQS allows up to 128 of `[A-Za-z0-9!-/:-@[-`{-~]`).
pub fn new_attempt_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}
