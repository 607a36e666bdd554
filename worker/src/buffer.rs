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

use record::{Checked, Rejected};

/// `(year, month, day, hour)`, UTC.
pub type Hour = (u16, u8, u8, u8);

/// The records of one hour, waiting to become one object: a gzip file of one or more
/// members (RFC 1952 §2.2: "a series of members"; every gzip reader reads them all, e.g.
/// `gzip -d`, Python's `gzip`, flate2's `MultiGzDecoder`): first `members`, the gzip
/// streams of whole messages passed through as they came, then `ndjson` compressed.
#[derive(Debug, Default)]
pub struct Part {
    /// NDJSON still to compress: the original lines, each ending in `\n`.
    pub ndjson: Vec<u8>,
    /// Gzip members as they came in `gzip+base64` bodies, each decoding to exactly its
    /// message's lines, each ending in `\n` (passed through instead of compressed again:
    /// [`Buffer::add`]).
    pub members: Vec<u8>,
    /// NDJSON bytes in `members` and `ndjson` together.
    pub raw_bytes: usize,
    pub records: usize,
    /// The earliest record time, `YYYY-MM-DDTHH:MM:SS` (fractions dropped).
    pub first_ts: String,
    /// The earliest record time, whole (`first_ts` is it formatted).
    pub first: Option<time::OffsetDateTime>,
}

