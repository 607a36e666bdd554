//! Delivery of records to InfluxDB 1.x (the metrics box; Debian's influxdb is 1.6):
//! line protocol over HTTP `POST /write?db=<db>&precision=ms`, one small HTTP/1.1
//! client on a plain TCP socket (the metrics box is on the private network).
//!
//! Measurement `ping`, tags `stack region agent target status`, fields `loss`
//! `rtt_min rtt_avg rtt_max rtt_stddev` (when some probe answered) and `error`.
//! Measurement `rip`, tag `agent`, field `dead=1i`: a bee's last will.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use record::PingRecord;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sink::Buffer;
use crate::Backoff;

fn escape_tag(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ',' | '=' | ' ' | '\\' => {
                o.push('\\');
                o.push(c)
            }
            '\n' | '\r' => o.push(' '),
            _ => o.push(c),
        }
    }
    o
}

fn escape_str_field(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace(['\n', '\r'], " ")
}

/// The line-protocol line of a record (`None` when its timestamp is unreadable).
pub fn line(r: &PingRecord) -> Option<String> {
    let ts = crate::ts_millis(&r.ts)?;
    let mut l = String::from("ping");
    for (k, v) in [("stack", &r.stack), ("region", &r.region), ("agent", &r.agent), ("target", &r.target)] {
        if !v.is_empty() {
            l.push_str(&format!(",{k}={}", escape_tag(v)));
        }
    }
    let status = match r.status {
        record::Status::Ok => "ok",
        record::Status::Error => "error",
    };
    l.push_str(&format!(",status={status} loss={}", fmt_f(r.loss)));
    if let Some(rtt) = r.rtt_ms {
        l.push_str(&format!(
            ",rtt_min={},rtt_avg={},rtt_max={},rtt_stddev={}",
            fmt_f(rtt.min),
            fmt_f(rtt.avg),
            fmt_f(rtt.max),
            fmt_f(rtt.stddev)
        ));
    }
    if let Some(e) = &r.error {
        l.push_str(&format!(",error=\"{}\"", escape_str_field(e)));
    }
    l.push_str(&format!(" {ts}"));
    Some(l)
}

fn fmt_f(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "0".into()
    }
}

/// The line of a bee's last will.
pub fn rip_line(agent: &str, ts_ms: i64) -> String {
    format!("rip,agent={} dead=1i {ts_ms}", escape_tag(agent))
}

/// An InfluxDB 1.x server: `http://host:port`.
#[derive(Debug, Clone)]
pub struct Influx {
    pub host: String,
    pub port: u16,
    pub db: String,
    pub timeout: Duration,
}

/// How a write failed.
#[derive(Debug)]
pub enum WriteError {
    /// The database does not exist (yet).
    NoDatabase,
    /// Refused for good (bad points): retrying cannot help.
    Rejected(String),
    /// Network trouble, timeouts, server errors: retry.
    Transient(String),
}

impl Influx {
    pub fn from_url(url: &str, db: &str) -> Result<Influx> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("INFLUX_URL must be http://host:port, got {url:?}"))?;
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('/') {
            bail!("INFLUX_URL must be http://host:port without a path, got {url:?}");
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') => (h.trim_matches(['[', ']']).to_string(), p.parse()?),
            _ => (hostport.to_string(), 8086),
        };
        if db.is_empty() || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            bail!("bad InfluxDB database name {db:?}");
        }
        Ok(Influx { host, port, db: db.to_string(), timeout: Duration::from_secs(15) })
    }

    async fn post(&self, path_query: &str, content_type: &str, body: &[u8]) -> Result<(u16, String), String> {
        let fut = async {
            let mut s =
                tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| e.to_string())?;
            let head = format!(
                "POST {path_query} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.host,
                self.port,
                body.len()
            );
            // The server may answer (e.g. 404 database not found) and close before it has
            // read the whole body: then the write fails, but the answer is there to read.
            let written = match s.write_all(head.as_bytes()).await {
                Ok(()) => s.write_all(body).await,
                Err(e) => Err(e),
            };
            let mut resp = Vec::new();
            let read = s.read_to_end(&mut resp).await;
            if resp.is_empty() {
                written.map_err(|e| e.to_string())?;
                read.map_err(|e| e.to_string())?;
            }
            let text = String::from_utf8_lossy(&resp);
            let status = text
                .strip_prefix("HTTP/1.")
                .and_then(|r| r.get(2..5))
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| format!("not an HTTP response: {:?}", crate::sqs::truncate(&text, 80)))?;
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_string()).unwrap_or_default();
            Ok((status, body))
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
                    stats.requests.inc();
                    stats.rejected.add(held.len() as u64);
                    tracing::error!(destination = "influxdb", points = held.len(), reason = %reason, first = %crate::sqs::truncate(&held[0], 200), "InfluxDB refused the points: not retried");
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
        };
        assert_eq!(
            line(&r).unwrap(),
            "ping,stack=s1,region=eu-west-1,agent=bee\\ 1\\,x\\=y,target=::1,status=ok loss=0.1,rtt_min=1,rtt_avg=2,rtt_max=3,rtt_stddev=1 1795428000123"
        );
        r.status = record::Status::Error;
        r.rtt_ms = None;
        r.region = String::new();
        r.error = Some("cannot resolve \"x\"".into());
        assert_eq!(
            line(&r).unwrap(),
            "ping,stack=s1,agent=bee\\ 1\\,x\\=y,target=::1,status=error loss=0.1,error=\"cannot resolve \\\"x\\\"\" 1795428000123"
        );
        r.ts = "bad".into();
        assert!(line(&r).is_none());
        assert_eq!(rip_line("bee-1", 5), "rip,agent=bee-1 dead=1i 5");
    }

    #[test]
    fn urls() {
        let i = Influx::from_url("http://10.0.0.5:8086/", "tyrell").unwrap();
        assert_eq!((i.host.as_str(), i.port), ("10.0.0.5", 8086));
        assert_eq!(Influx::from_url("http://metrics", "t").unwrap().port, 8086);
        assert!(Influx::from_url("https://x:1", "t").is_err());
        assert!(Influx::from_url("http://x:1", "a b").is_err());
    }
}
