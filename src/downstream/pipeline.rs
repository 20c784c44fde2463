//! A pipelined HTTP/1.1 client for replays: one connection per run of
//! records, requests written back to back, answers read in order.
//!
//! hyper's client waits for each answer before it sends the next request on
//! a connection, so an in-order replay paid a round trip (and two wake-ups
//! on each side) per record. Here the caller queues up to its depth of
//! requests, and [`Connection::response`] writes what is queued while it
//! reads the oldest request's answer (one task, no lock, no spawn). The
//! answers are parsed by [`ResponseParser`] (plain data, no I/O):
//! `Content-Length`, chunked and close-delimited bodies, `HEAD`, 1xx, 204
//! and 304, and `Connection: close`.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite};

use super::TcpTarget;
use crate::config::Downstream;
use crate::tls::Stream;

/// How long a connection waits in the pool for its next run.
const IDLE_FOR: Duration = Duration::from_secs(30);
/// Idle connections kept per target (one per shard replaying to it).
const MAX_IDLE: usize = 64;
/// Bodies up to this size are copied behind their head (one write for
/// many small requests); larger ones are written from the record's bytes.
const COPY_BODY_UP_TO: usize = 16 << 10;
/// Response headers allowed (hyper's client allows as many).
const MAX_HEADERS: usize = 100;
/// What one read asks for at least.
const READ_CHUNK: usize = 32 << 10;

/// Connections to replay targets, kept between runs.
pub struct PipelineClient {
    /// The node's client config with ALPN `http/1.1` only.
    tls: Arc<rustls::ClientConfig>,
    idle: Mutex<HashMap<String, Vec<(Instant, Connection)>>>,
}

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(String);

impl PipelineClient {
    /// `https://` targets use `tls` (its roots and client certificate).
    pub fn new(tls: &rustls::ClientConfig) -> PipelineClient {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        PipelineClient {
            tls: Arc::new(tls),
            idle: Mutex::default(),
        }
    }

    /// An idle connection to `target` that the target has not closed, or a
    /// new one.
    pub async fn connection(&self, target: &Downstream) -> Result<Connection, ConnectError> {
        let key = pool_key(target);
        while let Some((since, mut conn)) = self.take_idle(&key) {
            if since.elapsed() < IDLE_FOR && conn.still_open() {
                return Ok(conn);
            }
        }
        let tls = target.is_https().then(|| self.tls.clone());
        let stream = TcpTarget::new(&target.host_port(), tls)
            .map_err(|e| ConnectError(e.to_string()))?
            .connect()
            .await
            .map_err(ConnectError)?;
        Ok(Connection::new(stream))
    }

    /// Keeps `conn` for the next run to `target`, when it can serve one.
    pub fn release(&self, target: &Downstream, conn: Connection) {
        if !conn.reusable() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        let conns = idle.entry(pool_key(target)).or_default();
        if conns.len() < MAX_IDLE {
            conns.push((Instant::now(), conn));
        }
    }

    fn take_idle(&self, key: &str) -> Option<(Instant, Connection)> {
        self.idle.lock().expect("pool lock").get_mut(key)?.pop()
    }
}

fn pool_key(target: &Downstream) -> String {
    format!(
        "{}://{}",
        if target.is_https() { "https" } else { "http" },
        target.authority()
    )
}

/// How waiting for an answer ended without one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipeError {
    /// The target closed the connection after an answer that said
    /// `Connection: close`: the requests sent after it were not processed
    /// (RFC 9112 §9.6) and may be sent again on a new connection.
    #[error("the target closed the connection after its last answer")]
    Closed,
    /// The connection broke (reset, closed mid-answer or before it, an
    /// answer that is not HTTP): the oldest unanswered request may or may
    /// not have been processed, and so may those written after it.
    #[error("{0}")]
    Broken(String),
}

/// One pipelined HTTP/1.1 connection.
pub struct Connection {
    stream: Stream,
    read: BytesMut,
    /// Heads and small bodies not yet handed to `out`.
    staging: BytesMut,
    /// What is to be written, in order.
    out: VecDeque<Bytes>,
    /// Bytes handed to the stream so far, and queued so far.
    written: u64,
    queued: u64,
    flush: bool,
    /// Requests queued and not answered yet, oldest first.
    pending: VecDeque<Pending>,
    parser: ResponseParser,
    /// The target said it closes after its last answer.
    closing: bool,
    eof: bool,
    write_error: Option<String>,
}

