//! Why a configuration could not be used, with the file, line and column.

use super::*;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A value that parses but breaks a rule; `at` is the line and column
    /// of its key, `None` when the key is not in the file (a default).
    #[error("{}: {key}: {message}", place(path, *at))]
    Invalid {
        path: PathBuf,
        at: Option<(usize, usize)>,
        key: &'static str,
        message: String,
    },
}

fn place(path: &Path, at: Option<(usize, usize)>) -> String {
    match at {
        Some((line, column)) => format!("{}:{line}:{column}", path.display()),
        None => path.display().to_string(),
    }
}

/// A `serde_json` error as the operator should read it: at the value it
/// is about (its first character), in plain words, with the keys that lead
/// to it. `text` is the file, `plain` the same without comments (same
/// byte offsets).
pub(super) fn serde_error(
    path: &Path,
    text: &str,
    plain: &str,
    err: &serde_json::Error,
) -> ConfigError {
    let src = plain.as_bytes();
    let offset = jsonc::offset_of(src, err.line(), err.column());
    let full = err.to_string();
    let message = match full.rfind(" at line ") {
        Some(i) => &full[..i],
        None => &full,
    };
    let (at, message) = match err.classify() {
        serde_json::error::Category::Data => {
            // A missing key is reported where its object closes.
            let at = match message.starts_with("missing field") {
                true => offset,
                false => jsonc::value_start(src, offset).unwrap_or(offset),
            };
            let key = jsonc::key_path_at(src, at);
            let message = in_words(message, &key);
            match key.is_empty() {
                true => (at, message),
                false => (at, format!("{key}: {message}")),
            }
        }
        _ => (offset, explain(err, message, plain, offset)),
    };
    // A byte inside a character is that character's column.
    let mut at = at.min(src.len());
    while at > 0 && src.get(at).is_some_and(|b| b & 0xc0 == 0x80) {
        at -= 1;
    }
    let (line, column) = jsonc::position(text.as_bytes(), at);
    ConfigError::Syntax {
        path: path.to_owned(),
        line,
        column,
        message,
    }
}

/// A syntax error's message, with a hint when the culprit is a bare word
/// such as `nill`, a letter in a number, or a missing comma.
fn explain(err: &serde_json::Error, message: &str, text: &str, offset: usize) -> String {
    if let Some(word) = bare_word_at(text, err.line(), err.column()) {
        return format!(
            "`{word}` is not a JSON value (use null, true, false, a number, \"a string\", {{…}} or […])"
        );
    }
    let eof = match message {
        "EOF while parsing an object" => Some("an object is not closed: a `}` is missing"),
        "EOF while parsing a list" => Some("a list is not closed: a `]` is missing"),
        "EOF while parsing a string" => Some("a string is not closed: a `\"` is missing"),
        "EOF while parsing a value" => Some("the file ends where a value should be"),
        _ => None,
    };
    if let Some(eof) = eof {
        return format!("{eof} before the end of the file");
    }
    let culprit = text.get(offset..).and_then(|rest| rest.chars().next());
    if message == "key must be a string" {
        if let Some(c) = culprit.filter(|c| !c.is_ascii()) {
            return format!(
                "a key goes in straight double quotes (\"mode\"), not `{c}` (pasted from a word processor?)"
            );
        }
    }
    let Some(close) = message
        .strip_prefix("expected `,` or `")
        .and_then(|rest| rest.strip_suffix('`'))
    else {
        return message.to_string();
    };
    let src = text.as_bytes();
    let before = offset.checked_sub(1).and_then(|i| src.get(i)).copied();
    match culprit {
        Some(c) if c.is_ascii_alphanumeric() && before.is_some_and(|b| b.is_ascii_digit()) => {
            format!("a number cannot contain `{c}` (expected a number, then `,` or `{close}`)")
        }
        Some(c) if !c.is_ascii() => {
            format!("{message}, not `{c}` (pasted from a word processor?)")
        }
        _ => {
            let line_start = src[..offset.min(src.len())]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            match src[line_start..offset.min(src.len())]
                .iter()
                .all(u8::is_ascii_whitespace)
            {
                true => format!("{message} (is a comma missing at the end of the previous line?)"),
                false => format!("{message} (is a comma missing before it?)"),
            }
        }
    }
}

