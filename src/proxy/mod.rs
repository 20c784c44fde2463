//! The proxy listeners: where zone traffic enters a node.
//!
//! HTTP ([`http::HttpProxy`]) and raw TCP ([`tcp::TcpProxy`]); gRPC comes next.

pub mod headers;
pub mod http;
pub mod tcp;

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A pooled HTTP/1.1 client with keep-alive and `TCP_NODELAY`, for
/// proxying and replaying.
pub fn pooled_client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_keepalive(Some(Duration::from_secs(60)));
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
