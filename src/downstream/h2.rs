//! HTTP/2 channels to gRPC endpoints: one multiplexed connection per
//! endpoint, made on first use and again when it closes, as gRPC clients
//! hold them. h2c for `http://` endpoints, TLS with ALPN `h2` (verified
//! against `tls.ca`) for `https://` ones.
//!
//! The connection is made before the request is handed over, so a call to
//! an endpoint that cannot be reached comes back whole ([`H2Error::
//! Unreachable`]) and can go to the next endpoint with its body unread.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;

use super::TcpTarget;
use crate::config::Downstream;

/// The longest a new connection may take, TLS included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pings keep an idle channel known to be alive (as gRPC's keepalive).
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Why a call did not get an answer.
pub enum H2Error<B> {
    /// No connection could be made; the request is given back unsent.
    Unreachable(String, Box<Request<B>>),
    /// The request was sent (at least in part) and then the call failed.
    Failed(hyper::Error),
}

/// Connections to any number of endpoints, one each, shared by the calls
/// to it.
pub struct H2Channels<B> {
    tls: Arc<rustls::ClientConfig>,
    channels: Mutex<HashMap<String, Slot<B>>>,
}

/// An endpoint's channel, once made; locked while one is being made.
type Slot<B> = Arc<tokio::sync::Mutex<Option<SendRequest<B>>>>;

impl<B> H2Channels<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// `tls` is the node's client configuration; its ALPN is set to `h2`.
    pub fn new(tls: &rustls::ClientConfig) -> H2Channels<B> {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        H2Channels {
            tls: Arc::new(tls),
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `request` (its URI in absolute form) to `target` on its
    /// channel, making the channel first if need be.
    pub async fn send(
        &self,
        target: &Downstream,
        mut request: Request<B>,
    ) -> Result<Response<Incoming>, H2Error<B>> {
        // A channel found closing as the request goes out hands it back:
        // once more on a new connection.
        for _ in 0..2 {
            let mut sender = match self.sender(target).await {
                Ok(sender) => sender,
                Err(reason) => return Err(H2Error::Unreachable(reason, Box::new(request))),
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut e) => match e.take_message() {
                    Some(back) => {
                        debug!(target = %target.authority(), error = %e.error(), "channel closed before the call went out");
                        request = back;
                    }
                    None => return Err(H2Error::Failed(e.into_error())),
                },
            }
        }
        Err(H2Error::Unreachable(
            "the connection closed as the call was sent, twice".into(),
            Box::new(request),
        ))
    }

    /// The open channel to `target`, or a new one.
    async fn sender(&self, target: &Downstream) -> Result<SendRequest<B>, String> {
        let key = target.uri.to_string();
        let slot = self
            .channels
            .lock()
            .expect("channels lock")
            .entry(key)
            .or_default()
            .clone();
        // One connection attempt at a time per endpoint; the others wait
        // for it and share what it made.
        let mut slot = slot.lock().await;
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        *slot = None;
        let sender = tokio::time::timeout(CONNECT_TIMEOUT, self.connect(target))
            .await
            .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))??;
        *slot = Some(sender.clone());
        Ok(sender)
    }

    async fn connect(&self, target: &Downstream) -> Result<SendRequest<B>, String> {
        let tls = target.is_https().then(|| self.tls.clone());
        let stream = TcpTarget::new(&target.host_port(), tls)
            .map_err(|e| e.to_string())?
            .connect()
            .await?;
        handshake(stream, target.authority().as_str()).await
    }
}

async fn handshake<T, B>(io: T, authority: &str) -> Result<SendRequest<B>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let (sender, connection) = Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| super::root_cause(&e))?;
    let authority = authority.to_string();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(target = %authority, error = %super::root_cause(&e), "grpc channel closed");
        }
    });
    Ok(sender)
}