/// `serde`'s message about a value in the words of the config's reader:
/// "expected u16" is "expected a port number 1–65535".
fn in_words(message: &str, key: &str) -> String {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    let mismatch = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|rest| rest.rsplit_once(", expected "));
    if let Some((found, expected)) = mismatch {
        return format!(
            "expected {}, not {}",
            expected_in_words(expected, leaf),
            found_in_words(found)
        );
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let names = backticked(rest);
        if let Some((given, accepted)) = names.split_first() {
            return format!(
                "`{given}` is not accepted: use {}",
                one_of(&distinct(accepted))
            );
        }
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let names = backticked(rest);
        if let Some((given, accepted)) = names.split_first() {
            return format!(
                "unknown key `{given}` (known here: {})",
                accepted.join(", ")
            );
        }
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        return format!("the key {rest} is required here");
    }
    message.to_string()
}

/// What a key takes, from `serde`'s name of the Rust type.
fn expected_in_words(expected: &str, leaf: &str) -> String {
    let words = match expected {
        "u16" if leaf.ends_with("port") => "a port number 1–65535",
        "u16" => "a whole number 0–65535",
        "u8" | "u32" | "u64" | "usize" => "a whole number",
        "a boolean" => "true or false",
        "a string" | "path string" => "a string",
        "a sequence" if leaf == "retry_statuses" => "a list of numbers such as [502, 503]",
        "a sequence" if leaf == "static_services" => "a list of objects",
        "a sequence" => "a list of strings such as [\"a\", \"b\"]",
        s if s.starts_with("struct ") => "an object {…}",
        other => other,
    };
    words.to_string()
}

/// The value found, from `serde`'s description of it.
fn found_in_words(found: &str) -> String {
    for prefix in ["integer ", "floating point ", "boolean "] {
        if let Some(value) = found.strip_prefix(prefix) {
            return value.trim_matches('`').to_string();
        }
    }
    match found {
        "map" => "an object".into(),
        "sequence" => "a list".into(),
        s if s.starts_with("string ") => format!("the {s}"),
        other => other.into(),
    }
}

/// The names in backticks, in order: "`a`, expected `b` or `c`" → a, b, c.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// Each name once, whatever its case, in the spelling that is neither all
/// capitals nor all small letters when there is one (`Record`, not `RECORD`).
fn distinct<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&'a str> = Vec::new();
    for &name in names {
        let mixed = |s: &str| s != s.to_uppercase() && s != s.to_lowercase();
        match out.iter_mut().find(|n| n.eq_ignore_ascii_case(name)) {
            Some(kept) if mixed(name) && !mixed(kept) => *kept = name,
            Some(_) => {}
            None => out.push(name),
        }
    }
    out
}

/// "`a`", "`a` or `b`", "`a`, `b` or `c`".
fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// The bare word around `serde_json`'s byte `column`, which may fall inside
/// a multi-byte character.
fn bare_word_at(text: &str, line: usize, column: usize) -> Option<&str> {
    let line_text = text.lines().nth(line.checked_sub(1)?)?;
    let mut end = column.min(line_text.len());
    while !line_text.is_char_boundary(end) {
        end -= 1;
    }
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let start = line_text[..end].trim_end_matches(is_word).len();
    let rest = &line_text[start..];
    let word = &rest[..rest.find(|c: char| !is_word(c)).unwrap_or(rest.len())];
    if line_text[..start].ends_with('"') {
        return None;
    }
    let is_literal = matches!(word, "null" | "true" | "false");
    (!word.is_empty() && word.chars().next()?.is_ascii_alphabetic() && !is_literal).then_some(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_words_become_the_operators() {
        for (message, key, said) in [
            (
                "invalid type: string \"80\", expected u16",
                "api.port",
                "expected a port number 1–65535, not the string \"80\"",
            ),
            (
                "invalid value: integer `-1`, expected u32",
                "sync.shards",
                "expected a whole number, not -1",
            ),
            (
                "invalid type: floating point `1.5`, expected u64",
                "sync.interval",
                "expected a whole number, not 1.5",
            ),
            (
                "invalid type: map, expected a sequence",
                "playback.retry_statuses",
                "expected a list of numbers such as [502, 503], not an object",
            ),
            (
                "invalid type: null, expected struct PeerConfig",
                "sync.peer",
                "expected an object {…}, not null",
            ),
            (
                "unknown variant `Recrd`, expected one of `RECORD`, `Record`, `record`, `playback`, `Playback`",
                "mode",
                "`Recrd` is not accepted: use `Record` or `Playback`",
            ),
            (
                "unknown variant `slow`, expected `fast` or `recorded`",
                "playback.tcp_pacing",
                "`slow` is not accepted: use `fast` or `recorded`",
            ),
            (
                "missing field `port`",
                "http",
                "the key `port` is required here",
            ),
            ("something else", "x", "something else"),
        ] {
            assert_eq!(in_words(message, key), said, "{message}");
        }
    }
}
