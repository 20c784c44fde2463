//! A gRPC call as it is stored, and the gRPC wire format every layer that
//! touches one needs: the length-prefixed message framing, status codes,
//! the service a method path names.
//!
//! Messages are opaque bytes: QProxy never needs the `.proto`.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::body::Body;
use super::record::Header;

/// One gRPC call: the method, both sides' metadata, every message in
/// order, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpcCall {
    /// `/package.Service/Method`.
    pub method: String,
    /// The client's metadata less hop-by-hop headers (`te` is implied).
    pub request_metadata: Vec<Header>,
    pub request_messages: Vec<GrpcMessage>,
    /// The downstream's HTTP status; None when it never answered.
    pub http_status: Option<u16>,
    /// The response headers (initial metadata); in a Trailers-Only answer
    /// everything is in `trailers` and this is empty.
    pub response_metadata: Vec<Header>,
    pub response_messages: Vec<GrpcMessage>,
    /// The trailers, `grpc-status` and `grpc-message` among them.
    pub trailers: Vec<Header>,
    /// `grpc-status`; None when the call ended without one.
    pub status: Option<u32>,
    /// Messages and payload bytes each way, also those not kept.
    pub request_count: u64,
    pub request_bytes: u64,
    pub response_count: u64,
    pub response_bytes: u64,
    /// More message bytes flowed than `record.max_body_bytes`: the rest
    /// were counted, not kept.
    #[serde(default)]
    pub truncated: bool,
}

/// One length-prefixed message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpcMessage {
    /// Microseconds since the call started.
    pub at_us: u64,
    /// The message's compressed flag (its bytes are kept as sent).
    #[serde(default)]
    pub compressed: bool,
    /// For a request message: how many response messages the client had
    /// been sent before it, which a replay waits for (turn order).
    #[serde(default)]
    pub after: u32,
    pub data: Body,
}

impl GrpcCall {
    /// The value of trailer `name` (or, in a Trailers-Only answer, header).
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .chain(&self.response_metadata)
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Message bytes kept in this call (both directions).
    pub fn kept_bytes(&self) -> usize {
        self.request_messages
            .iter()
            .chain(&self.response_messages)
            .map(|m| m.data.len())
            .sum()
    }
}

/// The service a method path names: `/pkg.Svc/Method` → `pkg.Svc`.
pub fn service_of(method: &str) -> Option<&str> {
    let rest = method.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    (!service.is_empty() && !method.is_empty()).then_some(service)
}

/// The header a status code travels in.
pub const STATUS_HEADER: &str = "grpc-status";
pub const MESSAGE_HEADER: &str = "grpc-message";

/// gRPC status codes QProxy itself answers with.
pub mod code {
    pub const OK: u32 = 0;
    pub const CANCELLED: u32 = 1;
    pub const UNKNOWN: u32 = 2;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

/// A status code's name as the gRPC docs spell it (`UNAVAILABLE`).
pub fn code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN_CODE")
}

/// `grpc-message` is percent-encoded on the wire (RFC 3986 style): the
/// text a person reads.
pub fn decode_message(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Text as a `grpc-message` value: printable ASCII but `%` as is, the rest
/// percent-encoded.
pub fn encode_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The five bytes before every message: compressed flag, then length.
pub const PREFIX_LEN: usize = 5;

/// One message with its prefix, as it goes on the wire.
pub fn frame(compressed: bool, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX_LEN + data.len());
    out.extend_from_slice(&[u8::from(compressed)]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out.freeze()
}

/// What is wrong with a message stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message {index} is {len} bytes, more than the {max} allowed")]
    TooLarge { index: u64, len: u64, max: u64 },
    #[error("message {index} has compressed flag {flag}, which is neither 0 nor 1")]
    BadFlag { index: u64, flag: u8 },
    #[error("the stream ended inside message {index}: {have} of {want} bytes came")]
    Cut { index: u64, have: u64, want: u64 },
}

impl FrameError {
    /// The status a peer gets for it.
    pub fn code(&self) -> u32 {
        match self {
            FrameError::TooLarge { .. } => code::RESOURCE_EXHAUSTED,
            _ => code::INTERNAL,
        }
    }
}

/// A message as [`Framer`] cuts it out of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed {
    pub compressed: bool,
    /// The whole message, or None when only its length was wanted.
    pub data: Option<Bytes>,
    pub len: u64,
}

