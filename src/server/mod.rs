//! Serving HTTP (1.1 and h2c, or HTTPS with ALPN h2/http1.1) on a bound
//! listener until shutdown.
//!
//! Shared by the proxy listener and the API listener: accept stops at once
//! when the token is cancelled, open connections get `grace` to finish. A
//! client whose TLS handshake fails is logged and counted; the listener
//! goes on.
//!
//! A [`Listener`] holds a listener's connection limit: connections over
//! it are accepted and closed at once (counted), and accept errors (out of
//! file descriptors) back off instead of spinning. A new connection that
//! sends no complete request head within [`Timeouts::header`] is closed.
//!
//! A plaintext connection whose first bytes are HTTP/1.1 is served by
//! `http1`, which lets go of hyper's connection and its buffers while the
//! connection is idle ([`PARK_AFTER`]); TLS and HTTP/2 (h2c) connections are
//! served by hyper's auto connection for their whole life.
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
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, debug_span, warn, Instrument};

use crate::metrics as m;
use crate::tls::{Stream, TlsAcceptor};

mod http1;

pub use http1::PARK_AFTER;
use http1::{Activity, Answer, Ended, Limits, Speaks, Tracked};

/// The first pause after a failed accept; it doubles up to [`MAX_BACKOFF`]
/// while accepts keep failing.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one log line this often per listener about refused
/// connections, failed accepts, or a failing downstream: a flood must not
/// flood the log too.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// A bound listener with a limit on the connections it serves at once.
pub struct Listener {
    name: &'static str,
    inner: TcpListener,
    max_connections: usize,
    permits: Arc<Semaphore>,
    refused: metrics::Counter,
    refusals: LogLimiter,
    errors: metrics::Counter,
    failures: LogLimiter,
    backoff: Duration,
}

