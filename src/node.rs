//! A whole node: the store, the recorder or the replayer, the proxy and API
//! listeners, wired together and run until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::{Api, ApiState, PlaybackApi};
use crate::config::{Config, Mode, SpoolMode};
use crate::downstream::TcpTarget;
use crate::mqtt_client::{MqttClient, MqttConfig};
use crate::playback::{Comparator, PlaybackStats, Replayer, RetryPolicy, SyncLink, SyncRunner};
use crate::proxy::http::HttpProxy;
use crate::proxy::tcp::TcpProxy;
use crate::record::recorder::Recorder;
use crate::record::spool::{DiskSpool, Recovered};
use crate::record::RecordId;
use crate::server::{serve, Listener, Options, Timeouts, Workers};
use crate::store::{self, Store, StoreError};
use crate::sync::client::PeerClient;
use crate::sync::mqtt::{serve_record_side, spawn_wakeups, MqttLink, ShardSignal, Topics};
use tokio::sync::Notify;

/// Open connections get this long to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often retention trims the record streams.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

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

async fn bind(what: &'static str, host: &str, port: u16) -> Result<TcpListener, NodeError> {
    let addr = format!("{host}:{port}");
    TcpListener::bind(&addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
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
    warn_unbuilt(&config);
    let http = match &config.http {
        Some(h) if h.enabled => Some(bind("http proxy", &h.host, h.port).await?),
        _ => None,
    };
    let tcp = match &config.tcp {
        Some(t) if t.enabled => Some(bind("tcp proxy", &t.host, t.port).await?),
        _ => None,
    };
    let api = bind("api", &config.api.host, config.api.port).await?;
    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
    let api_addr = api.local_addr().expect("a bound listener has an address");
    let limits = connection_limits(&config);
    let http = http.map(|l| Listener::new("http", l, limits.http));
    let tcp = tcp.map(|l| Listener::new("tcp", l, limits.tcp));
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
    info!(%mode, http = ?http_addr, api = %api_addr, store = %store.describe(), "node starting");
    let listeners = Listeners {
        http,
        tcp,
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
        api_addr,
        broker_addr,
        shutdown,
        task,
    })
}

/// Connections each listener serves at once.
struct ConnectionLimits {
    api: usize,
    http: usize,
    tcp: usize,
}

/// The configured limits, lowered where the open file limit could not
/// hold them with room left for the API and downstream connections (see
/// [`crate::server::fit_to_fd_limit`]).
fn connection_limits(config: &Config) -> ConnectionLimits {
    let http = config
        .http
        .as_ref()
        .filter(|h| h.enabled)
        .map(|h| h.max_connections);
    let tcp = config
        .tcp
        .as_ref()
        .filter(|t| t.enabled)
        .map(|t| t.max_connections);
    let api = config.api.max_connections;
    let Some((fd_limit, _)) = crate::os::fd_limits() else {
        return ConnectionLimits {
            api,
            http: http.unwrap_or(1),
            tcp: tcp.unwrap_or(1),
        };
    };
    let (fitted_api, fitted) = crate::server::fit_to_fd_limit(fd_limit, api, &[http, tcp]);
    let lowered = [
        ("api.max_connections", Some(api), Some(fitted_api)),
        ("http.max_connections", http, fitted[0]),
        ("tcp.max_connections", tcp, fitted[1]),
    ];
    for (key, configured, fitted) in lowered {
        if let (Some(configured), Some(fitted)) = (configured, fitted) {
            if fitted < configured {
                warn!("{key} lowered from {configured} to {fitted} to fit the open file limit ({fd_limit}); raise `ulimit -n` for more");
            }
        }
    }
    ConnectionLimits {
        api: fitted_api,
        http: fitted[0].unwrap_or(1),
        tcp: fitted[1].unwrap_or(1),
    }
}

