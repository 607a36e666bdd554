//! The buffer and partitioner: pure bookkeeping, no I/O.
//!
//! Records are appended, as their original NDJSON lines, to one part per UTC hour of
//! their `ts`. The whole buffer is flushed at once (by size, by age, or on shutdown) as
//! a [`Batch`]: one object per hour it holds, plus the ids of every message whose records
//! it holds. A message whose records span hours therefore sits in exactly one batch, and
//! may be deleted as soon as all of that batch's objects are stored.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use record::Line;

/// `(year, month, day, hour)`, UTC.
pub type Hour = (u16, u8, u8, u8);

/// The records of one hour, waiting to become one object.
#[derive(Debug, Default)]
pub struct Part {
    /// NDJSON: the original lines, each ending in `\n`.
    pub ndjson: Vec<u8>,
    pub records: usize,
    /// The earliest record time, `YYYY-MM-DDTHH:MM:SS` (fractions dropped).
    pub first_ts: String,
}

/// What one flush writes and then deletes.
#[derive(Debug, Default)]
pub struct Batch {
    pub parts: Vec<(Hour, Part)>,
    /// Messages whose records are all in `parts` (or that hold none, e.g. a malformed
    /// message already archived under errors/): delete them once the parts are stored.
    pub messages: Vec<String>,
    pub records: usize,
    pub bytes: usize,
}

#[derive(Debug, Default)]
pub struct Buffer {
    parts: BTreeMap<Hour, Part>,
    messages: Vec<String>,
    records: usize,
    bytes: usize,
    opened: Option<Instant>,
}

impl Buffer {
    /// Adds one message's records; all of them end up in the next [`Batch`].
    pub fn add(&mut self, message_id: String, lines: Vec<Line>, now: Instant) {
        for line in lines {
            let hour = line.record.hour().expect("decode_body validated ts");
            let part = self.parts.entry(hour).or_default();
            let ts = &line.record.ts[..19];
            if part.first_ts.is_empty() || ts < part.first_ts.as_str() {
                part.first_ts = ts.to_string();
            }
            part.ndjson.extend_from_slice(line.raw.as_bytes());
            part.ndjson.push(b'\n');
            part.records += 1;
            self.records += 1;
            self.bytes += line.raw.len() + 1;
        }
        self.add_message(message_id, now);
    }

