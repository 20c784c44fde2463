//! One conformance suite, run against every store: Redis Streams on a real
//! `redis-server`, and the embedded store on disk.

use std::sync::Arc;

use bytes::Bytes;
use qproxy::config::RedisConfig;
use qproxy::playback::{Outcome, ParkedRecord, ReplayResult};
use qproxy::record::{Body, Exchange, HttpExchange, Record, RecordId, PIECE_BYTES};
use qproxy::store::{EmbeddedStore, NewRecord, RedisStore, ReplayWrite, Store};
use qproxy::sync::{Checkpoint, CommitStatus};

use crate::support::{self, eventually, get_json, RedisServer, StoreChoice};

fn record(shard: u32, body: Bytes) -> Record {
    Record {
        id: None,
        shard,
        captured_at_ms: 1,
        duration_us: 2,
        client_addr: "127.0.0.1:1".into(),
        error: None,
        service: None,
        exchange: Exchange::Http(HttpExchange {
            method: "PUT".into(),
            uri: "/x".into(),
            version: "HTTP/1.1".into(),
            request_headers: vec![("a".into(), "b".into())],
            request_body: Body(body),
            request_body_truncated: false,
            status: Some(201),
            response_headers: vec![],
            response_body: Body::default(),
            response_body_truncated: false,
        }),
    }
}

fn checkpoint(peer: &str, shard: u32, id: RecordId, status: CommitStatus) -> Checkpoint {
    Checkpoint {
        peer_id: peer.into(),
        shard,
        last_record_id: id,
        last_sync_time: 7,
        status,
        retry_count: 0,
        error_message: String::new(),
        committed_at_ms: 9,
        rewind: None,
    }
}

fn result(id: RecordId, shard: u32, outcome: Outcome, at: u64) -> ReplayResult {
    ReplayResult {
        record_id: id,
        shard,
        outcome,
        detail: None,
        replayed_at_ms: at,
        duration_us: 1,
        method: "GET".into(),
        uri: "/".into(),
        recorded_status: Some(200),
        replayed_status: Some(200),
        attempts: 1,
        service: None,
        endpoint: None,
    }
}

