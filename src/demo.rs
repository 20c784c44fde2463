//! `qproxy demo`: the whole product in one process, with nothing installed.
//!
//! Two small sample services (zone A and zone B), a Record node with the
//! embedded store and the embedded MQTT broker, a Playback node that gets
//! pushed notifications, and a little sample traffic. It prints what was
//! recorded, replayed and matched, and how to send your own requests.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::node::{self, NodeError, RunningNode};
use crate::server::{serve, Handler, Listener, Options};

/// How the demo picks its ports.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Use the usual ports (8080, 8084, 1883, 9080, 9084) when free; with
    /// false every port is picked by the system.
    pub usual_ports: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("demo: {0}")]
    Setup(String),
}

/// The sample service: the same answers in both zones, so replays match.
#[derive(Clone)]
struct SampleService;

impl Handler<Full<Bytes>> for SampleService {
    async fn call(&self, req: Request<Incoming>, _client: SocketAddr) -> Response<Full<Bytes>> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let answer = match (
            method.as_str(),
            path.split('/').nth(1),
            path.split('/').nth(2),
        ) {
            ("GET", Some("items"), Some(id)) => {
                let n: u64 = id.bytes().map(u64::from).sum();
                json!({"id": id, "name": format!("item-{id}"), "stock": n % 50, "price": 10 + n % 7})
            }
            ("POST", Some("orders"), _) => {
                let order: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                json!({"status": "accepted", "order": order, "bytes": body.len()})
            }
            _ => json!({"method": method.as_str(), "path": path, "bytes": body.len()}),
        };
        let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }
}

fn port(usual: bool, wanted: u16) -> u16 {
    if usual && StdListener::bind(("127.0.0.1", wanted)).is_ok() {
        wanted
    } else {
        0
    }
}

async fn sample_service(shutdown: &CancellationToken) -> Result<SocketAddr, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| DemoError::Setup(format!("cannot start a sample service: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    tokio::spawn(serve(
        Listener::new("sample", listener, 1024),
        SampleService,
        shutdown.clone(),
        Duration::from_secs(1),
        Options::default(),
    ));
    Ok(addr)
}

fn config(text: Value) -> Config {
    Config::parse_allowing_any_port(&text.to_string(), Path::new("demo"))
        .expect("the demo's own config is valid")
}

