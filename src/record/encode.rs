//! An HTTP exchange, as captured, straight to its stored MessagePack.
//!
//! The writer encodes tens of thousands of exchanges a second. Building a
//! [`Record`](super::Record) first would copy every header into a `String`
//! and every body into one buffer only to throw them away after encoding;
//! the views here borrow from the [`RawExchange`] instead and encode the
//! same map, field for field, so readers decode it as a `Record`.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

use super::exchange::{BodyBuf, RawExchange};
use super::{header_value_text, text_in};
use crate::model::headers::is_hop_by_hop;

/// What a redacted header value is stored as.
pub const REDACTED: &str = "[redacted]";

/// The MessagePack of the record for `raw` on `shard`, with the values of
/// the `redact`ed headers hidden.
pub fn encode_exchange(raw: &RawExchange, shard: u32, redact: &[HeaderName]) -> Bytes {
    let mut client_addr = [0; 64];
    let request_body = body_bytes(&raw.request_body);
    let response_body = body_bytes(&raw.response_body);
    let record = RecordView {
        shard,
        captured_at_ms: raw.captured_at_ms,
        duration_us: raw.duration.as_micros() as u64,
        client_addr: text_in(raw.client_addr, &mut client_addr),
        error: raw.error.as_deref(),
        service: raw
            .service
            .as_deref()
            .or_else(|| host_service(&raw.request_headers)),
        exchange: ExchangeView::Http(HttpView {
            method: raw.method.as_str(),
            uri: raw.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            version: version_str(raw.version),
            request_headers: HeadersView {
                headers: &raw.request_headers,
                redact,
            },
            request_body: BytesView(&request_body),
            request_body_truncated: raw.request_body.truncated,
            status: raw.status.map(|s| s.as_u16()),
            response_headers: HeadersView {
                headers: &raw.response_headers,
                redact,
            },
            response_body: BytesView(&response_body),
            response_body_truncated: raw.response_body.truncated,
        }),
    };
    let headers = header_bytes(&raw.request_headers) + header_bytes(&raw.response_headers);
    let mut out = Vec::with_capacity(request_body.len() + response_body.len() + headers + 384);
    record
        .serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map())
        .expect("writing to a Vec cannot fail");
    Bytes::from(out)
}

/// The default service of an HTTP exchange: its `Host` without the port.
fn host_service(headers: &HeaderMap) -> Option<&str> {
    let host = headers.get(http::header::HOST)?.to_str().ok()?;
    let name = match host.rsplit_once(':') {
        // An IPv6 literal keeps its brackets: `[::1]:80` → `[::1]`.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    (!name.is_empty()).then_some(name)
}

/// A body's bytes in one piece (a copy only when it came in several).
fn body_bytes(body: &BodyBuf) -> Cow<'_, [u8]> {
    match body.chunks.as_slice() {
        [] => Cow::Borrowed(&[]),
        [one] => Cow::Borrowed(one),
        many => Cow::Owned(many.concat()),
    }
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// As `format!("{:?}", version)` writes it, which is what records hold.
fn version_str(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

// The views mirror `Record`, `Exchange` and `HttpExchange` field for field
// (names and order); `encodes_what_a_record_decodes` holds them together.

#[derive(Serialize)]
struct RecordView<'a> {
    shard: u32,
    captured_at_ms: u64,
    duration_us: u64,
    client_addr: &'a str,
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<&'a str>,
    exchange: ExchangeView<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum ExchangeView<'a> {
    Http(HttpView<'a>),
}

#[derive(Serialize)]
struct HttpView<'a> {
    method: &'a str,
    uri: &'a str,
    version: &'a str,
    request_headers: HeadersView<'a>,
    request_body: BytesView<'a>,
    request_body_truncated: bool,
    status: Option<u16>,
    response_headers: HeadersView<'a>,
    response_body: BytesView<'a>,
    response_body_truncated: bool,
}

struct BytesView<'a>(&'a [u8]);

impl Serialize for BytesView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Headers in order as `[name, value]` pairs, less hop-by-hop ones.
struct HeadersView<'a> {
    headers: &'a HeaderMap,
    redact: &'a [HeaderName],
}

