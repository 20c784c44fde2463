//! The HTTP reverse proxy: HTTP/1.1 and h2c in, pooled HTTP/1.1 out.
//!
//! Phases of one exchange: refuse what a reverse proxy must not forward
//! (`CONNECT`, a missing or repeated `Host`) → strip hop-by-hop headers →
//! start the capture (Record node) → add `X-Forwarded-For` → send to the
//! downstream with the body streamed through a [`TeeBody`] → stream the
//! response back through another. Downstream failure answers 502 with a
//! short reason and is recorded too; a request body the client breaks
//! (bad chunked coding, cut short) answers 400, one that stalls for
//! `http.body_timeout_ms` answers 408.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, HOST};
use http::uri::Authority;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use metrics::counter;
use tracing::{debug, warn};

use super::headers::{append_forwarded_for, strip_hop_by_hop};
use crate::config::Downstream;
use crate::downstream::{http_peer, pooled_client, root_cause, Connector};
use crate::metrics as m;
use crate::record::capture::{Capture, Side, TeeBody};
use crate::record::exchange::BodyBuf;
use crate::record::recorder::Recorder;
use crate::server::{Handler, LogLimiter, LOG_EVERY};

pub type ResponseBody = Either<TeeBody<Incoming>, Full<Bytes>>;

#[derive(Clone)]
pub struct HttpProxy {
    inner: Arc<Inner>,
}

struct Inner {
    /// One pool per worker thread (see [`crate::server::Workers`]), so a
    /// request and its downstream connection share a thread.
    clients: Vec<Client<Connector, TeeBody<ClientBody>>>,
    downstream: Downstream,
    recorder: Option<Recorder>,
    metrics: m::RequestMetrics,
    /// The longest a request body may send nothing.
    body_timeout: Duration,
    /// Bytes a second a request body must average past its first
    /// `body_timeout` (0: no minimum).
    body_min_rate: u64,
    /// `http.service`, stored in each record (else the request's host).
    service: Option<Arc<str>>,
    /// One warning per [`LOG_EVERY`] about a failing downstream.
    failures: Mutex<LogLimiter>,
}

/// What `http.body_timeout_ms` is by default.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

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
        // Scraped at 0 from the start, so rates see the first one.
        for kind in ["bad_request", "timeout", "downstream"] {
            counter!(m::HTTP_ERRORS_TOTAL, "kind" => kind).increment(0);
        }
        if let Some(recorder) = &recorder {
            recorder.counts(crate::record::Protocol::Http);
        }
        HttpProxy {
            inner: Arc::new(Inner {
                clients: (0..pools.max(1))
                    .map(|_| pooled_client(tls.clone()))
                    .collect(),
                metrics: m::RequestMetrics::new("http"),
                downstream,
                recorder,
                body_timeout: BODY_TIMEOUT,
                body_min_rate: 0,
                service: None,
                failures: Mutex::new(LogLimiter::new(LOG_EVERY)),
            }),
        }
    }

    /// The service this listener fronts, stored in each record.
    pub fn with_service(mut self, service: Option<&str>) -> HttpProxy {
        Arc::get_mut(&mut self.inner)
            .expect("set before the proxy is shared")
            .service = service.map(Arc::from);
        self
    }

    /// A request body that sends nothing for `gap`, or (past its first
    /// `gap`) averages fewer than `min_rate` bytes a second, ends its
    /// exchange (408).
    pub fn with_body_timeout(mut self, gap: Duration, min_rate: u64) -> HttpProxy {
        let inner = Arc::get_mut(&mut self.inner).expect("set before the proxy is shared");
        inner.body_timeout = gap;
        inner.body_min_rate = min_rate;
        self
    }
}

/// The client's request body. Its errors have their own type so that a
/// failed exchange can tell the client's broken or stalled body (400, 408)
/// from a failed downstream (502): hyper's client error carries it as a
/// source.
pub struct ClientBody {
    inner: Incoming,
    /// The longest the client may send nothing while a frame is awaited.
    gap: Duration,
    /// Made the first time the body keeps us waiting (a body that comes
    /// with its head never needs one), reset only when a wait follows a
    /// frame: nothing per frame while data flows.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame came since the timer was last set.
    progressed: bool,
    /// Bytes a second the body must average past its first `gap` (0: any).
    min_rate: u64,
    /// Body bytes so far (one add per frame).
    bytes: u64,
    /// When the body first kept us waiting: the rate is measured from here,
    /// so a body that never waits never reads the clock.
    waiting_since: Option<tokio::time::Instant>,
}

impl ClientBody {
    fn new(inner: Incoming, gap: Duration, min_rate: u64) -> ClientBody {
        ClientBody {
            inner,
            gap,
            timer: None,
            progressed: false,
            min_rate,
            bytes: 0,
            waiting_since: None,
        }
    }

    /// Whether the body, waited on for longer than `gap`, averages fewer
    /// than `min_rate` bytes a second since then.
    fn too_slow(&self, now: tokio::time::Instant) -> bool {
        let Some(since) = self.waiting_since else {
            return false;
        };
        let elapsed = now.duration_since(since);
        self.min_rate > 0
            && elapsed > self.gap
            && (self.bytes as f64) < self.min_rate as f64 * elapsed.as_secs_f64()
    }
}

