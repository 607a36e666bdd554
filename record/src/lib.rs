//! The ping record: the one schema shared by the programs that produce and consume it.
//!
//! A bee measures one target for one round and publishes one [`PingRecord`] as JSON on
//! `ping/<target>`. The indexer packs many records into one SQS message body as NDJSON
//! (one JSON object per line), optionally gzip-compressed and base64-encoded; the
//! message attribute [`ENCODING_ATTRIBUTE`] says which ([`Encoding`]). The worker parses
//! bodies back into lines ([`decode_lines`]) and archives the original lines, untouched, in
//! S3; a line that is not a valid record is set aside on its own ([`Rejected`]), never
//! taking the good lines of its body with it.
//!
//! Schema 2 (what bees write since issue 13; every field is documented once, on
//! [`PingRecord`] and [`Rtt`], with its unit):
//!
//! ```json
//! {"schema":2,"id":"<unique>","ts":"2026-11-23T10:00:00.123Z","stack":"swarm1",
//!  "region":"eu-west-1","agent":"bee-i-0abc","target":"example.org","status":"ok",
//!  "loss":0.0,"rtt_ms":{"min":1.0,"avg":1.5,"max":2.0,"stddev":0.3,"p50":1.4,"p90":1.9,
//!  "p99":2.0,"jitter":0.2},"error":null,"sent":10,"ttl":57,"addr":"93.184.215.14",
//!  "resolve_ms":3.2,"late_ms":0.4,"clock_synced":true}
//! ```
//!
//! Schema 1 (the original swarm's and the first Rust bees') is the same without `schema`
//! and without the fields marked *schema 2*; it still parses (`schema` reads as 1, the
//! new fields as absent) and flows through every program. Schema 2 only adds fields,
//! every one optional: a consumer that knows schema 1 reads schema 2 unchanged, and a
//! reader of schema 2 treats an absent field as "not measured". Readers ignore fields
//! they do not know, so a later schema that only adds fields reads too.

mod check;

use std::borrow::Cow;
use std::io::{Read, Write};
use std::ops::Range;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// SQS message attribute (String) naming the body's [`Encoding`]. Absent means NDJSON.
pub const ENCODING_ATTRIBUTE: &str = "tyrell-encoding";

/// The largest SQS message body the indexer produces (the SQS limit tyrell designs for).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// The most NDJSON one body may decode to, in bytes: 64 × [`MAX_MESSAGE_BYTES`] (16 MiB).
/// The indexer puts at most 1 MiB of NDJSON in one gzip body, so only a corrupt or hostile
/// body (a gzip bomb) reaches this; it bounds the memory one message can take.
pub const MAX_DECODED_BYTES: usize = 64 * MAX_MESSAGE_BYTES;

/// The gzip level of every gzip this project writes: SQS bodies ([`encode_body`]) and the
/// worker's archive objects. Level 1 (zlib's fastest): on schema-2 ping NDJSON it costs
/// about a fifth of level 6's CPU for about a fifth more bytes (ratio ~4.2 instead of ~5.2
/// on varied records, measured for issue 13; benchmarks in worker/README.md and
/// swarm/README.md). Compressing is most of what the indexer and the worker spend per
/// record; the bytes it saves are priced in SQS 64 KiB chunks and S3 storage, both small.
pub const GZIP_LEVEL: u32 = 1;

/// The schema the producers of this crate write (the record's `schema` field).
pub const SCHEMA: u32 = 2;

fn schema_1() -> u32 {
    1
}

