//! An operator's worst day: zone B down, records that never arrive. Nothing
//! is committed before it reached zone B, nothing is lost without a trace.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use qproxy::record::RecordId;
use serde_json::{json, Value};

use crate::support::{
    self, checkpoints, eventually, free_port, get_json, post_json, send_posts, FakeDownstream,
    NodeProcess, StoreChoice,
};

fn replay_ids(seen: &[crate::support::Seen]) -> Vec<RecordId> {
    seen.iter()
        .map(|s| {
            s.header("x-qproxy-replay-id")
                .expect("replays carry their id")
                .parse()
                .unwrap()
        })
        .collect()
}

fn tags(seen: &[crate::support::Seen]) -> Vec<String> {
    seen.iter().map(|s| s.uri.clone()).collect()
}

async fn health(api: SocketAddr) -> (StatusCode, Value) {
    get_json(&format!("http://{api}/health")).await
}

/// Zone B's service refuses connections for a while (a restart, a deploy):
/// the shard waits on its first undelivered record, commits nothing past
/// it, says so in /health, and delivers everything in order once zone B is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_test_zone_b_down_delays_replays_but_loses_none() {
    let zone_a = FakeDownstream::start().await;
    let (zone_b_down, zone_b_addr) = support::refusing_port();
    let dir = tempfile::tempdir().unwrap();
    let record = support::start_node(support::record_config(
        &zone_a.url(),
        1,
        &StoreChoice::Embedded(dir.path().join("a")),
    ))
    .await;
    let playback = support::start_node(support::playback_config(
        &format!("http://{zone_b_addr}"),
        1,
        record.api_addr,
        &StoreChoice::Embedded(dir.path().join("b")),
    ))
    .await;

    send_posts(record.http_addr.unwrap(), 30, "down").await;
    let (code, body) = eventually(
        "the Playback node reports the shard waiting",
        Duration::from_secs(20),
        || async {
            let (code, body) = health(playback.api_addr).await;
            (body["components"]["replay"] == "DEGRADED").then_some((code, body))
        },
    )
    .await;
    assert_eq!(code, StatusCode::OK, "DEGRADED still serves: {body}");
    assert_eq!(body["status"], "DEGRADED");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("shard 0 waits on record"), "{error}");
    assert!(error.contains(&zone_b_addr.to_string()), "{error}");

    // A few tries later nothing is committed: the first record never arrived.
    eventually("a few retries", Duration::from_secs(20), || async {
        let (_, status) = get_json(&format!("http://{}/api/status", playback.api_addr)).await;
        (status["playback"]["retries"].as_u64().unwrap() >= 3).then_some(())
    })
    .await;
    assert!(
        checkpoints(record.api_addr, "zone-b").await.is_empty(),
        "nothing is committed before it reached zone B"
    );
    let (_, failed) = get_json(&format!(
        "http://{}/api/replays?result=failed",
        playback.api_addr
    ))
    .await;
    assert_eq!(failed["results"], json!([]), "waiting is not failing");

    // Zone B comes back: every record arrives, once, in order.
    drop(zone_b_down);
    let zone_b = FakeDownstream::start_on(zone_b_addr).await;
    eventually(
        "all 30 records replayed in zone B",
        Duration::from_secs(30),
        || async { (zone_b.count() >= 30).then_some(()) },
    )
    .await;
    let seen = zone_b.seen();
    assert_eq!(seen.len(), 30, "each record once");
    let expected: Vec<String> = (0..30).map(|i| format!("/down/{i}")).collect();
    assert_eq!(tags(&seen), expected, "in the order they were recorded");
    let ids = replay_ids(&seen);
    let last = ids.last().unwrap().to_string();
    eventually(
        "the checkpoint reaches the last record",
        Duration::from_secs(20),
        || async {
            (checkpoints(record.api_addr, "zone-b").await.get(&0) == Some(&last)).then_some(())
        },
    )
    .await;
    let (code, body) = health(playback.api_addr).await;
    assert_eq!(
        (code, &body["status"]),
        (StatusCode::OK, &json!("UP")),
        "{body}"
    );
    let (_, replays) = get_json(&format!(
        "http://{}/api/replays?limit=100",
        playback.api_addr
    ))
    .await;
    let results = replays["results"].as_array().unwrap();
    assert_eq!(results.len(), 30);
    assert!(
        results.iter().all(|r| r["outcome"] == "matched"),
        "{replays}"
    );
    let first = results
        .iter()
        .find(|r| r["record_id"] == ids[0].to_string())
        .unwrap();
    assert!(first["attempts"].as_u64().unwrap() > 1, "{first}");

    playback.stop().await;
    record.stop().await;
}

