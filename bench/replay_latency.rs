//! Record → replay-start latency: the time from a client getting its answer
//! from the Record node to the replayed request reaching zone B's service,
//! with MQTT push (sync.interval 60 s, so only notifications count) and with
//! HTTP polling only (sync.interval 1 s, the default).
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
    qproxy::config::Config::parse(&text.to_string(), std::path::Path::new("bench")).unwrap()
}

async fn measure(push: bool, requests: usize) -> Vec<Duration> {
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
    if push {
        record_config["mqtt"] =
            json!({"enabled": true, "embedded_broker": {"enabled": true, "port": 0}});
    }
    let record = qproxy::node::start(start_config(record_config))
        .await
        .unwrap();
    let mut playback_config = json!({
        "mode": "Playback",
        "http": {"port": 0, "downstream": format!("http://{b}")},
        "api": {"port": 0},
        "sync": {"enabled": true, "shards": 1, "interval": if push { 60_000 } else { 1_000 },
                 "peer": {"host": "127.0.0.1", "port": record.api_addr.port()}},
        "data_dir": dir.path().join("b"),
    });
    if let Some(broker) = record.broker_addr {
        playback_config["mqtt"] =
            json!({"enabled": true, "host": "127.0.0.1", "port": broker.port()});
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
        tokio::time::sleep(Duration::from_millis(if push { 20 } else { 97 })).await;
    }
    let until = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().unwrap().len() < requests && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrived = arrivals.lock().unwrap().clone();
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

#[tokio::main]
async fn main() {
    for (name, push, n) in [
        ("mqtt push", true, 300),
        ("http poll (interval 1 s)", false, 60),
    ] {
        let mut lat = measure(push, n).await;
        lat.sort();
        println!(
            "{name:<26} n={n:<4} p50 {:>9.2?}  p90 {:>9.2?}  p99 {:>9.2?}  max {:>9.2?}",
            pct(&lat, 0.50),
            pct(&lat, 0.90),
            pct(&lat, 0.99),
            lat[lat.len() - 1]
        );
    }
}
