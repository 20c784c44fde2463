//! An HTTP exchange as the capture tee took it, before it is encoded into a
//! record: what the capture hands to the recorder.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri, Version};

/// Body chunks up to this size are copied into the record rather than
/// shared with the connection's buffer.
const COPY_UP_TO: usize = 16 * 1024;

/// Body bytes kept for a record, up to a limit.
#[derive(Debug, Default)]
pub struct BodyBuf {
    pub chunks: Vec<Bytes>,
    pub len: usize,
    pub truncated: bool,
}

impl BodyBuf {
    pub(super) fn push(&mut self, chunk: &Bytes, limit: usize) {
        if self.truncated {
            return;
        }
        if self.len + chunk.len() > limit {
            self.truncated = true;
            return;
        }
        self.len += chunk.len();
        // A small chunk is copied: a clone would share the connection's
        // read buffer until the record is written, and hyper would then
        // allocate a new one for every exchange instead of reusing it.
        self.chunks.push(match chunk.len() <= COPY_UP_TO {
            true => Bytes::copy_from_slice(chunk),
            false => chunk.clone(),
        });
    }

    /// One contiguous buffer (copies only when there are several chunks).
    pub fn concat(self) -> Bytes {
        match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.into_iter().next().expect("one chunk"),
            _ => {
                let mut out = Vec::with_capacity(self.len);
                for c in &self.chunks {
                    out.extend_from_slice(c);
                }
                Bytes::from(out)
            }
        }
    }
}

/// An exchange as captured, before it becomes a [`super::Record`].
#[derive(Debug)]
pub struct RawExchange {
    pub captured_at_ms: u64,
    pub client_addr: SocketAddr,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub request_headers: HeaderMap,
    pub request_body: BodyBuf,
    pub status: Option<StatusCode>,
    pub response_headers: HeaderMap,
    pub response_body: BodyBuf,
    pub duration: Duration,
    pub error: Option<String>,
    /// The listener's configured service (`http.service`), if any.
    pub service: Option<std::sync::Arc<str>>,
}
