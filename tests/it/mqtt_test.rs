//! The MQTT client's plain parts and its behaviour with no broker at all.

use std::time::{Duration, Instant};

use bytes::Bytes;
use qproxy::mqtt_client::message::{topic_matches, QueryRequest, QueryResponse};
use qproxy::mqtt_client::{MqttClient, MqttConfig, MqttError, QoS};
use qproxy::record::RecordId;
use qproxy::sync::mqtt::{Notification, ShardSignal, Topics};

use crate::support::free_port;

fn config(port: u16) -> MqttConfig {
    MqttConfig {
        client_id: "mqtt-test".into(),
        host: "127.0.0.1".into(),
        port,
        connect_timeout: Duration::from_millis(500),
        ..MqttConfig::default()
    }
}

#[test]
fn query_envelopes_round_trip_and_reject_garbage() {
    let request = QueryRequest {
        id: 42,
        reply_to: "qproxy/reply/me".into(),
        payload: Bytes::from_static(b"\x00\x01bin"),
    };
    assert_eq!(QueryRequest::decode(&request.encode()).unwrap(), request);
    let response = QueryResponse {
        id: 42,
        payload: None,
        error: Some("no such shard".into()),
    };
    assert_eq!(QueryResponse::decode(&response.encode()).unwrap(), response);
    let err = QueryRequest::decode(b"{\"id\": 1}").unwrap_err();
    assert!(err.contains("not a query envelope"), "{err}");
}

#[test]
fn topic_filters_follow_mqtt_rules() {
    assert!(topic_matches("qproxy/notify/+", "qproxy/notify/3"));
    assert!(!topic_matches("qproxy/notify/+", "qproxy/notify/3/x"));
    assert!(topic_matches("qproxy/#", "qproxy/notify/3"));
    assert!(!topic_matches("qproxy/query", "qproxy/commit"));
}

#[tokio::test]
async fn notifications_are_coalesced_per_shard_and_readable_json() {
    let signal = ShardSignal::new(2);
    for seq in 0..100 {
        signal.written(1, RecordId::new(5, seq));
    }
    let news = signal.take().await;
    assert_eq!(
        news,
        vec![Notification {
            shard: 1,
            last_id: RecordId::new(5, 99),
            records: 100
        }]
    );
    let json = serde_json::to_string(&news[0]).unwrap();
    assert_eq!(json, r#"{"shard":1,"last_id":"5-99","records":100}"#);
    let topics = Topics::new("qproxy");
    assert_eq!(topics.shard_of_notify(&topics.notify(1)), Some(1));
}

#[tokio::test]
async fn without_a_broker_connect_fails_with_the_reason_and_queries_fail_fast() {
    let port = free_port();
    let mut client = MqttClient::new(config(port));
    let err = client.connect().await.unwrap_err();
    match &err {
        MqttError::ConnectTimeout { broker, reason, .. } => {
            assert_eq!(broker, &format!("127.0.0.1:{port}"));
            assert!(reason.to_lowercase().contains("refused"), "{reason}");
        }
        other => panic!("unexpected error: {other}"),
    }

    let mut started = MqttClient::new(config(port));
    started.start();
    assert!(!started.is_connected());
    let at = Instant::now();
    let err = started
        .query("q".into(), Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, MqttError::NotConnected(_)), "{err}");
    assert!(
        at.elapsed() < Duration::from_millis(100),
        "a query without a connection fails at once"
    );
    // Publishing while away is queued, not an error.
    started
        .publish("t".into(), Bytes::from_static(b"later"), QoS::AtLeastOnce)
        .await
        .unwrap();
}