async fn call(method: Method, url: &str, body: &'static str) -> Option<(StatusCode, Value)> {
    let client = crate::downstream::pooled_client::<Full<Bytes>>(crate::tls::no_client_tls());
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .ok()?;
    let response = client.request(req).await.ok()?;
    let status = response.status();
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    Some((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// recorded, replayed, matched, mismatched, failed, transport
async fn counts(record: &RunningNode, playback: &RunningNode) -> (u64, u64, u64, u64, u64, String) {
    let record = call(
        Method::GET,
        &format!("http://{}/api/status", record.api_addr),
        "",
    )
    .await;
    let playback = call(
        Method::GET,
        &format!("http://{}/api/status", playback.api_addr),
        "",
    )
    .await;
    let n = |v: &Option<(StatusCode, Value)>, a: &str, b: &str| {
        v.as_ref().and_then(|(_, v)| v[a][b].as_u64()).unwrap_or(0)
    };
    let matched = n(&playback, "playback", "matched");
    let mismatched = n(&playback, "playback", "mismatched");
    let failed = n(&playback, "playback", "failed") + n(&playback, "playback", "skipped");
    let transport = playback
        .as_ref()
        .and_then(|(_, v)| v["playback"]["transport"].as_str().map(str::to_string))
        .unwrap_or_else(|| "-".into());
    (
        n(&record, "recording", "written"),
        matched + mismatched + failed,
        matched,
        mismatched,
        failed,
        transport,
    )
}

/// Runs the demo until `shutdown`; prints to stdout.
pub async fn run(options: DemoOptions, shutdown: CancellationToken) -> Result<(), DemoError> {
    let data = std::env::temp_dir().join(format!("qproxy-demo-{}", std::process::id()));
    let result = run_in(options, &data, shutdown).await;
    let _ = std::fs::remove_dir_all(&data);
    result
}

async fn run_in(
    options: DemoOptions,
    data: &Path,
    shutdown: CancellationToken,
) -> Result<(), DemoError> {
    let usual = options.usual_ports;
    let services = CancellationToken::new();
    let zone_a = sample_service(&services).await?;
    let zone_b = sample_service(&services).await?;

    let record = node::start(config(json!({
        "mode": "Record",
        "http": {"host": "127.0.0.1", "port": port(usual, 8080), "downstream": format!("http://{zone_a}")},
        "api": {"host": "127.0.0.1", "port": port(usual, 8084)},
        "sync": {"shards": 2},
        "data_dir": PathBuf::from(data).join("record"),
        "mqtt": {"enabled": true, "client_id": "demo-record",
                 "embedded_broker": {"enabled": true, "host": "127.0.0.1", "port": port(usual, 1883)}},
    })))
    .await?;
    let broker = record
        .broker_addr
        .expect("the demo's record node runs the broker");
    let playback = node::start(config(json!({
        "mode": "Playback",
        "http": {"host": "127.0.0.1", "port": port(usual, 9080), "downstream": format!("http://{zone_b}")},
        "api": {"host": "127.0.0.1", "port": port(usual, 9084)},
        "sync": {"enabled": true, "shards": 2, "interval": 5000, "peer_id": "demo",
                 "peer": {"host": "127.0.0.1", "port": record.api_addr.port()}},
        "data_dir": PathBuf::from(data).join("playback"),
        "mqtt": {"enabled": true, "client_id": "demo-playback", "host": "127.0.0.1", "port": broker.port()},
    })))
    .await?;
    let proxy = record.http_addr.expect("the record node proxies");
    let playback_proxy = playback.http_addr.expect("the playback node proxies");

    println!("QProxy demo: one process, embedded store, embedded MQTT broker");
    println!("  zone A service        http://{zone_a}");
    println!(
        "  Record node   proxy   http://{proxy}    api http://{}",
        record.api_addr
    );
    println!("  MQTT broker           mqtt://{broker} (embedded)");
    println!(
        "  Playback node proxy   http://{playback_proxy}    api http://{}",
        playback.api_addr
    );
    println!("  zone B service        http://{zone_b}");
    println!();

    // Wait for both nodes to be on the broker, so the replay is pushed.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let up =
            |v: Option<(StatusCode, Value)>| v.is_some_and(|(_, v)| v["mqtt"]["connected"] == true);
        if up(call(
            Method::GET,
            &format!("http://{}/api/status", record.api_addr),
            "",
        )
        .await)
            && up(call(
                Method::GET,
                &format!("http://{}/api/status", playback.api_addr),
                "",
            )
            .await)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let sample: [(Method, String, &'static str); 12] = [
        (Method::GET, "/items/1".into(), ""),
        (Method::GET, "/items/2".into(), ""),
        (Method::POST, "/orders".into(), r#"{"item": 1, "qty": 2}"#),
        (Method::GET, "/items/3".into(), ""),
        (Method::POST, "/orders".into(), r#"{"item": 3, "qty": 1}"#),
        (Method::PUT, "/items/3".into(), r#"{"stock": 9}"#),
        (Method::GET, "/items/42?fields=name".into(), ""),
        (Method::DELETE, "/items/2".into(), ""),
        (Method::GET, "/health".into(), ""),
        (Method::POST, "/orders".into(), r#"{"item": 42, "qty": 5}"#),
        (Method::PATCH, "/items/1".into(), r#"{"price": 12}"#),
        (Method::GET, "/items/7".into(), ""),
    ];
    for (method, path, body) in &sample {
        call(method.clone(), &format!("http://{proxy}{path}"), body).await;
    }
    println!(
        "sent {} sample requests through the Record node",
        sample.len()
    );
    let until = Instant::now() + Duration::from_secs(15);
    let mut last = counts(&record, &playback).await;
    while last.1 < sample.len() as u64 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = counts(&record, &playback).await;
    }
    print_counts(&last);
    println!();
    println!("Send your own (each is recorded in zone A and replayed in zone B):");
    println!("  curl -s http://{proxy}/items/42");
    println!("  curl -s -X POST http://{proxy}/orders -d '{{\"item\": 42, \"qty\": 1}}'");
    println!("  curl -s http://{}/api/status", playback.api_addr);
    println!(
        "  curl -s 'http://{}/api/replays?limit=5'",
        playback.api_addr
    );
    println!(
        "  curl -s 'http://{}/sync?peer_id=anyone&limit=2'",
        record.api_addr
    );
    println!("Ctrl-C stops the demo.");

    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => break,
        }
        let now = counts(&record, &playback).await;
        if now != last {
            print_counts(&now);
            last = now;
        }
    }
    playback.stop().await;
    record.stop().await;
    services.cancel();
    Ok(())
}

fn print_counts(c: &(u64, u64, u64, u64, u64, String)) {
    println!(
        "recorded {}, replayed {}, matched {}, mismatched {}, failed {} (sync via {})",
        c.0, c.1, c.2, c.3, c.4, c.5
    );
}
