//! Record → replay-start latency: the time from a client getting its answer
//! from the Record node to the replayed request reaching zone B's service,
//! with MQTT push (sync.interval 60 s, so only notifications count) and with
//! HTTP polling only (sync.interval 1 s, the default).
//!
//! Each is measured with the embedded store and, when `redis-server` is on
//! the PATH, with Redis.
//!
//! `cargo bench --bench replay_latency` (release build; about a minute).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

type Arrivals = Arc<Mutex<Vec<(String, Instant)>>>;

async fn zone_b() -> (SocketAddr, Arrivals) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let arrivals: Arrivals = Arc::default();
    let seen = arrivals.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let at = Instant::now();
                        seen.lock()
                            .unwrap()
                            .push((req.uri().path().to_string(), at));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, arrivals)
}

async fn zone_a() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn start_config(text: serde_json::Value) -> qproxy::config::Config {
    qproxy::config::Config::parse_allowing_any_port(
        &text.to_string(),
        std::path::Path::new("bench"),
    )
    .unwrap()
}

/// Push through the embedded broker, an external one on this port (with
/// the bench's user when it asks for one), or none.
#[derive(Clone, Copy)]
enum Push {
    Embedded,
    External(u16, bool),
    Off,
}

/// The MQTT user the bench gives an external broker's password file.
const MQTT_USER: (&str, &str) = ("bench", "bench-token");

fn external_mqtt(port: u16, auth: bool) -> serde_json::Value {
    let mut mqtt = json!({"host": "127.0.0.1", "port": port});
    if auth {
        mqtt["app_id"] = json!(MQTT_USER.0);
        mqtt["token"] = json!(MQTT_USER.1);
    }
    mqtt
}

