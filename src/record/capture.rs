//! Capturing an exchange while it is proxied, without slowing it down.
//!
//! The request and response bodies are wrapped in a [`TeeBody`] that passes
//! every frame through untouched and keeps a cheap clone of its bytes (a
//! reference count, not a copy). When both sides are done — ended, failed
//! or dropped — the exchange goes to the [`Recorder`] queue. Nothing here
//! waits for the store.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};

use super::exchange::{BodyBuf, RawExchange};
use super::recorder::Recorder;

/// Which half of an exchange a [`TeeBody`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// The exchange being captured, shared by its two bodies. The lock is taken
/// a few times per exchange, never per frame.
#[derive(Clone)]
pub struct Capture {
    shared: Arc<Shared>,
}

struct Shared {
    recorder: Recorder,
    started: Instant,
    state: Mutex<CaptureState>,
}

struct CaptureState {
    exchange: Option<RawExchange>,
    /// Sides still open; the one that closes last submits.
    open: u8,
}

impl Capture {
    pub fn new(
        recorder: Recorder,
        client_addr: SocketAddr,
        method: Method,
        uri: Uri,
        version: Version,
        request_headers: HeaderMap,
        service: Option<Arc<str>>,
    ) -> Capture {
        let exchange = RawExchange {
            captured_at_ms: crate::clock::now_ms(),
            client_addr,
            method,
            uri,
            version,
            request_headers,
            request_body: BodyBuf::default(),
            status: None,
            response_headers: HeaderMap::new(),
            response_body: BodyBuf::default(),
            duration: Duration::ZERO,
            error: None,
            service,
        };
        Capture {
            shared: Arc::new(Shared {
                recorder,
                started: Instant::now(),
                state: Mutex::new(CaptureState {
                    exchange: Some(exchange),
                    open: 2,
                }),
            }),
        }
    }

    pub fn max_body_bytes(&self) -> usize {
        self.shared.recorder.max_body_bytes()
    }

    /// The downstream answered with this head.
    pub fn set_response_head(&self, status: StatusCode, headers: HeaderMap) {
        let mut state = self.shared.state.lock().expect("capture lock");
        if let Some(ex) = state.exchange.as_mut() {
            ex.status = Some(status);
            ex.response_headers = headers;
        }
    }

    /// Closes one side with its body bytes and, maybe, an error.
    pub fn close(&self, side: Side, body: BodyBuf, error: Option<String>) {
        let ready = {
            let mut state = self.shared.state.lock().expect("capture lock");
            let Some(ex) = state.exchange.as_mut() else {
                return;
            };
            match side {
                Side::Request => ex.request_body = body,
                Side::Response => ex.response_body = body,
            }
            if ex.error.is_none() {
                ex.error = error;
            }
            if side == Side::Response {
                ex.duration = self.shared.started.elapsed();
            }
            state.open = state.open.saturating_sub(1);
            if state.open == 0 {
                state.exchange.take()
            } else {
                None
            }
        };
        if let Some(exchange) = ready {
            self.shared.recorder.submit(exchange);
        }
    }
}

/// A body that forwards every frame and keeps the data for a [`Capture`].
pub struct TeeBody<B> {
    inner: B,
    tap: Option<Tap>,
}

struct Tap {
    capture: Capture,
    side: Side,
    buf: BodyBuf,
    limit: usize,
}

impl<B> TeeBody<B> {
    /// A body that only forwards.
    pub fn plain(inner: B) -> Self {
        TeeBody { inner, tap: None }
    }

    /// A body that forwards and captures; an empty one closes its side at once.
    pub fn tapped(inner: B, capture: Capture, side: Side) -> Self
    where
        B: Body,
    {
        let limit = capture.max_body_bytes();
        let mut body = TeeBody {
            inner,
            tap: Some(Tap {
                capture,
                side,
                buf: BodyBuf::default(),
                limit,
            }),
        };
        if body.inner.is_end_stream() {
            body.finish(None);
        }
        body
    }

    fn finish(&mut self, error: Option<String>) {
        if let Some(tap) = self.tap.take() {
            tap.capture.close(tap.side, tap.buf, error);
        }
    }
}

impl<B> Body for TeeBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(tap), Some(data)) = (this.tap.as_mut(), frame.data_ref()) {
                    tap.buf.push(data, tap.limit);
                }
                if this.inner.is_end_stream() {
                    this.finish(None);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let side = match this.tap.as_ref().map(|t| t.side) {
                    Some(Side::Request) => "request",
                    _ => "response",
                };
                this.finish(Some(format!("{side} body failed: {e}")));
            }
            Poll::Ready(None) => this.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for TeeBody<B> {
    fn drop(&mut self) {
        let error = match self.tap.as_ref().map(|tap| tap.side) {
            None => return,
            // A request body that was not read in full is what it is: the
            // downstream answered without needing the rest.
            Some(Side::Request) => None,
            Some(Side::Response) => Some("client went away before the response ended".to_string()),
        };
        self.finish(error);
    }
}
