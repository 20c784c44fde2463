//! The listener sections: `http`, `grpc`, `tcp`, `api`, `tls`, and the
//! downstream URLs they name.

use super::*;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_host")]
    pub host: String,
    pub port: u16,
    pub downstream: Downstream,
    /// HTTPS on this listener with `tls.tls_cert`/`tls_key`; default: on
    /// when `tls.tls_cert` is set.
    #[serde(default)]
    pub tls: Option<bool>,
    /// Require client certificates signed by this CA bundle (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Threads that serve this listener's connections, each with its own
    /// runtime and downstream pool; `null`: one per CPU; 0: the node's
    /// shared work-stealing runtime.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Client connections served at once; more are accepted and closed at
    /// once (counted), and the open file limit may lower it.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A new connection must send a complete request head within this.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// A keep-alive connection with no request in flight is closed after this.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// A request body that sends nothing for this long ends the exchange (408).
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// The service this listener fronts, stored in each record so zone B
    /// replays it to that service (null: the request's host, no port).
    #[serde(default)]
    pub service: Option<String>,
    /// Past its first `body_timeout_ms`, a request body that averages fewer
    /// bytes a second than this ends the exchange (408): a trickle (a byte
    /// every few seconds) never stalls long enough for the gap timeout.
    /// 0 turns it off.
    #[serde(default = "default_body_min_rate")]
    pub body_min_rate: u64,
}

impl HttpConfig {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }
}

/// The gRPC proxy: HTTP/2 (h2c, or TLS with ALPN `h2`) in, calls spread
/// round robin over `downstream`. On a Playback node `downstream` is where
/// gRPC calls are replayed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_host")]
    pub host: String,
    pub port: u16,
    /// `host:port` (h2c) or `https://host:port` (TLS, verified against
    /// `tls.ca`), tried round robin; one that refuses is passed over for a
    /// while.
    #[serde(default, deserialize_with = "grpc_downstreams")]
    pub downstream: Vec<Downstream>,
    /// TLS on this listener with `tls.tls_cert`/`tls_key`; default: on
    /// when `tls.tls_cert` is set.
    #[serde(default)]
    pub tls: Option<bool>,
    /// Require client certificates signed by this CA bundle (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// The service this listener fronts, stored in each record (null: the
    /// service the method path names, `pkg.Svc` of `/pkg.Svc/Method`).
    #[serde(default)]
    pub service: Option<String>,
    /// Client connections served at once (as `http.max_connections`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Worker threads, as `http.workers`.
    #[serde(default)]
    pub workers: Option<usize>,
    /// The largest message either side may send; a larger one ends its
    /// call with RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u64,
}

fn default_max_message_bytes() -> u64 {
    64 << 20
}

fn grpc_downstreams<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Downstream>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            Downstream::endpoint(s)
                .and_then(|d| match d.path_prefix().is_empty() {
                    true => Ok(d),
                    false => Err(format!("`{s}`: a gRPC downstream has no path")),
                })
                .map_err(serde::de::Error::custom)
        })
        .collect()
}

/// The raw TCP proxy, with optional TLS on either side.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_host")]
    pub host: String,
    pub port: u16,
    /// `host:port`; on a Playback node also where TCP sessions are replayed.
    #[serde(deserialize_with = "host_port")]
    pub downstream: String,
    /// TLS on this listener with `tls.tls_cert`/`tls_key`.
    #[serde(default)]
    pub tls: bool,
    /// Require client certificates signed by this CA bundle (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// TLS towards the downstream, verified against `tls.ca`.
    #[serde(default)]
    pub downstream_tls: bool,
    /// The service this listener fronts, stored in each session's record.
    #[serde(default)]
    pub service: Option<String>,
    /// Client connections relayed at once; more are accepted and closed at
    /// once (counted), and the open file limit may lower it.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn host_port<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let ok = s
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "`{s}` is not host:port, e.g. 127.0.0.1:6379"
        )))
    }
}

