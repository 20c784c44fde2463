//! A fake downstream that keeps every request and answers a digest of it.

use super::*;

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
    task: tokio::task::JoinHandle<()>,
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
            task,
        }
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

async fn answer(req: Request<Incoming>, store: &Mutex<Vec<Seen>>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let digest = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "len": body.len(),
        "sum": fnv(&body),
    });
    let status = parts
        .headers
        .get("x-test-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .unwrap_or(200);
    store.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body,
    });
    let mut response = Response::new(Full::new(Bytes::from(digest.to_string())));
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
