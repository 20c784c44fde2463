//! Service discovery: the endpoints of the service a record names, so a
//! replay goes to the services zone B actually runs. One trait, one
//! implementation per provider; `static` (a list in the config) for now.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{DiscoverySettings, Downstream};

/// Where the endpoints of a service come from.
pub trait Discovery: Send + Sync {
    /// The endpoints of `service` as known now; `None` when the provider
    /// does not know the service (its records go to the node's own
    /// downstream).
    fn endpoints(&self, service: &str) -> Option<Arc<[Downstream]>>;

    /// Names the provider for logs and status pages.
    fn describe(&self) -> String;

    /// Every known service with its endpoints, for `/api/status`.
    fn services(&self) -> Vec<(String, Arc<[Downstream]>)>;

    /// Why the provider is not current, if it is not (`/health` says
    /// DEGRADED: replays go on to the endpoints last known).
    fn problem(&self) -> Option<String> {
        None
    }
}

/// Where a Record node's sync API is, as a provider found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub tls: bool,
    /// `host:port`.
    pub addr: String,
}

/// A provider that also finds the Record node (`sync.peer` null).
pub trait PeerSource: Send + Sync {
    fn peer(&self) -> Option<PeerAddr>;
}

/// Where Record nodes register their sync API, under a discovery base path.
pub const RECORD_REGISTRY: &str = "_qproxy/record";

/// A service map as `/api/status` lists it: by name.
fn sorted(services: &HashMap<String, Arc<[Downstream]>>) -> Vec<(String, Arc<[Downstream]>)> {
    let mut all: Vec<_> = services
        .iter()
        .map(|(name, endpoints)| (name.clone(), endpoints.clone()))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// What a provider that keeps reading (ZooKeeper, Kubernetes) knows: the
/// endpoints it read last, kept while it is out of touch, and whether it
/// is in touch now.
#[derive(Default)]
struct Known {
    services: std::sync::RwLock<HashMap<String, Arc<[Downstream]>>>,
    connected: std::sync::atomic::AtomicBool,
}

impl Known {
    fn endpoints(&self, service: &str) -> Option<Arc<[Downstream]>> {
        self.services
            .read()
            .expect("known lock")
            .get(service)
            .cloned()
    }

    fn services(&self) -> Vec<(String, Arc<[Downstream]>)> {
        sorted(&self.services.read().expect("known lock"))
    }

    /// Makes `services` the known endpoints (counted when they changed).
    fn update(&self, services: HashMap<String, Arc<[Downstream]>>) {
        let mut known = self.services.write().expect("known lock");
        if *known != services {
            metrics::counter!(crate::metrics::DISCOVERY_UPDATES_TOTAL).increment(1);
            *known = services;
        }
    }

    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn state(&self) -> &'static str {
        if self.connected() {
            "connected"
        } else {
            "not connected"
        }
    }
}

/// `provider: "static"`: the `static_services` of the config.
pub struct StaticDiscovery {
    services: HashMap<String, Arc<[Downstream]>>,
}

impl StaticDiscovery {
    /// From `static_services` (the config checked every endpoint).
    pub fn new(settings: &DiscoverySettings) -> Result<StaticDiscovery, String> {
        let mut services = HashMap::new();
        for service in &settings.static_services {
            let endpoints = service
                .endpoints
                .iter()
                .map(|e| Downstream::endpoint(e))
                .collect::<Result<Vec<_>, _>>()?;
            if !endpoints.is_empty() {
                services.insert(service.name.clone(), endpoints.into());
            }
        }
        Ok(StaticDiscovery { services })
    }

    /// One service with a fixed list of endpoints (a listener's own
    /// downstreams, such as `grpc.downstream`).
    pub fn of(service: &str, endpoints: Vec<Downstream>) -> StaticDiscovery {
        let mut services = HashMap::new();
        if !endpoints.is_empty() {
            services.insert(service.to_string(), endpoints.into());
        }
        StaticDiscovery { services }
    }
}

