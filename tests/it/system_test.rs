//! System figures: host and process CPU, memory, network and disk in
//! `/metrics` and `/api/status`, and `/health`'s `system` component past
//! its thresholds.

use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};

use crate::support::{self, eventually, get_json, get_text, FakeDownstream, StoreChoice};

async fn record_node(
    monitoring: Value,
) -> (qproxy::node::RunningNode, tempfile::TempDir, FakeDownstream) {
    let downstream = FakeDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::record_config(
        &downstream.url(),
        1,
        &StoreChoice::Embedded(dir.path().into()),
    );
    config["monitoring"] = monitoring;
    (support::start_node(config).await, dir, downstream)
}

/// `/api/status` once its `system` object holds a sample taken since the
/// node started (one with its `data_dir`'s filesystem).
async fn sampled_status(api: std::net::SocketAddr, data_dir: &str) -> Value {
    eventually(
        "a system sample with the data_dir in /api/status",
        Duration::from_secs(15),
        || async {
            let (status, body) = get_json(&format!("http://{api}/api/status")).await;
            let filesystems = body["system"]["disk"]["filesystems"].as_array()?;
            (status == StatusCode::OK && filesystems.iter().any(|f| f["path"] == data_dir))
                .then_some(body)
        },
    )
    .await
}

#[tokio::test]
async fn system_test_figures_are_in_metrics_and_api_status() {
    let (node, dir, _downstream) = record_node(json!({})).await;
    let api = node.api_addr;
    let data_dir = std::fs::canonicalize(dir.path()).unwrap();
    let data_dir = data_dir.to_str().unwrap();
    let body = sampled_status(api, data_dir).await;
    let system = &body["system"];
    assert_eq!(system["data_dir"], data_dir, "{system:#}");
    assert_eq!(
        system["thresholds"],
        json!({"cpu_percent": 80.0, "memory_percent": 85.0, "disk_percent": 90.0})
    );
    for (path, what) in [
        ("/cpu/usage_percent", "host CPU"),
        ("/cpu/iowait_percent", "I/O wait"),
        ("/cpu/process_percent", "process CPU"),
        ("/memory/used_percent", "host memory"),
        ("/network/receive_bytes_per_sec", "network throughput"),
        ("/network/tcp/in_use", "TCP connections"),
        ("/network/errors_total", "network errors"),
    ] {
        assert!(
            system.pointer(path).is_some_and(Value::is_number),
            "{what} ({path}) in {system:#}"
        );
    }
    let cores = system["cpu"]["cores_percent"].as_array().unwrap();
    assert_eq!(
        Some(cores.len() as u64),
        system["cpus"].as_u64(),
        "{system:#}"
    );
    assert!(system["memory"]["total_bytes"].as_u64().unwrap() > 0);
    assert!(system["memory"]["process_resident_bytes"].as_u64().unwrap() > 0);
    assert!(system["open_fds"].as_u64().unwrap() > 0);
    let interfaces = system["network"]["interfaces"].as_array().unwrap();
    assert!(
        interfaces.iter().any(|i| i["name"] == "lo"),
        "{interfaces:?}"
    );
    let fs = &system["disk"]["filesystems"];
    let ours = fs
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == data_dir)
        .unwrap_or_else(|| panic!("data_dir's filesystem in {fs:#}"));
    assert!(ours["size_bytes"].as_u64().unwrap() > 0, "{ours}");
    assert!(ours["used_percent"].is_number(), "{ours}");

    let page = get_text(&format!("http://{api}/metrics")).await;
    for series in [
        "qproxy_system_cpu_usage_ratio ",
        "qproxy_system_cpu_core_usage_ratio{core=\"0\"} ",
        "qproxy_system_cpu_iowait_ratio ",
        "qproxy_process_cpu_usage_ratio ",
        "qproxy_system_memory_total_bytes ",
        "qproxy_system_memory_available_bytes ",
        "qproxy_system_memory_usage_ratio ",
        "qproxy_process_resident_memory_bytes ",
        "qproxy_process_virtual_memory_bytes ",
        "qproxy_process_threads ",
        "qproxy_process_open_fds ",
        "qproxy_process_max_fds ",
        "qproxy_system_network_receive_bytes_total{interface=\"lo\"} ",
        "qproxy_system_network_transmit_bytes_total{interface=\"lo\"} ",
        "qproxy_system_network_receive_errors_total{interface=\"lo\"} ",
        "qproxy_system_network_transmit_errors_total{interface=\"lo\"} ",
        "qproxy_system_tcp_connections{state=\"in_use\"} ",
        &format!("qproxy_system_filesystem_usage_ratio{{path=\"{data_dir}\"}} "),
        &format!("qproxy_system_filesystem_size_bytes{{path=\"{data_dir}\"}} "),
        &format!("qproxy_system_filesystem_available_bytes{{path=\"{data_dir}\"}} "),
    ] {
        assert!(page.contains(series), "{series} missing from:\n{page}");
    }
    assert!(
        page.contains("# HELP qproxy_system_cpu_usage_ratio "),
        "{page}"
    );
    // A ratio, not a percentage.
    let usage: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix("qproxy_system_memory_usage_ratio "))
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.0..=1.0).contains(&usage), "{usage}");

    // With the default thresholds, UP or DOWN depends on how busy the box
    // is (the next test makes it DOWN for sure).
    let (_, health) = get_json(&format!("http://{api}/health")).await;
    let component = health["components"]["system"].as_str().unwrap();
    assert!(["UP", "DOWN"].contains(&component), "{health}");
    node.stop().await;
}

#[tokio::test]
async fn system_test_a_low_threshold_puts_system_down_with_the_reason() {
    // Only memory can trip: CPU and disk depend on the box.
    let thresholds = json!({"memory_threshold": 1, "cpu_threshold": 100, "disk_threshold": 100});
    let (node, _dir, _downstream) = record_node(thresholds).await;
    let url = format!("http://{}/health", node.api_addr);
    let (code, health) = eventually(
        "system DOWN in /health",
        Duration::from_secs(15),
        || async {
            let (code, health) = get_json(&url).await;
            (health["components"]["system"] == "DOWN").then_some((code, health))
        },
    )
    .await;
    // Still serving: a busy node is DEGRADED, not taken out of service.
    assert_eq!(code, StatusCode::OK, "{health}");
    assert_eq!(health["status"], "DEGRADED", "{health}");
    let error = health["error"].as_str().unwrap();
    assert!(error.starts_with("memory "), "{error}");
    assert!(
        error.contains("% used, over monitoring.memory_threshold 1%"),
        "{error}"
    );
    let (_, status) = get_json(&format!("http://{}/api/status", node.api_addr)).await;
    assert_eq!(status["system"]["thresholds"]["memory_percent"], 1.0);
    assert_eq!(
        status["system"]["over_thresholds"][0].as_str(),
        Some(error),
        "{status:#}"
    );
    node.stop().await;
}
