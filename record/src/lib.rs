//! The ping record: the one schema shared by the programs that produce and consume it.
//!
//! A bee measures one target for one round and publishes one [`PingRecord`] as JSON on
//! `ping/<target>`. The indexer packs many records into one SQS message body as NDJSON
//! (one JSON object per line), optionally gzip-compressed and base64-encoded; the
//! message attribute [`ENCODING_ATTRIBUTE`] says which ([`Encoding`]). The worker parses
//! bodies back into lines and archives the original lines, untouched, in S3.
//!
//! ```json
//! {"id":"<unique>","ts":"2026-11-23T10:00:00.123Z","stack":"swarm1","region":"eu-west-1",
//!  "agent":"bee-i-0abc","target":"example.org","status":"ok","loss":0.0,
//!  "rtt_ms":{"min":1.0,"avg":1.5,"max":2.0,"stddev":0.3},"error":null}
//! ```

use std::io::{Read, Write};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// SQS message attribute (String) naming the body's [`Encoding`]. Absent means NDJSON.
pub const ENCODING_ATTRIBUTE: &str = "tyrell-encoding";

/// The largest SQS message body the indexer produces (the SQS limit tyrell designs for).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// One ping result: one target, one round, one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingRecord {
    /// Unique per record (a UUID); lets consumers de-duplicate at-least-once deliveries.
    pub id: String,
    /// When the round finished, RFC 3339 UTC with milliseconds: `2026-11-23T10:00:00.123Z`.
    pub ts: String,
    /// The swarm (base stack) name.
    pub stack: String,
    /// The AWS region the bee runs in.
    pub region: String,
    /// The bee's id (its MQTT client id).
    pub agent: String,
    /// The host name or address as given in `watch`.
    pub target: String,
    pub status: Status,
    /// Fraction of probes lost, 0.0..=1.0.
    pub loss: f64,
    /// Round-trip times of the answered probes; `null` when none answered.
    pub rtt_ms: Option<Rtt>,
    /// Why the round failed (`status: error`), else `null`.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Error,
}

/// Round-trip time statistics in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rtt {
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    pub stddev: f64,
}

impl Rtt {
    /// Statistics of the given samples (population standard deviation, as `ping` prints
    /// as `mdev`); `None` when there are none.
    pub fn from_samples(samples: &[f64]) -> Option<Rtt> {
        if samples.is_empty() {
            return None;
        }
        let n = samples.len() as f64;
        let avg = samples.iter().sum::<f64>() / n;
        let var = samples.iter().map(|s| (s - avg).powi(2)).sum::<f64>() / n;
        Some(Rtt {
            min: samples.iter().cloned().fold(f64::INFINITY, f64::min),
            avg,
            max: samples.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            stddev: var.sqrt(),
        })
    }
}

impl PingRecord {
    /// The record's time as `(year, month, day, hour)` in UTC, read from `ts`
    /// (`YYYY-MM-DDTHH:...Z`). `None` when `ts` is not in that form.
    pub fn hour(&self) -> Option<(u16, u8, u8, u8)> {
        hour_of(&self.ts)
    }

    /// Checks what serde cannot: a well-formed UTC timestamp, a loss fraction in range,
    /// non-empty id/agent/target.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty() {
            return Err("empty id".into());
        }
        if self.agent.is_empty() || self.target.is_empty() {
            return Err("empty agent or target".into());
        }
        if self.hour().is_none() {
            return Err(format!("ts {:?} is not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SS[.sss]Z)", self.ts));
        }
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(format!("loss {} outside 0..1", self.loss));
        }
        Ok(())
    }
}

/// `(year, month, day, hour)` of an RFC 3339 UTC timestamp `YYYY-MM-DDTHH:MM:SS[.frac]Z`.
pub fn hour_of(ts: &str) -> Option<(u16, u8, u8, u8)> {
    let b = ts.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !ts.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<u16>().ok();
    let (y, mo, d, h, mi, s) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some((y, mo as u8, d as u8, h as u8))
}