impl Serialize for HeadersView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let kept = || self.headers.iter().filter(|(name, _)| !is_hop_by_hop(name));
        let mut seq = s.serialize_seq(Some(kept().count()))?;
        for (name, value) in kept() {
            let text = if self.redact.contains(name) {
                Cow::Borrowed(REDACTED)
            } else {
                header_value_text(value.as_bytes())
            };
            seq.serialize_element(&(name.as_str(), &*text))?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderValue, Method, StatusCode, Uri, Version};

    use super::*;
    use crate::record::{header_value_to_string, Body, Exchange, HttpExchange, Record, RecordId};

    fn raw() -> RawExchange {
        let mut request_headers = HeaderMap::new();
        request_headers.insert("host", HeaderValue::from_static("zone-a"));
        request_headers.insert("connection", HeaderValue::from_static("keep-alive"));
        request_headers.insert("authorization", HeaderValue::from_static("Bearer s3cret"));
        request_headers.append("x-many", HeaderValue::from_static("1"));
        request_headers.append("x-many", HeaderValue::from_static("2"));
        let mut response_headers = HeaderMap::new();
        response_headers.insert("x-odd", HeaderValue::from_bytes(&[0xe9, b'a']).unwrap());
        RawExchange {
            captured_at_ms: 1_747_629_658_000,
            client_addr: "[::1]:50000".parse().unwrap(),
            method: Method::PATCH,
            uri: Uri::from_static("http://zone-a/a/b?x=1"),
            version: Version::HTTP_2,
            request_headers,
            request_body: BodyBuf {
                chunks: vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")],
                len: 4,
                truncated: true,
            },
            status: Some(StatusCode::CREATED),
            response_headers,
            response_body: BodyBuf {
                chunks: vec![Bytes::from_static(b"{\"ok\":true}")],
                len: 11,
                truncated: false,
            },
            duration: Duration::from_micros(1234),
            error: Some("client went away".into()),
            service: None,
        }
    }

    #[test]
    fn encodes_what_a_record_decodes() {
        let redact = [HeaderName::from_static("authorization")];
        let encoded = encode_exchange(&raw(), 3, &redact);
        let record = Record::decode_pieces(RecordId::new(1, 0), &[encoded]).unwrap();
        let expected = Record {
            id: Some(RecordId::new(1, 0)),
            shard: 3,
            captured_at_ms: 1_747_629_658_000,
            duration_us: 1234,
            client_addr: "[::1]:50000".into(),
            error: Some("client went away".into()),
            service: Some("zone-a".into()),
            exchange: Exchange::Http(HttpExchange {
                method: "PATCH".into(),
                uri: "/a/b?x=1".into(),
                version: "HTTP/2.0".into(),
                request_headers: vec![
                    ("host".into(), "zone-a".into()),
                    ("authorization".into(), REDACTED.into()),
                    ("x-many".into(), "1".into()),
                    ("x-many".into(), "2".into()),
                ],
                request_body: Body::from(&b"abcd"[..]),
                request_body_truncated: true,
                status: Some(201),
                response_headers: vec![("x-odd".into(), header_value_to_string(&[0xe9, b'a']))],
                response_body: Body::from(&b"{\"ok\":true}"[..]),
                response_body_truncated: false,
            }),
        };
        assert_eq!(record, expected);
        // Byte for byte what encoding the record itself gives.
        let mut again = expected;
        again.id = None;
        assert_eq!(again.encode_pieces(), [encode_exchange(&raw(), 3, &redact)]);
    }

    #[test]
    fn the_service_is_the_configured_one_else_the_host_without_its_port() {
        let mut raw = raw();
        raw.service = Some("orders".into());
        let decode = |raw: &RawExchange| {
            Record::decode_pieces(RecordId::ZERO, &[encode_exchange(raw, 0, &[])]).unwrap()
        };
        assert_eq!(decode(&raw).service.as_deref(), Some("orders"));
        raw.service = None;
        for (host, service) in [
            ("svc.b:8080", Some("svc.b")),
            ("svc.b", Some("svc.b")),
            ("[::1]:80", Some("[::1]")),
            ("", None),
        ] {
            raw.request_headers
                .insert("host", HeaderValue::from_str(host).unwrap());
            assert_eq!(decode(&raw).service.as_deref(), service, "{host}");
        }
        raw.request_headers.remove("host");
        assert_eq!(decode(&raw).service, None);
    }

    #[test]
    fn versions_read_as_they_always_did() {
        for v in [
            Version::HTTP_09,
            Version::HTTP_10,
            Version::HTTP_11,
            Version::HTTP_2,
            Version::HTTP_3,
        ] {
            assert_eq!(version_str(v), format!("{v:?}"));
        }
    }
}
