//! A fake downstream that keeps every request and answers a digest of it:
//! served by hyper, or by a small hand-written HTTP/1.1 server
//! ([`FakeDownstream::start_wire`]) for what hyper's server will not do
//! (chunked answers on demand, `Connection: close` after N answers, a
//! connection dropped with pipelined requests unanswered).

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request as a downstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// POSTs `/<tag>/<i>` for i in 0..n to `proxy` from one client connection,
/// in order, each answered 200.
pub async fn send_posts(proxy: SocketAddr, n: usize, tag: &str) {
    let mut conn = ClientConn::connect("127.0.0.1".parse().unwrap(), proxy).await;
    for i in 0..n {
        let req = Request::post(format!("/{tag}/{i}"))
            .header("host", "zone-a")
            .body(Full::new(Bytes::from(format!("body {tag} {i}"))))
            .unwrap();
        let (status, _, _) = conn.send(req).await;
        assert_eq!(status, StatusCode::OK);
    }
}

/// An HTTP server that keeps every request and answers a JSON digest of it,
/// so two such servers answer the same request the same way.
pub struct FakeDownstream {
    pub addr: SocketAddr,
    tls: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// When set, every request is answered this status and not kept, like a
    /// gateway whose service is down.
    forced: Arc<std::sync::atomic::AtomicU16>,
    /// Wire mode: the requests read and never answered at each dropped
    /// connection, in the order they came.
    held: Arc<Mutex<Vec<Vec<Seen>>>>,
    /// Wire mode: the most requests found complete in one read.
    max_pipelined: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// How [`FakeDownstream::start_wire`] answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wire {
    /// Bodies in chunked coding (two chunks) instead of `Content-Length`.
    pub chunked: bool,
    /// The Nth answer on each connection says `Connection: close`, and the
    /// connection is closed after it (requests sent after it are read and
    /// dropped, never processed).
    pub close_after: Option<usize>,
    /// After this many answers on a connection, requests are read and kept
    /// (they count as seen: the service had them) but not answered, until
    /// none has come for 200 ms (so every byte the client wrote was read);
    /// then the connection is dropped.
    pub break_after: Option<usize>,
}

impl FakeDownstream {
    pub async fn start() -> FakeDownstream {
        FakeDownstream::start_with_delay(Duration::ZERO).await
    }

    /// Each answer waits `delay` first, like a service doing real work.
    pub async fn start_with_delay(delay: Duration) -> FakeDownstream {
        FakeDownstream::serve(delay, None).await
    }

    /// The same over HTTPS with `acceptor`'s certificate.
    pub async fn start_tls(acceptor: qproxy::tls::TlsAcceptor) -> FakeDownstream {
        FakeDownstream::serve(Duration::ZERO, Some(acceptor)).await
    }

    /// The same on a given address (a port chosen before it is served).
    pub async fn start_on(addr: SocketAddr) -> FakeDownstream {
        FakeDownstream::serve_on(addr, Duration::ZERO, None).await
    }

    async fn serve(delay: Duration, tls: Option<qproxy::tls::TlsAcceptor>) -> FakeDownstream {
        FakeDownstream::serve_on("127.0.0.1:0".parse().unwrap(), delay, tls).await
    }

