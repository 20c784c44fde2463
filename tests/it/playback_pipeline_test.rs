//! HTTP replays pipelined down one connection per shard: zone B sees every
//! record in order; a connection dropped with requests in flight loses
//! nothing, and each non-idempotent record sent again is counted; a
//! `Connection: close` answer and chunked answers are followed.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use qproxy::node::RunningNode;
use qproxy::record::RecordId;
use serde_json::{json, Value};

use crate::support::{
    self, eventually, get_json, get_text, ClientConn, FakeDownstream, Seen, StoreChoice, Wire,
};

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

/// Sends `n` requests in order from one client (one shard), of every
/// method.
async fn send(proxy: SocketAddr, n: usize) {
    let mut conn = ClientConn::connect("127.0.0.1".parse().unwrap(), proxy).await;
    for i in 0..n {
        let method = METHODS[i % METHODS.len()];
        let body = match method {
            "GET" | "DELETE" => Bytes::new(),
            _ => Bytes::from(format!("body {i} ").repeat(i % 7 + 1)),
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("/p/{i}?q=1"))
            .header("host", "zone-a")
            .header("x-test-seq", i.to_string())
            .body(Full::new(body))
            .unwrap();
        let (status, _, _) = conn.send(req).await;
        assert_eq!(status, StatusCode::OK);
    }
}

fn seq(seen: &Seen) -> usize {
    seen.header("x-test-seq").unwrap().parse().unwrap()
}

fn replay_id(seen: &Seen) -> RecordId {
    seen.header("x-qproxy-replay-id").unwrap().parse().unwrap()
}

/// A Record node in front of `zone_a` that has recorded `n` requests, then
/// a Playback node replaying them to `zone_b` (started after, so it works
/// off a backlog).
async fn backlog(
    zone_a: &FakeDownstream,
    zone_b: &FakeDownstream,
    n: usize,
    dir: &std::path::Path,
    playback: impl FnOnce(&mut Value),
) -> (RunningNode, RunningNode) {
    let record = support::start_node(support::record_config(
        &zone_a.url(),
        1,
        &StoreChoice::Embedded(dir.join("a")),
    ))
    .await;
    send(record.http_addr.unwrap(), n).await;
    let mut config = support::playback_config(
        &zone_b.url(),
        1,
        record.api_addr,
        &StoreChoice::Embedded(dir.join("b")),
    );
    playback(&mut config);
    let playback = support::start_node(config).await;
    (record, playback)
}

async fn playback_status(api: SocketAddr) -> Value {
    get_json(&format!("http://{api}/api/status")).await.1["playback"].clone()
}