/// The `tls` section: this node's certificate (`tls_cert`, `tls_key`, as
/// in the original README) for its TLS listeners, and what its outgoing TLS
/// links trust (`ca`) and present (`client_cert`, `client_key`). Paths are
/// PEM files, relative to the working directory.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// CA bundle for https downstreams, TLS TCP downstreams, the peer and
    /// the MQTT broker; the system's roots when unset.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Presented when a server asks for a client certificate.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_api_port")]
    pub port: u16,
    /// When set, every path but `/health` needs `Authorization: Bearer <token>`.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// HTTPS on the API listener with `tls.tls_cert`/`tls_key`.
    #[serde(default)]
    pub tls: bool,
    /// Require client certificates signed by this CA bundle (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Connections served at once, apart from the proxy listeners' own, so
    /// `/health` and `/metrics` answer while the proxy is flooded.
    #[serde(default = "default_api_max_connections")]
    pub max_connections: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            host: default_host(),
            port: default_api_port(),
            auth_token: None,
            tls: false,
            client_ca: None,
            max_connections: default_api_max_connections(),
        }
    }
}

/// A downstream base URL: `http://host:port` with an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downstream {
    pub uri: http::Uri,
}

impl Downstream {
    pub fn authority(&self) -> &http::uri::Authority {
        self.uri.authority().expect("checked when parsed")
    }

    pub fn is_https(&self) -> bool {
        self.uri.scheme_str() == Some("https")
    }

    /// `host:port` to connect to, the scheme's port when the URL has none.
    pub fn host_port(&self) -> String {
        let authority = self.authority();
        let port = authority
            .port_u16()
            .unwrap_or(if self.is_https() { 443 } else { 80 });
        format!("{}:{port}", authority.host())
    }

    /// The path prefix without a trailing `/` (empty for none).
    pub fn path_prefix(&self) -> &str {
        self.uri.path().trim_end_matches('/')
    }
}

/// `http://host:port` and the path prefix, as written in the config.
impl fmt::Display for Downstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.uri.scheme_str().unwrap_or("http");
        write!(f, "{scheme}://{}{}", self.authority(), self.path_prefix())
    }
}

impl FromStr for Downstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: http::Uri = s.parse().map_err(|e| {
            format!("`{s}` is not a URL ({e}); expected e.g. http://localhost:8081")
        })?;
        // Checked first: the messages below quote the URL.
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(
                "a downstream URL cannot carry credentials (user:password@host): QProxy \
                        does not send them, and they would be written in logs; clients' own \
                        Authorization headers are forwarded"
                    .into(),
            );
        }
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => {
                return Err(format!(
                    "`{s}` needs an http:// or https:// scheme, e.g. http://{s}"
                ))
            }
        }
        if uri.authority().is_none() {
            return Err(format!("`{s}` has no host"));
        }
        if uri.query().is_some() {
            return Err(format!("`{s}`: a downstream cannot carry a query"));
        }
        Ok(Downstream { uri })
    }
}

impl Downstream {
    /// A service endpoint: `host:port` (plain HTTP) or a URL with
    /// `http://` or `https://` (TLS towards it).
    pub fn endpoint(s: &str) -> Result<Downstream, String> {
        if s.contains("://") {
            return s.parse();
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                format!("http://{s}").parse()
            }
            _ => Err(format!(
                "`{s}` is not host:port or an http(s):// URL, e.g. 10.0.0.5:8080 or https://orders.b:8443"
            )),
        }
    }
}

impl Serialize for Downstream {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Downstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `http.max_connections` and `tcp.max_connections` by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// `api.max_connections` by default.
pub const DEFAULT_API_MAX_CONNECTIONS: usize = 1024;

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

fn default_api_max_connections() -> usize {
    DEFAULT_API_MAX_CONNECTIONS
}

fn default_header_timeout_ms() -> u64 {
    10_000
}

fn default_idle_timeout_ms() -> u64 {
    60_000
}

fn default_body_min_rate() -> u64 {
    500
}
fn default_body_timeout_ms() -> u64 {
    30_000
}

/// Largest `max_connections` of a listener: more than one process can
/// usually have files open.
pub const MAX_CONNECTIONS: usize = 1 << 20;
