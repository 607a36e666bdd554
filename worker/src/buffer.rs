//! The buffer and partitioner: pure bookkeeping, no I/O.
//!
//! Records are appended, as their original NDJSON lines, to one part per UTC hour of
//! their `ts`. The whole buffer is flushed at once (by size, by age, or on shutdown) as
//! a [`Batch`]: one object per hour it holds, one errors/ object per message with lines
//! set aside (lines that are not valid records: [`SetAside`]), plus the ids of every message
//! whose lines it holds. A message whose records span hours therefore sits in exactly one
//! batch, and may be deleted as soon as all of that batch's objects are stored.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use record::{Line, Rejected};

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
    /// The earliest record time, whole (`first_ts` is it formatted).
    pub first: Option<time::OffsetDateTime>,
}

/// The lines of one message that are not valid records, with what identifies the message:
/// stored as one errors/ object (`PREFIX/errors/YYYY/MM/DD/HH/STACK-WORKER-MESSAGEID.json`)
/// in the same batch as the message's good records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAside {
    pub message_id: String,
    /// The message's [`record::ENCODING_ATTRIBUTE`], as received.
    pub encoding: Option<String>,
    pub receive_count: u32,
    /// The lines set aside, in body order (empty: nothing to store).
    pub lines: Vec<Rejected>,
}

/// What one flush writes and then deletes.
#[derive(Debug, Default)]
pub struct Batch {
    pub parts: Vec<(Hour, Part)>,
    /// One errors/ object each.
    pub set_aside: Vec<SetAside>,
    /// Messages whose records are all in `parts` (or that hold none, e.g. a malformed
    /// message already archived under errors/): delete them once the parts are stored.
    pub messages: Vec<String>,
    pub records: usize,
    /// Bytes of the lines held: records (NDJSON with newlines) plus lines set aside.
    pub bytes: usize,
}

#[derive(Debug, Default)]
pub struct Buffer {
    parts: BTreeMap<Hour, Part>,
    set_aside: Vec<SetAside>,
    messages: Vec<String>,
    records: usize,
    bytes: usize,
    opened: Option<Instant>,
}

impl Buffer {
    /// Adds one message: its records go to the part of their UTC hour, its lines that are
    /// not records (`set_aside`, which also names the message) to an errors/ object; all of
    /// them end up in the next [`Batch`]. The hour is that of [`Line::utc`] (the time
    /// [`record::decode_lines`] read when it validated the record).
    pub fn add(&mut self, lines: Vec<Line>, set_aside: SetAside, now: Instant) {
        for line in lines {
            let t = line.utc;
            // parse_ts keeps the year in 0000..=9999.
            let hour = (t.year() as u16, t.month() as u8, t.day(), t.hour());
            let part = self.parts.entry(hour).or_default();
            // Formatted only when it is the earliest so far (not once per record).
            if part.first.is_none_or(|f| t < f) {
                part.first = Some(t);
                part.first_ts = format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                    t.year(),
                    t.month() as u8,
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second()
                );
            }
            part.ndjson.extend_from_slice(line.raw.as_bytes());
            part.ndjson.push(b'\n');
            part.records += 1;
            self.records += 1;
            self.bytes += line.raw.len() + 1;
        }
        let message_id = set_aside.message_id.clone();
        if !set_aside.lines.is_empty() {
            self.bytes += set_aside.lines.iter().map(|r| r.raw.len() + 1).sum::<usize>();
            self.set_aside.push(set_aside);
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
            set_aside: taken.set_aside,
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
    use record::{decode_body, decode_lines, Encoding};

    fn msg(id: &str) -> SetAside {
        SetAside { message_id: id.into(), ..SetAside::default() }
    }

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
        b.add(lines(&[("a", "2026-11-23T10:59:59.900Z"), ("b", "2026-11-23T11:00:00.100Z")]), msg("m1"), t0);
        b.add(lines(&[("c", "2026-11-23T10:00:01Z")]), msg("m2"), t0);
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
        assert!(batch.set_aside.is_empty(), "no errors/ object for messages without bad lines");
    }

    #[test]
    fn offsets_are_partitioned_by_their_utc_hour_and_bad_lines_set_aside() {
        // The record from the field (+00:00) and one an hour ahead of UTC both belong to
        // 11:00 UTC; the original lines are kept untouched, the first-ts is UTC.
        let t0 = Instant::now();
        let body = [
            ("g1", "2026-11-23T10:15:00.000Z"),
            ("o1", "2026-11-23T11:30:00.000+00:00"),
            ("o2", "2026-11-23T12:20:00.000+01:00"),
            ("bad", "2026-11-23T11:30:00.000+99:00"),
        ]
        .iter()
        .map(|(id, ts)| {
            format!(r#"{{"id":"{id}","ts":"{ts}","stack":"s","region":"r","agent":"a","target":"t","status":"ok","loss":0.0,"rtt_ms":null,"error":null}}"#) + "\n"
        })
        .collect::<String>();
        let d = decode_lines(&body, Encoding::Ndjson).unwrap();
        let mut b = Buffer::default();
        b.add(d.lines, SetAside { lines: d.rejected, ..msg("m1") }, t0);
        let batch = b.take().unwrap();
        let hours: Vec<Hour> = batch.parts.iter().map(|(h, _)| *h).collect();
        assert_eq!(hours, [(2026, 11, 23, 10), (2026, 11, 23, 11)]);
        let p11 = &batch.parts[1].1;
        assert_eq!((p11.records, p11.first_ts.as_str()), (2, "2026-11-23T11:20:00"));
        let text = String::from_utf8(p11.ndjson.clone()).unwrap();
        assert!(text.contains("11:30:00.000+00:00") && text.contains("12:20:00.000+01:00"), "{text}");
        assert_eq!(batch.messages, ["m1"]);
        assert_eq!(batch.set_aside.len(), 1);
        let s = &batch.set_aside[0];
        assert_eq!((s.message_id.as_str(), s.lines.len(), s.lines[0].line), ("m1", 1, 4));
        assert!(s.lines[0].raw.contains(r#""id":"bad""#) && s.lines[0].reason.contains("RFC 3339"));
        assert_eq!(batch.records, 3);
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
