//! The Playback node's side of the HTTP sync link: `GET /sync` and
//! `POST /commit` against the Record node's API listener.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;

use super::{Checkpoint, CommitRequest, SyncBatch};
use crate::config::PeerConfig;
use crate::downstream::PeerSource;
use crate::record::RecordId;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("peer {addr}: no answer within {0:?}", .timeout)]
    Timeout { addr: String, timeout: Duration },
    #[error("peer {addr} answered {status}: {body}")]
    Status {
        addr: String,
        status: StatusCode,
        body: String,
    },
    #[error("peer {addr}: cannot decode the answer: {reason}")]
    Decode { addr: String, reason: String },
}

pub struct PeerClient {
    client: Client<crate::downstream::Connector, Full<Bytes>>,
    scheme: &'static str,
    addr: String,
    /// When set, the peer is wherever this says now (a Record node found
    /// through service discovery); `scheme` and `addr` are not used.
    source: Option<Arc<dyn PeerSource>>,
    auth: Option<String>,
    timeout: Duration,
}

impl PeerClient {
    /// A client of `peer`'s API; HTTPS with `tls` when `peer.tls`.
    pub fn new(peer: &PeerConfig, tls: Arc<rustls::ClientConfig>) -> PeerClient {
        PeerClient {
            client: crate::downstream::pooled_client(tls),
            scheme: if peer.tls { "https" } else { "http" },
            addr: format!("{}:{}", peer.host, peer.port),
            source: None,
            auth: peer.auth_token.as_ref().map(|t| format!("Bearer {t}")),
            timeout: Duration::from_millis(peer.timeout_ms.max(1)),
        }
    }

    /// A client of the Record node `source` finds (registered in
    /// ZooKeeper), followed when it moves; no bearer token.
    pub fn discovered(source: Arc<dyn PeerSource>, tls: Arc<rustls::ClientConfig>) -> PeerClient {
        PeerClient {
            client: crate::downstream::pooled_client(tls),
            scheme: "http",
            addr: "the record node registered in zookeeper".into(),
            source: Some(source),
            auth: None,
            timeout: Duration::from_secs(10),
        }
    }

    pub fn addr(&self) -> String {
        match &self.source {
            Some(source) => source.peer().map_or_else(|| self.addr.clone(), |p| p.addr),
            None => self.addr.clone(),
        }
    }

    /// The scheme and `host:port` to call now.
    fn target(&self) -> Result<(&'static str, String), PeerError> {
        match &self.source {
            None => Ok((self.scheme, self.addr.clone())),
            Some(source) => match source.peer() {
                Some(peer) => Ok((if peer.tls { "https" } else { "http" }, peer.addr)),
                None => Err(PeerError::Unreachable {
                    addr: self.addr.clone(),
                    reason: "no record node registered yet".into(),
                }),
            },
        }
    }

    /// Records of `shard` after `after` (or, without it, after `peer_id`'s
    /// committed checkpoint), as MessagePack; `rewind` is the operator's
    /// rewind this peer has seen (sent only when there is one, so an older
    /// Record node is not asked a parameter it does not know).
    pub async fn pull(
        &self,
        peer_id: &str,
        shard: u32,
        limit: usize,
        after: Option<RecordId>,
        rewind: Option<u64>,
    ) -> Result<SyncBatch, PeerError> {
        let mut path = format!("/sync?peer_id={peer_id}&shard_id={shard}&limit={limit}");
        if let Some(after) = after {
            path.push_str(&format!("&after={after}"));
        }
        if let Some(rewind) = rewind {
            path.push_str(&format!("&rewind={rewind}"));
        }
        let body = self.call(Method::GET, &path, Bytes::new()).await?;
        rmp_serde::from_slice(&body).map_err(|e| PeerError::Decode {
            addr: self.addr(),
            reason: e.to_string(),
        })
    }

    pub async fn commit(&self, commit: &CommitRequest) -> Result<Checkpoint, PeerError> {
        let json = serde_json::to_vec(commit).expect("commits always encode");
        let body = self
            .call(Method::POST, "/commit", Bytes::from(json))
            .await?;
        serde_json::from_slice(&body).map_err(|e| PeerError::Decode {
            addr: self.addr(),
            reason: e.to_string(),
        })
    }

    async fn call(&self, method: Method, path: &str, body: Bytes) -> Result<Bytes, PeerError> {
        let (scheme, addr) = self.target()?;
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{scheme}://{addr}{path}"))
            .header(header::ACCEPT, "application/msgpack")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(auth) = &self.auth {
            req = req.header(header::AUTHORIZATION, auth);
        }
        let req = req.body(Full::new(body)).expect("request parts are valid");
        let exchange = async {
            let response = self
                .client
                .request(req)
                .await
                .map_err(|e| PeerError::Unreachable {
                    addr: addr.clone(),
                    reason: crate::downstream::root_cause(&e),
                })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| PeerError::Unreachable {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            if !status.is_success() {
                return Err(PeerError::Status {
                    addr: addr.clone(),
                    status,
                    body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
                });
            }
            Ok(body)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| PeerError::Timeout {
                addr: addr.clone(),
                timeout: self.timeout,
            })?
    }
}
