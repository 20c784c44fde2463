//! A small load generator for `bench/run`, for what wrk does not do.
//!
//! `rate URL RATE SECS CONNS` — open-loop load at a fixed rate spread over
//! keep-alive connections; each latency is measured from when the request
//! was due, not when it was sent, so a slow server cannot hide its queue
//! (no coordinated omission). Prints one JSON line.
//!
//! `idle URL CONNS SECS` — opens CONNS keep-alive connections, sends one
//! request on each, and holds them open SECS seconds. Prints one JSON line.
//!
//! Run through cargo: `cargo bench --bench loadgen -- rate http://… 5000 10 32`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(authority: &str) -> std::io::Result<Sender> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(send)
}

async fn get(send: &mut Sender, authority: &str, path: &str) -> bool {
    if send.ready().await.is_err() {
        return false;
    }
    let req = Request::get(path)
        .header("host", authority)
        .body(Empty::new())
        .expect("valid request");
    match send.send_request(req).await {
        Ok(response) => {
            let ok = response.status().is_success();
            ok && response.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

fn split(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    }
}

async fn rate(url: &str, rate: f64, secs: u64, conns: usize) {
    let (authority, path) = split(url);
    let per_conn = rate / conns as f64;
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let total_per_conn = (per_conn * secs as f64) as usize;
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let authority = authority.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut send = connect(&authority).await.expect("connect");
            let offset = interval.mul_f64(c as f64 / conns as f64);
            let mut latencies = Vec::with_capacity(total_per_conn);
            let mut errors = 0u64;
            for i in 0..total_per_conn {
                let due = start + offset + interval * i as u32;
                tokio::time::sleep_until(due.into()).await;
                if !get(&mut send, &authority, &path).await {
                    errors += 1;
                    send = match connect(&authority).await {
                        Ok(s) => s,
                        Err(_) => continue,
                    };
                }
                latencies.push(due.elapsed());
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        all.extend(l);
        errors += e;
    }
    all.sort();
    let pct = |p: f64| {
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i].as_secs_f64() * 1e6
    };
    println!(
        "{{\"requests\": {}, \"errors\": {errors}, \"p50_us\": {:.0}, \"p90_us\": {:.0}, \"p99_us\": {:.0}, \"max_us\": {:.0}}}",
        all.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
}

async fn idle(url: &str, conns: usize, secs: u64) {
    let (authority, path) = split(url);
    let mut held = Vec::with_capacity(conns);
    let mut errors = 0;
    for _ in 0..conns {
        // A connection the server refuses (or that hangs) counts as an
        // error within seconds rather than stalling the run.
        let opened = tokio::time::timeout(Duration::from_secs(10), async {
            let mut send = connect(&authority).await.ok()?;
            let answered = get(&mut send, &authority, &path).await;
            Some((send, answered))
        });
        match opened.await {
            Ok(Some((send, answered))) => {
                errors += usize::from(!answered);
                held.push(send);
            }
            Ok(None) | Err(_) => errors += 1,
        }
    }
    println!("{{\"open\": {}, \"errors\": {errors}}}", held.len());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    drop(held);
}

#[tokio::main]
async fn main() {
    // cargo bench passes --bench; ignore it.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(0) {
        "rate" => {
            rate(
                arg(1),
                arg(2).parse().expect("RATE"),
                arg(3).parse().expect("SECS"),
                arg(4).parse().expect("CONNS"),
            )
            .await
        }
        "idle" => {
            idle(
                arg(1),
                arg(2).parse().expect("CONNS"),
                arg(3).parse().expect("SECS"),
            )
            .await
        }
        "" => println!("loadgen: nothing to do (see bench/run)"),
        other => panic!("unknown mode {other}: use rate or idle"),
    }
}
