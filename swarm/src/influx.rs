//! Delivery of records to InfluxDB 1.x (the metrics box; Debian's influxdb is 1.6):
//! line protocol over HTTP `POST /write?db=<db>&precision=ms` with hyper's HTTP/1.1
//! client, plain HTTP (the metrics box is on the private network).
//!
//! Measurement `ping`, tags `stack region agent target status`, fields `loss`
//! `rtt_min rtt_avg rtt_max rtt_stddev` (when some probe answered) and `error`; from the
//! record's schema 2 (each when the record has it, meanings and units in the `record`
//! crate): `rtt_p50 rtt_p90 rtt_p99 rtt_jitter` (ms, float), `sent` and `ttl`
//! (integers), `addr` (string), `resolve_ms` and `late_ms` (float), `clock_synced`
//! (boolean); and `schema` (integer: 1 for a record without one) on every point.
//! Measurement `rip`, tag `agent`, field `dead=1i`: a bee's last will.
//!
//! Escaping follows the InfluxDB 1.x line protocol reference ("Special characters"):
//! tag keys, tag values and field keys escape comma, equals sign and space with a
//! backslash; measurements escape comma and space; string field values escape double
//! quote and backslash; a backslash anywhere else is literal (so it is written as is).
//! What the protocol cannot carry is handled the way Telegraf's influx serializer does
//! (`plugins/serializers/influx/escape.go` and `influx.go` `buildHeader` in
//! github.com/influxdata/telegraf): tab, newline, form feed and carriage return are
//! written as the two characters `\t`, `\n`, `\f`, `\r` (in tags and in string
//! fields); trailing backslashes of a tag key or value are stripped ("cannot be encoded
//! by line protocol": InfluxDB would read the last one as escaping the separator after
//! it and refuse the point); a tag whose value ends up empty is left out.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use record::{PingRecord, RecordView};

use crate::sink::Buffer;
use crate::Backoff;

/// Escapes a tag key, a tag value or a field key (see the module documentation); the
/// result never ends in a backslash, and may be empty (then the tag is left out).
pub fn escape_tag(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 4);
    push_tag(&mut o, s);
    o
}

/// Escapes the inside of a double-quoted string field value (see the module documentation).
pub fn escape_str_field(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 4);
    push_escaped(&mut o, s, &['"', '\\']);
    o
}

/// Appends `s` escaped as a tag value ([`escape_tag`]) to `o`; returns whether anything
/// was appended (an empty result means the tag is left out).
fn push_tag(o: &mut String, s: &str) -> bool {
    let start = o.len();
    push_escaped(o, s, &[',', '=', ' ']);
    let kept = o[start..].trim_end_matches('\\').len();
    o.truncate(start + kept);
    kept > 0
}

/// Appends `s` to `o` with a backslash before each of `special` (all ASCII); control
/// characters as `\t`, `\n`, `\f`, `\r` (what Telegraf writes: the line protocol cannot
/// carry them raw). Text with none of them (the usual case) is copied as it is.
fn push_escaped(o: &mut String, s: &str, special: &[char]) {
    let needs = |b: u8| matches!(b, b'\t' | b'\n' | b'\x0c' | b'\r') || special.contains(&char::from(b));
    if !s.bytes().any(needs) {
        o.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            c if special.contains(&c) => {
                o.push('\\');
                o.push(c)
            }
            '\t' => o.push_str("\\t"),
            '\n' => o.push_str("\\n"),
            '\x0c' => o.push_str("\\f"),
            '\r' => o.push_str("\\r"),
            _ => o.push(c),
        }
    }
}

/// The line-protocol line of a record received at `received_ms` (ms since the epoch, the
/// indexer's clock); `None` when its timestamp is unreadable. The point's time is the
/// record's `ts`, but never later than `received_ms`: a bee whose clock runs ahead
/// would otherwise put points in the future, where they stay the "last" value.
///
/// Built in one string, without a temporary per field (the indexer writes one line per
/// record: benchmark in swarm/README.md).
pub fn line(r: &PingRecord, received_ms: i64) -> Option<String> {
    let ts = crate::ts_millis(&r.ts)?.min(received_ms);
    Some(line_at(&r.view(), ts))
}

