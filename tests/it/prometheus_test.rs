//! A real Prometheus (Debian's `prometheus` and `promtool`) against a
//! Record and a Playback node: every metric of the README's table and of
//! the product's first README is scraped with its labels, the shipped alert
//! rules load, evaluate and pass their unit tests, and the Grafana
//! dashboard's queries name metrics that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::pki::Pki;
use crate::support::{
    self, eventually, free_port, get_json, get_text, FakeDownstream, ServerProcess, StoreChoice,
};

/// The metric names of the product's first README. It also names six
/// `grpc_*` metrics, which come with the gRPC proxy.
const SEED_README_METRICS: &[&str] = &[
    "http_requests_total",
    "http_request_duration_seconds",
    "http_active_connections",
    "http_request_size_bytes",
    "http_response_size_bytes",
    "http_errors_total",
    "grpc_requests_total",
    "grpc_request_duration_seconds",
    "grpc_active_connections",
    "grpc_request_size_bytes",
    "grpc_response_size_bytes",
    "grpc_errors_total",
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A row of the README's metrics table.
#[derive(Debug)]
struct Documented {
    name: String,
    kind: String,
    labels: BTreeSet<String>,
}

/// The rows of the table under `## Metrics`.
fn readme_metrics() -> Vec<Documented> {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README has a Metrics section");
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            Documented {
                name: ticked(cells[1]).remove(0),
                kind: cells[2].to_string(),
                labels: ticked(cells[3]).into_iter().collect(),
            }
        })
        .collect()
}

/// The metric names a PromQL expression reads (not its functions,
/// keywords, label names or numbers).
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Strings, label matchers and ranges hold no metric names.
    let mut plain = String::new();
    let mut closer: Option<char> = None;
    for c in expr.chars() {
        match closer {
            Some(end) if c == end => closer = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => closer = Some(c),
                '{' => closer = Some('}'),
                '[' => closer = Some(']'),
                _ => plain.push(c),
            },
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_list = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            if c == ')' {
                skip_list = false;
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len()
            && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let rest: String = chars[i..].iter().collect();
        let rest = rest.trim_start();
        // A function or aggregation: `f(`, or `sum by (…) (` / `sum without`.
        let call = rest.starts_with('(')
            || rest.starts_with("by ")
            || rest.starts_with("by(")
            || rest.starts_with("without");
        if [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ]
        .contains(&word.as_str())
        {
            skip_list = true;
        } else if !skip_list && !call && !KEYWORDS.contains(&word.as_str()) {
            names.insert(word);
        }
    }
    names
}

#[test]
fn prometheus_test_promql_names_are_found() {
    let names = promql_metric_names(
        r#"histogram_quantile(0.99, sum by (instance, le) (rate(http_request_duration_seconds_bucket{instance=~"$instance", a="b(c)"}[5m]))) / clamp_min(sum(rate(x_total[1m])) > 0, 1e-9) and on (job) up"#,
    );
    let expected: BTreeSet<String> = ["http_request_duration_seconds_bucket", "x_total", "up"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, expected);
}

async fn promtool(args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("promtool")
            .args(&args)
            .current_dir(repo("config/monitoring"))
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run promtool ({e}); install prometheus — .ci/run does")
            })
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn prometheus_test_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let (ok, out) = promtool(&["check", "rules", "qproxy-alerts.yml"]).await;
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = promtool(&["test", "rules", "qproxy-alerts.test.yml"]).await;
    assert!(ok, "promtool test rules:\n{out}");
    // The tests cover at least the replay success and sync lag alerts.
    let tests = std::fs::read_to_string(repo("config/monitoring/qproxy-alerts.test.yml")).unwrap();
    for alert in ["QProxyReplaySuccessLow", "QProxySyncLag"] {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has a unit test"
        );
    }
}

/// A Prometheus server on a free port with its own storage; killed on drop.
struct Prometheus {
    url: String,
    _process: ServerProcess,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `targets` (job name → API address) every second and
    /// evaluates the shipped alert rules every second.
    async fn start(targets: &[(&str, SocketAddr)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n",
            repo("config/monitoring/qproxy-alerts.yml").display()
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut process = ServerProcess::new(vec![
            "prometheus".into(),
            format!("--config.file={}", config_path.display()).into(),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()).into(),
            format!("--web.listen-address=127.0.0.1:{port}").into(),
            "--log.level=warn".into(),
        ]);
        process.spawn("install prometheus");
        let url = format!("http://127.0.0.1:{port}");
        eventually("Prometheus ready", Duration::from_secs(30), || async {
            let ready = support::client()
                .get(format!("{url}/-/ready").parse().unwrap())
                .await
                .ok()?;
            ready.status().is_success().then_some(())
        })
        .await;
        Prometheus {
            url,
            _process: process,
            _dir: dir,
        }
    }