impl Discovery for StaticDiscovery {
    fn endpoints(&self, service: &str) -> Option<Arc<[Downstream]>> {
        self.services.get(service).cloned()
    }

    fn describe(&self) -> String {
        format!("static ({} services)", self.services.len())
    }

    fn services(&self) -> Vec<(String, Arc<[Downstream]>)> {
        sorted(&self.services)
    }
}

/// `provider: "zookeeper"`: the instances of service S are the children of
/// `<base_path>/S`; a child's data is JSON `{"host", "port"}` (Curator's
/// `{"address", "port", "sslPort"}` too; `sslPort` means TLS), or, with
/// empty data, its name is `host:port`. A background task reads them again
/// every [`ZK_POLL`], so a registration or a removal takes effect within
/// about a second, and keeps the last known endpoints while ZooKeeper is
/// away.
pub struct ZooKeeperDiscovery {
    address: String,
    base_path: String,
    known: Known,
    /// The Record node registered under `<base_path>/_qproxy/record`.
    record_peer: std::sync::RwLock<Option<PeerAddr>>,
    /// Instances whose data could not be read, logged and counted once.
    skipped: Mutex<std::collections::HashSet<String>>,
}

/// How often the ZooKeeper registrations are read again.
pub const ZK_POLL: Duration = Duration::from_millis(500);