/// One ping result: one target, one round, one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingRecord {
    /// The record's schema: 2 ([`SCHEMA`]); absent in schema 1 records, read as 1.
    #[serde(default = "schema_1")]
    pub schema: u32,
    /// Unique per record (a UUID); lets consumers de-duplicate at-least-once deliveries.
    pub id: String,
    /// When the round finished, an RFC 3339 `date-time` (RFC 3339 §5.6). The bee writes UTC
    /// with milliseconds (`2026-11-23T10:00:00.123Z`); consumers accept any offset
    /// (`2026-11-23T11:00:00.123+01:00` is the same instant) through [`parse_ts`].
    pub ts: String,
    /// The swarm (base stack) name.
    pub stack: String,
    /// The AWS region the bee runs in.
    pub region: String,
    /// The bee's id (its MQTT client id).
    pub agent: String,
    /// The host name or address in its canonical spelling (`swarm::targets::canonical`:
    /// RFC 5952 IPv6, dotted-quad IPv4, lowercase names without a trailing dot).
    pub target: String,
    /// `ok`: the probes were sent (whether answered or not); `error`: the target did not
    /// resolve or no probe could be sent ([`PingRecord::error`] says why).
    pub status: Status,
    /// Fraction of probes lost, 0.0..=1.0 (1.0 for `status: error`).
    pub loss: f64,
    /// Round-trip times of the answered probes; `null` when none answered.
    pub rtt_ms: Option<Rtt>,
    /// Why the round failed (`status: error`), else `null`.
    pub error: Option<String>,
    /// *Schema 2.* Echo requests sent in the round (`BEE_PROBES` unless sending failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<u16>,
    /// *Schema 2.* The IP TTL (IPv4) or hop limit (IPv6) the replies arrived with, the
    /// lowest of the round's replies (0..=255); absent when no reply came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u8>,
    /// *Schema 2.* The address pinged (RFC 5952 for IPv6): the target itself for an
    /// address, the resolved one for a name; absent when a name did not resolve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// *Schema 2.* How long resolving the name took, in milliseconds (also when it
    /// failed); absent for a target that is an address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_ms: Option<f64>,
    /// *Schema 2.* How late the bee's scheduler was, in milliseconds (≥ 0): the largest
    /// delay of a probe's send past its planned time (round start as scheduled + name
    /// resolution + its place × the probe spacing). Large values mean a busy bee whose
    /// RTTs may still be right (kernel timestamps) but whose rounds slip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_ms: Option<f64>,
    /// *Schema 2.* Whether the bee's clock was synchronised (NTP) when the record was
    /// made: the kernel's `STA_UNSYNC` flag clear (`ntp_adjtime(2)`, as `timedatectl`'s
    /// "System clock synchronized"). `false` means `ts` may be off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_synced: Option<bool>,
    /// *Schema 2, optional.* The bee's count of the records it published, this one
    /// included (1, 2, 3, … across all its targets), from the start of the bee process: a
    /// consumer that sees `seq` 5 and 7 of one `agent` lost 6 (or will see it late). A bee
    /// that restarts counts from 1 again. Absent from records of older bees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl Default for PingRecord {
    /// An empty schema-2 record (`status: ok`, no measurements): a base for struct updates.
    fn default() -> PingRecord {
        PingRecord {
            schema: SCHEMA,
            id: String::new(),
            ts: String::new(),
            stack: String::new(),
            region: String::new(),
            agent: String::new(),
            target: String::new(),
            status: Status::Ok,
            loss: 0.0,
            rtt_ms: None,
            error: None,
            sent: None,
            ttl: None,
            addr: None,
            resolve_ms: None,
            late_ms: None,
            clock_synced: None,
            seq: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The probes were sent (answered or not).
    Ok,
    /// The target did not resolve, or no probe could be sent.
    Error,
}

/// Round-trip time statistics of a round's answered probes, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rtt {
    /// The shortest round trip.
    pub min: f64,
    /// The mean round trip.
    pub avg: f64,
    /// The longest round trip.
    pub max: f64,
    /// Population standard deviation (`ping`'s `mdev`).
    pub stddev: f64,
    /// *Schema 2.* Percentiles by the nearest-rank method (the smallest sample with at
    /// least p% of the samples at or below it): with 10 probes p90 is the 9th smallest
    /// and p99 the largest. This one is the median (p50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    /// *Schema 2.* The 90th percentile (nearest rank, as `p50`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p90: Option<f64>,
    /// *Schema 2.* The 99th percentile (nearest rank, as `p50`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
    /// *Schema 2.* Jitter: the mean absolute difference between consecutive round trips,
    /// in the order the replies came (the RFC 3550 §6.4.1 difference, unsmoothed); 0 with
    /// one sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

impl Rtt {
    /// Statistics of the given samples (ms, in the order the replies came); `None` when
    /// there are none. NaN samples are not expected (the bee measures durations).
    pub fn from_samples(samples: &[f64]) -> Option<Rtt> {
        if samples.is_empty() {
            return None;
        }
        let n = samples.len() as f64;
        let avg = samples.iter().sum::<f64>() / n;
        let var = samples.iter().map(|s| (s - avg).powi(2)).sum::<f64>() / n;
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = |p: f64| sorted[((p / 100.0 * n).ceil() as usize).clamp(1, sorted.len()) - 1];
        let jitter = if samples.len() < 2 {
            0.0
        } else {
            samples.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (n - 1.0)
        };
        Some(Rtt {
            min: sorted[0],
            avg,
            max: sorted[sorted.len() - 1],
            stddev: var.sqrt(),
            p50: Some(rank(50.0)),
            p90: Some(rank(90.0)),
            p99: Some(rank(99.0)),
            jitter: Some(jitter),
        })
    }
}

impl PingRecord {
    /// The record's time as `(year, month, day, hour)` in UTC, read from `ts` with any
    /// RFC 3339 offset ([`hour_of`]). `None` when `ts` is not an RFC 3339 `date-time`.
    pub fn hour(&self) -> Option<(u16, u8, u8, u8)> {
        hour_of(&self.ts)
    }

    /// The record's time as an instant in UTC ([`parse_ts`]); the error is one sentence.
    pub fn utc(&self) -> Result<OffsetDateTime, String> {
        parse_ts(&self.ts)
    }

    /// Checks what serde cannot: a schema of at least 1, an RFC 3339 timestamp (any
    /// offset, [`parse_ts`]), a loss fraction in 0..=1, non-empty id/agent/target,
    /// no negative `resolve_ms`/`late_ms`. The error is one sentence.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_utc().map(|_| ())
    }

    /// [`PingRecord::validate`], returning the record's time in UTC ([`parse_ts`]) so it
    /// need not be parsed again.
    pub fn validate_utc(&self) -> Result<OffsetDateTime, String> {
        self.view().validate_utc()
    }

    /// The record as a [`RecordView`] borrowing its strings (no copy).
    pub fn view(&self) -> RecordView<'_> {
        RecordView {
            schema: self.schema,
            id: Cow::Borrowed(&self.id),
            ts: Cow::Borrowed(&self.ts),
            stack: Cow::Borrowed(&self.stack),
            region: Cow::Borrowed(&self.region),
            agent: Cow::Borrowed(&self.agent),
            target: Cow::Borrowed(&self.target),
            status: self.status,
            loss: self.loss,
            rtt_ms: self.rtt_ms,
            error: self.error.as_deref().map(Cow::Borrowed),
            sent: self.sent,
            ttl: self.ttl,
            addr: self.addr.as_deref().map(Cow::Borrowed),
            resolve_ms: self.resolve_ms,
            late_ms: self.late_ms,
            clock_synced: self.clock_synced,
            seq: self.seq,
        }
    }
}

