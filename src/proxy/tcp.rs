//! The raw TCP proxy: bytes both ways, half-close passed on, and (on a
//! Record node) each connection recorded as one session of ordered chunks.
//!
//! Each direction is one loop: read up to 64 KiB, write it to the other
//! side, keep a copy for the session while under `record.max_body_bytes`.
//! When one side stops sending, the other side's write half is shut down,
//! so request/response protocols that use half-close keep working.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::{counter, gauge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::metrics as m;
use crate::record::recorder::Recorder;
use crate::record::{Body, Exchange, Record, TcpChunk, TcpSession};

const BUFFER: usize = 64 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct TcpProxy {
    downstream: Arc<str>,
    recorder: Option<Recorder>,
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
    pub fn new(downstream: String, recorder: Option<Recorder>) -> TcpProxy {
        TcpProxy {
            downstream: downstream.into(),
            recorder,
        }
    }

    /// Accepts until `shutdown`, then gives open connections `grace`.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken, grace: Duration) {
        let tracker = TaskTracker::new();
        loop {
            let (client, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        warn!(error = %e, "tcp accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let proxy = self.clone();
            let stop = shutdown.clone();
            tracker.spawn(async move {
                gauge!(m::TCP_ACTIVE_CONNECTIONS).increment(1.0);
                tokio::select! {
                    _ = proxy.handle(client, addr) => {}
                    _ = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {}
                }
                gauge!(m::TCP_ACTIVE_CONNECTIONS).decrement(1.0);
            });
        }
        drop(listener);
        tracker.close();
        tracker.wait().await;
    }

    async fn handle(&self, client: TcpStream, addr: SocketAddr) {
        let _ = client.set_nodelay(true);
        counter!(m::TCP_CONNECTIONS_TOTAL).increment(1);
        let tape = self
            .recorder
            .as_ref()
            .map(|r| Arc::new(Mutex::new(Tape::new(r.max_body_bytes()))));
        let captured_at_ms = crate::clock::now_ms();
        let started = Instant::now();
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&*self.downstream)).await;
        let server = match connected {
            Ok(Ok(server)) => server,
            Ok(Err(e)) => {
                return self.finish(
                    addr,
                    captured_at_ms,
                    started,
                    tape,
                    Some(format!("downstream {}: {e}", self.downstream)),
                    "error",
                )
            }
            Err(_) => {
                let error = format!(
                    "downstream {}: no connection within {CONNECT_TIMEOUT:?}",
                    self.downstream
                );
                return self.finish(addr, captured_at_ms, started, tape, Some(error), "error");
            }
        };
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
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
            exchange: Exchange::Tcp(TcpSession {
                downstream: self.downstream.to_string(),
                chunks: tape.chunks,
                client_bytes: tape.client_bytes,
                server_bytes: tape.server_bytes,
                truncated: tape.truncated,
                closed_by: closed_by.to_string(),
            }),
        };
        recorder.submit_record(record, addr.ip().to_string().as_bytes());
    }
}

/// Copies one direction until EOF, then shuts the other side's write half
/// (half-close). `first_eof` learns which side stopped sending first:
/// 1 the client, 2 the server.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
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
        let n = from
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading from the {side}: {e}"))?;
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