impl ZooKeeperDiscovery {
    pub fn new(address: &str, base_path: &str) -> ZooKeeperDiscovery {
        ZooKeeperDiscovery {
            address: address.to_string(),
            base_path: base_path.trim_end_matches('/').to_string(),
            known: Known::default(),
            record_peer: std::sync::RwLock::new(None),
            skipped: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The first Record node registered (by name), if any.
    async fn read_record_peer(
        &self,
        client: &zookeeper_client::Client,
    ) -> Result<Option<PeerAddr>, zookeeper_client::Error> {
        let path = format!("{}/{RECORD_REGISTRY}", self.base_path);
        let mut nodes = match client.list_children(&path).await {
            Ok(nodes) => nodes,
            Err(zookeeper_client::Error::NoNode) => return Ok(None),
            Err(e) => return Err(e),
        };
        nodes.sort();
        for node in nodes {
            let data = match client.get_data(&format!("{path}/{node}")).await {
                Ok((data, _)) => data,
                Err(zookeeper_client::Error::NoNode) => continue,
                Err(e) => return Err(e),
            };
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&data) else {
                continue;
            };
            if let (Some(host), Some(port)) = (value["host"].as_str(), value["port"].as_u64()) {
                return Ok(Some(PeerAddr {
                    tls: value["tls"].as_bool().unwrap_or(false),
                    addr: format!("{host}:{port}"),
                }));
            }
        }
        Ok(None)
    }

    /// Keeps the cache current until `shutdown`: connects (again after a
    /// lost session), reads every service's instances, repeats.
    pub async fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut logged_down = false;
        loop {
            let connected = tokio::select! {
                c = zookeeper_client::Client::connector()
                    .with_session_timeout(Duration::from_secs(10))
                    .with_connection_timeout(Duration::from_secs(2))
                    .connect(&self.address) => c,
                _ = shutdown.cancelled() => return,
            };
            match connected {
                Ok(client) => {
                    tracing::info!(address = %self.address, "zookeeper connected; reading services");
                    logged_down = false;
                    self.known.set_connected(true);
                    loop {
                        match self.read_record_peer(&client).await {
                            Ok(peer) => {
                                let mut known = self.record_peer.write().expect("peer lock");
                                if *known != peer {
                                    tracing::info!(peer = ?peer, "record node found in zookeeper");
                                    *known = peer;
                                }
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "reading the record node's registration failed");
                            }
                        }
                        match self.read_all(&client).await {
                            Ok(services) => self.known.update(services),
                            Err(e) => {
                                metrics::counter!(crate::metrics::DISCOVERY_ERRORS_TOTAL)
                                    .increment(1);
                                tracing::warn!(address = %self.address, error = %e, "zookeeper read failed; keeping the last known endpoints and reconnecting");
                                break;
                            }
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(ZK_POLL) => {}
                            _ = shutdown.cancelled() => return,
                        }
                    }
                    self.known.set_connected(false);
                }
                Err(e) => {
                    metrics::counter!(crate::metrics::DISCOVERY_ERRORS_TOTAL).increment(1);
                    if !logged_down {
                        tracing::warn!(address = %self.address, error = %e, "zookeeper unreachable; keeping the last known endpoints");
                        logged_down = true;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn read_all(
        &self,
        client: &zookeeper_client::Client,
    ) -> Result<HashMap<String, Arc<[Downstream]>>, zookeeper_client::Error> {
        let root = if self.base_path.is_empty() {
            "/"
        } else {
            self.base_path.as_str()
        };
        let names = match client.list_children(root).await {
            Ok(names) => names,
            Err(zookeeper_client::Error::NoNode) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut services = HashMap::new();
        for name in names.into_iter().filter(|n| !n.starts_with('_')) {
            let path = format!("{}/{name}", self.base_path);
            let children = match client.list_children(&path).await {
                Ok(children) => children,
                Err(zookeeper_client::Error::NoNode) => continue,
                Err(e) => return Err(e),
            };
            let mut endpoints = Vec::new();
            for child in children {
                let data = match client.get_data(&format!("{path}/{child}")).await {
                    Ok((data, _)) => data,
                    Err(zookeeper_client::Error::NoNode) => continue,
                    Err(e) => return Err(e),
                };
                match instance(&child, &data) {
                    Some(endpoint) => endpoints.push(endpoint),
                    None => {
                        let key = format!("{path}/{child}");
                        if self
                            .skipped
                            .lock()
                            .expect("skipped lock")
                            .insert(key.clone())
                        {
                            metrics::counter!(crate::metrics::DISCOVERY_ERRORS_TOTAL).increment(1);
                            tracing::warn!(znode = %key, "instance data is neither {{\"host\", \"port\"}} JSON nor a host:port name; skipped");
                        }
                    }
                }
            }
            endpoints.sort_by_key(|e| e.uri.to_string());
            if !endpoints.is_empty() {
                services.insert(name, endpoints.into());
            }
        }
        Ok(services)
    }
}

/// An instance znode: JSON `{"host","port"}`, Curator's
/// `{"address","port","sslPort"}`, or empty data and a `host:port` name.
fn instance(name: &str, data: &[u8]) -> Option<Downstream> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Downstream::endpoint(name).ok();
    }
    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    let host = value
        .get("host")
        .or_else(|| value.get("address"))?
        .as_str()?;
    let tls_port = value.get("sslPort").and_then(serde_json::Value::as_u64);
    match tls_port.filter(|p| *p > 0) {
        Some(port) => Downstream::endpoint(&format!("https://{host}:{port}")).ok(),
        None => {
            let port = value.get("port")?.as_u64()?;
            Downstream::endpoint(&format!("{host}:{port}")).ok()
        }
    }
}

impl PeerSource for ZooKeeperDiscovery {
    fn peer(&self) -> Option<PeerAddr> {
        self.record_peer.read().expect("peer lock").clone()
    }
}

impl Discovery for ZooKeeperDiscovery {
    fn endpoints(&self, service: &str) -> Option<Arc<[Downstream]>> {
        self.known.endpoints(service)
    }

    fn describe(&self) -> String {
        format!(
            "zookeeper {}{} ({})",
            self.address,
            self.base_path,
            self.known.state()
        )
    }

    fn problem(&self) -> Option<String> {
        (!self.known.connected()).then(|| {
            format!(
                "zookeeper {} not connected: replaying to the endpoints last known",
                self.address
            )
        })
    }

    fn services(&self) -> Vec<(String, Arc<[Downstream]>)> {
        self.known.services()
    }
}

/// `provider: "kubernetes"`: the EndpointSlices of the namespace, grouped by
/// their `kubernetes.io/service-name` label; ready endpoints only, each
/// slice's first port (TLS when that port is named `https` or its
/// `appProtocol` is `https`). Listed, then watched from the list's
/// `resourceVersion` (listed again on 410 Gone); the last endpoints are
/// kept while the API server is away.
pub struct KubernetesDiscovery {
    list_url: String,
    token_file: std::path::PathBuf,
    client:
        hyper_util::client::legacy::Client<super::Connector, http_body_util::Full<bytes::Bytes>>,
    known: Known,
}

/// How long to wait before listing again after a failure.
pub const K8S_POLL: Duration = Duration::from_millis(500);
const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

impl KubernetesDiscovery {
    pub fn new(
        settings: &crate::config::KubernetesSettings,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<KubernetesDiscovery, String> {
        let api = match &settings.api_server {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
                    "no kubernetes.api_server and no KUBERNETES_SERVICE_HOST (not in a cluster?)"
                        .to_string()
                })?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                format!("https://{host}:{port}")
            }
        };
        Ok(KubernetesDiscovery {
            list_url: format!(
                "{api}/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices",
                settings.namespace
            ),
            token_file: settings
                .service_account_token
                .as_deref()
                .unwrap_or(IN_CLUSTER_TOKEN)
                .into(),
            client: super::pooled_client(tls),
            known: Known::default(),
        })
    }

    /// Keeps the cache current until `shutdown`: lists the slices, then
    /// watches from the list's `resourceVersion` (bookmarks move it on);
    /// lists again when the watch says 410 Gone or fails.
    pub async fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut last_error: Option<String> = None;
        loop {
            let outcome = match self.list().await {
                Ok((mut slices, mut version)) => {
                    if last_error.take().is_some() {
                        tracing::info!(url = %self.list_url, "kubernetes API answers again");
                    }
                    self.known.set_connected(true);
                    self.publish(&slices);
                    loop {
                        match self.watch(&mut slices, &mut version, &shutdown).await {
                            Ok(Watched::Shutdown) => return,
                            // The server ended the watch (its timeout): go on.
                            Ok(Watched::Ended) => continue,
                            Ok(Watched::Gone) => {
                                tracing::debug!("watch expired (410 Gone); listing again");
                                break Ok(());
                            }
                            Err(e) => break Err(e),
                        }
                    }
                }
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                metrics::counter!(crate::metrics::DISCOVERY_ERRORS_TOTAL).increment(1);
                self.known.set_connected(false);
                if last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(url = %self.list_url, error = %e, "cannot list or watch EndpointSlices; keeping the last known endpoints");
                    last_error = Some(e);
                }
                tokio::select! {
                    _ = tokio::time::sleep(K8S_POLL) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }

    /// Makes the endpoints of `slices` the known ones.
    fn publish(&self, slices: &HashMap<String, serde_json::Value>) {
        let items: Vec<&serde_json::Value> = slices.values().collect();
        self.known
            .update(services_of(&serde_json::json!({ "items": items })));
    }

    fn request(
        &self,
        url: &str,
    ) -> Result<http::Request<http_body_util::Full<bytes::Bytes>>, String> {
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| format!("token {}: {e}", self.token_file.display()))?;
        http::Request::get(url)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            .header(http::header::ACCEPT, "application/json")
            .body(http_body_util::Full::default())
            .map_err(|e| e.to_string())
    }

    /// The slices by name, and the list's `resourceVersion`.
    async fn list(&self) -> Result<(HashMap<String, serde_json::Value>, String), String> {
        use http_body_util::BodyExt;
        let request = self.request(&self.list_url)?;
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
            .await
            .map_err(|_| "no answer within 10 s".to_string())?
            .map_err(|e| super::root_cause(&e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        let list: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("not an EndpointSliceList: {e}"))?;
        let version = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let slices = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|slice| {
                let name = slice["metadata"]["name"].as_str()?;
                Some((name.to_string(), slice.clone()))
            })
            .collect();
        Ok((slices, version))
    }

    /// Applies watch events to `slices` (and publishes) until the stream
    /// ends, expires, fails, or `shutdown`.
    async fn watch(
        &self,
        slices: &mut HashMap<String, serde_json::Value>,
        version: &mut String,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<Watched, String> {
        use http_body_util::BodyExt;
        let url = format!(
            "{}?watch=1&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion={version}",
            self.list_url
        );
        let request = self.request(&url)?;
        let response = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(10), self.client.request(request)) => r
                .map_err(|_| "no answer to the watch within 10 s".to_string())?
                .map_err(|e| super::root_cause(&e))?,
            _ = shutdown.cancelled() => return Ok(Watched::Shutdown),
        };
        if response.status() == http::StatusCode::GONE {
            return Ok(Watched::Gone);
        }
        if !response.status().is_success() {
            return Err(format!("watch: {}", response.status()));
        }
        let mut body = response.into_body();
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = shutdown.cancelled() => return Ok(Watched::Shutdown),
            };
            let Some(frame) = frame else {
                return Ok(Watched::Ended);
            };
            let frame = frame.map_err(|e| format!("watch: {e}"))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let event: serde_json::Value = serde_json::from_slice(&line)
                    .map_err(|e| format!("watch event is not JSON: {e}"))?;
                let object = &event["object"];
                if let Some(v) = object["metadata"]["resourceVersion"].as_str() {
                    *version = v.to_string();
                }
                let name = object["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                match event["type"].as_str() {
                    Some("ADDED" | "MODIFIED") => {
                        slices.insert(name, object.clone());
                        self.publish(slices);
                    }
                    Some("DELETED") => {
                        slices.remove(&name);
                        self.publish(slices);
                    }
                    Some("BOOKMARK") => {}
                    Some("ERROR") if object["code"] == 410 => return Ok(Watched::Gone),
                    other => return Err(format!("watch event {other:?}: {object}")),
                }
            }
        }
    }
}

