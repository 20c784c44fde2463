//! Logs as an operator reads them from `qproxy` processes: JSON lines that
//! carry their spans (the connection, the replayed record), and no secret
//! in any line even at `-l trace`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use crate::pki::Pki;
use crate::support::{
    self, eventually, free_port, get_json, FakeDownstream, NodeProcess, RedisServer,
};

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn wait_up(addr: SocketAddr) {
    eventually("the node listens", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await;
}

/// The lines of `log` that parse as JSON; every line must.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_test_json_lines_carry_the_connection_and_replay_spans() {
    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, api, b_api) = (free_port(), free_port(), free_port());
    let logging = json!({"level": "debug", "format": "json"});
    let record = json!({
        "mode": "Record",
        "http": {"port": proxy, "downstream": zone_a.url(), "header_timeout_ms": 300},
        "api": {"port": api},
        "data_dir": dir.path().join("a"),
        "logging": logging,
        "monitoring": support::untripped_thresholds(),
    });
    let playback = json!({
        "mode": "Playback",
        "http": {"port": free_port(), "downstream": zone_b.url()},
        "api": {"port": b_api},
        "sync": {"enabled": true, "interval": 100, "peer": {"port": api}},
        "data_dir": dir.path().join("b"),
        "logging": logging,
        "monitoring": support::untripped_thresholds(),
    });
    let record = NodeProcess::spawn(&record, dir.path(), "record");
    let playback = NodeProcess::spawn(&playback, dir.path(), "playback");
    wait_up(local(api)).await;
    wait_up(local(b_api)).await;

    let (status, _) = get_json(&format!("http://127.0.0.1:{proxy}/json-logs")).await;
    assert!(status.is_success());
    // A connection that sends nothing is closed after header_timeout_ms,
    // logged at debug inside its connection's span.
    let mut silent = tokio::net::TcpStream::connect(local(proxy)).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest))
        .await
        .expect("the silent connection is closed")
        .unwrap();
    eventually(
        "the record replayed in zone B",
        Duration::from_secs(20),
        || async { (zone_b.count() >= 1).then_some(()) },
    )
    .await;

    let conn = eventually("a line in a conn span", Duration::from_secs(5), || async {
        json_lines(&record.log())
            .into_iter()
            .find(|l| l["span"]["name"] == "conn" && l["span"]["listener"] == "http")
    })
    .await;
    assert!(conn["span"]["client.addr"].is_string(), "{conn}");
    assert_eq!(conn["spans"][0]["name"], "conn", "{conn}");

    let replayed = eventually(
        "a line in a replay span",
        Duration::from_secs(5),
        || async {
            json_lines(&playback.log())
                .into_iter()
                .find(|l| l["span"]["name"] == "replay" && l["fields"]["message"] == "replayed")
        },
    )
    .await;
    let span = &replayed["span"];
    assert!(
        span["record_id"]
            .as_str()
            .is_some_and(|id| id.contains('-')),
        "{replayed}"
    );
    assert_eq!(span["shard"], 0, "{replayed}");
    assert_eq!(span["protocol"], "http", "{replayed}");
    assert_eq!(span["service"], "127.0.0.1", "{replayed}");
    assert_eq!(replayed["fields"]["result"], "matched", "{replayed}");
    assert_eq!(replayed["level"], "DEBUG", "{replayed}");
}