/// Cuts a stream of data chunks into messages as they arrive, whatever the
/// chunks' sizes; checks each prefix. It keeps a message's bytes only while
/// `keep` says so (a message not kept costs no memory: its bytes are
/// counted and dropped).
#[derive(Debug)]
pub struct Framer {
    max_message: u64,
    /// The prefix being read (up to five bytes).
    prefix: [u8; PREFIX_LEN],
    prefix_have: usize,
    /// The message being read: its flag, length, bytes so far.
    current: Option<Current>,
    /// Messages cut so far.
    count: u64,
}

#[derive(Debug)]
struct Current {
    compressed: bool,
    len: u64,
    have: u64,
    /// Its bytes, when kept.
    data: Option<BytesMut>,
}

impl Framer {
    pub fn new(max_message: u64) -> Framer {
        Framer {
            max_message,
            prefix: [0; PREFIX_LEN],
            prefix_have: 0,
            current: None,
            count: 0,
        }
    }

    /// Messages completed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Feeds `chunk`; every message it completes goes to `out`. `keep`
    /// says, for a message of a given length, whether to keep its bytes.
    pub fn push(
        &mut self,
        mut chunk: Bytes,
        mut keep: impl FnMut(u64) -> bool,
        mut out: impl FnMut(Framed),
    ) -> Result<(), FrameError> {
        while !chunk.is_empty() {
            let Some(current) = &mut self.current else {
                let take = (PREFIX_LEN - self.prefix_have).min(chunk.len());
                self.prefix[self.prefix_have..self.prefix_have + take]
                    .copy_from_slice(&chunk[..take]);
                self.prefix_have += take;
                chunk.advance(take);
                if self.prefix_have == PREFIX_LEN {
                    self.prefix_have = 0;
                    self.start_message(&mut keep, &mut out)?;
                }
                continue;
            };
            let take = ((current.len - current.have) as usize).min(chunk.len());
            let part = chunk.split_to(take);
            current.have += take as u64;
            if let Some(data) = &mut current.data {
                data.extend_from_slice(&part);
            }
            if current.have == current.len {
                let done = self.current.take().expect("a message in progress");
                self.finish(done, &mut out);
            }
        }
        Ok(())
    }

    fn start_message(
        &mut self,
        keep: &mut impl FnMut(u64) -> bool,
        out: &mut impl FnMut(Framed),
    ) -> Result<(), FrameError> {
        let flag = self.prefix[0];
        let len = u32::from_be_bytes(self.prefix[1..].try_into().expect("four bytes")) as u64;
        let index = self.count;
        if flag > 1 {
            return Err(FrameError::BadFlag { index, flag });
        }
        if len > self.max_message {
            return Err(FrameError::TooLarge {
                index,
                len,
                max: self.max_message,
            });
        }
        let current = Current {
            compressed: flag == 1,
            len,
            have: 0,
            data: keep(len).then(|| BytesMut::with_capacity(len as usize)),
        };
        if len == 0 {
            self.finish(current, out);
        } else {
            self.current = Some(current);
        }
        Ok(())
    }

    fn finish(&mut self, done: Current, out: &mut impl FnMut(Framed)) {
        self.count += 1;
        out(Framed {
            compressed: done.compressed,
            data: done.data.map(BytesMut::freeze),
            len: done.len,
        });
    }

