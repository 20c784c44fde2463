//! The sync sections: `sync` (shards, pulls, the peer) and `mqtt`.

use super::*;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// On a Playback node: pull and replay. A Record node always serves the
    /// sync API and ignores this.
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "one")]
    pub shards: u32,
    /// Milliseconds between pulls of a shard that had nothing new.
    #[serde(default = "default_interval_ms", rename = "interval")]
    pub interval_ms: u64,
    #[serde(default)]
    pub peer: Option<PeerConfig>,
    /// This Playback node's name in the Record node's checkpoints.
    #[serde(default = "default_peer_id")]
    pub peer_id: String,
    /// Records per pull.
    #[serde(default = "default_sync_batch")]
    pub batch_size: usize,
    /// Record node: distinct peers it serves (by pull or commit); a new
    /// peer beyond them is refused, so made-up peers cannot grow it.
    #[serde(default = "default_max_peers")]
    pub max_peers: usize,
    /// Record node: a peer not seen (no pull, no commit) for this long is
    /// forgotten, checkpoints and all, when a new peer needs its place
    /// (0: never).
    #[serde(default = "default_peer_expiry_secs")]
    pub peer_expiry_secs: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            enabled: false,
            shards: 1,
            interval_ms: default_interval_ms(),
            peer: None,
            peer_id: default_peer_id(),
            batch_size: default_sync_batch(),
            max_peers: default_max_peers(),
            peer_expiry_secs: default_peer_expiry_secs(),
        }
    }
}

impl SyncConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_api_port")]
    pub port: u16,
    /// HTTPS to the peer's API, verified against `tls.ca`; the peer's
    /// certificate must name `host`.
    #[serde(default)]
    pub tls: bool,
    /// Sent as `Authorization: Bearer …` to the peer's API.
    #[serde(default)]
    pub auth_token: Option<String>,
    #[serde(default = "default_peer_timeout_ms")]
    pub timeout_ms: u64,
}

/// The `mqtt` section: the sync fabric's broker and this node's client.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The broker; with `embedded_broker` on, defaults to it.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// Default: `qproxy-record` / `qproxy-playback-<peer_id>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: u64,
    /// MQTT user name.
    #[serde(default)]
    pub app_id: Option<String>,
    /// MQTT password.
    #[serde(default)]
    pub token: Option<String>,
    /// Every topic starts with this.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// How long a Playback node waits for a batch by MQTT before it pulls
    /// over HTTP instead.
    #[serde(default = "default_query_timeout_ms")]
    pub query_timeout_ms: u64,
    /// Largest batch answered over MQTT; a larger one goes over HTTP.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    #[serde(default)]
    pub embedded_broker: Option<EmbeddedBrokerConfig>,
    /// MQTT over TLS to the broker, verified against `tls.ca`.
    #[serde(default)]
    pub tls: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedBrokerConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
}

impl MqttSection {
    pub fn embedded(&self) -> Option<&EmbeddedBrokerConfig> {
        self.embedded_broker.as_ref().filter(|b| b.enabled)
    }

    /// Where the client connects.
    pub fn broker_addr(&self) -> (String, u16) {
        let embedded = self.embedded();
        let host = self
            .host
            .clone()
            .or_else(|| embedded.map(|b| b.host.clone()))
            .unwrap_or_else(default_host);
        let port = self
            .port
            .or_else(|| embedded.map(|b| b.port))
            .unwrap_or_else(default_mqtt_port);
        (host, port)
    }
}

fn default_keep_alive() -> u64 {
    30
}

fn default_topic_prefix() -> String {
    "qproxy".into()
}

fn default_query_timeout_ms() -> u64 {
    2_000
}

fn default_max_batch_bytes() -> usize {
    4 << 20
}

fn default_mqtt_port() -> u16 {
    1883
}

fn default_interval_ms() -> u64 {
    1000
}

fn default_peer_id() -> String {
    "default".into()
}

fn default_sync_batch() -> usize {
    200
}

fn default_max_peers() -> usize {
    64
}

fn default_peer_expiry_secs() -> u64 {
    30 * 24 * 3600
}

fn default_peer_timeout_ms() -> u64 {
    10_000
}

/// Largest `sync.shards`: every shard is a stream and a task.
pub const MAX_SHARDS: u32 = 1024;

/// Most records one pull asks for: `GET /sync?limit=` refuses more, so a
/// larger `sync.batch_size` would have every pull refused.
pub const MAX_SYNC_LIMIT: usize = 10_000;

/// Most `sync.max_peers`: every peer may hold a checkpoint per shard.
pub const MAX_PEERS: usize = 100_000;
