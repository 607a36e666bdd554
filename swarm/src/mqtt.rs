//! The broker connection shared by the programs: options (credentials, TLS), and an event
//! loop driver that reconnects with backoff and reports connection state and messages.
//!
//! The bee and the router speak MQTT 3.1.1 (what the original swarm's tools speak); the
//! indexer speaks MQTT 5 for its shared subscription. Both are driven the same way.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rumqttc::tokio_rustls::rustls;
use rumqttc::Transport;

use crate::config::{duration_in, int_in, SecretSource};
use crate::Backoff;

/// Debian's bundle of trusted CA certificates (package ca-certificates).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Broker options common to the three programs: flags and environment variables (see
/// swarm/README.md), plus what [`MqttArgs::prepare`] reads at start.
#[derive(clap::Args, Debug, Clone)]
pub struct MqttArgs {
    /// Broker host name or address.
    #[arg(long, env = "BROKER_HOST", default_value = "127.0.0.1",
          value_parser = crate::config::non_empty("BROKER_HOST (--broker-host)"))]
    pub broker_host: String,
    /// Broker port (1883 plain, 8883 usually for TLS): 1 to 65535.
    #[arg(long, env = "BROKER_PORT", default_value_t = 1883,
          value_parser = int_in("BROKER_PORT (--broker-port)", 1u16, 65535))]
    pub broker_port: u16,
    /// Broker user name.
    #[arg(long, env = "BROKER_USERNAME", default_value = "tyrell")]
    pub broker_username: String,
    /// The broker password from the environment (`BROKER_PASSWORD`, for local use; on the
    /// boxes BROKER_PASSWORD_PARAM). Not a flag: command lines are visible to every user.
    #[arg(skip = std::env::var("BROKER_PASSWORD").ok())]
    pub broker_password: Option<String>,
    /// A file holding the broker password (or set BROKER_PASSWORD).
    #[arg(long, env = "BROKER_PASSWORD_FILE")]
    pub broker_password_file: Option<PathBuf>,
    /// The SSM SecureString parameter holding the broker password, read at start.
    #[arg(long, env = "BROKER_PASSWORD_PARAM")]
    pub broker_password_param: Option<String>,
    /// Connect with TLS (server verified against BROKER_CA_FILE or BROKER_CA_PARAM, else
    /// the system roots).
    #[arg(long, env = "BROKER_TLS", default_value = "false", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub broker_tls: bool,
    /// PEM file with the CA that signed the broker's certificate (or BROKER_CA_PARAM, not
    /// both).
    #[arg(long, env = "BROKER_CA_FILE")]
    pub broker_ca_file: Option<PathBuf>,
    /// The SSM parameter holding the PEM of the CA that signed the broker's certificate:
    /// the swarm's own private CA, made on the broker boxes, which publish its (public)
    /// certificate as a String parameter such as `/tyrell/<swarm>/broker-ca`. A name is
    /// read in AWS_REGION; an ARN `arn:aws:ssm:REGION:ACCOUNT:parameter/NAME` (bees in
    /// another region) in REGION. Empty = not set.
    ///
    /// Read once at start (MqttArgs::prepare). Errors stop the program: set together
    /// with BROKER_CA_FILE; set without BROKER_TLS; a value holding no PEM certificate; a
    /// parameter that does not exist (the error names it). The last is how the boxes wait
    /// for the brokers to make the CA: their systemd units restart the program every 2 s
    /// (`Restart=always`, `RestartSec=2`) until the parameter is there.
    #[arg(long, env = "BROKER_CA_PARAM")]
    pub broker_ca_param: Option<String>,
    /// The PEM of the CA(s) the broker's certificate is verified against when BROKER_TLS
    /// is on, read once by [`MqttArgs::prepare`] (from BROKER_CA_PARAM, BROKER_CA_FILE or
    /// the system bundle); copies made by [`MqttArgs::at`] carry it. Not a setting.
    #[arg(skip)]
    ca_pem: Option<Arc<Vec<u8>>>,
    /// The name the broker's certificate is verified for instead of `broker_host`, the
    /// host dialled (set by [`MqttArgs::at_verifying`]; `None`: `broker_host` itself). Not
    /// a setting.
    #[arg(skip)]
    tls_name: Option<String>,
    /// MQTT keep-alive: a dead connection is noticed within 1.5 times this. 1s to 65535s
    /// (the protocol carries it as 16-bit seconds).
    #[arg(long, env = "BROKER_KEEP_ALIVE", default_value = "15s",
          value_parser = duration_in("BROKER_KEEP_ALIVE (--broker-keep-alive)", Duration::from_secs(1), Duration::from_secs(65535), false))]
    pub broker_keep_alive: Duration,
    /// Longest wait between reconnection attempts: 250ms to 1h.
    #[arg(long, env = "BROKER_MAX_BACKOFF", default_value = "30s",
          value_parser = duration_in("BROKER_MAX_BACKOFF (--broker-max-backoff)", Duration::from_millis(250), Duration::from_secs(3600), false))]
    pub broker_max_backoff: Duration,
}

