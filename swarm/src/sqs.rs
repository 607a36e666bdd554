//! Delivery of records to the SQS queue: many records per message (NDJSON, optionally
//! gzip+base64 — see the record crate), up to ten messages per `SendMessageBatch`, with
//! every message and every whole batch within the SQS size limit.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use record::{encode_body, pack_lines, Encoding, ENCODING_ATTRIBUTE};

use crate::sink::Buffer;
use crate::Backoff;

/// Most entries a `SendMessageBatch` takes.
pub const MAX_BATCH_ENTRIES: usize = 10;

/// One message to send: its body and how many records it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub body: String,
    pub records: usize,
    /// The tags of its records (see [`Buffer::push_tagged`]), reported when it is done.
    pub tags: Vec<u64>,
}

/// Bytes a message's encoding attribute adds to its size (SQS counts name, type, value).
pub fn attribute_overhead(enc: Encoding) -> usize {
    ENCODING_ATTRIBUTE.len() + "String".len() + enc.as_str().len()
}

impl Entry {
    /// The size SQS counts for this message.
    pub fn size(&self, enc: Encoding) -> usize {
        self.body.len() + attribute_overhead(enc)
    }
}

/// Encodes records (one NDJSON line each) into messages of at most `limit` bytes each
/// (attribute included), in order. Returns the messages and the indexes of records that
/// cannot fit in any message.
pub fn encode_entries(lines: &[String], enc: Encoding, limit: usize) -> (Vec<Entry>, Vec<usize>) {
    let budget = limit.saturating_sub(attribute_overhead(enc));
    encode_entries_chunked(lines, enc, limit, budget.saturating_mul(4))
}

/// [`encode_entries`], packing `gzip+base64` bodies from chunks of at most `raw_chunk` bytes
/// of NDJSON each (a chunk whose encoding is still over the limit is halved until it fits,
/// at the cost of compressing its records again): the sender sizes `raw_chunk` from the
/// compression it has seen ([`chunk_for`]). Ignored for `ndjson`.
pub fn encode_entries_chunked(
    lines: &[String],
    enc: Encoding,
    limit: usize,
    raw_chunk: usize,
) -> (Vec<Entry>, Vec<usize>) {
    let budget = limit.saturating_sub(attribute_overhead(enc));
    match enc {
        Encoding::Ndjson => {
            let (bodies, oversized) = pack_lines(lines.iter().map(String::as_str), budget);
            let entries =
                bodies.into_iter().map(|b| Entry { records: b.lines().count(), body: b, tags: Vec::new() }).collect();
            (entries, oversized)
        }
        Encoding::GzipBase64 => {
            // NDJSON compresses several-fold: pack generous raw chunks, then split any
            // whose encoding still exceeds the budget.
            let (chunks, oversized_raw) = pack_lines(lines.iter().map(String::as_str), raw_chunk.max(budget).max(1));
            let mut entries = Vec::new();
            let mut oversized = oversized_raw;
            for chunk in chunks {
                // The chunk is already NDJSON: compress it as it is; only a chunk whose
                // encoding is too large is cut into lines and halved.
                let body = encode_body(&chunk, Encoding::GzipBase64);
                let chunk_lines: Vec<&str> = chunk.lines().collect();
                if body.len() <= budget {
                    entries.push(Entry { body, records: chunk_lines.len(), tags: Vec::new() });
                } else if chunk_lines.len() == 1 {
                    gzip_split(&chunk_lines, budget, &mut entries, &mut oversized, lines);
                } else {
                    let (a, b) = chunk_lines.split_at(chunk_lines.len() / 2);
                    gzip_split(a, budget, &mut entries, &mut oversized, lines);
                    gzip_split(b, budget, &mut entries, &mut oversized, lines);
                }
            }
            oversized.sort_unstable();
            (entries, oversized)
        }
    }
}

