//! The SQS side: receive, delete and visibility calls, each counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageSystemAttributeName,
    QueueAttributeName,
};

use crate::aws::{error_chain, retry};
use crate::metrics::Counters;

/// SQS batch calls take at most 10 entries.
pub const BATCH: usize = 10;

/// How many distinct entries of a batch of `entries` (ids `"0"`, `"1"`, ...) SQS lists as
/// successful; ids it did not send, or lists twice, do not count.
fn succeeded<'a>(entries: usize, ids: impl Iterator<Item = &'a str>) -> usize {
    let mut seen = vec![false; entries];
    for i in ids.filter_map(|id| id.parse::<usize>().ok()) {
        if let Some(s) = seen.get_mut(i) {
            *s = true;
        }
    }
    seen.iter().filter(|s| **s).count()
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub receipt: String,
    pub body: String,
    /// The [`record::ENCODING_ATTRIBUTE`] message attribute, if any.
    pub encoding: Option<String>,
    pub receive_count: u32,
    /// When the receive call was sent: the visibility timeout runs from (at latest) here.
    pub received_at: Instant,
}

#[derive(Clone)]
pub struct Queue {
    client: aws_sdk_sqs::Client,
    url: String,
    counters: Arc<Counters>,
}

impl Queue {
    pub fn new(client: aws_sdk_sqs::Client, url: String, counters: Arc<Counters>) -> Queue {
        Queue { client, url, counters }
    }

    /// One long poll for up to 10 messages, hidden for `visibility` seconds.
    pub async fn receive(&self, wait_seconds: i32, visibility: i32) -> anyhow::Result<Vec<Received>> {
        let received_at = Instant::now();
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(BATCH as i32)
            .wait_time_seconds(wait_seconds)
            .visibility_timeout(visibility)
            .message_attribute_names(record::ENCODING_ATTRIBUTE)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                self.counters.sqs_call(&self.counters.sqs_receive, 0);
                Counters::inc(&self.counters.errors);
                anyhow::bail!("ReceiveMessage: {}", error_chain(&e));
            }
        };
        let messages: Vec<Received> = out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let encoding = m
                    .message_attributes()
                    .and_then(|a| a.get(record::ENCODING_ATTRIBUTE))
                    .and_then(|v| v.string_value())
                    .map(str::to_string);
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                Some(Received {
                    id: m.message_id?,
                    receipt: m.receipt_handle?,
                    body: m.body.unwrap_or_default(),
                    encoding,
                    receive_count,
                    received_at,
                })
            })
            .collect();
        let payload = messages.iter().map(|m| m.body.len() + m.encoding.as_deref().map_or(0, str::len)).sum();
        self.counters.sqs_call(&self.counters.sqs_receive, payload);
        Ok(messages)
    }

    /// Deletes `(message id, receipt handle)` pairs in batches of 10; returns how many
    /// could not be deleted (they will be redelivered: duplicates, not losses).
    ///
    /// Counts what SQS reports: `deleted` the entries it lists as successful, `undeleted`
    /// and `errors` every other entry (listed as failed, or not listed at all, or in a
    /// call that failed after its retries).
    pub async fn delete(&self, messages: &[(String, String)]) -> usize {
        let mut failed = 0;
        for chunk in messages.chunks(BATCH) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, (_, receipt))| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .build()
                        .expect("id and receipt handle are set")
                })
                .collect();
            let result = retry("DeleteMessageBatch", &self.counters, || async {
                self.counters.sqs_call(&self.counters.sqs_delete, 0);
                self.client.delete_message_batch().queue_url(&self.url).set_entries(Some(entries.clone())).send().await
            })
            .await;
            let chunk_deleted = match result {
                Ok(out) => {
                    for f in out.failed() {
                        let id = f.id().parse::<usize>().ok().and_then(|i| chunk.get(i)).map(|(id, _)| id.as_str());
                        tracing::warn!(
                            message_id = id,
                            code = f.code(),
                            reason = f.message(),
                            "could not delete a message: it will be redelivered"
                        );
                    }
                    succeeded(chunk.len(), out.successful().iter().map(|s| s.id()))
                }
                Err(_) => 0, // logged by retry
            };
            let chunk_failed = chunk.len() - chunk_deleted;
            Counters::add(&self.counters.deleted, chunk_deleted as u64);
            Counters::add(&self.counters.undeleted, chunk_failed as u64);
            Counters::add(&self.counters.errors, chunk_failed as u64);
            failed += chunk_failed;
        }
        failed
    }

    /// Renews the visibility timeout of `(message id, receipt handle)` pairs; returns
    /// the ids whose timeout could not be renewed.
    pub async fn extend(&self, messages: &[(String, String)], visibility: i32) -> Vec<String> {
        let mut failed = Vec::new();
        for chunk in messages.chunks(BATCH) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, (_, receipt))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .visibility_timeout(visibility)
                        .build()
                        .expect("id and receipt handle are set")
                })
                .collect();
            self.counters.sqs_call(&self.counters.sqs_visibility, 0);
            let out = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await;
            let renewed = match out {
                Ok(out) => {
                    for f in out.failed() {
                        tracing::warn!(code = f.code(), reason = f.message(), "could not renew a message's visibility");
                    }
                    out.successful().iter().filter_map(|s| s.id().parse::<usize>().ok()).collect::<Vec<_>>()
                }
                Err(e) => {
                    tracing::warn!(error = error_chain(&e), "ChangeMessageVisibilityBatch failed");
                    Vec::new()
                }
            };
            // Anything not reported renewed is treated as failed (it may become visible).
            let before = failed.len();
            failed
                .extend(chunk.iter().enumerate().filter(|(i, _)| !renewed.contains(i)).map(|(_, (id, _))| id.clone()));
            Counters::add(&self.counters.errors, (failed.len() - before) as u64);
        }
        failed
    }

    /// Whether the queue holds no message at all: none visible, in flight or delayed.
    pub async fn is_empty(&self) -> anyhow::Result<bool> {
        self.counters.sqs_call(&self.counters.sqs_attributes, 0);
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await;
        let out = out.map_err(|e| {
            Counters::inc(&self.counters.errors);
            anyhow::anyhow!("GetQueueAttributes: {}", error_chain(&e))
        })?;
        let empty = HashMap::new();
        let attrs = out.attributes().unwrap_or(&empty);
        Ok(attrs.values().all(|v| v.trim() == "0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entries_listed_successful_count_as_deleted() {
        assert_eq!(succeeded(3, ["0", "2"].into_iter()), 2);
        // Unknown, repeated or malformed ids never inflate the count (nor underflow the rest).
        assert_eq!(succeeded(2, ["0", "0", "7", "x", "-1"].into_iter()), 1);
        assert_eq!(succeeded(0, ["0"].into_iter()), 0);
    }
}