async fn conformance(store: Arc<dyn Store>) {
    store.ping().await.expect("store answers");

    // Appends: ids strictly increase per shard and come back in order.
    let big = Bytes::from(vec![7u8; 3 * PIECE_BYTES + 11]);
    let batch: Vec<NewRecord> = (0..10u32)
        .map(|i| {
            let body = if i == 4 {
                big.clone()
            } else {
                Bytes::from(vec![i as u8; i as usize])
            };
            NewRecord::encode(&record(i % 2, body))
        })
        .collect();
    let ids = store.append(&batch).await.unwrap();
    assert_eq!(ids.len(), 10);
    for shard in 0..2 {
        let of_shard: Vec<RecordId> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u32 % 2 == shard)
            .map(|(_, id)| *id)
            .collect();
        assert!(
            of_shard.windows(2).all(|w| w[0] < w[1]),
            "ids increase: {of_shard:?}"
        );
    }
    let more = store
        .append(&[NewRecord::encode(&record(0, Bytes::from_static(b"late")))])
        .await
        .unwrap();
    assert!(more[0] > ids[8], "a later batch gets later ids");

    let read = store
        .read(0, RecordId::ZERO, RecordId::MAX, 100)
        .await
        .unwrap();
    assert_eq!(read.len(), 6);
    let decoded: Vec<Record> = read.iter().map(|r| r.decode().unwrap()).collect();
    let Exchange::Http(h) = &decoded[2].exchange else {
        panic!("an http record comes back as one")
    };
    assert_eq!(
        h.request_body.len(),
        big.len(),
        "a 3 MiB body comes back whole"
    );
    assert_eq!(h.request_body.0, big);
    assert_eq!(decoded[2].id, Some(ids[4]));
    assert_eq!(store.len(0).await.unwrap(), 6);
    assert_eq!(store.len(1).await.unwrap(), 5);
    assert_eq!(store.len(2).await.unwrap(), 0);
    assert_eq!(store.last_id(0).await.unwrap(), Some(more[0]));
    assert_eq!(store.last_id(3).await.unwrap(), None);

    // Ranges are inclusive and limited.
    let window = store.read(0, ids[2], ids[6], 100).await.unwrap();
    assert_eq!(
        window.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[2], ids[4], ids[6]]
    );
    let limited = store
        .read(0, ids[2].successor(), RecordId::MAX, 2)
        .await
        .unwrap();
    assert_eq!(
        limited.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[4], ids[6]]
    );
    assert!(store.read(0, ids[6], ids[2], 10).await.unwrap().is_empty());

    // Checkpoints never move backwards; a repeat is harmless.
    assert_eq!(store.checkpoint("p", 0).await.unwrap(), None);
    let c5 = store
        .commit(checkpoint("p", 0, ids[4], CommitStatus::Completed))
        .await
        .unwrap();
    assert_eq!(c5.last_record_id, ids[4]);
    let stale = store
        .commit(checkpoint("p", 0, ids[2], CommitStatus::Completed))
        .await
        .unwrap();
    assert_eq!(
        stale.last_record_id, ids[4],
        "a stale commit does not move it back"
    );
    let again = store
        .commit(checkpoint("p", 0, ids[4], CommitStatus::Completed))
        .await
        .unwrap();
    assert_eq!(again, c5);
    store
        .commit(checkpoint("q", 1, ids[1], CommitStatus::Failed))
        .await
        .unwrap();
    assert_eq!(
        store
            .checkpoint("p", 0)
            .await
            .unwrap()
            .unwrap()
            .last_record_id,
        ids[4]
    );
    let mut all = store.checkpoints(2).await.unwrap();
    all.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].status, CommitStatus::Failed);

    // An operator's rewind sets it exactly, backwards too; until the peer
    // has seen the rewind, its commits change nothing.
    let rewound = Checkpoint {
        rewind: Some(1_747_629_658_123),
        ..checkpoint("p", 0, ids[0], CommitStatus::Pending)
    };
    store.set_checkpoint(rewound.clone()).await.unwrap();
    assert_eq!(
        store.checkpoint("p", 0).await.unwrap(),
        Some(rewound.clone())
    );
    let unseen = store
        .commit(checkpoint("p", 0, ids[4], CommitStatus::Completed))
        .await
        .unwrap();
    assert_eq!(unseen, rewound, "a commit sent before the rewind was seen");
    let other = store
        .commit(Checkpoint {
            rewind: Some(5),
            ..checkpoint("p", 0, ids[4], CommitStatus::Completed)
        })
        .await
        .unwrap();
    assert_eq!(other, rewound, "a commit that saw another rewind");
    let seen = store
        .commit(Checkpoint {
            rewind: rewound.rewind,
            ..checkpoint("p", 0, ids[2], CommitStatus::Completed)
        })
        .await
        .unwrap();
    assert_eq!(
        (seen.last_record_id, seen.status, seen.rewind),
        (ids[2], CommitStatus::Completed, None)
    );
    assert_eq!(store.checkpoint("p", 0).await.unwrap(), Some(seen));
    let moved_on = store
        .commit(checkpoint("p", 0, ids[4], CommitStatus::Completed))
        .await
        .unwrap();
    assert_eq!(moved_on.last_record_id, ids[4], "normal again");

    // An expired peer is forgotten on every shard; others stay.
    store
        .commit(checkpoint("gone", 0, ids[0], CommitStatus::Completed))
        .await
        .unwrap();
    store
        .commit(checkpoint("gone", 1, ids[1], CommitStatus::Completed))
        .await
        .unwrap();
    store.forget_peer("gone", 2).await.unwrap();
    assert_eq!(store.checkpoint("gone", 0).await.unwrap(), None);
    assert_eq!(store.checkpoint("gone", 1).await.unwrap(), None);
    assert_eq!(store.checkpoints(2).await.unwrap().len(), 2);

    // Retention: by length, then by age (id).
    store.trim(1, None, Some(2)).await.unwrap();
    let left: Vec<RecordId> = store
        .read(1, RecordId::ZERO, RecordId::MAX, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, vec![ids[7], ids[9]]);
    store.trim(0, Some(ids[6]), None).await.unwrap();
    let left: Vec<RecordId> = store
        .read(0, RecordId::ZERO, RecordId::MAX, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, vec![ids[6], ids[8], more[0]]);

    // Replay results and the replayed-up-to mark.
    assert_eq!(store.replayed_upto("p", 0).await.unwrap(), None);
    let results: Vec<ReplayResult> = (0..5u64)
        .map(|i| {
            result(
                RecordId::new(100 + i, 0),
                0,
                if i == 3 {
                    Outcome::Mismatched
                } else {
                    Outcome::Matched
                },
                1000 + i,
            )
        })
        .collect();
    store
        .save_replays(ReplayWrite {
            upto: Some(RecordId::new(104, 0)),
            ..ReplayWrite::results("p", 0, &results, 3)
        })
        .await
        .unwrap();
    assert_eq!(
        store.replayed_upto("p", 0).await.unwrap(),
        Some(RecordId::new(104, 0))
    );
    assert_eq!(store.replayed_upto("other", 0).await.unwrap(), None);
    let kept = store.replays(0, 10).await.unwrap();
    assert_eq!(kept.len(), 3, "only `keep` results are kept");
    assert_eq!(kept[0].record_id, RecordId::new(104, 0), "newest first");
    assert_eq!(kept[1].outcome, Outcome::Mismatched);
    assert!(store.replays(1, 10).await.unwrap().is_empty());
    // Trimming a shard keeps its newest results and leaves other shards alone.
    let later: Vec<ReplayResult> = (0..5u64)
        .map(|i| result(RecordId::new(200 + i, 0), 3, Outcome::Matched, 3000 + i))
        .collect();
    for part in [&later[..2], &later[2..3], &later[3..]] {
        store
            .save_replays(ReplayWrite::results("p", 3, part, 2))
            .await
            .unwrap();
    }
    let ids: Vec<RecordId> = store
        .replays(3, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.record_id)
        .collect();
    assert_eq!(ids, [RecordId::new(204, 0), RecordId::new(203, 0)]);
    assert_eq!(store.replays(0, 10).await.unwrap().len(), 3);

    // Parking: a record given up on is kept whole (a multi-piece one too)
    // with its last result, parked again in place, and gone once delivered.
    let huge = record(2, Bytes::from(vec![9u8; 3 * PIECE_BYTES + 5]));
    let small = record(2, Bytes::from_static(b"small"));
    let park = |id: RecordId, record: &Record, attempts: u32| {
        let mut result = result(id, 2, Outcome::Failed, 2000);
        result.attempts = attempts;
        ParkedRecord {
            result,
            pieces: record.encode_pieces(),
        }
    };
    let (a, b) = (RecordId::new(200, 0), RecordId::new(200, 1));
    let parked = [park(b, &small, 3), park(a, &huge, 3)];
    store
        .save_replays(ReplayWrite {
            park: &parked,
            upto: Some(b),
            ..ReplayWrite::results("p", 2, &[], 10)
        })
        .await
        .unwrap();
    assert_eq!(store.parked_count(2).await.unwrap(), 2);
    assert_eq!(store.parked_count(0).await.unwrap(), 0);
    let listed = store.parked(2, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.record_id).collect::<Vec<_>>(),
        [a, b],
        "oldest first"
    );
    assert_eq!(store.parked(2, 1).await.unwrap().len(), 1);
    let back = store
        .parked_record(2, a)
        .await
        .unwrap()
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(
        back.exchange, huge.exchange,
        "a parked record comes back whole"
    );
    assert_eq!(store.replayed_upto("p", 2).await.unwrap(), Some(b));
    assert!(store
        .parked_record(2, RecordId::new(9, 9))
        .await
        .unwrap()
        .is_none());
    store
        .save_replays(ReplayWrite {
            park: &[park(a, &huge, 4)],
            unpark: &[b],
            ..ReplayWrite::results("p", 2, &[], 10)
        })
        .await
        .unwrap();
    let listed = store.parked(2, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].record_id, listed[0].attempts), (a, 4));
    assert!(store.parked_record(2, b).await.unwrap().is_none());
    let back = store
        .parked_record(2, a)
        .await
        .unwrap()
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(back.exchange, huge.exchange, "parked again in place");
}

