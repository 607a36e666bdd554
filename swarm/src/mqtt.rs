//! The broker connection shared by the programs: options (credentials, TLS), and an event
//! loop driver that reconnects with backoff and reports connection state and messages.
//!
//! The bee and the router speak MQTT 3.1.1 (what the original swarm's tools speak); the
//! indexer speaks MQTT 5 for its shared subscription. Both are driven the same way.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rumqttc::Transport;

use crate::config::{parse_duration, SecretSource};
use crate::Backoff;

/// Broker options common to the three programs.
#[derive(clap::Args, Debug, Clone)]
pub struct MqttArgs {
    /// Broker host name or address.
    #[arg(long, env = "BROKER_HOST", default_value = "127.0.0.1")]
    pub broker_host: String,
    /// Broker port (1883 plain, 8883 usually for TLS).
    #[arg(long, env = "BROKER_PORT", default_value_t = 1883)]
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
    /// Connect with TLS (server verified against BROKER_CA_FILE, else the system roots).
    #[arg(long, env = "BROKER_TLS", default_value = "false", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub broker_tls: bool,
    /// PEM file with the CA that signed the broker's certificate.
    #[arg(long, env = "BROKER_CA_FILE")]
    pub broker_ca_file: Option<PathBuf>,
    /// MQTT keep-alive: a dead connection is noticed within 1.5 times this.
    #[arg(long, env = "BROKER_KEEP_ALIVE", default_value = "15s", value_parser = parse_duration)]
    pub broker_keep_alive: Duration,
    /// Longest wait between reconnection attempts.
    #[arg(long, env = "BROKER_MAX_BACKOFF", default_value = "30s", value_parser = parse_duration)]
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

    /// Reads the password (possibly from SSM). `None` connects without credentials.
    pub async fn password(&self) -> Result<Option<String>> {
        self.password_source().resolve("broker password").await
    }

    fn transport(&self) -> Result<Option<Transport>> {
        if !self.broker_tls {
            return Ok(None);
        }
        Ok(Some(match &self.broker_ca_file {
            Some(f) => {
                let ca = std::fs::read(f).with_context(|| format!("reading the broker CA {}", f.display()))?;
                Transport::tls(ca, None, None)
            }
            None => Transport::tls_with_default_config(),
        }))
    }

    /// MQTT 3.1.1 options with an optional last will `(topic, payload, retain)`.
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
    /// on the broker across reconnects.
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

    fn backoff(&self) -> Backoff {
        Backoff::new(Duration::from_millis(250), self.broker_max_backoff.max(Duration::from_millis(250)))
    }
}

/// The connection's state, shared with whoever needs it (the router's `/healthz`).
#[derive(Debug, Default)]
pub struct ConnState {
    connected: AtomicBool,
    pub connects: AtomicU64,
    pub errors: AtomicU64,
}

impl ConnState {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// What the event loop reports to its program.
pub enum Msg<'a> {
    /// Connected (again): (re)subscribe, (re)announce.
    Connected,
    Publish {
        topic: &'a str,
        payload: &'a [u8],
        retain: bool,
        /// The MQTT 5 packet (to acknowledge it later under manual acks); `None` on 3.1.1.
        v5: Option<&'a rumqttc::v5::mqttbytes::v5::Publish>,
    },
}

async fn on_error(
    state: &ConnState,
    backoff: &mut Backoff,
    err: &(dyn std::fmt::Display + Sync),
    host: &str,
    port: u16,
) {
    let was = state.connected.swap(false, Ordering::Relaxed);
    state.errors.fetch_add(1, Ordering::Relaxed);
    let delay = backoff.next_delay();
    if was {
        tracing::error!(broker = %format!("{host}:{port}"), error = %err, retry_in_ms = delay.as_millis() as u64, "lost the broker connection");
    } else {
        tracing::warn!(broker = %format!("{host}:{port}"), error = %err, retry_in_ms = delay.as_millis() as u64, "cannot connect to the broker");
    }
    tokio::time::sleep(delay).await;
}

fn on_connected(state: &ConnState, backoff: &mut Backoff, host: &str, port: u16) {
    state.connected.store(true, Ordering::Relaxed);
    let n = state.connects.fetch_add(1, Ordering::Relaxed);
    backoff.reset();
    tracing::info!(broker = %format!("{host}:{port}"), reconnect = n > 0, "connected to the broker");
}

/// Drives an MQTT 3.1.1 event loop forever, reconnecting with backoff.
pub async fn drive_v4(args: &MqttArgs, mut ev: rumqttc::EventLoop, state: Arc<ConnState>, mut on: impl FnMut(Msg<'_>)) {
    use rumqttc::{Event, Packet};
    let mut backoff = args.backoff();
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                on_connected(&state, &mut backoff, &args.broker_host, args.broker_port);
                on(Msg::Connected);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                on(Msg::Publish { topic: &p.topic, payload: &p.payload, retain: p.retain, v5: None });
            }
            Ok(_) => {}
            Err(e) => on_error(&state, &mut backoff, &e, &args.broker_host, args.broker_port).await,
        }
    }
}

/// Drives an MQTT 5 event loop forever, reconnecting with backoff.
pub async fn drive_v5(
    args: &MqttArgs,
    mut ev: rumqttc::v5::EventLoop,
    state: Arc<ConnState>,
    mut on: impl FnMut(Msg<'_>),
) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::Event;
    let mut backoff = args.backoff();
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                on_connected(&state, &mut backoff, &args.broker_host, args.broker_port);
                on(Msg::Connected);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => match std::str::from_utf8(&p.topic) {
                Ok(topic) => on(Msg::Publish { topic, payload: &p.payload, retain: p.retain, v5: Some(&p) }),
                Err(_) => tracing::warn!("skipping a message whose topic is not UTF-8"),
            },
            Ok(_) => {}
            Err(e) => on_error(&state, &mut backoff, &e, &args.broker_host, args.broker_port).await,
        }
    }
}
