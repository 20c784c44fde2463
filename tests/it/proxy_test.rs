//! The HTTP reverse proxy as a client and a downstream see it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{self, eventually, free_port, FakeDownstream, StoreChoice};

fn plain_proxy_config(downstream: &str, dir: &std::path::Path) -> serde_json::Value {
    let mut c = support::record_config(downstream, 1, &StoreChoice::Embedded(dir.to_path_buf()));
    c["record"] = json!({"enabled": false});
    c
}

#[tokio::test]
async fn forwards_method_path_query_headers_and_body() {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(plain_proxy_config(&downstream.url(), dir.path())).await;
    let proxy = node.http_addr.unwrap();

    let mut conn = support::ClientConn::connect("127.0.0.1".parse().unwrap(), proxy).await;
    let req = Request::builder()
        .method("PATCH")
        .uri("/a/b%20c?x=1&y=two")
        .header("host", "service.zone-a")
        .header("x-custom", "v1")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "10.9.9.9")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let (status, headers, body) = conn.send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["method"], "PATCH");
    assert_eq!(answer["len"], 7);

    let seen = downstream.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "PATCH");
    assert_eq!(s.uri, "/a/b%20c?x=1&y=two");
    assert_eq!(
        s.header("host"),
        Some("service.zone-a"),
        "the client's Host is kept"
    );
    assert_eq!(s.header("x-custom"), Some("v1"));
    assert_eq!(
        s.header("x-hop"),
        None,
        "headers named by Connection are hop-by-hop"
    );
    assert_eq!(s.header("keep-alive"), None);
    assert_eq!(s.header("x-forwarded-for"), Some("10.9.9.9, 127.0.0.1"));
    assert_eq!(&s.body[..], b"payload");

    // The same connection is reused for a second request (keep-alive).
    let (status, _, _) = conn
        .send(
            Request::get("/again")
                .header("host", "h")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(downstream.count(), 2);
    node.stop().await;
}

