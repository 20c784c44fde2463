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

/// The character column of `serde_json`'s 1-based byte column on `line`:
/// the column of the character that holds that byte.
pub fn char_column(src: &[u8], line: usize, byte_column: usize) -> usize {
    let Some(target) = byte_column.checked_sub(1) else {
        return 0;
    };
    let line_start = match line.checked_sub(1) {
        Some(0) | None => 0,
        Some(n) => match src
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .nth(n - 1)
        {
            Some((i, _)) => i + 1,
            None => return byte_column,
        },
    };
    let end = line_start.saturating_add(target).saturating_add(1);
    let within = end.min(src.len());
    chars(&src[line_start.min(within)..within]) + (end - within)
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
        let line_start = 2;
        assert_eq!(char_column(src, 2, x - line_start + 1), 12);
        // A byte inside a character is that character's column.
        assert_eq!(char_column(src, 2, 3), 2);
        assert_eq!(char_column(src, 2, 2), 2);
        assert_eq!(char_column(src, 1, 0), 0);
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
