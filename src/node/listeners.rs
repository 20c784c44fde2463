//! A node's listeners: binding them (limits fitted to the open file
//! limit), and serving the HTTP proxy, the TCP proxy and the API on them.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{NodeError, SHUTDOWN_GRACE};
use crate::api::{Api, ApiState};
use crate::config::{Config, DEFAULT_API_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS};
use crate::downstream::TcpTarget;
use crate::proxy::grpc::GrpcProxy;
use crate::proxy::http::HttpProxy;
use crate::proxy::tcp::TcpProxy;
use crate::record::recorder::Recorder;
use crate::server::{serve, Listener, Options, Timeouts, Workers};

pub(super) async fn bind(
    what: &'static str,
    host: &str,
    port: u16,
) -> Result<TcpListener, NodeError> {
    let addr = format!("{host}:{port}");
    TcpListener::bind(&addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

/// Connections each listener serves at once.
pub(super) struct ConnectionLimits {
    pub api: usize,
    pub http: usize,
    pub tcp: usize,
    pub grpc: usize,
}

/// The configured limits, lowered where the open file limit could not
/// hold them with room left for the API and downstream connections (see
/// [`crate::server::fit_to_fd_limit`]).
pub(super) fn connection_limits(config: &Config) -> ConnectionLimits {
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
    let grpc = config
        .grpc
        .as_ref()
        .filter(|g| g.enabled)
        .map(|g| g.max_connections);
    let api = config.api.max_connections;
    let Some((fd_limit, _)) = crate::os::fd_limits() else {
        return ConnectionLimits {
            api,
            http: http.unwrap_or(1),
            tcp: tcp.unwrap_or(1),
            grpc: grpc.unwrap_or(1),
        };
    };
    let (fitted_api, fitted) = crate::server::fit_to_fd_limit(fd_limit, api, &[http, tcp, grpc]);
    let lowered = [
        ("api.max_connections", Some(api), Some(fitted_api)),
        ("http.max_connections", http, fitted[0]),
        ("tcp.max_connections", tcp, fitted[1]),
        ("grpc.max_connections", grpc, fitted[2]),
    ];
    for (key, configured, fitted) in lowered {
        if let (Some(configured), Some(fitted)) = (configured, fitted) {
            let default = configured == DEFAULT_MAX_CONNECTIONS
                || (key == "api.max_connections" && configured == DEFAULT_API_MAX_CONNECTIONS);
            if fitted < configured && default {
                // Not the operator's number: no warning for a fitted default.
                info!("{key} lowered from the default {configured} to {fitted} to fit the open file limit ({fd_limit})");
            } else if fitted < configured {
                warn!("{key} lowered from {configured} to {fitted} to fit the open file limit ({fd_limit}); raise `ulimit -n` for more");
            }
        }
    }
    ConnectionLimits {
        api: fitted_api,
        http: fitted[0].unwrap_or(1),
        tcp: fitted[1].unwrap_or(1),
        grpc: fitted[2].unwrap_or(1),
    }
}

/// A node's bound proxy listeners (the TCP one with its target).
pub(super) struct ProxyListeners {
    pub http: Option<Listener>,
    pub tcp: Option<(Listener, TcpTarget)>,
    pub grpc: Option<Listener>,
}

/// Serves the HTTP, gRPC and TCP proxies on their listeners, each exchange
/// recorded when there is a `recorder`.
pub(super) fn serve_proxies(
    config: &Config,
    listeners: ProxyListeners,
    tls: &crate::tls::Setup,
    recorder: Option<Recorder>,
    shutdown: &CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) {
    let ProxyListeners { http, tcp, grpc } = listeners;
    if let (Some(listener), Some(h)) = (http, &config.http) {
        // Proxied connections run on one single-threaded runtime per CPU,
        // each with its own downstream pool (see server::Workers).
        let workers = proxy_workers("http", h.workers);
        let pools = workers.as_ref().map_or(1, |w| w.len());
        let proxy = HttpProxy::new(
            h.downstream.clone(),
            recorder.clone(),
            tls.client.clone(),
            pools,
        )
        .with_body_timeout(h.body_timeout(), h.body_min_rate)
        .with_service(h.service.as_deref());
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
    if let (Some(listener), Some(g)) = (grpc, &config.grpc) {
        let workers = proxy_workers("grpc", g.workers);
        let pools = workers.as_ref().map_or(1, |w| w.len());
        let proxy = GrpcProxy::new(g.downstream.clone(), recorder.clone(), &tls.client, pools)
            .with_limits(g.service.as_deref(), g.max_message_bytes);
        let options = Options {
            tls: tls.grpc.clone(),
            on_connection: Some(count_grpc_connection),
            workers,
            timeouts: Timeouts::default(),
        };
        tasks.push(tokio::spawn(serve(
            listener,
            proxy,
            shutdown.clone(),
            SHUTDOWN_GRACE,
            options,
        )));
    }
    if let Some((listener, target)) = tcp {
        let proxy = TcpProxy::new(target, tls.tcp.clone(), recorder.clone())
            .with_service(config.tcp.as_ref().and_then(|t| t.service.as_deref()));
        tasks.push(tokio::spawn(proxy.serve(
            listener,
            shutdown.clone(),
            SHUTDOWN_GRACE,
        )));
    }
}

/// The worker threads of a proxy listener: `configured` of them, or one
/// per CPU; none (the main runtime) for 0 or when threads cannot start.
fn proxy_workers(name: &str, configured: Option<usize>) -> Option<Arc<Workers>> {
    let count =
        configured.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    match count {
        0 => None,
        n => match Workers::new(name, n) {
            Ok(workers) => Some(Arc::new(workers)),
            Err(e) => {
                warn!(listener = name, error = %e, "no proxy worker threads; serving on the main runtime");
                None
            }
        },
    }
}

/// Serves the sync and admin API.
pub(super) fn serve_api(
    api: Listener,
    state: ApiState,
    tls: &crate::tls::Setup,
    shutdown: &CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) {
    let options = Options {
        tls: tls.api.clone(),
        ..Options::default()
    };
    tasks.push(tokio::spawn(serve(
        api,
        Api::new(state),
        shutdown.clone(),
        SHUTDOWN_GRACE,
        options,
    )));
}

fn count_grpc_connection(delta: i64) {
    metrics::gauge!(crate::metrics::GRPC_ACTIVE_CONNECTIONS).increment(delta as f64);
}

fn count_http_connection(delta: i64) {
    metrics::gauge!(crate::metrics::HTTP_ACTIVE_CONNECTIONS, "protocol" => "http")
        .increment(delta as f64);
}