impl MqttArgs {
    fn password_source(&self) -> SecretSource {
        SecretSource {
            value: self.broker_password.clone(),
            file: self.broker_password_file.clone(),
            param: self.broker_password_param.clone(),
        }
    }

    /// BROKER_CA_PARAM when it is set and not empty.
    fn ca_param(&self) -> Option<&str> {
        self.broker_ca_param.as_deref().filter(|p| !p.trim().is_empty())
    }

    /// Reads, once at start, what the broker options need from outside, and returns the
    /// broker password (`None`: connect without credentials). Call it before [`Self::v4`],
    /// [`Self::v5`] or [`Self::at`]: they stay synchronous and use what it read.
    ///
    /// In order: BROKER_CA_FILE and BROKER_CA_PARAM both set is an error (one sentence
    /// naming both); BROKER_CA_PARAM without BROKER_TLS is an error; the password (value,
    /// file or SSM: [`SecretSource::resolve`]); with BROKER_TLS on, the CA the broker is
    /// verified against — BROKER_CA_PARAM ([`crate::config::read_param`]: a missing
    /// parameter is an error naming it), else BROKER_CA_FILE, else the system bundle —
    /// which must hold a PEM certificate (else an error, never a panic).
    pub async fn prepare(&mut self) -> Result<Option<String>> {
        let param = self.ca_param().map(str::to_string);
        if let (Some(file), Some(p)) = (&self.broker_ca_file, &param) {
            bail!(
                "BROKER_CA_FILE (--broker-ca-file) {} and BROKER_CA_PARAM (--broker-ca-param) {p} are both set: give the broker's CA one way, a file or an SSM parameter",
                file.display()
            );
        }
        if let Some(p) = &param {
            ensure!(
                self.broker_tls,
                "BROKER_CA_PARAM (--broker-ca-param) {p} is set but BROKER_TLS is off: the CA only verifies a broker reached over TLS (set BROKER_TLS=true)"
            );
        }
        let password = self.password_source().resolve("broker password").await?;
        self.ca_pem = match (&param, self.broker_tls) {
            (_, false) => None,
            (Some(p), true) => {
                let pem = crate::config::read_param(p, "broker CA (BROKER_CA_PARAM)").await?;
                holds_certificate(pem.as_bytes(), &format!("BROKER_CA_PARAM {p}"))?;
                Some(Arc::new(pem.into_bytes()))
            }
            (None, true) => Some(Arc::new(self.ca_from_file()?)),
        };
        Ok(password)
    }