/// A [`PingRecord`] read without copying its strings: each one borrows from the JSON text
/// it was parsed from (`serde_json::from_str` / `from_slice`; a string with JSON escapes in
/// it is unescaped into its own copy). The same fields, names, types, order and rules as
/// [`PingRecord`] (each documented there): the JSON that parses as one parses as the other
/// (with the same error), and both serialise to the same bytes. For consumers that only
/// check a record, or write it back, once per record (the indexer, the worker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordView<'a> {
    /// [`PingRecord::schema`].
    #[serde(default = "schema_1")]
    pub schema: u32,
    /// [`PingRecord::id`].
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// [`PingRecord::ts`].
    #[serde(borrow)]
    pub ts: Cow<'a, str>,
    /// [`PingRecord::stack`].
    #[serde(borrow)]
    pub stack: Cow<'a, str>,
    /// [`PingRecord::region`].
    #[serde(borrow)]
    pub region: Cow<'a, str>,
    /// [`PingRecord::agent`].
    #[serde(borrow)]
    pub agent: Cow<'a, str>,
    /// [`PingRecord::target`].
    #[serde(borrow)]
    pub target: Cow<'a, str>,
    /// [`PingRecord::status`].
    pub status: Status,
    /// [`PingRecord::loss`].
    pub loss: f64,
    /// [`PingRecord::rtt_ms`].
    pub rtt_ms: Option<Rtt>,
    /// [`PingRecord::error`].
    #[serde(borrow)]
    pub error: Option<Cow<'a, str>>,
    /// [`PingRecord::sent`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<u16>,
    /// [`PingRecord::ttl`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u8>,
    /// [`PingRecord::addr`].
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<Cow<'a, str>>,
    /// [`PingRecord::resolve_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_ms: Option<f64>,
    /// [`PingRecord::late_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_ms: Option<f64>,
    /// [`PingRecord::clock_synced`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_synced: Option<bool>,
    /// [`PingRecord::seq`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl RecordView<'_> {
    /// The checks of [`PingRecord::validate`] (the one place they are written), returning
    /// the record's time in UTC ([`parse_ts`]). The error is one sentence.
    pub fn validate_utc(&self) -> Result<OffsetDateTime, String> {
        if self.schema == 0 {
            return Err("schema 0 (schemas start at 1)".into());
        }
        if [self.resolve_ms, self.late_ms].into_iter().flatten().any(|v| v.is_nan() || v < 0.0) {
            return Err("resolve_ms or late_ms negative or not a number".into());
        }
        if self.id.is_empty() {
            return Err("empty id".into());
        }
        if self.agent.is_empty() || self.target.is_empty() {
            return Err("empty agent or target".into());
        }
        let utc = parse_ts(&self.ts)?;
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(format!("loss {} outside 0..1", self.loss));
        }
        Ok(utc)
    }
}

/// Parses a record timestamp into the instant it names, normalised to UTC (offset +00:00).
///
/// Accepts any RFC 3339 `date-time` (RFC 3339 §5.6): `YYYY-MM-DD`, `T`, `HH:MM:SS`, an
/// optional fraction of a second of any length, then `Z` or a numeric offset `+HH:MM` /
/// `-HH:MM` (hours 00-23, minutes 00-59). As §5.6's NOTEs allow, `T` and `Z` may be lower
/// case and `T` may be a space. `-00:00` (§4.3, "offset unknown") names the same instant
/// as `Z`. A leap second (`:60`, §5.7) is read as the last nanosecond of the second before.
/// Dates must exist (no 2026-02-30), and the UTC instant must lie in the years 0000-9999.
///
/// Errors: one sentence naming the value and what is wrong with it.
pub fn parse_ts(ts: &str) -> Result<OffsetDateTime, String> {
    let bad = |why: &str| {
        format!(
            "ts {ts:?} is not an RFC 3339 date-time ({why}); expected e.g. 2026-11-23T10:00:00.123Z \
             or 2026-11-23T11:00:00.123+01:00"
        )
    };
    let t = OffsetDateTime::parse(ts, &Rfc3339).map_err(|e| bad(&e.to_string()))?;
    // The `time` parser takes any byte between date and time; RFC 3339 §5.6 allows `T`
    // (or `t`, or, for readability, a space) only.
    if !matches!(ts.as_bytes().get(10), Some(b'T' | b't' | b' ')) {
        return Err(bad("the date and the time must be separated by T"));
    }
    t.checked_to_offset(UtcOffset::UTC)
        .filter(|u| (0..=9999).contains(&u.year()))
        .ok_or_else(|| bad("in UTC it falls outside the years 0000-9999"))
}

/// `(year, month, day, hour)` in UTC of an RFC 3339 timestamp with any offset
/// ([`parse_ts`]): `2026-11-23T00:30:00+01:00` is `(2026, 11, 22, 23)`. `None` when `ts`
/// is not an RFC 3339 `date-time`.
pub fn hour_of(ts: &str) -> Option<(u16, u8, u8, u8)> {
    let t = parse_ts(ts).ok()?;
    Some((u16::try_from(t.year()).ok()?, t.month() as u8, t.day(), t.hour()))
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

/// Why a whole body cannot be read ([`decode_lines`]), or, from the strict
/// [`decode_body`], why it was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown encoding {0:?} (expected \"ndjson\" or \"gzip+base64\")")]
    UnknownEncoding(String),
    #[error("body is not valid base64: {0}")]
    Base64(String),
    #[error("body is not valid gzip: {0}")]
    Gzip(String),
    /// No longer returned: a line that is not UTF-8 is a [`Rejected`] line
    /// ([`DecodeError::Line`] from [`decode_body`]). Kept so existing matches compile.
    #[error("body is not UTF-8")]
    Utf8,
    /// Only from the strict [`decode_body`]: line `line` (1-based) is not a valid record.
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    /// The body holds no line at all (only blank lines, or nothing).
    #[error("body holds no records")]
    Empty,
    /// The body decodes to more than [`MAX_DECODED_BYTES`] of NDJSON.
    #[error("body decodes to more than {} bytes", MAX_DECODED_BYTES)]
    TooLarge,
}