/// How a watch ended.
enum Watched {
    Shutdown,
    /// The server closed the stream (its `timeoutSeconds`).
    Ended,
    /// 410 Gone: the version is too old; list again.
    Gone,
}

/// The ready endpoints of every service in an `EndpointSliceList`.
fn services_of(list: &serde_json::Value) -> HashMap<String, Arc<[Downstream]>> {
    let mut services: HashMap<String, Vec<Downstream>> = HashMap::new();
    for slice in list["items"].as_array().into_iter().flatten() {
        let Some(service) = slice["metadata"]["labels"]["kubernetes.io/service-name"].as_str()
        else {
            continue;
        };
        let Some(port) = slice["ports"].as_array().and_then(|p| p.first()) else {
            continue;
        };
        let Some(number) = port["port"].as_u64() else {
            continue;
        };
        let tls = port["name"] == "https" || port["appProtocol"] == "https";
        for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
            // Ready unless it says otherwise (the API's own rule).
            if endpoint["conditions"]["ready"] == false {
                continue;
            }
            for address in endpoint["addresses"].as_array().into_iter().flatten() {
                let Some(address) = address.as_str() else {
                    continue;
                };
                let host = if address.contains(':') {
                    format!("[{address}]")
                } else {
                    address.to_string()
                };
                let url = if tls {
                    format!("https://{host}:{number}")
                } else {
                    format!("{host}:{number}")
                };
                if let Ok(found) = Downstream::endpoint(&url) {
                    services.entry(service.to_string()).or_default().push(found);
                }
            }
        }
    }
    services
        .into_iter()
        .map(|(name, mut endpoints)| {
            endpoints.sort_by_key(|e| e.uri.to_string());
            endpoints.dedup();
            (name, endpoints.into())
        })
        .collect()
}

