//! Plaintext HTTP/1.1 connections that hold no buffers while idle.
//!
//! A hyper HTTP/1.1 connection keeps an 8 KiB read buffer and an 8 KiB
//! write buffer for as long as it lives: ~19 KiB of memory for each idle
//! keep-alive connection, measured. Here a hyper connection serves the
//! socket only while there is work. Once the connection has been idle for
//! [`PARK_AFTER`] (no exchange open, hyper waiting to read, nothing left to
//! write, no byte moved), hyper is shut down gracefully at the message
//! boundary, the socket is taken back with any bytes hyper had read ahead,
//! and hyper's buffers are freed. The parked socket costs its task and its
//! registration; the next bytes start a new hyper connection on it.
//!
//! Nothing changes for the client: a parked connection is still open,
//! keep-alive as before, closed after `idle` without a request.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a connection stays quiet before its hyper connection (and its
/// buffers) is let go. Long enough that a busy connection is not torn
/// down between its requests, short enough that 10,000 idle ones cost
/// little within a second.
pub const PARK_AFTER: Duration = Duration::from_millis(200);

/// The HTTP/2 connection preface a prior-knowledge h2c client opens with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a plaintext connection say it speaks.
#[derive(Debug, PartialEq, Eq)]
pub enum Speaks {
    Http1,
    /// The HTTP/2 preface, or too few bytes yet to tell it from one.
    Http2OrUnsure,
    /// The client closed without sending anything.
    Nothing,
}

/// Waits for the connection's first bytes and looks at them without
/// taking them.
pub async fn sniff(stream: &TcpStream) -> io::Result<Speaks> {
    let mut first = [0u8; H2_PREFACE.len()];
    let n = stream.peek(&mut first).await?;
    Ok(match n {
        0 => Speaks::Nothing,
        n if H2_PREFACE.starts_with(&first[..n]) => Speaks::Http2OrUnsure,
        _ => Speaks::Http1,
    })
}

/// What one connection is doing, shared by its socket, its service and the
/// loop that decides when to park it. Touched from the connection's own
/// task only; atomics because a service must be `Send`.
#[derive(Debug, Default)]
pub struct Activity {
    /// Exchanges begun whose response has not been let go.
    open: AtomicUsize,
    /// Exchanges begun, ever.
    begun: AtomicU64,
    /// Counts reads and writes that moved bytes.
    moved: AtomicU64,
    /// The last read found nothing to read.
    read_blocked: AtomicBool,
    /// The last write could not be made.
    write_blocked: AtomicBool,
}

impl Activity {
    /// An exchange begins; it ends when the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Exchange {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.begun.fetch_add(1, Ordering::Relaxed);
        Exchange(self.clone())
    }

    fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// Nothing to do: no exchange open, hyper waits for bytes, none to
    /// write.
    fn idle(&self) -> bool {
        self.open.load(Ordering::Relaxed) == 0
            && self.read_blocked.load(Ordering::Relaxed)
            && !self.write_blocked.load(Ordering::Relaxed)
    }
}

/// An open exchange; see [`Activity::begin`].
#[derive(Debug)]
pub struct Exchange(Arc<Activity>);

impl Drop for Exchange {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// A response body that holds its exchange open until hyper lets it go.
    pub struct Tracked<B> {
        #[pin]
        body: B,
        exchange: Exchange,
    }
}

