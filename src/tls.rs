//! TLS from PEM files, with rustls and its `ring` provider.
//!
//! - Listeners (`http`, `api`, `tcp`) get a [`TlsAcceptor`] from
//!   `tls.tls_cert`/`tls.tls_key`; HTTP listeners offer ALPN `h2` and
//!   `http/1.1`; with a `client_ca` the listener requires a client
//!   certificate signed by it (mutual TLS).
//! - Every outgoing TLS link (https downstreams, a TLS TCP downstream, the
//!   peer's API, the MQTT broker) shares one [`ClientConfig`]: it trusts
//!   `tls.ca` (the system's roots when unset) and presents
//!   `tls.client_cert`/`tls.client_key` when a server asks for one.
//! - [`Stream`] is a TCP connection with or without TLS, so the code above
//!   it is written once.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::counter;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::info;

use crate::config::Config;
use crate::metrics as m;
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How long a client has to finish its handshake on a TLS listener.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ALPN of the HTTP listeners: HTTP/2 first, HTTP/1.1 otherwise.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} `{path}`: {reason}")]
    File {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{key}: {reason}")]
    Setup { key: &'static str, reason: String },
}

impl TlsError {
    /// The config key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::File { key, .. } | TlsError::Setup { key, .. } => key,
        }
    }

    /// The error without its key.
    pub fn message(&self) -> String {
        match self {
            TlsError::File { path, reason, .. } => format!("`{}`: {reason}", path.display()),
            TlsError::Setup { reason, .. } => reason.clone(),
        }
    }
}

/// A node's TLS, built from its config at start-up: an acceptor for each
/// TLS listener and the client config of its outgoing links.
#[derive(Clone)]
pub struct Setup {
    pub http: Option<TlsAcceptor>,
    pub grpc: Option<TlsAcceptor>,
    pub api: Option<TlsAcceptor>,
    pub tcp: Option<TlsAcceptor>,
    pub client: Arc<ClientConfig>,
}

