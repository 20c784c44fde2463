//! Comparing a replayed answer with the recorded one.
//!
//! Status first, then the headers chosen by `playback.compare_headers`,
//! then bodies: when both bodies are JSON they are compared as values (key
//! order ignored, `playback.ignore_json_paths` left out), otherwise byte for
//! byte. A mismatch comes with a short diff a person can read.

use http::{HeaderMap, HeaderName};
use serde_json::Value;

use super::Outcome;
use crate::config::{JsonPath, PlaybackConfig};
use crate::record::header_value_to_bytes;

/// The longest diff kept per result.
const MAX_DIFF: usize = 400;

/// How a Playback node judges a replayed HTTP answer, built from its
/// config: the one place a new comparison rule goes.
#[derive(Debug, Clone, Default)]
pub struct Comparator {
    headers: Vec<HeaderName>,
    ignore: Vec<JsonPath>,
}

/// One HTTP answer: the recorded one or the replayed one.
pub struct Answer<'a> {
    pub status: u16,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl Comparator {
    /// From `playback.compare_headers` and `playback.ignore_json_paths`
    /// (checked when the config is loaded).
    pub fn new(config: &PlaybackConfig) -> Result<Comparator, String> {
        let headers = config
            .compare_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("`{h}` is not a valid header name"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Comparator {
            headers,
            ignore: config.ignore_json_paths.clone(),
        })
    }

    /// Whether any header is compared (else the recorded headers need not
    /// be parsed for it).
    pub fn compares_headers(&self) -> bool {
        !self.headers.is_empty()
    }

    pub fn compare(
        &self,
        recorded: &Answer<'_>,
        replayed: &Answer<'_>,
    ) -> (Outcome, Option<String>) {
        if recorded.status != replayed.status {
            return (
                Outcome::Mismatched,
                Some(format!(
                    "status: recorded {}, replayed {}",
                    recorded.status, replayed.status
                )),
            );
        }
        if let Some(diff) = self.header_diff("header", recorded.headers, replayed.headers) {
            return (Outcome::Mismatched, Some(truncate(diff)));
        }
        match self.body_diff(recorded.body, replayed.body) {
            None => (Outcome::Matched, None),
            Some(diff) => (Outcome::Mismatched, Some(truncate(diff))),
        }
    }

    fn body_diff(&self, recorded: &[u8], replayed: &[u8]) -> Option<String> {
        if recorded == replayed {
            return None;
        }
        if let (Ok(mut a), Ok(mut b)) = (
            serde_json::from_slice::<Value>(recorded),
            serde_json::from_slice::<Value>(replayed),
        ) {
            for path in &self.ignore {
                path.remove(&mut a);
                path.remove(&mut b);
            }
            return json_diff("$", &a, &b);
        }
        compare_bytes("body", recorded, replayed)
    }
}

/// How one gRPC call ended: the recorded one or the replayed one.
pub struct GrpcAnswer<'a> {
    /// `grpc-status`; None when there was none.
    pub status: Option<u32>,
    /// `grpc-message`, decoded.
    pub message: String,
    /// Response metadata and trailers together.
    pub metadata: &'a HeaderMap,
    pub messages: Vec<&'a [u8]>,
}

