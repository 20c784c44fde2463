//! The configuration file: its types, their defaults, and loading with errors
//! that name the file, line and column.
//!
//! Everything is read and checked before any port is bound. The key names of
//! the original README's two example configs are kept as they are; additions
//! are documented in the README with their defaults.

mod error;
mod json_path;
mod jsonc;
mod listeners;
mod monitoring;
mod outline;
mod playback;
mod record;
mod sync;

pub use error::ConfigError;
pub use json_path::JsonPath;
pub use listeners::*;
pub use monitoring::*;
pub use outline::{redact_url, REDACTED};
pub use playback::*;
pub use record::*;
pub use sync::*;

use error::serde_error;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The role of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Mode {
    Record,
    Playback,
}

/// `Record` or `Playback`, also all small or all capital letters; the
/// error names the two once each.
impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Names;
        impl serde::de::Visitor<'_> for Names {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`Record` or `Playback`")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Mode, E> {
                match s {
                    "Record" | "record" | "RECORD" => Ok(Mode::Record),
                    "Playback" | "playback" | "PLAYBACK" => Ok(Mode::Playback),
                    _ => Err(E::unknown_variant(s, &["Record", "Playback"])),
                }
            }
        }
        d.deserialize_str(Names)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Record => "Record",
            Mode::Playback => "Playback",
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub mode: Mode,
    #[serde(default)]
    pub http: Option<HttpConfig>,
    #[serde(default)]
    pub grpc: Option<GrpcConfig>,
    #[serde(default)]
    pub tcp: Option<TcpConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Where the embedded store lives when `redis` is absent or null.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub record: RecordConfig,
    #[serde(default)]
    pub playback: PlaybackConfig,
    #[serde(default)]
    pub service_discovery: Option<ServiceDiscoveryConfig>,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub mqtt: Option<MqttSection>,
    /// Thresholds of `/health`'s `system` component.
    #[serde(default)]
    pub monitoring: MonitoringConfig,
    /// The text it was read from, so checks made later (the TLS files)
    /// report their key's line and column like every other mistake.
    #[serde(skip)]
    source: Option<Arc<Source>>,
}

#[derive(Debug)]
struct Source {
    path: PathBuf,
    text: String,
    /// `text` without comments and trailing commas.
    plain: String,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// A `tracing` filter such as `info` or `qproxy=debug`.
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

/// The API listener's port, and the peer's API port a Playback node dials.
fn default_api_port() -> u16 {
    8084
}

fn default_host() -> String {
    "127.0.0.1".into()
}

/// Longest `sync.interval` and replay or peer timeout: an hour. More is
/// a typo, and near `u64::MAX` the timer overflows and sync stops.
const MAX_WAIT_MS: u64 = 3_600_000;
/// A gRPC message's length is a 32-bit number.
const MAX_GRPC_MESSAGE: u64 = u32::MAX as u64;

impl Config {
    /// Reads, parses and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and checks config text; `path` only names it in errors. A
    /// listener on port 0 is refused: the system would pick a port that no
    /// client knows.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, path, false)
    }