impl Part {
    /// Keeps `t` as the part's first time if it is the earliest so far (formatted only
    /// then, not once per record).
    fn earliest(&mut self, t: time::OffsetDateTime) {
        if self.first.is_none_or(|f| t < f) {
            self.first = Some(t);
            self.first_ts = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
        }
    }
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
    /// them end up in the next [`Batch`]. The hour is that of [`record::CheckedLine::utc`]
    /// (the time [`record::decode_checked`] read when it validated the record).
    ///
    /// A gzip body whose text is exactly its records ([`Checked::is_exact`]), all of one
    /// hour, is not compressed again: its gzip stream joins the part's members as it came
    /// (the object decodes to the same lines).
    pub fn add(&mut self, checked: Checked<'_>, set_aside: SetAside, now: Instant) {
        let hour_of = |t: time::OffsetDateTime| (t.year() as u16, t.month() as u8, t.day(), t.hour());
        // Hours since 1970 (UTC): one division per record to compare them.
        let hours = |t: time::OffsetDateTime| t.unix_timestamp().div_euclid(3600);
        let one_hour = checked.lines.first().map(|l| hour_of(l.utc)).filter(|_| {
            let first = hours(checked.lines[0].utc);
            checked.gzip.is_some() && checked.lines.iter().all(|l| hours(l.utc) == first) && checked.is_exact()
        });
        if let (Some(hour), Some(gz)) = (one_hour, &checked.gzip) {
            let part = self.parts.entry(hour).or_default();
            if let Some(t) = checked.lines.iter().map(|l| l.utc).min() {
                part.earliest(t);
            }
            part.members.extend_from_slice(gz);
            part.raw_bytes += checked.text.len();
            part.records += checked.lines.len();
            self.records += checked.lines.len();
            self.bytes += checked.text.len();
        } else {
            for line in &checked.lines {
                // parse_ts keeps the year in 0000..=9999.
                let part = self.parts.entry(hour_of(line.utc)).or_default();
                part.earliest(line.utc);
                let raw = &checked.text[line.range.clone()];
                part.ndjson.extend_from_slice(raw);
                part.ndjson.push(b'\n');
                part.raw_bytes += raw.len() + 1;
                part.records += 1;
                self.records += 1;
                self.bytes += raw.len() + 1;
            }
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
    use record::{decode_checked, encode_body, Encoding};

    fn msg(id: &str) -> SetAside {
        SetAside { message_id: id.into(), ..SetAside::default() }
    }

    fn ndjson(ids_ts: &[(&str, &str)]) -> String {
        ids_ts
            .iter()
            .map(|(id, ts)| {
                format!(r#"{{"id":"{id}","ts":"{ts}","stack":"s","region":"r","agent":"a","target":"t","status":"ok","loss":0.0,"rtt_ms":null,"error":null}}"#) + "\n"
            })
            .collect()
    }

    /// Checks `body` (which must be valid throughout) and adds it to `b` as message `id`.
    fn add(b: &mut Buffer, body: &str, enc: Encoding, id: &str, t0: Instant) {
        let c = decode_checked(body, enc).unwrap();
        assert!(c.rejected.is_empty());
        b.add(c, msg(id), t0);
    }

    /// What a part's object decodes to (its members, then its NDJSON compressed here).
    fn object_text(p: &Part) -> String {
        use std::io::Read;
        let mut gz = p.members.clone();
        if !p.ndjson.is_empty() {
            gz.extend_from_slice(&crate::upload::gzip(&p.ndjson));
        }
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(&gz[..]).read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn whole_gzip_messages_of_one_hour_pass_through_and_the_rest_is_compressed() {
        let t0 = Instant::now();
        let mut b = Buffer::default();
        let one_hour = ndjson(&[("a", "2026-11-23T10:00:02Z"), ("b", "2026-11-23T10:59:59.9Z")]);
        let two_hours = ndjson(&[("c", "2026-11-23T10:00:01Z"), ("d", "2026-11-23T11:00:00Z")]);
        let plain = ndjson(&[("e", "2026-11-23T10:30:00Z")]);
        let bad_last = ndjson(&[("f", "2026-11-23T10:30:00Z")]) + "{\"id\":\"g\"}\n";
        let gz = |t: &str| encode_body(t, Encoding::GzipBase64);
        add(&mut b, &gz(&one_hour), Encoding::GzipBase64, "m1", t0);
        add(&mut b, &gz(&two_hours), Encoding::GzipBase64, "m2", t0);
        add(&mut b, &plain, Encoding::Ndjson, "m3", t0);
        let bad_body = gz(&bad_last);
        let mut c = decode_checked(&bad_body, Encoding::GzipBase64).unwrap();
        let set_aside = SetAside { lines: std::mem::take(&mut c.rejected), ..msg("m4") };
        b.add(c, set_aside, t0);
        let batch = b.take().unwrap();
        assert_eq!(batch.records, 6);
        let (h10, h11) = (&batch.parts[0].1, &batch.parts[1].1);
        // Only m1 passed through: m2 spans two hours, m3 is not gzip, m4 has a line set aside.
        let m1 = record::decode_checked(&gz(&one_hour), Encoding::GzipBase64).unwrap().gzip.unwrap();
        assert_eq!(h10.members, m1);
        assert_eq!(h10.records, 5);
        assert_eq!((h10.first_ts.as_str(), h11.first_ts.as_str()), ("2026-11-23T10:00:01", "2026-11-23T11:00:00"));
        let text = object_text(h10);
        let mut got: Vec<&str> = text.lines().collect();
        got.sort_unstable();
        let mut want: Vec<&str> = one_hour
            .lines()
            .chain(two_hours.lines().take(1))
            .chain(plain.lines())
            .chain(bad_last.lines().take(1))
            .collect();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(h10.raw_bytes, text.len());
        assert_eq!(object_text(h11), two_hours.lines().nth(1).unwrap().to_string() + "\n");
        assert_eq!(batch.bytes, text.len() + h11.raw_bytes + "{\"id\":\"g\"}".len() + 1);
    }

    #[test]
    fn partitions_by_record_hour_and_keeps_lines() {
        let t0 = Instant::now();
        let mut b = Buffer::default();
        assert!(b.take().is_none());
        add(
            &mut b,
            &ndjson(&[("a", "2026-11-23T10:59:59.900Z"), ("b", "2026-11-23T11:00:00.100Z")]),
            Encoding::Ndjson,
            "m1",
            t0,
        );
        add(&mut b, &ndjson(&[("c", "2026-11-23T10:00:01Z")]), Encoding::Ndjson, "m2", t0);
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
        let mut d = decode_checked(&body, Encoding::Ndjson).unwrap();
        let mut b = Buffer::default();
        let set_aside = SetAside { lines: std::mem::take(&mut d.rejected), ..msg("m1") };
        b.add(d, set_aside, t0);
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