/// The raw chunk for `gzip+base64` messages of at most `limit` bytes when `raw` bytes of
/// NDJSON last became `encoded` bytes of bodies: 95% of what that ratio fits in a message
/// (so most chunks fit at the first compression), between 1 and 16 times the budget;
/// 4 times the budget before anything was seen.
pub fn chunk_for(limit: usize, raw: usize, encoded: usize) -> usize {
    let budget = limit.saturating_sub(attribute_overhead(Encoding::GzipBase64)).max(1);
    if raw == 0 || encoded == 0 {
        return budget.saturating_mul(4);
    }
    let fit = budget as f64 * raw as f64 / encoded as f64 * 0.95;
    (fit as usize).clamp(budget, budget.saturating_mul(16))
}

fn gzip_split(chunk: &[&str], budget: usize, out: &mut Vec<Entry>, oversized: &mut Vec<usize>, all: &[String]) {
    if chunk.is_empty() {
        return;
    }
    let mut nd = String::with_capacity(chunk.iter().map(|l| l.len() + 1).sum());
    for l in chunk {
        nd.push_str(l);
        nd.push('\n');
    }
    let body = encode_body(&nd, Encoding::GzipBase64);
    if body.len() <= budget {
        out.push(Entry { body, records: chunk.len(), tags: Vec::new() });
    } else if chunk.len() == 1 {
        // A single record that does not fit even compressed.
        if let Some(i) = all.iter().position(|l| l == chunk[0]) {
            oversized.push(i);
        }
    } else {
        let (a, b) = chunk.split_at(chunk.len() / 2);
        gzip_split(a, budget, out, oversized, all);
        gzip_split(b, budget, out, oversized, all);
    }
}

/// Takes the next batch from the front of `pending`: at most ten messages whose sizes
/// add up to at most `limit` (SQS caps the whole batch request's payload too).
pub fn take_batch(pending: &mut VecDeque<Entry>, enc: Encoding, limit: usize) -> Vec<Entry> {
    let mut batch = Vec::new();
    let mut total = 0;
    while batch.len() < MAX_BATCH_ENTRIES {
        let Some(e) = pending.front() else { break };
        if total + e.size(enc) > limit {
            break;
        }
        total += e.size(enc);
        batch.push(pending.pop_front().unwrap());
    }
    batch
}

/// The SQS destination of the indexer.
pub struct SqsSink {
    pub client: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub encoding: Encoding,
    /// Message (and batch) size limit in bytes.
    pub limit: usize,
    /// How long to wait for more records before sending a partly filled message.
    pub linger: Duration,
    pub buffer: Arc<Buffer>,
    /// Send a request as soon as this many records are buffered, whatever the linger:
    /// the indexer acknowledges an MQTT message only once its record is in SQS, and the
    /// broker sends no more than so many unacknowledged messages.
    pub fill_records: usize,
    /// Where the tags of records done with (accepted by SQS, or refused for good) go.
    pub done: Option<tokio::sync::mpsc::UnboundedSender<Vec<u64>>>,
}

impl SqsSink {
    fn report_done(&self, tags: Vec<u64>) {
        if let (Some(d), false) = (&self.done, tags.is_empty()) {
            let _ = d.send(tags);
        }
    }