/// With `max_attempts` spent the record is parked where an operator sees it
/// (`/api/replays/parked`, `/health`, the commit's status), the shard moves
/// on, and `POST /api/replays/retry` delivers it once zone B is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_test_given_up_records_are_parked_and_re_driven() {
    let zone_a = FakeDownstream::start().await;
    let (zone_b_down, zone_b_addr) = support::refusing_port();
    let redis = support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let record = support::start_node(support::record_config(
        &zone_a.url(),
        1,
        &StoreChoice::Embedded(dir.path().join("a")),
    ))
    .await;
    let mut config = support::playback_config(
        &format!("http://{zone_b_addr}"),
        1,
        record.api_addr,
        &StoreChoice::Redis {
            url: redis.url(),
            prefix: "b".into(),
        },
    );
    config["playback"] = json!({"max_attempts": 2, "parked_down_threshold": 3});
    let playback = support::start_node(config).await;
    let api = playback.api_addr;

    send_posts(record.http_addr.unwrap(), 2, "parked").await;
    let parked = eventually("two records parked", Duration::from_secs(20), || async {
        let (_, body) = get_json(&format!("http://{api}/api/replays/parked")).await;
        (body["total"] == 2).then_some(body)
    })
    .await;
    let list = parked["parked"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    for (i, p) in list.iter().enumerate() {
        assert_eq!(p["outcome"], "failed");
        assert_eq!(p["attempts"], 2);
        assert_eq!(p["uri"], format!("/parked/{i}"));
        assert!(p["detail"].as_str().unwrap().contains("target"), "{p}");
    }
    // The shard moved on past them, and the commit says why.
    let status = eventually("the commit past them", Duration::from_secs(20), || async {
        let (_, status) = get_json(&format!("http://{}/api/status", record.api_addr)).await;
        (status["checkpoints"][0]["last_record_id"] == list[1]["record_id"]).then_some(status)
    })
    .await;
    let checkpoint = &status["checkpoints"][0];
    assert_eq!(checkpoint["status"], "Failed");
    assert_eq!(checkpoint["retry_count"], 2);
    assert!(
        checkpoint["error_message"]
            .as_str()
            .unwrap()
            .contains("parked"),
        "{checkpoint}"
    );
    let (code, body) = health(api).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["status"], "DEGRADED", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("2 record(s) parked"),
        "{body}"
    );

    // A third parked record reaches parked_down_threshold: DOWN.
    send_posts(record.http_addr.unwrap(), 1, "third").await;
    let (code, body) = eventually("DOWN at three parked", Duration::from_secs(20), || async {
        let (code, body) = health(api).await;
        (body["components"]["replay"] == "DOWN").then_some((code, body))
    })
    .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let metrics = support::get_text(&format!("http://{api}/metrics")).await;
    assert!(
        metrics.contains("# HELP qproxy_replays_parked"),
        "{metrics}"
    );
    assert!(metrics.contains("qproxy_replay_retries_total"), "{metrics}");

    // Bad re-drive requests are refused with a reason.
    let retry = format!("http://{api}/api/replays/retry");
    let (code, body) = post_json(&retry, &json!({"record_id": "1-0"})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let (code, body) = post_json(&retry, &json!({"shard": 0, "record_id": "1-0"})).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    let (code, body) = post_json(&retry, &json!({"shard": 7})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");

    // Zone B is back: one record re-driven by id, then all the rest.
    drop(zone_b_down);
    let zone_b = FakeDownstream::start_on(zone_b_addr).await;
    let first = list[0]["record_id"].as_str().unwrap();
    let (code, body) = post_json(&retry, &json!({"shard": 0, "record_id": first})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        (body["delivered"].clone(), body["still_parked"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(body["results"][0]["attempts"], 3);
    let (code, body) = post_json(&retry, &json!({})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        (body["delivered"].clone(), body["still_parked"].clone()),
        (json!(2), json!(0))
    );
    assert_eq!(
        tags(&zone_b.seen()),
        ["/parked/0", "/parked/1", "/third/0"],
        "each parked record delivered once, oldest first"
    );
    let (code, body) = health(api).await;
    assert_eq!(
        (code, &body["status"]),
        (StatusCode::OK, &json!("UP")),
        "{body}"
    );
    let (_, parked) = get_json(&format!("http://{api}/api/replays/parked")).await;
    assert_eq!(parked["total"], 0);

    playback.stop().await;
    record.stop().await;
}

/// A gateway in zone B answering 503 while its service restarts is, with
/// `playback.retry_statuses`, a replay that did not arrive: retried, not
/// committed as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_test_listed_gateway_statuses_are_retried() {
    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start().await;
    zone_b.answer_with(Some(503));
    let dir = tempfile::tempdir().unwrap();
    let record = support::start_node(support::record_config(
        &zone_a.url(),
        1,
        &StoreChoice::Embedded(dir.path().join("a")),
    ))
    .await;
    let mut config = support::playback_config(
        &zone_b.url(),
        1,
        record.api_addr,
        &StoreChoice::Embedded(dir.path().join("b")),
    );
    config["playback"] = json!({"retry_statuses": [502, 503, 504]});
    let playback = support::start_node(config).await;

    send_posts(record.http_addr.unwrap(), 5, "gw").await;
    eventually(
        "the shard waits on a 503",
        Duration::from_secs(20),
        || async {
            let (_, status) = get_json(&format!("http://{}/api/status", playback.api_addr)).await;
            let waiting = &status["playback"]["waiting"]["0"];
            (waiting["attempts"].as_u64() >= Some(2)).then_some(())
        },
    )
    .await;
    let (_, status) = get_json(&format!("http://{}/api/status", playback.api_addr)).await;
    let error = status["playback"]["waiting"]["0"]["error"]
        .as_str()
        .unwrap();
    assert!(error.contains("answered 503"), "{error}");
    assert_eq!(zone_b.count(), 0);
    assert!(checkpoints(record.api_addr, "zone-b").await.is_empty());

    zone_b.answer_with(None);
    eventually("all five delivered", Duration::from_secs(20), || async {
        (zone_b.count() == 5).then_some(())
    })
    .await;
    let expected: Vec<String> = (0..5).map(|i| format!("/gw/{i}")).collect();
    assert_eq!(tags(&zone_b.seen()), expected);

    playback.stop().await;
    record.stop().await;
}

/// A Record node as a process, on fixed ports, recording into `redis` with
/// its spool under `dir`.
fn record_process(
    downstream: &str,
    redis: &str,
    dir: &std::path::Path,
) -> (Value, SocketAddr, SocketAddr) {
    let (http, api) = (free_port(), free_port());
    let config = json!({
        "mode": "Record",
        "http": {"host": "127.0.0.1", "port": http, "downstream": downstream},
        "api": {"host": "127.0.0.1", "port": api},
        "redis": {"url": redis, "connection_timeout": 1, "key_prefix": "spool"},
        "data_dir": dir.join("data"),
        "logging": {"level": "info"},
    });
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    (config, addr(http), addr(api))
}

async fn wait_up(api: SocketAddr) {
    eventually("the node answers", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(api).await.ok().map(|_| ())
    })
    .await;
}

async fn recording(api: SocketAddr) -> Value {
    let (_, status) = get_json(&format!("http://{api}/api/status")).await;
    status["recording"].clone()
}

/// The uris of the records stored on shard 0, in id order.
async fn stored_uris(api: SocketAddr) -> Option<Vec<String>> {
    let (code, page) = get_json(&format!(
        "http://{api}/sync?peer_id=check&shard_id=0&limit=10000"
    ))
    .await;
    (code == StatusCode::OK).then(|| {
        page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r["exchange"]["http"]["uri"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    })
}

/// `kill -9` of a Record node while its store is down loses nothing: the
/// spool is on disk, and the next start writes it to the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_test_kill_9_with_the_store_down_loses_no_spooled_record() {
    let zone_a = FakeDownstream::start().await;
    let mut redis = support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (config, proxy, api) = record_process(&zone_a.url(), &redis.url(), dir.path());
    let mut node = NodeProcess::spawn(&config, dir.path(), "record");
    wait_up(api).await;

    redis.stop();
    send_posts(proxy, 300, "spooled").await;
    eventually(
        "300 records spooled on disk",
        Duration::from_secs(20),
        || async {
            let r = recording(api).await;
            (r["spooled"] == 300 && r["spool_on_disk"] == true).then_some(())
        },
    )
    .await;
    node.kill();

    redis.restart();
    let _node = NodeProcess::spawn(&config, dir.path(), "record-again");
    wait_up(api).await;
    let uris = eventually(
        "the spooled records reach the store",
        Duration::from_secs(30),
        || async { stored_uris(api).await.filter(|u| u.len() >= 300) },
    )
    .await;
    let expected: Vec<String> = (0..300).map(|i| format!("/spooled/{i}")).collect();
    assert_eq!(uris, expected, "every record once, in order");
    eventually(
        "the spool on disk is emptied",
        Duration::from_secs(10),
        || async {
            let r = recording(api).await;
            (r["spooled"] == 0 && r["spool_on_disk"] == false).then_some(())
        },
    )
    .await;
    let left: Vec<_> = std::fs::read_dir(dir.path().join("data/spool"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-"))
        .collect();
    assert!(left.is_empty(), "no segment left behind: {left:?}");
}

/// SIGTERM with the store down does not wait for it: the spool is on disk
/// already, and is written at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_test_sigterm_with_the_store_down_exits_at_once_and_keeps_the_spool() {
    let zone_a = FakeDownstream::start().await;
    let mut redis = support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (config, proxy, api) = record_process(&zone_a.url(), &redis.url(), dir.path());
    let mut node = NodeProcess::spawn(&config, dir.path(), "record");
    wait_up(api).await;

    redis.stop();
    send_posts(proxy, 10, "term").await;
    eventually("10 records spooled", Duration::from_secs(20), || async {
        (recording(api).await["spooled"] == 10).then_some(())
    })
    .await;
    let pid = node.child.id().to_string();
    let sent = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let exit = loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(4),
            "the node still runs 4 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");

    redis.restart();
    let _node = NodeProcess::spawn(&config, dir.path(), "record-again");
    wait_up(api).await;
    let uris = eventually(
        "the spool reaches the store",
        Duration::from_secs(30),
        || async { stored_uris(api).await.filter(|u| u.len() >= 10) },
    )
    .await;
    let expected: Vec<String> = (0..10).map(|i| format!("/term/{i}")).collect();
    assert_eq!(uris, expected);
}

/// A small tmpfs mounted for one test (root only: CI runs as root), with
/// a filler file that takes most of it; unmounted on drop.
struct SmallDisk {
    mount: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size_mib: u32, filler_mib: usize) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("disk");
        std::fs::create_dir(&mount).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&mount)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs the tests as root): {status}"
        );
        std::fs::write(mount.join("filler"), vec![0u8; filler_mib << 20]).unwrap();
        SmallDisk { mount, _dir: dir }
    }

    fn free_filler(&self) {
        std::fs::remove_file(self.mount.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
    }
}

