//! Capturing a gRPC call while it is proxied: one record per call.
//!
//! The proxy's two bodies feed each message to a [`GrpcCapture`] as the
//! [`Framer`](crate::model::grpc::Framer) cuts it out; the capture keeps
//! messages up to `record.max_body_bytes` for the whole call (past it the
//! call is marked truncated and messages are only counted), and when the
//! last holder lets go — the call ended, failed or was cancelled — the
//! record goes to the [`Recorder`] queue. A stream open for hours holds at
//! most that many bytes, and is written when it ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::HeaderMap;

pub use super::capture::Side;
use super::recorder::Recorder;
use super::{header_value_to_string, Exchange, GrpcCall, GrpcMessage, Header, Record};
use crate::model::grpc::{service_of, Framed, STATUS_HEADER};
use crate::model::headers::is_hop_by_hop;

/// The call being captured, shared by the proxy and both bodies.
#[derive(Clone)]
pub struct GrpcCapture {
    shared: Arc<Shared>,
}

struct Shared {
    recorder: Recorder,
    started: Instant,
    captured_at_ms: u64,
    client: SocketAddr,
    service: Option<String>,
    max_bytes: usize,
    /// Response messages the client has been sent so far.
    responses: AtomicU32,
    state: Mutex<State>,
}

struct State {
    call: GrpcCall,
    kept: usize,
    error: Option<String>,
    duration_us: Option<u64>,
}

/// Metadata as stored: in order, less hop-by-hop headers.
pub fn metadata(headers: &HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name))
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                header_value_to_string(value.as_bytes()),
            )
        })
        .collect()
}

impl GrpcCapture {
    /// Starts capturing a call to `method`; `service` is the listener's
    /// (else the method path's).
    pub fn new(
        recorder: Recorder,
        client: SocketAddr,
        method: &str,
        request_headers: &HeaderMap,
        service: Option<&str>,
    ) -> GrpcCapture {
        let service = service.or_else(|| service_of(method)).map(str::to_string);
        GrpcCapture {
            shared: Arc::new(Shared {
                max_bytes: recorder.max_body_bytes(),
                recorder,
                started: Instant::now(),
                captured_at_ms: crate::clock::now_ms(),
                client,
                service,
                responses: AtomicU32::new(0),
                state: Mutex::new(State {
                    call: GrpcCall {
                        method: method.to_string(),
                        request_metadata: metadata(request_headers),
                        ..GrpcCall::default()
                    },
                    kept: 0,
                    error: None,
                    duration_us: None,
                }),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("grpc capture lock")
    }

    /// Whether a message of `len` bytes is kept: while the call's kept
    /// bytes stay within `record.max_body_bytes` (the room is taken now).
    pub fn keep(&self, len: u64) -> bool {
        let mut state = self.state();
        let fits = !state.call.truncated && state.kept as u64 + len <= self.shared.max_bytes as u64;
        if fits {
            state.kept += len as usize;
        } else {
            state.call.truncated = true;
        }
        fits
    }

    fn at_us(&self) -> u64 {
        self.shared.started.elapsed().as_micros() as u64
    }

    /// A message the client (`Side::Request`) or the downstream
    /// (`Side::Response`) sent: counted, and kept when `keep` allowed it.
    pub fn message(&self, side: Side, message: Framed) {
        let at_us = self.at_us();
        let after = match side {
            Side::Request => self.shared.responses.load(Ordering::Relaxed),
            Side::Response => {
                self.shared.responses.fetch_add(1, Ordering::Relaxed);
                0
            }
        };
        let mut state = self.state();
        let call = &mut state.call;
        let (count, bytes, kept) = match side {
            Side::Request => (
                &mut call.request_count,
                &mut call.request_bytes,
                &mut call.request_messages,
            ),
            Side::Response => (
                &mut call.response_count,
                &mut call.response_bytes,
                &mut call.response_messages,
            ),
        };
        *count += 1;
        *bytes += message.len;
        if let Some(data) = message.data {
            kept.push(GrpcMessage {
                at_us,
                compressed: message.compressed,
                after,
                data: data.into(),
            });
        }
    }

    /// The downstream answered with this head (in a Trailers-Only answer
    /// the status is in it, and it counts as the trailers).
    pub fn response_head(&self, status: u16, headers: &HeaderMap) {
        let mut state = self.state();
        state.call.http_status = Some(status);
        if headers.contains_key(STATUS_HEADER) {
            state.call.trailers = metadata(headers);
            state.call.status = grpc_status(headers);
        } else {
            state.call.response_metadata = metadata(headers);
        }
    }

    /// The call ended with these trailers.
    pub fn trailers(&self, trailers: &HeaderMap) {
        let duration = self.at_us();
        let mut state = self.state();
        state.call.trailers = metadata(trailers);
        state.call.status = grpc_status(trailers);
        state.duration_us = Some(duration);
    }

    /// What went wrong, when the call did not end as the downstream meant
    /// (the first reason given is kept).
    pub fn fail(&self, error: String) {
        let duration = self.at_us();
        let mut state = self.state();
        state.error.get_or_insert(error);
        state.duration_us.get_or_insert(duration);
    }
}

/// `grpc-status` of a header block, if it has a valid one.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get(STATUS_HEADER)?.to_str().ok()?.parse().ok()
}

impl Drop for Shared {
    fn drop(&mut self) {
        let state = self.state.get_mut().expect("grpc capture lock");
        let duration_us = state
            .duration_us
            .unwrap_or_else(|| self.started.elapsed().as_micros() as u64);
        let call = std::mem::take(&mut state.call);
        let error = state.error.take().or_else(|| {
            call.status
                .is_none()
                .then(|| "the call ended without a grpc-status".to_string())
        });
        let record = Record {
            id: None,
            shard: 0,
            captured_at_ms: self.captured_at_ms,
            duration_us,
            client_addr: self.client.to_string(),
            error,
            service: self.service.take(),
            exchange: Exchange::Grpc(call),
        };
        self.recorder.submit_record(record, self.client.ip());
    }
}
