//! A whole node, built from its parts: the store, the MQTT fabric
//! ([`fabric`]), the record side ([`record_side`]) or the playback side
//! ([`playback_side`]), and the listeners ([`listeners`]). Each part builds
//! itself from its own config section and starts its tasks; [`run`] is the
//! short list of what a node is made of.

mod fabric;
mod listeners;
mod playback_side;
mod record_side;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use self::fabric::Fabric;
use self::record_side::RecordSide;
use crate::api::ApiState;
use crate::config::{Config, Mode, SpoolMode};
use crate::downstream::TcpTarget;
use crate::record::spool::{DiskSpool, Recovered};
use crate::server::Listener;
use crate::store::{self, Store, StoreError};

/// Open connections get this long to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot open the record spool: {0}")]
    Spool(#[from] crate::record::spool::SpoolError),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// A node started in this process.
pub struct RunningNode {
    pub mode: Mode,
    /// The proxy listener's address, when there is one.
    pub http_addr: Option<SocketAddr>,
    /// The TCP proxy listener's address, when there is one.
    pub tcp_addr: Option<SocketAddr>,
    /// The gRPC proxy listener's address, when there is one.
    pub grpc_addr: Option<SocketAddr>,
    pub api_addr: SocketAddr,
    /// The embedded MQTT broker's address, when this node runs one.
    pub broker_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningNode {
    /// Stops accepting, drains connections, flushes recordings.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the node has stopped (after its token is cancelled).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Opens the store, binds the listeners and starts everything.
pub async fn start(config: Config) -> Result<RunningNode, NodeError> {
    let tls = crate::tls::Setup::new(&config)?;
    start_with_tls(config, tls).await
}

/// [`start`] with the TLS setup already read from the config's PEM files
/// (the command reads them first, to report a bad file as a configuration
/// error).
pub async fn start_with_tls(
    config: Config,
    tls: crate::tls::Setup,
) -> Result<RunningNode, NodeError> {
    crate::metrics::handle();
    let tcp_target = match config.tcp.as_ref().filter(|t| t.enabled) {
        Some(t) => Some(TcpTarget::new(
            &t.downstream,
            t.downstream_tls.then(|| tls.client.clone()),
        )?),
        None => None,
    };
    let store = store::open(&config)?;
    let spool = match config.record.spool {
        SpoolMode::Disk if config.mode == Mode::Record && config.record.enabled => {
            Some(DiskSpool::open(&config.data_dir.join("spool"))?)
        }
        _ => None,
    };
    note_unused_sections(&config);
    let http = match &config.http {
        Some(h) if h.enabled => Some(listeners::bind("http proxy", &h.host, h.port).await?),
        _ => None,
    };
    let tcp = match &config.tcp {
        Some(t) if t.enabled => Some(listeners::bind("tcp proxy", &t.host, t.port).await?),
        _ => None,
    };
    let grpc = match &config.grpc {
        Some(g) if g.enabled => Some(listeners::bind("grpc proxy", &g.host, g.port).await?),
        _ => None,
    };
    let api = listeners::bind("api", &config.api.host, config.api.port).await?;
    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
    let grpc_addr = grpc.as_ref().and_then(|l| l.local_addr().ok());
    let api_addr = api.local_addr().expect("a bound listener has an address");
    let limits = listeners::connection_limits(&config);
    let http = http.map(|l| Listener::new("http", l, limits.http));
    let tcp = tcp.map(|l| Listener::new("tcp", l, limits.tcp));
    let grpc = grpc.map(|l| Listener::new("grpc", l, limits.grpc));
    let api = Listener::new("api", api, limits.api);
    let broker = match config
        .mqtt
        .as_ref()
        .filter(|m| m.enabled)
        .and_then(|m| m.embedded())
    {
        Some(embedded) => {
            let mqtt = config.mqtt.as_ref().expect("checked above");
            let user = mqtt
                .app_id
                .as_deref()
                .map(|u| (u, mqtt.token.as_deref().unwrap_or("")));
            Some(crate::broker::start(&embedded.host, embedded.port, user)?)
        }
        None => None,
    };
    let broker_addr = broker.map(|b| b.addr);
    let shutdown = CancellationToken::new();
    let mode = config.mode;
    let mut bound = Vec::new();
    bound.extend(http_addr.map(|a| ("http", a)));
    bound.extend(grpc_addr.map(|a| ("grpc", a)));
    bound.extend(tcp_addr.map(|a| ("tcp", a)));
    bound.push(("api", api_addr));
    bound.extend(broker_addr.map(|a| ("mqtt", a)));
    info!("ready: {}", ready_line(&config, &bound));
    let listeners = Listeners {
        http,
        tcp,
        grpc,
        api,
        tls,
        tcp_target,
        spool,
    };
    let task = tokio::spawn(run(config, store, listeners, broker_addr, shutdown.clone()));
    Ok(RunningNode {
        mode,
        http_addr,
        tcp_addr,
        grpc_addr,
        api_addr,
        broker_addr,
        shutdown,
        task,
    })
}

/// Every listener at its bound address, the mode, the store and the
/// broker, in words and with no secret: `mode Record, http 127.0.0.1:8080
/// -> http://127.0.0.1:8081, api 127.0.0.1:8084, store embedded ./data,
/// mqtt off`.
fn ready_line(config: &Config, bound: &[(&str, SocketAddr)]) -> String {
    config
        .outline(Some(bound))
        .iter()
        .map(|(part, what)| format!("{part} {what}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sections this node reads but does not use, said at debug level.
fn note_unused_sections(config: &Config) {
    if let Some(sd) = config.service_discovery.as_ref() {
        if config.mode == Mode::Record {
            debug!(provider = ?sd.provider, "service_discovery is used by Playback nodes");
        }
    }
}

/// The bound listeners of a node, their TLS, and the TCP proxy's target.
struct Listeners {
    http: Option<Listener>,
    tcp: Option<Listener>,
    grpc: Option<Listener>,
    api: Listener,
    tls: crate::tls::Setup,
    tcp_target: Option<TcpTarget>,
    /// The record spool on disk, with what an earlier process left in it.
    spool: Option<(DiskSpool, Recovered)>,
}

async fn run(
    config: Config,
    store: Arc<dyn Store>,
    listeners: Listeners,
    broker: Option<SocketAddr>,
    shutdown: CancellationToken,
) {
    let Listeners {
        http,
        tcp,
        grpc,
        api,
        tls,
        tcp_target,
        spool,
    } = listeners;
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    tasks.push(tokio::spawn(store::watch_persistence(
        store.clone(),
        shutdown.clone(),
    )));
    let waits = match config.mode {
        Mode::Record if config.record.enabled => "records wait in the spool until it is back",
        Mode::Record => "the sync API fails until it is back",
        Mode::Playback => "replays wait until it is back",
    };
    tasks.push(tokio::spawn(store::check_reachable(
        store.clone(),
        config.store_name(),
        waits,
        shutdown.clone(),
    )));
    let fabric = Fabric::start(
        &config,
        broker,
        api.local_addr(),
        &tls,
        &shutdown,
        &mut tasks,
    );
    let mut record = RecordSide::start(
        &config,
        api.local_addr(),
        &store,
        &fabric,
        spool,
        &shutdown,
        &mut tasks,
    )
    .await;
    let playback = playback_side::start(
        &config,
        &store,
        &fabric,
        &tls,
        tcp_target.clone(),
        &shutdown,
        &mut tasks,
    )
    .await;
    listeners::serve_proxies(
        &config,
        listeners::ProxyListeners {
            http,
            tcp: tcp.zip(tcp_target),
            grpc,
        },
        &tls,
        record.recorder.take(),
        &shutdown,
        &mut tasks,
    );
    let state = ApiState {
        mode: config.mode,
        shards: config.sync.shards,
        auth_token: config.api.auth_token.clone(),
        store: store.clone(),
        uses_redis: config.redis.is_some(),
        recorder: record.stats.clone(),
        ledger: record.ledger.clone(),
        playback,
        mqtt: fabric.client.clone(),
        started: Instant::now(),
        system: crate::api::SystemCheck {
            thresholds: config.monitoring.thresholds(),
            data_dir: crate::system::monitor().watch(&config.data_dir),
        },
    };
    listeners::serve_api(api, state, &tls, &shutdown, &mut tasks);

    for task in tasks {
        let _ = task.await;
    }
    // Every recorder handle is gone with the proxies: the writer flushes
    // (or puts its spool on disk) and ends.
    if let Some(writer) = record.writer {
        let _ = writer.await;
    }
    info!("node stopped");
}
