//! The pooled HTTP client every outbound HTTP request uses: the proxy's
//! downstream, replays, the sync link.

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// `http://` and `https://` (HTTP/1.1 by ALPN) over pooled connections.
pub type Connector = HttpsConnector<HttpConnector>;

/// A pooled HTTP/1.1 client with keep-alive and `TCP_NODELAY`, for
/// proxying, replaying and the sync link; `https://` URLs use `tls`.
pub fn pooled_client<B>(tls: Arc<rustls::ClientConfig>) -> Client<Connector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(tls))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

/// The innermost cause of an error, which is what a person needs to read
/// ("Connection refused", not "client error (Connect)").
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
