//! The HTTP reverse proxy: HTTP/1.1 and h2c in, pooled HTTP/1.1 out.
//!
//! Phases of one exchange: strip hop-by-hop headers → start the capture
//! (Record node) → add `X-Forwarded-For` → send to the downstream with the
//! body streamed through a [`TeeBody`] → stream the response back through
//! another. Downstream failure answers 502 with a short reason and is
//! recorded too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use metrics::counter;
use tracing::debug;

use super::headers::{append_forwarded_for, strip_hop_by_hop};
use crate::config::Downstream;
use crate::metrics as m;
use crate::record::capture::{BodyBuf, Capture, Side, TeeBody};
use crate::record::recorder::Recorder;
use crate::server::Handler;

pub type ResponseBody = Either<TeeBody<Incoming>, Full<Bytes>>;

#[derive(Clone)]
pub struct HttpProxy {
    inner: Arc<Inner>,
}

struct Inner {
    /// One pool per worker thread (see [`crate::server::Workers`]), so a
    /// request and its downstream connection share a thread.
    clients: Vec<Client<super::Connector, TeeBody<Incoming>>>,
    downstream: Downstream,
    recorder: Option<Recorder>,
    metrics: m::RequestMetrics,
}

impl HttpProxy {
    /// A proxy to `downstream` (https ones with `tls`) with `pools`
    /// connection pools (one per worker thread); with a recorder, every
    /// exchange is recorded.
    pub fn new(
        downstream: Downstream,
        recorder: Option<Recorder>,
        tls: Arc<rustls::ClientConfig>,
        pools: usize,
    ) -> HttpProxy {
        HttpProxy {
            inner: Arc::new(Inner {
                clients: (0..pools.max(1))
                    .map(|_| super::pooled_client(tls.clone()))
                    .collect(),
                metrics: m::RequestMetrics::new("http"),
                downstream,
                recorder,
            }),
        }
    }
}

/// The downstream URI for a request URI: the downstream's scheme, authority
/// and path prefix, then the request's path and query.
pub fn target_uri(downstream: &Downstream, uri: &Uri) -> Result<Uri, http::Error> {
    let prefix = downstream.path_prefix();
    let path_and_query = match (prefix.is_empty(), uri.path_and_query()) {
        (true, Some(pq)) => pq.clone(),
        (true, None) => PathAndQuery::from_static("/"),
        (false, pq) => {
            let pq = pq.map_or("/", PathAndQuery::as_str);
            PathAndQuery::try_from(format!("{prefix}{pq}"))?
        }
    };
    let scheme = if downstream.is_https() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    Uri::builder()
        .scheme(scheme)
        .authority(downstream.authority().clone())
        .path_and_query(path_and_query)
        .build()
}

/// A short plain-text answer from QProxy itself.
pub fn text_response(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl Handler<ResponseBody> for HttpProxy {
    async fn call(&self, req: Request<Incoming>, client: SocketAddr) -> Response<ResponseBody> {
        let started = Instant::now();
        let inner = &self.inner;
        let (mut parts, body) = req.into_parts();
        let method = parts.method.clone();
        strip_hop_by_hop(&mut parts.headers);
        let capture = inner.recorder.as_ref().map(|recorder| {
            Capture::new(
                recorder.clone(),
                client,
                parts.method.clone(),
                parts.uri.clone(),
                parts.version,
                parts.headers.clone(),
            )
        });
        append_forwarded_for(&mut parts.headers, client.ip());
        parts.uri = match target_uri(&inner.downstream, &parts.uri) {
            Ok(uri) => uri,
            Err(e) => {
                counter!(m::HTTP_ERRORS_TOTAL, "kind" => "bad_request").increment(1);
                if let Some(capture) = capture {
                    capture.close(
                        Side::Response,
                        BodyBuf::default(),
                        Some(format!("bad request uri: {e}")),
                    );
                }
                return text_response(
                    StatusCode::BAD_REQUEST,
                    format!("qproxy: bad request uri: {e}\n"),
                )
                .map(Either::Right);
            }
        };
        parts.version = Version::HTTP_11;
        if let Some(len) = http_body::Body::size_hint(&body).exact() {
            inner.metrics.request_size.record(len as f64);
        }
        let body = match &capture {
            Some(capture) => TeeBody::tapped(body, capture.clone(), Side::Request),
            None => TeeBody::plain(body),
        };
        let pool = crate::server::worker_index().unwrap_or(0) % inner.clients.len();
        match inner.clients[pool]
            .request(Request::from_parts(parts, body))
            .await
        {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let metrics = &inner.metrics;
                metrics.request(&method, parts.status.as_u16());
                metrics.duration.record(started.elapsed().as_secs_f64());
                if let Some(len) = http_body::Body::size_hint(&body).exact() {
                    metrics.response_size.record(len as f64);
                }
                let body = match capture {
                    Some(capture) => {
                        capture.set_response_head(parts.status, parts.headers.clone());
                        TeeBody::tapped(body, capture, Side::Response)
                    }
                    None => TeeBody::plain(body),
                };
                Response::from_parts(parts, Either::Left(body))
            }
            Err(e) => {
                let reason = super::root_cause(&e);
                let authority = inner.downstream.authority();
                debug!(client = %client, downstream = %authority, error = %reason, "downstream failed");
                inner.metrics.request(&method, 502);
                counter!(m::HTTP_ERRORS_TOTAL, "kind" => "downstream").increment(1);
                if let Some(capture) = capture {
                    capture.close(
                        Side::Response,
                        BodyBuf::default(),
                        Some(format!("downstream {authority}: {reason}")),
                    );
                }
                text_response(
                    StatusCode::BAD_GATEWAY,
                    format!("qproxy: downstream {authority} failed: {reason}\n"),
                )
                .map(Either::Right)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_uri_keeps_path_and_query_and_adds_prefix() {
        let plain: Downstream = "http://127.0.0.1:9000".parse().unwrap();
        let uri: Uri = "/a/b?x=1&y=%20".parse().unwrap();
        assert_eq!(
            target_uri(&plain, &uri).unwrap().to_string(),
            "http://127.0.0.1:9000/a/b?x=1&y=%20"
        );
        let prefixed: Downstream = "http://h:1/base/".parse().unwrap();
        assert_eq!(
            target_uri(&prefixed, &uri).unwrap().to_string(),
            "http://h:1/base/a/b?x=1&y=%20"
        );
        let absolute: Uri = "http://other:5/p?q".parse().unwrap();
        assert_eq!(
            target_uri(&plain, &absolute).unwrap().to_string(),
            "http://127.0.0.1:9000/p?q"
        );
    }
}
