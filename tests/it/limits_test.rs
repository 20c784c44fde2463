//! Clients that hold connections and send nothing, or almost nothing: they
//! are timed out, a flood of them is refused and counted, and the API keeps
//! answering through it.

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    self, eventually, free_port, get_json, get_text, FakeDownstream, NodeProcess,
};

/// A proxy-only Record node (nothing recorded) to `downstream`, with `http`
/// merged into its `http` section.
fn proxy_config(downstream: &str, dir: &std::path::Path, http: Value) -> Value {
    let mut config = support::record_config(
        downstream,
        1,
        &support::StoreChoice::Embedded(dir.to_owned()),
    );
    config["record"] = json!({"enabled": false});
    for (key, value) in http.as_object().expect("an object") {
        config["http"][key] = value.clone();
    }
    config
}

/// Everything the server sends until it closes the connection (or resets
/// it); panics if it is still open after `deadline`.
async fn read_until_closed(stream: &mut TcpStream, deadline: Duration) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(deadline, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(
        read.is_ok(),
        "the node did not close the connection within {deadline:?}; it sent {got:?}"
    );
    got
}

/// Opens `n` plain connections that send nothing, non-blocking so that
/// [`closed_count`] can look at them.
fn idle_connections(to: SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|i| {
            let stream = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("idle connection {i} to {to}: {e}"));
            stream.set_nonblocking(true).unwrap();
            stream
        })
        .collect()
}

/// How many of `streams` the other side has closed (EOF or reset).
fn closed_count(streams: &[std::net::TcpStream]) -> usize {
    let mut buf = [0u8; 64];
    streams
        .iter()
        .filter(|&(mut s)| match s.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        })
        .count()
}