impl Discovery for KubernetesDiscovery {
    fn endpoints(&self, service: &str) -> Option<Arc<[Downstream]>> {
        self.known.endpoints(service)
    }

    fn describe(&self) -> String {
        format!("kubernetes {} ({})", self.list_url, self.known.state())
    }

    fn problem(&self) -> Option<String> {
        (!self.known.connected()).then(|| {
            format!(
                "kubernetes API {} not answering: replaying to the endpoints last known",
                self.list_url
            )
        })
    }

    fn services(&self) -> Vec<(String, Arc<[Downstream]>)> {
        self.known.services()
    }
}

/// How long an endpoint that refused a connection is passed over.
const SKIP_FOR: Duration = Duration::from_secs(5);

/// Picks an endpoint of a service: round robin, passing over endpoints
/// that refused a connection in the last [`SKIP_FOR`] (unless all did).
pub struct Endpoints {
    discovery: Arc<dyn Discovery>,
    next: AtomicUsize,
    refused: Mutex<HashMap<String, Instant>>,
}

impl Endpoints {
    pub fn new(discovery: Arc<dyn Discovery>) -> Endpoints {
        metrics::counter!(crate::metrics::DISCOVERY_UPDATES_TOTAL).increment(0);
        metrics::counter!(crate::metrics::DISCOVERY_ERRORS_TOTAL).increment(0);
        Endpoints {
            discovery,
            next: AtomicUsize::new(0),
            refused: Mutex::new(HashMap::new()),
        }
    }

