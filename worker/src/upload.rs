//! The S3 side: gzip NDJSON objects for batches of records, JSON envelopes under errors/
//! for the lines set aside from a message and for malformed messages.

use std::io::Write;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use crate::aws::{error_chain, retry};
use crate::buffer::{error_key, object_key, Hour, Part, SetAside};
use crate::metrics::Counters;
use crate::queue::Received;

#[derive(Clone)]
pub struct Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    stack: String,
    worker: String,
    counters: Arc<Counters>,
    /// Bounds the PUTs in flight.
    slots: Arc<Semaphore>,
}

impl Store {
    pub fn new(client: aws_sdk_s3::Client, cfg: &crate::config::Config, counters: Arc<Counters>) -> Store {
        Store {
            client,
            bucket: cfg.bucket.clone(),
            prefix: cfg.key_prefix().to_string(),
            stack: crate::config::sanitize(&cfg.stack),
            worker: cfg.worker_name(),
            counters,
            slots: Arc::new(Semaphore::new(cfg.uploads as usize)),
        }
    }

    /// Stores one object per part and one errors/ object per message with lines set aside,
    /// in parallel; `true` only when every one is stored.
    pub async fn write_batch(&self, parts: Vec<(Hour, Part)>, set_aside: Vec<SetAside>) -> bool {
        let mut puts = tokio::task::JoinSet::new();
        for (hour, part) in parts {
            let store = self.clone();
            puts.spawn(async move { store.write_part(hour, part).await });
        }
        for s in set_aside {
            let store = self.clone();
            puts.spawn(async move { store.write_set_aside(s).await });
        }
        let mut all = true;
        while let Some(done) = puts.join_next().await {
            all &= matches!(done, Ok(true));
        }
        all
    }

    async fn write_part(&self, hour: Hour, part: Part) -> bool {
        let id = uuid::Uuid::new_v4().to_string();
        let key = object_key(&self.prefix, hour, &self.stack, &self.worker, &part.first_ts, &id);
        let raw = part.raw_bytes;
        // The members passed through, then the lines compressed here (one gzip file).
        let (ndjson, mut members) = (part.ndjson, part.members);
        let gz = if ndjson.is_empty() {
            members
        } else {
            let Ok(gz) = tokio::task::spawn_blocking(move || gzip(&ndjson)).await else {
                return false;
            };
            if members.is_empty() {
                gz
            } else {
                members.extend_from_slice(&gz);
                members
            }
        };
        let stored = gz.len();
        let meta = [("tyrell-records", part.records.to_string()), ("tyrell-first-ts", part.first_ts)];
        if !self.put(&key, gz, "application/gzip", &meta).await {
            return false;
        }
        Counters::inc(&self.counters.objects);
        Counters::add(&self.counters.records, part.records as u64);
        Counters::add(&self.counters.bytes_in, raw as u64);
        Counters::add(&self.counters.bytes_out, stored as u64);
        tracing::debug!(key, records = part.records, bytes = stored, "object stored");
        true
    }

    /// Archives the lines of one message that are not valid records under `errors/` as a
    /// JSON envelope `{message_id, reason, encoding, receive_count, archived_at, worker,
    /// lines: [{line, reason, raw}]}` (`reason`: how many lines, and the first one's);
    /// `true` once stored.
    async fn write_set_aside(&self, s: SetAside) -> bool {
        let (now, key) = self.error_object(&s.message_id);
        let reason = match s.lines.as_slice() {
            [] => return true,
            [one] => format!("1 line set aside: line {}: {}", one.line, one.reason),
            [first, ..] => format!("{} lines set aside: line {}: {} ...", s.lines.len(), first.line, first.reason),
        };
        let lines: Vec<_> =
            s.lines.iter().map(|r| serde_json::json!({"line": r.line, "reason": r.reason, "raw": r.raw})).collect();
        let envelope = serde_json::json!({
            "message_id": s.message_id,
            "reason": reason,
            "encoding": s.encoding,
            "receive_count": s.receive_count,
            "archived_at": now,
            "worker": self.worker,
            "lines": lines,
        });
        let meta = [
            ("tyrell-reason", header_safe(&reason)),
            ("tyrell-message-id", header_safe(&s.message_id)),
            ("tyrell-lines", s.lines.len().to_string()),
        ];
        let stored = self.put(&key, envelope.to_string().into_bytes(), "application/json", &meta).await;
        if stored {
            Counters::add(&self.counters.set_aside, s.lines.len() as u64);
            tracing::warn!(key, message_id = s.message_id, lines = s.lines.len(), reason, "lines set aside");
        }
        stored
    }

    /// The time (RFC 3339) and key of a new errors/ object for a message, in this UTC hour.
    fn error_object(&self, message_id: &str) -> (String, String) {
        let now = OffsetDateTime::now_utc();
        let hour = (now.year().clamp(0, 9999) as u16, now.month() as u8, now.day(), now.hour());
        let key = error_key(&self.prefix, hour, &self.stack, &self.worker, message_id);
        (now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(), key)
    }

    /// Archives a message none of whose lines can be read (bad encoding, base64 or gzip, no
    /// line) under `errors/` as a JSON envelope holding its raw body and the reason; `true`
    /// once stored.
    pub async fn write_malformed(&self, m: &Received, reason: &str) -> bool {
        let (now, key) = self.error_object(&m.id);
        let envelope = serde_json::json!({
            "message_id": m.id,
            "reason": reason,
            "encoding": m.encoding,
            "receive_count": m.receive_count,
            "archived_at": now,
            "worker": self.worker,
            "body": m.body,
        });
        let meta = [("tyrell-reason", header_safe(reason)), ("tyrell-message-id", header_safe(&m.id))];
        let stored = self.put(&key, envelope.to_string().into_bytes(), "application/json", &meta).await;
        if stored {
            Counters::inc(&self.counters.malformed);
            tracing::warn!(key, message_id = m.id, reason, "malformed message archived");
        }
        stored
    }

    async fn put(&self, key: &str, body: Vec<u8>, content_type: &str, meta: &[(&str, String)]) -> bool {
        let _slot = self.slots.acquire().await.expect("never closed");
        let result = retry("PutObject", &self.counters, || {
            Counters::inc(&self.counters.s3_put);
            let mut req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type(content_type)
                .body(ByteStream::from(body.clone()));
            for (k, v) in meta {
                req = req.metadata(*k, v);
            }
            req.send()
        })
        .await;
        if let Err(e) = &result {
            tracing::error!(key, error = error_chain(e), "could not store an object; its messages will be redelivered");
        }
        result.is_ok()
    }
}

/// `data` as one gzip member at [`record::GZIP_LEVEL`] (see there for the ratio it trades).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz =
        flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4), flate2::Compression::new(record::GZIP_LEVEL));
    gz.write_all(data).expect("writing to memory");
    gz.finish().expect("writing to memory")
}

/// Metadata travels in HTTP headers: printable ASCII only, at most 1 KiB.
fn header_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).take(1024).collect()
}
