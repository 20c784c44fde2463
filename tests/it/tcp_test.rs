//! The raw TCP proxy with clients and servers this project did not write:
//! `redis-cli` through a Record node to zone A's `redis-server`, replayed by
//! a Playback node into zone B's own `redis-server`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use crate::support::{
    self, eventually, get_json, redis_cli, FakeDownstream, RedisServer, StoreChoice,
};

async fn status(api: SocketAddr) -> serde_json::Value {
    get_json(&format!("http://{api}/api/status")).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sessions_recorded_in_zone_a_leave_the_same_keys_in_zone_b() {
    let zone_a = RedisServer::start();
    let zone_b = RedisServer::start();
    let http = FakeDownstream::start().await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut record_config =
        support::record_config(&http.url(), 2, &StoreChoice::Embedded(dirs.0.path().into()));
    record_config["tcp"] =
        json!({"host": "127.0.0.1", "port": 0, "downstream": format!("127.0.0.1:{}", zone_a.port)});
    let record = support::start_node(record_config).await;
    let mut playback_config = support::playback_config(
        &http.url(),
        2,
        record.api_addr,
        &StoreChoice::Embedded(dirs.1.path().into()),
    );
    playback_config["tcp"] =
        json!({"host": "127.0.0.1", "port": 0, "downstream": format!("127.0.0.1:{}", zone_b.port)});
    let playback = support::start_node(playback_config).await;
    let proxy = record
        .tcp_addr
        .expect("the record node listens for tcp")
        .port();

    let commands: &[&[&str]] = &[
        &["SET", "greeting", "hello zone"],
        &["INCR", "counter"],
        &["INCR", "counter"],
        &["INCRBY", "counter", "40"],
        &["RPUSH", "list", "a", "b", "c"],
        &["HSET", "user:1", "name", "ada", "lang", "rust"],
        &["SADD", "tags", "x", "y"],
        &["APPEND", "greeting", "!"],
    ];
    for cmd in commands {
        redis_cli(proxy, cmd);
    }
    assert_eq!(
        redis_cli(proxy, &["GET", "counter"]),
        "42",
        "the proxy relays answers"
    );
    // Several commands in one session (redis-cli's interactive mode would
    // also ask COMMAND DOCS, whose order differs between two redis-server
    // processes: a true mismatch, so it is left out here).
    redis_cli(proxy, &["EVAL", "redis.call('LPUSH','jobs','one'); redis.call('LPUSH','jobs','two'); return redis.call('LLEN','jobs')", "0"]);
    // One session per redis-cli call: the commands, the GET, the EVAL.
    let sessions = commands.len() + 2;

    eventually(
        "every session replayed in zone B",
        Duration::from_secs(30),
        || async {
            let s = status(playback.api_addr).await;
            let p = &s["playback"];
            let done = ["matched", "mismatched", "failed", "skipped"]
                .iter()
                .map(|k| p[k].as_u64().unwrap_or(0))
                .sum::<u64>();
            (done >= sessions as u64).then_some(())
        },
    )
    .await;
    let s = status(playback.api_addr).await;
    let (_, mismatched) = get_json(&format!(
        "http://{}/api/replays?result=mismatched",
        playback.api_addr
    ))
    .await;
    assert_eq!(
        s["playback"]["matched"], sessions,
        "zone B answered every session as zone A did: {mismatched}"
    );

    for (read, args) in [
        ("GET", vec!["greeting"]),
        ("GET", vec!["counter"]),
        ("LRANGE", vec!["list", "0", "-1"]),
        ("LRANGE", vec!["jobs", "0", "-1"]),
        ("HGETALL", vec!["user:1"]),
        ("SMEMBERS", vec!["tags"]),
    ] {
        let mut cmd = vec![read];
        cmd.extend(args.iter().copied());
        // Sets and hashes have no order: compare their members sorted.
        let sorted = |out: String| {
            let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
            if matches!(read, "SMEMBERS" | "HGETALL") {
                lines.sort();
            }
            lines
        };
        let a = sorted(redis_cli(zone_a.port, &cmd));
        let b = sorted(redis_cli(zone_b.port, &cmd));
        assert_eq!(a, b, "{cmd:?} differs between the zones");
    }
    assert_eq!(redis_cli(zone_b.port, &["GET", "greeting"]), "hello zone!");
    assert_eq!(
        redis_cli(zone_b.port, &["DBSIZE"]),
        redis_cli(zone_a.port, &["DBSIZE"])
    );

    let (_, replays) = get_json(&format!("http://{}/api/replays?limit=1", playback.api_addr)).await;
    assert_eq!(replays["results"][0]["method"], "TCP");
    playback.stop().await;
    record.stop().await;
}

#[tokio::test]
async fn an_unreachable_tcp_downstream_closes_the_client_and_is_recorded() {
    let http = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        support::record_config(&http.url(), 1, &StoreChoice::Embedded(dir.path().into()));
    config["tcp"] = json!({"port": 0, "downstream": format!("127.0.0.1:{}", support::free_port())});
    let node = support::start_node(config).await;
    let mut stream = tokio::net::TcpStream::connect(node.tcp_addr.unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::io::AsyncReadExt::read(&mut stream, &mut buf)
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "the client sees the connection closed");
    let record = eventually(
        "the failed session is recorded",
        Duration::from_secs(10),
        || async {
            let (_, page) = get_json(&format!("http://{}/sync?peer_id=p", node.api_addr)).await;
            page["records"].as_array().and_then(|r| r.first().cloned())
        },
    )
    .await;
    assert!(
        record["error"].as_str().unwrap().contains("refused"),
        "{record}"
    );
    assert_eq!(record["exchange"]["tcp"]["closed_by"], "error");
    node.stop().await;
}

/// One read and when it arrived.
type Read = (std::time::Instant, Vec<u8>);

/// A TCP server that keeps every read with the time it arrived, and
/// closes a connection when the client does.
struct Arrivals {
    addr: SocketAddr,
    reads: std::sync::Arc<std::sync::Mutex<Vec<Read>>>,
}

impl Arrivals {
    async fn start() -> Arrivals {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reads: std::sync::Arc<std::sync::Mutex<Vec<_>>> = Default::default();
        let keep = reads.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let keep = keep.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) =
                        tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await
                    {
                        let at = std::time::Instant::now();
                        keep.lock().unwrap().push((at, buf[..n].to_vec()));
                    }
                });
            }
        });
        Arrivals { addr, reads }
    }

    fn reads(&self) -> Vec<Read> {
        self.reads.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_pacing_recorded_keeps_the_gap_between_client_chunks() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let http = FakeDownstream::start().await;
    let zone_a = Arrivals::start().await;
    let zone_b = Arrivals::start().await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut record_config =
        support::record_config(&http.url(), 1, &StoreChoice::Embedded(dirs.0.path().into()));
    record_config["tcp"] = json!({"port": 0, "downstream": zone_a.addr.to_string()});
    let record = support::start_node(record_config).await;
    let mut playback_config = support::playback_config(
        &http.url(),
        1,
        record.api_addr,
        &StoreChoice::Embedded(dirs.1.path().into()),
    );
    playback_config["tcp"] = json!({"port": 0, "downstream": zone_b.addr.to_string()});
    playback_config["playback"] = json!({"tcp_pacing": "recorded"});
    let playback = support::start_node(playback_config).await;

    let gap = Duration::from_millis(400);
    let mut client = tokio::net::TcpStream::connect(record.tcp_addr.unwrap())
        .await
        .unwrap();
    client.write_all(b"first").await.unwrap();
    tokio::time::sleep(gap).await;
    client.write_all(b"second").await.unwrap();
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();

    let reads = eventually(
        "the session replayed in zone B",
        Duration::from_secs(20),
        || async {
            let reads = zone_b.reads();
            (reads.iter().map(|(_, b)| b.len()).sum::<usize>() == 11).then_some(reads)
        },
    )
    .await;
    assert_eq!(reads.len(), 2, "two chunks, apart: {reads:?}");
    assert_eq!(reads[0].1, b"first");
    assert_eq!(reads[1].1, b"second");
    // Sleeps never end early: the replayed gap is at least the recorded one
    // (less the little the recording itself shaved off between the reads).
    let replayed_gap = reads[1].0 - reads[0].0;
    assert!(
        replayed_gap >= gap - Duration::from_millis(100),
        "{replayed_gap:?}"
    );
    assert_eq!(zone_a.reads().len(), 2);
    playback.stop().await;
    record.stop().await;
}