    pub fn describe(&self) -> String {
        self.discovery.describe()
    }

    /// The endpoint for the next request to `service`; `None` when
    /// discovery does not know it.
    pub fn pick(&self, service: &str) -> Option<Downstream> {
        let endpoints = self.discovery.endpoints(service)?;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let refused = self.refused.lock().expect("refused lock");
        let usable = |e: &Downstream| {
            refused
                .get(&e.uri.to_string())
                .is_none_or(|at| at.elapsed() >= SKIP_FOR)
        };
        (0..endpoints.len())
            .map(|i| &endpoints[(start + i) % endpoints.len()])
            .find(|e| usable(e))
            .or_else(|| endpoints.get(start % endpoints.len()))
            .cloned()
    }

    /// What `/api/status` shows: the provider, and each service with its
    /// endpoints and those passed over now.
    pub fn status(&self) -> serde_json::Value {
        let refused = self.refused.lock().expect("refused lock");
        let services: Vec<serde_json::Value> = self
            .discovery
            .services()
            .into_iter()
            .map(|(name, endpoints)| {
                let show = |e: &Downstream| e.authority().to_string();
                let passed_over: Vec<String> = endpoints
                    .iter()
                    .filter(|e| {
                        refused
                            .get(&e.uri.to_string())
                            .is_some_and(|at| at.elapsed() < SKIP_FOR)
                    })
                    .map(show)
                    .collect();
                serde_json::json!({
                    "name": name,
                    "endpoints": endpoints.iter().map(show).collect::<Vec<_>>(),
                    "passed_over": passed_over,
                })
            })
            .collect();
        serde_json::json!({"provider": self.discovery.describe(), "services": services})
    }

    /// Why discovery is not current, if it is not.
    pub fn problem(&self) -> Option<String> {
        self.discovery.problem()
    }

