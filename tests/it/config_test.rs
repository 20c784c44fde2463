//! The configuration files and the command line, as an operator meets them.

use std::path::Path;
use std::process::Command;

use qproxy::config::{Config, Mode};

fn qproxy(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qproxy"))
        .args(args)
        .env_remove("CONFIG_PATH")
        .output()
        .expect("qproxy runs")
}

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The first ```json block after `heading` in the original README (a copy
/// of which is kept in tests/data).
fn original_example(heading: &str) -> String {
    let seed = std::fs::read_to_string(repo("tests/data/original-readme.txt"))
        .expect("the original README");
    let start = seed.find(heading).expect("heading");
    let block = &seed[start..];
    let open = block.find("```json\n").expect("json block") + 8;
    let close = block[open..].find("```").expect("block end");
    block[open..open + close].to_string()
}

#[test]
fn the_shipped_configs_load() {
    for (file, mode) in [
        ("config/record.json", Mode::Record),
        ("config/playback.json", Mode::Playback),
        ("config/example-record.json", Mode::Record),
        ("config/example-playback.json", Mode::Playback),
    ] {
        let config = Config::load(Path::new(&repo(file))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.mode, mode, "{file}");
    }
    let playback = Config::load(Path::new(&repo("config/playback.json"))).unwrap();
    let record = Config::load(Path::new(&repo("config/record.json"))).unwrap();
    let peer = playback.sync.peer.unwrap();
    assert_eq!(
        (peer.host.as_str(), peer.port),
        (record.api.host.as_str(), record.api.port),
        "playback pulls from record's api"
    );
    assert_eq!(playback.sync.shards, record.sync.shards);
    assert_ne!(
        playback.data_dir, record.data_dir,
        "two nodes on one machine need two data dirs"
    );
}

#[test]
fn the_original_examples_differ_from_the_shipped_ones_only_by_the_two_typos() {
    let record = original_example("Record 节点配置示例");
    let playback = original_example("Playback 节点配置示例");
    let shipped_record = std::fs::read_to_string(repo("config/example-record.json")).unwrap();
    let shipped_playback = std::fs::read_to_string(repo("config/example-playback.json")).unwrap();
    assert_eq!(
        record.replace("\"tcp\": nill,", "\"tcp\": null,"),
        shipped_record
    );
    assert_eq!(
        playback.replace("\"shards\": 1\n", "\"shards\": 1,\n"),
        shipped_playback
    );
}

#[test]
fn the_original_record_example_fails_at_nill_with_line_and_column() {
    let text = original_example("Record 节点配置示例");
    let err = Config::parse(&text, Path::new("config.json"))
        .unwrap_err()
        .to_string();
    let line = text.lines().position(|l| l.contains("nill")).unwrap() + 1;
    assert!(err.starts_with(&format!("config.json:{line}:")), "{err}");
    assert!(err.contains("`nill` is not a JSON value"), "{err}");

    let text = original_example("Playback 节点配置示例");
    let err = Config::parse(&text, Path::new("config.json"))
        .unwrap_err()
        .to_string();
    let line = text
        .lines()
        .position(|l| l.contains("\"peer\": {"))
        .unwrap()
        + 1;
    assert!(
        err.starts_with(&format!("config.json:{line}:")),
        "the missing comma is found where the next key starts: {err}"
    );
}

