//! Plain MQTT data: quality of service, received messages, topic filters,
//! and the query envelopes that give MQTT 3.1.1 request/response.
//!
//! MQTT 3.1.1 has no response topic or correlation data, so a query carries
//! both in a small MessagePack envelope: `{id, reply_to, payload}` out,
//! `{id, payload | error}` back.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Delivery guarantee of a publish or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl From<QoS> for rumqttc::QoS {
    fn from(q: QoS) -> Self {
        match q {
            QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
            QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
            QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
        }
    }
}

impl From<rumqttc::QoS> for QoS {
    fn from(q: rumqttc::QoS) -> Self {
        match q {
            rumqttc::QoS::AtMostOnce => QoS::AtMostOnce,
            rumqttc::QoS::AtLeastOnce => QoS::AtLeastOnce,
            rumqttc::QoS::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
}

/// A message delivered to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

/// A query on its way to whoever answers `topic`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryRequest {
    pub id: u64,
    pub reply_to: String,
    pub payload: Bytes,
}

/// The answer to a [`QueryRequest`], sent to its `reply_to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResponse {
    pub id: u64,
    #[serde(default)]
    pub payload: Option<Bytes>,
    #[serde(default)]
    pub error: Option<String>,
}

impl QueryRequest {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("envelopes always encode")
    }

    pub fn decode(bytes: &[u8]) -> Result<QueryRequest, String> {
        rmp_serde::from_slice(bytes).map_err(|e| format!("not a query envelope: {e}"))
    }
}

impl QueryResponse {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("envelopes always encode")
    }

    pub fn decode(bytes: &[u8]) -> Result<QueryResponse, String> {
        rmp_serde::from_slice(bytes).map_err(|e| format!("not a query response envelope: {e}"))
    }
}

/// MQTT topic filter matching (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A client id as a topic level: no wildcards or separators.
pub fn topic_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        let q = QueryRequest {
            id: 7,
            reply_to: "r/x".into(),
            payload: Bytes::from_static(b"\x00\xff data"),
        };
        assert_eq!(QueryRequest::decode(&q.encode()).unwrap(), q);
        let ok = QueryResponse {
            id: 7,
            payload: Some(Bytes::from_static(b"answer")),
            error: None,
        };
        assert_eq!(QueryResponse::decode(&ok.encode()).unwrap(), ok);
        let err = QueryResponse {
            id: 8,
            payload: None,
            error: Some("no".into()),
        };
        assert_eq!(QueryResponse::decode(&err.encode()).unwrap(), err);
    }

    #[test]
    fn garbage_envelopes_are_errors() {
        for bad in [&b""[..], b"{}", b"\x93\x01\x02", &[0xc1; 9]] {
            assert!(QueryRequest::decode(bad).is_err());
            assert!(QueryResponse::decode(bad).is_err());
        }
    }

    #[test]
    fn filters() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("#", "x/y"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(!topic_matches("a/b", "a/c"));
        assert!(!topic_matches("a/b/c", "a/b"));
        assert_eq!(topic_safe("node/1+#"), "node_1__");
    }

    #[test]
    fn qos_converts_both_ways() {
        for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            assert_eq!(QoS::from(rumqttc::QoS::from(q)), q);
        }
    }
}