    /// `endpoint` refused a connection or could not be reached: pass it
    /// over for a while.
    pub fn refused(&self, endpoint: &Downstream) {
        self.refused
            .lock()
            .expect("refused lock")
            .insert(endpoint.uri.to_string(), Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StaticService;

    fn endpoints(list: &[(&str, &[&str])]) -> Endpoints {
        let settings = DiscoverySettings {
            static_services: list
                .iter()
                .map(|(name, eps)| StaticService {
                    name: name.to_string(),
                    endpoints: eps.iter().map(|e| e.to_string()).collect(),
                })
                .collect(),
            ..DiscoverySettings::default()
        };
        Endpoints::new(Arc::new(StaticDiscovery::new(&settings).unwrap()))
    }

    #[test]
    fn round_robin_over_a_services_endpoints_and_none_for_unknown_ones() {
        let e = endpoints(&[("orders", &["10.0.0.5:8080", "https://orders.b:8443"])]);
        let picked: Vec<String> = (0..4)
            .map(|_| e.pick("orders").unwrap().uri.to_string())
            .collect();
        assert_eq!(
            picked,
            [
                "http://10.0.0.5:8080/",
                "https://orders.b:8443/",
                "http://10.0.0.5:8080/",
                "https://orders.b:8443/"
            ]
        );
        assert!(e.pick("billing").is_none());
    }

    #[test]
    fn an_endpoint_that_refused_is_passed_over_unless_all_did() {
        let e = endpoints(&[("orders", &["a:1", "b:2"])]);
        let a = Downstream::endpoint("a:1").unwrap();
        e.refused(&a);
        for _ in 0..4 {
            assert_eq!(e.pick("orders").unwrap().uri.to_string(), "http://b:2/");
        }
        e.refused(&Downstream::endpoint("b:2").unwrap());
        assert!(e.pick("orders").is_some(), "all refused: still one to try");
    }

    #[test]
    fn zookeeper_instances_in_every_shape_we_accept() {
        let show = |d: Option<Downstream>| d.map(|d| d.uri.to_string());
        assert_eq!(
            show(instance("i1", br#"{"host": "10.0.0.5", "port": 8080}"#)),
            Some("http://10.0.0.5:8080/".into())
        );
        assert_eq!(
            show(instance(
                "i2",
                br#"{"name":"orders","address":"10.0.0.6","port":80,"sslPort":8443}"#
            )),
            Some("https://10.0.0.6:8443/".into())
        );
        assert_eq!(
            show(instance("10.0.0.7:81", b"")),
            Some("http://10.0.0.7:81/".into())
        );
        assert_eq!(show(instance("i3", b"garbage")), None);
        assert_eq!(show(instance("i4", br#"{"host": "h"}"#)), None);
    }

    #[test]
    fn endpoint_slices_give_ready_endpoints_by_service() {
        let list = serde_json::json!({"kind": "EndpointSliceList", "items": [
            {"metadata": {"labels": {"kubernetes.io/service-name": "orders"}},
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
             "endpoints": [
                {"addresses": ["10.0.0.5"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.6"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.7"]}]},
            {"metadata": {"labels": {"kubernetes.io/service-name": "orders"}},
             "ports": [{"name": "http", "port": 8080}],
             "endpoints": [{"addresses": ["fd00::1"], "conditions": {"ready": true}}]},
            {"metadata": {"labels": {"kubernetes.io/service-name": "billing"}},
             "ports": [{"name": "https", "port": 8443}],
             "endpoints": [{"addresses": ["10.0.1.1"], "conditions": {"ready": true}}]},
            {"metadata": {"labels": {}}, "ports": [{"port": 1}], "endpoints": []}
        ]});
        let services = services_of(&list);
        let show = |name: &str| -> Vec<String> {
            services[name].iter().map(|e| e.uri.to_string()).collect()
        };
        assert_eq!(
            show("orders"),
            [
                "http://10.0.0.5:8080/",
                "http://10.0.0.7:8080/",
                "http://[fd00::1]:8080/"
            ]
        );
        assert_eq!(show("billing"), ["https://10.0.1.1:8443/"]);
        assert_eq!(services.len(), 2);
    }

    #[test]
    fn endpoints_are_host_port_or_urls() {
        assert!(Downstream::endpoint("10.0.0.5:8080").is_ok());
        assert!(Downstream::endpoint("https://orders.b:8443").is_ok());
        for bad in ["orders", ":80", "a:0", "a:x", "ftp://a:1"] {
            assert!(Downstream::endpoint(bad).is_err(), "{bad}");
        }
    }
}