/// The embedded store on a disk that fills up: requests are still served,
/// `/health` says the store is DOWN, and once space is freed the store
/// writes again by itself and every record arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_test_a_full_disk_heals_once_space_is_freed() {
    let zone_a = FakeDownstream::start().await;
    let disk = SmallDisk::new(16, 12);
    let node = support::start_node(support::record_config(
        &zone_a.url(),
        1,
        &StoreChoice::Embedded(disk.mount.join("data")),
    ))
    .await;
    let (proxy, api) = (node.http_addr.unwrap(), node.api_addr);

    let mut conn = crate::support::ClientConn::connect("127.0.0.1".parse().unwrap(), proxy).await;
    let body = bytes::Bytes::from(vec![b'x'; 100 << 10]);
    for i in 0..60 {
        let req = http::Request::post(format!("/full/{i}"))
            .header("host", "zone-a")
            .body(http_body_util::Full::new(body.clone()))
            .unwrap();
        let (status, _, _) = conn.send(req).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "request {i} is served on a full disk"
        );
    }
    let (code, health) = eventually(
        "the store reported DOWN",
        Duration::from_secs(20),
        || async {
            let (code, health) = get_json(&format!("http://{api}/health")).await;
            (health["components"]["store"] == "DOWN").then_some((code, health))
        },
    )
    .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    let error = health["error"].as_str().unwrap();
    assert!(error.contains("No space left"), "{error}");
    let (_, status) = get_json(&format!("http://{api}/api/status")).await;
    assert_eq!(status["store"]["status"], "DOWN", "{status}");
    assert!(
        status["recording"]["spooled"].as_u64().unwrap() > 0,
        "{status}"
    );

    disk.free_filler();
    eventually(
        "every record written once space is back",
        Duration::from_secs(30),
        || async {
            let r = recording(api).await;
            (r["written"] == 60 && r["spooled"] == 0).then_some(())
        },
    )
    .await;
    let uris = stored_uris(api).await.expect("the store answers");
    let expected: Vec<String> = (0..60).map(|i| format!("/full/{i}")).collect();
    assert_eq!(uris, expected);
    let (code, health) = get_json(&format!("http://{api}/health")).await;
    assert_eq!(
        (code, &health["status"]),
        (StatusCode::OK, &json!("UP")),
        "{health}"
    );
    let (_, status) = get_json(&format!("http://{api}/api/status")).await;
    assert_eq!(status["records_stored"], 60, "{status}");
    node.stop().await;
}