/// A Record node with a Redis password, an API token, TLS on its API, and
/// the embedded MQTT broker with a password; a Playback node that pulls
/// over HTTPS with the token and listens over MQTT with the password;
/// traffic with an `Authorization` header. Both run at `-l trace`, and
/// nothing of any secret is in what they print.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_test_no_secret_reaches_the_logs_even_at_trace() {
    const REDIS_PASSWORD: &str = "redis-pw-5c1d8a77e0";
    const API_TOKEN: &str = "api-token-7f3e9b2a41c6d5";
    const MQTT_PASSWORD: &str = "mqtt-pw-e4b7c2a90f";
    const CLIENT_SECRET: &str = "client-bearer-91d2f0aa3b";
    let pki = Pki::new();
    let redis = RedisServer::start_args(&["--requirepass", REDIS_PASSWORD]);
    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, api, broker, b_api) = (free_port(), free_port(), free_port(), free_port());
    let record = json!({
        "mode": "Record",
        "http": {"port": proxy, "downstream": zone_a.url(), "tls": false},
        "api": {"port": api, "tls": true, "auth_token": API_TOKEN},
        "tls": {"tls_cert": pki.file("server.pem"), "tls_key": pki.file("server.key")},
        "redis": {"url": format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}", redis.port),
                  "key_prefix": "secrets"},
        "mqtt": {"app_id": "zones", "token": MQTT_PASSWORD,
                 "embedded_broker": {"enabled": true, "port": broker}},
        "data_dir": dir.path().join("a"),
        "monitoring": support::untripped_thresholds(),
    });
    let playback = json!({
        "mode": "Playback",
        "http": {"port": free_port(), "downstream": zone_b.url()},
        "api": {"port": b_api},
        "tls": {"ca": pki.file("ca.pem")},
        "sync": {"enabled": true, "interval": 100,
                 "peer": {"port": api, "tls": true, "auth_token": API_TOKEN}},
        "mqtt": {"port": broker, "app_id": "zones", "token": MQTT_PASSWORD},
        "data_dir": dir.path().join("b"),
        "monitoring": support::untripped_thresholds(),
    });
    // The embedded broker too (quieted to warn unless named).
    let trace = ["-l", "trace,rumqttd=trace"];
    let record = NodeProcess::spawn_with_args(&record, dir.path(), "record", &trace);
    let playback =
        NodeProcess::spawn_with_args(&playback, dir.path(), "playback", &["-l", "trace"]);
    wait_up(local(proxy)).await;
    wait_up(local(b_api)).await;
    eventually(
        "the Playback node on MQTT",
        Duration::from_secs(20),
        || async {
            let (_, status) = get_json(&format!("http://127.0.0.1:{b_api}/api/status")).await;
            (status["mqtt"]["connected"] == true).then_some(())
        },
    )
    .await;

    for i in 0..3 {
        let response = support::client()
            .request(
                Request::get(format!("http://127.0.0.1:{proxy}/secret/{i}"))
                    .header("authorization", format!("Bearer {CLIENT_SECRET}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert!(response.status().is_success());
        response.into_body().collect().await.unwrap();
    }
    eventually(
        "3 records replayed in zone B",
        Duration::from_secs(20),
        || async { (zone_b.count() >= 3).then_some(()) },
    )
    .await;
    // The logs must have seen a pull over MQTT too. On a busy box the first
    // one may fall back to HTTP (the query unanswered in time: the Record
    // node's query subscription can trail the Playback node's connect), so
    // more traffic follows until one goes over MQTT.
    let mut sent = 3;
    eventually("a pull over MQTT", Duration::from_secs(30), || {
        sent += 1;
        let path = format!("http://127.0.0.1:{proxy}/secret/{sent}");
        async move {
            let (_, status) = get_json(&format!("http://127.0.0.1:{b_api}/api/status")).await;
            if status["playback"]["transport"] == "mqtt" {
                return Some(());
            }
            let request = Request::get(path)
                .header("authorization", format!("Bearer {CLIENT_SECRET}"))
                .body(Full::new(Bytes::new()))
                .ok()?;
            let response = support::client().request(request).await.ok()?;
            response.into_body().collect().await.ok()?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        }
    })
    .await;
    // A commit or two more, then read what was printed.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let key = std::fs::read_to_string(pki.path("server.key")).unwrap();
    let key_lines: Vec<&str> = key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect();
    assert!(!key_lines.is_empty());
    for (name, node) in [("record", &record), ("playback", &playback)] {
        let printed = format!("{}\n{}", node.log(), node.stdout());
        assert!(
            printed.contains(" TRACE "),
            "{name} logged at trace ({} bytes)",
            printed.len()
        );
        for (what, secret) in [
            ("the Redis password", REDIS_PASSWORD),
            ("the API token", API_TOKEN),
            ("the MQTT password", MQTT_PASSWORD),
            ("the client's Authorization", CLIENT_SECRET),
        ] {
            if let Some(at) = printed.find(secret) {
                let line_start = printed[..at].rfind('\n').map_or(0, |i| i + 1);
                let line_end = printed[at..].find('\n').map_or(printed.len(), |i| at + i);
                panic!(
                    "{what} is in the {name} node's output:\n{}",
                    &printed[line_start..line_end]
                );
            }
        }
        for line in &key_lines {
            assert!(
                !printed.contains(line),
                "the TLS key is in the {name} node's output"
            );
        }
    }
}

/// Credentials in a downstream URL are never used, and were printed by
/// `-v` and by the HTTP client's trace lines: refused, without quoting them.
/// A Redis URL whose password makes it invalid is not quoted either.
#[test]
fn logs_test_credentials_in_urls_are_not_echoed_by_configuration_errors() {
    let parse = |text: String| {
        qproxy::config::Config::parse(&text, std::path::Path::new("c.json"))
            .unwrap_err()
            .to_string()
    };
    for downstream in [
        "http://user:pw-77aa1@127.0.0.1:8081",
        "https://user:pw-77aa1@orders:8443/base",
        "http://user:pw-77aa1@127.0.0.1:8081/?q=1",
    ] {
        let err = parse(format!(
            r#"{{"mode": "Record", "http": {{"port": 8080, "downstream": "{downstream}"}}}}"#
        ));
        assert!(err.contains("cannot carry credentials"), "{err}");
        assert!(!err.contains("pw-77aa1"), "{err}");
    }
    let err = parse(
        r#"{"mode": "Record", "redis": {"url": "redis://:pw-77aa1@127.0.0.1:notaport"}}"#.into(),
    );
    assert!(err.contains("redis.url"), "{err}");
    assert!(!err.contains("pw-77aa1"), "{err}");
}
