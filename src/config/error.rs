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

/// `serde_json`'s message without its position suffix, plus a hint when the
/// culprit is a bare word such as `nill`.
pub(super) fn explain(err: &serde_json::Error, text: &str) -> String {
    let full = err.to_string();
    let message = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    };
    if let Some(word) = bare_word_at(text, err.line(), err.column()) {
        return format!(
            "`{word}` is not a JSON value (use null, true, false, a number, \"a string\", {{…}} or […])"
        );
    }
    if message.starts_with("expected `,` or `}`") || message.starts_with("expected `,` or `]`") {
        return format!("{message} (is a comma missing at the end of the previous line?)");
    }
    message
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
