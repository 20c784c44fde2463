//! The record model: one exchange as it is stored, synced and replayed.
//!
//! A [`Record`] is plain data. It is stored as MessagePack (field names kept,
//! so older readers skip newer fields) cut into pieces of at most
//! [`PIECE_BYTES`]; over the JSON sync API bodies travel as base64.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use super::body::Body;
pub use super::grpc::{GrpcCall, GrpcMessage};
pub use super::id::{BadRecordId, RecordId};

/// No stored value is larger than this.
pub const PIECE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Assigned by the store; absent until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RecordId>,
    pub shard: u32,
    /// Unix time in milliseconds when the request arrived.
    pub captured_at_ms: u64,
    /// From the request's arrival to the end of the response.
    pub duration_us: u64,
    pub client_addr: String,
    /// Why the exchange did not complete, if it did not.
    #[serde(default)]
    pub error: Option<String>,
    /// The service zone A's listener fronts (`http.service`, `tcp.service`;
    /// for HTTP the request's host when unset): zone B replays it to that
    /// service's endpoints when service discovery knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub exchange: Exchange,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exchange {
    Http(HttpExchange),
    Tcp(TcpSession),
    Grpc(GrpcCall),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http,
    Tcp,
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
            Protocol::Grpc => "grpc",
        }
    }
}

/// One TCP connection: what each side sent, in order, with time offsets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpSession {
    /// Where zone A's connection went (`host:port`).
    pub downstream: String,
    pub chunks: Vec<TcpChunk>,
    pub client_bytes: u64,
    pub server_bytes: u64,
    /// More bytes flowed than `record.max_body_bytes`; the rest is not kept.
    #[serde(default)]
    pub truncated: bool,
    /// `client`, `server` or `error`: who ended the connection.
    pub closed_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpChunk {
    /// true: client → server; false: server → client.
    pub from_client: bool,
    /// Microseconds since the connection opened.
    pub at_us: u64,
    pub data: Body,
}

impl TcpSession {
    /// Everything the server sent, in one buffer.
    pub fn server_stream(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.server_bytes as usize);
        for chunk in self.chunks.iter().filter(|c| !c.from_client) {
            out.extend_from_slice(&chunk.data);
        }
        out
    }

    /// Bytes kept in this session (both directions).
    pub fn kept_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.data.len()).sum()
    }
}

/// A header as `[name, value]`; the value's bytes are kept one char per
/// byte (Latin-1), which is lossless for every valid header value.
pub type Header = (String, String);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpExchange {
    pub method: String,
    /// Path and query as the client sent them.
    pub uri: String,
    pub version: String,
    /// The client's headers less hop-by-hop ones, before QProxy added any.
    pub request_headers: Vec<Header>,
    pub request_body: Body,
    #[serde(default)]
    pub request_body_truncated: bool,
    /// None when the downstream never answered.
    pub status: Option<u16>,
    pub response_headers: Vec<Header>,
    pub response_body: Body,
    #[serde(default)]
    pub response_body_truncated: bool,
}

impl Record {
    pub fn protocol(&self) -> Protocol {
        match self.exchange {
            Exchange::Http(_) => Protocol::Http,
            Exchange::Tcp(_) => Protocol::Tcp,
            Exchange::Grpc(_) => Protocol::Grpc,
        }
    }

    /// MessagePack, cut into pieces of at most [`PIECE_BYTES`].
    pub fn encode_pieces(&self) -> Vec<Bytes> {
        let encoded = Bytes::from(rmp_serde::to_vec_named(self).expect("records always encode"));
        split_pieces(encoded)
    }

    /// The inverse of [`Record::encode_pieces`], with the id the store gave.
    pub fn decode_pieces<P: AsRef<[u8]>>(
        id: RecordId,
        pieces: &[P],
    ) -> Result<Record, rmp_serde::decode::Error> {
        let mut record: Record = if pieces.len() == 1 {
            rmp_serde::from_slice(pieces[0].as_ref())?
        } else {
            let mut whole = Vec::with_capacity(pieces.iter().map(|p| p.as_ref().len()).sum());
            for piece in pieces {
                whole.extend_from_slice(piece.as_ref());
            }
            rmp_serde::from_slice(&whole)?
        };
        record.id = Some(id);
        Ok(record)
    }
}