impl Comparator {
    /// A replayed gRPC call against its recording: `grpc-status` (never the
    /// HTTP status, which is 200 for errors too), `grpc-message`, the
    /// headers of `playback.compare_headers` among metadata and trailers,
    /// then the response messages: their count, then byte for byte, the
    /// first that differs named by its index.
    pub fn compare_grpc(
        &self,
        recorded: &GrpcAnswer<'_>,
        replayed: &GrpcAnswer<'_>,
    ) -> (Outcome, Option<String>) {
        let show_status = |s: Option<u32>| match s {
            Some(code) => format!("{code} ({})", crate::model::grpc::code_name(code)),
            None => "none".to_string(),
        };
        let mismatch = |diff: String| (Outcome::Mismatched, Some(truncate(diff)));
        if recorded.status != replayed.status {
            return mismatch(format!(
                "grpc-status: recorded {}, replayed {}",
                show_status(recorded.status),
                show_status(replayed.status)
            ));
        }
        if recorded.message != replayed.message {
            return mismatch(format!(
                "grpc-message: recorded {:?}, replayed {:?}",
                recorded.message, replayed.message
            ));
        }
        if let Some(diff) = self.header_diff("metadata", recorded.metadata, replayed.metadata) {
            return mismatch(diff);
        }
        let first = recorded
            .messages
            .iter()
            .zip(&replayed.messages)
            .position(|(a, b)| a != b);
        let count = (recorded.messages.len() != replayed.messages.len()).then(|| {
            format!(
                "response messages: recorded {}, replayed {}",
                recorded.messages.len(),
                replayed.messages.len()
            )
        });
        let differing = first.map(|i| {
            message_diff(
                &format!("message {i}"),
                recorded.messages[i],
                replayed.messages[i],
            )
        });
        match (count, differing) {
            (None, None) => (Outcome::Matched, None),
            (Some(count), None) => mismatch(count),
            (None, Some(diff)) => mismatch(diff),
            (Some(count), Some(diff)) => mismatch(format!("{count}; {diff}")),
        }
    }
}

impl Comparator {
    /// The first of `playback.compare_headers` whose values differ.
    fn header_diff(
        &self,
        what: &str,
        recorded: &HeaderMap,
        replayed: &HeaderMap,
    ) -> Option<String> {
        let show = |v: &Option<String>| {
            v.as_deref()
                .map_or("absent".to_string(), |v| format!("{v:?}"))
        };
        self.headers.iter().find_map(|name| {
            let (a, b) = (joined(recorded, name), joined(replayed, name));
            (a != b).then(|| {
                format!(
                    "{what} {name}: recorded {}, replayed {}",
                    show(&a),
                    show(&b)
                )
            })
        })
    }
}

/// Two messages that differ: as text when both are short printable text,
/// else where the first differing byte is.
fn message_diff(what: &str, recorded: &[u8], replayed: &[u8]) -> String {
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .filter(|s| s.len() <= 80 && s.chars().all(|c| !c.is_control()))
            .map(str::to_string)
    };
    match (text(recorded), text(replayed)) {
        (Some(a), Some(b)) => format!("{what}: recorded {a:?}, replayed {b:?}"),
        _ => compare_bytes(what, recorded, replayed).unwrap_or_default(),
    }
}

/// Recorded headers (as stored: name, text) in a map, for [`Answer`].
pub fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if let (Ok(name), Some(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            header_value_to_bytes(value).and_then(|v| http::HeaderValue::from_bytes(&v).ok()),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// Every value of a header, joined with `, ` (how HTTP folds them).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    Some(
        values
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// Byte-for-byte: None when equal, else where the first difference is.
pub fn compare_bytes(what: &str, recorded: &[u8], replayed: &[u8]) -> Option<String> {
    if recorded == replayed {
        return None;
    }
    let at = recorded
        .iter()
        .zip(replayed)
        .position(|(a, b)| a != b)
        .unwrap_or(recorded.len().min(replayed.len()));
    Some(format!(
        "{what}: differs at byte {at} (recorded {} bytes, replayed {} bytes)",
        recorded.len(),
        replayed.len()
    ))
}

/// The first difference between two JSON values, with its path.
fn json_diff(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    None => return Some(format!("{p}: recorded {}, replayed absent", short(va))),
                    Some(vb) => {
                        if let Some(d) = json_diff(&p, va, vb) {
                            return Some(d);
                        }
                    }
                }
            }
            y.iter()
                .find(|(k, _)| !x.contains_key(*k))
                .map(|(k, vb)| format!("{path}.{k}: recorded absent, replayed {}", short(vb)))
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                if let Some(d) = json_diff(&format!("{path}[{i}]"), va, vb) {
                    return Some(d);
                }
            }
            (x.len() != y.len())
                .then(|| format!("{path}: recorded {} items, replayed {}", x.len(), y.len()))
        }
        _ if a == b => None,
        _ => Some(format!(
            "{path}: recorded {}, replayed {}",
            short(a),
            short(b)
        )),
    }
}

fn short(v: &Value) -> String {
    truncate_to(v.to_string(), 80)
}