    /// The CA from BROKER_CA_FILE, else the system bundle (SSL_CERT_FILE, else
    /// [`SYSTEM_CA_BUNDLE`]): an error unless it is readable and holds a PEM certificate.
    fn ca_from_file(&self) -> Result<Vec<u8>> {
        // Without BROKER_CA_FILE the system's CA bundle is read here, not through
        // rumqttc's default configuration, which panics on an unreadable certificate
        // store and retries forever on an empty one.
        let (path, what) = match &self.broker_ca_file {
            Some(f) => (f.clone(), "BROKER_CA_FILE"),
            None => (
                std::env::var_os("SSL_CERT_FILE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE)),
                "the system CA bundle (SSL_CERT_FILE, else Debian's ca-certificates)",
            ),
        };
        let ca = std::fs::read(&path)
            .with_context(|| format!("BROKER_TLS is on, but {what} {} cannot be read", path.display()))?;
        holds_certificate(&ca, &format!("{what} {}", path.display()))?;
        Ok(ca)
    }

    /// The broker's TLS transport (`None` when BROKER_TLS is off): the certificate is
    /// verified against the CA [`Self::prepare`] read, for the name in `broker_host` (a
    /// DNS name or an IP address, which the certificate must then name) — or, in options
    /// made by [`Self::at_verifying`], for the name given there. Without `prepare`,
    /// BROKER_CA_FILE or the system bundle is read here (BROKER_CA_PARAM cannot be: an
    /// error).
    fn transport(&self) -> Result<Option<Transport>> {
        if !self.broker_tls {
            return Ok(None);
        }
        let ca = match &self.ca_pem {
            Some(pem) => pem.as_ref().clone(),
            None if self.ca_param().is_some() => {
                bail!(
                    "BROKER_CA_PARAM is set but was not read: MqttArgs::prepare must run before the options are built"
                )
            }
            None => self.ca_from_file()?,
        };
        Ok(Some(match &self.tls_name {
            None => Transport::tls(ca, None, None),
            Some(name) => Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(verifying_for(&ca, name)?)),
        }))
    }

    /// MQTT 3.1.1 options with an optional last will `(topic, payload, retain)`. Errors:
    /// BROKER_TLS on and no CA to verify the broker against (see [`Self::transport`]).
    pub fn v4(
        &self,
        client_id: &str,
        password: Option<&str>,
        will: Option<(String, Vec<u8>, bool)>,
    ) -> Result<rumqttc::MqttOptions> {
        let mut o = rumqttc::MqttOptions::new(client_id, &self.broker_host, self.broker_port);
        o.set_keep_alive(self.broker_keep_alive.max(Duration::from_secs(1)));
        o.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        if let Some(p) = password {
            o.set_credentials(&self.broker_username, p);
        }
        if let Some(t) = self.transport()? {
            o.set_transport(t);
        }
        if let Some((topic, payload, retain)) = will {
            o.set_last_will(rumqttc::LastWill::new(topic, payload, rumqttc::QoS::AtLeastOnce, retain));
        }
        Ok(o)
    }

    /// MQTT 5 options; `session_expiry` > 0 keeps the session (and queued QoS 1 messages)
    /// on the broker across reconnects. Errors: as [`Self::v4`].
    pub fn v5(&self, client_id: &str, password: Option<&str>, session_expiry: u32) -> Result<rumqttc::v5::MqttOptions> {
        let mut o = rumqttc::v5::MqttOptions::new(client_id, &self.broker_host, self.broker_port);
        o.set_keep_alive(self.broker_keep_alive.max(Duration::from_secs(1)));
        o.set_max_packet_size(Some(16 * 1024 * 1024));
        if let Some(p) = password {
            o.set_credentials(&self.broker_username, p);
        }
        if let Some(t) = self.transport()? {
            o.set_transport(t);
        }
        if session_expiry > 0 {
            o.set_clean_start(false);
            o.set_session_expiry_interval(Some(session_expiry));
        }
        Ok(o)
    }

    /// The same options for the broker at `host`:`port`: the credentials, BROKER_TLS and
    /// the CA [`Self::prepare`] read are kept, so with BROKER_TLS on the connection is TLS
    /// and the broker's certificate must be valid for `host` itself.
    pub fn at(&self, host: &str, port: u16) -> MqttArgs {
        MqttArgs { broker_host: host.to_string(), broker_port: port, tls_name: None, ..self.clone() }
    }

    /// As [`Self::at`], but with BROKER_TLS on the broker's certificate is verified —
    /// against the same CA — for `name` rather than for `host`, the address dialled. For
    /// a broker reached at an address its certificate does not name (see
    /// [`Self::direct`]). Without BROKER_TLS, `name` is unused.
    pub fn at_verifying(&self, host: &str, port: u16, name: &str) -> MqttArgs {
        MqttArgs { tls_name: Some(name.to_string()), ..self.at(host, port) }
    }

