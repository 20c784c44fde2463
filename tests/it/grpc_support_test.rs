//! The gRPC test peers (support/grpc.rs) prove themselves: tonic client and
//! server against each other for every `test.Echo` method, and each against
//! the other stack, Python grpcio, so the gRPC proxy tests stand on peers
//! that are known to speak gRPC.

use std::time::Duration;

use bytes::Bytes;

use crate::pki::Pki;
use crate::support::{
    big_payload, eventually, python_grpc_call, python_grpc_call_to, Behaviour, GrpcClient,
    GrpcServer, PythonGrpcServer, ECHO_BIDI, ECHO_BIG, ECHO_CLIENT_STREAM, ECHO_FAIL,
    ECHO_SERVER_STREAM, ECHO_SLOW, ECHO_UNARY, HEALTH_CHECK, HEALTH_SERVING,
};

#[tokio::test]
async fn grpc_support_unary_carries_metadata_both_ways_and_follows_the_behaviour() {
    let server = GrpcServer::start("zone-a").await;
    let mut client = GrpcClient::connect(server.addr()).await;

    let outcome = client
        .unary_with(ECHO_UNARY, b"hello", &[("x-user", "ann")], None)
        .await;
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(outcome.texts(), ["echo:hello"]);
    assert_eq!(outcome.header("x-served-by"), Some("zone-a"));
    assert_eq!(outcome.trailer("x-trailer"), Some("t1"));
    assert_eq!(outcome.trailer("grpc-status"), None, "status is `code`");

    server.set_behaviour(Behaviour::DifferentReply);
    let outcome = client.unary(ECHO_UNARY, b"hello").await;
    assert_eq!(outcome.texts(), ["ECHO:hello"]);

    let calls = server.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].path, ECHO_UNARY);
    assert_eq!(calls[0].messages, [Bytes::from_static(b"hello")]);
    assert_eq!(calls[0].metadata.get("x-user").unwrap(), "ann");
    assert_eq!(calls[0].metadata.get("te").unwrap(), "trailers");
    assert!(!calls[0].cancelled);
}

#[tokio::test]
async fn grpc_support_server_stream_sends_n_messages_and_can_fail_after_them() {
    let server = GrpcServer::start("a").await;
    let mut client = GrpcClient::connect(server.addr()).await;

    let outcome = client.server_stream(ECHO_SERVER_STREAM, b"3").await;
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(outcome.texts(), ["msg-0", "msg-1", "msg-2"]);

    server.set_behaviour(Behaviour::FailAfterMessages);
    let outcome = client.server_stream(ECHO_SERVER_STREAM, b"2").await;
    assert_eq!(outcome.texts(), ["msg-0", "msg-1"]);
    assert_eq!(outcome.code, 13);
    assert_eq!(outcome.message, "failed after messages");
    assert!(outcome.headers.contains_key("content-type"), "{outcome:?}");
    assert!(server.calls().iter().all(|c| !c.cancelled));
}

#[tokio::test]
async fn grpc_support_client_stream_and_bidi_see_every_message() {
    let server = GrpcServer::start("a").await;
    let mut client = GrpcClient::connect(server.addr()).await;

    let outcome = client
        .client_stream(ECHO_CLIENT_STREAM, &[b"a", b"bb", b"c"])
        .await;
    assert_eq!(outcome.texts(), ["3:a|bb|c"]);
    let outcome = client.client_stream(ECHO_CLIENT_STREAM, &[]).await;
    assert_eq!(outcome.texts(), ["0:"]);

    let outcome = client.bidi(ECHO_BIDI, &[b"one", b"two", b"three"]).await;
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(outcome.texts(), ["re:one", "re:two", "re:three"]);

    let calls = server.calls();
    assert_eq!(calls[0].messages.len(), 3);
    assert_eq!(calls[2].path, ECHO_BIDI);
    assert_eq!(calls[2].messages, [&b"one"[..], b"two", b"three"]);
}

#[tokio::test]
async fn grpc_support_fail_health_and_unknown_methods() {
    let server = GrpcServer::start("a").await;
    let mut client = GrpcClient::connect(server.addr()).await;

    let outcome = client.unary(ECHO_FAIL, b"9:not now").await;
    assert_eq!(outcome.code, 9);
    assert_eq!(outcome.message, "not now");
    assert_eq!(outcome.details, Bytes::from_static(b"details-for-9"));
    assert_eq!(outcome.trailer("x-why"), Some("because"));
    assert!(outcome.headers.is_empty(), "Trailers-Only: {outcome:?}");
    assert!(outcome.messages.is_empty());

    let outcome = client.unary(HEALTH_CHECK, b"").await;
    assert_eq!(outcome.code, 0);
    assert_eq!(outcome.messages, [HEALTH_SERVING]);

    let outcome = client.unary("/test.Echo/Nope", b"x").await;
    assert_eq!(outcome.code, 12, "{outcome:?}");
    let outcome = client.unary("/other.Service/Unary", b"x").await;
    assert_eq!(outcome.code, 12, "{outcome:?}");
}

#[tokio::test]
async fn grpc_support_big_reply_of_3_mib_arrives_whole() {
    let server = GrpcServer::start("a").await;
    let mut client = GrpcClient::connect(server.addr()).await;
    let n = 3 << 20;
    let outcome = client.unary(ECHO_BIG, n.to_string().as_bytes()).await;
    assert_eq!(outcome.code, 0, "{}", outcome.message);
    assert_eq!(outcome.messages.len(), 1);
    assert!(outcome.messages[0] == big_payload(n), "the pattern differs");
}