/// A TCP session whose listener names its service (`tcp.service`) is
/// replayed to that service's endpoint when discovery knows it, not to the
/// Playback node's `tcp.downstream`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_test_sessions_go_to_the_endpoint_of_their_service() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let http = FakeDownstream::start().await;
    let (zone_a, endpoint, own) = (
        Arrivals::start().await,
        Arrivals::start().await,
        Arrivals::start().await,
    );
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut record_config =
        support::record_config(&http.url(), 1, &StoreChoice::Embedded(dirs.0.path().into()));
    record_config["tcp"] =
        json!({"port": 0, "downstream": zone_a.addr.to_string(), "service": "ledger"});
    let record = support::start_node(record_config).await;
    let mut playback_config = support::playback_config(
        &http.url(),
        1,
        record.api_addr,
        &StoreChoice::Embedded(dirs.1.path().into()),
    );
    playback_config["tcp"] = json!({"port": 0, "downstream": own.addr.to_string()});
    playback_config["service_discovery"] = json!({"provider": "static", "config": {
        "static_services": [{"name": "ledger", "endpoints": [endpoint.addr.to_string()]}]}});
    let playback = support::start_node(playback_config).await;

    let mut client = tokio::net::TcpStream::connect(record.tcp_addr.unwrap())
        .await
        .unwrap();
    client.write_all(b"entry").await.unwrap();
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();

    eventually(
        "the session replayed to the service's endpoint",
        Duration::from_secs(20),
        || async {
            (endpoint.reads().iter().map(|(_, b)| b.len()).sum::<usize>() == 5).then_some(())
        },
    )
    .await;
    assert!(own.reads().is_empty(), "not to tcp.downstream");
    playback.stop().await;
    record.stop().await;
}