    async fn serve_on(
        addr: SocketAddr,
        delay: Duration,
        tls: Option<qproxy::tls::TlsAcceptor>,
    ) -> FakeDownstream {
        let is_tls = tls.is_some();
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let store = seen.clone();
        let forced: Arc<std::sync::atomic::AtomicU16> = Arc::default();
        let forced_status = forced.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let store = store.clone();
                let tls = tls.clone();
                let forced = forced_status.clone();
                tokio::spawn(async move {
                    let stream = match &tls {
                        Some(acceptor) => match qproxy::tls::accept(acceptor, stream).await {
                            Ok(stream) => stream,
                            Err(_) => return,
                        },
                        None => qproxy::tls::Stream::Plain(stream),
                    };
                    let service = service_fn(move |req: Request<Incoming>| {
                        let store = store.clone();
                        let forced = forced.load(std::sync::atomic::Ordering::SeqCst);
                        async move {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            if forced != 0 {
                                let mut response = Response::new(Full::new(Bytes::new()));
                                *response.status_mut() = StatusCode::from_u16(forced).unwrap();
                                return Ok::<_, Infallible>(response);
                            }
                            Ok::<_, Infallible>(answer(req, &store).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeDownstream {
            addr,
            tls: is_tls,
            seen,
            forced,
            held: Arc::default(),
            max_pipelined: Arc::default(),
            task,
        }
    }

    /// Served by a hand-written HTTP/1.1 server that answers as the hyper
    /// one does (same digest, same `X-Test-Status`), with `wire`'s faults.
    pub async fn start_wire(wire: Wire) -> FakeDownstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let held: Arc<Mutex<Vec<Vec<Seen>>>> = Arc::default();
        let max_pipelined: Arc<AtomicUsize> = Arc::default();
        let (s, h, m) = (seen.clone(), held.clone(), max_pipelined.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_wire(stream, wire, s.clone(), h.clone(), m.clone()));
            }
        });
        FakeDownstream {
            addr,
            tls: false,
            seen,
            forced: Arc::default(),
            held,
            max_pipelined,
            task,
        }
    }

    /// Wire mode: the requests held unanswered at each dropped connection.
    pub fn held(&self) -> Vec<Vec<Seen>> {
        self.held.lock().unwrap().clone()
    }

    /// Wire mode: the most requests that had arrived together, complete.
    pub fn max_pipelined(&self) -> usize {
        self.max_pipelined.load(AtomicOrdering::SeqCst)
    }

    /// Answers every request with `status` (not kept) until called with None.
    pub fn answer_with(&self, status: Option<u16>) {
        self.forced
            .store(status.unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for FakeDownstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What both servers answer to a request: its status and JSON digest.
fn digest(method: &str, uri: &str, headers: &HeaderMap, body: &[u8]) -> (u16, String) {
    let digest = serde_json::json!({
        "method": method,
        "uri": uri,
        "len": body.len(),
        "sum": fnv(body),
    });
    let status = headers
        .get("x-test-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .unwrap_or(200);
    (status, digest.to_string())
}

/// One connection of the hand-written server.
async fn serve_wire(
    mut stream: TcpStream,
    wire: Wire,
    store: Arc<Mutex<Vec<Seen>>>,
    held: Arc<Mutex<Vec<Vec<Seen>>>>,
    max_pipelined: Arc<AtomicUsize>,
) {
    let mut buf = bytes::BytesMut::with_capacity(64 << 10);
    let mut answered = 0usize;
    let mut unanswered: Vec<Seen> = Vec::new();
    loop {
        let mut ready = Vec::new();
        while let Some(seen) = read_request(&mut buf) {
            ready.push(seen);
        }
        max_pipelined.fetch_max(ready.len(), AtomicOrdering::SeqCst);
        let mut out = Vec::new();
        for seen in ready {
            if wire.break_after.is_some_and(|n| answered >= n) {
                unanswered.push(seen);
                continue;
            }
            let (status, body) = digest(&seen.method, &seen.uri, &seen.headers, &seen.body);
            store.lock().unwrap().push(seen);
            answered += 1;
            let close = wire.close_after == Some(answered);
            out.extend_from_slice(
                format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n").as_bytes(),
            );
            if close {
                out.extend_from_slice(b"connection: close\r\n");
            }
            if wire.chunked {
                let (a, b) = body.split_at(body.len() / 2);
                out.extend_from_slice(
                    format!(
                        "transfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
                        a.len(),
                        b.len()
                    )
                    .as_bytes(),
                );
            } else {
                out.extend_from_slice(
                    format!("content-length: {}\r\n\r\n{body}", body.len()).as_bytes(),
                );
            }
            if close {
                let _ = stream.write_all(&out).await;
                // Lingering close: what comes after is read and dropped, so
                // the answers already sent are not reset away.
                let _ = stream.shutdown().await;
                let mut sink = [0u8; 16 << 10];
                let until = tokio::time::Instant::now() + Duration::from_secs(2);
                while let Ok(Ok(n)) = tokio::time::timeout_at(until, stream.read(&mut sink)).await {
                    if n == 0 {
                        break;
                    }
                }
                return;
            }
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
        let holding = !unanswered.is_empty();
        let read = if holding {
            match tokio::time::timeout(Duration::from_millis(200), stream.read_buf(&mut buf)).await
            {
                Ok(read) => read,
                Err(_) => return drop_held(&store, &held, unanswered),
            }
        } else {
            stream.read_buf(&mut buf).await
        };
        match read {
            Ok(0) | Err(_) if holding => return drop_held(&store, &held, unanswered),
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The service had these requests; their connection goes without answers.
fn drop_held(store: &Mutex<Vec<Seen>>, held: &Mutex<Vec<Vec<Seen>>>, unanswered: Vec<Seen>) {
    store.lock().unwrap().extend(unanswered.iter().cloned());
    held.lock().unwrap().push(unanswered);
}

/// One whole request (`Content-Length` bodies only) off the front of `buf`.
fn read_request(buf: &mut bytes::BytesMut) -> Option<Seen> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req
        .parse(buf)
        .expect("the replay client sends valid HTTP/1.1")
    {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return None,
    };
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        headers.append(
            http::HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(h.value).unwrap(),
        );
    }
    assert!(
        !headers.contains_key("transfer-encoding"),
        "replays are sent with Content-Length"
    );
    let body_len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
    if buf.len() < len + body_len {
        return None;
    }
    let method = req.method.unwrap().to_string();
    let uri = req.path.unwrap().to_string();
    let mut whole = buf.split_to(len + body_len);
    let body = whole.split_off(len).freeze();
    Some(Seen {
        method,
        uri,
        headers,
        body,
    })
}

async fn answer(req: Request<Incoming>, store: &Mutex<Vec<Seen>>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let (status, digest) = digest(
        parts.method.as_str(),
        &parts.uri.to_string(),
        &parts.headers,
        &body,
    );
    store.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body,
    });
    let mut response = Response::new(Full::new(Bytes::from(digest)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