    /// Runs forever: drains the buffer into messages and sends them, retrying transient
    /// failures with backoff (the records stay held meanwhile).
    pub async fn run(self) {
        let enc = self.encoding;
        let stats = &self.buffer.stats;
        let mut pending: VecDeque<Entry> = VecDeque::new();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let raw_fill = match enc {
            Encoding::Ndjson => self.limit,
            Encoding::GzipBase64 => self.limit * 4,
        };
        // The raw chunk per gzip message, from the compression of the last records sent.
        let mut raw_chunk = chunk_for(self.limit, 0, 0);
        loop {
            self.buffer.set_held(pending.iter().map(|e| e.records).sum());
            if pending.is_empty() {
                self.buffer.wait_batch(self.linger, raw_fill, self.fill_records.max(1)).await;
                let (lines, tags): (Vec<String>, Vec<Option<u64>>) =
                    self.buffer.drain_tagged(usize::MAX, raw_fill * 2).into_iter().unzip();
                self.buffer.set_held(lines.len());
                let (mut entries, oversized) = encode_entries_chunked(&lines, enc, self.limit, raw_chunk);
                if enc == Encoding::GzipBase64 {
                    let raw: usize = lines.iter().map(|l| l.len() + 1).sum();
                    raw_chunk = chunk_for(self.limit, raw, entries.iter().map(|e| e.body.len()).sum());
                }
                // The entries hold the records in order, less the oversized ones.
                let mut kept = (0..lines.len()).filter(|i| oversized.binary_search(i).is_err());
                for e in &mut entries {
                    e.tags = kept.by_ref().take(e.records).filter_map(|i| tags[i]).collect();
                }
                self.report_done(oversized.iter().filter_map(|&i| tags[i]).collect());
                for i in oversized {
                    stats.rejected.inc();
                    tracing::error!(
                        destination = "sqs",
                        bytes = lines[i].len(),
                        limit = self.limit,
                        record = %truncate(&lines[i], 200),
                        "record larger than the SQS message limit: not sent"
                    );
                }
                pending.extend(entries);
                continue;
            }
            let batch = take_batch(&mut pending, enc, self.limit);
            if batch.is_empty() {
                // Cannot happen (every entry fits the limit), but never spin.
                let e = pending.pop_front().unwrap();
                stats.rejected.add(e.records as u64);
                tracing::error!(destination = "sqs", records = e.records, "message larger than the limit: not sent");
                self.report_done(e.tags);
                continue;
            }
            match self.send(&batch).await {
                Ok(failed) => {
                    stats.requests.inc();
                    let mut retry = Vec::new();
                    for (i, e) in batch.into_iter().enumerate() {
                        match failed.iter().find(|f| f.0 == i) {
                            None => {
                                stats.delivered.add(e.records as u64);
                                stats.messages.inc();
                                self.report_done(e.tags);
                            }
                            Some((_, true, reason)) => {
                                stats.rejected.add(e.records as u64);
                                tracing::error!(destination = "sqs", records = e.records, reason = %reason, "SQS refused a message: records not delivered");
                                self.report_done(e.tags);
                            }
                            Some((_, false, reason)) => {
                                tracing::warn!(destination = "sqs", records = e.records, reason = %reason, "SQS failed a message: will retry");
                                retry.push(e);
                            }
                        }
                    }
                    if retry.is_empty() {
                        backoff.reset();
                    } else {
                        stats.retries.inc();
                        for e in retry.into_iter().rev() {
                            pending.push_front(e);
                        }
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
                Err(err) => {
                    stats.retries.inc();
                    let delay = backoff.next_delay();
                    let held = pending.iter().chain(batch.iter()).map(|e| e.records).sum::<usize>() + self.buffer.len();
                    tracing::error!(destination = "sqs", error = %err, held_records = held, retry_in_ms = delay.as_millis() as u64, "SendMessageBatch failed: holding the records and retrying");
                    for e in batch.into_iter().rev() {
                        pending.push_front(e);
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Sends one batch; returns the failed entries as (index, sender's fault, reason).
    async fn send(&self, batch: &[Entry]) -> Result<Vec<(usize, bool, String)>, String> {
        let attr = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(self.encoding.as_str())
            .build()
            .map_err(|e| e.to_string())?;
        let mut req = self.client.send_message_batch().queue_url(&self.queue_url);
        for (i, e) in batch.iter().enumerate() {
            req = req.entries(
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&e.body)
                    .message_attributes(ENCODING_ATTRIBUTE, attr.clone())
                    .build()
                    .map_err(|e| e.to_string())?,
            );
        }
        let out = req.send().await.map_err(|e| format!("{}", aws_sdk_sqs::error::DisplayErrorContext(&e)))?;
        Ok(out
            .failed
            .iter()
            .filter_map(|f| {
                let i = f.id.parse::<usize>().ok()?;
                Some((i, f.sender_fault, format!("{}: {}", f.code, f.message.as_deref().unwrap_or(""))))
            })
            .collect())
    }
}

pub fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use record::decode_body;

    fn lines(n: usize, width: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let r = record::PingRecord {
                    id: format!("{i}-{}", "x".repeat(width)),
                    ts: "2026-11-23T10:00:00.123Z".into(),
                    stack: "s".into(),
                    region: "r".into(),
                    agent: "a".into(),
                    target: format!("127.0.{}.{}", i / 256, i % 256),
                    status: record::Status::Ok,
                    loss: 0.0,
                    rtt_ms: None,
                    error: None,
                    ..Default::default()
                };
                serde_json::to_string(&r).unwrap()
            })
            .collect()
    }

    #[test]
    fn every_message_and_batch_fits_and_nothing_is_lost() {
        let input = lines(3000, 40);
        for enc in [Encoding::Ndjson, Encoding::GzipBase64] {
            let limit = 16 * 1024;
            let (entries, oversized) = encode_entries(&input, enc, limit);
            assert!(oversized.is_empty());
            assert!(entries.iter().all(|e| e.size(enc) <= limit), "{enc:?}");
            let mut pending: VecDeque<Entry> = entries.into();
            let mut out = Vec::new();
            while !pending.is_empty() {
                let b = take_batch(&mut pending, enc, limit);
                assert!(!b.is_empty() && b.len() <= MAX_BATCH_ENTRIES);
                assert!(b.iter().map(|e| e.size(enc)).sum::<usize>() <= limit);
                for e in b {
                    let decoded = decode_body(&e.body, enc).unwrap();
                    assert_eq!(decoded.len(), e.records);
                    out.extend(decoded.into_iter().map(|l| l.raw));
                }
            }
            assert_eq!(out, input, "{enc:?}: order and content kept");
        }
    }

    #[test]
    fn gzip_packs_many_more_records_per_message() {
        let input = lines(5000, 10);
        let limit = record::MAX_MESSAGE_BYTES;
        let (nd, _) = encode_entries(&input, Encoding::Ndjson, limit);
        let (gz, _) = encode_entries(&input, Encoding::GzipBase64, limit);
        assert!(gz.len() * 3 <= nd.len(), "gzip {} messages vs ndjson {}", gz.len(), nd.len());
    }

    #[test]
    fn chunks_sized_from_the_compression_seen_fit_at_once_and_lose_nothing() {
        let input = lines(20_000, 30);
        let limit = record::MAX_MESSAGE_BYTES;
        let (first, _) = encode_entries(&input, Encoding::GzipBase64, limit);
        let raw: usize = input.iter().map(|l| l.len() + 1).sum();
        let chunk = chunk_for(limit, raw, first.iter().map(|e| e.body.len()).sum());
        assert!(chunk >= limit - attribute_overhead(Encoding::GzipBase64) && chunk <= 16 * limit, "{chunk}");
        assert_eq!(chunk_for(limit, 0, 0), 4 * (limit - attribute_overhead(Encoding::GzipBase64)));
        for raw_chunk in [chunk, 1, usize::MAX / 2] {
            let (entries, oversized) = encode_entries_chunked(&input, Encoding::GzipBase64, limit, raw_chunk);
            assert!(oversized.is_empty());
            assert!(entries.iter().all(|e| e.size(Encoding::GzipBase64) <= limit));
            let out: Vec<String> = entries
                .iter()
                .flat_map(|e| decode_body(&e.body, Encoding::GzipBase64).unwrap().into_iter().map(|l| l.raw))
                .collect();
            assert_eq!(out, input, "chunk {raw_chunk}: order and content kept");
            if raw_chunk == chunk {
                // Sized from what was seen: about as few messages as the first pass made.
                assert!(entries.len() <= first.len() + first.len() / 5 + 1, "{} vs {}", entries.len(), first.len());
            }
        }
    }

    #[test]
    fn oversized_records_are_reported() {
        let mut input = lines(3, 10);
        input.insert(1, format!("{{\"id\":\"{}\"}}", "q".repeat(5000)));
        let (entries, oversized) = encode_entries(&input, Encoding::Ndjson, 1000);
        assert_eq!(oversized, vec![1]);
        assert_eq!(entries.iter().map(|e| e.records).sum::<usize>(), 3);
    }
}