struct Pending {
    /// Where the request starts in the connection's byte stream.
    start: u64,
    head_only: bool,
}

impl Connection {
    fn new(stream: Stream) -> Connection {
        Connection {
            stream,
            read: BytesMut::with_capacity(READ_CHUNK),
            staging: BytesMut::with_capacity(READ_CHUNK),
            out: VecDeque::new(),
            written: 0,
            queued: 0,
            flush: false,
            pending: VecDeque::new(),
            parser: ResponseParser::default(),
            closing: false,
            eof: false,
            write_error: None,
        }
    }

    /// Queues one request: `write_head` writes its request line and headers
    /// (ending with the empty line), `body` follows. A head that cannot be
    /// written (`Err`) queues nothing. `head_only`: a `HEAD` request, whose
    /// answer has no body whatever its headers say.
    pub fn send<E>(
        &mut self,
        head_only: bool,
        body: &Bytes,
        write_head: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<(), E> {
        let mark = self.staging.len();
        if let Err(e) = write_head(&mut self.staging) {
            self.staging.truncate(mark);
            return Err(e);
        }
        let start = self.queued;
        self.queued += (self.staging.len() - mark + body.len()) as u64;
        if body.len() <= COPY_BODY_UP_TO {
            self.staging.extend_from_slice(body);
        } else {
            self.stage();
            self.out.push_back(body.clone());
        }
        self.pending.push_back(Pending { start, head_only });
        Ok(())
    }

    /// Requests sent and not answered yet.
    pub fn unanswered(&self) -> usize {
        self.pending.len()
    }

    /// How many of the unanswered requests, oldest first, were at least
    /// partly handed to the connection: the target may have them.
    pub fn unanswered_written(&self) -> usize {
        self.pending
            .iter()
            .take_while(|p| p.start < self.written)
            .count()
    }

    /// The oldest unanswered request's answer, with bodies over `limit`
    /// bytes read but not kept ([`Response::too_large`]). Writes what is
    /// queued meanwhile. Cancel-safe: dropping the future loses nothing
    /// (the caller drops the connection after a timeout anyway).
    pub async fn response(&mut self, limit: usize) -> Result<Response, PipeError> {
        let Some(head_only) = self.pending.front().map(|p| p.head_only) else {
            return Err(PipeError::Broken(
                "no request is waiting for an answer".into(),
            ));
        };
        if self.closing {
            return Err(PipeError::Closed);
        }
        loop {
            let parsed = if self.eof {
                self.parser.parse_at_eof(&mut self.read, head_only, limit)
            } else {
                self.parser.parse(&mut self.read, head_only, limit)
            };
            match parsed {
                Ok(Some(response)) => {
                    self.pending.pop_front();
                    if response.close {
                        self.closing = true;
                    }
                    return Ok(response);
                }
                Ok(None) if self.eof => {
                    let why = match &self.write_error {
                        Some(e) => format!("connection lost while sending: {e}"),
                        None if self.parser.is_idle() && self.read.is_empty() => {
                            "the target closed the connection before answering".to_string()
                        }
                        None => "the target closed the connection in the middle of an answer"
                            .to_string(),
                    };
                    return Err(PipeError::Broken(why));
                }
                Ok(None) => {}
                Err(e) => return Err(PipeError::Broken(format!("bad answer: {e}"))),
            }
            std::future::poll_fn(|cx| self.poll_io(cx))
                .await
                .map_err(|e| PipeError::Broken(e.to_string()))?;
        }
    }

    /// Whether the connection can carry another run: nothing owed either
    /// way, and the target did not say it closes.
    pub fn reusable(&self) -> bool {
        self.pending.is_empty()
            && !self.closing
            && !self.eof
            && self.write_error.is_none()
            && self.out.is_empty()
            && self.staging.is_empty()
            && self.read.is_empty()
            && self.parser.is_idle()
    }

    /// An idle connection the target has not closed meanwhile (a target
    /// closes idle connections when it likes).
    fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.stream).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    fn stage(&mut self) {
        if !self.staging.is_empty() {
            self.out.push_back(self.staging.split().freeze());
        }
    }