/// The line-protocol line of a record whose point is at `ts_ms` (ms since the epoch): what
/// [`line`] writes, for a record the caller has read and timed already (the indexer: its
/// `ts`, but never later than its arrival).
pub fn line_at(r: &RecordView<'_>, ts: i64) -> String {
    let mut l = String::with_capacity(320);
    l.push_str("ping");
    for (k, v) in [("stack", &r.stack), ("region", &r.region), ("agent", &r.agent), ("target", &r.target)] {
        let start = l.len();
        l.push(',');
        l.push_str(k);
        l.push('=');
        if !push_tag(&mut l, v) {
            l.truncate(start);
        }
    }
    let status = match r.status {
        record::Status::Ok => "ok",
        record::Status::Error => "error",
    };
    l.push_str(",status=");
    l.push_str(status);
    field_f(&mut l, " loss=", r.loss);
    if let Some(rtt) = r.rtt_ms {
        field_f(&mut l, ",rtt_min=", rtt.min);
        field_f(&mut l, ",rtt_avg=", rtt.avg);
        field_f(&mut l, ",rtt_max=", rtt.max);
        field_f(&mut l, ",rtt_stddev=", rtt.stddev);
        for (k, v) in
            [(",rtt_p50=", rtt.p50), (",rtt_p90=", rtt.p90), (",rtt_p99=", rtt.p99), (",rtt_jitter=", rtt.jitter)]
        {
            if let Some(v) = v {
                field_f(&mut l, k, v);
            }
        }
    }
    if let Some(e) = &r.error {
        l.push_str(",error=\"");
        push_escaped(&mut l, e, &['"', '\\']);
        l.push('"');
    }
    // Writing to a String cannot fail.
    let _ = write!(l, ",schema={}i", r.schema);
    if let Some(n) = r.sent {
        let _ = write!(l, ",sent={n}i");
    }
    if let Some(n) = r.ttl {
        let _ = write!(l, ",ttl={n}i");
    }
    if let Some(a) = &r.addr {
        l.push_str(",addr=\"");
        push_escaped(&mut l, a, &['"', '\\']);
        l.push('"');
    }
    for (k, v) in [(",resolve_ms=", r.resolve_ms), (",late_ms=", r.late_ms)] {
        if let Some(v) = v {
            field_f(&mut l, k, v);
        }
    }
    if let Some(b) = r.clock_synced {
        let _ = write!(l, ",clock_synced={b}");
    }
    let _ = write!(l, " {ts}");
    l
}

/// Appends `key` (with its separator and `=`) and a float field value: Rust's shortest
/// round-trip form, `0` for NaN and infinities (the line protocol has no such values).
fn field_f(l: &mut String, key: &str, v: f64) {
    l.push_str(key);
    if v.is_finite() {
        let _ = write!(l, "{v}");
    } else {
        l.push('0');
    }
}

/// The line of a bee's last will (`ts_ms`: ms since the epoch).
pub fn rip_line(agent: &str, ts_ms: i64) -> String {
    match escape_tag(agent) {
        a if a.is_empty() => format!("rip dead=1i {ts_ms}"),
        a => format!("rip,agent={a} dead=1i {ts_ms}"),
    }
}

/// How many of `sent` points a write answered with HTTP 400 `body` did not store.
///
/// InfluxDB 1.x refuses a whole request with 400 when nothing in it could be written,
/// but answers a *partial write* (some points stored) with 400 too, its error
/// `partial write: <reason> dropped=<n>`: the reason lists each line that failed to
/// parse (`unable to parse '<line>': <why>`, one per line of the message, and then
/// `dropped=0`), or `dropped=<n>` counts the points the storage refused (field type
/// conflict, points beyond the retention policy). Those are the rejected points; the
/// others were written. When the storage refuses some points, InfluxDB does not report
/// lines that also failed to parse in the same request; the lines this indexer writes
/// always parse.
pub fn rejected_points(body: &str, sent: usize) -> usize {
    let msg = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string());
    let Some(reason) = msg.strip_prefix("partial write:") else { return sent };
    let unparsable = reason.lines().filter(|l| l.trim_start().starts_with("unable to parse '")).count();
    let dropped = reason.rsplit_once("dropped=").and_then(|(_, n)| n.trim().parse::<usize>().ok()).unwrap_or(0);
    // The server said some points were lost: never count none.
    (unparsable + dropped).clamp(1, sent.max(1)).min(sent)
}

