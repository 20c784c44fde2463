//! HTTP clients for the tests: one-shot helpers and a connection from a
//! chosen loopback address.

use super::*;

pub fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// GET a JSON document.
pub async fn get_json(url: &str) -> (StatusCode, Value) {
    let response = client()
        .request(Request::get(url).body(Full::default()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "GET {url}: not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, value)
}

/// GET as text (e.g. `/metrics`).
pub async fn get_text(url: &str) -> String {
    let response = client()
        .request(Request::get(url).body(Full::default()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Sends `body` as JSON with POST; returns status and JSON answer.
pub async fn post_json(url: &str, body: &Value) -> (StatusCode, Value) {
    post_raw(url, Bytes::from(body.to_string())).await
}

pub async fn post_raw(url: &str, body: Bytes) -> (StatusCode, Value) {
    let response = client()
        .request(
            Request::post(url)
                .header("content-type", "application/json")
                .body(Full::new(body))
                .unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A keep-alive HTTP/1.1 connection from a chosen loopback address.
pub struct ClientConn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    pub local: SocketAddr,
    /// `Host` for requests that name none, as every HTTP/1.1 client sends.
    host: http::HeaderValue,
}

impl ClientConn {
    pub async fn connect(from: IpAddr, to: SocketAddr) -> ClientConn {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let stream = socket.connect(to).await.unwrap();
        let local = stream.local_addr().unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let host = to.to_string().parse().unwrap();
        ClientConn { send, local, host }
    }

    pub async fn send(&mut self, mut req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
        if !req.headers().contains_key(http::header::HOST) {
            req.headers_mut()
                .insert(http::header::HOST, self.host.clone());
        }
        self.send.ready().await.unwrap();
        let response = self.send.send_request(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    }
}

/// Deterministic pseudo-random numbers for test traffic.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, len: usize) -> Bytes {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        Bytes::from(out)
    }
}

/// Replay ids per shard's checkpoint, from a Record node's `/api/status`.
pub async fn checkpoints(api: SocketAddr, peer: &str) -> HashMap<u64, String> {
    let (_, status) = get_json(&format!("http://{api}/api/status")).await;
    status["checkpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["peer_id"] == peer)
        .map(|c| {
            (
                c["shard"].as_u64().unwrap(),
                c["last_record_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
