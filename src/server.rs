//! Serving HTTP (1.1 and h2c, or HTTPS with ALPN h2/http1.1) on a bound
//! listener until shutdown.
//!
//! Shared by the proxy listener and the API listener: accept stops at once
//! when the token is cancelled, open connections get `grace` to finish. A
//! client whose TLS handshake fails is logged and counted; the listener
//! goes on.
//!
//! With [`Workers`], accepted connections are handed round robin to
//! threads that each run a single-threaded runtime, and a connection lives
//! on its thread: no work stealing, no task hopping between threads, and a
//! handler can keep per-thread state (the proxy keeps its downstream pool
//! there, see [`worker_index`]).

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the [`Workers`] thread this code runs on, if any.
pub fn worker_index() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// Threads, each with a single-threaded runtime, that run the connections
/// of one listener. They stop when dropped (after the listener drained).
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl Workers {
    /// `count` threads named `<name>-<i>`.
    pub fn new(name: &str, count: usize) -> std::io::Result<Workers> {
        // Built up in place: on an error, dropping it stops the threads
        // already started.
        let mut workers = Workers {
            handles: Vec::with_capacity(count),
            next: AtomicUsize::new(0),
            stop: CancellationToken::new(),
        };
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let stop = workers.stop.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(Some(i)));
                    runtime.block_on(stop.cancelled());
                })?;
            workers.handles.push(handle);
        }
        Ok(workers)
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(task);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How a listener is served beyond its handler.
#[derive(Default)]
pub struct Options {
    /// TLS on every connection.
    pub tls: Option<TlsAcceptor>,
    /// Called with +1 and -1 as connections open and close.
    pub on_connection: Option<fn(i64)>,
    /// Where connections run; the current runtime when `None`.
    pub workers: Option<Arc<Workers>>,
}

/// Called for each request with the client's address.
pub trait Handler<B>: Clone + Send + Sync + 'static {
    fn call(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> impl Future<Output = Response<B>> + Send;
}

/// Serves `handler` on `listener` until `shutdown`; then drains for
/// `grace`.
pub async fn serve<H, B>(
    name: &'static str,
    listener: TcpListener,
    handler: H,
    shutdown: CancellationToken,
    grace: Duration,
    options: Options,
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
    let Options {
        tls,
        on_connection,
        workers,
    } = options;
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
        // A socket's readiness comes from the reactor it is registered
        // with. A connection handed to a worker thread is registered again
        // there; left with this runtime's reactor, every read would wake
        // this thread first and then the worker (two thread hops a request).
        let stream = match &workers {
            Some(_) => match stream.into_std() {
                Ok(std) => Accepted::Handover(std),
                Err(e) => {
                    warn!(listener = name, client = %client, error = %e, "cannot hand the connection over");
                    continue;
                }
            },
            None => Accepted::Here(stream),
        };
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.call(req, client).await) }
        });
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let tls = tls.clone();
        let task = async move {
            let stream = match stream.register() {
                Ok(stream) => stream,
                Err(e) => {
                    warn!(listener = name, client = %client, error = %e, "cannot register the connection");
                    return;
                }
            };
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
        };
        match &workers {
            Some(workers) => workers.spawn(task),
            None => {
                tokio::spawn(task);
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => debug!(listener = name, "all connections closed"),
        _ = tokio::time::sleep(grace) => warn!(listener = name, "connections still open after the grace period; closing them"),
    }
}

/// An accepted connection on its way to the runtime that serves it.
enum Accepted {
    Here(tokio::net::TcpStream),
    /// Deregistered; registered again by the worker that serves it.
    Handover(std::net::TcpStream),
}

impl Accepted {
    /// The connection, registered with the reactor of the runtime this runs on.
    fn register(self) -> std::io::Result<tokio::net::TcpStream> {
        match self {
            Accepted::Here(stream) => Ok(stream),
            Accepted::Handover(stream) => tokio::net::TcpStream::from_std(stream),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_run_tasks_round_robin_on_their_own_threads() {
        let workers = Workers::new("test-worker", 2).unwrap();
        assert_eq!(workers.len(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            workers.spawn(async move {
                let name = std::thread::current().name().map(str::to_string);
                tx.send((worker_index(), name)).unwrap();
            });
        }
        let mut got: Vec<_> = (0..4)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        got.sort();
        let expected = |i: usize| (Some(i), Some(format!("test-worker-{i}")));
        assert_eq!(got, [expected(0), expected(0), expected(1), expected(1)]);
        assert_eq!(worker_index(), None, "not a worker thread");
    }
}