/// An InfluxDB 1.x server: `http://host:port`, reached with hyper's HTTP/1.1 client
/// (connections kept alive and reused between writes).
#[derive(Debug, Clone)]
pub struct Influx {
    /// Host name or address (an IPv6 address without brackets).
    pub host: String,
    /// TCP port, 1 to 65535.
    pub port: u16,
    /// The database written to.
    pub db: String,
    /// How long one request (connect, send, the whole answer) may take.
    pub timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// How a write failed.
#[derive(Debug)]
pub enum WriteError {
    /// The database does not exist (yet).
    NoDatabase,
    /// Refused for good, HTTP 400 (all points, or some on a partial write: see
    /// [`rejected_points`]), with InfluxDB's answer: retrying cannot help.
    Rejected(String),
    /// Network trouble, timeouts, server errors: retry.
    Transient(String),
}

impl Influx {
    /// Reads `http://host[:port][/]` (port 1 to 65535, default 8086) and checks the
    /// database name (letters, digits, `_`, `-`). Errors are one sentence naming the
    /// setting (`INFLUX_URL`, `INFLUX_DB`).
    pub fn from_url(url: &str, db: &str) -> Result<Influx> {
        let form = "INFLUX_URL must be http://host:port with the port from 1 to 65535 and no path";
        let Some(rest) = url.strip_prefix("http://") else { bail!("{form}, not {url:?}") };
        let hostport = rest.strip_suffix('/').unwrap_or(rest);
        if hostport.is_empty() || hostport.contains(['/', '?', '#', '@']) {
            bail!("{form}, not {url:?}");
        }
        let (host, port) = match hostport.rsplit_once(':') {
            // `[::1]:8086`, `host:8086`; a bare IPv6 address (`::1`) has colons but no port.
            Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') || !h.contains(':')) => {
                let port = p.parse::<u16>().ok().filter(|p| *p > 0);
                let Some(port) = port else { bail!("{form}, not {url:?}") };
                (h.trim_start_matches('[').trim_end_matches(']').to_string(), port)
            }
            _ => (hostport.trim_start_matches('[').trim_end_matches(']').to_string(), 8086),
        };
        if host.is_empty() {
            bail!("{form}, not {url:?}");
        }
        if db.is_empty() || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            bail!("INFLUX_DB must be letters, digits, '_' or '-', not {db:?}");
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Influx { host, port, db: db.to_string(), timeout: Duration::from_secs(15), client })
    }

    /// POSTs `body` to `path_query`; the status and the trimmed response body. Errors
    /// (connection, timeout, malformed response) are one line with their causes.
    async fn post(&self, path_query: &str, content_type: &str, body: &[u8]) -> Result<(u16, String), String> {
        // RFC 3986 §3.2.2: an IPv6 address in a URI is written in brackets.
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let req = hyper::Request::post(format!("http://{host}:{}{path_query}", self.port))
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| common::error_chain(&e))?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.map_err(|e| common::error_chain(&e))?.to_bytes();
            Ok((status, String::from_utf8_lossy(&bytes).trim().to_string()))
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| format!("timed out after {:?}", self.timeout))?
    }

    /// Writes line-protocol lines.
    pub async fn write(&self, lines: &str) -> Result<(), WriteError> {
        let path = format!("/write?db={}&precision=ms", self.db);
        match self.post(&path, "text/plain; charset=utf-8", lines.as_bytes()).await {
            Ok((200..=299, _)) => Ok(()),
            Ok((404, b)) if b.contains("database not found") => Err(WriteError::NoDatabase),
            Ok((400, b)) => Err(WriteError::Rejected(b)),
            Ok((code, b)) => Err(WriteError::Transient(format!("HTTP {code}: {}", crate::sqs::truncate(&b, 300)))),
            Err(e) => Err(WriteError::Transient(e)),
        }
    }

    /// `CREATE DATABASE` (idempotent in InfluxDB 1.x).
    pub async fn create_database(&self) -> Result<(), String> {
        let body = format!("q=CREATE+DATABASE+%22{}%22", self.db);
        match self.post("/query", "application/x-www-form-urlencoded", body.as_bytes()).await? {
            (200..=299, _) => Ok(()),
            (code, b) => Err(format!("HTTP {code}: {b}")),
        }
    }
}

/// The InfluxDB destination of the indexer.
pub struct InfluxSink {
    pub influx: Influx,
    /// Most points per write.
    pub batch: usize,
    pub linger: Duration,
    pub buffer: Arc<Buffer>,
}