#[tokio::test]
async fn embedded_conformance() {
    let dir = tempfile::tempdir().unwrap();
    conformance(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
}

#[tokio::test]
async fn embedded_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let ids = store
            .append(&[NewRecord::encode(&record(0, Bytes::from_static(b"x")))])
            .await
            .unwrap();
        store
            .commit(checkpoint("p", 0, ids[0], CommitStatus::Completed))
            .await
            .unwrap();
        ids[0]
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.len(0).await.unwrap(), 1);
    assert_eq!(
        store
            .checkpoint("p", 0)
            .await
            .unwrap()
            .unwrap()
            .last_record_id,
        first
    );
    let next = store
        .append(&[NewRecord::encode(&record(0, Bytes::new()))])
        .await
        .unwrap();
    assert!(next[0] > first, "ids keep increasing after a reopen");
}

fn redis_store(server: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::new(&RedisConfig {
        url: server.url(),
        pool_size: 2,
        connection_timeout: 2,
        retry_count: 1,
        key_prefix: prefix.into(),
    })
    .unwrap()
}

#[tokio::test]
async fn redis_conformance() {
    let server = RedisServer::start();
    conformance(Arc::new(redis_store(&server, "conf"))).await;
}

#[tokio::test]
async fn redis_keys_use_hash_tags_and_small_values() {
    let server = RedisServer::start();
    let store = redis_store(&server, "qp");
    let body = Bytes::from(vec![1u8; 5 * PIECE_BYTES]);
    store
        .append(&[NewRecord::encode(&record(3, body))])
        .await
        .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys, vec!["qp:{s3}:records".to_string()]);
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("qp:{s3}:records")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let fields = &entries.ids[0].map;
    assert!(fields.len() >= 5, "a 5 MiB record is stored in pieces");
    for value in fields.values() {
        let redis::Value::BulkString(bytes) = value else {
            panic!("pieces are strings")
        };
        assert!(bytes.len() <= PIECE_BYTES, "no stored value over 1 MiB");
    }
}

