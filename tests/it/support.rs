//! What the integration tests stand on: real `redis-server` processes, a
//! fake downstream that remembers what reached it, nodes started in-process
//! or as `qproxy` processes, and an HTTP client that can send from a chosen
//! loopback address.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use qproxy::config::Config;
use qproxy::node::RunningNode;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};

/// A port that was free a moment ago (for processes that need a number).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Polls `check` until it returns Some or `deadline` passes.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------- Redis

/// `redis-cli` against the server on `port`; its output, trimmed.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs (it comes with redis-server)");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A `redis-server` on a free port in its own folder; killed on drop.
pub struct RedisServer {
    pub port: u16,
    /// The TLS port, for a server started with [`RedisServer::start_tls`].
    pub tls_port: Option<u16>,
    process: ServerProcess,
    dir: tempfile::TempDir,
}

/// A server started from a command line; killed on drop.
struct ServerProcess {
    command: Vec<std::ffi::OsString>,
    child: Option<Child>,
}

impl ServerProcess {
    fn new(command: Vec<std::ffi::OsString>) -> ServerProcess {
        ServerProcess {
            command,
            child: None,
        }
    }

    fn spawn(&mut self, install_hint: &str) {
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {:?} ({e}); {install_hint} — .ci/run does",
                    self.command[0]
                )
            });
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(free_port(), None, Vec::new())
    }

    /// With these options after the usual ones (which they override, e.g.
    /// `--appendonly yes`).
    pub fn start_args(args: &[&str]) -> RedisServer {
        RedisServer::start_on(free_port(), args)
    }

    /// On `port`, with these options after the usual ones.
    pub fn start_on(port: u16, args: &[&str]) -> RedisServer {
        RedisServer::start_with(port, None, args.iter().map(Into::into).collect())
    }

    /// Plain on `port` (for the test's own checks) and TLS on `tls_port`
    /// with this certificate; clients need no certificate.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> RedisServer {
        let tls_port = free_port();
        let args = vec![
            "--tls-port".into(),
            tls_port.to_string().into(),
            "--tls-cert-file".into(),
            cert.into(),
            "--tls-key-file".into(),
            key.into(),
            "--tls-ca-cert-file".into(),
            ca.into(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        RedisServer::start_with(free_port(), Some(tls_port), args)
    }

    fn start_with(port: u16, tls_port: Option<u16>, extra: Vec<std::ffi::OsString>) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command: Vec<std::ffi::OsString> = [
            "redis-server",
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ]
        .iter()
        .chain(&["--save", "", "--appendonly", "no", "--dir"])
        .map(Into::into)
        .collect();
        command.push(dir.path().into());
        command.extend(extra);
        let mut server = RedisServer {
            port,
            tls_port,
            process: ServerProcess::new(command),
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        self.process.spawn("install redis-server");

        let until = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < until,
                "redis-server on port {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

// ---------------------------------------------------------------- downstream

/// One request as a downstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// POSTs `/<tag>/<i>` for i in 0..n to `proxy` from one client connection,
/// in order, each answered 200.
pub async fn send_posts(proxy: SocketAddr, n: usize, tag: &str) {
    let mut conn = ClientConn::connect("127.0.0.1".parse().unwrap(), proxy).await;
    for i in 0..n {
        let req = Request::post(format!("/{tag}/{i}"))
            .header("host", "zone-a")
            .body(Full::new(Bytes::from(format!("body {tag} {i}"))))
            .unwrap();
        let (status, _, _) = conn.send(req).await;
        assert_eq!(status, StatusCode::OK);
    }
}

/// An HTTP server that keeps every request and answers a JSON digest of it,
/// so two such servers answer the same request the same way.
pub struct FakeDownstream {
    pub addr: SocketAddr,
    tls: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// When set, every request is answered this status and not kept, like a
    /// gateway whose service is down.
    forced: Arc<std::sync::atomic::AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeDownstream {
    pub async fn start() -> FakeDownstream {
        FakeDownstream::start_with_delay(Duration::ZERO).await
    }

    /// Each answer waits `delay` first, like a service doing real work.
    pub async fn start_with_delay(delay: Duration) -> FakeDownstream {
        FakeDownstream::serve(delay, None).await
    }

    /// The same over HTTPS with `acceptor`'s certificate.
    pub async fn start_tls(acceptor: qproxy::tls::TlsAcceptor) -> FakeDownstream {
        FakeDownstream::serve(Duration::ZERO, Some(acceptor)).await
    }

    /// The same on a given address (a port chosen before it is served).
    pub async fn start_on(addr: SocketAddr) -> FakeDownstream {
        FakeDownstream::serve_on(addr, Duration::ZERO, None).await
    }

    async fn serve(delay: Duration, tls: Option<qproxy::tls::TlsAcceptor>) -> FakeDownstream {
        FakeDownstream::serve_on("127.0.0.1:0".parse().unwrap(), delay, tls).await
    }

    async fn serve_on(
        addr: SocketAddr,
        delay: Duration,
        tls: Option<qproxy::tls::TlsAcceptor>,
    ) -> FakeDownstream {
        let is_tls = tls.is_some();
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let store = seen.clone();
        let forced: Arc<std::sync::atomic::AtomicU16> = Arc::default();
        let forced_status = forced.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let store = store.clone();
                let tls = tls.clone();
                let forced = forced_status.clone();
                tokio::spawn(async move {
                    let stream = match &tls {
                        Some(acceptor) => match qproxy::tls::accept(acceptor, stream).await {
                            Ok(stream) => stream,
                            Err(_) => return,
                        },
                        None => qproxy::tls::Stream::Plain(stream),
                    };
                    let service = service_fn(move |req: Request<Incoming>| {
                        let store = store.clone();
                        let forced = forced.load(std::sync::atomic::Ordering::SeqCst);
                        async move {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            if forced != 0 {
                                let mut response = Response::new(Full::new(Bytes::new()));
                                *response.status_mut() = StatusCode::from_u16(forced).unwrap();
                                return Ok::<_, Infallible>(response);
                            }
                            Ok::<_, Infallible>(answer(req, &store).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeDownstream {
            addr,
            tls: is_tls,
            seen,
            forced,
            task,
        }
    }

    /// Answers every request with `status` (not kept) until called with None.
    pub fn answer_with(&self, status: Option<u16>) {
        self.forced
            .store(status.unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for FakeDownstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(req: Request<Incoming>, store: &Mutex<Vec<Seen>>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let digest = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "len": body.len(),
        "sum": fnv(&body),
    });
    let status = parts
        .headers
        .get("x-test-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .unwrap_or(200);
    store.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body,
    });
    let mut response = Response::new(Full::new(Bytes::from(digest.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

// ---------------------------------------------------------------- nodes

/// Starts a node in this process from config JSON (through the real parser,
/// letting the system pick the ports that are 0).
pub async fn start_node(config: Value) -> RunningNode {
    let text = serde_json::to_string_pretty(&config).unwrap();
    let config = Config::parse_allowing_any_port(&text, Path::new("test-config.json"))
        .expect("test config is valid");
    qproxy::node::start(config).await.expect("node starts")
}

/// A Record node config: proxy on a free port to `downstream`.
pub fn record_config(downstream: &str, shards: u32, store: &StoreChoice) -> Value {
    let mut c = serde_json::json!({
        "mode": "Record",
        "http": {"host": "127.0.0.1", "port": 0, "downstream": downstream},
        "api": {"host": "127.0.0.1", "port": 0},
        "sync": {"shards": shards},
        "logging": {"level": "warn"},
    });
    store.apply(&mut c);
    c
}

/// A Playback node config pulling from `peer_api`.
pub fn playback_config(
    downstream: &str,
    shards: u32,
    peer_api: SocketAddr,
    store: &StoreChoice,
) -> Value {
    let mut c = serde_json::json!({
        "mode": "Playback",
        "http": {"host": "127.0.0.1", "port": 0, "downstream": downstream},
        "api": {"host": "127.0.0.1", "port": 0},
        "sync": {
            "enabled": true, "shards": shards, "interval": 100, "peer_id": "zone-b",
            "batch_size": 50,
            "peer": {"host": "127.0.0.1", "port": peer_api.port()},
        },
        "logging": {"level": "warn"},
    });
    store.apply(&mut c);
    c
}

/// A fresh folder under the system's temporary folder, for a node's
/// data_dir when its store is Redis (removed with the test process's other
/// leftovers by the OS, not by the test: nodes may still use it on drop).
pub fn scratch_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("qproxy-it-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where a node keeps its data.
pub enum StoreChoice {
    Redis { url: String, prefix: String },
    Embedded(PathBuf),
}

impl StoreChoice {
    pub fn apply(&self, config: &mut Value) {
        match self {
            StoreChoice::Redis { url, prefix } => {
                config["redis"] = serde_json::json!({
                    "url": url, "pool_size": 2, "connection_timeout": 1, "retry_count": 1, "key_prefix": prefix,
                });
                // The record spool lives under data_dir: one per node.
                config["data_dir"] = Value::String(scratch_dir().display().to_string());
            }
            StoreChoice::Embedded(dir) => {
                config["data_dir"] = Value::String(dir.display().to_string())
            }
        }
    }
}

/// A `qproxy` process; killed on drop.
pub struct NodeProcess {
    pub child: Child,
    pub config_path: PathBuf,
    log_path: PathBuf,
}

impl NodeProcess {
    pub fn spawn(config: &Value, dir: &Path, name: &str) -> NodeProcess {
        NodeProcess::spawn_command(
            Command::new(env!("CARGO_BIN_EXE_qproxy")),
            config,
            dir,
            name,
        )
    }

    /// Started under `prlimit` with this (soft, hard) open file limit.
    pub fn spawn_with_fd_limit(
        config: &Value,
        dir: &Path,
        name: &str,
        (soft, hard): (u64, u64),
    ) -> NodeProcess {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={soft}:{hard}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_qproxy"));
        NodeProcess::spawn_command(command, config, dir, name)
    }

    fn spawn_command(mut command: Command, config: &Value, dir: &Path, name: &str) -> NodeProcess {
        let config_path = dir.join(format!("{name}.json"));
        std::fs::write(&config_path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = command
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("qproxy binary runs");
        NodeProcess {
            child,
            config_path,
            log_path,
        }
    }

    /// What the node has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- last lines of {}:", self.log_path.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

// ---------------------------------------------------------------- client

pub fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// GET a JSON document.
pub async fn get_json(url: &str) -> (StatusCode, Value) {
    let response = client()
        .request(Request::get(url).body(Full::default()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "GET {url}: not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, value)
}

/// GET as text (e.g. `/metrics`).
pub async fn get_text(url: &str) -> String {
    let response = client()
        .request(Request::get(url).body(Full::default()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Sends `body` as JSON with POST; returns status and JSON answer.
pub async fn post_json(url: &str, body: &Value) -> (StatusCode, Value) {
    post_raw(url, Bytes::from(body.to_string())).await
}

pub async fn post_raw(url: &str, body: Bytes) -> (StatusCode, Value) {
    let response = client()
        .request(
            Request::post(url)
                .header("content-type", "application/json")
                .body(Full::new(body))
                .unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A keep-alive HTTP/1.1 connection from a chosen loopback address.
pub struct ClientConn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    pub local: SocketAddr,
    /// `Host` for requests that name none, as every HTTP/1.1 client sends.
    host: http::HeaderValue,
}

impl ClientConn {
    pub async fn connect(from: IpAddr, to: SocketAddr) -> ClientConn {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let stream = socket.connect(to).await.unwrap();
        let local = stream.local_addr().unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let host = to.to_string().parse().unwrap();
        ClientConn { send, local, host }
    }

    pub async fn send(&mut self, mut req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
        if !req.headers().contains_key(http::header::HOST) {
            req.headers_mut()
                .insert(http::header::HOST, self.host.clone());
        }
        self.send.ready().await.unwrap();
        let response = self.send.send_request(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    }
}

/// Deterministic pseudo-random numbers for test traffic.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, len: usize) -> Bytes {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        Bytes::from(out)
    }
}

/// Replay ids per shard's checkpoint, from a Record node's `/api/status`.
pub async fn checkpoints(api: SocketAddr, peer: &str) -> HashMap<u64, String> {
    let (_, status) = get_json(&format!("http://{api}/api/status")).await;
    status["checkpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["peer_id"] == peer)
        .map(|c| {
            (
                c["shard"].as_u64().unwrap(),
                c["last_record_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------- MQTT

/// A Mosquitto broker on a free port (or a given one), optionally with one
/// user; killed on drop.
pub struct Mosquitto {
    pub port: u16,
    process: ServerProcess,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start(user: Option<(&str, &str)>) -> Mosquitto {
        Mosquitto::start_on(free_port(), user)
    }

    pub fn start_on(port: u16, user: Option<(&str, &str)>) -> Mosquitto {
        Mosquitto::start_with(port, user, "")
    }

    /// MQTT over TLS only, with this certificate; clients need none.
    pub fn start_tls(cert: &Path, key: &Path) -> Mosquitto {
        let listener = format!("certfile {}\nkeyfile {}\n", cert.display(), key.display());
        Mosquitto::start_with(free_port(), None, &listener)
    }

    /// `listener_conf` goes right after the listener line.
    fn start_with(port: u16, user: Option<(&str, &str)>, listener_conf: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut conf = format!(
            "listener {port} 127.0.0.1\n{listener_conf}persistence false\nuser root\nmax_queued_messages 100000\n"
        );
        match user {
            Some((name, password)) => {
                let file = dir.path().join("passwd");
                let status = Command::new("mosquitto_passwd")
                    .arg("-c")
                    .arg("-b")
                    .arg(&file)
                    .args([name, password])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .unwrap_or_else(|e| {
                        panic!(
                            "cannot run mosquitto_passwd ({e}); install mosquitto — .ci/run does"
                        )
                    });
                assert!(status.success(), "mosquitto_passwd failed");
                conf.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    file.display()
                ));
            }
            None => conf.push_str("allow_anonymous true\n"),
        }
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let command = vec!["mosquitto".into(), "-c".into(), conf_path.into()];
        let mut broker = Mosquitto {
            port,
            process: ServerProcess::new(command),
            _dir: dir,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        self.process.spawn("install mosquitto");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < until,
                "mosquitto on port {} does not accept connections",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}