#[test]
fn a_bad_config_stops_start_up_with_file_line_column_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::free_port();
    let path = dir.path().join("bad.json");
    let text = format!(
        "{{\n  \"mode\": \"Record\",\n  \"http\": {{\"port\": {port}, \"downstream\": \"http://127.0.0.1:1\"}},\n  \"sync\": {{\"shards\": \"many\"}}\n}}\n"
    );
    std::fs::write(&path, text).unwrap();
    let out = qproxy(&["-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:4:", path.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("sync.shards: expected a whole number, not the string \"many\""),
        "{stderr}"
    );
    // Nothing was bound: the port is still free.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port was never bound");

    let out = qproxy(&["-c", dir.path().join("missing.json").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn config_path_comes_from_the_environment_and_check_config_exits() {
    let out = Command::new(env!("CARGO_BIN_EXE_qproxy"))
        .arg("-t")
        .env("CONFIG_PATH", repo("config/playback.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("playback.json: ok (Playback node, 4 shard(s), store: embedded)"),
        "{stdout}"
    );
}

#[test]
fn help_and_version() {
    let out = qproxy(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "-c, --config",
        "-l, --log-level",
        "-v, --verbose",
        "-h, --help",
        "-V, --version",
        "CONFIG_PATH",
    ] {
        assert!(help.contains(flag), "{flag} in\n{help}");
    }
    // What it says is true: two stores, sync over HTTP or MQTT, what -t
    // and -t -v print, the levels and where a level comes from.
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for claim in [
        "an HTTP, gRPC and TCP proxy that records into Redis Streams or an embedded store, synced over HTTP or MQTT",
        "error, warn, info, debug, trace or off",
        "[default: info, debug with -v; when not given: RUST_LOG, then logging.level]",
        "with -t, also the whole effective configuration as JSON, passwords and tokens redacted",
        "Check the configuration, print what it runs (listeners, downstreams, store, MQTT broker) and exit: 0 when it is valid, 2 when not",
        "runs until Ctrl-C",
    ] {
        assert!(help.contains(claim), "{claim:?} in\n{help}");
    }
    let out = qproxy(&["demo", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        help.contains("a taken one is replaced by a free one anyway"),
        "{help}"
    );
    let out = qproxy(&["-V"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("qproxy {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Smart quotes pasted from a chat or a document used to crash the command
/// (exit 101); a byte order mark from a Windows editor is simply accepted.
#[test]
fn multibyte_mistakes_exit_2_with_line_and_column_and_a_bom_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quotes.json");
    std::fs::write(&path, "{\n  \u{201c}mode\u{201d}: \"Record\"\n}\n").unwrap();
    let out = qproxy(&["-t", "-c", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:2:3: a key goes in straight double quotes (\"mode\"), not `\u{201c}` (pasted from a word processor?)",
            path.display()
        )),
        "{stderr}"
    );

    let path = dir.path().join("bom.json");
    let config = std::fs::read_to_string(repo("config/record.json")).unwrap();
    std::fs::write(&path, format!("\u{feff}{config}")).unwrap();
    let out = qproxy(&["-t", "-c", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_value_out_of_range_is_reported_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shards.json");
    std::fs::write(
        &path,
        "{\n  \"mode\": \"Record\",\n  \"sync\": {\n    \"shards\": 0\n  }\n}\n",
    )
    .unwrap();
    let out = qproxy(&["-t", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:4:5: sync.shards: must be 1 to 1024, not 0",
            path.display()
        )),
        "{stderr}"
    );
}

/// Port 0 would make the system pick a port no client knows; a zero
/// replay timeout would fail every replay. Both stop the command.
#[test]
fn a_random_port_or_a_zero_timeout_stops_the_command() {
    let dir = tempfile::tempdir().unwrap();
    for (text, says) in [
        (
            "{\"mode\": \"Record\",\n  \"api\": {\"port\": 0}}",
            ":2:11: api.port: 0 lets the system pick a random port",
        ),
        (
            "{\"mode\": \"Playback\",\n  \"playback\": {\"timeout_ms\": 0}}",
            ":2:16: playback.timeout_ms: must be 1 to 3600000 ms (an hour), not 0",
        ),
    ] {
        let path = dir.path().join("c.json");
        std::fs::write(&path, text).unwrap();
        let out = qproxy(&["-t", "-c", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("{}{says}", path.display())),
            "{stderr}"
        );
    }
}

/// A mistyped log level stops the node (exit 2) and says what works,
/// instead of starting a node that logs nothing at all.
#[test]
fn config_test_a_bad_log_level_is_an_error_naming_the_accepted_ones() {
    for level in ["warning", "verbose", "inf", ""] {
        let out = qproxy(&["-t", "-c", &repo("config/record.json"), "-l", level]);
        assert_eq!(out.status.code(), Some(2), "-l {level:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains(&format!(
                "log level `{level}` (from -l/--log-level) is not valid"
            )) && said.contains("error, warn, info, debug, trace"),
            "{said}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_qproxy"))
        .args(["-t", "-c", &repo("config/record.json")])
        .env("RUST_LOG", "bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(from RUST_LOG)"));
    for level in ["info", "WARN", "info,qproxy=debug", "off"] {
        let out = qproxy(&["-t", "-c", &repo("config/record.json"), "-l", level]);
        assert!(
            out.status.success(),
            "-l {level}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The five mistakes of issue 14's first hour, each with its exact line:
/// the position of the culprit and words an operator uses, not serde's.
#[test]
fn config_test_mistakes_are_named_at_their_value_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    let http = |port: &str, downstream: &str| {
        format!(
            "{{\n  \"mode\": \"Record\",\n  \"http\": {{\n    \"port\": {port},\n    \"downstream\": \"{downstream}\"\n  }}\n}}\n"
        )
    };
    for (name, text, says) in [
        (
            "letter-in-port",
            http("80a80", "http://127.0.0.1:9000"),
            "4:15: a number cannot contain `a` (expected a number, then `,` or `}`)",
        ),
        (
            "no-scheme",
            http("8080", "localhost:9000"),
            "5:19: http.downstream: `localhost:9000` needs an http:// or https:// scheme, e.g. http://localhost:9000",
        ),
        (
            "port-as-string",
            http("\"8080\"", "http://127.0.0.1:9000"),
            "4:13: http.port: expected a port number 1–65535, not the string \"8080\"",
        ),
        (
            "port-too-big",
            http("70000", "http://127.0.0.1:9000"),
            "4:13: http.port: expected a port number 1–65535, not 70000",
        ),
        (
            "shards-as-string",
            "{\"mode\": \"Record\",\n \"sync\": {\"shards\": \"4\", \"enabled\": false}}".into(),
            "2:21: sync.shards: expected a whole number, not the string \"4\"",
        ),
        (
            "enabled-as-number",
            "{\"mode\": \"Record\",\n \"sync\": {\"enabled\": 1}}".into(),
            "2:22: sync.enabled: expected true or false, not 1",
        ),
        (
            "token-as-number",
            "{\"mode\": \"Record\",\n \"api\": {\"auth_token\": 5}}".into(),
            "2:24: api.auth_token: expected a string, not 5",
        ),
        (
            "headers-as-string",
            "{\"mode\": \"Record\",\n \"record\": {\"redact_headers\": \"cookie\"}}".into(),
            "2:31: record.redact_headers: expected a list of strings such as [\"a\", \"b\"], not the string \"cookie\"",
        ),
        (
            "mode-mistyped",
            "{\n  \"mode\": \"Recrd\"\n}\n".into(),
            "2:11: mode: `Recrd` is not accepted: use `Record` or `Playback`",
        ),
        (
            "mode-as-number",
            "{\n  \"mode\": 1\n}\n".into(),
            "2:11: mode: expected `Record` or `Playback`, not 1",
        ),
        (
            "empty",
            String::new(),
            "1:1: the file is empty: it needs a JSON object such as {\"mode\": \"Record\", …} (config/ holds two to start from)",
        ),
        (
            "blank",
            "  \n\n".into(),
            "1:1: the file is empty: it needs a JSON object such as {\"mode\": \"Record\", …} (config/ holds two to start from)",
        ),
    ] {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, &text).unwrap();
        let out = qproxy(&["-t", "-c", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert_eq!(
            stderr,
            format!("qproxy: configuration error: {}:{says}\n", path.display()),
            "{name}"
        );
    }
}

const FULL_PLAYBACK: &str = r#"{"mode": "Playback",
  "http": {"host": "127.0.0.1", "port": 9080, "downstream": "http://127.0.0.1:9081"},
  "tcp": {"host": "127.0.0.1", "port": 9090, "downstream": "127.0.0.1:9091"},
  "api": {"host": "127.0.0.1", "port": 9084, "auth_token": "api-token-0123456789"},
  "sync": {"enabled": true, "peer_id": "zone-b",
           "peer": {"host": "10.0.0.1", "port": 8084, "auth_token": "peer-token-0123456789"}},
  "redis": {"url": "redis://qproxy:redis-pass@10.0.0.2:6379/0"},
  "mqtt": {"host": "10.0.0.3", "port": 1883, "app_id": "qproxy", "token": "mqtt-token"}}"#;

const SECRETS: [&str; 4] = [
    "api-token-0123456789",
    "peer-token-0123456789",
    "redis-pass",
    "mqtt-token",
];

/// `-t` names what the node would run: mode, each listener with its
/// downstream, the store and the broker (and a Playback node's peer), and
/// no secret.
#[test]
fn config_test_check_names_listeners_downstreams_store_and_broker() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.json");
    std::fs::write(&path, FULL_PLAYBACK).unwrap();
    let out = qproxy(&["-t", "-c", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        format!(
            "{}: ok (Playback node, 1 shard(s), store: redis)
  mode   Playback
  http   127.0.0.1:9080 -> http://127.0.0.1:9081
  tcp    127.0.0.1:9090 -> 127.0.0.1:9091
  api    127.0.0.1:9084
  store  redis redis://qproxy:[redacted]@10.0.0.2:6379/0
  mqtt   10.0.0.3:1883
  peer   10.0.0.1:8084 as zone-b
",
            path.display()
        )
    );
}

/// `-t -v` adds the whole effective configuration (defaults filled in)
/// as JSON, passwords and tokens redacted.
#[test]
fn config_test_check_verbose_prints_the_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.json");
    std::fs::write(&path, FULL_PLAYBACK).unwrap();
    let short = qproxy(&["-t", "-c", path.to_str().unwrap()]);
    let out = qproxy(&["-t", "-v", "-c", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = String::from_utf8_lossy(&short.stdout);
    let json = stdout
        .strip_prefix(summary.as_ref())
        .and_then(|rest| {
            rest.strip_prefix("effective configuration (passwords and tokens redacted):\n")
        })
        .unwrap_or_else(|| panic!("-t's lines, then the JSON:\n{stdout}"));
    let config: serde_json::Value = serde_json::from_str(json).expect(json);
    assert_eq!(config["api"]["auth_token"], "[redacted]");
    assert_eq!(config["sync"]["peer"]["auth_token"], "[redacted]");
    assert_eq!(config["mqtt"]["token"], "[redacted]");
    assert_eq!(
        config["redis"]["url"],
        "redis://qproxy:[redacted]@10.0.0.2:6379/0"
    );
    // Defaults are filled in; names are the config's own.
    assert_eq!(config["mode"], "Playback");
    assert_eq!(config["http"]["downstream"], "http://127.0.0.1:9081");
    assert_eq!(config["http"]["max_connections"], 20000);
    assert_eq!(config["sync"]["interval"], 1000);
    assert_eq!(config["record"]["spool"], "disk");
    assert_eq!(config["data_dir"], "./data");
    for secret in SECRETS {
        assert!(!stdout.contains(secret), "{secret} in\n{stdout}");
    }
}

/// The README shows what `qproxy -t` prints for config/record.json.
#[test]
fn config_test_the_readme_shows_real_check_output() {
    let out = Command::new(env!("CARGO_BIN_EXE_qproxy"))
        .args(["-t", "-c", "config/record.json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    assert!(
        readme.contains(&format!("```\n{stdout}```\n")),
        "README shows:\n{stdout}"
    );
}