    /// Writes what it can of what is queued, then reads: ready once
    /// something was read (or the target closed), or on a read error.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_error.is_none() {
            if let Err(e) = self.poll_write_queued(cx) {
                // Keep reading: answers sent before the target stopped
                // reading still count.
                self.write_error = Some(e.to_string());
                self.out.clear();
                self.staging.clear();
            }
        }
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
        let before = self.read.len();
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read) {
            Poll::Ready(Ok(0)) if self.read.len() == before => {
                self.eof = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_queued(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.stage();
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); 16];
            let n = self
                .out
                .iter()
                .zip(slices.iter_mut())
                .map(|(chunk, slice)| *slice = IoSlice::new(chunk))
                .count();
            match Pin::new(&mut self.stream).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(mut done)) => {
                    self.written += done as u64;
                    self.flush = true;
                    while done > 0 {
                        let front = self.out.front_mut().expect("written from it");
                        if done >= front.len() {
                            done -= front.len();
                            self.out.pop_front();
                        } else {
                            front.advance(done);
                            done = 0;
                        }
                    }
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(()),
            }
        }
        if self.flush {
            match Pin::new(&mut self.stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.flush = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(())
    }
}

/// One answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body was longer than the limit: it was read, not kept.
    pub too_large: bool,
    /// The target closes the connection after this answer.
    pub close: bool,
}

/// Answers parsed from the bytes of a connection, one after the other. No
/// I/O: the caller appends what it reads and calls [`ResponseParser::parse`].
#[derive(Debug, Default)]
pub struct ResponseParser {
    state: State,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Head,
    /// A `Content-Length` body: `remaining` bytes still to come.
    Length { head: Head, remaining: u64 },
    Chunked {
        head: Head,
        body: BytesMut,
        at: Chunk,
    },
    /// No length: the body ends when the connection does.
    UntilClose { head: Head },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this much still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines, up to the empty one.
    Trailers,
}

#[derive(Debug)]
struct Head {
    status: u16,
    headers: HeaderMap,
    close: bool,
    too_large: bool,
}

impl Head {
    fn into_response(self, body: Bytes) -> Response {
        Response {
            status: self.status,
            headers: self.headers,
            body: if self.too_large { Bytes::new() } else { body },
            too_large: self.too_large,
            close: self.close,
        }
    }
}

impl ResponseParser {
    /// No answer begun.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Head)
    }

    /// The next whole answer in `buf` (taken out of it), `None` until it
    /// has all arrived. `head_only`: the answer to a `HEAD` request.
    pub fn parse(
        &mut self,
        buf: &mut BytesMut,
        head_only: bool,
        limit: usize,
    ) -> Result<Option<Response>, String> {
        loop {
            match std::mem::take(&mut self.state) {
                State::Head => {
                    let Some(head) = parse_head(buf, head_only, limit)? else {
                        return Ok(None);
                    };
                    match head {
                        Framing::Interim => continue,
                        Framing::NoBody(head) => return Ok(Some(head.into_response(Bytes::new()))),
                        Framing::Length(head, len) => {
                            if !head.too_large {
                                buf.reserve((len as usize).saturating_sub(buf.len()));
                            }
                            self.state = State::Length {
                                head,
                                remaining: len,
                            }
                        }
                        Framing::Chunked(head) => {
                            self.state = State::Chunked {
                                head,
                                body: BytesMut::new(),
                                at: Chunk::Size,
                            }
                        }
                        Framing::UntilClose(head) => self.state = State::UntilClose { head },
                    }
                }
                State::Length { head, remaining } if head.too_large => {
                    let n = remaining.min(buf.len() as u64);
                    buf.advance(n as usize);
                    if n == remaining {
                        return Ok(Some(head.into_response(Bytes::new())));
                    }
                    self.state = State::Length {
                        head,
                        remaining: remaining - n,
                    };
                    return Ok(None);
                }
                State::Length { head, remaining } => {
                    if (buf.len() as u64) < remaining {
                        self.state = State::Length { head, remaining };
                        return Ok(None);
                    }
                    let body = buf.split_to(remaining as usize).freeze();
                    return Ok(Some(head.into_response(body)));
                }
                State::Chunked {
                    mut head,
                    mut body,
                    mut at,
                } => {
                    let done = decode_chunks(buf, &mut body, &mut at, &mut head.too_large, limit)?;
                    if done {
                        return Ok(Some(head.into_response(body.freeze())));
                    }
                    self.state = State::Chunked { head, body, at };
                    return Ok(None);
                }
                State::UntilClose { head } => {
                    self.state = State::UntilClose { head };
                    return Ok(None);
                }
            }
        }
    }

    /// As [`ResponseParser::parse`] once the connection has ended: a body
    /// that runs to the end is whole now.
    pub fn parse_at_eof(
        &mut self,
        buf: &mut BytesMut,
        head_only: bool,
        limit: usize,
    ) -> Result<Option<Response>, String> {
        if let Some(response) = self.parse(buf, head_only, limit)? {
            return Ok(Some(response));
        }
        match std::mem::take(&mut self.state) {
            State::UntilClose { mut head } => {
                let body = buf.split().freeze();
                head.too_large |= body.len() > limit;
                Ok(Some(head.into_response(body)))
            }
            other => {
                self.state = other;
                Ok(None)
            }
        }
    }
}