/// Reading the client's request body failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error(transparent)]
    Read(hyper::Error),
    #[error("the client sent nothing for {} ms", .0.as_millis())]
    Stalled(Duration),
    #[error("the client sent the body slower than {0} bytes a second")]
    TooSlow(u64),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.progressed = true;
            if let Some(Ok(frame)) = &frame {
                this.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            return Poll::Ready(frame.map(|f| f.map_err(ClientBodyError::Read)));
        }
        if this.progressed && this.timer.is_some() {
            let now = tokio::time::Instant::now();
            if this.too_slow(now) {
                return Poll::Ready(Some(Err(ClientBodyError::TooSlow(this.min_rate))));
            }
            if let Some(timer) = &mut this.timer {
                timer.as_mut().reset(now + this.gap);
            }
        }
        let timer = match &mut this.timer {
            Some(timer) => timer,
            None => {
                this.waiting_since = Some(tokio::time::Instant::now());
                this.timer.insert(Box::pin(tokio::time::sleep(this.gap)))
            }
        };
        this.progressed = false;
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(ClientBodyError::Stalled(this.gap)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's body error somewhere in `error`'s sources, if it is one.
fn client_body_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ClientBodyError> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(body) = e.downcast_ref::<ClientBodyError>() {
            return Some(body);
        }
        cause = e.source();
    }
    None
}

/// Methods this proxy forwards (any but `CONNECT`), for a 405's `Allow`.
const ALLOWED: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE";

/// What is refused before anything reaches the downstream: `CONNECT` (a
/// reverse proxy opens no tunnels) and, per RFC 9112 §3.2, an HTTP/1.1
/// request without `Host` or any request with several or a malformed one.
/// HTTP/2 names its host in `:authority`, so `Host` is optional there.
fn refusal(parts: &http::request::Parts) -> Option<(StatusCode, String)> {
    if parts.method == Method::CONNECT {
        return Some((
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not served: this is a reverse proxy".into(),
        ));
    }
    let mut hosts = parts.headers.get_all(HOST).iter();
    let bad = |why: String| Some((StatusCode::BAD_REQUEST, why));
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => bad("more than one Host header".into()),
        (None, _) if parts.version == Version::HTTP_11 => {
            bad("an HTTP/1.1 request needs a Host header".into())
        }
        (Some(host), None) if !host.is_empty() && Authority::try_from(host.as_bytes()).is_err() => {
            bad(format!(
                "`{}` is not a host in the Host header",
                String::from_utf8_lossy(host.as_bytes())
            ))
        }
        _ => None,
    }
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
        if let Some((status, why)) = refusal(&parts) {
            inner.metrics.request(&method, status.as_u16());
            counter!(m::HTTP_ERRORS_TOTAL, "kind" => "bad_request").increment(1);
            let mut response = text_response(status, format!("qproxy: {why}\n"));
            if status == StatusCode::METHOD_NOT_ALLOWED {
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(ALLOWED));
            }
            return response.map(Either::Right);
        }
        strip_hop_by_hop(&mut parts.headers);
        let capture = inner.recorder.as_ref().map(|recorder| {
            Capture::new(
                recorder.clone(),
                client,
                parts.method.clone(),
                parts.uri.clone(),
                parts.version,
                parts.headers.clone(),
                inner.service.clone(),
            )
        });
        append_forwarded_for(&mut parts.headers, client.ip());
        parts.uri = match http_peer(&inner.downstream, &parts.uri) {
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
        let body = ClientBody::new(body, inner.body_timeout, inner.body_min_rate);
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
            Err(e)
                if matches!(
                    client_body_error(&e),
                    Some(ClientBodyError::Stalled(_) | ClientBodyError::TooSlow(_))
                ) =>
            {
                let reason = root_cause(&e);
                debug!(client = %client, error = %reason, "request body stalled");
                inner.metrics.request(&method, 408);
                counter!(m::HTTP_ERRORS_TOTAL, "kind" => "timeout").increment(1);
                if let Some(capture) = capture {
                    capture.close(
                        Side::Response,
                        BodyBuf::default(),
                        Some(format!("request body: {reason}")),
                    );
                }
                // The rest of the body may still come: this connection
                // cannot carry another request.
                let mut response = text_response(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("qproxy: the request body stalled: {reason}\n"),
                );
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                response.map(Either::Right)
            }
            Err(e) if client_body_error(&e).is_some() => {
                let reason = root_cause(&e);
                debug!(client = %client, error = %reason, "request body failed");
                inner.metrics.request(&method, 400);
                counter!(m::HTTP_ERRORS_TOTAL, "kind" => "bad_request").increment(1);
                if let Some(capture) = capture {
                    capture.close(
                        Side::Response,
                        BodyBuf::default(),
                        Some(format!("request body: {reason}")),
                    );
                }
                text_response(
                    StatusCode::BAD_REQUEST,
                    format!("qproxy: the request body could not be read: {reason}\n"),
                )
                .map(Either::Right)
            }
            Err(e) => {
                let reason = root_cause(&e);
                let authority = inner.downstream.authority();
                let held = inner
                    .failures
                    .lock()
                    .map_or(None, |mut l| l.allow(Instant::now()));
                if let Some(held) = held {
                    warn!(listener = "http", client = %client, error = %reason,
                        failed_since_last_line = held,
                        "downstream {authority} failed; answering 502");
                }
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
