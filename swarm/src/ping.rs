//! ICMP echo for the bee: one socket per address family shared by every target, so a
//! single process pings thousands of targets concurrently (the original pinger ran one
//! `ping -c 10` at a time).
//!
//! Linux gives an unprivileged ICMP "ping socket" (DGRAM) when `net.ipv4.ping_group_range`
//! allows the process's group, else a RAW socket needs `CAP_NET_RAW` (the bee's systemd
//! unit grants it as an ambient capability). surge-ping tries DGRAM, then RAW.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use record::{PingRecord, Rtt, Status};
use surge_ping::{Client, Config, PingIdentifier, PingSequence, SurgeError, ICMP};

/// The ICMP sockets of one bee.
pub struct Icmp {
    v4: Option<Client>,
    v6: Option<Client>,
    v4_error: Option<String>,
    v6_error: Option<String>,
    ident: u16,
    seq: AtomicU16,
    payload: Vec<u8>,
}

/// Why one probe got no answer.
#[derive(Debug)]
pub enum ProbeError {
    /// No reply within the timeout: counts as loss.
    Timeout,
    /// The probe could not be sent (no route, no socket for the family, ...).
    Send(String),
}

impl Icmp {
    /// Opens the IPv4 and IPv6 sockets; fails only when neither can be opened.
    pub fn new() -> Result<Icmp> {
        let open = |kind| Client::new(&Config::builder().kind(kind).build());
        let (v4, v4_error) = match open(ICMP::V4) {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(format!("no IPv4 ICMP socket: {e}"))),
        };
        let (v6, v6_error) = match open(ICMP::V6) {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(format!("no IPv6 ICMP socket: {e}"))),
        };
        if v4.is_none() && v6.is_none() {
            bail!(
                "cannot open an ICMP socket ({}; {}): run as root, grant CAP_NET_RAW, or allow the group in net.ipv4.ping_group_range",
                v4_error.unwrap_or_default(),
                v6_error.unwrap_or_default()
            );
        }
        for e in [&v4_error, &v6_error].into_iter().flatten() {
            tracing::warn!(error = %e, "targets of this address family will report errors");
        }
        // Distinguishes this process's echoes from other pingers' on a RAW socket.
        let ident = (std::process::id() as u16) ^ (uuid::Uuid::new_v4().as_u128() as u16);
        Ok(Icmp { v4, v6, v4_error, v6_error, ident, seq: AtomicU16::new(0), payload: vec![0u8; 56] })
    }

    pub fn supports(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(_) => self.v4.is_some(),
            IpAddr::V6(_) => self.v6.is_some(),
        }
    }

    /// Sends one echo request and waits for its reply.
    pub async fn probe(&self, addr: IpAddr, timeout: Duration) -> Result<Duration, ProbeError> {
        let client = match addr {
            IpAddr::V4(_) => {
                self.v4.as_ref().ok_or_else(|| ProbeError::Send(self.v4_error.clone().unwrap_or_default()))?
            }
            IpAddr::V6(_) => {
                self.v6.as_ref().ok_or_else(|| ProbeError::Send(self.v6_error.clone().unwrap_or_default()))?
            }
        };
        // One sequence counter for all targets: a reply is matched by (address, ident,
        // sequence), so concurrent probes to one address never collide.
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut pinger = client.pinger(addr, PingIdentifier(self.ident)).await;
        pinger.timeout(timeout);
        match pinger.ping(PingSequence(seq), &self.payload).await {
            Ok((_, rtt)) => Ok(rtt),
            Err(SurgeError::Timeout { .. }) => Err(ProbeError::Timeout),
            Err(e) => Err(ProbeError::Send(e.to_string())),
        }
    }
}

/// How one round probes one target.
#[derive(Debug, Clone, Copy)]
pub struct RoundSpec {
    /// Probes per round (`ping -c`).
    pub probes: u16,
    /// Time between two probes of a round (`ping -i`).
    pub spacing: Duration,
    /// How long each probe waits for its reply.
    pub timeout: Duration,
}

/// The outcome of one round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundResult {
    pub sent: u16,
    pub received: u16,
    pub samples_ms: Vec<f64>,
    /// The last send error, if a probe could not be sent.
    pub send_error: Option<String>,
}

/// Probes `addr` `spec.probes` times, `spec.spacing` apart; a probe's wait for its reply
/// overlaps the next probes (only the probes in flight exist as tasks, so 10,000 targets
/// cost a few thousand small tasks, not 100,000).
pub async fn round(icmp: &Arc<Icmp>, addr: IpAddr, spec: RoundSpec) -> RoundResult {
    let mut set = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    for i in 0..spec.probes {
        tokio::time::sleep_until(start + spec.spacing * i as u32).await;
        let icmp = icmp.clone();
        set.spawn(async move { icmp.probe(addr, spec.timeout).await });
    }
    let mut r = RoundResult { sent: spec.probes, ..Default::default() };
    while let Some(res) = set.join_next().await {
        match res {
            Ok(Ok(rtt)) => {
                r.received += 1;
                r.samples_ms.push(rtt.as_secs_f64() * 1000.0);
            }
            Ok(Err(ProbeError::Timeout)) => {}
            Ok(Err(ProbeError::Send(e))) => r.send_error = Some(e),
            Err(e) => r.send_error = Some(format!("probe task failed: {e}")),
        }
    }
    r
}