/// One record of a body, with the exact line it came from (archived untouched).
#[derive(Debug, Clone)]
pub struct Line {
    pub record: PingRecord,
    /// The line as it was in the body, without its line ending (`\n` or `\r\n`).
    pub raw: String,
    /// The record's `ts` as an instant in UTC ([`parse_ts`]), read once by validation.
    pub utc: OffsetDateTime,
}

/// A line of a body that is not a valid record, set aside on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// 1-based line number in the decoded body.
    pub line: usize,
    /// The line without its line ending. A line that is not UTF-8 is given as the standard
    /// base64 of its bytes (and its `reason` says so).
    pub raw: String,
    /// Why it is not a valid record: one sentence.
    pub reason: String,
}

/// A body split into its valid records and the lines set aside ([`decode_lines`]).
#[derive(Debug, Clone, Default)]
pub struct Decoded {
    /// The valid records, in body order.
    pub lines: Vec<Line>,
    /// The lines that are not valid records, in body order.
    pub rejected: Vec<Rejected>,
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
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(ndjson.len() / 4),
                flate2::Compression::new(GZIP_LEVEL),
            );
            gz.write_all(ndjson.as_bytes()).expect("writing to memory");
            let bytes = gz.finish().expect("writing to memory");
            base64::engine::general_purpose::STANDARD.encode(bytes)
        }
    }
}

/// Decodes a message body record by record, as Kinesis Data Firehose treats records: each
/// line (`\n`-separated, a trailing `\r` dropped, blank lines skipped) is parsed and
/// validated on its own ([`PingRecord::validate`]); the valid ones are returned in
/// [`Decoded::lines`], the others in [`Decoded::rejected`] with their reason. A bad line
/// never spoils the good ones.
///
/// Errors are faults of the whole body only, when no line can be read at all: bad base64
/// or gzip, more than [`MAX_DECODED_BYTES`] decoded, or no line at all ([`DecodeError::Empty`]).
pub fn decode_lines(body: &str, encoding: Encoding) -> Result<Decoded, DecodeError> {
    let checked = decode_checked(body, encoding)?;
    let mut decoded = Decoded { lines: Vec::with_capacity(checked.lines.len()), rejected: checked.rejected };
    for l in checked.lines {
        // Valid UTF-8 and a valid record: decode_checked read it so, with the same shape.
        let raw = String::from_utf8_lossy(&checked.text[l.range.clone()]).into_owned();
        match serde_json::from_str::<PingRecord>(&raw) {
            Ok(record) => decoded.lines.push(Line { record, raw, utc: l.utc }),
            Err(e) => decoded.rejected.push(Rejected { line: l.line, raw, reason: format!("not a ping record: {e}") }),
        }
    }
    decoded.rejected.sort_by_key(|r| r.line);
    Ok(decoded)
}

/// A body checked line by line without copying its lines ([`decode_checked`]).
#[derive(Debug, Clone)]
pub struct Checked<'a> {
    /// The decoded NDJSON: the body itself (`ndjson`) or what its gzip held.
    pub text: Cow<'a, [u8]>,
    /// The gzip stream the body carried (base64-decoded), for `gzip+base64` bodies.
    pub gzip: Option<Vec<u8>>,
    /// The valid records, in body order.
    pub lines: Vec<CheckedLine>,
    /// The lines that are not valid records, in body order.
    pub rejected: Vec<Rejected>,
}

/// One valid record of a [`Checked`] body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedLine {
    /// 1-based line number in the decoded body.
    pub line: usize,
    /// Where the line is in [`Checked::text`], without its line ending (`\n` or `\r\n`):
    /// valid UTF-8.
    pub range: Range<usize>,
    /// The record's `ts` as an instant in UTC ([`parse_ts`]).
    pub utc: OffsetDateTime,
}

impl Checked<'_> {
    /// Whether [`Checked::text`] is exactly its valid lines, each ending in `\n` (no line
    /// set aside, no blank line, no `\r`): then the text archived line by line is the text
    /// as it came.
    pub fn is_exact(&self) -> bool {
        let mut at = 0;
        for l in &self.lines {
            if l.range.start != at || self.text.get(l.range.end) != Some(&b'\n') {
                return false;
            }
            at = l.range.end + 1;
        }
        self.rejected.is_empty() && !self.lines.is_empty() && at == self.text.len()
    }
}