    /// Adds a message that carries no records here but must be deleted with the next batch.
    pub fn add_message(&mut self, message_id: String, now: Instant) {
        self.messages.push(message_id);
        self.opened.get_or_insert(now);
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the buffer is due: `max_bytes` of records, or its first message `max_age` old.
    pub fn due(&self, now: Instant, max_bytes: usize, max_age: Duration) -> bool {
        match self.opened {
            None => false,
            Some(opened) => self.bytes >= max_bytes || now.duration_since(opened) >= max_age,
        }
    }

    /// Empties the buffer into a batch (`None` when there is nothing to flush).
    pub fn take(&mut self) -> Option<Batch> {
        if self.is_empty() {
            return None;
        }
        let taken = std::mem::take(self);
        Some(Batch {
            parts: taken.parts.into_iter().collect(),
            messages: taken.messages,
            records: taken.records,
            bytes: taken.bytes,
        })
    }
}

/// `PREFIX/YYYY/MM/DD/HH/` (no leading slash when the prefix is empty).
pub fn hour_dir(prefix: &str, (y, mo, d, h): Hour) -> String {
    let dir = format!("{y:04}/{mo:02}/{d:02}/{h:02}/");
    if prefix.is_empty() {
        dir
    } else {
        format!("{prefix}/{dir}")
    }
}

/// `PREFIX/YYYY/MM/DD/HH/STACK-WORKER-FIRSTTS-UUID.ndjson.gz`, FIRSTTS as `YYYYMMDDTHHMMSSZ`.
pub fn object_key(prefix: &str, hour: Hour, stack: &str, worker: &str, first_ts: &str, id: &str) -> String {
    let compact: String = first_ts.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("{}{stack}-{worker}-{compact}Z-{id}.ndjson.gz", hour_dir(prefix, hour))
}

/// `PREFIX/errors/YYYY/MM/DD/HH/STACK-WORKER-MESSAGEID.json`, hour of reception.
pub fn error_key(prefix: &str, hour: Hour, stack: &str, worker: &str, message_id: &str) -> String {
    let errors = if prefix.is_empty() { "errors".to_string() } else { format!("{prefix}/errors") };
    format!("{}{stack}-{worker}-{}.json", hour_dir(&errors, hour), crate::config::sanitize(message_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use record::{decode_body, Encoding};

    fn lines(ids_ts: &[(&str, &str)]) -> Vec<Line> {
        let body: String = ids_ts
            .iter()
            .map(|(id, ts)| {
                format!(r#"{{"id":"{id}","ts":"{ts}","stack":"s","region":"r","agent":"a","target":"t","status":"ok","loss":0.0,"rtt_ms":null,"error":null}}"#) + "\n"
            })
            .collect();
        decode_body(&body, Encoding::Ndjson).unwrap()
    }

    #[test]
    fn partitions_by_record_hour_and_keeps_lines() {
        let t0 = Instant::now();
        let mut b = Buffer::default();
        assert!(b.take().is_none());
        b.add("m1".into(), lines(&[("a", "2026-11-23T10:59:59.900Z"), ("b", "2026-11-23T11:00:00.100Z")]), t0);
        b.add("m2".into(), lines(&[("c", "2026-11-23T10:00:01Z")]), t0);
        assert!(!b.due(t0, 1 << 20, Duration::from_secs(60)));
        assert!(b.due(t0 + Duration::from_secs(60), 1 << 20, Duration::from_secs(60)));
        assert!(b.due(t0, 10, Duration::from_secs(60)));
        let batch = b.take().unwrap();
        assert!(b.is_empty() && !b.due(t0 + Duration::from_secs(99), 0, Duration::ZERO));
        assert_eq!(batch.messages, ["m1", "m2"]);
        assert_eq!(batch.records, 3);
        let hours: Vec<Hour> = batch.parts.iter().map(|(h, _)| *h).collect();
        assert_eq!(hours, [(2026, 11, 23, 10), (2026, 11, 23, 11)]);
        let p10 = &batch.parts[0].1;
        assert_eq!((p10.records, p10.first_ts.as_str()), (2, "2026-11-23T10:00:01"));
        let text = String::from_utf8(p10.ndjson.clone()).unwrap();
        assert!(text.lines().next().unwrap().contains(r#""id":"a""#) && text.ends_with('\n'));
        assert_eq!(batch.bytes, batch.parts.iter().map(|(_, p)| p.ndjson.len()).sum::<usize>());
    }

    #[test]
    fn empty_messages_still_flush() {
        let mut b = Buffer::default();
        b.add_message("bad".into(), Instant::now());
        let batch = b.take().unwrap();
        assert!(batch.parts.is_empty());
        assert_eq!(batch.messages, ["bad"]);
    }

    #[test]
    fn keys_are_zero_padded_and_prefixed() {
        let h = (2026, 1, 2, 3);
        assert_eq!(
            object_key("", h, "sw", "ip-1", "2026-01-02T03:04:05", "u"),
            "2026/01/02/03/sw-ip-1-20260102T030405Z-u.ndjson.gz"
        );
        assert_eq!(
            object_key("a/b", h, "s", "w", "2026-01-02T03:04:05", "u"),
            "a/b/2026/01/02/03/s-w-20260102T030405Z-u.ndjson.gz"
        );
        assert_eq!(error_key("", h, "s", "w", "m/1"), "errors/2026/01/02/03/s-w-m_1.json");
        assert_eq!(error_key("p", h, "s", "w", "m"), "p/errors/2026/01/02/03/s-w-m.json");
    }
}