/// A record's MessagePack cut into pieces of at most [`PIECE_BYTES`].
pub(crate) fn split_pieces(encoded: Bytes) -> Vec<Bytes> {
    if encoded.len() <= PIECE_BYTES {
        return vec![encoded];
    }
    (0..encoded.len())
        .step_by(PIECE_BYTES)
        .map(|start| encoded.slice(start..(start + PIECE_BYTES).min(encoded.len())))
        .collect()
}

/// Header bytes to the stored form (one char per byte).
pub fn header_value_to_string(value: &[u8]) -> String {
    header_value_text(value).into_owned()
}

/// The stored form of header bytes, borrowed when they are ASCII (almost
/// always), else one char per byte.
pub fn header_value_text(value: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(value) {
        Ok(s) if s.is_ascii() => std::borrow::Cow::Borrowed(s),
        _ => std::borrow::Cow::Owned(value.iter().map(|&b| b as char).collect()),
    }
}

/// `value` as text in `buf`, without allocating: for the client addresses
/// written for every record (the longest, `[v6%scope]:port`, takes 58
/// bytes; longer text would be cut).
pub(crate) fn text_in(value: impl std::fmt::Display, buf: &mut [u8; 64]) -> &str {
    use std::io::Write as _;
    let mut rest = &mut buf[..];
    let _ = write!(rest, "{value}");
    let len = 64 - rest.len();
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

/// The stored form back to header bytes; None if a char is not a byte.
pub fn header_value_to_bytes(value: &str) -> Option<Vec<u8>> {
    value.chars().map(|c| u8::try_from(c).ok()).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample(body_len: usize) -> Record {
        Record {
            id: None,
            shard: 2,
            captured_at_ms: 1_747_629_658_000,
            duration_us: 1234,
            client_addr: "10.0.0.7:50000".into(),
            error: None,
            service: None,
            exchange: Exchange::Http(HttpExchange {
                method: "POST".into(),
                uri: "/a/b?x=1".into(),
                version: "HTTP/1.1".into(),
                request_headers: vec![("content-type".into(), "application/json".into())],
                request_body: Body::from((0..body_len).map(|i| i as u8).collect::<Vec<_>>()),
                request_body_truncated: false,
                status: Some(200),
                response_headers: vec![("x-odd".into(), header_value_to_string(&[0xe9, b'a']))],
                response_body: Body::from(&b"{\"ok\":true}"[..]),
                response_body_truncated: false,
            }),
        }
    }

    #[test]
    fn msgpack_round_trip_small_and_large() {
        for len in [0, 10, PIECE_BYTES, 3 * PIECE_BYTES + 5] {
            let record = sample(len);
            let pieces = record.encode_pieces();
            assert!(pieces.iter().all(|p| p.len() <= PIECE_BYTES));
            let id = RecordId::new(5, 1);
            let back = Record::decode_pieces(id, &pieces).unwrap();
            assert_eq!(back.id, Some(id));
            assert_eq!(Record { id: None, ..back }, record);
        }
    }

    #[test]
    fn json_carries_bodies_as_base64() {
        let record = sample(3);
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["exchange"]["http"]["request_body"], "AAEC");
        let back: Record = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn header_values_round_trip_all_bytes() {
        let all: Vec<u8> = (0u8..=255).collect();
        let s = header_value_to_string(&all);
        assert_eq!(header_value_to_bytes(&s).unwrap(), all);
        assert_eq!(header_value_to_string(b"plain"), "plain");
        assert!(header_value_to_bytes("\u{4e2d}").is_none());
    }

    #[test]
    fn addresses_fit_the_text_buffer() {
        let longest = std::net::SocketAddrV6::new(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            65535,
            0,
            u32::MAX,
        );
        assert_eq!(text_in(longest, &mut [0; 64]), longest.to_string());
    }

    #[test]
    fn garbage_pieces_are_an_error_not_a_panic() {
        for garbage in [&b""[..], b"\xc1", b"\x92\x01", &[0xff; 40]] {
            assert!(Record::decode_pieces(RecordId::ZERO, &[garbage]).is_err());
        }
    }
}
