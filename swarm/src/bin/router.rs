//! router: the swarm's HTTP API behind the load balancer (see `swarm::router`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rumqttc::{AsyncClient, QoS};
use swarm::config::{self, Check, SecretSource};
use swarm::mqtt::{self, ConnState, MqttArgs, Msg};
use swarm::router::{app, RouterState};
use swarm::topics;

#[derive(Parser, Debug)]
#[command(name = "router", version, about = "The swarm's HTTP API: targets, latest results, live bees")]
struct Args {
    /// Configuration file (KEY=VALUE lines, as /etc/tyrell/router.env).
    #[arg(long, env = "TYRELL_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    mqtt: MqttArgs,
    /// Address to serve on: IP:PORT, the port 1 to 65535.
    #[arg(long, env = "ROUTER_LISTEN", default_value = "0.0.0.0:8080",
          value_parser = config::listen_addr("ROUTER_LISTEN (--listen)", false))]
    listen: String,
    /// The bearer token for PUT /watch from the environment (`ROUTER_TOKEN`, local use; on
    /// the boxes ROUTER_TOKEN_PARAM). Not a flag: command lines are visible to every user.
    #[arg(skip = std::env::var("ROUTER_TOKEN").ok())]
    token: Option<String>,
    /// A file holding the token (or set ROUTER_TOKEN).
    #[arg(long, env = "ROUTER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The SSM SecureString parameter holding the token, read at start.
    #[arg(long, env = "ROUTER_TOKEN_PARAM")]
    token_param: Option<String>,
    /// A bee counts as alive while the router received a result from it within this: 1s
    /// to 24h.
    #[arg(long, env = "ROUTER_BEE_TTL", default_value = "60s",
          value_parser = config::duration_in("ROUTER_BEE_TTL (--bee-ttl)", Duration::from_secs(1), Duration::from_secs(86_400), false))]
    bee_ttl: Duration,
    /// This role version (shown by /version).
    #[arg(long, env = "TYRELL_VERSION", default_value = "")]
    role_version: String,
}

impl Check for Args {}

async fn run(mut args: Args) -> Result<()> {
    let token =
        SecretSource { value: args.token.clone(), file: args.token_file.clone(), param: args.token_param.clone() }
            .resolve("router token")
            .await?;
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        bail!("no router token: set ROUTER_TOKEN_PARAM (SSM), ROUTER_TOKEN_FILE or ROUTER_TOKEN");
    };
    let password = args.mqtt.prepare().await?;
    let client_id = format!("router-{}-{}", swarm::hostname(), std::process::id());
    let opts = args.mqtt.v4(&client_id, password.as_deref(), None)?;
    let (client, eventloop) = AsyncClient::new(opts, 1000);
    let conn = Arc::new(ConnState::default());
    let state =
        Arc::new(RouterState::new(conn.clone(), client.clone(), token, args.bee_ttl, args.role_version.clone()));

    let st = state.clone();
    let on_message = move |m: Msg<'_>| match m {
        Msg::Connected => {
            let c = client.clone();
            tokio::spawn(async move {
                for t in [topics::WATCH, topics::PING_ALL, "rip/agent/+"] {
                    if let Err(e) = c.subscribe(t, QoS::AtLeastOnce).await {
                        tracing::error!(error = %e, topic = t, "cannot subscribe");
                    }
                }
            });
        }
        Msg::Publish { topic, payload, .. } => st.on_message(topic, payload),
    };
    let mqtt_args = args.mqtt.clone();
    let driver = tokio::spawn(async move { mqtt::drive_v4(&mqtt_args, eventloop, conn, on_message).await });

    let listener =
        tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, "router serving");
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping");
    });
    tokio::select! {
        r = server => r?,
        r = driver => bail!("the MQTT driver stopped: {r:?}"),
    }
    Ok(())
}

fn main() -> Result<()> {
    config::main::<Args, _, _>("router", run)
}