/// How a message body is encoded; carried in the [`ENCODING_ATTRIBUTE`] message attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Plain NDJSON text.
    Ndjson,
    /// NDJSON, gzip-compressed, then standard base64 (SQS bodies must be text).
    GzipBase64,
}

impl Encoding {
    pub const fn as_str(self) -> &'static str {
        match self {
            Encoding::Ndjson => "ndjson",
            Encoding::GzipBase64 => "gzip+base64",
        }
    }

    /// Reads the attribute value; a missing attribute means [`Encoding::Ndjson`].
    pub fn from_attribute(value: Option<&str>) -> Result<Encoding, DecodeError> {
        match value {
            None | Some("ndjson") => Ok(Encoding::Ndjson),
            Some("gzip+base64") => Ok(Encoding::GzipBase64),
            Some(other) => Err(DecodeError::UnknownEncoding(other.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown encoding {0:?} (expected \"ndjson\" or \"gzip+base64\")")]
    UnknownEncoding(String),
    #[error("body is not valid base64: {0}")]
    Base64(String),
    #[error("body is not valid gzip: {0}")]
    Gzip(String),
    #[error("body is not UTF-8")]
    Utf8,
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("body holds no records")]
    Empty,
}

/// One record of a body, with the exact line it came from (archived untouched).
#[derive(Debug, Clone)]
pub struct Line {
    pub record: PingRecord,
    pub raw: String,
}

/// Serialises records as NDJSON: one object per line, each line ending in `\n`.
pub fn to_ndjson(records: &[PingRecord]) -> String {
    let mut out = String::new();
    for r in records {
        out.push_str(&serde_json::to_string(r).expect("a record always serialises"));
        out.push('\n');
    }
    out
}

/// Encodes NDJSON text as a message body in the given encoding.
pub fn encode_body(ndjson: &str, encoding: Encoding) -> String {
    match encoding {
        Encoding::Ndjson => ndjson.to_string(),
        Encoding::GzipBase64 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(ndjson.as_bytes()).expect("writing to memory");
            let bytes = gz.finish().expect("writing to memory");
            base64::engine::general_purpose::STANDARD.encode(bytes)
        }
    }
}

/// Decodes a message body into its lines. Any fault — bad base64, bad gzip, a line
/// that is not a valid record — rejects the whole body, naming the first bad line:
/// the consumer then archives the raw body under its error prefix.
pub fn decode_body(body: &str, encoding: Encoding) -> Result<Vec<Line>, DecodeError> {
    let text: std::borrow::Cow<str> = match encoding {
        Encoding::Ndjson => body.into(),
        Encoding::GzipBase64 => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(body.trim())
                .map_err(|e| DecodeError::Base64(e.to_string()))?;
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&bytes[..])
                .read_to_end(&mut out)
                .map_err(|e| DecodeError::Gzip(e.to_string()))?;
            String::from_utf8(out).map_err(|_| DecodeError::Utf8)?.into()
        }
    };
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let record: PingRecord =
            serde_json::from_str(raw).map_err(|e| DecodeError::Line { line: i + 1, reason: e.to_string() })?;
        record.validate().map_err(|reason| DecodeError::Line { line: i + 1, reason })?;
        lines.push(Line { record, raw: raw.to_string() });
    }
    if lines.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(lines)
}