    /// The stream has ended: an error if it ended inside a message.
    pub fn end(&self) -> Result<(), FrameError> {
        let index = self.count;
        if let Some(current) = &self.current {
            return Err(FrameError::Cut {
                index,
                have: current.have + PREFIX_LEN as u64,
                want: current.len + PREFIX_LEN as u64,
            });
        }
        if self.prefix_have > 0 {
            return Err(FrameError::Cut {
                index,
                have: self.prefix_have as u64,
                want: PREFIX_LEN as u64,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(framer: &mut Framer, chunks: &[&[u8]]) -> Result<Vec<Framed>, FrameError> {
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(Bytes::copy_from_slice(chunk), |_| true, |m| out.push(m))?;
        }
        Ok(out)
    }

    #[test]
    fn messages_are_cut_whatever_the_chunks() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&frame(false, b"hello"));
        wire.extend_from_slice(&frame(true, b""));
        wire.extend_from_slice(&frame(false, &[7; 300]));
        for size in [1, 2, 5, 6, 64, wire.len()] {
            let chunks: Vec<&[u8]> = wire.chunks(size).collect();
            let mut framer = Framer::new(1 << 20);
            let got = cut(&mut framer, &chunks).unwrap();
            assert_eq!(got.len(), 3, "chunks of {size}");
            assert_eq!(got[0].data.as_deref(), Some(&b"hello"[..]));
            assert!(!got[0].compressed);
            assert!(got[1].compressed);
            assert_eq!(got[1].len, 0);
            assert_eq!(got[2].data.as_deref(), Some(&[7; 300][..]));
            framer.end().unwrap();
        }
    }

    #[test]
    fn bad_streams_are_named() {
        let mut framer = Framer::new(10);
        let err = cut(&mut framer, &[&frame(false, &[0; 11])]).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                index: 0,
                len: 11,
                max: 10
            }
        );
        assert_eq!(err.code(), code::RESOURCE_EXHAUSTED);
        let mut framer = Framer::new(10);
        let err = cut(&mut framer, &[b"\x07\0\0\0\x01x"]).unwrap_err();
        assert_eq!(err, FrameError::BadFlag { index: 0, flag: 7 });
        let mut framer = Framer::new(100);
        cut(&mut framer, &[&frame(false, b"ok"), b"\0\0\0\0\x09abc"]).unwrap();
        assert_eq!(
            framer.end().unwrap_err().to_string(),
            "the stream ended inside message 1: 8 of 14 bytes came"
        );
        let mut framer = Framer::new(100);
        cut(&mut framer, &[b"\0\0"]).unwrap();
        assert!(framer.end().is_err());
    }

    #[test]
    fn unkept_messages_are_counted_not_held() {
        let mut framer = Framer::new(1 << 20);
        let mut out = Vec::new();
        framer
            .push(frame(false, &[1; 1000]), |len| len < 100, |m| out.push(m))
            .unwrap();
        assert_eq!(out[0].data, None);
        assert_eq!(out[0].len, 1000);
        assert_eq!(framer.count(), 1);
    }

    #[test]
    fn a_call_round_trips_as_a_record() {
        use crate::model::record::{Exchange, Record, RecordId};
        let call = GrpcCall {
            method: "/test.Echo/Bidi".into(),
            request_metadata: vec![("content-type".into(), "application/grpc".into())],
            request_messages: vec![GrpcMessage {
                at_us: 10,
                compressed: false,
                after: 1,
                data: Body::from(&b"x"[..]),
            }],
            http_status: Some(200),
            response_messages: vec![GrpcMessage {
                at_us: 5,
                compressed: true,
                after: 0,
                data: Body::from(&[0u8, 255][..]),
            }],
            trailers: vec![("grpc-status".into(), "0".into())],
            status: Some(0),
            request_count: 1,
            request_bytes: 1,
            response_count: 1,
            response_bytes: 2,
            ..GrpcCall::default()
        };
        let record = Record {
            id: None,
            shard: 1,
            captured_at_ms: 1,
            duration_us: 2,
            client_addr: "127.0.0.1:1".into(),
            error: None,
            service: Some("test.Echo".into()),
            exchange: Exchange::Grpc(call),
        };
        let back = Record::decode_pieces(RecordId::ZERO, &record.encode_pieces()).unwrap();
        assert_eq!(Record { id: None, ..back }, record);
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json["exchange"]["grpc"]["response_messages"][0]["data"],
            "AP8="
        );
        assert_eq!(serde_json::from_value::<Record>(json).unwrap(), record);
    }

    #[test]
    fn services_and_messages_read_as_grpc_writes_them() {
        assert_eq!(service_of("/pkg.v1.Orders/Get"), Some("pkg.v1.Orders"));
        assert_eq!(service_of("/Get"), None);
        assert_eq!(service_of("pkg/Get"), None);
        assert_eq!(service_of("//Get"), None);
        assert_eq!(
            decode_message("not%20found%3A%20%E4%B8%AD"),
            "not found: 中"
        );
        assert_eq!(decode_message("100%"), "100%");
        assert_eq!(encode_message("50% off: 中"), "50%25 off: %E4%B8%AD");
        assert_eq!(decode_message(&encode_message("a\nb%c")), "a\nb%c");
        assert_eq!(code_name(14), "UNAVAILABLE");
        assert_eq!(code_name(99), "UNKNOWN_CODE");
    }
}
