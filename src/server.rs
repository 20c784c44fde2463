//! Serving HTTP (1.1 and h2c, or HTTPS with ALPN h2/http1.1) on a bound
//! listener until shutdown.
//!
//! Shared by the proxy listener and the API listener: accept stops at once
//! when the token is cancelled, open connections get `grace` to finish. A
//! client whose TLS handshake fails is logged and counted; the listener
//! goes on.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::tls::{Stream, TlsAcceptor};

/// Connections one listener serves at once; more wait in the backlog.
pub const MAX_CONNECTIONS: usize = 20_000;

/// Called for each request with the client's address.
pub trait Handler<B>: Clone + Send + Sync + 'static {
    fn call(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> impl Future<Output = Response<B>> + Send;
}

/// Serves `handler` on `listener` (over TLS with `tls`) until `shutdown`;
/// then drains for `grace`.
pub async fn serve<H, B>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: H,
    shutdown: CancellationToken,
    grace: Duration,
    on_connection: Option<fn(i64)>,
) where
    H: Handler<B>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new());
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.cancelled() => break,
        };
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.call(req, client).await) }
        });
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let stream = match &tls {
                Some(acceptor) => match crate::tls::accept(acceptor, stream).await {
                    Ok(stream) => stream,
                    Err(e) => return crate::tls::handshake_failed(name, client, &e),
                },
                None => Stream::Plain(stream),
            };
            if let Some(f) = on_connection {
                f(1);
            }
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                debug!(listener = name, client = %client, error = %e, "connection ended with an error");
            }
            if let Some(f) = on_connection {
                f(-1);
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => debug!(listener = name, "all connections closed"),
        _ = tokio::time::sleep(grace) => warn!(listener = name, "connections still open after the grace period; closing them"),
    }
}
