//! The gRPC proxy: HTTP/2 in (h2c, or TLS with ALPN `h2`), each call to
//! the next of `grpc.downstream` round robin, over one HTTP/2 channel per
//! endpoint.
//!
//! Messages are opaque: the bodies are forwarded frame by frame as they
//! arrive (nothing buffers a stream; HTTP/2 flow control carries a slow
//! reader's pace back to the writer), while a [`Framer`] on each side cuts
//! the stream into messages for the record and checks each length prefix.
//!
//! Phases of one call: refuse what is not gRPC (HTTP/1.1: 505, not POST:
//! 405, not `application/grpc`: 415) → strip hop-by-hop headers, keep
//! `te: trailers` → start the capture (Record node) → pick an endpoint; one
//! that cannot be reached is passed over for a while and the call goes to
//! the next with its body unread → stream both ways. What QProxy itself
//! answers is a gRPC status: `UNAVAILABLE` naming every endpoint tried when
//! none could be reached, `RESOURCE_EXHAUSTED` for a message over
//! `grpc.max_message_bytes`, `INTERNAL` for a stream that breaks framing,
//! and the mapped `RST_STREAM` code when the downstream resets a call.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, TE};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use metrics::counter;
use tracing::debug;

use super::headers::{append_forwarded_for, strip_hop_by_hop};
use crate::config::Downstream;
use crate::downstream::{root_cause, Endpoints, H2Channels, H2Error, StaticDiscovery};
use crate::metrics::{self as m, GrpcMethod, GrpcMetrics};
use crate::model::grpc::{
    code, code_name, encode_message, FrameError, Framer, MESSAGE_HEADER, STATUS_HEADER,
};
use crate::record::grpc::{grpc_status, GrpcCapture, Side};
use crate::record::recorder::Recorder;
use crate::server::Handler;

pub type ResponseBody = Either<CallBody, Full<Bytes>>;

/// The kinds of `grpc_errors_total`.
const ERROR_KINDS: [&str; 5] = [
    "bad_request",
    "frame",
    "unavailable",
    "downstream",
    "cancelled",
];

/// The name `grpc.downstream` goes by in the round robin.
const DOWNSTREAMS: &str = "grpc.downstream";

#[derive(Clone)]
pub struct GrpcProxy {
    inner: Arc<Inner>,
}

struct Inner {
    /// One set of channels per worker thread, as the HTTP proxy's pools.
    channels: Vec<H2Channels<RequestBody>>,
    endpoints: Endpoints,
    endpoint_count: usize,
    recorder: Option<Recorder>,
    /// `grpc.service`, stored in each record (else the method's service).
    service: Option<Arc<str>>,
    max_message: u64,
    metrics: GrpcMetrics,
}

impl GrpcProxy {
    /// A proxy to `downstreams` (https ones with `tls`) with `pools` sets of
    /// channels (one per worker thread); with a recorder, every call is
    /// recorded.
    pub fn new(
        downstreams: Vec<Downstream>,
        recorder: Option<Recorder>,
        tls: &rustls::ClientConfig,
        pools: usize,
    ) -> GrpcProxy {
        let endpoint_count = downstreams.len();
        // Failure counters are scraped at 0 from the start (rate() and the
        // alert rules see the first failure).
        for kind in ERROR_KINDS {
            counter!(m::GRPC_ERRORS_TOTAL, "kind" => kind).increment(0);
        }
        GrpcProxy {
            inner: Arc::new(Inner {
                channels: (0..pools.max(1)).map(|_| H2Channels::new(tls)).collect(),
                endpoints: Endpoints::new(Arc::new(StaticDiscovery::of(DOWNSTREAMS, downstreams))),
                endpoint_count,
                recorder,
                service: None,
                max_message: 64 << 20,
                metrics: GrpcMetrics::new(),
            }),
        }
    }

    /// The service this listener fronts and the largest message allowed.
    pub fn with_limits(mut self, service: Option<&str>, max_message: u64) -> GrpcProxy {
        let inner = Arc::get_mut(&mut self.inner).expect("set before the proxy is shared");
        inner.service = service.map(Arc::from);
        inner.max_message = max_message;
        self
    }
}

