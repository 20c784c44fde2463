//! The raw TCP proxy: bytes both ways, half-close passed on, and (on a
//! Record node) each connection recorded as one session of ordered chunks.
//!
//! Each direction is one loop: read up to 64 KiB, write it to the other
//! side, keep a copy for the session while under `record.max_body_bytes`.
//! When one side stops sending, the other side's write half is shut down,
//! so request/response protocols that use half-close keep working.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::{counter, gauge};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, debug_span, warn, Instrument};

use crate::downstream::TcpTarget;
use crate::metrics as m;
use crate::record::recorder::Recorder;
use crate::record::{Body, Exchange, Record, TcpChunk, TcpSession};
use crate::server::{Listener, LogLimiter, LOG_EVERY};
use crate::tls::{Stream, TlsAcceptor};

const BUFFER: usize = 64 << 10;

#[derive(Clone)]
pub struct TcpProxy {
    downstream: TcpTarget,
    acceptor: Option<TlsAcceptor>,
    recorder: Option<Recorder>,
    /// `tcp.service`, stored in each record.
    service: Option<Arc<str>>,
    /// One warning per [`LOG_EVERY`] about a downstream that cannot be reached.
    failures: Arc<Mutex<LogLimiter>>,
}

/// The session being captured, shared by the two directions.
struct Tape {
    started: Instant,
    limit: usize,
    kept: usize,
    truncated: bool,
    chunks: Vec<TcpChunk>,
    client_bytes: u64,
    server_bytes: u64,
}

impl Tape {
    fn new(limit: usize) -> Tape {
        Tape {
            started: Instant::now(),
            limit,
            kept: 0,
            truncated: false,
            chunks: Vec::new(),
            client_bytes: 0,
            server_bytes: 0,
        }
    }

    fn push(&mut self, from_client: bool, data: &[u8]) {
        if from_client {
            self.client_bytes += data.len() as u64;
        } else {
            self.server_bytes += data.len() as u64;
        }
        if self.truncated || self.kept + data.len() > self.limit {
            self.truncated = true;
            return;
        }
        self.kept += data.len();
        self.chunks.push(TcpChunk {
            from_client,
            at_us: self.started.elapsed().as_micros() as u64,
            data: Body(Bytes::copy_from_slice(data)),
        });
    }
}

impl TcpProxy {
    /// A proxy to `downstream`; with `acceptor` clients speak TLS to it,
    /// with a recorder every connection is recorded (in plaintext).
    pub fn new(
        downstream: TcpTarget,
        acceptor: Option<TlsAcceptor>,
        recorder: Option<Recorder>,
    ) -> TcpProxy {
        counter!(m::TCP_ERRORS_TOTAL).increment(0);
        if let Some(recorder) = &recorder {
            recorder.counts(crate::record::Protocol::Tcp);
        }
        TcpProxy {
            downstream,
            acceptor,
            recorder,
            service: None,
            failures: Arc::new(Mutex::new(LogLimiter::new(LOG_EVERY))),
        }
    }

    /// The service this listener fronts, stored in each session's record.
    pub fn with_service(mut self, service: Option<&str>) -> TcpProxy {
        self.service = service.map(Arc::from);
        self
    }

    /// Accepts until `shutdown`, then gives open connections `grace`.
    pub async fn serve(self, mut listener: Listener, shutdown: CancellationToken, grace: Duration) {
        let tracker = TaskTracker::new();
        while let Some((client, addr, permit)) = listener.accept(&shutdown).await {
            let proxy = self.clone();
            let stop = shutdown.clone();
            let span = debug_span!("conn", listener = "tcp", client.addr = %addr);
            tracker.spawn(
                async move {
                    gauge!(m::TCP_ACTIVE_CONNECTIONS).increment(1.0);
                    tokio::select! {
                        _ = proxy.handle(client, addr) => {}
                        _ = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {}
                    }
                    gauge!(m::TCP_ACTIVE_CONNECTIONS).decrement(1.0);
                    drop(permit);
                }
                .instrument(span),
            );
        }
        drop(listener);
        tracker.close();
        tracker.wait().await;
    }