async fn measure(push: Push, redis: Option<&str>, requests: usize) -> Vec<Duration> {
    let a = zone_a().await;
    let (b, arrivals) = zone_b().await;
    let dir = tempfile::tempdir().unwrap();
    let mut record_config = json!({
        "mode": "Record",
        "http": {"port": 0, "downstream": format!("http://{a}")},
        "api": {"port": 0},
        "sync": {"shards": 1},
        "data_dir": dir.path().join("a"),
        "logging": {"level": "error"},
    });
    match push {
        Push::Embedded => {
            record_config["mqtt"] =
                json!({"enabled": true, "embedded_broker": {"enabled": true, "port": 0}})
        }
        Push::External(port, auth) => record_config["mqtt"] = external_mqtt(port, auth),
        Push::Off => {}
    }
    let pushing = !matches!(push, Push::Off);
    let record = qproxy::node::start(start_config(record_config))
        .await
        .unwrap();
    let mut playback_config = json!({
        "mode": "Playback",
        "http": {"port": 0, "downstream": format!("http://{b}")},
        "api": {"port": 0},
        "sync": {"enabled": true, "shards": 1, "interval": if pushing { 60_000 } else { 1_000 },
                 "peer": {"host": "127.0.0.1", "port": record.api_addr.port()}},
        "data_dir": dir.path().join("b"),
    });
    if let Some(url) = redis {
        playback_config["redis"] =
            json!({"url": url, "key_prefix": format!("bench-b-{}", now_ms())});
    }
    if let Some(broker) = record.broker_addr {
        playback_config["mqtt"] =
            json!({"enabled": true, "host": "127.0.0.1", "port": broker.port()});
    }
    if let Push::External(port, auth) = push {
        playback_config["mqtt"] = external_mqtt(port, auth);
    }
    let playback = qproxy::node::start(start_config(playback_config))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let proxy = record.http_addr.unwrap();
    let mut sent = Vec::with_capacity(requests);
    for i in 0..requests {
        let path = format!("/r/{i}");
        let response = client
            .request(
                Request::get(format!("http://{proxy}{path}"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
        sent.push((path, Instant::now()));
        // Spaced out, so each record is its own event.
        tokio::time::sleep(Duration::from_millis(if pushing { 20 } else { 97 })).await;
    }
    let until = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().unwrap().len() < requests && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrived = arrivals.lock().unwrap().clone();
    if arrived.len() < requests {
        for api in [record.api_addr, playback.api_addr] {
            let status = client
                .request(
                    Request::get(format!("http://{api}/api/status"))
                        .body(Full::default())
                        .unwrap(),
                )
                .await
                .unwrap();
            let body = status.into_body().collect().await.unwrap().to_bytes();
            eprintln!("{}", String::from_utf8_lossy(&body));
        }
    }
    playback.stop().await;
    record.stop().await;
    assert_eq!(arrived.len(), requests, "every record replayed");
    sent.iter()
        .map(|(path, at)| {
            let (_, landed) = arrived.iter().find(|(p, _)| p == path).unwrap();
            landed.saturating_duration_since(*at)
        })
        .collect()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A throwaway mosquitto, when one is installed, with the broker config
/// that ships (`broker/mosquitto.conf`; `MOSQUITTO_CONF=FILE` for another,
/// e.g. one with Mosquitto's defaults to compare) on a free loopback port,
/// its password file and persistence in a temporary folder. Also whether
/// it asks for a password.
fn mosquitto() -> Option<(std::process::Child, u16, tempfile::TempDir, bool)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let dir = tempfile::tempdir().ok()?;
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/broker/mosquitto.conf");
    let source = std::env::var("MOSQUITTO_CONF").unwrap_or_else(|_| shipped.to_string());
    let passwd = dir.path().join("passwd");
    let mut auth = false;
    let mut text = String::new();
    for line in std::fs::read_to_string(&source).ok()?.lines() {
        let line = match line.split_whitespace().next() {
            Some("listener") => format!("listener {port} 127.0.0.1"),
            Some("password_file") => {
                auth = true;
                format!("password_file {}", passwd.display())
            }
            Some("persistence_location") => {
                format!("persistence_location {}/", dir.path().display())
            }
            _ => line.to_string(),
        };
        text.push_str(&line);
        text.push('\n');
    }
    if !text.lines().any(|l| l.starts_with("listener ")) {
        text.push_str(&format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\n"
        ));
    }
    text.push_str("user root\n");
    if auth {
        std::process::Command::new("mosquitto_passwd")
            .args(["-c", "-b"])
            .arg(&passwd)
            .args([MQTT_USER.0, MQTT_USER.1])
            .status()
            .ok()?;
    }
    let conf = dir.path().join("m.conf");
    std::fs::write(&conf, text).ok()?;
    let child = std::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    Some((child, port, dir, auth))
}

/// A throwaway redis-server, when one is installed.
fn redis_server() -> Option<(std::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    Some((child, format!("redis://127.0.0.1:{port}")))
}

#[tokio::main]
async fn main() {
    let mut redis = redis_server();
    let mut broker = mosquitto();
    let url = redis.as_ref().map(|(_, url)| url.clone());
    let mut runs = vec![(
        "mqtt push (embedded rumqttd), embedded store",
        Push::Embedded,
        None,
        300,
    )];
    if let Some(url) = url.as_deref() {
        runs.push((
            "mqtt push (embedded rumqttd), redis",
            Push::Embedded,
            Some(url),
            300,
        ));
    }
    if let Some((_, port, _, auth)) = &broker {
        runs.push((
            "mqtt push (mosquitto), embedded store",
            Push::External(*port, *auth),
            None,
            300,
        ));
        if let Some(url) = url.as_deref() {
            runs.push((
                "mqtt push (mosquitto), redis",
                Push::External(*port, *auth),
                Some(url),
                300,
            ));
        }
    }
    runs.push(("http poll 1 s, embedded store", Push::Off, None, 60));
    for (name, push, store, n) in runs {
        let mut lat = measure(push, store, n).await;
        lat.sort();
        println!(
            "{name:<44} n={n:<4} p50 {:>9.2?}  p90 {:>9.2?}  p99 {:>9.2?}  max {:>9.2?}",
            pct(&lat, 0.50),
            pct(&lat, 0.90),
            pct(&lat, 0.99),
            lat[lat.len() - 1]
        );
    }
    if let Some((child, _)) = redis.as_mut() {
        let _ = child.kill();
    }
    if let Some((child, _, _, _)) = broker.as_mut() {
        let _ = child.kill();
    }
}