/// What a call's parts share: its metrics, its capture, how it ended.
/// Metrics are counted when the last part lets go.
struct Call {
    method: Arc<GrpcMethod>,
    started: Instant,
    capture: Option<GrpcCapture>,
    state: Mutex<CallState>,
}

#[derive(Default)]
struct CallState {
    /// The status the client was sent, once it was.
    status: Option<u32>,
    request_bytes: u64,
    response_bytes: u64,
    /// A broken request stream, found by the request body.
    request_error: Option<FrameError>,
    /// `grpc_errors_total`'s kind for this call, if it failed.
    error_kind: Option<&'static str>,
}

impl Call {
    fn state(&self) -> std::sync::MutexGuard<'_, CallState> {
        self.state.lock().expect("call lock")
    }

    /// The client was sent `status` (the first one counts).
    fn ended(&self, status: u32) {
        self.state().status.get_or_insert(status);
    }

    fn failed(&self, kind: &'static str) {
        self.state().error_kind.get_or_insert(kind);
    }

    /// A data frame going `side`: its bytes counted, cut into messages for
    /// the capture (kept while the record's cap allows).
    fn data(&self, side: Side, framer: &mut Framer, data: &Bytes) -> Result<(), FrameError> {
        match side {
            Side::Request => self.state().request_bytes += data.len() as u64,
            Side::Response => self.state().response_bytes += data.len() as u64,
        }
        framer.push(
            data.clone(),
            |len| self.capture.as_ref().is_some_and(|c| c.keep(len)),
            |message| {
                if let Some(capture) = &self.capture {
                    capture.message(side, message);
                }
            },
        )
    }

    /// When the request stream broke framing: the status and message the
    /// client gets for it (the call counted as a `frame` error).
    fn broken_request(&self) -> Option<(u32, String)> {
        let error = self.state().request_error.clone()?;
        self.failed("frame");
        Some((
            error.code(),
            format!("qproxy: the request stream is broken: {error}"),
        ))
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let state = self.state.get_mut().expect("call lock");
        let status = match state.status {
            Some(status) => status,
            None => {
                // Every other way out sends a status: the client left.
                state.error_kind.get_or_insert("cancelled");
                if let Some(capture) = &self.capture {
                    capture.fail("the client cancelled the call".into());
                }
                code::CANCELLED
            }
        };
        self.method.call(Some(status), code_name(status));
        self.method
            .duration
            .record(self.started.elapsed().as_secs_f64());
        self.method.request_size.record(state.request_bytes as f64);
        self.method
            .response_size
            .record(state.response_bytes as f64);
        if let Some(kind) = state.error_kind {
            counter!(m::GRPC_ERRORS_TOTAL, "kind" => kind).increment(1);
        }
    }
}

/// A Trailers-Only answer from QProxy itself: HTTP 200 with the status in
/// the headers and no body.
fn status_response(status: u32, message: &str) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    *response.headers_mut() = status_headers(status, message);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// `grpc-status` and `grpc-message` (percent-encoded) of QProxy's own.
fn status_headers(status: u32, message: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(STATUS_HEADER, HeaderValue::from(status));
    if let Ok(value) = HeaderValue::from_str(&encode_message(message)) {
        headers.insert(MESSAGE_HEADER, value);
    }
    headers
}

/// A plain HTTP answer for what is not a gRPC call at all.
fn http_refusal(status: StatusCode, text: &str) -> Response<ResponseBody> {
    let mut response = super::http::text_response(status, format!("qproxy: {text}\n"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
    }
    response.map(Either::Right)
}

/// What is refused before anything reaches the downstream.
fn refusal(parts: &http::request::Parts) -> Option<Response<ResponseBody>> {
    if parts.version != Version::HTTP_2 {
        return Some(http_refusal(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "this is the gRPC port: gRPC needs HTTP/2 (h2c, or TLS with ALPN h2)",
        ));
    }
    if parts.method != Method::POST {
        return Some(http_refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "gRPC calls are POST requests",
        ));
    }
    let grpc = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !grpc {
        // As the gRPC spec asks of a server: 415 for another content type.
        return Some(http_refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not a gRPC call: the content-type must be application/grpc",
        ));
    }
    None
}

