//! JSON with `//` and `/* */` comments and trailing commas, reduced to plain JSON.
//!
//! Comments and trailing commas are blanked out byte for byte (newlines are
//! kept), so a position that `serde_json` reports in the result is the same
//! line and column in the file the operator wrote.

use std::fmt;

/// A comment that never ends: the one mistake this pass itself can find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnterminatedComment {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for UnterminatedComment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a /* comment that starts here is never closed with */")
    }
}

/// Returns `text` with comments and trailing commas replaced by spaces.
pub fn strip(text: &str) -> Result<String, UnterminatedComment> {
    let without_comments = strip_comments(text.as_bytes())?;
    let plain = strip_trailing_commas(without_comments);
    // Only ASCII bytes were replaced by ASCII spaces, and whole multi-byte
    // characters inside comments were blanked, so the result is still UTF-8.
    Ok(String::from_utf8(plain).expect("blanking whole characters keeps UTF-8"))
}

fn strip_comments(src: &[u8]) -> Result<Vec<u8>, UnterminatedComment> {
    let mut out = src.to_vec();
    let mut i = 0;
    let mut in_string = false;
    while i < src.len() {
        let b = src[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match (b, src.get(i + 1)) {
            (b'"', _) => {
                in_string = true;
                i += 1;
            }
            (b'/', Some(b'/')) => {
                while i < src.len() && src[i] != b'\n' {
                    if src[i] != b'\r' {
                        out[i] = b' ';
                    }
                    i += 1;
                }
            }
            (b'/', Some(b'*')) => {
                let start = i;
                out[i] = b' ';
                out[i + 1] = b' ';
                i += 2;
                loop {
                    if i >= src.len() {
                        let (line, column) = position(src, start);
                        return Err(UnterminatedComment { line, column });
                    }
                    if src[i] == b'*' && src.get(i + 1) == Some(&b'/') {
                        out[i] = b' ';
                        out[i + 1] = b' ';
                        i += 2;
                        break;
                    }
                    if src[i] != b'\n' && src[i] != b'\r' {
                        out[i] = b' ';
                    }
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(out)
}

/// Blanks every comma whose next non-blank byte closes an object or array.
fn strip_trailing_commas(mut src: Vec<u8>) -> Vec<u8> {
    let mut i = 0;
    let mut in_string = false;
    while i < src.len() {
        let b = src[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b',' {
            let next = src[i + 1..]
                .iter()
                .find(|c| !c.is_ascii_whitespace())
                .copied();
            if matches!(next, Some(b'}') | Some(b']')) {
                src[i] = b' ';
            }
        }
        i += 1;
    }
    src
}

/// 1-based line and column of `offset`; columns count characters, as an
/// editor does, not UTF-8 bytes.
pub fn position(src: &[u8], offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    (line, chars(&src[line_start..offset]) + 1)
}

/// Characters in UTF-8 bytes: every byte that does not continue one.
fn chars(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b & 0xc0 != 0x80).count()
}

/// Where the key at `path` (such as `["sync", "shards"]`) starts in plain
/// JSON, so a rule broken by its value can point at it; `None` when the key
/// is not in the text (a default).
pub fn key_offset(json: &str, path: &[&str]) -> Option<usize> {
    let src = json.as_bytes();
    let mut i = skip_blank(src, 0);
    for (depth, segment) in path.iter().enumerate() {
        if src.get(i) != Some(&b'{') {
            return None;
        }
        i += 1;
        loop {
            i = skip_blank(src, i);
            if src.get(i) != Some(&b'"') {
                return None;
            }
            let key_start = i;
            i = skip_string(src, i);
            let key = src.get(key_start + 1..i.checked_sub(1)?)?;
            i = skip_blank(src, i);
            if src.get(i) != Some(&b':') {
                return None;
            }
            i = skip_blank(src, i + 1);
            if key == segment.as_bytes() {
                if depth + 1 == path.len() {
                    return Some(key_start);
                }
                break;
            }
            i = skip_blank(src, skip_value(src, i));
            if src.get(i) != Some(&b',') {
                return None;
            }
            i += 1;
        }
    }
    None
}

/// The byte offset of `serde_json`'s 1-based `line` and byte `column`
/// (column 0: the start of the line).
pub fn offset_of(src: &[u8], line: usize, column: usize) -> usize {
    let line_start = match line.checked_sub(1) {
        Some(0) | None => 0,
        Some(n) => src
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .nth(n - 1)
            .map_or(src.len(), |(i, _)| i + 1),
    };
    (line_start + column.saturating_sub(1)).min(src.len())
}

/// Where the value that `serde_json` reports a data error about starts.
/// It reports a wrong type at the value's last byte, and an error of a
/// value's own `Deserialize` (a downstream without a scheme) only once it
/// has also read the blanks and the `}` or `]` after it: both lead back to
/// the string, number or literal. Before an object or array, its opening
/// bracket. `None` when `offset` is at none of these.
pub fn value_start(src: &[u8], offset: usize) -> Option<usize> {
    let mut end = offset.min(src.len().checked_sub(1)?);
    if src[end].is_ascii_whitespace() {
        let next = skip_blank(src, end);
        if matches!(src.get(next), Some(b'{' | b'[')) {
            return Some(next);
        }
    }
    if matches!(src[end], b'}' | b']') {
        end = end.checked_sub(1)?;
    }
    while src[end].is_ascii_whitespace() {
        end = end.checked_sub(1)?;
    }
    if src[end] == b'"' {
        return string_ending_at(src, end);
    }
    if is_scalar_byte(src[end]) {
        let start = src[..end]
            .iter()
            .rposition(|&b| !is_scalar_byte(b))
            .map_or(0, |i| i + 1);
        return Some(start);
    }
    None
}

/// A byte of a number or of `true`, `false`, `null`.
fn is_scalar_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-')
}

/// The start of the string literal whose closing quote is at `end`.
fn string_ending_at(src: &[u8], end: usize) -> Option<usize> {
    let mut i = 0;
    while i <= end {
        if src[i] == b'"' {
            let after = skip_string(src, i);
            if after == end + 1 {
                return Some(i);
            }
            i = after;
        } else {
            i += 1;
        }
    }
    None
}

/// The keys that lead to `offset` in plain JSON, joined by dots
/// (`http.port`); list positions are left out. Empty at the top level.
pub fn key_path_at(src: &[u8], offset: usize) -> String {
    // Each open object with the key whose value is being read.
    let mut frames: Vec<Option<String>> = Vec::new();
    let mut in_object: Vec<bool> = Vec::new();
    let mut expect_key = false;
    let mut i = 0;
    let offset = offset.min(src.len());
    while i < offset {
        match src[i] {
            b'"' => {
                let end = skip_string(src, i);
                if expect_key && in_object.last() == Some(&true) {
                    let key = src.get(i + 1..end.saturating_sub(1)).unwrap_or_default();
                    if let Some(frame) = frames.last_mut() {
                        *frame = Some(String::from_utf8_lossy(key).into_owned());
                    }
                    expect_key = false;
                } else if in_object.last() == Some(&true) && end <= offset {
                    // A string value read in full: its key is done.
                    if let Some(frame) = frames.last_mut() {
                        *frame = None;
                    }
                }
                i = end;
                continue;
            }
            b'{' => {
                frames.push(None);
                in_object.push(true);
                expect_key = true;
            }
            b'[' => {
                frames.push(None);
                in_object.push(false);
            }
            b'}' | b']' => {
                frames.pop();
                in_object.pop();
                if in_object.last() == Some(&true) {
                    if let Some(frame) = frames.last_mut() {
                        *frame = None;
                    }
                }
            }
            b',' => expect_key = in_object.last() == Some(&true),
            b if is_scalar_byte(b) => {
                let end = src[i..]
                    .iter()
                    .position(|&b| !is_scalar_byte(b))
                    .map_or(src.len(), |n| i + n);
                if end <= offset && in_object.last() == Some(&true) {
                    if let Some(frame) = frames.last_mut() {
                        *frame = None;
                    }
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    frames.into_iter().flatten().collect::<Vec<_>>().join(".")
}

fn skip_blank(src: &[u8], mut i: usize) -> usize {
    while src.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Past the string that opens at `i`.
fn skip_string(src: &[u8], mut i: usize) -> usize {
    i += 1;
    while let Some(&b) = src.get(i) {
        i += 1;
        match b {
            b'\\' => i += 1,
            b'"' => return i,
            _ => {}
        }
    }
    i
}

/// Past the value that starts at `i` (the text is valid JSON).
fn skip_value(src: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while let Some(&b) = src.get(i) {
        match b {
            b'"' => {
                i = skip_string(src, i);
                if depth == 0 {
                    return i;
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return i,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            b',' if depth == 0 => return i,
            b if depth == 0 && b.is_ascii_whitespace() => return i,
            _ => {}
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_comments_are_blanked_and_lines_kept() {
        let src = "{\n  \"a\": 1, // one\n  \"b\": 2 // two\n}";
        let out = strip(src).unwrap();
        assert_eq!(out.len(), src.len());
        assert_eq!(out.lines().count(), src.lines().count());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, serde_json::json!({"a": 1, "b": 2}));
    }

    #[test]
    fn block_comments_and_trailing_commas() {
        let src = "{/* x\n y */\"a\": [1, 2, ], \"b\": {\"c\": 3,},}";
        let v: serde_json::Value = serde_json::from_str(&strip(src).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"a": [1, 2], "b": {"c": 3}}));
    }

    #[test]
    fn comment_markers_inside_strings_are_data() {
        let src = r#"{"url": "http://x/*y*/", "q": "a,]", "e": "\"//"}"#;
        let v: serde_json::Value = serde_json::from_str(&strip(src).unwrap()).unwrap();
        assert_eq!(v["url"], "http://x/*y*/");
        assert_eq!(v["q"], "a,]");
        assert_eq!(v["e"], "\"//");
    }

    #[test]
    fn a_trailing_comma_followed_by_a_comment_is_removed() {
        let src = "{\"a\": 1, // last\n}";
        let v: serde_json::Value = serde_json::from_str(&strip(src).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"a": 1}));
    }

    #[test]
    fn multibyte_text_in_comments_stays_valid() {
        let src = "{\"mode\": \"Record\" // 节点模式\n}";
        let out = strip(src).unwrap();
        assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
    }

    #[test]
    fn unterminated_block_comment_reports_where_it_starts() {
        let err = strip("{\n  /* open\n\"a\": 1}").unwrap_err();
        assert_eq!(err, UnterminatedComment { line: 2, column: 3 });
    }

    #[test]
    fn a_missing_comma_is_still_an_error_at_its_line() {
        let src = "{\n\"a\": 1\n\"b\": 2\n}";
        let err = serde_json::from_str::<serde_json::Value>(&strip(src).unwrap()).unwrap_err();
        assert_eq!(err.line(), 3);
    }

    #[test]
    fn columns_count_characters() {
        let src = "{\n \u{201c}a\u{201d}: \"\u{6570}\", x}".as_bytes();
        let x = src.iter().position(|&b| b == b'x').unwrap();
        assert_eq!(position(src, x), (2, 12));
        assert_eq!(offset_of(src, 2, x - 2 + 1), x);
        assert_eq!(offset_of(src, 2, 0), 2);
    }

    #[test]
    fn keys_are_found_by_their_path() {
        let json = r#"{"a": {"x": "}", "y": [1, {"z": 2}]}, "sync": {"peer": {}, "shards": 0}}"#;
        let at = |path: &[&str]| key_offset(json, path).map(|i| &json[i..i + 8]);
        assert_eq!(at(&["sync", "shards"]), Some(r#""shards""#));
        assert_eq!(at(&["sync"]), Some(r#""sync": "#));
        assert_eq!(at(&["a", "y"]), Some(r#""y": [1,"#));
        assert_eq!(at(&["sync", "interval"]), None);
        assert_eq!(at(&["a", "x", "z"]), None);
        assert_eq!(at(&["z"]), None);
        for end in 0..json.len() {
            let _ = key_offset(&json[..end], &["sync", "shards"]);
        }
    }

    #[test]
    fn a_value_is_found_from_where_serde_json_stops() {
        let json =
            r#"{"http": {"port": "80", "downstream": "x:1" }, "list": ["$", "y"], "n": 700}"#;
        let src = json.as_bytes();
        let start = |needle: &str| json.find(needle).unwrap();
        // A wrong type: at the value's last byte.
        assert_eq!(value_start(src, start("80\"") + 2), Some(start("\"80")));
        assert_eq!(value_start(src, start("700") + 2), Some(start("700")));
        // A value's own error: past the blanks and the `}` or `]` after it.
        assert_eq!(value_start(src, start(" },") + 1), Some(start("\"x:1")));
        assert_eq!(value_start(src, start("]")), Some(start("\"y")));
        // Before an object: its bracket.
        assert_eq!(value_start(src, start(" {")), Some(start("{\"port")));
        assert_eq!(key_path_at(src, start("\"80")), "http.port");
        assert_eq!(key_path_at(src, start("\"x:1")), "http.downstream");
        assert_eq!(key_path_at(src, start(" },") + 1), "http");
        assert_eq!(key_path_at(src, start("\"y")), "list");
        assert_eq!(key_path_at(src, start("700")), "n");
        assert_eq!(key_path_at(src, 0), "");
        for end in 0..=json.len() {
            let _ = (value_start(src, end), key_path_at(src, end));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every prefix of a nasty document.
        let nasty = "{\"a\\\"/*\": [1,/*,*/],// \u{4e2d}\n\"b\":\"\\\\\",/* */}\r\n/";
        for end in 0..=nasty.len() {
            if nasty.is_char_boundary(end) {
                let _ = strip(&nasty[..end]);
            }
        }
    }
}