    async fn handle(&self, client: TcpStream, addr: SocketAddr) {
        let _ = client.set_nodelay(true);
        counter!(m::TCP_CONNECTIONS_TOTAL).increment(1);
        let client = match &self.acceptor {
            Some(acceptor) => match crate::tls::accept(acceptor, client).await {
                Ok(tls) => tls,
                Err(e) => return crate::tls::handshake_failed("tcp", addr, &e),
            },
            None => Stream::Plain(client),
        };
        let tape = self
            .recorder
            .as_ref()
            .map(|r| Arc::new(Mutex::new(Tape::new(r.max_body_bytes()))));
        let captured_at_ms = crate::clock::now_ms();
        let started = Instant::now();
        let server = match self.downstream.connect().await {
            Ok(server) => server,
            Err(e) => {
                let held = self
                    .failures
                    .lock()
                    .map_or(None, |mut l| l.allow(Instant::now()));
                if let Some(held) = held {
                    warn!(listener = "tcp", client = %addr, error = %e,
                        failed_since_last_line = held,
                        "downstream {} cannot be reached; closing the connection", self.downstream);
                }
                let error = format!("downstream {}: {e}", self.downstream);
                return self.finish(addr, captured_at_ms, started, tape, Some(error), "error");
            }
        };
        let (client_read, client_write) = tokio::io::split(client);
        let (server_read, server_write) = tokio::io::split(server);
        let first_eof = AtomicU8::new(0);
        let upstream = pump(client_read, server_write, true, tape.clone(), &first_eof);
        let downstream = pump(server_read, client_write, false, tape.clone(), &first_eof);
        let (up, down) = tokio::join!(upstream, downstream);
        let (error, closed_by) = match (up, down) {
            (Err(e), _) | (_, Err(e)) => (Some(e), "error"),
            _ if first_eof.load(Ordering::Relaxed) == 2 => (None, "server"),
            _ => (None, "client"),
        };
        self.finish(addr, captured_at_ms, started, tape, error, closed_by);
    }

    fn finish(
        &self,
        addr: SocketAddr,
        captured_at_ms: u64,
        started: Instant,
        tape: Option<Arc<Mutex<Tape>>>,
        error: Option<String>,
        closed_by: &str,
    ) {
        if let Some(e) = &error {
            debug!(client = %addr, error = %e, "tcp session ended with an error");
            counter!(m::TCP_ERRORS_TOTAL).increment(1);
        }
        let (Some(recorder), Some(tape)) = (&self.recorder, tape) else {
            return;
        };
        let tape = std::mem::replace(&mut *tape.lock().expect("tape lock"), Tape::new(0));
        let record = Record {
            id: None,
            shard: 0,
            captured_at_ms,
            duration_us: started.elapsed().as_micros() as u64,
            client_addr: addr.to_string(),
            error,
            service: self.service.as_deref().map(str::to_owned),
            exchange: Exchange::Tcp(TcpSession {
                downstream: self.downstream.to_string(),
                chunks: tape.chunks,
                client_bytes: tape.client_bytes,
                server_bytes: tape.server_bytes,
                truncated: tape.truncated,
                closed_by: closed_by.to_string(),
            }),
        };
        recorder.submit_record(record, addr.ip());
    }
}

/// Copies one direction until EOF, then shuts the other side's write half
/// (half-close). `first_eof` learns which side stopped sending first:
/// 1 the client, 2 the server.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    from_client: bool,
    tape: Option<Arc<Mutex<Tape>>>,
    first_eof: &AtomicU8,
) -> Result<(), String> {
    let mut buf = vec![0u8; BUFFER];
    let (side, other) = if from_client {
        ("client", "server")
    } else {
        ("server", "client")
    };
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: a plain close
            // here, as most TLS stacks treat it.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(format!("reading from the {side}: {e}")),
        };
        if n == 0 {
            let _ = first_eof.compare_exchange(
                0,
                if from_client { 1 } else { 2 },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            let _ = to.shutdown().await;
            return Ok(());
        }
        if let Some(tape) = &tape {
            tape.lock().expect("tape lock").push(from_client, &buf[..n]);
        }
        to.write_all(&buf[..n])
            .await
            .map_err(|e| format!("writing to the {other}: {e}"))?;
    }
}