/// The value of `name{listener="…"}` on a `/metrics` page, 0 when absent.
fn metric(page: &str, name: &str, listener: &str) -> f64 {
    let prefix = format!("{name}{{listener=\"{listener}\"}} ");
    page.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn health_answers(api: SocketAddr) -> Option<()> {
    let response = support::client()
        .request(
            Request::get(format!("http://{api}/health"))
                .body(Full::<Bytes>::default())
                .ok()?,
        )
        .await
        .ok()?;
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .ok()?
        .to_bytes();
    let health: Value = serde_json::from_slice(&body).ok()?;
    let answered = matches!(status, StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE)
        && health["status"].is_string();
    answered.then_some(())
}

async fn proxy_answers(proxy: SocketAddr) -> Option<()> {
    let response = support::client()
        .request(
            Request::get(format!("http://{proxy}/after"))
                .body(Full::<Bytes>::default())
                .ok()?,
        )
        .await
        .ok()?;
    (response.status() == StatusCode::OK).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(proxy_config(
        &downstream.url(),
        dir.path(),
        json!({"header_timeout_ms": 300}),
    ))
    .await;
    let proxy = node.http_addr.unwrap();

    let mut silent = TcpStream::connect(proxy).await.unwrap();
    let said = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    assert_eq!(said, "", "a silent connection is closed without an answer");

    // A head begun but never finished is cut off as well.
    let mut slow = TcpStream::connect(proxy).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    read_until_closed(&mut slow, Duration::from_secs(10)).await;

    // Clients that send their request are served as before.
    proxy_answers(proxy)
        .await
        .expect("a prompt client is served");
    assert_eq!(
        downstream.count(),
        1,
        "only the prompt request reached the downstream"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(proxy_config(
        &downstream.url(),
        dir.path(),
        json!({"header_timeout_ms": 60000, "idle_timeout_ms": 300}),
    ))
    .await;
    let proxy = node.http_addr.unwrap();

    let mut conn = TcpStream::connect(proxy).await.unwrap();
    conn.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let said = read_until_closed(&mut conn, Duration::from_secs(10)).await;
    assert!(
        said.starts_with("HTTP/1.1 200"),
        "answered, then closed once idle: {said:?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_test_a_stalled_request_body_gets_408_and_others_are_served() {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(proxy_config(
        &downstream.url(),
        dir.path(),
        json!({"body_timeout_ms": 300}),
    ))
    .await;
    let proxy = node.http_addr.unwrap();

    let mut stalled = TcpStream::connect(proxy).await.unwrap();
    stalled
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nA")
        .await
        .unwrap();
    let said = read_until_closed(&mut stalled, Duration::from_secs(10)).await;
    assert!(
        said.starts_with("HTTP/1.1 408"),
        "a body that stalls is answered 408, then the connection closes: {said:?}"
    );
    assert!(
        said.contains("request body"),
        "the answer says why: {said:?}"
    );

    proxy_answers(proxy)
        .await
        .expect("other clients are served");
    let page = get_text(&format!("http://{}/metrics", node.api_addr)).await;
    assert!(
        page.contains(r#"http_errors_total{kind="timeout"}"#),
        "the timeout is counted:\n{page}"
    );
    node.stop().await;
}

/// A body that trickles (a byte every 100 ms, never a gap of
/// `body_timeout_ms`) is cut once it averages below `http.body_min_rate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_test_a_trickling_request_body_gets_408() {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(proxy_config(
        &downstream.url(),
        dir.path(),
        json!({"body_timeout_ms": 300, "body_min_rate": 500}),
    ))
    .await;
    let proxy = node.http_addr.unwrap();

    let conn = TcpStream::connect(proxy).await.unwrap();
    let (mut reader, mut writer) = conn.into_split();
    writer
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if writer.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut got)).await;
    trickle.abort();
    let said = String::from_utf8_lossy(&got);
    assert!(
        said.starts_with("HTTP/1.1 408"),
        "a trickling body is answered 408: {said:?}"
    );
    assert!(
        said.contains("bytes a second"),
        "the answer says why: {said:?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_test_connections_over_max_connections_are_refused_and_counted() {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(proxy_config(
        &downstream.url(),
        dir.path(),
        json!({"max_connections": 20, "header_timeout_ms": 60000}),
    ))
    .await;
    let (proxy, api) = (node.http_addr.unwrap(), node.api_addr);
    let before = metric(
        &get_text(&format!("http://{api}/metrics")).await,
        "qproxy_connections_refused_total",
        "http",
    );

    let idle = idle_connections(proxy, 50);
    let closed = eventually("30 connections refused", Duration::from_secs(10), || {
        let closed = closed_count(&idle);
        async move { (closed >= 30).then_some(closed) }
    })
    .await;
    assert_eq!(closed, 30, "the first 20 are held, the other 30 refused");
    eventually("/health answers", Duration::from_secs(10), || {
        health_answers(api)
    })
    .await;
    let page = get_text(&format!("http://{api}/metrics")).await;
    let refused = metric(&page, "qproxy_connections_refused_total", "http") - before;
    assert!(
        refused >= 30.0,
        "refused connections are counted: {refused}\n{page}"
    );

    drop(idle);
    eventually(
        "the proxy serves once the idle ones left",
        Duration::from_secs(10),
        || proxy_answers(proxy),
    )
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_test_a_flood_under_a_low_fd_limit_leaves_health_answering() {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy_port, api_port) = (free_port(), free_port());
    let mut config = proxy_config(&downstream.url(), dir.path(), json!({"port": proxy_port}));
    config["api"]["port"] = json!(api_port);
    config["logging"] = json!({"level": "info"});
    let node = NodeProcess::spawn_with_fd_limit(&config, dir.path(), "flooded", (128, 256));
    let proxy: SocketAddr = ([127, 0, 0, 1], proxy_port).into();
    let api: SocketAddr = ([127, 0, 0, 1], api_port).into();
    eventually("the node is up", Duration::from_secs(20), || {
        health_answers(api)
    })
    .await;

    let flood = idle_connections(proxy, 400);
    eventually(
        "refused connections are closed",
        Duration::from_secs(10),
        || {
            let closed = closed_count(&flood);
            async move { (closed > 0).then_some(()) }
        },
    )
    .await;
    for _ in 0..5 {
        eventually(
            "/health answers during the flood",
            Duration::from_secs(10),
            || health_answers(api),
        )
        .await;
    }
    let (status, _) = get_json(&format!("http://{api}/api/status")).await;
    assert_eq!(status, StatusCode::OK);
    let page = get_text(&format!("http://{api}/metrics")).await;
    assert!(
        metric(&page, "qproxy_connections_refused_total", "http") > 0.0,
        "the flood is counted:\n{page}"
    );

    let log = node.log();
    assert!(
        log.contains("raised the open file limit from 128 to 256"),
        "the soft limit is raised to the hard one:\n{log}"
    );
    assert!(
        log.contains("http.max_connections lowered"),
        "the node says it lowered the proxy's limit to fit 256 files:\n{log}"
    );
    let accept_lines = log.lines().filter(|l| l.contains("accept")).count();
    assert!(
        accept_lines < 20,
        "{accept_lines} lines about accept:\n{log}"
    );
    drop(flood);
}

/// Reads one response (head and `Content-Length` body) from `stream`;
/// panics if it does not come within 10 s.
async fn read_response(stream: &mut TcpStream) -> String {
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.expect("the connection is open");
            assert!(
                n > 0,
                "closed mid-response after {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            let Some(head_end) = text.find("\r\n\r\n") else {
                continue;
            };
            let length: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().unwrap())
                })
                .expect("the proxy answers with a Content-Length");
            if got.len() >= head_end + 4 + length {
                return text;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response within 10 s")
}