    /// The options of an indexer's direct connection to an announced broker (`None`: no
    /// direct connection):
    ///
    /// * BROKER_TLS off: plain MQTT to the announcement's `host`:`port`.
    /// * BROKER_TLS on, and the announcement has a `tls_port` (a broker that ends TLS
    ///   itself): TLS to `host`:`tls_port`, the certificate verified against the CA
    ///   [`Self::prepare`] read for BROKER_HOST (the NLB's name, the one name the swarm's
    ///   broker certificate carries), not for `host` (the broker's private IP).
    /// * BROKER_TLS on and no `tls_port` (a broker behind an NLB that ends TLS with an ACM
    ///   certificate, or one older than `tls_port`): `None`. Never plain MQTT instead: a
    ///   connection that is TLS through the NLB is not downgraded for the direct link.
    pub fn direct(&self, ann: &Announcement) -> Option<MqttArgs> {
        match (self.broker_tls, ann.tls_port) {
            (false, _) => Some(self.at(&ann.host, ann.port)),
            (true, Some(tls_port)) => Some(self.at_verifying(&ann.host, tls_port, &self.broker_host)),
            (true, None) => None,
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(Duration::from_millis(250), self.broker_max_backoff.max(Duration::from_millis(250)))
    }
}

/// Checks that `pem` holds a PEM certificate (`-----BEGIN CERTIFICATE-----`, RFC 7468):
/// else an error `BROKER_TLS is on, but <what> holds no PEM certificate`.
fn holds_certificate(pem: &[u8], what: &str) -> Result<()> {
    ensure!(
        String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----"),
        "BROKER_TLS is on, but {what} holds no PEM certificate"
    );
    Ok(())
}

/// A rustls client configuration trusting the CA(s) in `ca_pem` that verifies the server's
/// certificate for `name` (a DNS name or an IP address) whatever name the connection was
/// opened with: rumqttc hands rustls the host it dials as the server name, and an
/// announced broker is dialled at its private IP, which its certificate does not name.
/// Everything else is rustls's own verification ([`VerifyFor`]). The crypto provider is
/// aws-lc-rs, the one rumqttc's rustls is built with (tokio-rustls's default). Errors: no
/// certificate in `ca_pem`, `name` not a valid DNS name or IP address.
fn verifying_for(ca_pem: &[u8], name: &str) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let name = ServerName::try_from(name.to_string())
        .map_err(|e| anyhow::anyhow!("BROKER_HOST {name:?} is not a name a certificate can be verified for: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(ca_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("the broker's CA is not valid PEM")?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs);
    ensure!(!roots.is_empty(), "the broker's CA holds no usable certificate");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("building the broker certificate verifier")?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(VerifyFor { inner, name }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// rustls's WebPKI verifier with a fixed server name: [`VerifyFor::verify_server_cert`]
/// checks the chain to the CA, validity, and that the certificate names `name`, whatever
/// name it is given; the handshake signatures and schemes are the inner verifier's.
#[derive(Debug)]
struct VerifyFor {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: rustls::pki_types::ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for VerifyFor {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _dialled: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// How long a broker's announcement lives when it carries no MQTT 5 message expiry: what
/// roles/broker/tyrell-broker-announce sets (it re-publishes every 60 s).
pub const ANNOUNCEMENT_EXPIRY: Duration = Duration::from_secs(180);

/// A broker's announcement, the retained JSON on `tyrell/brokers/<instance-id>`
/// ([`crate::topics::BROKERS_PREFIX`]): `{"host": "10.0.1.5", "port": 1883, "tls_port":
/// 8883, "version": "v261123101500"}` — its private address, its plain MQTT port (for the
/// other brokers' bridges) and, when the broker ends MQTT's TLS itself, its TLS port.
/// Published by the broker itself (roles/broker/tyrell-broker-announce) with an MQTT 5
/// message expiry (MQTT 5.0 §3.3.2.3.3), so the announcement of a broker that died
/// unannounced disappears; an empty payload means the broker stopped. How an indexer
/// connects to it: [`MqttArgs::direct`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Announcement {
    /// Address (IPv4/IPv6 literal) or host name.
    pub host: String,
    /// Plain MQTT port: 1 to 65535.
    pub port: u16,
    /// MQTT over TLS port, 1 to 65535, when the broker ends TLS itself (its certificate,
    /// from the swarm's own CA, names the NLB, not `host`); absent (or null) when it does
    /// not (an NLB ending TLS with an ACM certificate, or a broker older than this field).
    #[serde(default)]
    pub tls_port: Option<u16>,
    /// The broker's release (informational).
    #[serde(default)]
    pub version: String,
}

impl Announcement {
    /// Parses a non-empty announcement; errors name what is wrong (not JSON, no host,
    /// port 0, tls_port 0).
    pub fn parse(payload: &[u8]) -> Result<Announcement, String> {
        let a: Announcement = serde_json::from_slice(payload).map_err(|e| format!("not a broker announcement: {e}"))?;
        if a.host.trim().is_empty() || a.port == 0 {
            return Err(format!("broker announcement without a host or port: {a:?}"));
        }
        if a.tls_port == Some(0) {
            return Err(format!("broker announcement with tls_port 0: {a:?}"));
        }
        Ok(a)
    }
}

/// The connection's state, shared with whoever needs it (the router's `/healthz`).
#[derive(Debug, Default)]
pub struct ConnState {
    connected: AtomicBool,
    /// Connections accepted by the broker.
    pub connects: AtomicU64,
    /// Failed connections and connection attempts.
    pub errors: AtomicU64,
    /// Connections taken over by another client with the same client id (see [`Reconnect`]).
    pub clashes: AtomicU64,
    /// UNSUBACKs received (MQTT 5 only): once the broker acknowledges an UNSUBSCRIBE it
    /// sends nothing more for that filter (MQTT 5.0 §3.10.4), and what it sent before
    /// arrived ahead of the UNSUBACK on the same connection.
    pub unsubacks: AtomicU64,
    /// Times the broker asked this client to move to the live broker version
    /// ([`crate::topics::MOVE`]).
    pub moves: AtomicU64,
    /// PUBLISH packets received (MQTT 5 driver): a draining indexer waits until they stop
    /// coming, since a broker may still deliver what it had queued for the session after
    /// an UNSUBACK (MQTT 5.0 §3.10.4).
    pub publishes: AtomicU64,
}

impl ConnState {
    /// Whether the connection is up now (from its CONNACK until it fails).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// What the event loop reports to its program.
pub enum Msg<'a> {
    /// Connected (again): (re)subscribe, (re)announce.
    Connected,
    /// A message from the broker.
    Publish {
        /// Its topic.
        topic: &'a str,
        /// Its payload, as published.
        payload: &'a [u8],
        /// Whether the broker sent it as a retained message (on subscribing).
        retain: bool,
        /// The MQTT 5 packet (to acknowledge it later under manual acks); `None` on 3.1.1.
        v5: Option<&'a rumqttc::v5::mqttbytes::v5::Publish>,
    },
}

/// How long a connection must stay up before the reconnection backoff starts again from
/// its minimum. Resetting at every connect would let a connection that is dropped right
/// after it is made (two clients with one client id taking it from each other) reconnect
/// at the minimum delay forever.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// A connection the broker closes within this of accepting it, without a reason, was most
/// likely taken over by another client with the same client id: that is how MQTT 3.1.1
/// brokers (mosquitto) end the older of two connections with one id.
pub const CLASH_WINDOW: Duration = Duration::from_secs(5);

/// How a connection ended, as far as reconnecting cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// The broker said another client took the session over (MQTT 5 DISCONNECT, reason
    /// code 0x8E "Session taken over").
    TakenOver,
    /// The broker closed the connection without a word (end of stream, reset).
    Closed,
    /// Anything else: timeouts, refused or failed connects, TLS, name resolution.
    Other,
}

/// The reconnection policy of a connection: exponential backoff (see [`crate::Backoff`])
/// that restarts from its minimum only once a connection stayed up [`STABLE_AFTER`], and
/// the detection of a client id clash.
#[derive(Debug, Clone)]
pub struct Reconnect {
    backoff: Backoff,
    connected_at: Option<Instant>,
}

impl Reconnect {
    /// A policy around `backoff` (its minimum, cap and jitter), before any connection.
    pub fn new(backoff: Backoff) -> Reconnect {
        Reconnect { backoff, connected_at: None }
    }

    /// A connection was accepted (CONNACK) at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The connection (or an attempt) failed at `now`: returns how long to wait before the
    /// next attempt, how long the connection had been up (`None`: it never was), and
    /// whether another client with the same id probably took it over (the broker said
    /// so, or closed it within [`CLASH_WINDOW`] of accepting it).
    pub fn lost(&mut self, now: Instant, loss: Loss) -> (Duration, Option<Duration>, bool) {
        let up = self.connected_at.take().map(|t| now.saturating_duration_since(t));
        if up.is_some_and(|u| u >= STABLE_AFTER) {
            self.backoff.reset();
        }
        let clash = loss == Loss::TakenOver || (loss == Loss::Closed && up.is_some_and(|u| u < CLASH_WINDOW));
        (self.backoff.next_delay(), up, clash)
    }
}

fn io_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe)
}

/// What an MQTT 3.1.1 connection error says about how the connection ended.
pub fn loss_v4(e: &rumqttc::ConnectionError) -> Loss {
    use rumqttc::{ConnectionError as C, StateError as S};
    match e {
        C::MqttState(S::ConnectionAborted) => Loss::Closed,
        C::MqttState(S::Io(io)) | C::Io(io) if io_closed(io) => Loss::Closed,
        _ => Loss::Other,
    }
}

/// What an MQTT 5 connection error says about how the connection ended.
pub fn loss_v5(e: &rumqttc::v5::ConnectionError) -> Loss {
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
    use rumqttc::v5::{ConnectionError as C, StateError as S};
    match e {
        C::MqttState(S::ServerDisconnect { reason_code: DisconnectReasonCode::SessionTakenOver, .. }) => {
            Loss::TakenOver
        }
        C::MqttState(S::ConnectionAborted) => Loss::Closed,
        C::MqttState(S::Io(io)) | C::Io(io) if io_closed(io) => Loss::Closed,
        _ => Loss::Other,
    }
}

async fn on_error(
    state: &ConnState,
    policy: &mut Reconnect,
    err: &(dyn std::fmt::Display + Sync),
    loss: Loss,
    client_id: &str,
    broker: &str,
) {
    let was = state.connected.swap(false, Ordering::Relaxed);
    state.errors.fetch_add(1, Ordering::Relaxed);
    let (delay, up, clash) = policy.lost(Instant::now(), loss);
    let retry_in_ms = delay.as_millis() as u64;
    if clash {
        state.clashes.fetch_add(1, Ordering::Relaxed);
        let up_ms = up.map(|u| u.as_millis() as u64);
        tracing::error!(broker, client_id, error = %err, up_ms, retry_in_ms,
            "client id clash: the broker handed this connection to another client with the same client id {client_id:?}; two programs must not share an id (BEE_AGENT / INDEXER_CLIENT_ID); backing off");
    } else if was {
        tracing::error!(broker, error = %err, retry_in_ms, "lost the broker connection");
    } else {
        tracing::warn!(broker, error = %err, retry_in_ms, "cannot connect to the broker");
    }
    tokio::time::sleep(delay).await;
}

fn on_connected(state: &ConnState, policy: &mut Reconnect, broker: &str) {
    state.connected.store(true, Ordering::Relaxed);
    let n = state.connects.fetch_add(1, Ordering::Relaxed);
    policy.connected(Instant::now());
    tracing::info!(broker, reconnect = n > 0, "connected to the broker");
}

/// Drives an MQTT 3.1.1 event loop forever, reconnecting with backoff ([`Reconnect`]).
///
/// The MQTT 3.1.1 clients (bees, routers) reach the broker through the swarm's NLB, so this
/// driver also follows broker releases: it subscribes to [`crate::topics::MOVE`] at every
/// connection and, when its broker says another version is live, ends the connection
/// with a DISCONNECT (the broker then discards the client's last will: MQTT 3.1.1 §3.14.4,
/// so no bee is reported dead by a move) and connects again at once through the NLB.
///
/// QoS 1 messages are delivered at least once across reconnections: rumqttc drops the
/// messages it had not seen acknowledged when the new connection has no session (a clean
/// session, or another broker), so the driver keeps them and sends them again on the new
/// connection (a broker that had them already delivers them twice: records carry an `id`).
pub async fn drive_v4(args: &MqttArgs, mut ev: rumqttc::EventLoop, state: Arc<ConnState>, mut on: impl FnMut(Msg<'_>)) {
    use rumqttc::{Event, Packet, Request};
    let mut policy = Reconnect::new(args.backoff());
    let broker = format!("{}:{}", args.broker_host, args.broker_port);
    let client_id = ev.mqtt_options.client_id();
    let mut unacked: Vec<Request> = Vec::new();
    let mut moving = false;
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                on_connected(&state, &mut policy, &broker);
                if !unacked.is_empty() {
                    tracing::info!(
                        broker,
                        messages = unacked.len(),
                        "sending again what the last connection did not see acknowledged"
                    );
                }
                ev.pending.extend(unacked.drain(..));
                ev.pending.push_front(Request::Subscribe(rumqttc::Subscribe::new(
                    crate::topics::MOVE,
                    rumqttc::QoS::AtLeastOnce,
                )));
                on(Msg::Connected);
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == crate::topics::MOVE => {
                if !moving {
                    moving = true;
                    state.moves.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(broker, says = %String::from_utf8_lossy(&p.payload),
                        "this broker's version is no longer live: disconnecting to connect again through {broker}");
                    ev.pending.push_back(Request::Disconnect(rumqttc::Disconnect));
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                on(Msg::Publish { topic: &p.topic, payload: &p.payload, retain: p.retain, v5: None });
            }
            Ok(_) => {}
            Err(e) => {
                // poll() moved what was in flight (and queued) into `pending`; keep the messages.
                unacked.extend(ev.pending.drain(..).filter(|r| matches!(r, Request::Publish(_))));
                if std::mem::take(&mut moving) && state.connected.swap(false, Ordering::Relaxed) {
                    tracing::info!(broker, "disconnected for the move; connecting again");
                    policy.connected_at = None;
                    continue;
                }
                on_error(&state, &mut policy, &e, loss_v4(&e), &client_id, &broker).await
            }
        }
    }
}

/// Drives an MQTT 5 event loop forever, reconnecting with backoff ([`Reconnect`]).
pub async fn drive_v5(
    args: &MqttArgs,
    mut ev: rumqttc::v5::EventLoop,
    state: Arc<ConnState>,
    mut on: impl FnMut(Msg<'_>),
) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::Event;
    let mut policy = Reconnect::new(args.backoff());
    let broker = format!("{}:{}", args.broker_host, args.broker_port);
    let client_id = ev.options.client_id();
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                on_connected(&state, &mut policy, &broker);
                on(Msg::Connected);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                state.publishes.fetch_add(1, Ordering::Relaxed);
                match std::str::from_utf8(&p.topic) {
                    Ok(topic) => on(Msg::Publish { topic, payload: &p.payload, retain: p.retain, v5: Some(&p) }),
                    Err(_) => tracing::warn!("skipping a message whose topic is not UTF-8"),
                }
            }
            Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                state.unsubacks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => on_error(&state, &mut policy, &e, loss_v5(&e), &client_id, &broker).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Reconnect {
        Reconnect::new(Backoff::new(Duration::from_millis(250), Duration::from_secs(30)))
    }

    #[test]
    fn backoff_does_not_reset_for_a_connection_dropped_at_once() {
        let mut p = policy();
        let mut t = Instant::now();
        let mut delays = Vec::new();
        // Connected, then dropped 100 ms later, again and again (an id clash).
        for _ in 0..6 {
            p.connected(t);
            t += Duration::from_millis(100);
            let (d, up, clash) = p.lost(t, Loss::Closed);
            assert_eq!(up, Some(Duration::from_millis(100)));
            assert!(clash);
            delays.push(d.as_millis());
            t += d;
        }
        assert!(delays[5] >= 8000, "the backoff kept growing: {delays:?}");
        // A connection that stayed up long enough starts the backoff over.
        p.connected(t);
        let (d, up, clash) = p.lost(t + STABLE_AFTER, Loss::Closed);
        assert!(d < Duration::from_millis(313) && up == Some(STABLE_AFTER) && !clash, "{d:?}");
    }

    #[test]
    fn how_connections_end() {
        use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
        let taken = rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
            reason_code: DisconnectReasonCode::SessionTakenOver,
            reason_string: None,
        });
        assert_eq!(loss_v5(&taken), Loss::TakenOver);
        let closed = rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ConnectionAborted);
        assert_eq!(loss_v5(&closed), Loss::Closed);
        assert_eq!(loss_v4(&rumqttc::ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted)), Loss::Closed);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(loss_v4(&rumqttc::ConnectionError::Io(reset)), Loss::Closed);
        assert_eq!(loss_v4(&rumqttc::ConnectionError::MqttState(rumqttc::StateError::AwaitPingResp)), Loss::Other);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(loss_v4(&rumqttc::ConnectionError::Io(refused)), Loss::Other);
    }

    #[test]
    fn announcements() {
        let a = Announcement::parse(br#"{"host":"10.0.1.5","port":1883,"version":"v1"}"#).unwrap();
        assert_eq!((a.host.as_str(), a.port, a.version.as_str()), ("10.0.1.5", 1883, "v1"));
        assert!(Announcement::parse(br#"{"host":"","port":1883}"#).is_err());
        assert!(Announcement::parse(br#"{"host":"h","port":0}"#).is_err());
        assert!(Announcement::parse(b"nope").unwrap_err().contains("not a broker announcement"));
        assert_eq!(a.tls_port, None);
        let t = Announcement::parse(br#"{"host":"10.0.1.5","port":1883,"tls_port":8883,"version":"v1"}"#).unwrap();
        assert_eq!(t.tls_port, Some(8883));
        assert_ne!(t, a, "a tls_port makes another announcement");
        assert_eq!(Announcement::parse(br#"{"host":"h","port":1,"tls_port":null}"#).unwrap().tls_port, None);
        assert!(Announcement::parse(br#"{"host":"h","port":1883,"tls_port":0}"#).unwrap_err().contains("tls_port 0"));
        assert!(Announcement::parse(br#"{"host":"h","port":1883,"tls_port":70000}"#).is_err());
    }

    fn args(tls: bool) -> MqttArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct A {
            #[command(flatten)]
            m: MqttArgs,
        }
        let mut m = A::parse_from(["x"]).m;
        m.broker_host = "swarm1-broker-0123.elb.eu-west-1.amazonaws.com".into();
        m.broker_tls = tls;
        m
    }

    #[test]
    fn how_an_indexer_reaches_an_announced_broker() {
        let plain = Announcement { host: "10.0.1.5".into(), port: 1883, tls_port: None, version: "v1".into() };
        let tls = Announcement { tls_port: Some(8883), ..plain.clone() };
        // Plain MQTT: the announced plain port, whatever else is announced.
        for a in [&plain, &tls] {
            let d = args(false).direct(a).unwrap();
            assert_eq!((d.broker_host.as_str(), d.broker_port, d.broker_tls), ("10.0.1.5", 1883, false));
        }
        // TLS: the TLS port, verified for the NLB's name; never plain MQTT.
        let d = args(true).direct(&tls).unwrap();
        assert_eq!((d.broker_host.as_str(), d.broker_port, d.broker_tls), ("10.0.1.5", 8883, true));
        assert_eq!(d.tls_name.as_deref(), Some("swarm1-broker-0123.elb.eu-west-1.amazonaws.com"));
        assert!(args(true).direct(&plain).is_none());
        // at() verifies for the host it dials, even from options that did not.
        assert_eq!(d.at("10.0.1.6", 8883).tls_name, None);
    }

    #[test]
    fn a_verifier_for_a_fixed_name_needs_a_certificate_and_a_valid_name() {
        let not_pem = verifying_for(b"no certificate here", "broker.test").unwrap_err();
        assert!(format!("{not_pem:#}").contains("no usable certificate"), "{not_pem:#}");
        let bad = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        assert!(verifying_for(bad, "broker.test").is_err());
        let name = verifying_for(b"", "not a host name!").unwrap_err();
        assert!(format!("{name:#}").contains("BROKER_HOST \"not a host name!\""), "{name:#}");
    }

    #[test]
    fn what_counts_as_a_clash() {
        let t = Instant::now();
        let mut p = policy();
        // Failed attempts are never a clash (there was no connection).
        assert!(!p.lost(t, Loss::Closed).2);
        // MQTT 5 says so, whenever it happens.
        p.connected(t);
        assert!(p.lost(t + Duration::from_secs(3600), Loss::TakenOver).2);
        // Closed later than the window, or for another reason (a timeout): not a clash.
        p.connected(t);
        assert!(!p.lost(t + CLASH_WINDOW, Loss::Closed).2);
        p.connected(t);
        assert!(!p.lost(t + Duration::from_millis(10), Loss::Other).2);
    }
}