/// Resolves a target: an address literal directly, a name through the system resolver
/// (preferring a family this bee has a socket for).
pub async fn resolve(icmp: &Icmp, target: &str, timeout: Duration) -> Result<IpAddr, String> {
    if let Ok(a) = target.parse::<IpAddr>() {
        return Ok(a);
    }
    let addrs: Vec<IpAddr> = match tokio::time::timeout(timeout, tokio::net::lookup_host((target, 0))).await {
        Ok(Ok(it)) => it.map(|sa| sa.ip()).collect(),
        Ok(Err(e)) => return Err(format!("cannot resolve {target}: {e}")),
        Err(_) => return Err(format!("cannot resolve {target}: timed out after {timeout:?}")),
    };
    addrs
        .iter()
        .find(|a| icmp.supports(**a))
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("cannot resolve {target}: no addresses"))
}

/// Who produces the records.
#[derive(Debug, Clone)]
pub struct Agent {
    pub stack: String,
    pub region: String,
    pub agent: String,
}

impl Agent {
    /// The record of one round: `error` when the target did not resolve or no probe could
    /// be sent; otherwise `ok` with the loss (1.0 when nothing answered) and RTT statistics.
    pub fn record(&self, target: &str, outcome: Result<RoundResult, String>) -> PingRecord {
        let (status, loss, rtt_ms, error) = match outcome {
            Err(e) => (Status::Error, 1.0, None, Some(e)),
            Ok(r) if r.sent == 0 => (Status::Error, 1.0, None, Some("no probes sent".to_string())),
            Ok(r) => {
                let loss = 1.0 - r.received as f64 / r.sent as f64;
                match (&r.send_error, r.received) {
                    (Some(e), 0) => (Status::Error, 1.0, None, Some(e.clone())),
                    _ => (Status::Ok, loss, Rtt::from_samples(&r.samples_ms), None),
                }
            }
        };
        PingRecord {
            id: uuid::Uuid::new_v4().to_string(),
            ts: crate::now_ts(),
            stack: self.stack.clone(),
            region: self.region.clone(),
            agent: self.agent.clone(),
            target: target.to_string(),
            status,
            loss,
            rtt_ms,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Agent {
        Agent { stack: "s".into(), region: "r".into(), agent: "bee-1".into() }
    }

    #[test]
    fn records_of_outcomes() {
        let ok = RoundResult { sent: 4, received: 3, samples_ms: vec![1.0, 2.0, 3.0], send_error: None };
        let r = agent().record("127.0.0.1", Ok(ok));
        assert_eq!((r.status, r.loss), (Status::Ok, 0.25));
        assert_eq!(r.rtt_ms.unwrap().avg, 2.0);
        r.validate().unwrap();

        let lost = RoundResult { sent: 4, ..Default::default() };
        let r = agent().record("192.0.2.1", Ok(lost));
        assert_eq!((r.status, r.loss, r.rtt_ms, r.error), (Status::Ok, 1.0, None, None));

        let unsendable =
            RoundResult { sent: 4, send_error: Some("Network is unreachable".into()), ..Default::default() };
        let r = agent().record("2001:db8::1", Ok(unsendable));
        assert_eq!(r.status, Status::Error);

        let r = agent().record("nx.invalid", Err("cannot resolve nx.invalid".into()));
        assert_eq!((r.status, r.loss), (Status::Error, 1.0));
        r.validate().unwrap();
        assert!(r.error.unwrap().contains("resolve"));
    }

    #[tokio::test]
    async fn pings_loopback_v4_and_v6() {
        let icmp = Arc::new(Icmp::new().expect("tests run as root (ICMP sockets)"));
        let spec = RoundSpec { probes: 3, spacing: Duration::from_millis(20), timeout: Duration::from_secs(1) };
        for a in ["127.0.0.1", "127.0.0.2", "::1"] {
            let r = round(&icmp, a.parse().unwrap(), spec).await;
            assert_eq!((r.sent, r.received), (3, 3), "{a}: {r:?}");
        }
        assert!(resolve(&icmp, "nx.invalid", Duration::from_secs(5)).await.is_err());
        assert_eq!(resolve(&icmp, "::1", Duration::from_secs(1)).await.unwrap(), "::1".parse::<IpAddr>().unwrap());
    }
}
