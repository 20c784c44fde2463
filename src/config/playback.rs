//! The Playback node's sections: `playback` and `service_discovery`.

use super::*;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybackConfig {
    /// Time allowed for one replayed request, in milliseconds.
    #[serde(default = "default_replay_timeout_ms")]
    pub timeout_ms: u64,
    /// Replay results kept per shard.
    #[serde(default = "default_results_len")]
    pub results_retention_len: u64,
    /// How a TCP session's client chunks are sent at replay.
    #[serde(default)]
    pub tcp_pacing: TcpPacing,
    /// Tries at a record that does not reach its target before it is
    /// parked; the shard waits meanwhile.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Also parked once this many ms have passed since its first failed
    /// try; null: attempts alone decide.
    #[serde(default)]
    pub max_retry_ms: Option<u64>,
    /// Replayed statuses that mean "not delivered" (e.g. a gateway's 502,
    /// 503, 504 while the service behind it restarts), unless zone A's
    /// downstream answered the same.
    #[serde(default)]
    pub retry_statuses: Vec<u16>,
    /// `/health` is DOWN once this many records are parked (0: never).
    #[serde(default = "default_parked_down_threshold")]
    pub parked_down_threshold: u64,
    /// Response headers compared besides status and body (e.g.
    /// `content-type`); others (dates, ids) are not.
    #[serde(default)]
    pub compare_headers: Vec<String>,
    /// Parts of JSON bodies left out of comparisons (e.g. `$.timestamp`,
    /// `$.items[*].id`).
    #[serde(default)]
    pub ignore_json_paths: Vec<JsonPath>,
    /// The largest body `POST /sync` reads: the whole batch is in memory
    /// while it is decoded.
    #[serde(default = "default_max_push_bytes")]
    pub max_push_bytes: usize,
    /// HTTP replays sent down a shard's connection before the oldest is
    /// answered (HTTP/1.1 pipelining); 1: each waits for the one before.
    #[serde(default = "default_pipeline_depth")]
    pub pipeline_depth: usize,
}

impl Default for PlaybackConfig {
    fn default() -> Self {
        PlaybackConfig {
            timeout_ms: default_replay_timeout_ms(),
            results_retention_len: default_results_len(),
            tcp_pacing: TcpPacing::default(),
            max_attempts: default_max_attempts(),
            max_retry_ms: None,
            retry_statuses: Vec::new(),
            parked_down_threshold: default_parked_down_threshold(),
            compare_headers: Vec::new(),
            ignore_json_paths: Vec::new(),
            max_push_bytes: default_max_push_bytes(),
            pipeline_depth: default_pipeline_depth(),
        }
    }
}

/// `fast`: each client chunk as soon as the server bytes before it have
/// arrived. `recorded`: also no earlier than its recorded offset from the
/// start of the session, so the recorded gaps are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcpPacing {
    #[default]
    Fast,
    Recorded,
}

/// The `service_discovery` section of the original README. Parsed and
/// checked; replay targets come from the node's own downstream for now.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDiscoveryConfig {
    pub provider: DiscoveryProvider,
    #[serde(default)]
    pub config: DiscoverySettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryProvider {
    Static,
    Zookeeper,
    Kubernetes,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySettings {
    #[serde(default)]
    pub static_services: Vec<StaticService>,
    #[serde(default)]
    pub zookeeper: Option<ZookeeperSettings>,
    #[serde(default)]
    pub kubernetes: Option<KubernetesSettings>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticService {
    pub name: String,
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZookeeperSettings {
    pub address: String,
    pub base_path: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSettings {
    pub namespace: String,
    /// A file holding the service account's token; null: the in-cluster
    /// path, `/var/run/secrets/kubernetes.io/serviceaccount/token`.
    #[serde(default)]
    pub service_account_token: Option<String>,
    /// The API server's URL; null: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    #[serde(default)]
    pub api_server: Option<String>,
}

fn default_max_push_bytes() -> usize {
    64 << 20
}

fn default_pipeline_depth() -> usize {
    32
}

/// Most `playback.pipeline_depth`.
pub const MAX_PIPELINE_DEPTH: usize = 1024;

fn default_replay_timeout_ms() -> u64 {
    30_000
}

fn default_results_len() -> u64 {
    100_000
}

fn default_max_attempts() -> u32 {
    10
}

fn default_parked_down_threshold() -> u64 {
    100
}

/// Bounds of `playback.max_push_bytes`.
pub const MIN_PUSH_BYTES: usize = 1 << 10;

pub const MAX_PUSH_BYTES: usize = 1 << 30;