impl Setup {
    /// Reads every PEM file the config names; the first problem is an
    /// error naming its key and file.
    pub fn new(config: &Config) -> Result<Setup, TlsError> {
        let tls = config.tls.clone().unwrap_or_default();
        let identity = match (&tls.tls_cert, &tls.tls_key) {
            (Some(cert), Some(key)) => Some(Identity {
                cert: ("tls.tls_cert", cert.as_path()),
                key: ("tls.tls_key", key.as_path()),
            }),
            _ => None,
        };
        let listener = |on: bool, client_ca: Option<(&'static str, &Path)>, alpn| match identity
            .filter(|_| on)
        {
            Some(id) => acceptor(id, client_ca, alpn).map(Some),
            None => Ok(None),
        };
        let http_ca = config.http.as_ref().and_then(|h| h.client_ca.as_deref());
        let tcp = config.tcp.as_ref().filter(|t| t.enabled);
        let tcp_ca = tcp.and_then(|t| t.client_ca.as_deref());
        let client_identity = match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => Some(Identity {
                cert: ("tls.client_cert", cert.as_path()),
                key: ("tls.client_key", key.as_path()),
            }),
            _ => None,
        };
        let wants_client =
            config.needs_client_tls() || tls.ca.is_some() || client_identity.is_some();
        Ok(Setup {
            http: listener(
                config.http_tls(),
                http_ca.map(|p| ("http.client_ca", p)),
                ALPN_HTTP,
            )?,
            grpc: listener(
                config.grpc_tls(),
                config
                    .grpc
                    .as_ref()
                    .and_then(|g| g.client_ca.as_deref())
                    .map(|p| ("grpc.client_ca", p)),
                // HTTP/1.1 too, so that such a client is told what is wrong.
                ALPN_HTTP,
            )?,
            api: listener(
                config.api.tls,
                config
                    .api
                    .client_ca
                    .as_deref()
                    .map(|p| ("api.client_ca", p)),
                ALPN_HTTP,
            )?,
            tcp: listener(
                tcp.is_some_and(|t| t.tls),
                tcp_ca.map(|p| ("tcp.client_ca", p)),
                &[],
            )?,
            client: if wants_client {
                client_config(tls.ca.as_deref().map(|p| ("tls.ca", p)), client_identity)?
            } else {
                no_client_tls()
            },
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn file_error(key: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        key,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn pem_error(key: &'static str, path: &Path, e: pem::Error, wanted: &str) -> TlsError {
    let reason = match e {
        pem::Error::Io(e) => format!("cannot read it: {e}"),
        pem::Error::NoItemsFound => format!("no {wanted} in it (PEM expected)"),
        other => format!("not valid PEM: {other}"),
    };
    file_error(key, path, reason)
}

/// The certificates of a PEM file, in order (leaf first for a chain).
pub fn load_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(key, path, e, "CERTIFICATE"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(key, path, e, "CERTIFICATE"))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no CERTIFICATE in it (PEM expected)"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(key, path, e, "PRIVATE KEY"))
}

fn root_store(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(key, path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(key, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// A listener's identity: certificate chain and key files, and the key
/// names to blame in errors.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub cert: (&'static str, &'a Path),
    pub key: (&'static str, &'a Path),
}

/// A TLS listener: `identity`, ALPN `alpn`, and with `client_ca` client
/// certificates required and verified against it.
pub fn acceptor(
    identity: Identity<'_>,
    client_ca: Option<(&'static str, &Path)>,
    alpn: &[&[u8]],
) -> Result<TlsAcceptor, TlsError> {
    let certs = load_certs(identity.cert.0, identity.cert.1)?;
    let key = load_key(identity.key.0, identity.key.1)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup {
            key: identity.cert.0,
            reason: e.to_string(),
        })?;
    let builder = match client_ca {
        Some((ca_key, path)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(root_store(ca_key, path)?),
                provider(),
            )
            .build()
            .map_err(|e| file_error(ca_key, path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Setup {
            key: identity.key.0,
            reason: format!("does not go with {}: {e}", identity.cert.0),
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The client side of every outgoing TLS link. `ca`: trusted roots (the
/// system's when `None`); `identity`: a client certificate to present.
pub fn client_config(
    ca: Option<(&'static str, &Path)>,
    identity: Option<Identity<'_>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca {
        Some((key, path)) => root_store(key, path)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup {
            key: "tls",
            reason: e.to_string(),
        })?
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => {
            let certs = load_certs(id.cert.0, id.cert.1)?;
            let key = load_key(id.key.0, id.key.1)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsError::Setup {
                    key: id.key.0,
                    reason: format!("does not go with {}: {e}", id.cert.0),
                })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A client config that trusts nothing: for nodes with no outgoing TLS
/// link, so that start-up does not read the system's roots for nothing.
pub fn no_client_tls() -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth(),
    )
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::Setup {
            key: "tls.ca",
            reason: "unset, and no system CA certificates were found; name a CA bundle".into(),
        });
    }
    Ok(roots)
}

/// The name a TLS client checks the server's certificate against: a DNS
/// name or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| TlsError::Setup {
        key: "host",
        reason: format!("`{host}` cannot name a TLS server: {e}"),
    })
}

/// A TCP connection, plain or with TLS (either end).
pub enum Stream {
    Plain(TcpStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => $e,
            Stream::Server($s) => $e,
            Stream::Client($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Server(s) => s.is_write_vectored(),
            Stream::Client(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// What went wrong in a handshake, in a person's words ("invalid peer
/// certificate: Expired" rather than "Custom { kind: InvalidData, … }").
pub fn reason(e: &io::Error) -> String {
    match e.get_ref() {
        Some(inner) => inner.to_string(),
        None => e.to_string(),
    }
}

/// A client whose TLS handshake failed: logged, counted, and nothing more
/// (no record: nothing was exchanged).
pub fn handshake_failed(listener: &'static str, client: SocketAddr, e: &io::Error) {
    counter!(m::TLS_HANDSHAKE_ERRORS_TOTAL, "listener" => listener).increment(1);
    info!(listener, client = %client, error = %reason(e), "TLS handshake failed");
}

/// Accepts a TLS client on `stream` within [`HANDSHAKE_TIMEOUT`].
pub async fn accept(acceptor: &TlsAcceptor, stream: TcpStream) -> io::Result<Stream> {
    let tls = within_handshake_timeout(acceptor.accept(stream)).await?;
    Ok(Stream::Server(Box::new(tls)))
}

/// Opens TLS to `name` over `stream` within [`HANDSHAKE_TIMEOUT`].
pub async fn connect(
    connector: &TlsConnector,
    name: ServerName<'static>,
    stream: TcpStream,
) -> io::Result<Stream> {
    let tls = within_handshake_timeout(connector.connect(name, stream)).await?;
    Ok(Stream::Client(Box::new(tls)))
}

/// A handshake, or a `TimedOut` error once [`HANDSHAKE_TIMEOUT`] has passed.
async fn within_handshake_timeout<T>(
    handshake: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
            ))
        })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// What the command prints for a config whose TLS files are bad.
    fn setup_error(text: &str) -> String {
        let config =
            Config::parse(text, Path::new("test.json")).expect("the config itself is fine");
        let e = Setup::new(&config)
            .err()
            .expect("the TLS files are refused");
        config.invalid(e.key(), e.message()).to_string()
    }

    #[test]
    fn missing_files_are_named_with_their_key_and_position() {
        let http = r#""http": {"port": 8080, "downstream": "https://localhost:8443"}"#;
        let err = setup_error(&format!(
            r#"{{"mode": "Record", {http},
  "tls": {{"tls_cert": "/nonexistent/c.pem", "tls_key": "/nonexistent/k.pem"}}}}"#
        ));
        assert!(
            err.starts_with("test.json:2:11: tls.tls_cert: `/nonexistent/c.pem`: cannot read it"),
            "{err}"
        );
        let err = setup_error(&format!(
            r#"{{"mode": "Record", {http}, "tls": {{"ca": "/nonexistent/ca.pem"}}}}"#
        ));
        assert!(err.contains(": tls.ca: "), "{err}");
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn a_pem_file_without_a_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let err = setup_error(&format!(
            r#"{{"mode": "Record", "http": {{"port": 1, "downstream": "http://a:1"}}, "tls": {{"ca": "{}"}}}}"#,
            ca.display()
        ));
        assert!(err.contains("tls.ca"), "{err}");
        assert!(err.contains("no CERTIFICATE in it"), "{err}");
    }
}