    /// [`Config::parse`], but listeners may use port 0 (any free port):
    /// for tests, benches and `qproxy demo`, which read the bound ports
    /// from [`crate::node::RunningNode`].
    pub fn parse_allowing_any_port(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, path, true)
    }

    fn parse_with(text: &str, path: &Path, any_port: bool) -> Result<Config, ConfigError> {
        // Editors on Windows may start a UTF-8 file with a byte order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let plain = jsonc::strip(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            line: e.line,
            column: e.column,
            message: e.to_string(),
        })?;
        if plain.trim().is_empty() {
            return Err(ConfigError::Syntax {
                path: path.to_owned(),
                line: 1,
                column: 1,
                message: "the file is empty: it needs a JSON object such as \
                          {\"mode\": \"Record\", …} (config/ holds two to start from)"
                    .into(),
            });
        }
        let mut config: Config =
            serde_json::from_str(&plain).map_err(|e| serde_error(path, text, &plain, &e))?;
        config.source = Some(Arc::new(Source {
            path: path.to_owned(),
            text: text.to_owned(),
            plain,
        }));
        config.check(any_port)?;
        Ok(config)
    }

    /// A mistake found in `key`, with the file, line and column of the key
    /// when it is in the file (for checks made after loading, such as
    /// reading the TLS files).
    pub fn invalid(&self, key: &'static str, message: String) -> ConfigError {
        let segments: Vec<&str> = key.split('.').collect();
        match &self.source {
            Some(source) => ConfigError::Invalid {
                path: source.path.clone(),
                at: jsonc::key_offset(&source.plain, &segments)
                    .map(|offset| jsonc::position(source.text.as_bytes(), offset)),
                key,
                message,
            },
            None => ConfigError::Invalid {
                path: PathBuf::from("(configuration)"),
                at: None,
                key,
                message,
            },
        }
    }

    pub fn mqtt_enabled(&self) -> bool {
        self.mqtt.as_ref().is_some_and(|m| m.enabled)
    }

    /// One line about what this config runs, with no secret in it.
    pub fn summary(&self) -> String {
        let http = self
            .http
            .as_ref()
            .filter(|h| h.enabled)
            .map_or("none".to_string(), |h| {
                format!("{}:{} -> {}", h.host, h.port, h.downstream.uri)
            });
        let store = match &self.redis {
            Some(r) => match redis::Client::open(r.url.as_str()) {
                Ok(c) => format!(
                    "redis {} (pool {})",
                    c.get_connection_info().addr(),
                    r.pool_size
                ),
                Err(_) => "redis".to_string(),
            },
            None => format!("embedded {}", self.data_dir.display()),
        };
        let peer = self
            .sync
            .peer
            .as_ref()
            .map_or("none".to_string(), |p| format!("{}:{}", p.host, p.port));
        format!(
            "mode {}, http {http}, api {}:{} (token {}), store {store}, shards {}, sync {} (peer {peer}, peer_id {})",
            self.mode,
            self.api.host,
            self.api.port,
            if self.api.auth_token.is_some() { "set" } else { "none" },
            self.sync.shards,
            if self.sync.enabled { "on" } else { "off" },
            self.sync.peer_id,
        )
    }

    /// Rules that involve more than one key. `text` is the file, `plain`
    /// the same without comments (same byte offsets), to find keys in.
    fn check(&self, any_port: bool) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| self.invalid(key, message);
        if self.sync.shards == 0 || self.sync.shards > MAX_SHARDS {
            return Err(invalid(
                "sync.shards",
                format!("must be 1 to {MAX_SHARDS}, not {}", self.sync.shards),
            ));
        }
        let waits = [
            ("sync.interval", Some(self.sync.interval_ms)),
            ("playback.timeout_ms", Some(self.playback.timeout_ms)),
            (
                "sync.peer.timeout_ms",
                self.sync.peer.as_ref().map(|p| p.timeout_ms),
            ),
        ];
        let http = self.http.as_ref().filter(|h| h.enabled);
        let grpc = self.grpc.as_ref().filter(|g| g.enabled);
        let waits = waits.into_iter().chain([
            ("http.header_timeout_ms", http.map(|h| h.header_timeout_ms)),
            ("http.idle_timeout_ms", http.map(|h| h.idle_timeout_ms)),
            ("http.body_timeout_ms", http.map(|h| h.body_timeout_ms)),
        ]);
        for (key, ms) in waits {
            if let Some(ms) = ms.filter(|ms| !(1..=MAX_WAIT_MS).contains(ms)) {
                return Err(invalid(
                    key,
                    format!("must be 1 to {MAX_WAIT_MS} ms (an hour), not {ms}"),
                ));
            }
        }
        let limits = [
            ("http.max_connections", http.map(|h| h.max_connections)),
            (
                "tcp.max_connections",
                self.tcp
                    .as_ref()
                    .filter(|t| t.enabled)
                    .map(|t| t.max_connections),
            ),
            ("api.max_connections", Some(self.api.max_connections)),
            ("grpc.max_connections", grpc.map(|g| g.max_connections)),
        ];
        for (key, n) in limits {
            if let Some(n) = n.filter(|n| !(1..=MAX_CONNECTIONS).contains(n)) {
                return Err(invalid(
                    key,
                    format!("must be 1 to {MAX_CONNECTIONS}, not {n}"),
                ));
            }
        }
        if let Some(g) = grpc {
            if !(1..=MAX_GRPC_MESSAGE).contains(&g.max_message_bytes) {
                return Err(invalid(
                    "grpc.max_message_bytes",
                    format!(
                        "must be 1 to {MAX_GRPC_MESSAGE} (4 GiB less a byte, the most a message's length can say), not {}",
                        g.max_message_bytes
                    ),
                ));
            }
            if g.downstream.is_empty() && self.mode == Mode::Record {
                return Err(invalid(
                    "grpc.downstream",
                    "needs at least one host:port (or https://host:port) to send calls to".into(),
                ));
            }
        }
        if !(1..=MAX_SYNC_LIMIT).contains(&self.sync.batch_size) {
            return Err(invalid(
                "sync.batch_size",
                format!(
                    "must be 1 to {MAX_SYNC_LIMIT} (the most records one pull can ask for), not {}",
                    self.sync.batch_size
                ),
            ));
        }
        if self.sync.peer.as_ref().is_some_and(|p| p.port == 0) {
            return Err(invalid(
                "sync.peer.port",
                "0 is not a port to connect to: use the Record node's api.port".into(),
            ));
        }
        if !any_port {
            let listeners = [
                (
                    "http.port",
                    self.http.as_ref().filter(|h| h.enabled).map(|h| h.port),
                ),
                ("api.port", Some(self.api.port)),
                (
                    "tcp.port",
                    self.tcp.as_ref().filter(|t| t.enabled).map(|t| t.port),
                ),
            ];
            if let Some((key, _)) = listeners.iter().find(|(_, port)| *port == Some(0)) {
                return Err(invalid(
                    key,
                    "0 lets the system pick a random port that no client knows: choose one".into(),
                ));
            }
        }
        if !valid_peer_id(&self.sync.peer_id) {
            return Err(invalid(
                "sync.peer_id",
                format!(
                    "`{}`: use 1 to 128 letters, digits, `-`, `_` or `.`",
                    self.sync.peer_id
                ),
            ));
        }
        if self.mode == Mode::Playback && self.sync.enabled {
            let found_in_zookeeper = self
                .service_discovery
                .as_ref()
                .is_some_and(|sd| sd.provider == DiscoveryProvider::Zookeeper);
            if self.sync.peer.is_none() && !self.mqtt_enabled() && !found_in_zookeeper {
                return Err(invalid(
                    "sync.peer",
                    "a Playback node with sync.enabled needs the Record node's api address, \
                     e.g. {\"host\": \"127.0.0.1\", \"port\": 8084}, an mqtt section, or \
                     service_discovery with provider zookeeper (static and kubernetes cannot \
                     find the Record node)"
                        .into(),
                ));
            }
            if !self.http.as_ref().is_some_and(|h| h.enabled) {
                return Err(invalid(
                    "http",
                    "a Playback node with sync.enabled replays against http.downstream; \
                     configure an http section"
                        .into(),
                ));
            }
        }
        if !(1..=MAX_PEERS).contains(&self.sync.max_peers) {
            return Err(invalid(
                "sync.max_peers",
                format!("must be 1 to {MAX_PEERS}, not {}", self.sync.max_peers),
            ));
        }
        if !(MIN_PUSH_BYTES..=MAX_PUSH_BYTES).contains(&self.playback.max_push_bytes) {
            return Err(invalid(
                "playback.max_push_bytes",
                format!(
                    "must be {MIN_PUSH_BYTES} (1 KiB) to {MAX_PUSH_BYTES} (1 GiB), not {}",
                    self.playback.max_push_bytes
                ),
            ));
        }
        if !(1..=MAX_PIPELINE_DEPTH).contains(&self.playback.pipeline_depth) {
            return Err(invalid(
                "playback.pipeline_depth",
                format!(
                    "must be 1 to {MAX_PIPELINE_DEPTH} (1: no pipelining), not {}",
                    self.playback.pipeline_depth
                ),
            ));
        }
        if self.playback.max_attempts == 0 {
            return Err(invalid(
                "playback.max_attempts",
                "must be at least 1 (1: park a record at its first failed try)".into(),
            ));
        }
        if let Some(sd) = &self.service_discovery {
            if sd.provider == DiscoveryProvider::Zookeeper {
                match &sd.config.zookeeper {
                    None => {
                        return Err(invalid(
                            "service_discovery.config",
                            "provider zookeeper needs \"zookeeper\": {\"address\": \"host:2181\", \"base_path\": \"/services\"}".into(),
                        ))
                    }
                    Some(zk) if !zk.base_path.starts_with('/') => {
                        return Err(invalid(
                            "service_discovery.config.zookeeper.base_path",
                            format!("`{}` must start with /", zk.base_path),
                        ))
                    }
                    Some(_) => {}
                }
            }
            if sd.provider == DiscoveryProvider::Kubernetes && sd.config.kubernetes.is_none() {
                return Err(invalid(
                    "service_discovery.config",
                    "provider kubernetes needs \"kubernetes\": {\"namespace\": \"…\"} (service_account_token and api_server are optional)".into(),
                ));
            }
            for service in &sd.config.static_services {
                if service.name.is_empty() {
                    return Err(invalid(
                        "service_discovery.config.static_services",
                        "a service needs a name".into(),
                    ));
                }
                for endpoint in &service.endpoints {
                    Downstream::endpoint(endpoint).map_err(|e| {
                        invalid(
                            "service_discovery.config.static_services",
                            format!("service `{}`: {e}", service.name),
                        )
                    })?;
                }
            }
        }
        if let Some(h) = self
            .playback
            .compare_headers
            .iter()
            .find(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Err(invalid(
                "playback.compare_headers",
                format!("`{h}` is not a valid header name"),
            ));
        }
        if let Some(status) = self
            .playback
            .retry_statuses
            .iter()
            .find(|s| !(100..=599).contains(*s))
        {
            return Err(invalid(
                "playback.retry_statuses",
                format!("{status} is not an HTTP status (100 to 599)"),
            ));
        }
        if let Some(n) = self.http.as_ref().and_then(|h| h.workers) {
            if n > 1024 {
                return Err(invalid(
                    "http.workers",
                    format!("{n} threads is too many; use 0 to 1024, or null for one per CPU"),
                ));
            }
        }
        self.check_tls()
            .map_err(|(key, message)| invalid(key, message))?;
        self.monitoring
            .check()
            .map_err(|(key, message)| invalid(key, message))?;
        if let Some(redis) = &self.redis {
            if let Err(e) = redis::Client::open(redis.url.as_str()) {
                return Err(invalid("redis.url", format!("{e}")));
            }
            if redis.pool_size == 0 {
                return Err(invalid("redis.pool_size", "must be at least 1".into()));
            }
        }
        let record = &self.record;
        if record.queue_capacity == 0 || record.batch_size == 0 || record.spool_capacity == 0 {
            return Err(invalid(
                "record",
                "queue_capacity, batch_size and spool_capacity must be at least 1".into(),
            ));
        }
        if record.spool_bytes < 1 << 20 {
            return Err(invalid(
                "record.spool_bytes",
                format!(
                    "{} is too small: at least 1048576 (1 MiB)",
                    record.spool_bytes
                ),
            ));
        }
        for header in &record.redact_headers {
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(invalid(
                    "record.redact_headers",
                    format!("`{header}` is not a valid header name"),
                ));
            }
        }
        if let Some(header) = &record.shard_key_header {
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(invalid(
                    "record.shard_key_header",
                    format!("`{header}` is not a valid header name"),
                ));
            }
        }
        if let Some(mqtt) = self.mqtt.as_ref().filter(|m| m.enabled) {
            let prefix = &mqtt.topic_prefix;
            if prefix.is_empty() || prefix.contains(['+', '#']) || prefix.ends_with('/') {
                return Err(invalid(
                    "mqtt.topic_prefix",
                    format!("`{prefix}`: use a non-empty topic without + or # and no trailing /"),
                ));
            }
            if mqtt.token.is_some() && mqtt.app_id.is_none() {
                return Err(invalid(
                    "mqtt.token",
                    "goes with mqtt.app_id (the MQTT user name)".into(),
                ));
            }
        }
        if let Some(token) = &self.api.auth_token {
            if token.len() < 16 {
                return Err(invalid(
                    "api.auth_token",
                    "use at least 16 characters".into(),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// Whether the `http` listener speaks HTTPS.
    pub fn http_tls(&self) -> bool {
        let cert = self.tls.as_ref().is_some_and(|t| t.tls_cert.is_some());
        self.http
            .as_ref()
            .is_some_and(|h| h.enabled && h.tls.unwrap_or(cert))
    }

    /// Whether the gRPC listener serves TLS (by default when
    /// `tls.tls_cert` is set, as the HTTP listener).
    pub fn grpc_tls(&self) -> bool {
        let cert = self.tls.as_ref().is_some_and(|t| t.tls_cert.is_some());
        self.grpc
            .as_ref()
            .is_some_and(|g| g.enabled && g.tls.unwrap_or(cert))
    }

    /// Whether this node opens any TLS connection itself.
    pub fn needs_client_tls(&self) -> bool {
        let https = self
            .http
            .as_ref()
            .is_some_and(|h| h.enabled && h.downstream.is_https());
        let tcp = self
            .tcp
            .as_ref()
            .is_some_and(|t| t.enabled && t.downstream_tls);
        let peer = self.mode == Mode::Playback
            && self.sync.enabled
            && self.sync.peer.as_ref().is_some_and(|p| p.tls);
        let mqtt = self.mqtt.as_ref().is_some_and(|m| m.enabled && m.tls);
        let grpc = self
            .grpc
            .as_ref()
            .is_some_and(|g| g.downstream.iter().any(Downstream::is_https));
        https || tcp || peer || mqtt || grpc
    }

    /// TLS keys that must come together.
    fn check_tls(&self) -> Result<(), (&'static str, String)> {
        let tls = self.tls.clone().unwrap_or_default();
        if tls.tls_cert.is_some() != tls.tls_key.is_some() {
            return Err(("tls", "tls_cert and tls_key go together".into()));
        }
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return Err(("tls", "client_cert and client_key go together".into()));
        }
        let listeners = [
            (
                "http.tls",
                self.http_tls(),
                "http.client_ca",
                self.http.as_ref().and_then(|h| h.client_ca.as_ref()),
            ),
            (
                "api.tls",
                self.api.tls,
                "api.client_ca",
                self.api.client_ca.as_ref(),
            ),
            (
                "grpc.tls",
                self.grpc_tls(),
                "grpc.client_ca",
                self.grpc.as_ref().and_then(|g| g.client_ca.as_ref()),
            ),
            (
                "tcp.tls",
                self.tcp.as_ref().is_some_and(|t| t.enabled && t.tls),
                "tcp.client_ca",
                self.tcp.as_ref().and_then(|t| t.client_ca.as_ref()),
            ),
        ];
        for (key, on, ca_key, ca) in listeners {
            if on && tls.tls_cert.is_none() {
                return Err((key, "needs tls.tls_cert and tls.tls_key (PEM files)".into()));
            }
            if ca.is_some() && !on {
                return Err((
                    ca_key,
                    format!("client certificates need TLS: set {key} to true"),
                ));
            }
        }
        Ok(())
    }
}

/// Peer ids end up in keys and URLs: keep them plain.
pub fn valid_peer_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.json"))
    }

    #[test]
    fn static_service_endpoints_are_host_port_or_urls() {
        let text = |endpoint: &str| {
            format!(
                r#"{{"mode": "Playback", "http": {{"port": 1, "downstream": "http://a:1"}},
  "service_discovery": {{"provider": "static", "config": {{"static_services": [
    {{"name": "orders", "endpoints": ["10.0.0.5:8080", "{endpoint}"]}}]}}}}}}"#
            )
        };
        assert!(parse(&text("https://orders.b:8443")).is_ok());
        let err = parse(&text("orders.b")).unwrap_err().to_string();
        assert!(err.contains("test.json:2:"), "{err}");
        assert!(
            err.contains("service `orders`: `orders.b` is not host:port"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_json_path_is_reported_where_it_is() {
        let err = parse(
            r#"{"mode": "Playback", "http": {"port": 1, "downstream": "http://a:1"},
  "playback": {"ignore_json_paths": ["$.ok", "items[0]"]}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("test.json:2:"), "{err}");
        assert!(
            err.contains("JSON path `items[0]`: must start with $"),
            "{err}"
        );
        let err = parse(
            r#"{"mode": "Playback", "http": {"port": 1, "downstream": "http://a:1"},
  "playback": {"compare_headers": ["bad header"]}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("playback.compare_headers"), "{err}");
    }

    #[test]
    fn minimal_record_config_gets_defaults() {
        let c = parse(
            r#"{"mode": "Record", "http": {"port": 8080, "downstream": "http://localhost:8081"}}"#,
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Record);
        assert_eq!(c.api.port, 8084);
        assert_eq!(c.api.host, "127.0.0.1");
        assert_eq!(c.sync.peer_id, "default");
        assert_eq!(c.sync.shards, 1);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert!(c.redis.is_none());
        assert_eq!(
            c.http.unwrap().downstream.authority().as_str(),
            "localhost:8081"
        );
    }

    #[test]
    fn nill_is_reported_with_line_column_and_hint() {
        let err = parse("{\n  \"mode\": \"Record\",\n  \"tcp\": nill\n}").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("test.json:3:"), "{text}");
        assert!(text.contains("`nill` is not a JSON value"), "{text}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse("{\"mode\": \"Record\", \"modee\": 1}").unwrap_err();
        assert!(err.to_string().contains("unknown key `modee`"), "{err}");
    }

    #[test]
    fn wrong_types_and_ranges_are_refused_with_position() {
        let err = parse(
            "{\"mode\": \"Record\",\n \"http\": {\"port\": 70000, \"downstream\": \"http://a:1\"}}",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("test.json:2:"), "{text}");
        assert!(text.contains("70000"), "{text}");
        let err = parse("{\"mode\": \"Record\", \"sync\": {\"shards\": \"4\"}}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.json:1:39: sync.shards: expected a whole number, not the string \"4\""
        );
    }

    #[test]
    fn downstream_must_be_an_http_url() {
        for bad in ["localhost:8081", "ftp://x", "http://", "not a url"] {
            let text = format!(
                "{{\"mode\": \"Record\", \"http\": {{\"port\": 1, \"downstream\": \"{bad}\"}}}}"
            );
            let err = parse(&text).unwrap_err();
            assert!(matches!(err, ConfigError::Syntax { .. }), "{bad}: {err}");
        }
        let ok: Downstream = "http://10.0.0.1:80/base/".parse().unwrap();
        assert_eq!(ok.path_prefix(), "/base");
    }

    #[test]
    fn playback_with_sync_needs_a_peer() {
        let err = parse(
            r#"{"mode": "Playback", "sync": {"enabled": true},
                "http": {"port": 1, "downstream": "http://a:1"}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("sync.peer"), "{err}");
    }

    #[test]
    fn missing_comma_gets_a_hint() {
        let err = parse("{\"mode\": \"Record\"\n \"sync\": {}}").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("test.json:2:"), "{text}");
        assert!(text.contains("comma missing"), "{text}");
    }

    #[test]
    fn a_spool_needs_room_for_a_write() {
        let err = parse("{\"mode\": \"Record\", \"record\": {\"spool_bytes\": 1000}}").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("record.spool_bytes") && text.contains("1 MiB"),
            "{text}"
        );
        let ok = parse("{\"mode\": \"Record\", \"record\": {\"spool_bytes\": 1048576}}").unwrap();
        assert_eq!(ok.record.spool_bytes, 1 << 20);
        assert_eq!(RecordConfig::default().spool_bytes, 512 << 20);
    }

    #[test]
    fn shard_count_is_bounded() {
        let err = parse("{\"mode\": \"Record\", \"sync\": {\"shards\": 0}}").unwrap_err();
        assert!(err.to_string().contains("sync.shards"), "{err}");
    }

    #[test]
    fn a_byte_order_mark_is_accepted() {
        let c = parse("\u{feff}{\"mode\": \"Playback\"}").unwrap();
        assert_eq!(c.mode, Mode::Playback);
    }

    /// Columns count characters, as an editor does, not UTF-8 bytes.
    #[test]
    fn mistakes_next_to_multibyte_characters_get_line_and_column() {
        for (text, at) in [
            (
                "{\n  \u{201c}mode\u{201d}: \"Record\"\n}",
                "test.json:2:3: ",
            ),
            (
                "{\"mode\": \"Record\"\u{ff0c} \"tcp\": null}",
                "test.json:1:18: ",
            ),
            (
                "\u{feff}{\n \"mode\": \"Record\"\u{ff0c}\n}",
                "test.json:2:18: ",
            ),
            (
                "{\"data_dir\": \"\u{6570}\u{636e}\", \"tcp\": nill}",
                "test.json:1:28: ",
            ),
            (
                "{\"data_dir\": \"\u{e9}\" \"tcp\": null}",
                "test.json:1:18: ",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with(at), "{text:?}: {err}");
        }
        let err = parse("{\"data_dir\": \"\u{6570}\", \"tcp\": nill}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`nill` is not a JSON value"), "{err}");
    }

    #[test]
    fn range_errors_name_the_line_and_column_of_their_key() {
        let text = "{\"mode\": \"Record\", // \u{6a21}\u{5f0f}\n \"data_dir\": \"\u{e9}\", \"sync\": {\"shards\": 0}}";
        let err = parse(text).unwrap_err().to_string();
        assert_eq!(err, "test.json:2:28: sync.shards: must be 1 to 1024, not 0");
        // A default is in no line of the file.
        let err = parse(r#"{"mode": "Playback", "sync": {"enabled": true}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.json: sync.peer: "), "{err}");
    }

    #[test]
    fn values_that_would_silently_break_sync_are_refused() {
        let record = |extra: &str| format!(r#"{{"mode": "Record", {extra}}}"#);
        for (extra, says) in [
            (
                r#""playback": {"timeout_ms": 0}"#,
                "playback.timeout_ms: must be 1 to 3600000 ms (an hour), not 0",
            ),
            (
                r#""playback": {"timeout_ms": 3600001}"#,
                "playback.timeout_ms: must be 1 to 3600000 ms (an hour), not 3600001",
            ),
            (
                r#""playback": {"pipeline_depth": 0}"#,
                "playback.pipeline_depth: must be 1 to 1024 (1: no pipelining), not 0",
            ),
            (
                r#""sync": {"interval": 18446744073709551615}"#,
                "sync.interval: must be 1 to 3600000 ms (an hour), not 18446744073709551615",
            ),
            (
                r#""sync": {"interval": 0}"#,
                "sync.interval: must be 1 to 3600000 ms (an hour), not 0",
            ),
            (
                r#""sync": {"batch_size": 10001}"#,
                "sync.batch_size: must be 1 to 10000 (the most records one pull can ask for), not 10001",
            ),
            (
                r#""sync": {"peer": {"timeout_ms": 0}}"#,
                "sync.peer.timeout_ms: must be 1 to 3600000 ms (an hour), not 0",
            ),
            (
                r#""sync": {"peer": {"port": 0}}"#,
                "sync.peer.port: 0 is not a port to connect to",
            ),
            (
                r#""http": {"port": 0, "downstream": "http://a:1"}"#,
                "http.port: 0 lets the system pick a random port",
            ),
            (
                r#""api": {"port": 0}"#,
                "api.port: 0 lets the system pick a random port",
            ),
            (
                r#""tcp": {"port": 0, "downstream": "a:1"}"#,
                "tcp.port: 0 lets the system pick a random port",
            ),
        ] {
            let err = parse(&record(extra)).unwrap_err().to_string();
            assert!(err.starts_with("test.json:1:"), "{extra}: {err}");
            assert!(err.contains(says), "{extra}: {err}");
        }
        let limits = r#""sync": {"interval": 3600000, "batch_size": 10000},
            "playback": {"timeout_ms": 3600000}"#;
        parse(&record(limits)).unwrap();
        // Tests and `qproxy demo --any-ports` let the system pick ports.
        let any = record(r#""http": {"port": 0, "downstream": "http://a:1"}, "api": {"port": 0}"#);
        Config::parse_allowing_any_port(&any, Path::new("demo")).unwrap();
    }

    #[test]
    fn connection_limits_and_timeouts_are_checked() {
        let record = |http: &str, rest: &str| {
            format!(
                r#"{{"mode": "Record", "http": {{"port": 8080, "downstream": "http://a:1"{http}}}{rest}}}"#
            )
        };
        for (http, rest, says) in [
            (
                r#", "header_timeout_ms": 0"#,
                "",
                "http.header_timeout_ms: must be 1 to 3600000 ms (an hour), not 0",
            ),
            (
                r#", "idle_timeout_ms": 3600001"#,
                "",
                "http.idle_timeout_ms: must be 1 to 3600000 ms (an hour), not 3600001",
            ),
            (
                r#", "body_timeout_ms": 0"#,
                "",
                "http.body_timeout_ms: must be 1 to 3600000 ms (an hour), not 0",
            ),
            (
                r#", "max_connections": 0"#,
                "",
                "http.max_connections: must be 1 to 1048576, not 0",
            ),
            (
                "",
                r#", "tcp": {"port": 9000, "downstream": "a:1", "max_connections": 0}"#,
                "tcp.max_connections: must be 1 to 1048576, not 0",
            ),
            (
                "",
                r#", "api": {"max_connections": 1048577}"#,
                "api.max_connections: must be 1 to 1048576, not 1048577",
            ),
        ] {
            let err = parse(&record(http, rest)).unwrap_err().to_string();
            assert!(err.starts_with("test.json:1:"), "{http}{rest}: {err}");
            assert!(err.contains(says), "{http}{rest}: {err}");
        }
        let config = parse(&record("", "")).unwrap();
        let http = config.http.unwrap();
        assert_eq!(
            (http.max_connections, config.api.max_connections),
            (20_000, 1024)
        );
        assert_eq!(
            (
                http.header_timeout_ms,
                http.idle_timeout_ms,
                http.body_timeout_ms
            ),
            (10_000, 60_000, 30_000)
        );
    }

    #[test]
    fn tls_keys_that_go_together_and_missing_files_are_named() {
        let http = r#""http": {"port": 8080, "downstream": "https://localhost:8443"}"#;
        for (tls, key, says) in [
            (
                r#"{"tls_cert": "c.pem"}"#,
                "tls",
                "tls_cert and tls_key go together",
            ),
            (
                r#"{"client_key": "k.pem"}"#,
                "tls",
                "client_cert and client_key go together",
            ),
        ] {
            let text = format!(r#"{{"mode": "Record", {http}, "tls": {tls}}}"#);
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(&format!(": {key}: ")), "{tls}: {err}");
            assert!(err.contains(says), "{tls}: {err}");
        }
        let err = parse(r#"{"mode": "Record", "api": {"tls": true}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("api.tls: needs tls.tls_cert"), "{err}");
        let err = parse(r#"{"mode": "Record", "api": {"client_ca": "ca.pem"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("api.client_ca: client certificates need TLS"),
            "{err}"
        );
    }
}