fn warn_unbuilt(config: &Config) {
    if config.grpc.as_ref().is_some_and(|g| g.enabled) {
        warn!("the grpc section is not served yet: this version proxies HTTP only");
    }
    if config.service_discovery.is_some() {
        debug!("service_discovery is parsed; replay targets are http.downstream for now");
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

/// The bound listeners of a node, their TLS, and the TCP proxy's target.
struct Listeners {
    http: Option<Listener>,
    tcp: Option<Listener>,
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
    let api_addr = api.local_addr();
    let mqtt = mqtt_client(&config, broker, api_addr, &tls);
    let topics = Topics::new(
        config
            .mqtt
            .as_ref()
            .map_or("qproxy", |m| m.topic_prefix.as_str()),
    );
    if let Some(client) = &mqtt {
        tasks.push(watch_mqtt(client.clone(), shutdown.clone()));
    }
    let recording = config.mode == Mode::Record && config.record.enabled;
    let signal = mqtt
        .as_ref()
        .filter(|_| recording)
        .map(|_| Arc::new(ShardSignal::new(config.sync.shards)));
    let ledger = (config.mode == Mode::Record).then(|| {
        Arc::new(crate::sync::ledger::Ledger::new(
            store.clone(),
            config.sync.shards,
            &config.sync,
        ))
    });
    if let (Some(client), Some(ledger)) = (&mqtt, &ledger) {
        let serving = serve_record_side(
            client.clone(),
            store.clone(),
            ledger.clone(),
            topics.clone(),
            signal
                .clone()
                .unwrap_or_else(|| Arc::new(ShardSignal::new(config.sync.shards))),
            config.sync.shards,
            config.mqtt.as_ref().map_or(4 << 20, |m| m.max_batch_bytes),
            shutdown.clone(),
        )
        .await;
        match serving {
            Ok(handles) => tasks.extend(handles),
            Err(e) => warn!(error = %e, "mqtt record side not started; HTTP sync still works"),
        }
    }
    let (recorder, writer) = if recording {
        let (recorder, writer) = Recorder::spawn(
            store.clone(),
            &config.record,
            config.sync.shards,
            signal,
            spool,
        );
        tasks.push(spawn_retention(store.clone(), &config, shutdown.clone()));
        (Some(recorder), Some(writer))
    } else {
        (None, None)
    };
    let recorder_stats = recorder.as_ref().map(|r| r.stats().clone());

    let mut playback = None;
    if config.mode == Mode::Playback {
        let stats = Arc::new(PlaybackStats::default());
        tasks.push(spawn_parked_count(
            stats.clone(),
            store.clone(),
            config.sync.shards,
            shutdown.clone(),
        ));
        let target = config.http.as_ref().map(|h| h.downstream.clone());
        if let Some(target) = target {
            // The config checked every header name already.
            let comparator = Comparator::new(&config.playback).unwrap_or_default();
            let replayer = Arc::new(
                Replayer::new(
                    target,
                    tcp_target.clone(),
                    Duration::from_millis(config.playback.timeout_ms),
                    config.record.max_body_bytes,
                    tls.client.clone(),
                )
                .with_tcp_pacing(config.playback.tcp_pacing)
                .with_retry_statuses(config.playback.retry_statuses.clone())
                .with_comparator(comparator),
            );
            let peer = config.sync.peer.as_ref();
            if config.sync.enabled {
                let wake: Arc<[Notify]> = (0..config.sync.shards).map(|_| Notify::new()).collect();
                let mqtt_link = match &mqtt {
                    Some(client) => {
                        match spawn_wakeups(
                            client.clone(),
                            topics.clone(),
                            wake.clone(),
                            stats.notifications.clone(),
                            shutdown.clone(),
                        )
                        .await
                        {
                            Ok(handle) => tasks.push(handle),
                            Err(e) => {
                                warn!(error = %e, "mqtt notifications not subscribed; polling only")
                            }
                        }
                        Some(MqttLink {
                            client: client.clone(),
                            topics: topics.clone(),
                        })
                    }
                    None => None,
                };
                let runner = Arc::new(SyncRunner {
                    link: SyncLink {
                        http: peer.map(|p| PeerClient::new(p, tls.client.clone())),
                        mqtt: mqtt_link,
                    },
                    wake,
                    replayer: replayer.clone(),
                    store: store.clone(),
                    stats: stats.clone(),
                    peer_id: config.sync.peer_id.clone(),
                    shards: config.sync.shards,
                    interval: config.sync.interval(),
                    batch_size: config.sync.batch_size,
                    results_kept: config.playback.results_retention_len,
                    retry: RetryPolicy::new(&config.playback),
                });
                tasks.extend(runner.spawn(shutdown.clone()));
            }
            playback = Some(PlaybackApi {
                replayer,
                stats,
                peer_id: config.sync.peer_id.clone(),
                peer_addr: peer.map(|p| format!("{}:{}", p.host, p.port)),
                results_kept: config.playback.results_retention_len,
                parked_down_threshold: config.playback.parked_down_threshold,
                redrive: tokio::sync::Mutex::new(()),
                max_push_bytes: config.playback.max_push_bytes,
                pushes: tokio::sync::Semaphore::new(crate::api::MAX_CONCURRENT_PUSHES),
            });
        }
    }

    if let (Some(listener), Some(h)) = (http, &config.http) {
        // Proxied connections run on one single-threaded runtime per CPU,
        // each with its own downstream pool (see server::Workers).
        let count = h
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let workers = match count {
            0 => None,
            n => match Workers::new("http", n) {
                Ok(workers) => Some(Arc::new(workers)),
                Err(e) => {
                    warn!(error = %e, "no proxy worker threads; serving on the main runtime");
                    None
                }
            },
        };
        let pools = workers.as_ref().map_or(1, |w| w.len());
        let proxy = HttpProxy::new(
            h.downstream.clone(),
            recorder.clone(),
            tls.client.clone(),
            pools,
        )
        .with_body_timeout(h.body_timeout());
        let options = Options {
            tls: tls.http.clone(),
            on_connection: Some(count_http_connection),
            workers,
            timeouts: Timeouts {
                header: h.header_timeout(),
                idle: h.idle_timeout(),
            },
        };
        tasks.push(tokio::spawn(serve(
            listener,
            proxy,
            shutdown.clone(),
            SHUTDOWN_GRACE,
            options,
        )));
    }
    if let (Some(listener), Some(target)) = (tcp, tcp_target) {
        let proxy = TcpProxy::new(target, tls.tcp.clone(), recorder.clone());
        tasks.push(tokio::spawn(proxy.serve(
            listener,
            shutdown.clone(),
            SHUTDOWN_GRACE,
        )));
    }
    drop(recorder);

    let api_state = ApiState {
        mode: config.mode,
        shards: config.sync.shards,
        auth_token: config.api.auth_token.clone(),
        store: store.clone(),
        uses_redis: config.redis.is_some(),
        recorder: recorder_stats,
        ledger,
        playback,
        mqtt: mqtt.clone(),
        started: Instant::now(),
    };
    let options = Options {
        tls: tls.api.clone(),
        ..Options::default()
    };
    tasks.push(tokio::spawn(serve(
        api,
        Api::new(api_state),
        shutdown.clone(),
        SHUTDOWN_GRACE,
        options,
    )));

    for task in tasks {
        let _ = task.await;
    }
    // Every recorder handle is gone with the proxy: the writer flushes and ends.
    if let Some(writer) = writer {
        let _ = writer.await;
    }
    info!("node stopped");
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

fn count_http_connection(delta: i64) {
    metrics::gauge!(crate::metrics::HTTP_ACTIVE_CONNECTIONS, "protocol" => "http")
        .increment(delta as f64);
}

/// Counts the records parked by an earlier run, once the store answers.
fn spawn_parked_count(
    stats: Arc<PlaybackStats>,
    store: Arc<dyn Store>,
    shards: u32,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match stats.refresh_parked(store.as_ref(), shards).await {
                Ok(0) => return,
                Ok(parked) => {
                    warn!(parked, "records parked by an earlier run wait to be re-driven (POST /api/replays/retry)");
                    return;
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    })
}

fn spawn_retention(
    store: Arc<dyn Store>,
    config: &Config,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let shards = config.sync.shards;
    let max_age_ms = config.record.retention_secs.saturating_mul(1000);
    let max_len = config.record.max_len();
    tokio::spawn(async move {
        if max_age_ms == 0 && max_len.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RETENTION_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
            let min_id = (max_age_ms > 0)
                .then(|| RecordId::new(crate::clock::now_ms().saturating_sub(max_age_ms), 0));
            for shard in 0..shards {
                if let Err(e) = store.trim(shard, min_id, max_len).await {
                    debug!(shard, error = %e, "retention trim failed; will retry");
                }
            }
        }
    })
}