    /// The `data` of an API call, which must succeed.
    async fn api(&self, path_and_query: &str) -> Value {
        let (status, body) = get_json(&format!("{}{path_and_query}", self.url)).await;
        assert!(
            status.is_success() && body["status"] == "success",
            "{path_and_query}: {status} {body}"
        );
        body["data"].clone()
    }

    async fn query(&self, promql: &str) -> Value {
        self.api(&format!("/api/v1/query?query={}", encode(promql)))
            .await
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A TCP server that sends back what it reads.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Sends raw bytes and reads until the peer closes or 2 s pass.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut out)).await;
    out
}

/// Whether this machine has a whole disk `/proc/diskstats` counts (a
/// container may show none).
fn has_disks() -> bool {
    std::fs::read_to_string("/proc/diskstats")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .any(|name| {
            !["loop", "ram", "zram", "fd"]
                .iter()
                .any(|p| name.starts_with(p))
                && Path::new("/sys/block").join(name).exists()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_test_scrapes_every_documented_metric_and_the_rules_and_dashboard_use_them() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let zone_a = FakeDownstream::start().await;
    let zone_b = FakeDownstream::start().await;
    let (echo_a, echo_b) = (echo_server().await, echo_server().await);

    let mut record = support::record_config(
        &zone_a.url(),
        1,
        &StoreChoice::Embedded(dir.path().join("a")),
    );
    record["tcp"] = json!({"port": 0, "downstream": echo_a.to_string()});
    record["mqtt"] = json!({"embedded_broker": {"enabled": true, "port": 0}});
    let grpc_a = crate::support::GrpcServer::start("zone-a").await;
    let grpc_b = crate::support::GrpcServer::start("zone-b").await;
    record["grpc"] = json!({"port": 0, "downstream": [grpc_a.addr().to_string()]});
    let record = support::start_node(record).await;
    let mut playback = support::playback_config(
        &zone_b.url(),
        1,
        record.api_addr,
        &StoreChoice::Embedded(dir.path().join("b")),
    );
    playback["mqtt"] = json!({"port": record.broker_addr.unwrap().port()});
    // A TLS listener, to have a handshake to refuse.
    playback["tcp"] = json!({"port": 0, "downstream": echo_b.to_string(), "tls": true});
    playback["tls"] =
        json!({"tls_cert": pki.file("server.pem"), "tls_key": pki.file("server.key")});
    playback["grpc"] =
        json!({"enabled": false, "port": 0, "downstream": [grpc_b.addr().to_string()]});
    playback["service_discovery"] = json!({"provider": "static", "config": {"static_services": [
        {"name": "orders", "endpoints": [zone_b.url()]}]}});
    let playback = support::start_node(playback).await;

    // Traffic of every kind: HTTP, a request refused, a TCP session, a
    // TLS handshake refused, a gRPC call.
    let proxy = record.http_addr.unwrap();
    for i in 0..5 {
        let (status, _) = get_json(&format!("http://{proxy}/p/{i}")).await;
        assert!(status.is_success());
    }
    let refused = exchange(proxy, b"GET /no-host HTTP/1.1\r\n\r\n").await;
    assert!(refused.starts_with(b"HTTP/1.1 400"), "{refused:?}");
    let echoed = exchange(record.tcp_addr.unwrap(), b"hello").await;
    assert_eq!(echoed, b"hello");
    exchange(playback.tcp_addr.unwrap(), b"not a TLS hello\r\n").await;
    let mut grpc = crate::support::GrpcClient::connect(record.grpc_addr.unwrap()).await;
    assert_eq!(grpc.unary("/test.Echo/Unary", b"hi").await.code, 0);
    let url = format!("http://{}/api/status", playback.api_addr);
    eventually("7 records replayed", Duration::from_secs(20), || async {
        let (_, status) = get_json(&url).await;
        let p = &status["playback"];
        let n = ["matched", "mismatched", "failed", "skipped"]
            .iter()
            .map(|k| p[k].as_u64().unwrap_or(0))
            .sum::<u64>();
        (n >= 7).then_some(())
    })
    .await;

    // promtool's linter agrees with the page.
    let page = get_text(&format!("http://{}/metrics", record.api_addr)).await;
    let page_file = dir.path().join("metrics.txt");
    std::fs::write(&page_file, &page).unwrap();
    let check = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", page_file.display()))
        .output()
        .expect("sh runs");
    assert!(
        check.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let prometheus = Prometheus::start(&[
        ("qproxy-record", record.api_addr),
        ("qproxy-playback", playback.api_addr),
    ])
    .await;
    eventually(
        "two scrapes of each node, both up",
        Duration::from_secs(30),
        || async {
            let counts = prometheus
                .query("count_over_time(up{job=~\"qproxy-.+\"}[1m]) >= 2 and up == 1")
                .await;
            (counts["result"].as_array()?.len() == 2).then_some(())
        },
    )
    .await;

    // Every series scraped: name → the label sets it has (without job and
    // instance).
    let series = prometheus
        .api(&format!(
            "/api/v1/series?match[]={}",
            encode("{job=~\"qproxy-.+\"}")
        ))
        .await;
    let mut scraped: BTreeMap<String, BTreeSet<BTreeSet<String>>> = BTreeMap::new();
    for s in series.as_array().unwrap() {
        let labels = s.as_object().unwrap();
        let name = labels["__name__"].as_str().unwrap().to_string();
        let names = labels
            .keys()
            .filter(|k| !["__name__", "job", "instance"].contains(&k.as_str()))
            .cloned()
            .collect();
        scraped.entry(name).or_default().insert(names);
    }
    let has = |name: &str, labels: &BTreeSet<String>| {
        scraped.get(name).is_some_and(|sets| sets.contains(labels))
    };

    let documented = readme_metrics();
    assert!(documented.len() >= 50, "{documented:?}");
    let mut missing = Vec::new();
    for d in &documented {
        if d.name.starts_with("qproxy_system_disk_") && !has_disks() {
            continue;
        }
        let wanted: Vec<(String, BTreeSet<String>)> = match d.kind.as_str() {
            "histogram" => {
                let mut le = d.labels.clone();
                le.insert("le".into());
                vec![
                    (format!("{}_bucket", d.name), le),
                    (format!("{}_sum", d.name), d.labels.clone()),
                    (format!("{}_count", d.name), d.labels.clone()),
                ]
            }
            "counter" | "gauge" => vec![(d.name.clone(), d.labels.clone())],
            other => panic!("{}: type `{other}` in the README", d.name),
        };
        for (name, labels) in wanted {
            if !has(&name, &labels) {
                missing.push(format!(
                    "{name}{labels:?} (scraped: {:?})",
                    scraped.get(&name)
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "documented but not scraped as documented:\n{}",
        missing.join("\n")
    );
    for name in SEED_README_METRICS {
        let row = documented.iter().find(|d| d.name == *name);
        assert!(
            row.is_some(),
            "{name}, a name of the product's README, is in our table"
        );
    }

    // The alert rules evaluate against what was scraped, and read only
    // metrics that exist.
    let known = |name: &str| scraped.contains_key(name);
    let rules = eventually("every rule evaluated", Duration::from_secs(20), || async {
        let groups = prometheus.api("/api/v1/rules").await["groups"].clone();
        let rules: Vec<Value> = groups
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        (rules.len() >= 10
            && rules.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            }))
        .then_some(rules)
    })
    .await;
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        let query = rule["query"].as_str().unwrap();
        for name in promql_metric_names(query) {
            assert!(
                known(&name),
                "alert {}: `{name}` is not scraped",
                rule["name"]
            );
        }
    }

    // The dashboard's queries parse, run, and read only metrics that exist.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("config/monitoring/qproxy-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    let mut panels: Vec<Value> = dashboard["panels"].as_array().cloned().unwrap_or_default();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().cloned().unwrap_or_default());
        for target in panel["targets"].as_array().cloned().unwrap_or_default() {
            if let Some(expr) = target["expr"].as_str() {
                exprs.push((panel["title"].to_string(), expr.to_string()));
            }
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    for (title, expr) in &exprs {
        for name in promql_metric_names(expr) {
            assert!(
                known(&name),
                "dashboard panel {title}: `{name}` is not scraped"
            );
        }
        prometheus.query(&expr.replace("$instance", ".+")).await;
    }

    playback.stop().await;
    record.stop().await;
}
