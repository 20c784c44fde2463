//! TLS everywhere it is offered, checked with clients and servers this
//! project did not write where they exist: `curl` (HTTP/1.1 and HTTP/2 by
//! ALPN), `openssl s_client`, `redis-server` with TLS, Mosquitto with TLS.
//! Certificates are made at run time (`pki.rs`).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::pki::Pki;
use crate::support::{
    self, eventually, get_json, redis_cli, FakeDownstream, Mosquitto, RedisServer, StoreChoice,
};

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs a command off the runtime, with its stdin fed and a time limit.
async fn run(program: &str, args: Vec<String>, stdin: &'static [u8]) -> Run {
    let program = program.to_string();
    let child = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program} ({e}); .ci/run installs it"));
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .expect("the command finishes within 30 s")
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn curl(args: &[&str]) -> Run {
    let mut all = vec!["--silent".to_string(), "--show-error".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    run("curl", all, b"").await
}

fn embedded(dir: &tempfile::TempDir) -> StoreChoice {
    StoreChoice::Embedded(dir.path().into())
}

async fn replays_done(api: SocketAddr) -> u64 {
    let (_, s) = get_json(&format!("http://{api}/api/status")).await;
    ["matched", "mismatched", "failed", "skipped"]
        .iter()
        .map(|k| s["playback"][k].as_u64().unwrap_or(0))
        .sum()
}

/// The value of a counter sample `name{labels}` in Prometheus text.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(api: SocketAddr) -> String {
    let response = support::client()
        .get(format!("http://{api}/metrics").parse().unwrap())
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_https_http1_and_http2_is_served_recorded_and_replayed_in_zone_b() {
    let pki = Pki::new();
    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start().await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut record_config = support::record_config(&zone_a.url(), 1, &embedded(&dirs.0));
    record_config["tls"] =
        json!({"tls_cert": pki.file("server.pem"), "tls_key": pki.file("server.key")});
    let record = support::start_node(record_config).await;
    let playback = support::start_node(support::playback_config(
        &zone_b.url(),
        1,
        record.api_addr,
        &embedded(&dirs.1),
    ))
    .await;
    let port = record.http_addr.unwrap().port();
    let ca = pki.file("ca.pem");

    for (flag, version, body) in [("--http1.1", "1.1", "one"), ("--http2", "2", "two")] {
        let url = format!("https://localhost:{port}/orders?via={version}");
        let resolve = format!("localhost:{port}:127.0.0.1");
        let out = curl(&[
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            flag,
            "-w",
            "\n%{http_version}",
            "-d",
            body,
            &url,
        ])
        .await;
        assert!(out.ok, "curl {flag}: {}", out.stderr);
        let (answer, used) = out.stdout.rsplit_once('\n').unwrap();
        assert_eq!(used, version, "curl {flag} spoke HTTP/{used}");
        let digest: Value = serde_json::from_str(answer).unwrap();
        assert_eq!(digest["uri"], format!("/orders?via={version}"));
        assert_eq!(digest["len"], body.len());
    }
    assert_eq!(zone_a.count(), 2, "zone A served both");

    eventually(
        "both replayed in zone B",
        Duration::from_secs(20),
        || async { (replays_done(playback.api_addr).await >= 2).then_some(()) },
    )
    .await;
    let seen = zone_b.seen();
    let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(uris, ["/orders?via=1.1", "/orders?via=2"]);
    assert_eq!(seen[1].body, Bytes::from_static(b"two"));
    assert!(seen
        .iter()
        .all(|s| s.header("x-qproxy-replay-id").is_some()));
    let (_, s) = get_json(&format!("http://{}/api/status", playback.api_addr)).await;
    assert_eq!(s["playback"]["matched"], 2, "{s}");
    playback.stop().await;
    record.stop().await;
}

#[tokio::test]
async fn bad_tls_clients_are_refused_counted_and_the_listener_keeps_serving() {
    let pki = Pki::new();
    let zone_a = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::record_config(&zone_a.url(), 1, &embedded(&dir));
    config["tls"] = json!({"tls_cert": pki.file("server.pem"), "tls_key": pki.file("server.key")});
    let node = support::start_node(config).await;
    let addr = node.http_addr.unwrap();
    let url = format!("https://127.0.0.1:{}/after", addr.port());

    // Plain HTTP (not a ClientHello) on the TLS port.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut got),
    )
    .await
    .expect("the connection is closed, not left hanging");
    assert!(read.is_ok() || got.is_empty());
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/"),
        "no HTTP answer over a failed handshake"
    );

    // A client that does not trust the node's certificate.
    let out = curl(&["--cacert", &pki.file("other-ca.pem"), &url]).await;
    assert!(!out.ok, "curl trusting another CA must fail");
    assert!(
        out.stderr.to_lowercase().contains("certificate"),
        "{}",
        out.stderr
    );

    let out = curl(&["--cacert", &pki.file("ca.pem"), &url]).await;
    assert!(out.ok, "the listener still serves: {}", out.stderr);
    assert_eq!(zone_a.count(), 1, "only the good client got through");

    // The refused handshakes are counted by the node's own tasks: wait
    // for them, then check there were exactly two.
    let series = "qproxy_tls_handshake_errors_total{listener=\"http\"}";
    eventually("both refusals counted", Duration::from_secs(10), || async {
        (sample(&metrics(node.api_addr).await, series) >= 2.0).then_some(())
    })
    .await;
    let text = metrics(node.api_addr).await;
    assert_eq!(sample(&text, series), 2.0, "{text}");
    node.stop().await;
}