impl Listener {
    /// `name` labels its logs and metrics (`http`, `api`, `tcp`).
    pub fn new(name: &'static str, inner: TcpListener, max_connections: usize) -> Listener {
        Listener {
            name,
            inner,
            max_connections,
            permits: Arc::new(Semaphore::new(max_connections)),
            refused: metrics::counter!(m::CONNECTIONS_REFUSED_TOTAL, "listener" => name),
            refusals: LogLimiter::new(LOG_EVERY),
            errors: metrics::counter!(m::ACCEPT_ERRORS_TOTAL, "listener" => name),
            failures: LogLimiter::new(LOG_EVERY),
            backoff: FIRST_BACKOFF,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The next connection within the limit, with the permit it holds
    /// while open; `None` once `shutdown` is cancelled. Connections over
    /// the limit are closed at once: a client learns at once rather than
    /// waiting in the backlog, and the backlog keeps moving.
    pub async fn accept(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        loop {
            let accepted = tokio::select! {
                accepted = self.inner.accept() => accepted,
                _ = shutdown.cancelled() => return None,
            };
            match accepted {
                Ok((stream, client)) => {
                    self.backoff = FIRST_BACKOFF;
                    match self.permits.clone().try_acquire_owned() {
                        Ok(permit) => return Some((stream, client, permit)),
                        Err(_) => self.refuse(stream, client),
                    }
                }
                Err(e) => {
                    self.errors.increment(1);
                    if let Some(held) = self.failures.allow(Instant::now()) {
                        warn!(listener = self.name, error = %e, failed_since_last_line = held,
                            "accept failed; backing off (out of file descriptors? see `ulimit -n`)");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(self.backoff) => {}
                        _ = shutdown.cancelled() => return None,
                    }
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn refuse(&mut self, stream: TcpStream, client: SocketAddr) {
        self.refused.increment(1);
        if let Some(held) = self.refusals.allow(Instant::now()) {
            warn!(listener = self.name, client = %client, max_connections = self.max_connections,
                refused_since_last_line = held, "connection limit reached; refusing connections");
        }
        drop(stream);
    }
}

/// Lets one event through every `every`, and counts those held back: a
/// flood of the same failure logs a line now and then, with a count.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl LogLimiter {
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(events held back since the last one let through)` when this
    /// one may be logged.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

/// Connection limits for listeners of a node whose open file limit is
/// `fd_limit`, from the configured ones: the API listener gets at most an
/// eighth of the files, the proxy listeners together at most three
/// quarters less the API's share and 64 for the node's own files (store,
/// spool, logs, the MQTT link), shared in proportion to what they ask
/// for. The rest is left for downstream connections. Each result is at
/// least 1.
pub fn fit_to_fd_limit(
    fd_limit: u64,
    api: usize,
    proxies: &[Option<usize>],
) -> (usize, Vec<Option<usize>>) {
    let fd_limit = usize::try_from(fd_limit).unwrap_or(usize::MAX);
    let api = api.min(fd_limit / 8).max(1);
    let room = (fd_limit / 4 * 3).saturating_sub(api + 64).max(1);
    let asked: usize = proxies.iter().flatten().sum();
    let proxies = proxies
        .iter()
        .map(|wanted| {
            wanted.map(|n| match asked <= room {
                true => n,
                false => (n as u128 * room as u128 / asked as u128).max(1) as usize,
            })
        })
        .collect();
    (api, proxies)
}

/// How long a client may keep a connection without a request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From accept (the TLS handshake included) to the first complete
    /// request head.
    pub header: Duration,
    /// HTTP/1.1: from the end of a response to the next request head.
    /// HTTP/2: silence before a ping, which must be answered in 20 s.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}

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
    pub timeouts: Timeouts,
}

/// Called for each request with the client's address.
pub trait Handler<B>: Clone + Send + Sync + Unpin + 'static {
    fn call(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> impl Future<Output = Response<B>> + Send;
}

/// Serves `handler` on `listener` until `shutdown`; then drains for
/// `grace`.
pub async fn serve<H, B>(
    mut listener: Listener,
    handler: H,
    shutdown: CancellationToken,
    grace: Duration,
    options: Options,
) where
    H: Handler<B>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Options {
        tls,
        on_connection,
        workers,
        timeouts,
    } = options;
    let name = listener.name();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper restarts this timer whenever a connection waits for a request
    // head: after a response it is the keep-alive idle timeout.
    builder
        .http1()
        .keep_alive(true)
        .header_read_timeout(timeouts.idle)
        .timer(hyper_util::rt::TokioTimer::new());
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(timeouts.idle)
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    // Plaintext HTTP/1.1 is served by hyper's HTTP/1.1 connection directly,
    // with the same settings, so that an idle one can be parked.
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.keep_alive(true)
        .header_read_timeout(timeouts.idle)
        .timer(hyper_util::rt::TokioTimer::new());
    let h1 = Arc::new(h1);
    let graceful = GracefulShutdown::new();
    let timed_out = metrics::counter!(m::HEADER_TIMEOUTS_TOTAL, "listener" => name);
    let parked = metrics::gauge!(m::PARKED_CONNECTIONS, "listener" => name);
    parked.set(0.0);
    while let Some((stream, client, permit)) = listener.accept(&shutdown).await {
        let head_by = tokio::time::Instant::now() + timeouts.header;
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
        let head_seen = Arc::new(AtomicBool::new(false));
        let seen = head_seen.clone();
        let activity = Arc::new(Activity::default());
        let active = activity.clone();
        let service = service_fn(move |req| -> Answer<B> {
            seen.store(true, Ordering::Relaxed);
            let exchange = active.begin();
            let handler = handler.clone();
            Box::pin(async move {
                let response = handler.call(req, client).await;
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, exchange)))
            })
        });
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let h1 = h1.clone();
        let tls = tls.clone();
        let timed_out = timed_out.clone();
        let parked = parked.clone();
        let shutdown = shutdown.clone();
        let task = async move {
            let stream = match stream.register() {
                Ok(stream) => stream,
                Err(e) => {
                    warn!(listener = name, client = %client, error = %e, "cannot register the connection");
                    return;
                }
            };
            // The TLS and hyper auto paths are boxed, each built inside its
            // box (a value built out here would keep its room in this task
            // even after being moved): a parked plaintext connection's task
            // then holds nothing of theirs (~8 KiB inline otherwise).
            let ended = match &tls {
                Some(acceptor) => {
                    let served = Box::pin(async move {
                        let stream = match crate::tls::accept(acceptor, stream).await {
                            Ok(stream) => stream,
                            Err(e) => {
                                crate::tls::handshake_failed(name, client, &e);
                                return None;
                            }
                        };
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        let conn = watcher.watch(conn.into_owned());
                        Some(
                            counted(on_connection, until_first_head(conn, head_by, &head_seen))
                                .await,
                        )
                    });
                    match served.await {
                        Some(ended) => ended,
                        None => return,
                    }
                }
                None => {
                    let served = counted(on_connection, async {
                        let speaks = tokio::time::timeout_at(head_by, http1::sniff(&stream)).await;
                        match speaks {
                            Err(_) => Ended::NoHead,
                            Ok(Err(_) | Ok(Speaks::Nothing)) => Ended::Closed,
                            Ok(Ok(Speaks::Http1)) => {
                                let limits = Limits {
                                    first_head_by: head_by,
                                    head_seen: &head_seen,
                                    idle: timeouts.idle,
                                    shutdown: &shutdown,
                                    parked: &parked,
                                };
                                // Boxed too: the task and the box fit
                                // mimalloc's size classes better than one
                                // allocation (~0.4 KiB less a connection).
                                let served =
                                    Box::pin(http1::serve(stream, &h1, service, activity, limits));
                                let ended = served.await;
                                drop(watcher);
                                ended
                            }
                            Ok(Ok(Speaks::Http2OrUnsure)) => {
                                let served = Box::pin(async move {
                                    let io = TokioIo::new(Stream::Plain(stream));
                                    let conn = builder.serve_connection(io, service);
                                    let conn = watcher.watch(conn.into_owned());
                                    until_first_head(conn, head_by, &head_seen).await
                                });
                                served.await
                            }
                        }
                    });
                    served.await
                }
            };
            match ended {
                Ended::Closed => {}
                Ended::Failed(e) => {
                    debug!(listener = name, client = %client, error = %e, "connection ended with an error");
                }
                Ended::NoHead => {
                    timed_out.increment(1);
                    debug!(listener = name, client = %client, "no request head in time; connection closed");
                }
            }
            drop(permit);
        };
        // One span per connection: its log lines name the listener and
        // the client (debug level, so a busy proxy pays nothing by default).
        let task = task.instrument(debug_span!("conn", listener = name, client.addr = %client));
        match &workers {
            Some(workers) => workers.spawn(task),
            None => {
                tokio::spawn(task);
            }
        }
    }
    drop(listener);
    debug!(listener = name, "stopped accepting");
    tokio::select! {
        _ = graceful.shutdown() => debug!(listener = name, "all connections closed"),
        _ = tokio::time::sleep(grace) => warn!(listener = name, "connections still open after the grace period; closing them"),
    }
}

/// Runs `served` between `on_connection(1)` and `on_connection(-1)`.
async fn counted<F: Future>(on_connection: Option<fn(i64)>, served: F) -> F::Output {
    if let Some(f) = on_connection {
        f(1);
    }
    let ended = served.await;
    if let Some(f) = on_connection {
        f(-1);
    }
    ended
}

/// Runs `conn` to its end, or ends with [`Ended::NoHead`] when no request
/// head arrived by `deadline` (`seen` is set by the service): then the
/// connection is dropped, which closes it. The timer is not looked at again
/// once a head arrived, so a busy connection pays nothing for it.
async fn until_first_head<
    F: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
>(
    conn: F,
    deadline: tokio::time::Instant,
    seen: &AtomicBool,
) -> Ended {
    let mut conn = pin!(conn);
    let mut timer = pin!(tokio::time::sleep_until(deadline));
    let mut waiting = true;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = conn.as_mut().poll(cx) {
            return Poll::Ready(match done {
                Ok(()) => Ended::Closed,
                Err(e) => Ended::Failed(e.to_string()),
            });
        }
        if waiting {
            if seen.load(Ordering::Relaxed) {
                waiting = false;
            } else if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ended::NoHead);
            }
        }
        Poll::Pending
    })
    .await
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

    #[test]
    fn log_limiter_lets_one_through_per_period_and_counts_the_rest() {
        let mut limiter = LogLimiter::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(limiter.allow(at(0)), Some(0), "the first is logged");
        assert_eq!(limiter.allow(at(1)), None);
        assert_eq!(limiter.allow(at(9)), None);
        assert_eq!(
            limiter.allow(at(10)),
            Some(2),
            "then a summary of those held"
        );
        assert_eq!(limiter.allow(at(11)), None);
        assert_eq!(limiter.allow(at(60)), Some(1));
    }

    #[test]
    fn connection_limits_leave_room_for_the_api_and_downstreams() {
        // Plenty of files: what is configured.
        assert_eq!(
            fit_to_fd_limit(1 << 20, 1024, &[Some(10_000), None]),
            (1024, vec![Some(10_000), None])
        );
        // 256 files: the API keeps 32, the proxy gets 192 - 32 - 64.
        assert_eq!(
            fit_to_fd_limit(256, 1024, &[Some(10_000)]),
            (32, vec![Some(96)])
        );
        // Two proxy listeners share in proportion to what they ask for.
        assert_eq!(
            fit_to_fd_limit(1024, 1024, &[Some(3000), Some(1000)]),
            (128, vec![Some(432), Some(144)])
        );
        // Never 0, whatever the limit.
        assert_eq!(fit_to_fd_limit(8, 5, &[Some(5)]), (1, vec![Some(1)]));
    }
}