fn truncate(s: String) -> String {
    truncate_to(s, MAX_DIFF)
}

fn truncate_to(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compare_http(a: u16, body_a: &[u8], b: u16, body_b: &[u8]) -> (Outcome, Option<String>) {
        let none = HeaderMap::new();
        Comparator::default().compare(
            &Answer {
                status: a,
                headers: &none,
                body: body_a,
            },
            &Answer {
                status: b,
                headers: &none,
                body: body_b,
            },
        )
    }

    fn grpc<'a>(
        status: Option<u32>,
        message: &str,
        metadata: &'a HeaderMap,
        messages: &[&'a [u8]],
    ) -> GrpcAnswer<'a> {
        GrpcAnswer {
            status,
            message: message.to_string(),
            metadata,
            messages: messages.to_vec(),
        }
    }

    #[test]
    fn grpc_calls_compare_by_status_message_and_messages() {
        let none = HeaderMap::new();
        let plain = Comparator::default();
        let same = plain.compare_grpc(
            &grpc(Some(0), "", &none, &[b"a", b"b"]),
            &grpc(Some(0), "", &none, &[b"a", b"b"]),
        );
        assert_eq!(same, (Outcome::Matched, None));
        // The same bytes with another status: never judged by HTTP's 200.
        let (outcome, diff) = plain.compare_grpc(
            &grpc(Some(0), "", &none, &[b"a"]),
            &grpc(Some(13), "", &none, &[b"a"]),
        );
        assert_eq!(outcome, Outcome::Mismatched);
        assert_eq!(
            diff.unwrap(),
            "grpc-status: recorded 0 (OK), replayed 13 (INTERNAL)"
        );
        let (_, diff) = plain.compare_grpc(
            &grpc(Some(5), "not here", &none, &[]),
            &grpc(Some(5), "gone", &none, &[]),
        );
        assert_eq!(
            diff.unwrap(),
            "grpc-message: recorded \"not here\", replayed \"gone\""
        );
        let (_, diff) = plain.compare_grpc(
            &grpc(Some(0), "", &none, &[b"msg-0", b"msg-1", b"msg-2"]),
            &grpc(Some(0), "", &none, &[b"msg-0", b"MSG-1"]),
        );
        assert_eq!(
            diff.unwrap(),
            "response messages: recorded 3, replayed 2; message 1: recorded \"msg-1\", replayed \"MSG-1\""
        );
        let (_, diff) = plain.compare_grpc(
            &grpc(Some(0), "", &none, &[&[0, 1, 2]]),
            &grpc(Some(0), "", &none, &[&[0, 1, 3]]),
        );
        assert_eq!(
            diff.unwrap(),
            "message 0: differs at byte 2 (recorded 3 bytes, replayed 3 bytes)"
        );
    }

    #[test]
    fn grpc_metadata_is_compared_when_asked() {
        let mut a = HeaderMap::new();
        a.insert("x-version", "1".parse().unwrap());
        let mut b = HeaderMap::new();
        b.insert("x-version", "2".parse().unwrap());
        let (outcome, _) = Comparator::default()
            .compare_grpc(&grpc(Some(0), "", &a, &[]), &grpc(Some(0), "", &b, &[]));
        assert_eq!(outcome, Outcome::Matched);
        let (outcome, diff) = comparator(&["x-version"], &[])
            .compare_grpc(&grpc(Some(0), "", &a, &[]), &grpc(Some(0), "", &b, &[]));
        assert_eq!(outcome, Outcome::Mismatched);
        assert_eq!(
            diff.unwrap(),
            "metadata x-version: recorded \"1\", replayed \"2\""
        );
    }

    fn comparator(headers: &[&str], ignore: &[&str]) -> Comparator {
        let config = PlaybackConfig {
            compare_headers: headers.iter().map(|s| s.to_string()).collect(),
            ignore_json_paths: ignore.iter().map(|s| JsonPath::parse(s).unwrap()).collect(),
            ..PlaybackConfig::default()
        };
        Comparator::new(&config).unwrap()
    }

    #[test]
    fn chosen_headers_are_compared_and_others_are_not() {
        let c = comparator(&["content-type"], &[]);
        let mut a = HeaderMap::new();
        a.insert("content-type", "application/json".parse().unwrap());
        a.insert("date", "Mon".parse().unwrap());
        let mut b = a.clone();
        b.insert("date", "Tue".parse().unwrap());
        fn answer(h: &HeaderMap) -> Answer<'_> {
            Answer {
                status: 200,
                headers: h,
                body: b"{}",
            }
        }
        assert_eq!(
            c.compare(&answer(&a), &answer(&b)),
            (Outcome::Matched, None)
        );
        b.insert("content-type", "text/plain".parse().unwrap());
        let (o, d) = c.compare(&answer(&a), &answer(&b));
        assert_eq!(o, Outcome::Mismatched);
        assert_eq!(
            d.unwrap(),
            r#"header content-type: recorded "application/json", replayed "text/plain""#
        );
        b.remove("content-type");
        let (_, d) = c.compare(&answer(&a), &answer(&b));
        assert!(d.unwrap().ends_with("replayed absent"));
    }

    #[test]
    fn ignored_json_paths_are_left_out() {
        let c = comparator(&[], &["$.ts", "$.items[*].id", "$.meta.trace"]);
        let none = HeaderMap::new();
        let answer = |body| Answer {
            status: 200,
            headers: &none,
            body,
        };
        let a =
            br#"{"ts":1,"items":[{"id":1,"n":"x"},{"id":2,"n":"y"}],"meta":{"trace":"a","v":1}}"#;
        let b =
            br#"{"ts":2,"items":[{"id":9,"n":"x"},{"id":8,"n":"y"}],"meta":{"trace":"b","v":1}}"#;
        assert_eq!(c.compare(&answer(a), &answer(b)), (Outcome::Matched, None));
        let b =
            br#"{"ts":2,"items":[{"id":9,"n":"x"},{"id":8,"n":"z"}],"meta":{"trace":"b","v":1}}"#;
        let (_, d) = c.compare(&answer(a), &answer(b));
        assert_eq!(d.unwrap(), r#"$.items[1].n: recorded "y", replayed "z""#);
    }

    #[test]
    fn equal_bytes_match() {
        assert_eq!(
            compare_http(200, b"abc", 200, b"abc"),
            (Outcome::Matched, None)
        );
    }

    #[test]
    fn status_difference_is_reported_first() {
        let (o, d) = compare_http(200, b"a", 500, b"b");
        assert_eq!(o, Outcome::Mismatched);
        assert_eq!(d.unwrap(), "status: recorded 200, replayed 500");
    }

    #[test]
    fn json_key_order_is_ignored_and_diffs_have_paths() {
        let (o, _) = compare_http(200, br#"{"a":1,"b":[1,2]}"#, 200, br#"{"b":[1,2],"a":1}"#);
        assert_eq!(o, Outcome::Matched);
        let (o, d) = compare_http(200, br#"{"a":{"b":[1,2]}}"#, 200, br#"{"a":{"b":[1,3]}}"#);
        assert_eq!(o, Outcome::Mismatched);
        assert_eq!(d.unwrap(), "$.a.b[1]: recorded 2, replayed 3");
        let (_, d) = compare_http(200, br#"{"a":1}"#, 200, br#"{"a":1,"z":true}"#);
        assert_eq!(d.unwrap(), "$.z: recorded absent, replayed true");
    }

    #[test]
    fn bytes_diff_names_the_offset() {
        let (_, d) = compare_http(200, b"hello", 200, b"help!");
        assert_eq!(
            d.unwrap(),
            "body: differs at byte 3 (recorded 5 bytes, replayed 5 bytes)"
        );
        let (_, d) = compare_http(200, b"hel", 200, b"hello");
        assert!(d.unwrap().contains("at byte 3"));
    }

    #[test]
    fn long_diffs_are_cut() {
        let a = format!("{{\"k\":\"{}\"}}", "x".repeat(2000));
        let (_, d) = compare_http(200, a.as_bytes(), 200, b"{\"k\":1}");
        assert!(d.unwrap().chars().count() <= MAX_DIFF + 1);
    }
}