impl InfluxSink {
    /// Runs forever: writes buffered lines in batches, retrying transient failures with
    /// backoff and creating the database when it is missing.
    pub async fn run(self) {
        let stats = &self.buffer.stats;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut held: Vec<String> = Vec::new();
        // CREATE DATABASE is idempotent: make sure it exists before the first write.
        while let Err(e) = self.influx.create_database().await {
            stats.retries.inc();
            let delay = backoff.next_delay();
            tracing::error!(destination = "influxdb", error = %e, held_points = self.buffer.len(), retry_in_ms = delay.as_millis() as u64, "cannot reach InfluxDB to create the database; retrying");
            tokio::time::sleep(delay).await;
        }
        backoff.reset();
        loop {
            self.buffer.set_held(held.len());
            if held.is_empty() {
                self.buffer.wait_batch(self.linger, self.batch * 150, usize::MAX).await;
                held = self.buffer.drain(self.batch, usize::MAX);
                continue;
            }
            let body = held.join("\n");
            match self.influx.write(&body).await {
                Ok(()) => {
                    stats.requests.inc();
                    stats.delivered.add(held.len() as u64);
                    held.clear();
                    backoff.reset();
                }
                Err(WriteError::NoDatabase) => {
                    tracing::warn!(destination = "influxdb", db = %self.influx.db, "database not found: creating it");
                    if let Err(e) = self.influx.create_database().await {
                        stats.retries.inc();
                        let delay = backoff.next_delay();
                        tracing::error!(destination = "influxdb", error = %e, retry_in_ms = delay.as_millis() as u64, "cannot create the database");
                        tokio::time::sleep(delay).await;
                    }
                }
                Err(WriteError::Rejected(reason)) => {
                    // A partial write stored some of the points: count only the others.
                    let rejected = rejected_points(&reason, held.len());
                    stats.requests.inc();
                    stats.rejected.add(rejected as u64);
                    stats.delivered.add((held.len() - rejected) as u64);
                    tracing::error!(destination = "influxdb", points = held.len(), rejected, written = held.len() - rejected, reason = %crate::sqs::truncate(&reason, 1000), first = %crate::sqs::truncate(&held[0], 200), "InfluxDB refused points: not retried");
                    held.clear();
                }
                Err(WriteError::Transient(e)) => {
                    stats.retries.inc();
                    let delay = backoff.next_delay();
                    tracing::error!(destination = "influxdb", error = %e, held_points = held.len() + self.buffer.len(), retry_in_ms = delay.as_millis() as u64, "InfluxDB write failed: holding the points and retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_protocol() {
        let mut r = record::PingRecord {
            id: "1".into(),
            ts: "2026-11-23T10:00:00.123Z".into(),
            stack: "s1".into(),
            region: "eu-west-1".into(),
            agent: "bee 1,x=y".into(),
            target: "::1".into(),
            status: record::Status::Ok,
            loss: 0.1,
            rtt_ms: record::Rtt::from_samples(&[1.0, 3.0]),
            error: None,
            schema: 1,
            ..Default::default()
        };
        // A schema-1 record: the fields it always had (its RTT without percentiles).
        r.rtt_ms = r.rtt_ms.map(|x| record::Rtt { p50: None, p90: None, p99: None, jitter: None, ..x });
        let later = 1_795_428_000_123 + 1000;
        assert_eq!(
            line(&r, later).unwrap(),
            "ping,stack=s1,region=eu-west-1,agent=bee\\ 1\\,x\\=y,target=::1,status=ok loss=0.1,rtt_min=1,rtt_avg=2,rtt_max=3,rtt_stddev=1,schema=1i 1795428000123"
        );
        // Schema 2: every field it has.
        let v2 = record::PingRecord {
            schema: 2,
            rtt_ms: record::Rtt::from_samples(&[1.0, 3.0]),
            sent: Some(2),
            ttl: Some(64),
            addr: Some("::1".into()),
            resolve_ms: Some(1.5),
            late_ms: Some(0.25),
            clock_synced: Some(false),
            ..r.clone()
        };
        assert_eq!(
            line(&v2, later).unwrap(),
            "ping,stack=s1,region=eu-west-1,agent=bee\\ 1\\,x\\=y,target=::1,status=ok loss=0.1,rtt_min=1,rtt_avg=2,rtt_max=3,rtt_stddev=1,\
             rtt_p50=1,rtt_p90=3,rtt_p99=3,rtt_jitter=2,schema=2i,sent=2i,ttl=64i,addr=\"::1\",resolve_ms=1.5,late_ms=0.25,clock_synced=false 1795428000123"
        );
        r.status = record::Status::Error;
        r.rtt_ms = None;
        r.region = String::new();
        r.error = Some("cannot resolve \"x\"".into());
        assert_eq!(
            line(&r, later).unwrap(),
            "ping,stack=s1,agent=bee\\ 1\\,x\\=y,target=::1,status=error loss=0.1,error=\"cannot resolve \\\"x\\\"\",schema=1i 1795428000123"
        );
        // A timestamp past the arrival (a bee's clock ahead) is clamped to the arrival.
        assert!(line(&r, 1_795_428_000_000).unwrap().ends_with(" 1795428000000"));
        r.ts = "bad".into();
        assert!(line(&r, later).is_none());
        assert_eq!(rip_line("bee-1", 5), "rip,agent=bee-1 dead=1i 5");
        assert_eq!(rip_line("\\", 5), "rip dead=1i 5");
    }

    #[test]
    fn escaping_by_the_line_protocol_rules() {
        // Tags: comma, equals, space escaped; a backslash is literal, except trailing ones,
        // which cannot be carried (stripped, as Telegraf does); control characters as \n etc.
        assert_eq!(escape_tag(r"sw\x"), r"sw\x");
        assert_eq!(escape_tag(r"C:\"), "C:");
        assert_eq!(escape_tag(r"C:\\"), "C:");
        assert_eq!(escape_tag(r"\"), "");
        assert_eq!(escape_tag(r#"a b,c=d"e"#), r#"a\ b\,c\=d"e"#);
        assert_eq!(escape_tag(r"x\ y"), r"x\\ y");
        assert_eq!(escape_tag("l1\nl2\tt\r"), r"l1\nl2\tt\r");
        // String fields: double quote and backslash escaped, nothing else.
        assert_eq!(escape_str_field(r#"C:\ sw\x "q" a,b=c d"#), r#"C:\\ sw\\x \"q\" a,b=c d"#);
        assert_eq!(escape_str_field("a\nb"), r"a\nb");
    }

    #[test]
    fn partial_writes_count_only_the_rejected_points() {
        // InfluxDB 1.6's answers (captured from influxd).
        let parse = r#"{"error":"partial write: unable to parse 'm,a=bad v= 17000': missing field value\nunable to parse 'm,a=bad3 v=x 19000': invalid boolean dropped=0"}"#;
        assert_eq!(rejected_points(parse, 4), 2);
        let conflict = r#"{"error":"partial write: field type conflict: input field \"v\" on measurement \"m\" is type string, already exists as type float dropped=1"}"#;
        assert_eq!(rejected_points(conflict, 3), 1);
        let beyond = r#"{"error":"partial write: points beyond retention policy dropped=2"}"#;
        assert_eq!(rejected_points(beyond, 3), 2);
        // Not partial: the whole request was refused.
        let whole = r#"{"error":"unable to parse 'm,a=C:\\ v=1 2000': invalid tag format"}"#;
        assert_eq!(rejected_points(whole, 3), 3);
        assert_eq!(rejected_points("garbage", 3), 3);
        assert_eq!(rejected_points(r#"{"error":"partial write: dropped=9"}"#, 3), 3);
    }

    #[test]
    fn urls() {
        let i = Influx::from_url("http://10.0.0.5:8086/", "tyrell").unwrap();
        assert_eq!((i.host.as_str(), i.port), ("10.0.0.5", 8086));
        assert_eq!(Influx::from_url("http://metrics", "t").unwrap().port, 8086);
        assert!(Influx::from_url("https://x:1", "t").is_err());
        assert!(Influx::from_url("http://x:1", "a b").is_err());
        let i = Influx::from_url("http://[::1]:8087", "t").unwrap();
        assert_eq!((i.host.as_str(), i.port), ("::1", 8087));
        for bad in ["http://x:0", "http://x:70000", "http://x:-1", "http://x:", "http://", "http://x/db", "http://:80"]
        {
            let e = Influx::from_url(bad, "t").unwrap_err().to_string();
            assert!(e.starts_with("INFLUX_URL must be http://host:port with the port from 1 to 65535"), "{bad}: {e}");
        }
    }
}