/// Packs serialised records (one NDJSON line each, without the newline) into message
/// bodies of at most `max_bytes` each, in order. Returns the bodies and the indexes of
/// lines longer than `max_bytes` on their own: those can never be sent and must be reported.
pub fn pack_lines<'a, I>(lines: I, max_bytes: usize) -> (Vec<String>, Vec<usize>)
where
    I: IntoIterator<Item = &'a str>,
{
    let mut bodies = Vec::new();
    let mut oversized = Vec::new();
    let mut cur = String::new();
    for (i, line) in lines.into_iter().enumerate() {
        let need = line.len() + 1;
        if need > max_bytes {
            oversized.push(i);
            continue;
        }
        if cur.len() + need > max_bytes {
            bodies.push(std::mem::take(&mut cur));
        }
        cur.push_str(line);
        cur.push('\n');
    }
    if !cur.is_empty() {
        bodies.push(cur);
    }
    (bodies, oversized)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> PingRecord {
        PingRecord {
            id: id.into(),
            ts: "2026-11-23T10:00:00.123Z".into(),
            stack: "s".into(),
            region: "eu-west-1".into(),
            agent: "bee-1".into(),
            target: "127.0.0.1".into(),
            status: Status::Ok,
            loss: 0.0,
            rtt_ms: Rtt::from_samples(&[1.0, 2.0, 3.0]),
            error: None,
        }
    }

    #[test]
    fn round_trips_both_encodings() {
        let records = vec![rec("a"), rec("b")];
        let nd = to_ndjson(&records);
        for enc in [Encoding::Ndjson, Encoding::GzipBase64] {
            let body = encode_body(&nd, enc);
            let lines = decode_body(&body, enc).unwrap();
            assert_eq!(lines.iter().map(|l| l.record.clone()).collect::<Vec<_>>(), records);
            assert_eq!(Encoding::from_attribute(Some(enc.as_str())).unwrap(), enc);
        }
    }

    #[test]
    fn rejects_bad_bodies_naming_the_line() {
        let good = serde_json::to_string(&rec("a")).unwrap();
        let err = decode_body(&format!("{good}\n{{not json\n"), Encoding::Ndjson).unwrap_err();
        assert!(matches!(err, DecodeError::Line { line: 2, .. }), "{err}");
        assert!(matches!(decode_body("!!!", Encoding::GzipBase64), Err(DecodeError::Base64(_))));
        assert!(matches!(decode_body("aGVsbG8=", Encoding::GzipBase64), Err(DecodeError::Gzip(_))));
        assert!(matches!(decode_body("\n", Encoding::Ndjson), Err(DecodeError::Empty)));
        let mut bad = rec("x");
        bad.ts = "yesterday".into();
        let line = serde_json::to_string(&bad).unwrap();
        assert!(matches!(decode_body(&line, Encoding::Ndjson), Err(DecodeError::Line { line: 1, .. })));
        assert!(Encoding::from_attribute(Some("zstd")).is_err());
    }

    #[test]
    fn hour_partition_and_rtt() {
        assert_eq!(hour_of("2026-01-02T03:04:05Z"), Some((2026, 1, 2, 3)));
        assert_eq!(hour_of("2026-01-02T03:04:05.999Z"), Some((2026, 1, 2, 3)));
        assert_eq!(hour_of("2026-01-02T03:04:05+01:00"), None);
        assert_eq!(hour_of("2026-13-02T03:04:05Z"), None);
        let r = Rtt::from_samples(&[1.0, 3.0]).unwrap();
        assert_eq!((r.min, r.avg, r.max, r.stddev), (1.0, 2.0, 3.0, 1.0));
        assert!(Rtt::from_samples(&[]).is_none());
    }

    #[test]
    fn packs_within_the_limit_in_order() {
        let lines: Vec<String> = (0..100).map(|i| format!("{i:0>50}")).collect();
        let (bodies, oversized) = pack_lines(lines.iter().map(String::as_str).chain(["x".repeat(300).as_str()]), 200);
        assert_eq!(oversized, vec![100]);
        assert!(bodies.iter().all(|b| b.len() <= 200));
        let rejoined: Vec<&str> = bodies.iter().flat_map(|b| b.lines()).collect();
        assert_eq!(rejoined, lines.iter().map(String::as_str).collect::<Vec<_>>());
    }
}