enum Framing {
    /// A 1xx answer before the real one.
    Interim,
    NoBody(Head),
    Length(Head, u64),
    Chunked(Head),
    UntilClose(Head),
}

/// Parses an answer's head off the front of `buf`, once it has all come.
fn parse_head(
    buf: &mut BytesMut,
    head_only: bool,
    limit: usize,
) -> Result<Option<Framing>, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let status = parsed.code.expect("a complete head has a status");
    let http10 = parsed.version == Some(0);
    // Where each header's name and value sit in `buf`, to take them from
    // the head's bytes without copying.
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let spans: Vec<((usize, usize), (usize, usize))> = parsed
        .headers
        .iter()
        .map(|h| (at(h.name.as_bytes()), at(h.value)))
        .collect();
    let bytes = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len());
    for ((n, nl), (v, vl)) in spans {
        let name = HeaderName::from_bytes(&bytes[n..n + nl])
            .map_err(|_| "a header name is not valid".to_string())?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(v..v + vl))
            .map_err(|_| format!("the value of {name} is not valid"))?;
        headers.append(name, value);
    }
    if (100..200).contains(&status) {
        if status == 101 {
            return Err("101 Switching Protocols to a replayed request".into());
        }
        return Ok(Some(Framing::Interim));
    }
    let says = |token: &str| {
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    let close = says("close") || (http10 && !says("keep-alive"));
    let mut head = Head {
        status,
        headers,
        close,
        too_large: false,
    };
    if head_only || status == 204 || status == 304 {
        return Ok(Some(Framing::NoBody(head)));
    }
    if let Some(last) = head
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .rfind(|t| !t.is_empty())
    {
        if last.eq_ignore_ascii_case(b"chunked") {
            return Ok(Some(Framing::Chunked(head)));
        }
        head.close = true;
        return Ok(Some(Framing::UntilClose(head)));
    }
    let mut length = None;
    for value in head.headers.get_all(http::header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = std::str::from_utf8(part.trim_ascii())
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("a Content-Length that is not a number")?;
            if length.is_some_and(|l| l != n) {
                return Err("Content-Length values that differ".into());
            }
            length = Some(n);
        }
    }
    match length {
        Some(n) => {
            head.too_large = n > limit as u64;
            Ok(Some(Framing::Length(head, n)))
        }
        None => {
            head.close = true;
            Ok(Some(Framing::UntilClose(head)))
        }
    }
}