/// `target`'s URI for a call to `path`.
fn call_uri(target: &Downstream, path: &PathAndQuery) -> Result<Uri, http::Error> {
    Uri::builder()
        .scheme(match target.is_https() {
            true => Scheme::HTTPS,
            false => Scheme::HTTP,
        })
        .authority(target.authority().clone())
        .path_and_query(path.clone())
        .build()
}

/// The gRPC status for a stream the downstream reset or a connection
/// that broke (the gRPC spec's mapping of `RST_STREAM` codes).
fn reset_status(error: &(dyn std::error::Error + 'static)) -> u32 {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return match h2.reason() {
                Some(h2::Reason::REFUSED_STREAM) => code::UNAVAILABLE,
                Some(h2::Reason::CANCEL) => code::CANCELLED,
                Some(h2::Reason::ENHANCE_YOUR_CALM) => code::RESOURCE_EXHAUSTED,
                Some(_) => code::INTERNAL,
                None => code::UNAVAILABLE,
            };
        }
        cause = e.source();
    }
    code::UNAVAILABLE
}

impl Handler<ResponseBody> for GrpcProxy {
    async fn call(&self, req: Request<Incoming>, client: SocketAddr) -> Response<ResponseBody> {
        let inner = &self.inner;
        let (mut parts, body) = req.into_parts();
        if let Some(refused) = refusal(&parts) {
            counter!(m::GRPC_ERRORS_TOTAL, "kind" => "bad_request").increment(1);
            return refused;
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        strip_hop_by_hop(&mut parts.headers);
        let capture = inner.recorder.as_ref().map(|recorder| {
            GrpcCapture::new(
                recorder.clone(),
                client,
                path.path(),
                &parts.headers,
                inner.service.as_deref(),
            )
        });
        parts
            .headers
            .insert(TE, HeaderValue::from_static("trailers"));
        append_forwarded_for(&mut parts.headers, client.ip());
        let call = Arc::new(Call {
            method: inner.metrics.method(path.path()),
            started: Instant::now(),
            capture,
            state: Mutex::new(CallState::default()),
        });
        let body = RequestBody {
            inner: body,
            framer: Framer::new(inner.max_message),
            call: call.clone(),
        };
        let mut request = Request::from_parts(parts, body);
        let channels =
            &inner.channels[crate::server::worker_index().unwrap_or(0) % inner.channels.len()];
        let mut tried: Vec<(String, String)> = Vec::new();
        // Each endpoint at most once; a round robin shared with other
        // calls may hand out one twice.
        for _ in 0..inner.endpoint_count * 2 {
            if tried.len() == inner.endpoint_count {
                break;
            }
            let Some(target) = inner.endpoints.pick(DOWNSTREAMS) else {
                break;
            };
            let name = target.authority().to_string();
            if tried.iter().any(|(t, _)| *t == name) {
                continue;
            }
            *request.uri_mut() = match call_uri(&target, &path) {
                Ok(uri) => uri,
                Err(e) => {
                    call.failed("bad_request");
                    return answer(&call, code::INTERNAL, &format!("bad method path: {e}"));
                }
            };
            match channels.send(&target, request).await {
                Ok(response) => return respond(response, call, name),
                Err(H2Error::Unreachable(reason, back)) => {
                    inner.endpoints.refused(&target);
                    debug!(client = %client, downstream = %name, error = %reason, "grpc downstream unreachable; trying the next");
                    tried.push((name, reason));
                    request = *back;
                }
                Err(H2Error::Failed(e)) => {
                    if let Some((status, message)) = call.broken_request() {
                        return answer(&call, status, &message);
                    }
                    let reason = root_cause(&e);
                    debug!(client = %client, downstream = %name, error = %reason, "grpc downstream failed");
                    call.failed("downstream");
                    let message = format!("qproxy: downstream {name} failed: {reason}");
                    return answer(&call, reset_status(&e), &message);
                }
            }
        }
        let list = match tried.is_empty() {
            true => "none configured".to_string(),
            false => tried
                .iter()
                .map(|(name, reason)| format!("{name} ({reason})"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        debug!(client = %client, downstreams = %list, "no grpc downstream reachable");
        call.failed("unavailable");
        answer(
            &call,
            code::UNAVAILABLE,
            &format!("qproxy: no gRPC downstream could be reached: {list}"),
        )
    }
}

/// QProxy answers the call itself with `status`, recorded as its error.
fn answer(call: &Call, status: u32, message: &str) -> Response<ResponseBody> {
    call.ended(status);
    if let Some(capture) = &call.capture {
        capture.fail(message.to_string());
    }
    status_response(status, message)
}

/// The downstream's answer, its body passed on as it comes.
fn respond(
    response: Response<Incoming>,
    call: Arc<Call>,
    downstream: String,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(capture) = &call.capture {
        capture.response_head(parts.status.as_u16(), &parts.headers);
    }
    // A Trailers-Only answer: its status is in the head.
    let head_status = grpc_status(&parts.headers);
    if let Some(status) = head_status {
        call.ended(status);
    }
    let trailers_only = head_status.is_some();
    let body = CallBody {
        inner: body,
        framer: Framer::new(u64::MAX),
        trailers_only,
        call,
        downstream,
        done: false,
    };
    Response::from_parts(parts, Either::Left(body))
}

/// The client's messages on their way to the downstream.
pub struct RequestBody {
    inner: Incoming,
    framer: Framer,
    call: Arc<Call>,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                return Poll::Ready(match this.framer.end() {
                    Ok(()) => None,
                    Err(e) => Some(Err(this.broken(e))),
                })
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let Some(data) = frame.data_ref() {
            if let Err(e) = this.call.data(Side::Request, &mut this.framer, data) {
                return Poll::Ready(Some(Err(this.broken(e))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        // Not while a message is cut short: the next poll reports it, and
        // the downstream's stream is reset rather than ended.
        self.inner.is_end_stream() && self.framer.end().is_ok()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl RequestBody {
    /// The request stream broke framing: kept for the answer, and the
    /// downstream's stream is reset.
    fn broken(&self, error: FrameError) -> Box<dyn std::error::Error + Send + Sync> {
        self.call.state().request_error.get_or_insert(error.clone());
        Box::new(error)
    }
}

/// The downstream's messages on their way to the client. A failure on the
/// way becomes trailers with a status, so the client always learns how
/// its call ended.
pub struct CallBody {
    inner: Incoming,
    /// Unchecked lengths on this side: the downstream's limits are its own.
    framer: Framer,
    /// The head carried the status: an empty body ends the call as is.
    trailers_only: bool,
    call: Arc<Call>,
    downstream: String,
    done: bool,
}

impl CallBody {
    /// Ends the call with `status` in trailers of QProxy's own.
    fn end_with(&mut self, status: u32, message: &str) -> Frame<Bytes> {
        self.done = true;
        self.call.ended(status);
        let trailers = status_headers(status, message);
        if let Some(capture) = &self.call.capture {
            capture.fail(message.to_string());
            capture.trailers(&trailers);
        }
        Frame::trailers(trailers)
    }
}

impl Body for CallBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                this.done = true;
                let status = this.call.state().status;
                if status.is_none() {
                    // Neither trailers nor a Trailers-Only head.
                    let message = format!(
                        "qproxy: downstream {} ended the call without a status",
                        this.downstream
                    );
                    this.call.failed("downstream");
                    return Poll::Ready(Some(Ok(this.end_with(code::INTERNAL, &message))));
                }
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                let frame = match this.call.broken_request() {
                    Some((status, message)) => this.end_with(status, &message),
                    None => {
                        this.call.failed("downstream");
                        let message = format!(
                            "qproxy: downstream {} failed during the call: {}",
                            this.downstream,
                            root_cause(&e)
                        );
                        this.end_with(reset_status(&e), &message)
                    }
                };
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let call = &this.call;
        if let Some(data) = frame.data_ref() {
            if let Err(e) = call.data(Side::Response, &mut this.framer, data) {
                call.failed("frame");
                let message = format!(
                    "qproxy: downstream {} sent a broken stream: {e}",
                    this.downstream
                );
                return Poll::Ready(Some(Ok(this.end_with(code::INTERNAL, &message))));
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            this.done = true;
            let status = grpc_status(trailers).unwrap_or(code::UNKNOWN);
            call.ended(status);
            if let Some(capture) = &call.capture {
                capture.trailers(trailers);
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        // A Trailers-Only answer must stay one (headers with END_STREAM).
        self.done || (self.trailers_only && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