/// The answer of a Record node whose downstream is `downstream`, trusting
/// the test CA and presenting `client` when given.
async fn through_proxy_to(
    pki: &Pki,
    downstream: &FakeDownstream,
    client: Option<&str>,
) -> (StatusCode, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::record_config(&downstream.url(), 1, &embedded(&dir));
    config["tls"] = json!({"ca": pki.file("ca.pem")});
    if let Some(name) = client {
        config["tls"]["client_cert"] = json!(pki.file(&format!("{name}.pem")));
        config["tls"]["client_key"] = json!(pki.file(&format!("{name}.key")));
    }
    let node = support::start_node(config).await;
    let mut conn =
        support::ClientConn::connect("127.0.0.1".parse().unwrap(), node.http_addr.unwrap()).await;
    let (status, _, body) = conn
        .send(Request::get("/x").body(Full::new(Bytes::new())).unwrap())
        .await;
    node.stop().await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn https_downstreams_are_verified_and_a_bad_certificate_is_a_502_that_says_why() {
    let pki = Pki::new();
    let good = FakeDownstream::start_tls(pki.acceptor("server", None)).await;
    let (status, body) = through_proxy_to(&pki, &good, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(good.count(), 1);

    for (cert, why) in [
        ("expired", "expired"),
        ("elsewhere", "not valid for name"),
        ("untrusted", "unknownissuer"),
    ] {
        let bad = FakeDownstream::start_tls(pki.acceptor(cert, None)).await;
        let (status, body) = through_proxy_to(&pki, &bad, None).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{cert}: {body}");
        assert!(body.to_lowercase().contains(why), "{cert}: {body}");
        assert_eq!(bad.count(), 0, "{cert}: nothing reached it");
    }

    // A downstream that wants a client certificate gets the node's.
    let strict = FakeDownstream::start_tls(pki.acceptor("server", Some("ca"))).await;
    let (status, body) = through_proxy_to(&pki, &strict, None).await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "no client certificate: {body}"
    );
    let (status, body) = through_proxy_to(&pki, &strict, Some("client")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(strict.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_through_a_tls_tcp_listener_is_recorded_and_replayed_over_tls() {
    let pki = Pki::new();
    let http = FakeDownstream::start().await;
    let zone_a = RedisServer::start();
    // Zone B's redis-server speaks TLS: the Playback node replays over TLS.
    let zone_b = RedisServer::start_tls(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        &pki.path("ca.pem"),
    );
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut record_config = support::record_config(&http.url(), 1, &embedded(&dirs.0));
    record_config["tls"] =
        json!({"tls_cert": pki.file("server.pem"), "tls_key": pki.file("server.key")});
    record_config["http"]["tls"] = json!(false);
    record_config["tcp"] = json!({
        "port": 0, "tls": true, "downstream": format!("127.0.0.1:{}", zone_a.port),
    });
    let record = support::start_node(record_config).await;
    let mut playback_config =
        support::playback_config(&http.url(), 1, record.api_addr, &embedded(&dirs.1));
    playback_config["tls"] = json!({"ca": pki.file("ca.pem")});
    playback_config["tcp"] = json!({
        "port": 0, "downstream_tls": true,
        "downstream": format!("127.0.0.1:{}", zone_b.tls_port.unwrap()),
    });
    let playback = support::start_node(playback_config).await;

    let connect = format!("127.0.0.1:{}", record.tcp_addr.unwrap().port());
    let args = [
        "s_client",
        "-connect",
        &connect,
        "-CAfile",
        &pki.file("ca.pem"),
        "-verify_return_error",
        "-quiet",
        "-nocommands",
    ];
    const SESSION: &[u8] = b"SET tls-key secret\r\nINCR tls-counter\r\nQUIT\r\n";
    let out = run(
        "openssl",
        args.iter().map(|a| a.to_string()).collect(),
        SESSION,
    )
    .await;
    assert_eq!(out.stdout, "+OK\r\n:1\r\n+OK\r\n", "stderr: {}", out.stderr);
    assert_eq!(redis_cli(zone_a.port, &["GET", "tls-key"]), "secret");

    eventually(
        "the session replayed in zone B",
        Duration::from_secs(20),
        || async { (replays_done(playback.api_addr).await >= 1).then_some(()) },
    )
    .await;
    let (_, s) = get_json(&format!("http://{}/api/status", playback.api_addr)).await;
    let (_, replays) = get_json(&format!("http://{}/api/replays", playback.api_addr)).await;
    assert_eq!(s["playback"]["matched"], 1, "{replays}");
    assert_eq!(redis_cli(zone_b.port, &["GET", "tls-key"]), "secret");
    assert_eq!(redis_cli(zone_b.port, &["GET", "tls-counter"]), "1");

    // What was recorded is the plaintext of the session.
    let (_, page) = get_json(&format!("http://{}/sync?peer_id=look", record.api_addr)).await;
    let tcp = &page["records"][0]["exchange"]["tcp"];
    assert_eq!(tcp["closed_by"], "server", "{tcp}");
    assert_eq!(tcp["client_bytes"], SESSION.len());
    playback.stop().await;
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_playback_node_syncs_over_mutual_tls_and_a_client_without_a_certificate_is_refused() {
    let pki = Pki::new();
    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start().await;
    let token = "a-token-for-the-zone-link";
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut record_config = support::record_config(&zone_a.url(), 2, &embedded(&dirs.0));
    record_config["tls"] =
        json!({"tls_cert": pki.file("server.pem"), "tls_key": pki.file("server.key")});
    record_config["http"]["tls"] = json!(false);
    record_config["api"] = json!({
        "host": "127.0.0.1", "port": 0, "tls": true, "client_ca": pki.file("ca.pem"), "auth_token": token,
    });
    let record = support::start_node(record_config).await;
    let mut playback_config =
        support::playback_config(&zone_b.url(), 2, record.api_addr, &embedded(&dirs.1));
    playback_config["sync"]["peer"]["tls"] = json!(true);
    playback_config["sync"]["peer"]["auth_token"] = json!(token);
    playback_config["tls"] = json!({
        "ca": pki.file("ca.pem"), "client_cert": pki.file("client.pem"), "client_key": pki.file("client.key"),
    });
    let playback = support::start_node(playback_config).await;

    support::send_posts(record.http_addr.unwrap(), 5, "item").await;
    eventually(
        "five replays in zone B",
        Duration::from_secs(20),
        || async { (zone_b.count() >= 5).then_some(()) },
    )
    .await;
    assert_eq!(zone_b.count(), 5);

    // curl to the Record node's API as `identity` (a client certificate of
    // the test PKI, or none).
    let api = |identity: Option<&'static str>, path: &'static str| {
        let url = format!("https://127.0.0.1:{}{path}", record.api_addr.port());
        let mut args = vec![
            "--cacert".to_string(),
            pki.file("ca.pem"),
            "-H".to_string(),
            format!("Authorization: Bearer {token}"),
            url,
        ];
        if let Some(name) = identity {
            args.extend([
                "--cert".to_string(),
                pki.file(&format!("{name}.pem")),
                "--key".to_string(),
                pki.file(&format!("{name}.key")),
            ]);
        }
        async move { curl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    let without = api(None, "/api/status").await;
    assert!(
        !without.ok,
        "no client certificate, no answer: {}",
        without.stdout
    );
    let stranger = api(Some("untrusted"), "/api/status").await;
    assert!(
        !stranger.ok,
        "a certificate from another CA is refused: {}",
        stranger.stdout
    );
    let with = api(Some("client"), "/api/status").await;
    assert!(with.ok, "{}", with.stderr);
    let s: Value = serde_json::from_str(&with.stdout).unwrap();
    assert_eq!(s["mode"], "Record");
    // A commit follows its replays: wait for it to arrive over the link.
    eventually(
        "zone B's commit over the TLS link",
        Duration::from_secs(10),
        || async {
            let s: Value =
                serde_json::from_str(&api(Some("client"), "/api/status").await.stdout).ok()?;
            let commits = s["checkpoints"].as_array()?.clone();
            commits
                .iter()
                .any(|c| c["peer_id"] == "zone-b")
                .then_some(())
        },
    )
    .await;
    let series = "qproxy_tls_handshake_errors_total{listener=\"api\"}";
    eventually("both refusals counted", Duration::from_secs(10), || async {
        (sample(&api(Some("client"), "/metrics").await.stdout, series) >= 2.0).then_some(())
    })
    .await;
    let text = api(Some("client"), "/metrics").await.stdout;
    assert_eq!(sample(&text, series), 2.0, "{text}");
    playback.stop().await;
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_to_mosquitto_pushes_replays() {
    let pki = Pki::new();
    let broker = Mosquitto::start_tls(&pki.path("server.pem"), &pki.path("server.key"));
    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start().await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mqtt =
        |id: &str| json!({"host": "127.0.0.1", "port": broker.port, "client_id": id, "tls": true});
    let tls = json!({"ca": pki.file("ca.pem")});
    let mut record_config = support::record_config(&zone_a.url(), 1, &embedded(&dirs.0));
    record_config["mqtt"] = mqtt("tls-record");
    record_config["tls"] = tls.clone();
    let record = support::start_node(record_config).await;
    let mut playback_config =
        support::playback_config(&zone_b.url(), 1, record.api_addr, &embedded(&dirs.1));
    playback_config["mqtt"] = mqtt("tls-playback");
    playback_config["tls"] = tls;
    // Polling once a minute: replays within seconds come from notifications.
    playback_config["sync"]["interval"] = json!(60_000);
    let playback = support::start_node(playback_config).await;
    for api in [record.api_addr, playback.api_addr] {
        eventually(
            "mqtt connected over TLS",
            Duration::from_secs(20),
            || async {
                let (_, s) = get_json(&format!("http://{api}/api/status")).await;
                (s["mqtt"]["connected"] == true).then_some(())
            },
        )
        .await;
    }
    support::send_posts(record.http_addr.unwrap(), 3, "push").await;
    eventually("three replays pushed", Duration::from_secs(10), || async {
        (zone_b.count() >= 3).then_some(())
    })
    .await;
    playback.stop().await;
    record.stop().await;
}
