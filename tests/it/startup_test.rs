//! A node's first minutes as an operator sees them in its log: the ready
//! line, a start-up failure said once, a downstream or a store that is
//! not there.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::{free_port, refusing_port, NodeProcess};

/// A Record node on free ports of its own, logging at the default level.
fn record_config(data_dir: &std::path::Path, downstream: &str) -> serde_json::Value {
    json!({
        "mode": "Record",
        "http": {"host": "127.0.0.1", "port": free_port(), "downstream": downstream},
        "api": {"host": "127.0.0.1", "port": free_port()},
        "data_dir": data_dir,
    })
}

fn run_to_exit(config: &serde_json::Value, dir: &std::path::Path) -> (Option<i32>, String) {
    let path = dir.join("node.json");
    std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qproxy"))
        .arg("-c")
        .arg(&path)
        .output()
        .expect("qproxy runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A port in use and a data_dir another node holds stop start-up with
/// exit 1 and one line each, not the same error twice.
#[test]
fn startup_test_a_failure_to_start_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut config = record_config(&dir.path().join("a"), "http://127.0.0.1:9");
    config["http"]["port"] = json!(port);
    let (code, stderr) = run_to_exit(&config, dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    let says = format!("cannot listen on 127.0.0.1:{port} (http proxy)");
    assert_eq!(stderr.matches(&says).count(), 1, "{stderr}");

    // Two nodes on one data_dir: the second cannot open the store.
    let shared = dir.path().join("shared");
    let first = NodeProcess::spawn(
        &record_config(&shared, "http://127.0.0.1:9"),
        dir.path(),
        "first",
    );
    first.wait_for_line("ready:", Duration::from_secs(20));
    let (code, stderr) = run_to_exit(&record_config(&shared, "http://127.0.0.1:9"), dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.matches("cannot open the store").count(),
        1,
        "{stderr}"
    );
}

/// One info line once everything is bound, naming the bound addresses,
/// the mode, the store and the broker in plain words.
#[test]
fn startup_test_the_ready_line_names_every_listener_the_store_and_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let (http, tcp, api, broker) = (free_port(), free_port(), free_port(), free_port());
    let data_dir = dir.path().join("record");
    let config = json!({
        "mode": "Record",
        "http": {"host": "127.0.0.1", "port": http, "downstream": "http://127.0.0.1:9"},
        "tcp": {"host": "127.0.0.1", "port": tcp, "downstream": "127.0.0.1:9"},
        "api": {"host": "127.0.0.1", "port": api},
        "data_dir": data_dir,
        "mqtt": {"client_id": "ready-test", "embedded_broker": {"enabled": true, "host": "127.0.0.1", "port": broker}},
    });
    let node = NodeProcess::spawn(&config, dir.path(), "ready");
    let line = node.wait_for_line("ready:", Duration::from_secs(20));
    assert!(line.contains(" INFO "), "{line}");
    let tail = &line[line.find("ready:").unwrap()..];
    assert_eq!(
        tail,
        format!(
            "ready: mode Record, http 127.0.0.1:{http} -> http://127.0.0.1:9, \
             tcp 127.0.0.1:{tcp} -> 127.0.0.1:9, api 127.0.0.1:{api}, \
             store embedded {}, mqtt 127.0.0.1:{broker} (embedded broker)",
            data_dir.display()
        )
    );
    let log = node.log();
    assert_eq!(log.matches("ready:").count(), 1, "{log}");
    assert!(!log.contains("Some("), "{log}");
}

/// A downstream that refuses is a warning at the default level, not a
/// debug line: once, with the count of those held back later.
#[tokio::test]
async fn startup_test_a_failing_downstream_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (_socket, refusing) = refusing_port();
    let mut config = record_config(dir.path(), &format!("http://{refusing}"));
    let tcp = free_port();
    config["tcp"] = json!({"host": "127.0.0.1", "port": tcp, "downstream": refusing.to_string()});
    let proxy = format!("http://127.0.0.1:{}", config["http"]["port"]);
    let node = NodeProcess::spawn(&config, dir.path(), "refused");
    node.wait_for_line("ready:", Duration::from_secs(20));
    for _ in 0..3 {
        let request = http::Request::get(format!("{proxy}/orders"))
            .body(http_body_util::Full::default())
            .unwrap();
        let response = crate::support::client().request(request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::BAD_GATEWAY);
    }
    let line = node.wait_for_line("failed; answering 502", Duration::from_secs(5));
    assert!(line.contains(" WARN "), "{line}");
    assert!(
        line.contains(&format!("downstream {refusing} failed; answering 502"))
            && line.contains("listener=\"http\"")
            && line.contains("refused"),
        "{line}"
    );
    // The two after it within 10 s are held back, to be counted in the next line.
    let log = node.log();
    assert_eq!(log.matches("answering 502").count(), 1, "{log}");

    // The TCP proxy's downstream too.
    let _ = tokio::net::TcpStream::connect(("127.0.0.1", tcp))
        .await
        .unwrap();
    let line = node.wait_for_line("cannot be reached", Duration::from_secs(5));
    assert!(
        line.contains(" WARN ") && line.contains("listener=\"tcp\""),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "downstream {refusing} cannot be reached; closing the connection"
        )),
        "{line}"
    );
}

/// A Record node whose Redis is down says so at start-up, naming the
/// store without its password, instead of nothing until the first request.
#[test]
fn startup_test_an_unreachable_store_is_a_warning_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_socket, redis) = refusing_port();
    let mut config = record_config(dir.path(), "http://127.0.0.1:9");
    config["redis"] = json!({
        "url": format!("redis://:s3cret-pass@{redis}/0"),
    });
    let node = NodeProcess::spawn(&config, dir.path(), "no-redis");
    let line = node.wait_for_line("store unreachable", Duration::from_secs(5));
    assert!(line.contains(" WARN "), "{line}");
    assert!(
        line.contains(&format!(
            "store unreachable: redis redis://:[redacted]@{redis}/0"
        )) && line.contains("records wait in the spool until it is back"),
        "{line}"
    );
    assert!(line.contains("refused"), "the error is named: {line}");
    let log = node.log();
    assert!(!log.contains("s3cret"), "{log}");
}

/// A Playback node whose Record node is not there yet: one warning per
/// shard that counts the failure it reports, and every replay result is
/// scraped at 0 before the first one, so an alert on rate() sees the first
/// mismatch.
#[test]
fn startup_test_a_missing_peer_is_counted_from_one_and_replay_results_start_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (_socket, peer) = refusing_port();
    let api = free_port();
    let config = json!({
        "mode": "Playback",
        "http": {"host": "127.0.0.1", "port": free_port(), "downstream": "http://127.0.0.1:9"},
        "api": {"host": "127.0.0.1", "port": api},
        "sync": {"enabled": true, "shards": 1, "peer": {"host": "127.0.0.1", "port": peer.port()}},
        "data_dir": dir.path(),
    });
    let node = NodeProcess::spawn(&config, dir.path(), "playback");
    let line = node.wait_for_line("sync round failed", Duration::from_secs(10));
    assert!(
        line.contains(" WARN ") && line.contains("failures=1"),
        "{line}"
    );
    let metrics = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{api}/metrics")])
        .output()
        .expect("curl runs");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    for protocol in ["http", "tcp", "grpc"] {
        for result in ["matched", "mismatched", "failed", "skipped"] {
            let series =
                format!("qproxy_replays_total{{protocol=\"{protocol}\",result=\"{result}\"}} 0");
            assert!(metrics.contains(&series), "{series} in:\n{metrics}");
        }
    }
}
