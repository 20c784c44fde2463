//! The MQTT client and the sync fabric against real brokers: the embedded
//! rumqttd and Mosquitto (with a password file, to prove interoperability
//! and authentication).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use qproxy::mqtt_client::{Message, MqttClient, MqttConfig, MqttError, QoS, QueryHandler};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::support::{
    self, eventually, free_port, get_json, FakeDownstream, Mosquitto, StoreChoice,
};

fn client_config(id: &str, port: u16, user: Option<(&str, &str)>) -> MqttConfig {
    MqttConfig {
        client_id: id.into(),
        host: "127.0.0.1".into(),
        port,
        keep_alive: 5,
        app_id: user.map(|u| u.0.to_string()),
        token: user.map(|u| u.1.to_string()),
        connect_timeout: Duration::from_secs(5),
        query_timeout: Duration::from_secs(3),
        max_reconnect_delay: Duration::from_millis(300),
        ..MqttConfig::default()
    }
}

async fn next_on(rx: &mut broadcast::Receiver<Message>, topic: &str) -> Message {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no message on {topic} within 10s"))
            .expect("receiver open");
        if message.topic == topic {
            return message;
        }
    }
}

/// The original README's example, step by step, against a broker on `port`.
async fn readme_sequence(port: u16, user: Option<(&str, &str)>) {
    // Someone answers the query, as a Record node would.
    let mut responder = MqttClient::new(client_config("responder", port, user));
    responder.connect().await.unwrap();
    let handler: QueryHandler = Arc::new(|payload: Bytes| {
        Box::pin(async move {
            Ok(Bytes::from(format!(
                "status of {}",
                String::from_utf8_lossy(&payload)
            )))
        })
    });
    responder
        .serve_queries("query/status".into(), handler)
        .await
        .unwrap();
    let mut watcher = MqttClient::new(client_config("watcher", port, user));
    watcher.connect().await.unwrap();
    let mut seen = watcher.messages();
    watcher
        .subscribe("my/topic".into(), QoS::AtLeastOnce)
        .await
        .unwrap();

    let mut client = MqttClient::new(client_config("my-client", port, user));
    client.connect().await.unwrap();
    let mut inbox = client.messages();
    client
        .subscribe("notifications/#".into(), QoS::AtMostOnce)
        .await
        .unwrap();
    // Subscriptions are asynchronous: wait until ours is in place.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < until, "the subscription never took effect");
        watcher
            .publish(
                "notifications/probe".into(),
                Bytes::from_static(b"p"),
                QoS::AtMostOnce,
            )
            .await
            .unwrap();
        if tokio::time::timeout(Duration::from_millis(100), inbox.recv())
            .await
            .is_ok()
        {
            break;
        }
    }

    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let payload = Bytes::from(format!("Hello, MQTT! {qos:?}"));
        client
            .publish("my/topic".into(), payload.clone(), qos)
            .await
            .unwrap();
        let got = next_on(&mut seen, "my/topic").await;
        assert_eq!(got.payload, payload);
    }
    watcher
        .publish(
            "notifications/a/b".into(),
            Bytes::from_static(b"note"),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    assert_eq!(
        next_on(&mut inbox, "notifications/a/b").await.payload,
        Bytes::from_static(b"note")
    );

    let response = client
        .query("query/status".into(), Bytes::from("query data"))
        .await
        .unwrap();
    assert_eq!(response, Bytes::from("status of query data"));
    let err = client
        .query("query/nobody".into(), Bytes::from("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, MqttError::QueryTimeout { .. }), "{err}");

    client.unsubscribe("notifications/#".into()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    watcher
        .publish(
            "notifications/after".into(),
            Bytes::from_static(b"late"),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    let late = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Ok(m) = inbox.recv().await {
                if m.topic == "notifications/after" {
                    return m;
                }
            }
        }
    })
    .await;
    assert!(late.is_err(), "nothing arrives after unsubscribe");

    client.disconnect().await.unwrap();
    assert!(!client.is_connected());
    responder.disconnect().await.unwrap();
    watcher.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_runs_against_the_embedded_broker() {
    let broker = qproxy::broker::start("127.0.0.1", 0, None).unwrap();
    readme_sequence(broker.addr.port(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_runs_against_mosquitto_with_app_id_and_token() {
    let mosquitto = Mosquitto::start(Some(("my-app", "auth-token")));
    readme_sequence(mosquitto.port, Some(("my-app", "auth-token"))).await;

    let mut intruder = MqttClient::new(client_config(
        "intruder",
        mosquitto.port,
        Some(("my-app", "wrong")),
    ));
    let err = intruder.connect().await.unwrap_err();
    assert!(
        err.to_string()
            .to_lowercase()
            .contains("connection refused")
            || err.to_string().contains("NotAuthorized")
            || err.to_string().contains("BadUserNamePassword"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_checks_app_id_and_token() {
    let broker = qproxy::broker::start("127.0.0.1", 0, Some(("app", "secret-token"))).unwrap();
    let port = broker.addr.port();
    let mut good = MqttClient::new(client_config("good", port, Some(("app", "secret-token"))));
    good.connect().await.unwrap();
    let mut bad = MqttClient::new(client_config("bad", port, Some(("app", "nope"))));
    assert!(bad.connect().await.is_err(), "a wrong token is refused");
    let mut anonymous = MqttClient::new(client_config("anon", port, None));
    assert!(
        anonymous.connect().await.is_err(),
        "no credentials is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_gets_qos1_messages_sent_while_away() {
    let mosquitto = Mosquitto::start(None);
    let mut away = MqttClient::new(client_config("sleepy", mosquitto.port, None));
    away.connect().await.unwrap();
    away.subscribe("jobs/#".into(), QoS::AtLeastOnce)
        .await
        .unwrap();
    // Make sure the broker has the subscription before going away.
    let mut own = away.messages();
    away.publish(
        "jobs/probe".into(),
        Bytes::from_static(b"p"),
        QoS::AtLeastOnce,
    )
    .await
    .unwrap();
    next_on(&mut own, "jobs/probe").await;
    away.disconnect().await.unwrap();

    let mut sender = MqttClient::new(client_config("sender", mosquitto.port, None));
    sender.connect().await.unwrap();
    for i in 0..3 {
        sender
            .publish(
                format!("jobs/{i}"),
                Bytes::from(format!("job {i}")),
                QoS::AtLeastOnce,
            )
            .await
            .unwrap();
    }
    sender.disconnect().await.unwrap();

    let mut back = MqttClient::new(client_config("sleepy", mosquitto.port, None));
    let mut inbox = back.messages();
    back.connect().await.unwrap();

    for i in 0..3 {
        let m = next_on(&mut inbox, &format!("jobs/{i}")).await;
        assert_eq!(m.payload, Bytes::from(format!("job {i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_the_client_reconnects_and_resubscribes() {
    let mut mosquitto = Mosquitto::start(None);
    let mut client = MqttClient::new(client_config("steady", mosquitto.port, None));
    client.connect().await.unwrap();
    let mut inbox = client.messages();
    client
        .subscribe("events/#".into(), QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut state = client.connection_state();

    // Mosquitto without persistence forgets every session on restart.
    mosquitto.restart();
    eventually(
        "the client notices and reconnects",
        Duration::from_secs(20),
        || {
            let connected = *state.borrow_and_update();
            async move { connected.then_some(()) }
        },
    )
    .await;
    let mut other = MqttClient::new(client_config("other", mosquitto.port, None));
    other.connect().await.unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < until, "subscriptions were not restored");
        other
            .publish(
                "events/x".into(),
                Bytes::from_static(b"again"),
                QoS::AtMostOnce,
            )
            .await
            .unwrap();
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(200), inbox.recv()).await {
            if m.topic == "events/x" {
                break;
            }
        }
    }
}

// ------------------------------------------------------------- the fabric

/// Record and Playback nodes that talk through the broker at `port`
/// (polling only once a minute, so replay within seconds proves push).
async fn fabric_nodes(
    zone_a: &FakeDownstream,
    zone_b: &FakeDownstream,
    broker_port: u16,
    user: Option<(&str, &str)>,
    dirs: &(tempfile::TempDir, tempfile::TempDir),
) -> (qproxy::node::RunningNode, qproxy::node::RunningNode) {
    let mqtt = |client_id: &str| {
        let mut m = json!({"enabled": true, "host": "127.0.0.1", "port": broker_port, "client_id": client_id});
        if let Some((app, token)) = user {
            m["app_id"] = json!(app);
            m["token"] = json!(token);
        }
        m
    };
    let mut record_config = support::record_config(
        &zone_a.url(),
        4,
        &StoreChoice::Embedded(dirs.0.path().into()),
    );
    record_config["mqtt"] = mqtt("fabric-record");
    let record = support::start_node(record_config).await;
    let mut playback_config = support::playback_config(
        &zone_b.url(),
        4,
        record.api_addr,
        &StoreChoice::Embedded(dirs.1.path().into()),
    );
    playback_config["mqtt"] = mqtt("fabric-playback");
    playback_config["sync"]["interval"] = json!(60_000);
    let playback = support::start_node(playback_config).await;
    (record, playback)
}

async fn status(api: SocketAddr) -> Value {
    get_json(&format!("http://{api}/api/status")).await.1
}

async fn wait_connected(api: SocketAddr) {
    eventually("mqtt connected", Duration::from_secs(20), || async {
        (status(api).await["mqtt"]["connected"] == true).then_some(())
    })
    .await;
}

async fn replayed_in_zone_b(zone_b: &FakeDownstream, n: usize, within: Duration) {
    eventually(&format!("{n} replays in zone B"), within, || async {
        (zone_b.count() >= n).then_some(())
    })
    .await;
}

async fn push_replays_a_thousand_requests(broker_port: u16, user: Option<(&str, &str)>) {
    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start().await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (record, playback) = fabric_nodes(&zone_a, &zone_b, broker_port, user, &dirs).await;
    wait_connected(record.api_addr).await;
    wait_connected(playback.api_addr).await;

    support::send_posts(record.http_addr.unwrap(), 1000, "push").await;
    // sync.interval is a minute: only notifications make this fast.
    replayed_in_zone_b(&zone_b, 1000, Duration::from_secs(30)).await;
    let ids: HashSet<(String, String)> = zone_b
        .seen()
        .iter()
        .map(|s| {
            (
                s.header("x-qproxy-replay-shard").unwrap().to_string(),
                s.header("x-qproxy-replay-id").unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(ids.len(), 1000, "each record replayed once");

    let pb = eventually(
        "commits travel over mqtt",
        Duration::from_secs(10),
        || async {
            let s = status(playback.api_addr).await;
            (s["playback"]["mqtt_commits"].as_u64().unwrap_or(0) > 0
                && s["playback"]["matched"] == 1000)
                .then_some(s)
        },
    )
    .await;
    assert_eq!(pb["playback"]["transport"], "mqtt", "{pb}");
    assert!(pb["playback"]["notifications"].as_u64().unwrap() > 0);
    // The Record node applied the QoS 1 commits: every shard's checkpoint moved.
    eventually(
        "checkpoints reach the end",
        Duration::from_secs(10),
        || async {
            let c = support::checkpoints(record.api_addr, "zone-b").await;
            let total: usize = c.len();
            (total > 0).then_some(())
        },
    )
    .await;
    playback.stop().await;
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_sync_replays_within_seconds_through_mosquitto() {
    let mosquitto = Mosquitto::start(Some(("zones", "fabric-token")));
    push_replays_a_thousand_requests(mosquitto.port, Some(("zones", "fabric-token"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_sync_replays_within_seconds_through_the_embedded_broker() {
    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start().await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The Record node runs the broker; the Playback node dials it.
    let mut record_config = support::record_config(
        &zone_a.url(),
        4,
        &StoreChoice::Embedded(dirs.0.path().into()),
    );
    record_config["mqtt"] = json!({"enabled": true, "embedded_broker": {"enabled": true, "host": "127.0.0.1", "port": 0}});
    let record = support::start_node(record_config).await;
    let broker = record.broker_addr.expect("the record node runs the broker");
    let mut playback_config = support::playback_config(
        &zone_b.url(),
        4,
        record.api_addr,
        &StoreChoice::Embedded(dirs.1.path().into()),
    );
    playback_config["mqtt"] = json!({"enabled": true, "host": "127.0.0.1", "port": broker.port()});
    playback_config["sync"]["interval"] = json!(60_000);
    let playback = support::start_node(playback_config).await;
    wait_connected(record.api_addr).await;
    wait_connected(playback.api_addr).await;

    support::send_posts(record.http_addr.unwrap(), 1000, "embedded").await;
    replayed_in_zone_b(&zone_b, 1000, Duration::from_secs(30)).await;
    let s = status(playback.api_addr).await;
    assert_eq!(s["playback"]["transport"], "mqtt", "{s}");
    playback.stop().await;
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_shows_readable_notifications_and_qos1_commits() {
    let mosquitto = Mosquitto::start(None);
    let port = mosquitto.port.to_string();
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-q",
            "1",
            "-v",
            "-F",
            "%q %t %p",
            "-t",
            "qproxy/notify/#",
            "-t",
            "qproxy/commit",
            "-C",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub runs");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start().await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (record, playback) = fabric_nodes(&zone_a, &zone_b, mosquitto.port, None, &dirs).await;
    wait_connected(record.api_addr).await;
    wait_connected(playback.api_addr).await;
    support::send_posts(record.http_addr.unwrap(), 1, "seen").await;
    replayed_in_zone_b(&zone_b, 1, Duration::from_secs(20)).await;

    let output = tokio::task::spawn_blocking(move || {
        let until = Instant::now() + Duration::from_secs(20);
        while sub.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < until,
                "mosquitto_sub did not see two messages"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sub.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let (notify_qos, rest) = lines[0].split_once(' ').unwrap();
    let (topic, payload) = rest.split_once(' ').unwrap();
    assert_eq!(notify_qos, "0");
    assert!(topic.starts_with("qproxy/notify/"), "{text}");
    let note: Value = serde_json::from_str(payload)
        .unwrap_or_else(|e| panic!("notification is JSON ({e}): {payload}"));
    assert_eq!(note["records"], 1);
    assert!(note["last_id"].as_str().unwrap().contains('-'));
    let (commit_qos, rest) = lines[1].split_once(' ').unwrap();
    let (topic, payload) = rest.split_once(' ').unwrap();
    assert_eq!(
        (commit_qos, topic),
        ("1", "qproxy/commit"),
        "commits are QoS 1: {text}"
    );
    let commit: Value = serde_json::from_str(payload).unwrap();
    assert_eq!(commit["peer_id"], "zone-b");
    assert_eq!(commit["last_record_id"], note["last_id"]);
    playback.stop().await;
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_sync_goes_on_over_http_and_returns_to_mqtt() {
    let mut mosquitto = Mosquitto::start(None);
    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start().await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut record_config = support::record_config(
        &zone_a.url(),
        4,
        &StoreChoice::Embedded(dirs.0.path().into()),
    );
    record_config["mqtt"] =
        json!({"host": "127.0.0.1", "port": mosquitto.port, "client_id": "down-record"});
    let record = support::start_node(record_config).await;
    // The Playback node is a process of its own, so its metrics are its own.
    let mut playback_config = support::playback_config(
        &zone_b.url(),
        4,
        record.api_addr,
        &StoreChoice::Embedded(dirs.1.path().join("data")),
    );
    playback_config["mqtt"] =
        json!({"host": "127.0.0.1", "port": mosquitto.port, "client_id": "down-playback"});
    // Poll every 200 ms while the broker is away (the fallback's pace).
    playback_config["sync"]["interval"] = json!(200);
    playback_config["http"]["port"] = json!(free_port());
    let api_port = free_port();
    playback_config["api"]["port"] = json!(api_port);
    let _process = support::NodeProcess::spawn(&playback_config, dirs.1.path(), "playback");
    let api: SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    eventually(
        "the playback process answers",
        Duration::from_secs(20),
        || async { std::net::TcpStream::connect(api).ok().map(|_| ()) },
    )
    .await;
    wait_connected(record.api_addr).await;
    wait_connected(api).await;

    support::send_posts(record.http_addr.unwrap(), 100, "before").await;
    replayed_in_zone_b(&zone_b, 100, Duration::from_secs(20)).await;

    mosquitto.stop();
    eventually(
        "nodes notice the broker is gone",
        Duration::from_secs(20),
        || async { (status(api).await["mqtt"]["connected"] == false).then_some(()) },
    )
    .await;
    support::send_posts(record.http_addr.unwrap(), 100, "during").await;
    replayed_in_zone_b(&zone_b, 200, Duration::from_secs(30)).await;
    let s = status(api).await;
    assert_eq!(s["playback"]["transport"], "http", "{s}");

    mosquitto.restart();
    wait_connected(api).await;
    wait_connected(record.api_addr).await;
    support::send_posts(record.http_addr.unwrap(), 100, "after").await;
    replayed_in_zone_b(&zone_b, 300, Duration::from_secs(30)).await;
    eventually(
        "the transport is mqtt again",
        Duration::from_secs(20),
        || async { (status(api).await["playback"]["transport"] == "mqtt").then_some(()) },
    )
    .await;
    let metrics = support::client()
        .request(
            Request::get(format!("http://{}/metrics", api))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let text = http_body_util::BodyExt::collect(metrics.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("qproxy_sync_transport{transport=\"mqtt\"} 1"),
        "{text}"
    );
    let ids: HashSet<String> = zone_b.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(ids.len(), 300, "every request replayed, none lost");
    record.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_before_their_broker_connect_when_it_appears() {
    let port = free_port();
    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start().await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (record, playback) = fabric_nodes(&zone_a, &zone_b, port, None, &dirs).await;
    assert_eq!(status(playback.api_addr).await["mqtt"]["connected"], false);
    let _mosquitto = Mosquitto::start_on(port, None);
    wait_connected(record.api_addr).await;
    wait_connected(playback.api_addr).await;
    support::send_posts(record.http_addr.unwrap(), 10, "late-broker").await;
    replayed_in_zone_b(&zone_b, 10, Duration::from_secs(20)).await;
    assert_eq!(
        status(playback.api_addr).await["playback"]["transport"],
        "mqtt"
    );
    playback.stop().await;
    record.stop().await;
}

/// An MQTT commit obeys the same rules as `POST /commit`: one beyond the
/// shard's newest record is refused, counted and logged, not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_commits_beyond_the_data_are_refused_and_counted() {
    let zone_a = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        support::record_config(&zone_a.url(), 1, &StoreChoice::Embedded(dir.path().into()));
    config["mqtt"] = json!({"enabled": true, "embedded_broker": {"enabled": true, "host": "127.0.0.1", "port": 0}});
    let record = support::start_node(config).await;
    wait_connected(record.api_addr).await;
    support::send_posts(record.http_addr.unwrap(), 2, "m").await;
    let page = eventually("two records", Duration::from_secs(20), || async {
        let (_, page) = get_json(&format!("http://{}/sync?peer_id=m", record.api_addr)).await;
        (page["records"].as_array().unwrap().len() == 2).then_some(page)
    })
    .await;
    let newest: qproxy::record::RecordId = page["next_id"].as_str().unwrap().parse().unwrap();
    let beyond = qproxy::record::RecordId::new(newest.ms + 60_000, 0);

    let broker = record.broker_addr.unwrap();
    let mut client = qproxy::mqtt_client::MqttClient::new(qproxy::mqtt_client::MqttConfig {
        client_id: "hand-commit".into(),
        host: "127.0.0.1".into(),
        port: broker.port(),
        ..Default::default()
    });
    client.connect().await.unwrap();
    for id in [beyond, newest] {
        let commit = json!({"peer_id": "m", "shard_id": 0, "last_record_id": id.to_string()});
        client
            .publish(
                "qproxy/commit".into(),
                Bytes::from(commit.to_string()),
                qproxy::mqtt_client::QoS::AtLeastOnce,
            )
            .await
            .unwrap();
    }
    // Commits are applied in order: once the second is in, the first was seen.
    eventually(
        "the good commit applied",
        Duration::from_secs(20),
        || async {
            let c = support::checkpoints(record.api_addr, "m").await;
            (c.get(&0) == Some(&newest.to_string())).then_some(())
        },
    )
    .await;
    let s = status(record.api_addr).await;
    assert_eq!(s["commits_refused"], 1, "{s}");
    let metrics = support::get_text(&format!("http://{}/metrics", record.api_addr)).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("qproxy_commits_total") && l.contains("result=\"refused\"")),
        "{metrics}"
    );
    client.disconnect().await.unwrap();
    record.stop().await;
}
