//! The crate's folders form one order (README, "Architecture"): a module
//! imports only its own layer or layers below it, and no two files of a
//! folder import each other. `cargo test layers_test` checks it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Lowest first.
const LAYERS: &[&[&str]] = &[
    &["clock", "metrics", "mqtt_client", "os", "system"],
    &["config"],
    &["tls"],
    &["model"],
    &["store"],
    &["record"],
    &["downstream"],
    &["proxy", "sync", "server"],
    &["playback"],
    &["broker", "api"],
    &["node"],
    &["demo"],
];

/// Allowed by the order, but not wanted: the listeners are not where the
/// outbound side lives (`downstream` is).
const APART: &[(&str, &str)] = &[("playback", "proxy"), ("sync", "proxy"), ("api", "proxy")];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Lines of code outside comments and `#[cfg(test)]` modules.
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut test_depth: Option<i64> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(depth) = test_depth.as_mut() {
            *depth += line.matches('{').count() as i64 - line.matches('}').count() as i64;
            if *depth <= 0 && line.contains('}') {
                test_depth = None;
            }
            continue;
        }
        if trimmed.starts_with("#[cfg(test)]") || trimmed.starts_with("#[cfg(all(test") {
            test_depth = Some(0);
            continue;
        }
        if !trimmed.starts_with("//") {
            out.push((n + 1, line));
        }
    }
    out
}

/// The modules a line names as `crate::<module>`.
fn crate_paths(line: &str) -> Vec<&str> {
    line.match_indices("crate::")
        .map(|(i, _)| {
            let rest = &line[i + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[test]
fn layers_test_no_module_imports_one_above_it_and_no_files_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    let mut edges: HashMap<PathBuf, HashSet<PathBuf>> = HashMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let module = first.trim_end_matches(".rs");
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let Some(own) = rank(module) else {
            problems.push(format!(
                "src/{}: module `{module}` has no layer in layers_test",
                rel.display()
            ));
            continue;
        };
        for (n, line) in code_lines(&text) {
            for target in crate_paths(line) {
                if target == module {
                    continue;
                }
                if APART.contains(&(module, target)) {
                    problems.push(format!(
                        "src/{}:{n}: `{module}` imports the listeners' `{target}`: {}",
                        rel.display(),
                        line.trim()
                    ));
                }
                if rank(target).is_some_and(|r| r > own) {
                    problems.push(format!(
                        "src/{}:{n}: `{module}` imports `{target}`, a layer above it: {}",
                        rel.display(),
                        line.trim()
                    ));
                }
            }
            // Siblings in the same folder, for circles.
            if let Some(names) = line.trim().strip_prefix("use super::") {
                let names = names.trim_start_matches('{');
                for name in names.split([',', ':', '}', ';']) {
                    let sibling = file.with_file_name(format!("{}.rs", name.trim()));
                    if !name.trim().is_empty() && sibling != *file && sibling.exists() {
                        edges.entry(file.clone()).or_default().insert(sibling);
                    }
                }
            }
        }
    }
    for (a, targets) in &edges {
        for b in targets {
            if a < b && edges.get(b).is_some_and(|t| t.contains(a)) {
                problems.push(format!(
                    "{} and {} import each other",
                    a.display(),
                    b.display()
                ));
            }
        }
    }
    problems.sort();
    assert!(
        problems.is_empty(),
        "layering problems:\n{}",
        problems.join("\n")
    );
}