#[tokio::test]
async fn grpc_support_a_dropped_slow_call_is_cancelled_at_the_server() {
    let server = GrpcServer::start("a").await;
    let mut client = GrpcClient::connect(server.addr()).await;

    let dropped = tokio::time::timeout(
        Duration::from_millis(200),
        client.unary(ECHO_SLOW, b"10000"),
    )
    .await;
    assert!(dropped.is_err(), "the slow call outlived its timeout");
    eventually("the server sees the reset", Duration::from_secs(5), || {
        let cancelled = server.calls()[0].cancelled;
        async move { cancelled.then_some(()) }
    })
    .await;

    let outcome = client
        .unary_with(ECHO_SLOW, b"10000", &[], Some(Duration::from_millis(100)))
        .await;
    assert_eq!(outcome.code, 4, "{outcome:?}");
    let call = &server.calls()[1];
    assert_eq!(call.metadata.get("grpc-timeout").unwrap(), "100000u");
    eventually("the second is cancelled", Duration::from_secs(5), || {
        let cancelled = server.calls()[1].cancelled;
        async move { cancelled.then_some(()) }
    })
    .await;

    // The connection lives on.
    let outcome = client.unary(ECHO_SLOW, b"1").await;
    assert_eq!(outcome.texts(), ["slept"]);
    assert!(!server.calls()[2].cancelled);
}

#[tokio::test]
async fn grpc_support_stop_drops_connections_and_the_port_serves_again() {
    let server = GrpcServer::start("first").await;
    let addr = server.addr();
    let mut waiting = GrpcClient::connect(addr).await;
    let mut idle = GrpcClient::connect(addr).await;
    let slow = tokio::spawn(async move { waiting.unary(ECHO_SLOW, b"10000").await });
    eventually("the slow call arrives", Duration::from_secs(5), || {
        let n = server.calls().len();
        async move { (n == 1).then_some(()) }
    })
    .await;
    server.stop().await;

    let outcome = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .expect("stop ends the open call")
        .unwrap();
    assert_eq!(outcome.code, 14, "{outcome:?}");
    assert!(
        GrpcClient::try_connect(addr).await.is_err(),
        "still accepting"
    );
    let outcome = idle.unary(ECHO_UNARY, b"x").await;
    assert_eq!(
        outcome.code, 14,
        "a call on a dropped connection: {outcome:?}"
    );

    let _server = GrpcServer::start_on(addr.port(), "second").await;
    let mut client = GrpcClient::connect(addr).await;
    let outcome = client.unary(ECHO_UNARY, b"x").await;
    assert_eq!(outcome.header("x-served-by"), Some("second"));
}

#[tokio::test]
async fn grpc_support_tls_with_alpn_h2() {
    let pki = Pki::new();
    let read = |f: &str| std::fs::read_to_string(pki.path(f)).unwrap();
    let server = GrpcServer::start_tls("secure", &read("server.pem"), &read("server.key")).await;
    let mut client = GrpcClient::connect_tls(server.addr(), &read("ca.pem"), "localhost").await;
    let outcome = client.unary(ECHO_UNARY, b"tls").await;
    assert_eq!(outcome.texts(), ["echo:tls"]);
    assert_eq!(outcome.header("x-served-by"), Some("secure"));
}

#[tokio::test]
async fn grpc_support_python_client_against_the_tonic_server() {
    let server = GrpcServer::start("tonic").await;
    let addr = server.addr();

    let outcome = python_grpc_call(addr, "unary", &[b"hi"], &[("x-user", "bob")]).await;
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(outcome.texts(), ["echo:hi"]);
    assert_eq!(outcome.header("x-served-by"), Some("tonic"));
    assert_eq!(outcome.trailer("x-trailer"), Some("t1"));
    assert_eq!(server.calls()[0].metadata.get("x-user").unwrap(), "bob");

    let outcome = python_grpc_call(addr, "bidi", &[b"p", b"q"], &[]).await;
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(outcome.texts(), ["re:p", "re:q"]);

    let outcome =
        python_grpc_call_to(addr, "unary", Some(ECHO_FAIL), &[b"5:gone"], &[], None).await;
    assert_eq!(outcome.code, 5);
    assert_eq!(outcome.message, "gone");
    assert_eq!(outcome.details, Bytes::from_static(b"details-for-5"));
    assert_eq!(outcome.trailer("x-why"), Some("because"));
}

#[tokio::test]
async fn grpc_support_tonic_client_against_the_python_server() {
    let server = PythonGrpcServer::start("python");
    let mut client = GrpcClient::connect(server.addr()).await;

    let outcome = client.unary(ECHO_UNARY, b"hi").await;
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(outcome.texts(), ["echo:hi"]);
    assert_eq!(outcome.header("x-served-by"), Some("python"));
    assert_eq!(outcome.trailer("x-trailer"), Some("t1"));

    let outcome = client.server_stream(ECHO_SERVER_STREAM, b"4").await;
    assert_eq!(outcome.texts(), ["msg-0", "msg-1", "msg-2", "msg-3"]);

    let outcome = client.unary(HEALTH_CHECK, b"").await;
    assert_eq!(outcome.code, 0);
    assert_eq!(outcome.messages, [HEALTH_SERVING]);

    let outcome = client.unary(ECHO_FAIL, b"7:no").await;
    assert_eq!(outcome.code, 7);
    assert_eq!(outcome.details, Bytes::from_static(b"details-for-7"));
    assert_eq!(outcome.trailer("x-why"), Some("because"));
}
