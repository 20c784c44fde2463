//! What the integration tests stand on, one file each: real `redis-server`
//! ([`redis`]) and Mosquitto ([`mosquitto`]) processes, a fake downstream
//! that remembers what reached it ([`downstream`]), nodes started in-process
//! or as `qproxy` processes ([`nodes`]), an HTTP client that can send
//! from a chosen loopback address ([`client`]), and gRPC servers and clients
//! from two stacks, tonic and Python grpcio ([`grpc`]).

#![allow(dead_code)]

mod client;
mod downstream;
mod grpc;
mod mosquitto;
mod nodes;
mod redis;
mod zookeeper;

pub use client::*;
pub use downstream::*;
pub use grpc::*;
pub use mosquitto::*;
pub use nodes::*;
pub use redis::*;
pub use zookeeper::*;

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

/// A server started from a command line; killed on drop.
pub(crate) struct ServerProcess {
    command: Vec<std::ffi::OsString>,
    child: Option<Child>,
}

impl ServerProcess {
    pub(crate) fn new(command: Vec<std::ffi::OsString>) -> ServerProcess {
        ServerProcess {
            command,
            child: None,
        }
    }

    pub(crate) fn spawn(&mut self, install_hint: &str) {
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

    pub(crate) fn stop(&mut self) {
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

/// A loopback port bound but not listening: connections to it are refused,
/// and nothing else can take it until the socket is dropped.
pub fn refusing_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}