/// Decodes chunks from `buf` into `body` (past `limit` bytes they are read,
/// not kept); true once the last chunk and its trailers are in.
fn decode_chunks(
    buf: &mut BytesMut,
    body: &mut BytesMut,
    at: &mut Chunk,
    too_large: &mut bool,
    limit: usize,
) -> Result<bool, String> {
    loop {
        match *at {
            Chunk::Size => {
                let Some(line) = take_line(buf)? else {
                    return Ok(false);
                };
                let size = line
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                let size = std::str::from_utf8(size)
                    .ok()
                    .filter(|s| !s.is_empty() && s.len() <= 16)
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or("a chunk size that is not hexadecimal")?;
                *at = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(false);
                }
                let n = left.min(buf.len() as u64) as usize;
                if !*too_large && body.len() + n > limit {
                    *too_large = true;
                    *body = BytesMut::new();
                }
                if *too_large {
                    buf.advance(n);
                } else {
                    body.extend_from_slice(&buf[..n]);
                    buf.advance(n);
                }
                *at = if n as u64 == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n as u64)
                };
            }
            Chunk::DataEnd => {
                let Some(line) = take_line(buf)? else {
                    return Ok(false);
                };
                if !line.is_empty() {
                    return Err("chunk data longer than its size".into());
                }
                *at = Chunk::Size;
            }
            Chunk::Trailers => {
                let Some(line) = take_line(buf)? else {
                    return Ok(false);
                };
                if line.is_empty() {
                    return Ok(true);
                }
            }
        }
    }
}

/// One line ended by CRLF (or a bare LF) off the front of `buf`, without it.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, String> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            Ok(Some(line.freeze()))
        }
        // A chunk-size or trailer line has no business being this long.
        None if buf.len() > 8 << 10 => Err("a chunk line longer than 8 KiB".into()),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

    fn parse_all(input: &[u8], head_only: bool, limit: usize) -> Vec<Response> {
        // Byte by byte: every split point must work.
        let mut parser = ResponseParser::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &b in input {
            buf.extend_from_slice(&[b]);
            while let Some(r) = parser.parse(&mut buf, head_only, limit).unwrap() {
                out.push(r);
            }
        }
        if let Some(r) = parser.parse_at_eof(&mut buf, head_only, limit).unwrap() {
            out.push(r);
        }
        out
    }

    #[test]
    fn pipelined_answers_come_out_in_order_with_their_bodies() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello\
HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n\
HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n";
        let r = parse_all(input, false, LIMIT);
        let got: Vec<(u16, &[u8], bool)> =
            r.iter().map(|r| (r.status, &r.body[..], r.close)).collect();
        assert_eq!(
            got,
            [
                (200, &b"hello"[..], false),
                (404, &b""[..], false),
                (201, &b"abcde"[..], false),
                (204, &b""[..], false),
            ]
        );
        assert_eq!(r[0].headers["x-a"], "1");
    }

    #[test]
    fn connection_close_and_http_1_0_end_the_connection() {
        let r = parse_all(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 1\r\n\r\nx",
            false,
            LIMIT,
        );
        assert!(r[0].close);
        let r = parse_all(
            b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
            false,
            LIMIT,
        );
        assert!(r[0].close);
        let r = parse_all(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx",
            false,
            LIMIT,
        );
        assert!(!r[0].close);
    }

    #[test]
    fn a_body_without_length_runs_to_the_end_of_the_connection() {
        let r = parse_all(b"HTTP/1.1 200 OK\r\n\r\nall of it", false, LIMIT);
        assert_eq!((&r[0].body[..], r[0].close), (&b"all of it"[..], true));
    }

    #[test]
    fn head_answers_and_interim_answers_have_no_body() {
        let r = parse_all(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            true,
            LIMIT,
        );
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].status, r[0].body.len()), (200, 0));
    }

    #[test]
    fn bodies_over_the_limit_are_read_and_not_kept() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n12345678\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n1234\r\n4\r\n5678\r\n0\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let r = parse_all(input, false, 4);
        let got: Vec<(bool, &[u8])> = r.iter().map(|r| (r.too_large, &r.body[..])).collect();
        assert_eq!(
            got,
            [(true, &b""[..]), (true, &b""[..]), (false, &b"ok"[..])]
        );
    }

    #[test]
    fn broken_answers_are_errors() {
        for bad in [
            &b"HTTP/1.1 2x0 OK\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        ] {
            let mut parser = ResponseParser::default();
            let mut buf = BytesMut::from(bad);
            assert!(
                parser.parse(&mut buf, false, LIMIT).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn an_answer_cut_short_is_not_an_answer() {
        let mut parser = ResponseParser::default();
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"[..]);
        assert!(parser
            .parse_at_eof(&mut buf, false, LIMIT)
            .unwrap()
            .is_none());
        assert!(!parser.is_idle());
    }
}