/// As [`decode_lines`] (the same lines valid, the same set aside with the same reasons, the
/// same errors), but each record is read as a [`RecordView`] that borrows from the text,
/// and valid lines are given as ranges of the decoded text instead of copies: for a
/// consumer that archives the lines as they came (the worker).
pub fn decode_checked(body: &str, encoding: Encoding) -> Result<Checked<'_>, DecodeError> {
    let (text, gzip): (Cow<[u8]>, Option<Vec<u8>>) = match encoding {
        Encoding::Ndjson => (body.as_bytes().into(), None),
        Encoding::GzipBase64 => {
            let gz = base64::engine::general_purpose::STANDARD
                .decode(body.trim())
                .map_err(|e| DecodeError::Base64(e.to_string()))?;
            // Room for what the gzip says it holds: ISIZE, the last member's size (RFC 1952
            // §2.3.1, the last 4 bytes, little-endian), so that the text is not copied as
            // the buffer grows; at least 6 times the gzip (ping NDJSON compresses 3 to 25
            // times), at most the bound.
            let isize = gz.last_chunk::<4>().map_or(0, |b| u32::from_le_bytes(*b) as usize);
            let mut out = Vec::with_capacity(isize.max(gz.len().saturating_mul(6)).min(MAX_DECODED_BYTES + 1));
            flate2::read::MultiGzDecoder::new(&gz[..])
                .take(MAX_DECODED_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| DecodeError::Gzip(e.to_string()))?;
            if out.len() > MAX_DECODED_BYTES {
                return Err(DecodeError::TooLarge);
            }
            (out.into(), Some(gz))
        }
    };
    if text.len() > MAX_DECODED_BYTES {
        return Err(DecodeError::TooLarge);
    }
    let mut lines = Vec::new();
    let mut rejected = Vec::new();
    // The lines are the pieces between `\n`s (the last one may be empty: a blank line).
    let (mut at, mut line) = (0, 0);
    while at <= text.len() {
        line += 1;
        // Most lines are records in the shape producers write: checked in one pass that
        // also finds their end ([`check::record_line`]); the others as below.
        if let Some((end, utc)) = check::record_line(&text, at) {
            let raw_end = if end > at && text[end - 1] == b'\r' { end - 1 } else { end };
            lines.push(CheckedLine { line, range: at..raw_end, utc });
            at = end + 1;
            continue;
        }
        let end = text[at..].iter().position(|&b| b == b'\n').map_or(text.len(), |n| at + n);
        let raw = &text[at..end];
        let start = at;
        at = end + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(text) = std::str::from_utf8(raw) else {
            rejected.push(Rejected {
                line,
                raw: base64::engine::general_purpose::STANDARD.encode(raw),
                reason: "line is not UTF-8 (raw holds its bytes in base64)".into(),
            });
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        match check_record(text) {
            Ok(utc) => lines.push(CheckedLine { line, range: start..start + raw.len(), utc }),
            Err(reason) => rejected.push(Rejected { line, raw: text.to_string(), reason }),
        }
    }
    if lines.is_empty() && rejected.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(Checked { text, gzip, lines, rejected })
}

/// Checks one NDJSON line as a record (read as a [`RecordView`]: its strings are not
/// copied); returns its time in UTC. The error is one sentence.
fn check_record(line: &str) -> Result<OffsetDateTime, String> {
    let record: RecordView = serde_json::from_str(line).map_err(|e| format!("not a ping record: {e}"))?;
    record.validate_utc()
}