#[tokio::test]
async fn redis_down_is_an_error_not_a_hang() {
    let mut server = RedisServer::start();
    let store = redis_store(&server, "down");
    store.ping().await.unwrap();
    server.stop();
    let started = std::time::Instant::now();
    assert!(store
        .append(&[NewRecord::encode(&record(0, Bytes::new()))])
        .await
        .is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    server.restart();
    crate::support::eventually(
        "redis store reconnects",
        std::time::Duration::from_secs(20),
        || async {
            store
                .append(&[NewRecord::encode(&record(0, Bytes::new()))])
                .await
                .ok()
        },
    )
    .await;
}

#[tokio::test]
async fn redis_streams_stay_near_retention_len_as_they_are_written() {
    let server = RedisServer::start();
    let store = redis_store(&server, "keep").with_max_len(Some(100));
    let batch: Vec<NewRecord> = (0..50)
        .map(|_| NewRecord::encode(&record(0, Bytes::from_static(b"x"))))
        .collect();
    let mut last = RecordId::ZERO;
    for _ in 0..100 {
        last = *store.append(&batch).await.unwrap().last().unwrap();
    }
    // 5,000 written; Redis trims whole nodes (100 entries each here), so
    // between 100 and a few nodes more remain: the newest ones.
    let len = store.len(0).await.unwrap();
    assert!((100..=400).contains(&len), "{len} records kept");
    assert_eq!(store.last_id(0).await.unwrap(), Some(last));
    store.trim(0, None, Some(100)).await.unwrap();
    assert_eq!(store.len(0).await.unwrap(), 100, "trim cuts exactly");
}

/// `store.persistence` of a node's `/api/status` once its background check
/// has answered something other than `unknown` (or `deadline` passed).
async fn persistence_in_status(api: std::net::SocketAddr) -> String {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, status) = get_json(&format!("http://{api}/api/status")).await;
        let seen = status["store"]["persistence"].as_str().unwrap().to_string();
        if seen != "unknown" || std::time::Instant::now() > until {
            return seen;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

fn redis_choice(server: &RedisServer) -> StoreChoice {
    StoreChoice::Redis {
        url: server.url(),
        prefix: "persist".into(),
    }
}

/// A Redis started with `--save '' --appendonly no` loses every record and
/// checkpoint when it restarts: the node warns at start-up and says so in
/// `/api/status`.
#[tokio::test]
async fn redis_without_persistence_is_warned_about_and_shown() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::record_config("http://127.0.0.1:9", 1, &redis_choice(&server));
    config["http"]["port"] = serde_json::json!(support::free_port());
    let api = support::free_port();
    config["api"]["port"] = serde_json::json!(api);
    config["logging"]["level"] = serde_json::json!("info");
    let node = support::NodeProcess::spawn(&config, dir.path(), "record");
    let warning = eventually(
        "a warning about persistence",
        std::time::Duration::from_secs(20),
        || async {
            node.log()
                .lines()
                .find(|l| l.contains("WARN") && l.contains("appendonly"))
                .map(str::to_string)
        },
    )
    .await;
    assert!(warning.contains("restart"), "{warning}");
    let addr = ([127, 0, 0, 1], api).into();
    assert_eq!(persistence_in_status(addr).await, "none");
}

#[tokio::test]
async fn redis_persistence_says_aof_rdb_or_both() {
    for (args, expected) in [
        (&["--appendonly", "yes"][..], "aof"),
        (&["--save", "3600 1"][..], "rdb"),
        (&["--appendonly", "yes", "--save", "3600 1"][..], "aof+rdb"),
    ] {
        let server = RedisServer::start_args(args);
        let config = support::record_config("http://127.0.0.1:9", 1, &redis_choice(&server));
        let node = support::start_node(config).await;
        assert_eq!(
            persistence_in_status(node.api_addr).await,
            expected,
            "{args:?}"
        );
        node.stop().await;
    }
}

/// Managed Redis often refuses CONFIG: that is "unknown", not an error.
#[tokio::test]
async fn redis_that_refuses_config_has_unknown_persistence() {
    let server = RedisServer::start_args(&["--rename-command", "CONFIG", ""]);
    let store = redis_store(&server, "unknown");
    assert_eq!(
        store.check_persistence().await.unwrap(),
        Some(qproxy::store::Persistence::Unknown)
    );
    let config = support::record_config("http://127.0.0.1:9", 1, &redis_choice(&server));
    let node = support::start_node(config).await;
    let (_, status) = get_json(&format!("http://{}/api/status", node.api_addr)).await;
    assert_eq!(status["store"]["status"], "UP");
    assert_eq!(status["store"]["persistence"], "unknown");
    node.stop().await;
}

/// The check runs in the background: a node starts at once while Redis is
/// down, and learns the answer when Redis comes.
#[tokio::test]
async fn redis_persistence_is_checked_when_redis_comes() {
    let port = support::free_port();
    let choice = StoreChoice::Redis {
        url: format!("redis://127.0.0.1:{port}"),
        prefix: "late".into(),
    };
    let started = std::time::Instant::now();
    let node = support::start_node(support::record_config("http://127.0.0.1:9", 1, &choice)).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let (_, status) = get_json(&format!("http://{}/api/status", node.api_addr)).await;
    assert_eq!(status["store"]["persistence"], "unknown");
    let _server = RedisServer::start_on(port, &["--appendonly", "yes"]);
    eventually(
        "persistence seen",
        std::time::Duration::from_secs(20),
        || async {
            let (_, status) = get_json(&format!("http://{}/api/status", node.api_addr)).await;
            (status["store"]["persistence"] == "aof").then_some(())
        },
    )
    .await;
    node.stop().await;
}

#[tokio::test]
async fn embedded_store_has_no_redis_persistence_to_show() {
    let dir = tempfile::tempdir().unwrap();
    let choice = StoreChoice::Embedded(dir.path().into());
    let node = support::start_node(support::record_config("http://127.0.0.1:9", 1, &choice)).await;
    let (_, status) = get_json(&format!("http://{}/api/status", node.api_addr)).await;
    assert_eq!(status["store"]["persistence"], serde_json::Value::Null);
    node.stop().await;
}
