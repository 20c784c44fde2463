//! Zone A to zone B end to end: traffic through a Record node arrives at the
//! Playback node's downstream exactly as sent, in order, once; a `kill -9`
//! of the Playback node loses nothing and repeats nothing committed.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use qproxy::record::shard::shard_of;
use qproxy::record::RecordId;
use serde_json::{json, Value};

use crate::support::{
    self, checkpoints, eventually, get_json, post_json, ClientConn, FakeDownstream, NodeProcess,
    RedisServer, Rng, Seen, StoreChoice,
};

const SHARDS: u32 = 4;
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

/// One request as a client sent it.
#[derive(Clone)]
#[allow(dead_code)]
struct Sent {
    client: usize,
    seq: usize,
    method: &'static str,
    uri: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

/// Builds `total` requests for `clients` clients, with a few huge bodies.
fn traffic(total: usize, clients: usize, huge: usize, seed: u64) -> Vec<Vec<Sent>> {
    let mut rng = Rng::new(seed);
    let mut per_client: Vec<Vec<Sent>> = vec![Vec::new(); clients];
    for i in 0..total {
        let client = i % clients;
        let seq = per_client[client].len();
        let method = METHODS[rng.below(METHODS.len() as u64) as usize];
        let len = if i < huge {
            64 << 20
        } else {
            match rng.below(100) {
                0..=59 => rng.below(4096) as usize,
                60..=89 => rng.below(256 << 10) as usize,
                90..=97 => rng.below(1 << 20) as usize,
                _ => 1 << 20,
            }
        };
        let len = if method == "GET" || method == "DELETE" {
            len.min(64)
        } else {
            len
        };
        let headers = vec![
            ("host".to_string(), "zone-a.example".to_string()),
            ("x-test-seq".to_string(), format!("{client}:{seq}")),
            ("x-rand".to_string(), format!("{:x}", rng.next())),
            (
                "content-type".to_string(),
                "application/octet-stream".to_string(),
            ),
        ];
        per_client[client].push(Sent {
            client,
            seq,
            method,
            uri: format!("/c{client}/r{seq}?i={i}&x=%2Fy"),
            headers,
            body: rng.bytes(len),
        });
    }
    per_client
}

fn client_ip(client: usize) -> IpAddr {
    format!("127.0.0.{}", client + 2).parse().unwrap()
}

/// Sends every client's requests in order over its own connection, all
/// clients at once; every request must be answered 200.
async fn send_all(proxy: SocketAddr, traffic: &[Vec<Sent>]) {
    let mut tasks = Vec::new();
    for (client, requests) in traffic.iter().enumerate() {
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = ClientConn::connect(client_ip(client), proxy).await;
            for sent in requests {
                let mut req = Request::builder().method(sent.method).uri(&sent.uri);
                for (n, v) in &sent.headers {
                    req = req.header(n, v);
                }
                let (status, _, _) = conn
                    .send(req.body(Full::new(sent.body.clone())).unwrap())
                    .await;
                assert_eq!(status, StatusCode::OK, "{} {}", sent.method, sent.uri);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn seq_of(seen: &Seen) -> (usize, usize) {
    let (c, s) = seen
        .header("x-test-seq")
        .expect("x-test-seq arrives")
        .split_once(':')
        .unwrap();
    (c.parse().unwrap(), s.parse().unwrap())
}

fn replay_id(seen: &Seen) -> RecordId {
    seen.header("x-qproxy-replay-id")
        .expect("every replayed request carries X-QProxy-Replay-Id")
        .parse()
        .unwrap()
}

fn shard_of_client(client: usize) -> u64 {
    u64::from(shard_of(client_ip(client).to_string().as_bytes(), SHARDS))
}

/// Every request arrived byte-exact; per client in order; per shard in id order.
fn check_arrivals(sent: &[Vec<Sent>], seen: &[Seen]) {
    let total: usize = sent.iter().map(Vec::len).sum();
    assert_eq!(seen.len(), total, "every request is replayed exactly once");
    let mut next_seq = vec![0usize; sent.len()];
    let mut last_id_of_shard: HashMap<u64, RecordId> = HashMap::new();
    for s in seen {
        let (client, seq) = seq_of(s);
        let expected = &sent[client][seq];
        assert_eq!(
            seq, next_seq[client],
            "client {client}'s requests arrive in their order"
        );
        next_seq[client] += 1;
        assert_eq!(s.method, expected.method);
        assert_eq!(s.uri, expected.uri);
        assert_eq!(
            s.body.len(),
            expected.body.len(),
            "{} body length",
            expected.uri
        );
        assert!(
            s.body == expected.body,
            "{} body is byte-exact",
            expected.uri
        );
        for (n, v) in &expected.headers {
            assert_eq!(
                s.header(n),
                Some(v.as_str()),
                "header {n} of {}",
                expected.uri
            );
        }
        assert_eq!(
            s.header("x-forwarded-for"),
            None,
            "zone A's proxy headers are not replayed"
        );
        let id = replay_id(s);
        let shard = shard_of_client(client);
        if let Some(prev) = last_id_of_shard.insert(shard, id) {
            assert!(prev < id, "shard {shard} replays in id order");
        }
    }
}

async fn cross_zone(
    store_a: StoreChoice,
    store_b: StoreChoice,
    total: usize,
    huge: usize,
    mqtt: bool,
) {
    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start().await;
    let mut record_config = support::record_config(&zone_a.url(), SHARDS, &store_a);
    if mqtt {
        record_config["mqtt"] = json!({"embedded_broker": {"enabled": true, "port": 0}});
    }
    let record = support::start_node(record_config).await;
    let mut playback_config =
        support::playback_config(&zone_b.url(), SHARDS, record.api_addr, &store_b);
    if let Some(broker) = record.broker_addr {
        playback_config["mqtt"] = json!({"host": "127.0.0.1", "port": broker.port()});
    }
    let playback = support::start_node(playback_config).await;

    let sent = traffic(total, 6, huge, 0x5eed);
    send_all(record.http_addr.unwrap(), &sent).await;
    assert_eq!(zone_a.count(), total);

    eventually(
        "every request replayed in zone B",
        Duration::from_secs(180),
        || async { (zone_b.count() >= total).then_some(()) },
    )
    .await;
    let seen = zone_b.seen();
    check_arrivals(&sent, &seen);

    // Each shard's checkpoint is its last record id.
    let mut last: HashMap<u64, RecordId> = HashMap::new();
    for s in &seen {
        let (client, _) = seq_of(s);
        let e = last.entry(shard_of_client(client)).or_default();
        *e = (*e).max(replay_id(s));
    }
    let committed = eventually(
        "checkpoints reach the last records",
        Duration::from_secs(20),
        || async {
            let c = checkpoints(record.api_addr, "zone-b").await;
            let done = last
                .iter()
                .all(|(shard, id)| c.get(shard) == Some(&id.to_string()));
            done.then_some(c)
        },
    )
    .await;
    assert_eq!(committed.len(), last.len());

    let (_, status) = get_json(&format!("http://{}/api/status", playback.api_addr)).await;
    assert_eq!(status["playback"]["matched"], total, "{status}");
    assert_eq!(status["playback"]["mismatched"], 0);
    assert_eq!(status["playback"]["match_rate"], 1.0);
    if mqtt {
        assert!(
            status["playback"]["mqtt_commits"].as_u64().unwrap() > 0,
            "{status}"
        );
    }
    let (_, replays) = get_json(&format!("http://{}/api/replays?limit=5", playback.api_addr)).await;
    assert_eq!(replays["results"].as_array().unwrap().len(), 5);
    assert_eq!(replays["results"][0]["outcome"], "matched");

    playback.stop().await;
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_cross_zones_through_redis() {
    let redis = RedisServer::start();
    cross_zone(
        StoreChoice::Redis {
            url: redis.url(),
            prefix: "zone-a".into(),
        },
        StoreChoice::Redis {
            url: redis.url(),
            prefix: "zone-b".into(),
        },
        1000,
        3,
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_cross_zones_with_mqtt_on() {
    // Batches of small records come by MQTT query; the 64 MiB ones are over
    // mqtt.max_batch_bytes and come over HTTP.
    let redis = RedisServer::start();
    cross_zone(
        StoreChoice::Redis {
            url: redis.url(),
            prefix: "mqtt-a".into(),
        },
        StoreChoice::Redis {
            url: redis.url(),
            prefix: "mqtt-b".into(),
        },
        1000,
        2,
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_cross_zones_through_the_embedded_store() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    cross_zone(
        StoreChoice::Embedded(a.path().into()),
        StoreChoice::Embedded(b.path().into()),
        1000,
        2,
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_playback_node_loses_nothing_and_repeats_nothing_committed() {
    let redis = RedisServer::start();
    let zone_a = FakeDownstream::start().await;
    // Zone B's service takes a little while, so the kill lands mid-run.
    let zone_b = FakeDownstream::start_with_delay(Duration::from_millis(3)).await;
    let record = support::start_node(support::record_config(
        &zone_a.url(),
        SHARDS,
        &StoreChoice::Redis {
            url: redis.url(),
            prefix: "a".into(),
        },
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::playback_config(
        &zone_b.url(),
        SHARDS,
        record.api_addr,
        &StoreChoice::Embedded(dir.path().join("data")),
    );
    config["http"]["port"] = json!(support::free_port());
    config["api"]["port"] = json!(support::free_port());
    config["sync"]["batch_size"] = json!(20);
    config["logging"]["level"] = json!("info,qproxy=debug");

    let total = 600;
    let sent = traffic(total, 5, 0, 42);
    send_all(record.http_addr.unwrap(), &sent).await;

    let mut first = NodeProcess::spawn(&config, dir.path(), "playback-1");
    eventually(
        "zone B is part way through",
        Duration::from_secs(60),
        || async { (zone_b.count() >= total / 3).then_some(()) },
    )
    .await;
    first.kill();
    let at_kill = zone_b.count();
    assert!(
        at_kill < total,
        "the kill lands before the end ({at_kill} of {total})"
    );
    let committed: HashMap<u64, RecordId> = checkpoints(record.api_addr, "zone-b")
        .await
        .into_iter()
        .map(|(shard, id)| (shard, id.parse().unwrap()))
        .collect();
    assert!(
        !committed.is_empty(),
        "something was committed before the kill"
    );

    let _second = NodeProcess::spawn(&config, dir.path(), "playback-2");
    // Ids are unique within a shard: a record is (shard, id).
    let key = |s: &Seen| {
        let shard = s
            .header("x-qproxy-replay-shard")
            .expect("the shard comes with the id");
        assert_eq!(shard.parse::<u64>().unwrap(), shard_of_client(seq_of(s).0));
        (shard_of_client(seq_of(s).0), replay_id(s))
    };
    let all = eventually(
        "every record replayed after the restart",
        Duration::from_secs(120),
        || async {
            let keys: HashSet<(u64, RecordId)> = zone_b.seen().iter().map(key).collect();
            (keys.len() >= total).then_some(keys)
        },
    )
    .await;
    assert_eq!(all.len(), total, "no record is lost");

    let seen = zone_b.seen();
    let mut times: HashMap<(u64, RecordId), usize> = HashMap::new();
    for s in &seen {
        *times.entry(key(s)).or_default() += 1;
        let (client, seq) = seq_of(s);
        let expected = &sent[client][seq];
        assert!(s.body == expected.body && s.uri == expected.uri);
    }
    let mut committed_seen = 0;
    for s in &seen {
        let (shard, id) = key(s);
        if committed.get(&shard).is_some_and(|c| id <= *c) {
            committed_seen += 1;
            assert_eq!(
                times[&(shard, id)],
                1,
                "record {shard}/{id} was committed before the kill and must not be replayed again"
            );
        }
    }
    assert!(committed_seen > 0);
    let repeated = times.values().filter(|&&n| n > 1).count();
    eprintln!("kill -9: {at_kill} arrivals before the kill, {committed_seen} committed, {repeated} uncommitted replayed twice");
    record.stop().await;
}

#[tokio::test]
async fn a_pushed_batch_is_replayed_at_once_with_a_result_per_record() {
    let zone_b = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::playback_config(
        &zone_b.url(),
        2,
        "127.0.0.1:9".parse().unwrap(),
        &StoreChoice::Embedded(dir.path().into()),
    );
    config["sync"]["enabled"] = json!(false);
    let node = support::start_node(config).await;
    let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
    let record = |id: &str, shard: u32, uri: &str, status: Value, response: &[u8]| {
        json!({
            "id": id, "shard": shard, "captured_at_ms": 1, "duration_us": 1, "client_addr": "10.0.0.1:1",
            "error": null,
            "exchange": {"http": {
                "method": "POST", "uri": uri, "version": "HTTP/1.1",
                "request_headers": [["host", "svc"], ["x-k", "v"]],
                "request_body": b64(b"hi"),
                "status": status,
                "response_headers": [],
                "response_body": b64(response),
            }}
        })
    };
    // What zone B's service will answer for POST /same with body "hi", keys in another order.
    let same =
        json!({"sum": support::fnv(b"hi"), "len": 2, "uri": "/same", "method": "POST"}).to_string();
    let batch = json!({
        "records": [
            record("5-0", 0, "/same", json!(200), same.as_bytes()),
            record("5-1", 1, "/different", json!(200), br#"{"method":"POST","uri":"/different","len":3,"sum":0}"#),
            record("5-2", 0, "/never", Value::Null, b""),
        ],
        "next_id": "5-2",
        "has_more": false,
    });
    let (status, answer) = post_json(&format!("http://{}/sync", node.api_addr), &batch).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let results = answer["results"].as_array().unwrap();
    let outcomes: Vec<&str> = results
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["matched", "mismatched", "skipped"]);
    assert_eq!(results[1]["detail"], "$.len: recorded 3, replayed 2");
    assert!(results[2]["detail"]
        .as_str()
        .unwrap()
        .contains("never answered"));
    assert_eq!(zone_b.count(), 2, "the skipped record is not sent");
    assert_eq!(zone_b.seen()[0].header("x-qproxy-replay-id"), Some("5-0"));
    assert_eq!(zone_b.seen()[0].header("x-k"), Some("v"));

    let (_, found) = get_json(&format!(
        "http://{}/api/replays?result=mismatched",
        node.api_addr
    ))
    .await;
    let found = found["results"].as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["record_id"], "5-1");
    assert_eq!(found[0]["uri"], "/different");
    let (status, _) = get_json(&format!(
        "http://{}/api/replays?result=maybe",
        node.api_addr
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, bad) = support::post_raw(
        &format!("http://{}/sync", node.api_addr),
        Bytes::from_static(b"{\"records\": 5}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        bad["error"].as_str().unwrap().contains("sync batch"),
        "{bad}"
    );
    node.stop().await;
}

/// One pushed record, as `GET /sync` would serve it.
fn pushed_batch(id: &str, uri: &str) -> Value {
    json!({
        "records": [{
            "id": id, "shard": 0, "captured_at_ms": 1, "duration_us": 1, "client_addr": "10.0.0.1:1",
            "error": null,
            "exchange": {"http": {
                "method": "GET", "uri": uri, "version": "HTTP/1.1",
                "request_headers": [["host", "svc"]], "request_body": "",
                "status": 200, "response_headers": [], "response_body": "",
            }}
        }],
        "next_id": id,
        "has_more": false,
    })
}

/// `POST /sync` no longer buffers up to 1 GiB per request with no limit on
/// how many at once: a body over `playback.max_push_bytes` is a 413, a push
/// beyond the two running is a 503 at once, and the node serves the next
/// push as before.
#[tokio::test]
async fn a_push_over_the_limit_or_beyond_two_at_once_is_refused() {
    let zone_b = FakeDownstream::start_with_delay(Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::playback_config(
        &zone_b.url(),
        1,
        "127.0.0.1:9".parse().unwrap(),
        &StoreChoice::Embedded(dir.path().into()),
    );
    config["sync"]["enabled"] = json!(false);
    config["playback"] = json!({"max_push_bytes": 1 << 20});
    let node = support::start_node(config).await;
    let url = format!("http://{}/sync", node.api_addr);

    let (status, body) = support::post_raw(&url, Bytes::from(vec![b' '; 2 << 20])).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("playback.max_push_bytes"),
        "{body}"
    );

    let pushes = (0..3).map(|i| {
        let url = url.clone();
        tokio::spawn(async move {
            let batch = pushed_batch(&format!("9-{i}"), &format!("/slow/{i}"));
            post_json(&url, &batch).await
        })
    });
    let mut answers = Vec::new();
    for push in pushes.collect::<Vec<_>>() {
        answers.push(push.await.unwrap());
    }
    let mut statuses: Vec<u16> = answers.iter().map(|(s, _)| s.as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 503], "{answers:?}");
    let refused = answers.iter().find(|(s, _)| s.as_u16() == 503).unwrap();
    assert!(
        refused.1["error"].as_str().unwrap().contains("at once"),
        "{refused:?}"
    );
    let (status, answer) = post_json(&url, &pushed_batch("9-9", "/after")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["results"][0]["record_id"], "9-9");
    assert!(
        zone_b.seen().iter().any(|s| s.uri == "/after"),
        "the push after the refused ones reached zone B"
    );
    node.stop().await;
}

/// `PUT /api/checkpoints` moves a peer's checkpoint back, and the Playback
/// node really replays that window again, in order, then commits forward.
#[tokio::test]
async fn a_rewound_checkpoint_replays_its_window_again() {
    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start().await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let record = support::start_node(support::record_config(
        &zone_a.url(),
        1,
        &StoreChoice::Embedded(dirs.0.path().into()),
    ))
    .await;
    let playback = support::start_node(support::playback_config(
        &zone_b.url(),
        1,
        record.api_addr,
        &StoreChoice::Embedded(dirs.1.path().into()),
    ))
    .await;
    support::send_posts(record.http_addr.unwrap(), 10, "rw").await;
    eventually("ten replays", Duration::from_secs(20), || async {
        (zone_b.count() == 10).then_some(())
    })
    .await;
    let ids: Vec<String> = zone_b
        .seen()
        .iter()
        .map(|s| s.header("x-qproxy-replay-id").unwrap().to_string())
        .collect();
    eventually(
        "committed up to the 10th",
        Duration::from_secs(20),
        || async {
            (checkpoints(record.api_addr, "zone-b").await.get(&0) == Some(&ids[9])).then_some(())
        },
    )
    .await;

    let url = format!("http://{}/api/checkpoints", record.api_addr);
    let beyond = {
        let last: RecordId = ids[9].parse().unwrap();
        RecordId::new(last.ms + 60_000, 0).to_string()
    };
    let (status, body) = put_json(
        &url,
        &json!({"peer_id": "zone-b", "shard_id": 0, "last_record_id": beyond}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = put_json(
        &url,
        &json!({"peer_id": "zone-b", "shard_id": 0, "last_record_id": ids[4]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["last_record_id"], ids[4].as_str());
    assert_eq!(body["status"], "Pending");

    eventually("records 6 to 10 again", Duration::from_secs(20), || async {
        (zone_b.count() >= 15).then_some(())
    })
    .await;
    let seen = zone_b.seen();
    let again: Vec<(&str, String)> = seen[10..]
        .iter()
        .map(|s| (s.header("x-qproxy-replay-id").unwrap(), s.uri.clone()))
        .collect();
    let expected: Vec<(&str, String)> = (5..10)
        .map(|i| (ids[i].as_str(), format!("/rw/{i}")))
        .collect();
    assert_eq!(again, expected, "6th to 10th again, in order");
    let (_, status) = eventually(
        "the checkpoint back at the 10th",
        Duration::from_secs(20),
        || async {
            let (code, status) = get_json(&format!("http://{}/api/status", record.api_addr)).await;
            (status["checkpoints"][0]["last_record_id"] == ids[9].as_str())
                .then_some((code, status))
        },
    )
    .await;
    assert_eq!(status["checkpoints"][0]["status"], "Completed", "{status}");
    // Nothing more: the window was replayed once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(zone_b.count(), 15);
    playback.stop().await;
    record.stop().await;
}

async fn put_json(url: &str, body: &Value) -> (StatusCode, Value) {
    use http_body_util::BodyExt;
    let response = support::client()
        .request(
            Request::put(url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn playback_test_comparison_takes_chosen_headers_and_leaves_out_ignored_json_paths() {
    let zone_b = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::playback_config(
        &zone_b.url(),
        1,
        "127.0.0.1:9".parse().unwrap(),
        &StoreChoice::Embedded(dir.path().into()),
    );
    config["sync"]["enabled"] = json!(false);
    config["playback"] = json!({
        "compare_headers": ["content-type"],
        "ignore_json_paths": ["$.len", "$.sum"],
    });
    let node = support::start_node(config).await;
    let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
    // Zone B answers {"method","uri","len","sum"} as application/json; the
    // recordings differ from it only in ignored fields, or in a header.
    let record = |id: &str, uri: &str, content_type: &str| {
        let recorded = json!({"method": "POST", "uri": uri, "len": 99, "sum": 1}).to_string();
        json!({
            "id": id, "shard": 0, "captured_at_ms": 1, "duration_us": 1, "client_addr": "10.0.0.1:1",
            "error": null,
            "exchange": {"http": {
                "method": "POST", "uri": uri, "version": "HTTP/1.1",
                "request_headers": [["host", "svc"]],
                "request_body": b64(b"hi"),
                "status": 200,
                "response_headers": [["content-type", content_type], ["date", "Mon, 1 Jan 2024"]],
                "response_body": b64(recorded.as_bytes()),
            }}
        })
    };
    let batch = json!({
        "records": [
            record("7-0", "/same", "application/json"),
            record("7-1", "/typed", "text/plain"),
        ],
        "next_id": "7-1",
        "has_more": false,
    });
    let (status, answer) = post_json(&format!("http://{}/sync", node.api_addr), &batch).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results[0]["outcome"], "matched", "{answer}");
    assert_eq!(results[1]["outcome"], "mismatched", "{answer}");
    assert_eq!(
        results[1]["detail"],
        r#"header content-type: recorded "text/plain", replayed "application/json""#
    );
    node.stop().await;
}