/// `qproxy_parked_connections{listener="http"}` from `api`.
async fn parked(api: SocketAddr) -> f64 {
    let page = get_text(&format!("http://{api}/metrics")).await;
    metric(&page, "qproxy_parked_connections", "http")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_test_idle_keep_alive_connections_are_parked_and_keep_serving() {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy_port, api_port) = (free_port(), free_port());
    let mut config = proxy_config(&downstream.url(), dir.path(), json!({"port": proxy_port}));
    config["api"]["port"] = json!(api_port);
    // A process of its own: the gauge counts this node's connections only.
    let _node = NodeProcess::spawn(&config, dir.path(), "parking");
    let proxy: SocketAddr = ([127, 0, 0, 1], proxy_port).into();
    let api: SocketAddr = ([127, 0, 0, 1], api_port).into();
    eventually("the node is up", Duration::from_secs(20), || {
        health_answers(api)
    })
    .await;

    let mut conns = Vec::new();
    for i in 0..3 {
        let mut conn = TcpStream::connect(proxy).await.unwrap();
        conn.write_all(format!("GET /a{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let said = read_response(&mut conn).await;
        assert!(said.starts_with("HTTP/1.1 200"), "{said:?}");
        conns.push(conn);
    }
    eventually(
        "the three idle connections parked",
        Duration::from_secs(10),
        || async { (parked(api).await == 3.0).then_some(()) },
    )
    .await;

    // A parked connection serves its next request on the same socket.
    conns[1]
        .write_all(b"GET /b1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let said = read_response(&mut conns[1]).await;
    assert!(said.starts_with("HTTP/1.1 200"), "{said:?}");

    // A request and the start of the next in one write, then a pause long
    // enough for the connection to be let go of while the second head is
    // half read: the half read is kept and completed.
    conns[0]
        .write_all(b"GET /b0 HTTP/1.1\r\nHost: x\r\n\r\nGET /c0 HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let said = read_response(&mut conns[0]).await;
    assert!(said.starts_with("HTTP/1.1 200"), "{said:?}");
    tokio::time::sleep(qproxy::server::PARK_AFTER * 5).await;
    conns[0].write_all(b"st: x\r\n\r\n").await.unwrap();
    let said = read_response(&mut conns[0]).await;
    assert!(said.starts_with("HTTP/1.1 200"), "{said:?}");

    let mut paths: Vec<String> = downstream.seen().into_iter().map(|s| s.uri).collect();
    paths.sort();
    assert_eq!(paths, ["/a0", "/a1", "/a2", "/b0", "/b1", "/c0"]);
    eventually(
        "all three parked again",
        Duration::from_secs(10),
        || async { (parked(api).await == 3.0).then_some(()) },
    )
    .await;
    drop(conns);
    eventually(
        "closed connections are not counted",
        Duration::from_secs(10),
        || async { (parked(api).await == 0.0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_test_parked_connections_close_at_shutdown_without_waiting_for_the_grace() {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(proxy_config(&downstream.url(), dir.path(), json!({}))).await;
    let proxy = node.http_addr.unwrap();
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    conn.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut conn).await;
    tokio::time::sleep(qproxy::server::PARK_AFTER * 5).await;

    let grace = qproxy::node::SHUTDOWN_GRACE;
    tokio::time::timeout(grace / 2, node.stop())
        .await
        .expect("the node stops without waiting for its idle connection");
    let said = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    assert_eq!(said, "", "closed without another word");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_test_a_parked_connection_carries_a_body_and_closes_when_asked() {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = support::start_node(proxy_config(&downstream.url(), dir.path(), json!({}))).await;
    let proxy = node.http_addr.unwrap();
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    conn.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut conn).await;
    // Idle past the park, then a body in two writes, then a last request
    // that asks for the connection to be closed.
    tokio::time::sleep(qproxy::server::PARK_AFTER * 3).await;
    conn.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(qproxy::server::PARK_AFTER * 3).await;
    conn.write_all(b"world").await.unwrap();
    let said = read_response(&mut conn).await;
    assert!(said.starts_with("HTTP/1.1 200"), "{said:?}");
    tokio::time::sleep(qproxy::server::PARK_AFTER * 3).await;
    conn.write_all(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let said = read_until_closed(&mut conn, Duration::from_secs(10)).await;
    assert!(said.starts_with("HTTP/1.1 200"), "{said:?}");

    let seen = downstream.seen();
    let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(uris, ["/first", "/upload", "/last"]);
    assert_eq!(
        &seen[1].body[..],
        b"helloworld",
        "the body crossed the pause whole"
    );
    node.stop().await;
}
