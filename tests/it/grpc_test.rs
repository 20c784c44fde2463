//! The gRPC proxy with gRPC stacks this project did not write: tonic (with
//! a bytes codec, no .proto) and Python's grpcio, through a Record node to
//! zone A's server, replayed by a Playback node into zone B's.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{self, eventually, get_json, get_text, FakeDownstream, StoreChoice};
use crate::support::{
    python_grpc_call, Behaviour, CallOutcome, GrpcClient, GrpcServer, PythonGrpcServer,
};

/// A Record node whose gRPC listener sends calls to `downstreams`.
async fn record_node(
    downstreams: &[String],
    dir: &std::path::Path,
    grpc: Value,
) -> (qproxy::node::RunningNode, FakeDownstream) {
    let http = FakeDownstream::start().await;
    let mut config = support::record_config(&http.url(), 1, &StoreChoice::Embedded(dir.into()));
    config["grpc"] = json!({"host": "127.0.0.1", "port": 0, "downstream": downstreams});
    merge(&mut config["grpc"], grpc);
    (support::start_node(config).await, http)
}

/// A Playback node pulling from `record_api`, replaying gRPC calls to
/// `downstreams`.
async fn playback_node(
    record_api: SocketAddr,
    downstreams: &[String],
    dir: &std::path::Path,
) -> qproxy::node::RunningNode {
    let http = FakeDownstream::start().await;
    let mut config = support::playback_config(
        &http.url(),
        1,
        record_api,
        &StoreChoice::Embedded(dir.into()),
    );
    config["grpc"] = json!({"enabled": false, "port": 0, "downstream": downstreams});
    support::start_node(config).await
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

async fn replays(api: SocketAddr, n: usize) -> Vec<Value> {
    eventually(
        &format!("{n} replay results"),
        Duration::from_secs(30),
        || async {
            let (_, body) = get_json(&format!("http://{api}/api/replays?limit=1000")).await;
            let results = body["results"].as_array().cloned().unwrap_or_default();
            (results.len() >= n).then_some(results)
        },
    )
    .await
}

/// The stored records of shard 0, oldest first.
async fn records(api: SocketAddr, n: usize) -> Vec<Value> {
    eventually(
        &format!("{n} records stored"),
        Duration::from_secs(20),
        || async {
            let (_, page) = get_json(&format!(
                "http://{api}/sync?peer_id=check&shard_id=0&limit=10000"
            ))
            .await;
            let records = page["records"].as_array().cloned().unwrap_or_default();
            (records.len() >= n).then_some(records)
        },
    )
    .await
}

/// The value of the sample `series` (name and labels) in a scrape; 0 when
/// absent.
fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn text(outcome: &CallOutcome) -> Vec<String> {
    outcome.texts()
}

/// What a client sees of a call, less what differs between two servers.
fn seen(outcome: &CallOutcome) -> (i32, String, Vec<bytes::Bytes>, bytes::Bytes) {
    (
        outcome.code,
        outcome.message.clone(),
        outcome.messages.clone(),
        outcome.details.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_every_kind_of_call_is_proxied_recorded_and_replayed_matched() {
    let zone_a = GrpcServer::start("zone-a").await;
    let zone_b = GrpcServer::start("zone-b").await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (record, _http) = record_node(&[zone_a.addr().to_string()], dirs.0.path(), json!({})).await;
    let proxy = record.grpc_addr.expect("the record node serves grpc");
    let mut client = GrpcClient::connect(proxy).await;
    let mut direct = GrpcClient::connect(zone_a.addr()).await;

    let unary = client
        .unary_with("/test.Echo/Unary", b"hi", &[("x-user", "ada")], None)
        .await;
    assert_eq!(unary.code, 0, "{unary:?}");
    assert_eq!(text(&unary), ["echo:hi"]);
    assert_eq!(unary.header("x-served-by"), Some("zone-a"));
    assert_eq!(unary.trailer("x-trailer"), Some("t1"));
    let stream = client.server_stream("/test.Echo/ServerStream", b"3").await;
    assert_eq!(text(&stream), ["msg-0", "msg-1", "msg-2"]);
    let upload = client
        .client_stream("/test.Echo/ClientStream", &[b"a", b"b", b"c"])
        .await;
    assert_eq!(text(&upload), ["3:a|b|c"]);
    let chat = client.bidi("/test.Echo/Bidi", &[b"x", b"y", b"z"]).await;
    assert_eq!(text(&chat), ["re:x", "re:y", "re:z"]);
    let failed = client.unary("/test.Echo/Fail", b"5:not here").await;
    assert_eq!(
        seen(&failed),
        seen(&direct.unary("/test.Echo/Fail", b"5:not here").await),
        "an error status passes through with its message and details"
    );
    assert_eq!(failed.code, 5);
    assert_eq!(&failed.details[..], b"details-for-5");
    assert_eq!(failed.trailer("x-why"), Some("because"));
    let big = client.unary("/test.Echo/Big", b"3145728").await;
    assert_eq!(big.code, 0);
    assert_eq!(big.messages[0].len(), 3 << 20);
    assert_eq!(
        big.messages,
        direct.unary("/test.Echo/Big", b"3145728").await.messages
    );
    let health = client.unary("/grpc.health.v1.Health/Check", b"").await;
    assert_eq!(
        (health.code, &health.messages[0][..]),
        (0, &[0x08, 0x01][..])
    );
    let unknown = client.unary("/test.Echo/Nope", b"").await;
    assert_eq!(unknown.code, 12, "UNIMPLEMENTED passes through");

    // One record per call, messages in order, turns kept.
    let stored = records(record.api_addr, 8).await;
    let calls: Vec<&Value> = stored.iter().map(|r| &r["exchange"]["grpc"]).collect();
    let methods: Vec<&str> = calls
        .iter()
        .map(|c| c["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "/test.Echo/Unary",
            "/test.Echo/ServerStream",
            "/test.Echo/ClientStream",
            "/test.Echo/Bidi",
            "/test.Echo/Fail",
            "/test.Echo/Big",
            "/grpc.health.v1.Health/Check",
            "/test.Echo/Nope",
        ]
    );
    assert_eq!(stored[0]["service"], "test.Echo");
    assert_eq!(stored[6]["service"], "grpc.health.v1.Health");
    let bidi = calls[3];
    let afters: Vec<u64> = bidi["request_messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["after"].as_u64().unwrap())
        .collect();
    assert_eq!(
        afters,
        [0, 1, 2],
        "each chat line went after the reply before it"
    );
    assert_eq!(bidi["response_count"], 3);
    assert_eq!(calls[4]["status"], 5);
    assert_eq!(calls[0]["status"], 0);
    assert!(calls[0]["request_metadata"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h[0] == "x-user" && h[1] == "ada"));

    // Zone B gets the same calls with the same request messages, in order.
    let playback =
        playback_node(record.api_addr, &[zone_b.addr().to_string()], dirs.1.path()).await;
    let results = replays(playback.api_addr, 8).await;
    for r in &results {
        assert_eq!(r["outcome"], "matched", "{r}");
        assert_eq!(r["method"], "gRPC");
        assert_eq!(r["endpoint"], zone_b.addr().to_string());
    }
    let (a, b) = (zone_a.calls(), zone_b.calls());
    // What came through the proxy (it adds X-Forwarded-For; the direct
    // calls above do not) is what zone B gets.
    let recorded: Vec<_> = a
        .iter()
        .filter(|c| c.metadata.contains_key("x-forwarded-for"))
        .map(|c| (&c.path, &c.messages))
        .collect();
    let replayed: Vec<_> = b.iter().map(|c| (&c.path, &c.messages)).collect();
    assert_eq!(replayed, recorded);
    for call in &b {
        let id = call.metadata.get("x-qproxy-replay-id").expect("replay id");
        assert!(!id.is_empty());
        assert_eq!(call.metadata.get("x-qproxy-replay-shard").unwrap(), "0");
    }
    assert_eq!(b[0].metadata.get("x-user").unwrap(), "ada");

    let metrics = get_text(&format!("http://{}/metrics", record.api_addr)).await;
    // Other tests in this process count too: at least this test's calls.
    assert!(
        metric(
            &metrics,
            r#"grpc_requests_total{method="/test.Echo/Unary",code="OK"}"#
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            r#"grpc_requests_total{method="/test.Echo/Fail",code="NOT_FOUND"}"#
        ) >= 1.0
    );
    assert!(metrics.contains("grpc_request_duration_seconds_bucket"));
    assert!(metrics.contains("grpc_active_connections"));
    let status = get_json(&format!("http://{}/api/status", playback.api_addr))
        .await
        .1;
    assert_eq!(status["playback"]["matched"], 8, "{status}");
    playback.stop().await;
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_python_clients_and_servers_through_qproxy() {
    let zone_a = PythonGrpcServer::start("py-a");
    let zone_b = PythonGrpcServer::start("py-b");
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (record, _http) = record_node(&[zone_a.addr().to_string()], dirs.0.path(), json!({})).await;
    let proxy = record.grpc_addr.unwrap();

    let unary = python_grpc_call(proxy, "unary", &[b"hi"], &[("x-user", "ada")]).await;
    assert_eq!((unary.code, text(&unary)), (0, vec!["echo:hi".to_string()]));
    let chat = python_grpc_call(proxy, "bidi", &[b"x", b"y"], &[]).await;
    assert_eq!(text(&chat), ["re:x", "re:y"]);
    let stream = python_grpc_call(proxy, "server_stream", &[b"2"], &[]).await;
    assert_eq!(text(&stream), ["msg-0", "msg-1"]);
    let health = python_grpc_call(proxy, "health", &[], &[]).await;
    assert_eq!(
        (health.code, &health.messages[0][..]),
        (0, &[0x08, 0x01][..])
    );
    // And the tonic client against the Python server, through QProxy.
    let mut tonic = GrpcClient::connect(proxy).await;
    let upload = tonic
        .client_stream("/test.Echo/ClientStream", &[b"a", b"b"])
        .await;
    assert_eq!(text(&upload), ["2:a|b"]);
    let failed = tonic.unary("/test.Echo/Fail", b"7:no entry").await;
    assert_eq!((failed.code, failed.message.as_str()), (7, "no entry"));
    assert_eq!(&failed.details[..], b"details-for-7");

    let playback =
        playback_node(record.api_addr, &[zone_b.addr().to_string()], dirs.1.path()).await;
    let results = replays(playback.api_addr, 6).await;
    for r in &results {
        assert_eq!(r["outcome"], "matched", "{r}");
    }
    playback.stop().await;
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_a_different_answer_in_zone_b_is_mismatched_with_a_readable_diff() {
    let zone_a = GrpcServer::start("zone-a").await;
    let zone_b = GrpcServer::start("zone-b").await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (record, _http) = record_node(&[zone_a.addr().to_string()], dirs.0.path(), json!({})).await;
    let mut client = GrpcClient::connect(record.grpc_addr.unwrap()).await;
    assert_eq!(client.unary("/test.Echo/Unary", b"x").await.code, 0);
    records(record.api_addr, 1).await;
    zone_b.set_behaviour(Behaviour::DifferentReply);
    let playback =
        playback_node(record.api_addr, &[zone_b.addr().to_string()], dirs.1.path()).await;
    let results = replays(playback.api_addr, 1).await;
    assert_eq!(results[0]["outcome"], "mismatched");
    assert_eq!(
        results[0]["detail"],
        r#"message 0: recorded "echo:x", replayed "ECHO:x""#
    );
    playback.stop().await;

    // The same messages with another status: mismatched by grpc-status
    // (HTTP says 200 both times).
    assert_eq!(
        text(&client.server_stream("/test.Echo/ServerStream", b"2").await),
        ["msg-0", "msg-1"]
    );
    records(record.api_addr, 2).await;
    zone_b.set_behaviour(Behaviour::FailAfterMessages);
    let dir = tempfile::tempdir().unwrap();
    // The same peer id: this node goes on after the first one's commit.
    let playback = playback_node(record.api_addr, &[zone_b.addr().to_string()], dir.path()).await;
    let results = replays(playback.api_addr, 1).await;
    let stream = &results[0];
    assert_eq!(stream["uri"], "/test.Echo/ServerStream");
    assert_eq!(stream["outcome"], "mismatched");
    assert_eq!(
        stream["detail"],
        "grpc-status: recorded 0 (OK), replayed 13 (INTERNAL)"
    );
    assert_eq!(
        (
            stream["recorded_status"].as_u64(),
            stream["replayed_status"].as_u64()
        ),
        (Some(0), Some(13))
    );
    playback.stop().await;
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_round_robin_over_two_downstreams_survives_one_stopping() {
    let one = GrpcServer::start("one").await;
    let two = GrpcServer::start("two").await;
    let dir = tempfile::tempdir().unwrap();
    let (record, _http) = record_node(
        &[one.addr().to_string(), two.addr().to_string()],
        dir.path(),
        json!({}),
    )
    .await;
    let mut client = GrpcClient::connect(record.grpc_addr.unwrap()).await;
    let mut served_by = Vec::new();
    for i in 0..20 {
        let call = client
            .unary("/test.Echo/Unary", format!("{i}").as_bytes())
            .await;
        assert_eq!(call.code, 0, "{call:?}");
        served_by.push(call.header("x-served-by").unwrap().to_string());
    }
    let by_one = served_by.iter().filter(|s| *s == "one").count();
    assert_eq!(by_one, 10, "round robin: {served_by:?}");
    one.stop().await;
    for i in 0..20 {
        let call = client
            .unary("/test.Echo/Unary", format!("after {i}").as_bytes())
            .await;
        assert_eq!(
            call.code, 0,
            "no call fails once one downstream stops: {call:?}"
        );
        assert_eq!(call.header("x-served-by"), Some("two"));
    }
    record.stop().await;
}

#[tokio::test]
async fn grpc_no_downstream_reachable_is_unavailable_naming_each() {
    let (_a, refused_a) = support::refusing_port();
    let (_b, refused_b) = support::refusing_port();
    let dir = tempfile::tempdir().unwrap();
    let (record, _http) = record_node(
        &[refused_a.to_string(), refused_b.to_string()],
        dir.path(),
        json!({}),
    )
    .await;
    let mut client = GrpcClient::connect(record.grpc_addr.unwrap()).await;
    let call = client.unary("/test.Echo/Unary", b"x").await;
    assert_eq!(call.code, 14, "{call:?}");
    for addr in [refused_a, refused_b] {
        assert!(
            call.message.contains(&format!("{addr} (")),
            "{addr} named in {:?}",
            call.message
        );
    }
    assert!(call.message.contains("refused"), "{}", call.message);
    // Recorded with its error, and not replayed later (zone A never answered).
    let stored = records(record.api_addr, 1).await;
    assert!(stored[0]["error"]
        .as_str()
        .unwrap()
        .contains("no gRPC downstream could be reached"));
    let metrics = get_text(&format!("http://{}/metrics", record.api_addr)).await;
    assert!(
        metric(&metrics, r#"grpc_errors_total{kind="unavailable"}"#) >= 1.0,
        "{metrics}"
    );
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_cancellation_and_deadlines_reach_the_downstream() {
    let zone_a = GrpcServer::start("zone-a").await;
    let dir = tempfile::tempdir().unwrap();
    let (record, _http) = record_node(&[zone_a.addr().to_string()], dir.path(), json!({})).await;
    let mut client = GrpcClient::connect(record.grpc_addr.unwrap()).await;
    // The client gives up: the server's call is cancelled too.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        client.unary("/test.Echo/Slow", b"5000"),
    )
    .await;
    assert!(gave_up.is_err());
    eventually(
        "the server saw the cancel",
        Duration::from_secs(5),
        || async { zone_a.calls().iter().any(|c| c.cancelled).then_some(()) },
    )
    .await;
    // A deadline: grpc-timeout goes through and the call ends with
    // DEADLINE_EXCEEDED long before the server would have answered.
    let started = std::time::Instant::now();
    let late = client
        .unary_with(
            "/test.Echo/Slow",
            b"5000",
            &[],
            Some(Duration::from_millis(300)),
        )
        .await;
    assert_eq!(late.code, 4, "{late:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let calls = eventually(
        "both slow calls cancelled",
        Duration::from_secs(5),
        || async {
            let calls = zone_a.calls();
            (calls.iter().filter(|c| c.cancelled).count() == 2).then_some(calls)
        },
    )
    .await;
    assert!(calls[1].metadata.contains_key("grpc-timeout"));
    // And the proxy serves on.
    assert_eq!(client.unary("/test.Echo/Unary", b"ok").await.code, 0);
    // Both recorded, neither with a status: not replayed.
    let stored = records(record.api_addr, 3).await;
    assert!(stored[0]["exchange"]["grpc"]["status"].is_null());
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bad_input_gets_clean_errors_and_the_listener_keeps_serving() {
    let zone_a = GrpcServer::start("zone-a").await;
    let dir = tempfile::tempdir().unwrap();
    let (record, _http) = record_node(
        &[zone_a.addr().to_string()],
        dir.path(),
        json!({"max_message_bytes": 1024}),
    )
    .await;
    let proxy = record.grpc_addr.unwrap();

    // HTTP/1.1 on the gRPC port.
    let (status, body) = http1_post(proxy, "application/grpc").await;
    assert_eq!(status, 505, "{body}");
    assert!(body.contains("gRPC needs HTTP/2"), "{body}");
    // HTTP/2, but not gRPC.
    let (status, _, _) = h2_post(proxy, "application/json", bytes::Bytes::from_static(b"{}")).await;
    assert_eq!(status, 415);
    // A length prefix that promises more than comes.
    let (status, headers, _) = h2_post(
        proxy,
        "application/grpc",
        bytes::Bytes::from_static(b"\0\0\0\0\x64only ten b"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("grpc-status").unwrap(), "13", "{headers:?}");
    let message = headers.get("grpc-message").unwrap().to_str().unwrap();
    assert!(message.contains("ended inside message 0"), "{message}");
    // A message over grpc.max_message_bytes.
    let mut client = GrpcClient::connect(proxy).await;
    let big = client.unary("/test.Echo/Unary", &[7; 2048]).await;
    assert_eq!(big.code, 8, "{big:?}");
    assert!(
        big.message
            .contains("2048 bytes, more than the 1024 allowed"),
        "{}",
        big.message
    );
    // Garbage on the socket.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::TcpStream::connect(proxy).await.unwrap();
        raw.write_all(&[0xff; 64]).await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink)).await;
    }
    // Still serving.
    let fine = client.unary("/test.Echo/Unary", b"still here").await;
    assert_eq!(text(&fine), ["echo:still here"]);
    let metrics = get_text(&format!("http://{}/metrics", record.api_addr)).await;
    assert!(
        metric(&metrics, r#"grpc_errors_total{kind="bad_request"}"#) >= 2.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, r#"grpc_errors_total{kind="frame"}"#) >= 2.0,
        "{metrics}"
    );
    record.stop().await;
}

/// An HTTP/1.1 POST, by hand: (status, body).
async fn http1_post(addr: SocketAddr, content_type: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /test.Echo/Unary HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    raw.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    (status, answer)
}

/// An HTTP/2 POST (prior knowledge) with `body`: (status, headers, body).
async fn h2_post(
    addr: SocketAddr,
    content_type: &str,
    body: bytes::Bytes,
) -> (u16, http::HeaderMap, bytes::Bytes) {
    use http_body_util::{BodyExt, Full};
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::post(format!("http://{addr}/test.Echo/Unary"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(Full::new(body))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let mut headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    if let Some(trailers) = collected.trailers() {
        headers.extend(trailers.clone());
    }
    (status, headers, collected.to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_on_both_sides() {
    let pki = crate::pki::Pki::new();
    let read = |f: &str| std::fs::read_to_string(pki.path(f)).unwrap();
    let zone_a = GrpcServer::start_tls("zone-a", &read("server.pem"), &read("server.key")).await;
    let dir = tempfile::tempdir().unwrap();
    let http = FakeDownstream::start().await;
    let mut config =
        support::record_config(&http.url(), 1, &StoreChoice::Embedded(dir.path().into()));
    config["tls"] = json!({
        "tls_cert": pki.file("server.pem"),
        "tls_key": pki.file("server.key"),
        "ca": pki.file("ca.pem"),
    });
    config["http"]["tls"] = json!(false);
    config["grpc"] = json!({
        "host": "127.0.0.1", "port": 0,
        "downstream": [format!("https://localhost:{}", zone_a.addr().port())],
    });
    let record = support::start_node(config).await;
    let proxy = record.grpc_addr.unwrap();
    let mut client = GrpcClient::connect_tls(proxy, &read("ca.pem"), "localhost").await;
    let call = client.bidi("/test.Echo/Bidi", &[b"a", b"b"]).await;
    assert_eq!(text(&call), ["re:a", "re:b"]);
    let failed = client.unary("/test.Echo/Fail", b"9:precondition").await;
    assert_eq!((failed.code, failed.message.as_str()), (9, "precondition"));
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_kill_9_of_the_playback_node_loses_nothing_and_repeats_nothing_committed() {
    let zone_a = GrpcServer::start("zone-a").await;
    let zone_b = GrpcServer::start("zone-b").await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (record, _http) = record_node(&[zone_a.addr().to_string()], dirs.0.path(), json!({})).await;
    let mut client = GrpcClient::connect(record.grpc_addr.unwrap()).await;
    let total = 300;
    for i in 0..total {
        // A few milliseconds each in zone B, so the kill lands mid-run.
        let call = client.unary("/test.Echo/Slow", b"3").await;
        assert_eq!(call.code, 0, "call {i}: {call:?}");
    }
    records(record.api_addr, total).await;
    let http = FakeDownstream::start().await;
    let mut config = support::playback_config(
        &http.url(),
        1,
        record.api_addr,
        &StoreChoice::Embedded(dirs.1.path().join("data")),
    );
    config["http"]["port"] = json!(support::free_port());
    config["api"]["port"] = json!(support::free_port());
    config["sync"]["batch_size"] = json!(20);
    config["grpc"] =
        json!({"enabled": false, "port": 1, "downstream": [zone_b.addr().to_string()]});
    let mut first = support::NodeProcess::spawn(&config, dirs.1.path(), "playback-1");
    eventually(
        "zone B is part way through",
        Duration::from_secs(60),
        || async { (zone_b.calls().len() >= total / 3).then_some(()) },
    )
    .await;
    first.kill();
    let at_kill = zone_b.calls().len();
    assert!(at_kill < total, "the kill lands before the end ({at_kill})");
    let committed: Option<qproxy::record::RecordId> =
        support::checkpoints(record.api_addr, "zone-b")
            .await
            .get(&0)
            .map(|id| id.parse().unwrap());
    let committed = committed.expect("something was committed before the kill");
    let _second = support::NodeProcess::spawn(&config, dirs.1.path(), "playback-2");
    let id_of = |c: &crate::support::ReceivedCall| -> qproxy::record::RecordId {
        c.metadata["x-qproxy-replay-id"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let all = eventually("every call replayed", Duration::from_secs(120), || async {
        let ids: std::collections::HashSet<_> = zone_b.calls().iter().map(id_of).collect();
        (ids.len() >= total).then_some(ids)
    })
    .await;
    assert_eq!(all.len(), total, "nothing lost");
    let mut times = std::collections::HashMap::new();
    for call in zone_b.calls() {
        *times.entry(id_of(&call)).or_insert(0) += 1;
    }
    for (id, n) in &times {
        if *id <= committed {
            assert_eq!(*n, 1, "{id} was committed before the kill: replayed once");
        }
    }
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_over_the_record_cap_are_proxied_whole_and_skipped_at_replay() {
    let zone_a = GrpcServer::start("zone-a").await;
    let zone_b = GrpcServer::start("zone-b").await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let http = FakeDownstream::start().await;
    let mut config =
        support::record_config(&http.url(), 1, &StoreChoice::Embedded(dirs.0.path().into()));
    config["record"] = json!({"max_body_bytes": 65536});
    config["grpc"] = json!({"port": 0, "downstream": [zone_a.addr().to_string()]});
    let record = support::start_node(config).await;
    let mut client = GrpcClient::connect(record.grpc_addr.unwrap()).await;
    let big = client.unary("/test.Echo/Big", b"1048576").await;
    assert_eq!(big.messages[0].len(), 1 << 20, "proxied in full");
    let stored = records(record.api_addr, 1).await;
    let call = &stored[0]["exchange"]["grpc"];
    assert_eq!(call["truncated"], true);
    assert_eq!(call["response_bytes"], 1 << 20);
    assert_eq!(call["response_messages"].as_array().unwrap().len(), 0);
    assert_eq!(call["request_messages"].as_array().unwrap().len(), 1);
    let playback =
        playback_node(record.api_addr, &[zone_b.addr().to_string()], dirs.1.path()).await;
    let results = replays(playback.api_addr, 1).await;
    assert_eq!(results[0]["outcome"], "skipped");
    assert!(results[0]["detail"]
        .as_str()
        .unwrap()
        .contains("max_body_bytes"));
    assert!(zone_b.calls().is_empty());
    playback.stop().await;
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_replay_to_the_discovered_service_of_their_method() {
    let zone_a = GrpcServer::start("zone-a").await;
    let zone_b = GrpcServer::start("zone-b").await;
    let (_refusing, refusing) = support::refusing_port();
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (record, _http) = record_node(&[zone_a.addr().to_string()], dirs.0.path(), json!({})).await;
    let mut client = GrpcClient::connect(record.grpc_addr.unwrap()).await;
    assert_eq!(client.unary("/test.Echo/Unary", b"found").await.code, 0);
    let http = FakeDownstream::start().await;
    let mut config = support::playback_config(
        &http.url(),
        1,
        record.api_addr,
        &StoreChoice::Embedded(dirs.1.path().into()),
    );
    // grpc.downstream refuses: only the service's endpoint can answer.
    config["grpc"] = json!({"enabled": false, "port": 0, "downstream": [refusing.to_string()]});
    config["service_discovery"] = json!({
        "provider": "static",
        "config": {"static_services": [
            {"name": "test.Echo", "endpoints": [zone_b.addr().to_string()]},
        ]},
    });
    let playback = support::start_node(config).await;
    let results = replays(playback.api_addr, 1).await;
    assert_eq!(results[0]["outcome"], "matched", "{}", results[0]);
    assert_eq!(results[0]["service"], "test.Echo");
    assert_eq!(results[0]["endpoint"], zone_b.addr().to_string());
    assert_eq!(zone_b.calls()[0].messages[0], "found");
    playback.stop().await;
    record.stop().await;
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_a_slow_reader_slows_the_stream_and_the_proxy_holds_no_more_than_its_windows() {
    use http_body_util::{BodyExt, Full};
    let zone_a = GrpcServer::start("zone-a").await;
    let dir = tempfile::tempdir().unwrap();
    let http = FakeDownstream::start().await;
    let mut config = support::record_config(
        &http.url(),
        1,
        &StoreChoice::Embedded(dir.path().join("data")),
    );
    let port = support::free_port();
    config["api"]["port"] = json!(support::free_port());
    config["http"]["port"] = json!(support::free_port());
    config["record"] = json!({"enabled": false});
    config["grpc"] = json!({"port": port, "downstream": [zone_a.addr().to_string()]});
    let node = support::NodeProcess::spawn(&config, dir.path(), "record");
    let proxy: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually("the proxy listens", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(proxy).await.ok().map(|_| ())
    })
    .await;
    let before = rss(node.child.id());

    // 60 MiB in one message, read by a client that stops after the head.
    let size = 60 << 20;
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(proxy).await.unwrap());
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::post(format!("http://{proxy}/test.Echo/Big"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(qproxy::model::grpc::frame(
            false,
            size.to_string().as_bytes(),
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = rss(node.child.id()).saturating_sub(before);
    assert!(
        held < 24 << 20,
        "the proxy holds {} MiB of a 60 MiB message a client does not read",
        held >> 20
    );
    // Read now: the whole message arrives, in order.
    let body = response.into_body().collect().await.unwrap();
    let trailers = body.trailers().cloned().unwrap();
    let bytes = body.to_bytes();
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(bytes.len(), size + 5);
    assert_eq!(&bytes[5..], &crate::support::big_payload(size)[..]);
}

#[tokio::test]
async fn grpc_metadata_is_redacted_and_sharded_by_the_key_header_as_http_headers_are() {
    let zone_a = GrpcServer::start("zone-a").await;
    let dir = tempfile::tempdir().unwrap();
    let http = FakeDownstream::start().await;
    let mut config =
        support::record_config(&http.url(), 4, &StoreChoice::Embedded(dir.path().into()));
    config["record"] = json!({"redact_headers": ["authorization"], "shard_key_header": "x-tenant"});
    config["grpc"] = json!({"port": 0, "downstream": [zone_a.addr().to_string()]});
    let record = support::start_node(config).await;
    let mut client = GrpcClient::connect(record.grpc_addr.unwrap()).await;
    for tenant in ["acme", "globex"] {
        let call = client
            .unary_with(
                "/test.Echo/Unary",
                tenant.as_bytes(),
                &[
                    ("x-tenant", tenant),
                    ("authorization", "Bearer s3cret-token"),
                ],
                None,
            )
            .await;
        assert_eq!(call.code, 0);
    }
    // Proxied untouched.
    assert_eq!(
        zone_a.calls()[0].metadata["authorization"],
        "Bearer s3cret-token"
    );
    for tenant in ["acme", "globex"] {
        let shard = qproxy::record::shard::shard_of(tenant.as_bytes(), 4);
        let stored = eventually(
            "the call stored on its tenant's shard",
            Duration::from_secs(10),
            || async {
                let (_, page) = get_json(&format!(
                    "http://{}/sync?peer_id=check&shard_id={shard}&limit=100",
                    record.api_addr
                ))
                .await;
                page["records"]
                    .as_array()?
                    .iter()
                    .find(|r| {
                        r["exchange"]["grpc"]["request_metadata"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|h| h[0] == "x-tenant" && h[1] == tenant)
                    })
                    .cloned()
            },
        )
        .await;
        let metadata = stored["exchange"]["grpc"]["request_metadata"]
            .as_array()
            .unwrap()
            .clone();
        assert!(
            metadata
                .iter()
                .any(|h| h[0] == "authorization" && h[1] == "[redacted]"),
            "{metadata:?}"
        );
        assert!(!stored.to_string().contains("s3cret"));
    }
    record.stop().await;
}