/// Decodes a body that must be valid throughout (for producers checking their own output,
/// and tests): as [`decode_lines`], but any line set aside rejects the whole body as
/// [`DecodeError::Line`], naming the first one. Consumers of other programs' bodies use
/// [`decode_lines`], so that one bad line spoils only itself.
pub fn decode_body(body: &str, encoding: Encoding) -> Result<Vec<Line>, DecodeError> {
    let decoded = decode_lines(body, encoding)?;
    match decoded.rejected.into_iter().next() {
        Some(r) => Err(DecodeError::Line { line: r.line, reason: r.reason }),
        None => Ok(decoded.lines),
    }
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
            schema: SCHEMA,
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
            sent: Some(3),
            ttl: Some(64),
            addr: Some("127.0.0.1".into()),
            resolve_ms: None,
            late_ms: Some(0.25),
            clock_synced: Some(true),
            seq: Some(7),
        }
    }

    /// A schema-1 line as the original swarm and the first Rust bees wrote it.
    const SCHEMA_1: &str = r#"{"id":"old-1","ts":"2026-11-23T10:00:00.123Z","stack":"s","region":"eu-west-1","agent":"bee-1","target":"example.org","status":"ok","loss":0.1,"rtt_ms":{"min":1.0,"avg":1.5,"max":2.0,"stddev":0.3},"error":null}"#;

    #[test]
    fn schema_1_records_still_read_and_schema_2_round_trips() {
        let d = decode_lines(SCHEMA_1, Encoding::Ndjson).unwrap();
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        let r = &d.lines[0].record;
        assert_eq!((r.schema, r.loss, r.rtt_ms.unwrap().avg), (1, 0.1, 1.5));
        assert_eq!((r.ttl, r.addr.as_deref(), r.clock_synced, r.rtt_ms.unwrap().p99), (None, None, None, None));
        // Written back, a schema-1 record gains only its schema number.
        let back: serde_json::Value = serde_json::to_value(r).unwrap();
        let mut want: serde_json::Value = serde_json::from_str(SCHEMA_1).unwrap();
        want["schema"] = 1.into();
        assert_eq!(back, want);
        // Schema 2 round-trips with every field.
        let v2 = rec("new");
        let line = serde_json::to_string(&v2).unwrap();
        for field in [
            "\"schema\":2",
            "\"p50\":2.0",
            "\"p90\":3.0",
            "\"p99\":3.0",
            "\"jitter\":1.0",
            "\"ttl\":64",
            "\"addr\":\"127.0.0.1\"",
            "\"late_ms\":0.25",
            "\"clock_synced\":true",
            "\"sent\":3",
        ] {
            assert!(line.contains(field), "{field} in {line}");
        }
        assert_eq!(serde_json::from_str::<PingRecord>(&line).unwrap(), v2);
        // A later schema that adds a field still reads.
        let v3 = line.replacen("\"schema\":2", "\"schema\":3,\"hops\":[1,2]", 1);
        assert_eq!(decode_lines(&v3, Encoding::Ndjson).unwrap().lines[0].record.schema, 3);
        let mut bad = rec("x");
        bad.schema = 0;
        assert!(bad.validate().unwrap_err().contains("schema 0"));
        bad = rec("x");
        bad.late_ms = Some(-1.0);
        assert!(bad.validate().is_err());
    }

    #[test]
    fn percentiles_by_nearest_rank_and_jitter() {
        let samples: Vec<f64> = (1..=10).map(f64::from).collect();
        let r = Rtt::from_samples(&samples).unwrap();
        assert_eq!((r.p50, r.p90, r.p99, r.jitter), (Some(5.0), Some(9.0), Some(10.0), Some(1.0)));
        // Order matters for jitter, not for the percentiles.
        let r = Rtt::from_samples(&[10.0, 20.0, 10.0, 20.0]).unwrap();
        assert_eq!((r.min, r.max, r.p50, r.p90, r.jitter), (10.0, 20.0, Some(10.0), Some(20.0), Some(10.0)));
        let one = Rtt::from_samples(&[7.0]).unwrap();
        assert_eq!((one.p50, one.p99, one.jitter), (Some(7.0), Some(7.0), Some(0.0)));
        let r = Rtt::from_samples(&(1..=200).map(f64::from).collect::<Vec<_>>()).unwrap();
        assert_eq!((r.p50, r.p90, r.p99), (Some(100.0), Some(180.0), Some(198.0)));
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
        assert_eq!(hour_of("2026-01-02T03:04:05+01:00"), Some((2026, 1, 2, 2)));
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

    fn line_with_ts(id: &str, ts: &str) -> String {
        let mut r = rec(id);
        r.ts = ts.into();
        serde_json::to_string(&r).unwrap()
    }

    #[test]
    fn any_rfc3339_offset_is_accepted_and_normalised_to_utc() {
        // RFC 3339 §5.6: `Z` or a numeric offset; the hour partition is the UTC hour.
        for (ts, hour) in [
            ("2026-11-23T11:30:00.000+00:00", (2026, 11, 23, 11)), // the record from the field
            ("2026-11-23T11:30:00.000-00:00", (2026, 11, 23, 11)), // §4.3 unknown offset
            ("2026-11-23T12:30:00+01:00", (2026, 11, 23, 11)),
            ("2026-11-23T00:30:00+01:00", (2026, 11, 22, 23)), // crosses midnight backwards
            ("2026-11-23T20:15:00.5-05:30", (2026, 11, 24, 1)), // and forwards
            ("2026-12-31T23:59:60Z", (2026, 12, 31, 23)),      // §5.7 leap second
            ("2026-11-23t11:30:00z", (2026, 11, 23, 11)),      // §5.6 NOTE: lower case
            ("2026-11-23 11:30:00Z", (2026, 11, 23, 11)),      // §5.6 NOTE: space
            ("2026-11-23T11:30:00.123456789123Z", (2026, 11, 23, 11)),
        ] {
            assert_eq!(hour_of(ts), Some(hour), "{ts}");
            assert_eq!(rec("a").clone().tap_ts(ts).validate(), Ok(()), "{ts}");
        }
        assert_eq!(
            parse_ts("2026-11-23T12:30:00+01:00").unwrap(),
            parse_ts("2026-11-23T11:30:00Z").unwrap(),
            "the same instant"
        );
        assert_eq!(parse_ts("2026-11-23T12:30:00+01:00").unwrap().offset(), UtcOffset::UTC);
    }

    #[test]
    fn timestamps_that_are_not_rfc3339_are_refused_with_a_reason() {
        for ts in [
            "2026-11-23T11:30:00",       // no offset
            "2026-11-23T11:30:00+24:00", // offset hour out of range
            "2026-11-23T11:30:00+01:60", // offset minute out of range
            "2026-11-23T11:30:00+0100",  // offset without a colon
            "2026-02-30T11:30:00Z",      // a day that does not exist
            "2026-11-23X11:30:00Z",      // not a §5.6 separator
            "2026-11-23T24:00:00Z",      // hour out of range
            "2026-11-23T11:30:00.Z",     // empty fraction
            "0000-01-01T00:30:00+01:00", // year -1 in UTC
            "9999-12-31T23:30:00-01:00", // year 10000 in UTC
            "2026-11-23T11:30:00Z trailing",
            "yesterday",
            "",
            "2026-11-23T11:30:00\u{e9}",
        ] {
            assert_eq!(hour_of(ts), None, "{ts}");
            let err = rec("a").tap_ts(ts).validate().unwrap_err();
            assert!(err.contains("is not an RFC 3339 date-time"), "{ts}: {err}");
        }
    }

    impl PingRecord {
        fn tap_ts(mut self, ts: &str) -> PingRecord {
            self.ts = ts.into();
            self
        }
    }

    #[test]
    fn one_bad_line_spoils_only_itself() {
        // The message from the field: two good records and one with a +00:00 offset, which
        // is valid RFC 3339; then the same with a line that really is bad.
        let good = [line_with_ts("g1", "2026-11-23T10:15:00.000Z"), line_with_ts("g2", "2026-11-23T10:45:00.000Z")];
        let offset = line_with_ts("o", "2026-11-23T11:30:00.000+00:00");
        let bad = line_with_ts("b", "2026-11-23T11:30:00.000+25:00");
        for enc in [Encoding::Ndjson, Encoding::GzipBase64] {
            let body = encode_body(&format!("{}\n{offset}\n{}\n", good[0], good[1]), enc);
            let d = decode_lines(&body, enc).unwrap();
            assert_eq!(d.lines.len(), 3, "{:?}", d.rejected);
            assert!(d.rejected.is_empty());

            let body = encode_body(&format!("{}\r\n\n{bad}\r\n{}\n{{\"id\": truncated\n", good[0], good[1]), enc);
            let d = decode_lines(&body, enc).unwrap();
            let ids: Vec<&str> = d.lines.iter().map(|l| l.record.id.as_str()).collect();
            assert_eq!(ids, ["g1", "g2"]);
            assert_eq!(d.lines[0].raw, good[0], "the line untouched, without its line ending");
            assert_eq!(d.rejected.len(), 2);
            assert_eq!((d.rejected[0].line, d.rejected[0].raw.as_str()), (3, bad.as_str()));
            assert!(d.rejected[0].reason.contains("+25:00") && d.rejected[0].reason.contains("RFC 3339"));
            assert_eq!((d.rejected[1].line, d.rejected[1].raw.as_str()), (5, "{\"id\": truncated"));
            assert!(d.rejected[1].reason.starts_with("not a ping record"), "{}", d.rejected[1].reason);
            // The strict form still refuses the body, naming the first bad line.
            assert!(matches!(decode_body(&body, enc), Err(DecodeError::Line { line: 3, .. })));
        }
        // Only bad lines: nothing to archive, everything set aside, not a body fault.
        let d = decode_lines("{}\n", Encoding::Ndjson).unwrap();
        assert_eq!((d.lines.len(), d.rejected.len()), (0, 1));
    }

    #[test]
    fn a_line_that_is_not_utf8_is_set_aside_as_base64() {
        let good = line_with_ts("g", "2026-11-23T10:15:00Z");
        let mut nd = format!("{good}\n").into_bytes();
        nd.extend_from_slice(b"{\"id\":\"\xff\xfe\"}\n");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&nd).unwrap();
        let body = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        let d = decode_lines(&body, Encoding::GzipBase64).unwrap();
        assert_eq!(d.lines.len(), 1);
        assert_eq!(d.rejected[0].line, 2);
        let bytes = base64::engine::general_purpose::STANDARD.decode(&d.rejected[0].raw).unwrap();
        assert_eq!(bytes, b"{\"id\":\"\xff\xfe\"}");
        assert!(d.rejected[0].reason.contains("not UTF-8"));
    }

    #[test]
    fn a_view_reads_and_writes_exactly_as_the_record() {
        let mut escaped = rec("e\"1");
        escaped.error = Some("say \"hi\" \\ C:\\\n".into());
        escaped.status = Status::Error;
        let lines = [
            serde_json::to_string(&rec("a")).unwrap(),
            serde_json::to_string(&escaped).unwrap(),
            SCHEMA_1.to_string(),
            SCHEMA_1.replacen("\"id\":\"old-1\",", "\"schema\":3,\"hops\":[1],\"id\":\"old-1\",", 1),
        ];
        for l in &lines {
            let owned: PingRecord = serde_json::from_str(l).unwrap();
            let view: RecordView = serde_json::from_str(l).unwrap();
            assert_eq!(view, owned.view(), "{l}");
            assert_eq!(serde_json::to_string(&view).unwrap(), serde_json::to_string(&owned).unwrap(), "{l}");
            assert_eq!(view.validate_utc(), owned.validate_utc());
        }
        // What one refuses, the other refuses with the same words.
        let good = serde_json::to_string(&rec("a")).unwrap();
        for bad in [
            good.replace("\"id\":\"a\"", "\"id\":5"),
            good.replace("\"status\":\"ok\"", "\"status\":\"maybe\""),
            good.replace("\"ttl\":64", "\"ttl\":300"),
            good.replace("\"agent\":\"bee-1\",", ""),
            good.replace("\"stack\":\"s\"", "\"stack\":\"s\",\"stack\":\"t\""),
            good.replace("\"loss\":0.0", "\"loss\":2.0"),
            good.replace("\"id\":\"a\"", "\"id\":\"\""),
            "{\"id\": truncated".to_string(),
        ] {
            let owned = serde_json::from_str::<PingRecord>(&bad).map_err(|e| e.to_string()).and_then(|r| r.validate());
            let view = serde_json::from_str::<RecordView>(&bad)
                .map_err(|e| e.to_string())
                .and_then(|r| r.validate_utc().map(|_| ()));
            assert!(owned.is_err(), "{bad}");
            assert_eq!(view, owned, "{bad}");
        }
    }

    #[test]
    fn checked_bodies_agree_with_decoded_ones_and_know_when_they_are_exact() {
        let good =
            [line_with_ts("g1", "2026-11-23T10:15:00.000Z"), line_with_ts("g2", "2026-11-23T10:45:00.000+01:00")];
        let bad = line_with_ts("b", "2026-11-23T11:30:00.000+25:00");
        for enc in [Encoding::Ndjson, Encoding::GzipBase64] {
            let exact = encode_body(&format!("{}\n{}\n", good[0], good[1]), enc);
            let c = decode_checked(&exact, enc).unwrap();
            assert!(c.is_exact());
            assert_eq!(c.gzip.is_some(), enc == Encoding::GzipBase64);
            let texts: Vec<&[u8]> = c.lines.iter().map(|l| &c.text[l.range.clone()]).collect();
            assert_eq!(texts, [good[0].as_bytes(), good[1].as_bytes()]);
            assert_eq!(c.lines[1].utc, parse_ts("2026-11-23T09:45:00Z").unwrap());
            for inexact in [
                format!("{}\n{}", good[0], good[1]),
                format!("{}\r\n{}\n", good[0], good[1]),
                format!("{}\n\n{}\n", good[0], good[1]),
                format!("{}\n{bad}\n{}\n", good[0], good[1]),
            ] {
                let body = encode_body(&inexact, enc);
                let c = decode_checked(&body, enc).unwrap();
                assert!(!c.is_exact(), "{inexact:?}");
                let d = decode_lines(&body, enc).unwrap();
                let texts: Vec<&[u8]> = c.lines.iter().map(|l| &c.text[l.range.clone()]).collect();
                assert_eq!(texts, d.lines.iter().map(|l| l.raw.as_bytes()).collect::<Vec<_>>());
                assert_eq!(
                    c.lines.iter().map(|l| l.utc).collect::<Vec<_>>(),
                    d.lines.iter().map(|l| l.utc).collect::<Vec<_>>()
                );
                assert_eq!(c.rejected, d.rejected);
            }
        }
        // What follows the last gzip member must be another member: a body whose gzip
        // stream is passed through as it came (the worker) holds nothing else.
        let gz = base64::engine::general_purpose::STANDARD
            .decode(encode_body(&format!("{}\n", good[0]), Encoding::GzipBase64))
            .unwrap();
        for tail in [&b"junk"[..], &[0u8; 8][..], &gz[..10]] {
            let body = base64::engine::general_purpose::STANDARD.encode([&gz[..], tail].concat());
            assert!(matches!(decode_checked(&body, Encoding::GzipBase64), Err(DecodeError::Gzip(_))), "{tail:?}");
        }
        let two = base64::engine::general_purpose::STANDARD.encode([&gz[..], &gz[..]].concat());
        assert_eq!(decode_checked(&two, Encoding::GzipBase64).unwrap().lines.len(), 2);
        assert!(matches!(decode_checked("\n", Encoding::Ndjson), Err(DecodeError::Empty)));
        assert!(matches!(decode_checked("!!!", Encoding::GzipBase64), Err(DecodeError::Base64(_))));
    }

    /// Lines in the shapes producers write: the fast path reads each of them.
    fn fast_samples() -> Vec<String> {
        let mut error = rec("e");
        (error.status, error.loss, error.rtt_ms, error.error) = (Status::Error, 1.0, None, Some("no route".into()));
        (error.ttl, error.addr, error.resolve_ms, error.late_ms) = (None, None, Some(12.5), Some(0.0));
        let mut odd = rec("o");
        odd.rtt_ms = Rtt::from_samples(&[1e-7, 2.0e3, 0.1 + 0.2]);
        odd.loss = 0.30000000000000004;
        odd.seq = Some(u64::MAX);
        vec![
            serde_json::to_string(&rec("a")).unwrap(),
            serde_json::to_string(&error).unwrap(),
            serde_json::to_string(&odd).unwrap(),
            serde_json::to_string(&rec("a").tap_ts("2026-11-23T12:30:00.5+01:00")).unwrap(),
            SCHEMA_1.to_string(),
            SCHEMA_1.replace("\",", "\" , ").replace("\":", "\" : ") + " ",
        ]
    }

    /// Valid lines the fast path leaves to serde (a tab, a `\r` before the `\n`, an escape,
    /// a character outside ASCII).
    fn slow_samples() -> Vec<String> {
        vec![
            SCHEMA_1.replace("\",", "\",\t") + "\r",
            SCHEMA_1.replace("\"ok\"", "\"\\u006fk\""),
            serde_json::to_string(&rec("é")).unwrap(),
        ]
    }

    #[test]
    fn fast_path_never_accepts_what_serde_refuses() {
        // The rule is serde's (check_record); the fast path may only say "valid" where it
        // does, with the same time. Every one-byte deletion, replacement and insertion of
        // each sample is tried.
        let serde = |line: &[u8]| std::str::from_utf8(line).map_err(|e| e.to_string()).and_then(check_record);
        let fast = |line: &[u8]| {
            check::record_line(line, 0).map(|(end, utc)| {
                let raw = &line[..end];
                (raw.strip_suffix(b"\r").unwrap_or(raw).to_vec(), utc)
            })
        };
        let bytes = b"{}[]\",:0123456789.-+eEnulltrfas \\\r\n\tx\x7f\xc3\xa9\x00\x1f";
        let (mut tried, mut fast_valid) = (0, 0);
        for sample in fast_samples() {
            let sample = sample.as_bytes();
            let (raw, utc) =
                fast(sample).unwrap_or_else(|| panic!("fast path refused {}", String::from_utf8_lossy(sample)));
            assert_eq!(serde(&raw), Ok(utc));
            let mut edits = Vec::new();
            for i in 0..=sample.len() {
                if i < sample.len() {
                    edits.push([&sample[..i], &sample[i + 1..]].concat());
                }
                for &b in bytes {
                    edits.push([&sample[..i], &[b], &sample[i..]].concat());
                    if i < sample.len() {
                        edits.push([&sample[..i], &[b], &sample[i + 1..]].concat());
                    }
                }
            }
            for edit in edits {
                tried += 1;
                if let Some((raw, utc)) = fast(&edit) {
                    fast_valid += 1;
                    assert_eq!(serde(&raw), Ok(utc), "{}", String::from_utf8_lossy(&edit));
                }
            }
        }
        assert!(tried > 50_000 && fast_valid > 1_000, "{tried} edits, {fast_valid} valid by the fast path");
    }

    #[test]
    fn bodies_read_the_same_through_the_fast_path() {
        for slow in slow_samples() {
            assert_eq!(check::record_line(slow.as_bytes(), 0), None, "{slow}");
        }
        let lines = [fast_samples(), slow_samples()].concat();
        let nd = lines.join("\n") + "\n";
        let c = decode_checked(&nd, Encoding::Ndjson).unwrap();
        assert!(c.rejected.is_empty(), "{:?}", c.rejected);
        for (l, want) in c.lines.iter().zip(&lines) {
            let want = want.strip_suffix('\r').unwrap_or(want);
            assert_eq!(&c.text[l.range.clone()], want.as_bytes());
            assert_eq!(Ok(l.utc), check_record(want));
        }
        assert_eq!(c.lines.len(), lines.len());
    }

    #[test]
    fn a_gzip_bomb_is_refused_not_inflated() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![b' '; 1 << 20];
        for _ in 0..=(MAX_DECODED_BYTES >> 20) {
            gz.write_all(&zeros).unwrap();
        }
        let body = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        assert!(body.len() < MAX_MESSAGE_BYTES, "a body SQS would carry: {}", body.len());
        assert!(matches!(decode_lines(&body, Encoding::GzipBase64), Err(DecodeError::TooLarge)));
    }
}
