//! The Record node: what it records, what `GET /sync` and `POST /commit`
//! answer, and that recording never breaks proxying.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use crate::support::{
    self, eventually, get_json, post_json, FakeDownstream, RedisServer, StoreChoice,
};

async fn sync(api: SocketAddr, query: &str) -> Value {
    let (status, body) = get_json(&format!("http://{api}/sync?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn wait_for_records(api: SocketAddr, query: &str, n: usize) -> Value {
    eventually(
        &format!("{n} records on /sync?{query}"),
        Duration::from_secs(20),
        || async {
            // A store on its way back answers 503 for a moment.
            let (status, body) = get_json(&format!("http://{api}/sync?{query}")).await;
            (status == StatusCode::OK && body["records"].as_array().unwrap().len() >= n)
                .then_some(body)
        },
    )
    .await
}

/// A Record node with an embedded store in a temporary folder.
async fn embedded_record_node(
    downstream: &str,
    shards: u32,
) -> (qproxy::node::RunningNode, tempfile::TempDir) {
    embedded_record_node_with(downstream, shards, json!({})).await
}

/// The same, with this `record` section.
async fn embedded_record_node_with(
    downstream: &str,
    shards: u32,
    record: Value,
) -> (qproxy::node::RunningNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreChoice::Embedded(dir.path().into());
    let mut config = support::record_config(downstream, shards, &store);
    config["record"] = record;
    (support::start_node(config).await, dir)
}

fn b64(s: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.as_str().unwrap())
        .unwrap()
}

#[tokio::test]
async fn an_exchange_is_recorded_in_full() {
    let downstream = FakeDownstream::start().await;
    let (node, _dir) = embedded_record_node(&downstream.url(), 1).await;
    let proxy = node.http_addr.unwrap();
    let mut conn = support::ClientConn::connect("127.0.0.1".parse().unwrap(), proxy).await;
    let (status, _, answer) = conn
        .send(
            Request::post("/orders?id=7")
                .header("host", "shop")
                .header("content-type", "application/json")
                .header("x-test-status", "201")
                .header("connection", "keep-alive")
                .body(Full::new(Bytes::from_static(b"{\"qty\":2}")))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let body = wait_for_records(node.api_addr, "peer_id=p&shard_id=default", 1).await;
    let record = &body["records"][0];
    assert_eq!(body["has_more"], false);
    assert_eq!(body["next_id"], record["id"]);
    assert!(
        record["id"].as_str().unwrap().contains('-'),
        "ids are <ms>-<seq>"
    );
    assert_eq!(record["shard"], 0);
    assert_eq!(record["client_addr"], conn.local.to_string());
    assert_eq!(record["error"], Value::Null);
    let http = &record["exchange"]["http"];
    assert_eq!(http["method"], "POST");
    assert_eq!(http["uri"], "/orders?id=7");
    assert_eq!(http["status"], 201);
    assert_eq!(b64(&http["request_body"]), b"{\"qty\":2}");
    assert_eq!(b64(&http["response_body"]), &answer[..]);
    let headers: Vec<(String, String)> =
        serde_json::from_value(http["request_headers"].clone()).unwrap();
    assert!(headers.contains(&("host".into(), "shop".into())));
    assert!(headers.contains(&("x-test-status".into(), "201".into())));
    assert!(
        !headers.iter().any(|(n, _)| n == "connection"),
        "hop-by-hop headers are not recorded"
    );
    assert!(
        !headers.iter().any(|(n, _)| n == "x-forwarded-for"),
        "the client's own headers are recorded"
    );
    let response_headers: Vec<(String, String)> =
        serde_json::from_value(http["response_headers"].clone()).unwrap();
    assert!(response_headers.contains(&("content-type".into(), "application/json".into())));

    // MessagePack on request.
    let response = support::client()
        .request(
            Request::get(format!("http://{}/sync?peer_id=p", node.api_addr))
                .header("accept", "application/msgpack")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/msgpack");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let batch: qproxy::sync::SyncBatch = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(batch.records.len(), 1);
    assert_eq!(
        batch.records[0].id.unwrap().to_string(),
        record["id"].as_str().unwrap()
    );
    node.stop().await;
}

#[tokio::test]
async fn a_failed_downstream_is_recorded_with_its_error() {
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let (node, _dir) = embedded_record_node(&dead, 1).await;
    let (status, _) = support::post_raw(
        &format!("http://{}/x", node.http_addr.unwrap()),
        Bytes::from_static(b"b"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = wait_for_records(node.api_addr, "peer_id=p", 1).await;
    let record = &body["records"][0];
    assert!(
        record["error"].as_str().unwrap().contains("refused"),
        "{record}"
    );
    assert_eq!(record["exchange"]["http"]["status"], Value::Null);
    node.stop().await;
}

#[tokio::test]
async fn sync_pages_by_checkpoint_limit_after_and_time() {
    let downstream = FakeDownstream::start().await;
    let (node, _dir) = embedded_record_node(&downstream.url(), 1).await;
    let proxy = node.http_addr.unwrap();
    let api = node.api_addr;
    let before = qproxy::clock::format_ms(qproxy::clock::now_ms() - 1000);
    for i in 0..5 {
        support::get_json(&format!("http://{proxy}/n/{i}")).await;
    }
    let all = wait_for_records(api, "peer_id=p", 5).await;
    let ids: Vec<String> = all["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let uris: Vec<&str> = all["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["exchange"]["http"]["uri"].as_str().unwrap())
        .collect();
    assert_eq!(
        uris,
        ["/n/0", "/n/1", "/n/2", "/n/3", "/n/4"],
        "records come in order"
    );

    let page = sync(api, "peer_id=p&limit=2").await;
    assert_eq!(page["records"].as_array().unwrap().len(), 2);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["next_id"], ids[1].as_str());
    let page = sync(api, &format!("peer_id=p&limit=2&after={}", ids[3])).await;
    assert_eq!(page["records"][0]["id"], ids[4].as_str());
    assert_eq!(page["has_more"], false);

    // A commit moves this peer's start; other peers are not affected.
    let commit = json!({"peer_id": "p", "shard_id": "default", "last_sync_time": 1, "last_record_id": ids[2],
                        "status": "Completed", "retry_count": 0, "error_message": ""});
    let (status, stored) = post_json(&format!("http://{api}/commit"), &commit).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["last_record_id"], ids[2].as_str());
    let page = sync(api, "peer_id=p").await;
    assert_eq!(page["records"][0]["id"], ids[3].as_str());
    assert_eq!(
        sync(api, "peer_id=other").await["records"]
            .as_array()
            .unwrap()
            .len(),
        5
    );

    // Never backwards, and a repeat is harmless.
    let mut older = commit.clone();
    older["last_record_id"] = json!(ids[0]);
    let (status, stored) = post_json(&format!("http://{api}/commit"), &older).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored["last_record_id"], ids[2].as_str());
    let (_, stored) = post_json(&format!("http://{api}/commit"), &commit).await;
    assert_eq!(stored["last_record_id"], ids[2].as_str());

    // By time: everything since a second ago, nothing in the future.
    let page = sync(api, &format!("peer_id=p&start={before}")).await;
    assert_eq!(page["records"].as_array().unwrap().len(), 5);
    let future = qproxy::clock::format_ms(qproxy::clock::now_ms() + 3_600_000);
    let page = sync(api, &format!("peer_id=p&start={future}")).await;
    assert!(page["records"].as_array().unwrap().is_empty());
    assert_eq!(page["next_id"], Value::Null);
    let page = sync(api, &format!("peer_id=p&start={before}&end={before}")).await;
    assert!(page["records"].as_array().unwrap().is_empty());
    node.stop().await;
}

#[tokio::test]
async fn malformed_queries_and_bodies_get_a_400_that_says_why() {
    let (node, _dir) = embedded_record_node("http://127.0.0.1:9", 2).await;
    let api = node.api_addr;
    for (query, says) in [
        ("shard_id=7", "out of range"),
        ("shard_id=x", "shard_id `x`"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("after=12-x", "after"),
        ("start=yesterday", "start"),
        ("peer_id=a%20b", "peer_id"),
        ("bogus=1", "unknown query parameter `bogus`"),
        ("limit=1&limit=2", "twice"),
    ] {
        let (status, body) = get_json(&format!("http://{api}/sync?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(
            body["error"].as_str().unwrap().contains(says),
            "{query}: {body}"
        );
    }
    for (body, says) in [
        ("not json", "commit body"),
        ("{}", "missing field"),
        (
            r#"{"peer_id":"p","shard_id":0,"last_record_id":"x"}"#,
            "not a record id",
        ),
        (
            r#"{"peer_id":"p","shard_id":5,"last_record_id":"1-0"}"#,
            "out of range",
        ),
        (
            r#"{"peer_id":"p","shard_id":0,"last_record_id":"1-0","extra":1}"#,
            "unknown field",
        ),
        (
            r#"{"peer_id":"p","shard_id":0,"last_record_id":"1-0","status":"Done"}"#,
            "unknown variant",
        ),
        (
            r#"{"peer_id":"","shard_id":0,"last_record_id":"1-0"}"#,
            "peer_id",
        ),
    ] {
        let (status, answer) =
            support::post_raw(&format!("http://{api}/commit"), Bytes::from(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            answer["error"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
    }
    let (status, _) = support::post_raw(&format!("http://{api}/sync"), Bytes::new()).await;
    assert_eq!(
        status,
        StatusCode::METHOD_NOT_ALLOWED,
        "POST /sync is a Playback endpoint"
    );
    let (status, _) = get_json(&format!("http://{api}/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    node.stop().await;
}

#[tokio::test]
async fn shard_by_header_keeps_a_key_on_one_shard() {
    let downstream = FakeDownstream::start().await;
    let (node, _dir) = embedded_record_node_with(
        &downstream.url(),
        8,
        json!({"shard_key_header": "x-tenant"}),
    )
    .await;
    let proxy = node.http_addr.unwrap();
    for i in 0..24 {
        let tenant = format!("t{}", i % 3);
        support::client()
            .request(
                Request::get(format!("http://{proxy}/"))
                    .header("x-tenant", tenant)
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
    }
    let mut shards_of_tenant =
        std::collections::HashMap::<String, std::collections::HashSet<u64>>::new();
    let mut total = 0;
    eventually(
        "24 records over the shards",
        Duration::from_secs(20),
        || async {
            let mut n = 0;
            for shard in 0..8 {
                n += sync(node.api_addr, &format!("peer_id=p&shard_id={shard}")).await["records"]
                    .as_array()
                    .unwrap()
                    .len();
            }
            (n == 24).then_some(())
        },
    )
    .await;
    for shard in 0..8 {
        let page = sync(node.api_addr, &format!("peer_id=p&shard_id={shard}")).await;
        for r in page["records"].as_array().unwrap() {
            let headers: Vec<(String, String)> =
                serde_json::from_value(r["exchange"]["http"]["request_headers"].clone()).unwrap();
            let tenant = headers
                .iter()
                .find(|(n, _)| n == "x-tenant")
                .unwrap()
                .1
                .clone();
            shards_of_tenant.entry(tenant).or_default().insert(shard);
            total += 1;
        }
    }
    assert_eq!(total, 24);
    assert_eq!(shards_of_tenant.len(), 3);
    assert!(
        shards_of_tenant.values().all(|s| s.len() == 1),
        "{shards_of_tenant:?}"
    );
    node.stop().await;
}

#[tokio::test]
async fn with_redis_stopped_every_request_is_served_and_recorded_later() {
    let downstream = FakeDownstream::start().await;
    let mut redis = RedisServer::start();
    let store = StoreChoice::Redis {
        url: redis.url(),
        prefix: "down".into(),
    };
    let node = support::start_node(support::record_config(&downstream.url(), 2, &store)).await;
    let proxy = node.http_addr.unwrap();
    let api = node.api_addr;

    support::get_json(&format!("http://{proxy}/before")).await;
    wait_for_records(api, "peer_id=p", 1).await;
    let (status, health) = get_json(&format!("http://{api}/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "UP");
    assert_eq!(health["components"]["redis"], "UP");

    redis.stop();
    for i in 0..20 {
        let response = support::client()
            .request(
                Request::get(format!("http://{proxy}/during/{i}"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "request {i} is served while Redis is down"
        );
    }
    let (status, health) = get_json(&format!("http://{api}/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health["status"], "DOWN");
    assert_eq!(health["components"]["redis"], "DOWN");
    assert!(
        health["error"].as_str().unwrap().contains("redis"),
        "{health}"
    );
    let (_, status) = get_json(&format!("http://{api}/api/status")).await;
    assert_eq!(status["store"]["status"], "DOWN");

    // Back up (empty: no persistence): the spooled records are written.
    redis.restart();
    let during: usize = eventually(
        "spooled records written after Redis is back",
        Duration::from_secs(30),
        || async {
            let mut n = 0;
            for shard in 0..2 {
                let (status, page) = get_json(&format!(
                    "http://{api}/sync?peer_id=p&shard_id={shard}&limit=100"
                ))
                .await;
                if status != StatusCode::OK {
                    return None;
                }
                n += page["records"].as_array().unwrap().len();
            }
            (n == 20).then_some(n)
        },
    )
    .await;
    assert_eq!(during, 20);
    let (_, status) = get_json(&format!("http://{api}/api/status")).await;
    assert_eq!(status["recording"]["dropped"], 0);
    node.stop().await;
}

#[tokio::test]
async fn an_auth_token_guards_everything_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::record_config(
        "http://127.0.0.1:9",
        1,
        &StoreChoice::Embedded(dir.path().into()),
    );
    config["api"]["auth_token"] = json!("s3cret-token-0123456789");
    let node = support::start_node(config).await;
    let api = node.api_addr;
    for path in ["/sync", "/api/status", "/metrics", "/api/checkpoints"] {
        let (status, body) = get_json(&format!("http://{api}{path}")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(body["error"].as_str().unwrap().contains("bearer"), "{body}");
    }
    let response = support::client()
        .request(
            Request::get(format!("http://{api}/sync"))
                .header("authorization", "Bearer s3cret-token-0123456789")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = support::client()
        .request(
            Request::get(format!("http://{api}/sync"))
                .header("authorization", "Bearer wrong")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = get_json(&format!("http://{api}/health")).await;
    assert_eq!(status, StatusCode::OK);
    node.stop().await;
}

/// RFC 9110 §11.1: the scheme name is case-insensitive.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::record_config(
        "http://127.0.0.1:9",
        1,
        &StoreChoice::Embedded(dir.path().into()),
    );
    config["api"]["auth_token"] = json!("s3cret-token-0123456789");
    let node = support::start_node(config).await;
    let status = |authorization: &'static str| {
        let request = Request::get(format!("http://{}/sync", node.api_addr))
            .header("authorization", authorization)
            .body(Full::default())
            .unwrap();
        async move { support::client().request(request).await.unwrap().status() }
    };
    for ok in [
        "bearer s3cret-token-0123456789",
        "BEARER s3cret-token-0123456789",
        "Bearer  s3cret-token-0123456789",
    ] {
        assert_eq!(status(ok).await, StatusCode::OK, "{ok}");
    }
    for refused in [
        "Basic s3cret-token-0123456789",
        "Bearers3cret-token-0123456789",
        "s3cret-token-0123456789",
        "bearer s3cret-token-012345678",
    ] {
        assert_eq!(status(refused).await, StatusCode::UNAUTHORIZED, "{refused}");
    }
    node.stop().await;
}

#[tokio::test]
async fn metrics_show_the_readme_names() {
    let downstream = FakeDownstream::start().await;
    let (node, _dir) = embedded_record_node(&downstream.url(), 1).await;
    support::get_json(&format!("http://{}/m", node.http_addr.unwrap())).await;
    wait_for_records(node.api_addr, "peer_id=p", 1).await;
    let response = support::client()
        .request(
            Request::get(format!("http://{}/metrics", node.api_addr))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for name in [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "http_active_connections",
        "qproxy_records_total{protocol=\"http\"} ",
        "qproxy_record_bytes_total{protocol=\"http\"} ",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(
        text.contains("# HELP http_requests_total "),
        "metrics carry HELP text:\n{text}"
    );
    node.stop().await;
}

#[tokio::test]
async fn redacted_headers_are_proxied_but_not_stored() {
    let downstream = FakeDownstream::start().await;
    let (node, _dir) = embedded_record_node_with(
        &downstream.url(),
        1,
        json!({"redact_headers": ["authorization", "content-type"]}),
    )
    .await;
    let response = support::client()
        .request(
            Request::get(format!("http://{}/private", node.http_addr.unwrap()))
                .header("authorization", "Bearer zone-a-secret")
                .header("x-visible", "yes")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        downstream.seen()[0].header("authorization"),
        Some("Bearer zone-a-secret"),
        "the downstream gets the real value"
    );
    let body = wait_for_records(node.api_addr, "peer_id=p", 1).await;
    let text = body.to_string();
    assert!(
        !text.contains("zone-a-secret"),
        "the secret is not stored: {text}"
    );
    let http = &body["records"][0]["exchange"]["http"];
    let request: Vec<(String, String)> =
        serde_json::from_value(http["request_headers"].clone()).unwrap();
    assert!(request.contains(&("authorization".into(), "[redacted]".into())));
    assert!(request.contains(&("x-visible".into(), "yes".into())));
    let response: Vec<(String, String)> =
        serde_json::from_value(http["response_headers"].clone()).unwrap();
    assert!(
        response.contains(&("content-type".into(), "[redacted]".into())),
        "response headers too"
    );
    node.stop().await;
}

/// A store that stops answering for a while (Redis `CLIENT PAUSE … WRITE`)
/// must not cost records: while a write hangs, the writer keeps taking what
/// the proxy captures into its spool, so a queue of 100 places loses nothing
/// to 300 requests.
#[tokio::test]
async fn a_store_that_stalls_fills_the_spool_not_the_queue() {
    let downstream = FakeDownstream::start().await;
    let redis = RedisServer::start();
    let store = StoreChoice::Redis {
        url: redis.url(),
        prefix: "stall".into(),
    };
    let mut config = support::record_config(&downstream.url(), 1, &store);
    config["record"] = json!({"queue_capacity": 100, "batch_size": 10});
    let node = support::start_node(config).await;
    let proxy = node.http_addr.unwrap();
    let api = node.api_addr;
    support::send_posts(proxy, 1, "warm").await;
    wait_for_records(api, "peer_id=p", 1).await;

    support::redis_cli(redis.port, &["CLIENT", "PAUSE", "3000", "WRITE"]);
    let started = std::time::Instant::now();
    support::send_posts(proxy, 300, "stalled").await;
    let (_, status) = get_json(&format!("http://{api}/api/status")).await;
    if started.elapsed() < Duration::from_millis(2500) {
        // Still paused: none of the 300 is written yet.
        assert_eq!(status["recording"]["written"], 1, "{status}");
    }
    let done = eventually(
        "301 written or dropped",
        Duration::from_secs(20),
        || async {
            let (_, status) = get_json(&format!("http://{api}/api/status")).await;
            let recording = &status["recording"];
            let n = recording["written"].as_u64()? + recording["dropped"].as_u64()?;
            (n == 301).then_some(status)
        },
    )
    .await;
    assert_eq!(done["recording"]["dropped"], 0, "{done}");
    assert_eq!(done["recording"]["written"], 301, "{done}");
    node.stop().await;
}

/// The spool is bounded in bytes too: with Redis down, ten records of
/// 300 KiB do not fit in `spool_bytes` = 1 MiB; the oldest are dropped and
/// counted, the newest are written once Redis is back.
#[tokio::test]
async fn the_spool_keeps_the_newest_records_within_spool_bytes() {
    let downstream = FakeDownstream::start().await;
    let mut redis = RedisServer::start();
    let store = StoreChoice::Redis {
        url: redis.url(),
        prefix: "bytes".into(),
    };
    let mut config = support::record_config(&downstream.url(), 1, &store);
    config["record"] = json!({"spool_bytes": 1 << 20});
    let node = support::start_node(config).await;
    let proxy = node.http_addr.unwrap();
    let api = node.api_addr;
    redis.stop();
    for i in 0..10 {
        let response = support::client()
            .request(
                Request::post(format!("http://{proxy}/big/{i}"))
                    .body(Full::new(Bytes::from(vec![b'x'; 300 << 10])))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let status = eventually(
        "ten records spooled or dropped",
        Duration::from_secs(10),
        || async {
            let (_, status) = get_json(&format!("http://{api}/api/status")).await;
            let recording = &status["recording"];
            let n = recording["spooled"].as_u64()? + recording["dropped"].as_u64()?;
            (n == 10).then_some(status)
        },
    )
    .await;
    assert_eq!(status["recording"]["spooled"], 3, "{status}");
    redis.restart();
    let page = wait_for_records(api, "peer_id=p&limit=100", 3).await;
    let uris: Vec<&str> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["exchange"]["http"]["uri"].as_str().unwrap())
        .collect();
    assert_eq!(uris, ["/big/7", "/big/8", "/big/9"]);
    node.stop().await;
}

/// The ids of the records on shard 0 of `api`, oldest first, once `n` are there.
async fn record_ids(api: SocketAddr, n: usize) -> Vec<String> {
    wait_for_records(api, "peer_id=ids", n).await["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn commit_of(peer: &str, shard: u32, id: &str) -> Value {
    json!({"peer_id": peer, "shard_id": shard, "last_record_id": id, "status": "Completed"})
}

/// Committing past the newest record would leave the peer waiting on that
/// shard forever: it is refused with a 409 that names the shard, the id and
/// the newest id, and the checkpoint stays where it was.
#[tokio::test]
async fn a_commit_beyond_the_newest_record_is_refused() {
    let downstream = FakeDownstream::start().await;
    let (node, _dir) = embedded_record_node(&downstream.url(), 2).await;
    let proxy = node.http_addr.unwrap();
    let api = node.api_addr;
    let mut conn = support::ClientConn::connect("127.0.0.1".parse().unwrap(), proxy).await;
    for i in 0..3 {
        let req = Request::get(format!("/c/{i}"))
            .body(Full::default())
            .unwrap();
        assert_eq!(conn.send(req).await.0, StatusCode::OK);
    }
    // One client address: every record is on its shard; the other is empty.
    let shard = qproxy::record::shard::shard_of(b"127.0.0.1", 2);
    let empty = 1 - shard;
    let ids: Vec<String> = wait_for_records(api, &format!("peer_id=ids&shard_id={shard}"), 3).await
        ["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let url = format!("http://{api}/commit");
    let (status, _) = post_json(&url, &commit_of("p", shard, &ids[1])).await;
    assert_eq!(status, StatusCode::OK);

    let newest: qproxy::record::RecordId = ids[2].parse().unwrap();
    let beyond = qproxy::record::RecordId::new(newest.ms + 60_000, 0).to_string();
    let (status, body) = post_json(&url, &commit_of("p", shard, &beyond)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("shard {shard}"))
            && error.contains(&beyond)
            && error.contains(&ids[2]),
        "{error}"
    );
    assert_eq!(
        support::checkpoints(api, "p").await.get(&u64::from(shard)),
        Some(&ids[1]),
        "the checkpoint did not move"
    );
    // The newest record itself is fine; a stale commit still changes nothing.
    let (status, stored) = post_json(&url, &commit_of("p", shard, &ids[2])).await;
    assert_eq!(
        (status, stored["last_record_id"].as_str()),
        (StatusCode::OK, Some(ids[2].as_str()))
    );
    let (status, stored) = post_json(&url, &commit_of("p", shard, &ids[0])).await;
    assert_eq!(
        (status, stored["last_record_id"].as_str()),
        (StatusCode::OK, Some(ids[2].as_str()))
    );

    // A shard with no records takes no position past "0-0".
    let (status, body) = post_json(&url, &commit_of("p", empty, &ids[0])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no records"),
        "{body}"
    );
    let (status, _) = post_json(&url, &commit_of("p", empty, "0-0")).await;
    assert_eq!(status, StatusCode::OK);
    node.stop().await;
}

/// Made-up peers cannot grow the node without bound: `sync.max_peers`
/// distinct peers, an `error_message` cut to 1 KiB, and `/api/status`
/// lists at most 100 checkpoints (all of them are paged by
/// `GET /api/checkpoints`).
#[tokio::test]
async fn peers_are_capped_and_what_they_send_is_bounded() {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::record_config(
        &downstream.url(),
        1,
        &StoreChoice::Embedded(dir.path().into()),
    );
    config["sync"]["max_peers"] = json!(102);
    let node = support::start_node(config).await;
    let api = node.api_addr;
    support::get_json(&format!("http://{}/one", node.http_addr.unwrap())).await;
    let id = record_ids(api, 1).await.remove(0);
    let url = format!("http://{api}/commit");
    // "ids" pulled above, so it is one of the 102 already.
    for n in 0..101 {
        let (status, body) = post_json(&url, &commit_of(&format!("peer-{n}"), 0, &id)).await;
        assert_eq!(status, StatusCode::OK, "peer-{n}: {body}");
    }
    let (status, body) = post_json(&url, &commit_of("one-too-many", 0, &id)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("sync.max_peers") && error.contains("102"),
        "{error}"
    );
    let (status, body) = get_json(&format!("http://{api}/sync?peer_id=another-one")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    // Known peers go on as before.
    let (status, _) = get_json(&format!("http://{api}/sync?peer_id=peer-7")).await;
    assert_eq!(status, StatusCode::OK);

    let mut long = commit_of("peer-0", 0, &id);
    long["error_message"] = json!("é".repeat(30_000));
    let (status, stored) = post_json(&url, &long).await;
    assert_eq!(status, StatusCode::OK);
    let kept = stored["error_message"].as_str().unwrap();
    assert!(kept.len() <= 1024, "{} bytes kept", kept.len());
    assert!(kept.starts_with("éé") && kept.ends_with('…'), "{kept}");

    let (_, status) = get_json(&format!("http://{api}/api/status")).await;
    assert_eq!(status["checkpoints"].as_array().unwrap().len(), 100);
    assert_eq!(status["checkpoints_total"], 101);
    let (status, page) =
        get_json(&format!("http://{api}/api/checkpoints?limit=40&offset=80")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 101);
    assert_eq!(page["checkpoints"].as_array().unwrap().len(), 21);
    let (_, page) = get_json(&format!(
        "http://{api}/api/checkpoints?peer_id=peer-7&shard=0"
    ))
    .await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["checkpoints"][0]["peer_id"], "peer-7");
    let (status, _) = get_json(&format!("http://{api}/api/checkpoints?limit=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    node.stop().await;
}