impl<B> Tracked<B> {
    pub fn new(body: B, exchange: Exchange) -> Tracked<B> {
        Tracked { body, exchange }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket as hyper sees it: bytes read ahead by an earlier hyper
/// connection come first, and every read and write is noted in the
/// connection's [`Activity`].
struct Io {
    stream: TcpStream,
    ahead: Bytes,
    activity: Arc<Activity>,
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let activity = &this.activity;
        if !this.ahead.is_empty() {
            let n = this.ahead.len().min(buf.remaining());
            buf.put_slice(&this.ahead.split_to(n));
            activity.moved.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        activity
            .read_blocked
            .store(read.is_pending(), Ordering::Relaxed);
        if buf.filled().len() > before {
            activity.moved.fetch_add(1, Ordering::Relaxed);
        }
        read
    }
}

impl Io {
    fn wrote<T>(&self, write: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.activity
            .write_blocked
            .store(write.is_pending(), Ordering::Relaxed);
        if write.is_ready() {
            self.activity.moved.fetch_add(1, Ordering::Relaxed);
        }
        write
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let write = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(write)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let write = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(write)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The future a service answers with: boxed, because hyper hands the
/// socket back only to a connection whose service future is `Unpin`.
pub type Answer<B> = Pin<Box<dyn Future<Output = Result<Response<Tracked<B>>, Infallible>> + Send>>;

/// How a connection served by [`serve`] ended.
#[derive(Debug)]
pub enum Ended {
    /// The client or hyper closed it, or it sat idle past its timeout.
    Closed,
    /// No complete request head by the first-head deadline.
    NoHead,
    /// hyper gave up on it (why, for the log).
    Failed(String),
}

/// Why [`drive`] stopped polling a hyper connection.
enum Round {
    /// Idle, and hyper let go of the socket at a message boundary.
    Parked,
    Done(hyper::Result<()>),
    NoHead,
}

/// The limits [`serve`] keeps.
pub struct Limits<'a> {
    /// The first request head must be complete by then.
    pub first_head_by: Instant,
    /// Set by the service when it sees a request.
    pub head_seen: &'a AtomicBool,
    /// How long a connection may wait for its next request.
    pub idle: Duration,
    /// Cancelled when the listener shuts down: open exchanges finish, the
    /// connection then closes.
    pub shutdown: &'a CancellationToken,
    /// Counts the listener's parked connections.
    pub parked: &'a metrics::Gauge,
}

/// Serves HTTP/1.1 on `stream` (whose first bytes have arrived) until it
/// closes, parking it whenever it is idle.
pub async fn serve<S, B>(
    mut stream: TcpStream,
    builder: &http1::Builder,
    service: S,
    activity: Arc<Activity>,
    limits: Limits<'_>,
) -> Ended
where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Tracked<B>>,
            Error = Infallible,
        > + Clone
        + Unpin
        + Send,
    S::Future: Unpin + Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut ahead = Bytes::new();
    let mut first = true;
    loop {
        if !first && ahead.is_empty() {
            // Parked: nothing held but the socket.
            limits.parked.increment(1.0);
            let woken = tokio::select! {
                ready = stream.readable() => ready.is_ok(),
                _ = tokio::time::sleep(limits.idle) => false,
                _ = limits.shutdown.cancelled() => false,
            };
            limits.parked.decrement(1.0);
            if !woken {
                return Ended::Closed;
            }
        }
        let io = Io {
            stream,
            ahead: std::mem::take(&mut ahead),
            activity: activity.clone(),
        };
        let mut conn = Box::new(builder.serve_connection(TokioIo::new(io), service.clone()));
        let round = drive(&mut conn, &activity, first, &limits).await;
        first = false;
        match round {
            Round::Parked => {
                let parts = conn.into_parts();
                let io = parts.io.into_inner();
                stream = io.stream;
                ahead = match (parts.read_buf.is_empty(), io.ahead.is_empty()) {
                    (true, _) => io.ahead,
                    (false, true) => parts.read_buf,
                    (false, false) => {
                        let mut both = BytesMut::from(&parts.read_buf[..]);
                        both.extend_from_slice(&io.ahead);
                        both.freeze()
                    }
                };
            }
            Round::Done(Ok(())) => {
                // What hyper would have done had it owned the socket.
                let mut io = conn.into_parts().io.into_inner();
                let _ = io.stream.shutdown().await;
                return Ended::Closed;
            }
            Round::Done(Err(e)) => return Ended::Failed(e.to_string()),
            Round::NoHead => return Ended::NoHead,
        }
    }
}

/// Polls `conn` until it ends, or until it has been idle for
/// [`PARK_AFTER`] and hyper let go of it at a message boundary.
///
/// Parking asks hyper for a graceful shutdown, which closes an idle
/// connection at once. Should hyper turn out not to be idle after all (it
/// does not finish in that same poll), keep-alive is off from then on: the
/// exchange under way finishes, and the connection closes as hyper ends
/// it, as any keep-alive connection may close.
async fn drive<S, B>(
    conn: &mut http1::Connection<TokioIo<Io>, S>,
    activity: &Activity,
    first: bool,
    limits: &Limits<'_>,
) -> Round
where
    S: hyper::service::HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut shutdown = pin!(limits.shutdown.cancelled());
    let mut park_check = pin!(tokio::time::sleep(PARK_AFTER));
    let mut no_head = pin!(tokio::time::sleep_until(limits.first_head_by));
    let mut waiting_for_head = first;
    let mut last_moved = activity.moved();
    // hyper calls a connection idle only once an exchange has ended on it.
    let begun = activity.begun.load(Ordering::Relaxed);
    let mut closing = false;
    std::future::poll_fn(|cx| {
        if !closing && shutdown.as_mut().poll(cx).is_ready() {
            Pin::new(&mut *conn).graceful_shutdown();
            closing = true;
        }
        if let Poll::Ready(done) = conn.poll_without_shutdown(cx) {
            return Poll::Ready(Round::Done(done));
        }
        if waiting_for_head {
            if limits.head_seen.load(Ordering::Relaxed) {
                waiting_for_head = false;
            } else if no_head.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Round::NoHead);
            }
        }
        while !closing && park_check.as_mut().poll(cx).is_ready() {
            let moved = activity.moved();
            let served = activity.begun.load(Ordering::Relaxed) != begun;
            if served && moved == last_moved && activity.idle() {
                Pin::new(&mut *conn).graceful_shutdown();
                return match conn.poll_without_shutdown(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(Round::Parked),
                    Poll::Ready(Err(e)) => Poll::Ready(Round::Done(Err(e))),
                    Poll::Pending => {
                        closing = true;
                        Poll::Pending
                    }
                };
            }
            last_moved = moved;
            park_check.as_mut().reset(Instant::now() + PARK_AFTER);
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sniff_tells_h2c_prior_knowledge_from_http1() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (sent, expected) in [
            (&b"GET / HTTP/1.1\r\n"[..], Speaks::Http1),
            (H2_PREFACE, Speaks::Http2OrUnsure),
            (&b"PRI * HT"[..], Speaks::Http2OrUnsure),
            (&b""[..], Speaks::Nothing),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            client.write_all(sent).await.unwrap();
            if sent.is_empty() {
                client.shutdown().await.unwrap();
            }
            assert_eq!(sniff(&server).await.unwrap(), expected, "{sent:?}");
        }
    }
}
