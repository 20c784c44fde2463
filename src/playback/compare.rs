//! Comparing a replayed answer with the recorded one.
//!
//! Status first, then bodies: when both bodies are JSON they are compared
//! as values (key order ignored), otherwise byte for byte. A mismatch
//! comes with a short diff a person can read.

use serde_json::Value;

use super::Outcome;

/// The longest diff kept per result.
const MAX_DIFF: usize = 400;

pub fn compare_http(
    recorded_status: u16,
    recorded_body: &[u8],
    replayed_status: u16,
    replayed_body: &[u8],
) -> (Outcome, Option<String>) {
    if recorded_status != replayed_status {
        return (
            Outcome::Mismatched,
            Some(format!(
                "status: recorded {recorded_status}, replayed {replayed_status}"
            )),
        );
    }
    match body_diff(recorded_body, replayed_body) {
        None => (Outcome::Matched, None),
        Some(diff) => (Outcome::Mismatched, Some(truncate(diff))),
    }
}

fn body_diff(recorded: &[u8], replayed: &[u8]) -> Option<String> {
    if recorded == replayed {
        return None;
    }
    if let (Ok(a), Ok(b)) = (
        serde_json::from_slice::<Value>(recorded),
        serde_json::from_slice::<Value>(replayed),
    ) {
        return json_diff("$", &a, &b);
    }
    compare_bytes("body", recorded, replayed)
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