#[tokio::test]
async fn admin_paths_belong_to_the_proxied_application() {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(plain_proxy_config(&downstream.url(), dir.path())).await;
    let proxy = node.http_addr.unwrap();
    for path in ["/health", "/metrics", "/sync", "/api/status"] {
        let (status, body) = support::get_json(&format!("http://{proxy}{path}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["uri"], path, "{path} goes to the downstream");
    }
    node.stop().await;
}

#[tokio::test]
async fn unreachable_downstream_is_a_502_with_a_reason() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(plain_proxy_config(&dead, dir.path())).await;
    let proxy = node.http_addr.unwrap();
    let response = support::client()
        .request(
            Request::get(format!("http://{proxy}/x"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("refused"), "the reason is given: {text}");
    node.stop().await;
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(plain_proxy_config(&downstream.url(), dir.path())).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let url = format!("http://{}/h2?q=1", node.http_addr.unwrap());
    let response = client
        .request(
            Request::post(url)
                .body(Full::new(Bytes::from_static(b"over h2")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let seen = downstream.seen();
    assert_eq!(seen[0].uri, "/h2?q=1");
    assert_eq!(&seen[0].body[..], b"over h2");
    node.stop().await;
}

/// A downstream that counts request body bytes as they arrive.
async fn counting_downstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let counter = counter.clone();
                    async move {
                        let mut body = req.into_body();
                        while let Some(frame) = body.frame().await {
                            if let Some(data) = frame.unwrap().data_ref() {
                                counter.fetch_add(data.len(), Ordering::SeqCst);
                            }
                        }
                        let total = counter.load(Ordering::SeqCst);
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                            total.to_string(),
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

#[tokio::test]
async fn a_64_mib_upload_streams_through() {
    let (downstream, received) = counting_downstream().await;
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(plain_proxy_config(
        &format!("http://{downstream}"),
        dir.path(),
    ))
    .await;
    let proxy = node.http_addr.unwrap();

    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 64;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let body = StreamBody::new(tokio_stream_from(rx));
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{proxy}/upload"))
        .header("content-length", (CHUNK * CHUNKS).to_string())
        .body(body)
        .unwrap();
    let response = tokio::spawn(client.request(request));

    let chunk = Bytes::from(vec![0xabu8; CHUNK]);
    tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    // The downstream sees bytes while the client still holds 63 MiB back:
    // the proxy streams instead of buffering the whole upload.
    eventually(
        "first bytes reach the downstream",
        Duration::from_secs(10),
        || async { (received.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;
    assert!(received.load(Ordering::SeqCst) <= 2 * CHUNK);
    for _ in 1..CHUNKS {
        tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    }
    drop(tx);
    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body), (CHUNK * CHUNKS).to_string());
    node.stop().await;
}

/// An mpsc receiver as a `Stream`, without another dependency.
fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn http_workers_zero_one_or_several_all_proxy() {
    let downstream = FakeDownstream::start().await;
    for workers in [json!(0), json!(1), json!(3), json!(null)] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = plain_proxy_config(&downstream.url(), dir.path());
        config["http"]["workers"] = workers.clone();
        let node = support::start_node(config).await;
        for i in 0..4 {
            let (status, body) =
                support::get_json(&format!("http://{}/w/{i}", node.http_addr.unwrap())).await;
            assert_eq!(status, StatusCode::OK, "workers {workers}");
            assert_eq!(body["uri"], format!("/w/{i}"));
        }
        node.stop().await;
    }
    assert_eq!(downstream.count(), 16);
}

/// A node runs without transparent huge pages (less memory per idle
/// connection) unless `MIMALLOC_ALLOW_THP` asks for them.
#[tokio::test]
async fn huge_pages_are_off_unless_asked_for() {
    let downstream = FakeDownstream::start().await;
    for (allow, expected) in [(None, "0"), (Some("1"), "1")] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = plain_proxy_config(&downstream.url(), dir.path());
        let api = free_port();
        config["http"]["port"] = json!(free_port());
        config["api"] = json!({"host": "127.0.0.1", "port": api});
        let path = dir.path().join("node.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_qproxy"));
        command
            .arg("-c")
            .arg(&path)
            .stderr(std::process::Stdio::null());
        match allow {
            Some(value) => command.env("MIMALLOC_ALLOW_THP", value),
            None => command.env_remove("MIMALLOC_ALLOW_THP"),
        };
        let mut child = command.spawn().unwrap();
        eventually("the node listens", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", api))
                .await
                .ok()
        })
        .await;
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let thp = status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .expect("Linux ≥ 5.0 shows THP_enabled")
            .trim();
        assert_eq!(thp, expected, "MIMALLOC_ALLOW_THP={allow:?}");
    }
}

/// Writes `request` byte for byte to `proxy` and reads the answer until the
/// proxy closes (every request here says `Connection: close`).
async fn raw_exchange(proxy: SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // A reset after the answer (bytes of ours left unread) is fine.
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
    let _ = read.await.expect("the proxy answers and closes");
    String::from_utf8_lossy(&answer).into_owned()
}

/// `http_errors_total{kind}` from the node's `/metrics` (0 before the first).
async fn http_errors(api: SocketAddr, kind: &str) -> u64 {
    let response = support::client()
        .request(
            Request::get(format!("http://{api}/metrics"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let line = format!("http_errors_total{{kind=\"{kind}\"}} ");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&line)?.parse().ok())
        .unwrap_or(0)
}

/// RFC 9112 §3.2: a server answers 400 to an HTTP/1.1 request without
/// `Host` and to any request with more than one (or a malformed one).
#[tokio::test]
async fn host_is_required_once_on_http_1_1() {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(plain_proxy_config(&downstream.url(), dir.path())).await;
    let proxy = node.http_addr.unwrap();
    let before = http_errors(node.api_addr, "bad_request").await;
    for (request, says) in [
        (
            "GET /two HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
            "more than one Host header",
        ),
        (
            "GET /none HTTP/1.1\r\nConnection: close\r\n\r\n",
            "needs a Host header",
        ),
        (
            "GET /bad HTTP/1.1\r\nHost: a b/c\r\nConnection: close\r\n\r\n",
            "`a b/c` is not a host",
        ),
    ] {
        let answer = raw_exchange(proxy, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{request:?}: {answer}"
        );
        assert!(answer.contains(says), "{request:?}: {answer}");
    }
    assert_eq!(downstream.count(), 0, "nothing reached the downstream");
    assert!(http_errors(node.api_addr, "bad_request").await >= before + 3);

    // HTTP/1.0 may leave Host out.
    let answer = raw_exchange(proxy, "GET /old HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    assert_eq!(downstream.seen()[0].uri, "/old");
    node.stop().await;
}

/// A reverse proxy does not open tunnels.
#[tokio::test]
async fn connect_is_refused() {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(plain_proxy_config(&downstream.url(), dir.path())).await;
    let answer = raw_exchange(
        node.http_addr.unwrap(),
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("\r\nallow: get, "),
        "{answer}"
    );
    assert!(answer.contains("reverse proxy"), "{answer}");
    assert_eq!(downstream.count(), 0, "nothing reached the downstream");
    node.stop().await;
}

/// A chunked body that breaks the chunked coding is the client's mistake:
/// 400 and counted as a bad request, not a 502 blaming the downstream.
#[tokio::test]
async fn a_malformed_chunked_body_is_a_400() {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(plain_proxy_config(&downstream.url(), dir.path())).await;
    let before = http_errors(node.api_addr, "bad_request").await;
    let answer = raw_exchange(
        node.http_addr.unwrap(),
        "POST /chunks HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("request body"), "{answer}");
    assert!(!answer.contains("downstream"), "{answer}");
    assert!(http_errors(node.api_addr, "bad_request").await > before);
    assert!(
        downstream.seen().iter().all(|s| s.body.is_empty()),
        "no body reached the downstream"
    );
    node.stop().await;
}
