//! The MQTT fabric of a node: its client (connected whenever the broker
//! is there) and the topics both sides use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{Config, Mode};
use crate::mqtt_client::{MqttClient, MqttConfig};
use crate::sync::mqtt::Topics;

/// A node's MQTT side; `client` is `None` without an `mqtt` section.
pub(super) struct Fabric {
    pub client: Option<Arc<MqttClient>>,
    pub topics: Topics,
}

impl Fabric {
    /// Starts the client (when configured) and the task that keeps
    /// `qproxy_mqtt_connected` in step with it.
    pub fn start(
        config: &Config,
        broker: Option<SocketAddr>,
        api: SocketAddr,
        tls: &crate::tls::Setup,
        shutdown: &CancellationToken,
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> Fabric {
        let client = mqtt_client(config, broker, api, tls);
        if let Some(client) = &client {
            tasks.push(watch_mqtt(client.clone(), shutdown.clone()));
        }
        let topics = Topics::new(
            config
                .mqtt
                .as_ref()
                .map_or("qproxy", |m| m.topic_prefix.as_str()),
        );
        Fabric { client, topics }
    }
}

/// The node's MQTT client, started (it connects whenever the broker is there).
fn mqtt_client(
    config: &Config,
    broker: Option<SocketAddr>,
    api: SocketAddr,
    tls: &crate::tls::Setup,
) -> Option<Arc<MqttClient>> {
    let section = config.mqtt.as_ref().filter(|m| m.enabled)?;
    let (host, port) = match broker {
        Some(addr) if section.host.is_none() && section.port.is_none() => {
            (addr.ip().to_string(), addr.port())
        }
        _ => section.broker_addr(),
    };
    let client_id = section
        .client_id
        .clone()
        .unwrap_or_else(|| match config.mode {
            // The bound port, not the configured one (which may be 0).
            Mode::Record => format!("qproxy-record-{}", api.port()),
            Mode::Playback => format!("qproxy-playback-{}", config.sync.peer_id),
        });
    let mut client = MqttClient::new(MqttConfig {
        client_id,
        host,
        port,
        keep_alive: section.keep_alive,
        app_id: section.app_id.clone(),
        token: section.token.clone(),
        query_timeout: Duration::from_millis(section.query_timeout_ms),
        max_packet_bytes: section.max_batch_bytes.saturating_add(1 << 20),
        tls: section.tls.then(|| tls.client.clone()),
        ..MqttConfig::default()
    });
    client.start();
    info!(broker = %client.broker(), client_id = %client.client_id(), "mqtt client started");
    Some(Arc::new(client))
}

/// Keeps the `qproxy_mqtt_connected` gauge in step with the connection.
fn watch_mqtt(client: Arc<MqttClient>, shutdown: CancellationToken) -> JoinHandle<()> {
    let mut state = client.connection_state();
    tokio::spawn(async move {
        loop {
            let up = *state.borrow_and_update();
            metrics::gauge!(crate::metrics::MQTT_CONNECTED).set(if up { 1.0 } else { 0.0 });
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
        }
    })
}
