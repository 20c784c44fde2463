//! Raw TCP targets: the TCP proxy's downstream and where TCP sessions are
//! replayed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::tls::{Stream, TlsConnector, TlsError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where raw TCP goes: `host:port`, with TLS when configured.
#[derive(Clone)]
pub struct TcpTarget {
    addr: Arc<str>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl TcpTarget {
    /// `addr` is `host:port`; with `tls`, the server's certificate must
    /// name `host`.
    pub fn new(addr: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<TcpTarget, TlsError> {
        let tls = match tls {
            Some(config) => {
                let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                Some((TlsConnector::from(config), crate::tls::server_name(host)?))
            }
            None => None,
        };
        Ok(TcpTarget {
            addr: addr.into(),
            tls,
        })
    }

    /// A connection within [`CONNECT_TIMEOUT`] (and the TLS handshake's
    /// own timeout), with `TCP_NODELAY`.
    pub async fn connect(&self) -> Result<Stream, String> {
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&*self.addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
            };
        let _ = stream.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => crate::tls::connect(connector, name.clone(), stream)
                .await
                .map_err(|e| format!("TLS: {}", crate::tls::reason(&e))),
            None => Ok(Stream::Plain(stream)),
        }
    }
}

impl fmt::Display for TcpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}