/// Waits until the Playback node has judged `n` records.
async fn judged(api: SocketAddr, n: u64) -> Value {
    eventually("every record judged", Duration::from_secs(60), || async {
        let p = playback_status(api).await;
        let done = ["matched", "mismatched", "failed", "skipped"]
            .iter()
            .map(|k| p[k].as_u64().unwrap())
            .sum::<u64>();
        (done >= n).then_some(p)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playback_pipeline_test_five_hundred_records_arrive_in_order_down_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start_wire(Wire::default()).await;
    let n = 500;
    let (record, playback) = backlog(&zone_a, &zone_b, n, dir.path(), |c| {
        c["sync"]["batch_size"] = json!(200);
    })
    .await;
    let status = judged(playback.api_addr, n as u64).await;
    assert_eq!(status["matched"], n, "{status}");
    assert_eq!(status["resent"], 0, "{status}");

    let seen = zone_b.seen();
    assert_eq!(
        seen.iter().map(seq).collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>(),
        "each record once, in the order it was recorded"
    );
    let ids: Vec<RecordId> = seen.iter().map(replay_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in id order");
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.method, METHODS[i % METHODS.len()]);
        assert_eq!(s.uri, format!("/p/{i}?q=1"));
        assert_eq!(s.header("host"), Some("zone-a"), "the recorded Host");
        let body_len = if matches!(s.method.as_str(), "GET" | "DELETE") {
            0
        } else {
            format!("body {i} ").len() * (i % 7 + 1)
        };
        assert_eq!(s.body.len(), body_len, "{}", s.uri);
    }
    assert!(
        zone_b.max_pipelined() > 1,
        "requests were written ahead of their answers (at most {} came together)",
        zone_b.max_pipelined()
    );
    playback.stop().await;
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playback_pipeline_test_a_connection_dropped_mid_pipeline_loses_nothing_and_counts_resent_posts(
) {
    let dir = tempfile::tempdir().unwrap();
    let zone_a = FakeDownstream::start().await;
    // Each connection answers 3 requests, then reads what else comes
    // without answering it and drops.
    let zone_b = FakeDownstream::start_wire(Wire {
        break_after: Some(3),
        ..Wire::default()
    })
    .await;
    let n = 60;
    let (record, playback) = backlog(&zone_a, &zone_b, n, dir.path(), |c| {
        c["sync"]["batch_size"] = json!(30);
        c["playback"] = json!({"pipeline_depth": 16});
    })
    .await;
    let status = judged(playback.api_addr, n as u64).await;
    assert_eq!(status["matched"], n, "{status}");
    assert_eq!(status["failed"], 0, "{status}");

    let held = zone_b.held();
    assert!(held.len() >= 5, "connections were dropped: {}", held.len());
    // The oldest unanswered request of a dropped connection is tried again
    // as any undelivered record is; the ones after it were perhaps
    // delivered, are sent again, and the non-idempotent ones are counted.
    let non_idempotent = |s: &&Seen| matches!(s.method.as_str(), "POST" | "PATCH");
    let expected: usize = held
        .iter()
        .map(|h| h.iter().skip(1).filter(non_idempotent).count())
        .sum();
    eprintln!(
        "{} connections dropped holding {:?} requests; {expected} non-idempotent sent again",
        held.len(),
        held.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(expected > 0);
    assert_eq!(status["resent"], expected, "{status}");
    assert_eq!(
        status["retries"],
        held.len(),
        "each dropped connection is one retry"
    );

    // Every record arrived; the first arrival of each is in order; a
    // record arrives again only after a drop that held it.
    let seen = zone_b.seen();
    let mut first = Vec::new();
    let mut times = vec![0usize; n];
    for s in &seen {
        let i = seq(s);
        if times[i] == 0 {
            first.push(i);
        }
        times[i] += 1;
    }
    assert_eq!(first, (0..n).collect::<Vec<_>>(), "in order, none lost");
    for (i, t) in times.iter().enumerate() {
        let held_times = held
            .iter()
            .filter(|h| h.iter().any(|s| seq(s) == i))
            .count();
        assert_eq!(*t, 1 + held_times, "record {i}");
    }

    let metrics = get_text(&format!("http://{}/metrics", playback.api_addr)).await;
    assert!(
        metrics.contains("# HELP qproxy_replays_resent_total"),
        "{metrics}"
    );
    playback.stop().await;
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playback_pipeline_test_connection_close_and_chunked_answers_are_followed() {
    let dir = tempfile::tempdir().unwrap();
    let zone_a = FakeDownstream::start().await;
    // Every 7th answer on a connection says `Connection: close`; bodies
    // come chunked (zone A's came with Content-Length: the same bytes).
    let zone_b = FakeDownstream::start_wire(Wire {
        chunked: true,
        close_after: Some(7),
        ..Wire::default()
    })
    .await;
    let n = 100;
    let (record, playback) = backlog(&zone_a, &zone_b, n, dir.path(), |_| {}).await;
    let status = judged(playback.api_addr, n as u64).await;
    assert_eq!(status["matched"], n, "{status}");
    assert_eq!(status["retries"], 0, "a close is no failure: {status}");
    assert_eq!(status["resent"], 0, "nothing after a close was processed");
    let seen = zone_b.seen();
    assert_eq!(
        seen.iter().map(seq).collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>(),
        "each record once, in order"
    );
    playback.stop().await;
    record.stop().await;
}

/// A batch's results are saved while the next batch replays: when the
/// Playback node's store fails, what was replayed and not saved is
/// replayed again after the last commit, and no commit gets ahead of the
/// saved results (every record ends with a saved result).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playback_pipeline_test_the_playback_store_failing_mid_backlog_loses_no_result() {
    let dir = tempfile::tempdir().unwrap();
    // Writes it acknowledged survive its kill.
    let mut redis = crate::support::RedisServer::start_args(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ]);
    let zone_a = FakeDownstream::start().await;
    // Each answer takes 2 ms: the backlog takes a while to work off.
    let zone_b = FakeDownstream::start_with_delay(Duration::from_millis(2)).await;
    let n = 400;
    let record = support::start_node(support::record_config(
        &zone_a.url(),
        1,
        &StoreChoice::Embedded(dir.path().join("a")),
    ))
    .await;
    send(record.http_addr.unwrap(), n).await;
    let mut config = support::playback_config(
        &zone_b.url(),
        1,
        record.api_addr,
        &StoreChoice::Redis {
            url: redis.url(),
            prefix: "b".into(),
        },
    );
    config["sync"]["batch_size"] = json!(40);
    let playback = support::start_node(config).await;

    eventually(
        "part of the backlog replayed",
        Duration::from_secs(30),
        || async { (zone_b.count() >= n / 4).then_some(()) },
    )
    .await;
    redis.stop();
    let at_stop = zone_b.count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        at_stop < n,
        "the store fails mid-backlog ({at_stop} of {n})"
    );
    redis.restart();

    let last = eventually("every record replayed", Duration::from_secs(60), || async {
        let seen = zone_b.seen();
        let mut first: Vec<usize> = Vec::new();
        for s in &seen {
            if !first.contains(&seq(s)) {
                first.push(seq(s));
            }
        }
        (first.len() == n).then_some((first, seen))
    })
    .await;
    let (first, seen) = last;
    assert_eq!(first, (0..n).collect::<Vec<_>>(), "first arrivals in order");
    let last_id = seen.iter().map(replay_id).max().unwrap().to_string();
    eventually(
        "the last record committed",
        Duration::from_secs(30),
        || async {
            (support::checkpoints(record.api_addr, "zone-b")
                .await
                .get(&0)
                == Some(&last_id))
            .then_some(())
        },
    )
    .await;
    // Every record has its result saved (none committed past an unsaved one).
    let (_, replays) = get_json(&format!(
        "http://{}/api/replays?limit=1000",
        playback.api_addr
    ))
    .await;
    let mut ids: Vec<String> = replays["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["record_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "a saved result for every record");
    eprintln!(
        "store down at {at_stop} arrivals; {} arrivals in all for {n} records",
        seen.len()
    );
    playback.stop().await;
    record.stop().await;
}

/// An `https://` target: the pipelined connection speaks TLS with the
/// node's client config (its CA, its client certificate, ALPN http/1.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playback_pipeline_test_an_https_target_wanting_a_client_certificate() {
    let pki = crate::pki::Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start_tls(pki.acceptor("server", Some("ca"))).await;
    let n = 120;
    let (record, playback) = backlog(&zone_a, &zone_b, n, dir.path(), |c| {
        c["tls"] = json!({
            "ca": pki.file("ca.pem"),
            "client_cert": pki.file("client.pem"),
            "client_key": pki.file("client.key"),
        });
    })
    .await;
    let status = judged(playback.api_addr, n as u64).await;
    assert_eq!(status["matched"], n, "{status}");
    let seen = zone_b.seen();
    assert_eq!(
        seen.iter().map(seq).collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>()
    );
    playback.stop().await;
    record.stop().await;
}
