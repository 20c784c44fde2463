//! gRPC peers for the tests, two stacks that share no code: a tonic server
//! and client ([`GrpcServer`], [`GrpcClient`]) with a raw-bytes codec (no
//! `.proto`), driven over our own hyper HTTP/2 connections so a test controls
//! every connection; and Python grpcio ([`PythonGrpcServer`],
//! [`python_grpc_call`], the script `grpc_peer.py` beside this file).
//!
//! Both serve `test.Echo` (see [`GrpcServer`]) and `grpc.health.v1.Health/Check`.

use super::*;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{Buf, BufMut};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use http::header::HeaderName;
use http::{HeaderValue, Uri};
use http_body_util::BodyExt as _;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::{Code, Status, Streaming};

/// Both our peers accept and send messages up to this size (tonic's default
/// is 4 MiB for decoding).
pub const GRPC_MAX_MESSAGE: usize = 64 << 20;

pub const ECHO_UNARY: &str = "/test.Echo/Unary";
pub const ECHO_SERVER_STREAM: &str = "/test.Echo/ServerStream";
pub const ECHO_CLIENT_STREAM: &str = "/test.Echo/ClientStream";
pub const ECHO_BIDI: &str = "/test.Echo/Bidi";
pub const ECHO_FAIL: &str = "/test.Echo/Fail";
pub const ECHO_SLOW: &str = "/test.Echo/Slow";
pub const ECHO_BIG: &str = "/test.Echo/Big";
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// `HealthCheckResponse { status: SERVING }` as protobuf bytes.
pub const HEALTH_SERVING: &[u8] = &[0x08, 0x01];

/// The reply of `/test.Echo/Big` for `n`: byte i is i % 251.
pub fn big_payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

// ---------------------------------------------------------------------------
// The codec: a message is its bytes.

#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

// ---------------------------------------------------------------------------
// The tonic server.

/// How a [`GrpcServer`] answers, so one zone's server can differ from the
/// other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Normal,
    /// `Unary` replies `ECHO:<request>` instead of `echo:<request>`.
    DifferentReply,
    /// `ServerStream` sends its N messages, then ends with INTERNAL
    /// "failed after messages".
    FailAfterMessages,
}

/// One call as the server saw it. `metadata` is every request header as
/// received (`te`, `content-type`, `grpc-timeout`, user metadata …);
/// `messages` grow as a streaming request's messages arrive.
#[derive(Debug, Clone)]
pub struct ReceivedCall {
    pub path: String,
    pub metadata: HeaderMap,
    pub messages: Vec<Bytes>,
    /// The call was dropped (client reset, connection lost, server stopped)
    /// before the server produced its final status.
    pub cancelled: bool,
}

struct ServerState {
    name: String,
    behaviour: AtomicU8,
    calls: Mutex<Vec<ReceivedCall>>,
}

impl ServerState {
    fn behaviour(&self) -> Behaviour {
        match self.behaviour.load(Ordering::SeqCst) {
            1 => Behaviour::DifferentReply,
            2 => Behaviour::FailAfterMessages,
            _ => Behaviour::Normal,
        }
    }
}

/// A call's entry in [`GrpcServer::calls`]: marks it cancelled when dropped
/// before [`CallRecord::finish`].
struct CallRecord {
    state: Arc<ServerState>,
    index: usize,
    finished: bool,
}

impl CallRecord {
    fn message(&self, message: &Bytes) {
        self.state.calls.lock().unwrap()[self.index]
            .messages
            .push(message.clone());
    }

    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if !self.finished {
            self.state.calls.lock().unwrap()[self.index].cancelled = true;
        }
    }
}

/// The tonic `test.Echo` server over h2c or TLS (ALPN h2) on 127.0.0.1.
///
/// - `Unary`: `echo:<request>`, response metadata `x-served-by: <name>`,
///   trailer `x-trailer: t1`.
/// - `ServerStream`: request N (decimal) → `msg-0` … `msg-<N-1>`.
/// - `ClientStream`: `<count>:<m1>|<m2>|…`.
/// - `Bidi`: `re:<m>` for each message as soon as it arrives.
/// - `Fail`: request `<code>:<text>` → that status (Trailers-Only), details
///   `details-for-<code>`, metadata `x-why: because`.
/// - `Slow`: request ms → sleeps, replies `slept`.
/// - `Big`: request N → one reply of [`big_payload`]`(N)`.
/// - `grpc.health.v1.Health/Check` → [`HEALTH_SERVING`]; anything else
///   UNIMPLEMENTED.
pub struct GrpcServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcServer {
    pub async fn start(name: &str) -> GrpcServer {
        GrpcServer::serve(0, name, None).await
    }

    /// On a given port, e.g. to restart a stopped server where clients
    /// (or a proxy's config) expect it.
    pub async fn start_on(port: u16, name: &str) -> GrpcServer {
        GrpcServer::serve(port, name, None).await
    }

    /// Over TLS with this certificate chain and key (PEM), offering ALPN h2.
    pub async fn start_tls(name: &str, cert_pem: &str, key_pem: &str) -> GrpcServer {
        let acceptor = tls_acceptor(cert_pem, key_pem);
        GrpcServer::serve(0, name, Some(acceptor)).await
    }

    async fn serve(port: u16, name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> GrpcServer {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("grpc server {name}: cannot bind 127.0.0.1:{port}: {e}"));
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ServerState {
            name: name.to_string(),
            behaviour: AtomicU8::new(0),
            calls: Mutex::default(),
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, tls, state.clone(), shutdown.clone()));
        GrpcServer {
            addr,
            state,
            shutdown,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every call received, in arrival order.
    pub fn calls(&self) -> Vec<ReceivedCall> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        let value = match behaviour {
            Behaviour::Normal => 0,
            Behaviour::DifferentReply => 1,
            Behaviour::FailAfterMessages => 2,
        };
        self.state.behaviour.store(value, Ordering::SeqCst);
    }

    /// Stops accepting and drops every open connection; returns once the
    /// port is free again.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<ServerState>,
    shutdown: CancellationToken,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                connections.spawn(serve_connection(stream, tls.clone(), state.clone()));
            }
        }
    }
    drop(listener);
    // Dropping a connection makes h2 fail its open streams, so calls still
    // running see their futures dropped (and are marked cancelled).
    connections.shutdown().await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<ServerState>,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(dispatch(req, state).await) }
    });
    let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    let _ = match tls {
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(stream) => {
                builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
            }
            Err(_) => return,
        },
        None => {
            builder
                .serve_connection(TokioIo::new(stream), service)
                .await
        }
    };
}

/// A tonic service made of one closure, called once per request.
struct Once<F>(Option<F>);

impl<F, Fut, Req, Res> tower_service::Service<Req> for Once<F>
where
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Res, Status>> + Send + 'static,
{
    type Response = Res;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Res, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        Box::pin((self.0.take().expect("a call serves one request"))(req))
    }
}

fn once<F>(f: F) -> Once<F> {
    Once(Some(f))
}

type Reply = Result<tonic::Response<Bytes>, Status>;
type ReplyStream = Result<tonic::Response<BoxStream<'static, Result<Bytes, Status>>>, Status>;

async fn dispatch(req: Request<Incoming>, state: Arc<ServerState>) -> Response<tonic::body::Body> {
    let path = req.uri().path().to_string();
    let index = {
        let mut calls = state.calls.lock().unwrap();
        calls.push(ReceivedCall {
            path: path.clone(),
            metadata: req.headers().clone(),
            messages: Vec::new(),
            cancelled: false,
        });
        calls.len() - 1
    };
    let mut record = CallRecord {
        state: state.clone(),
        index,
        finished: false,
    };
    let mut grpc = tonic::server::Grpc::new(RawCodec)
        .max_decoding_message_size(GRPC_MAX_MESSAGE)
        .max_encoding_message_size(GRPC_MAX_MESSAGE);
    match path.as_str() {
        ECHO_UNARY => {
            let response = grpc
                .unary(
                    once(move |r: tonic::Request<Bytes>| async move {
                        let m = r.into_inner();
                        record.message(&m);
                        let prefix = match record.state.behaviour() {
                            Behaviour::DifferentReply => "ECHO:",
                            _ => "echo:",
                        };
                        let mut response = tonic::Response::new(concat(prefix, &m));
                        response.metadata_mut().insert(
                            "x-served-by",
                            record.state.name.parse().expect("an ASCII server name"),
                        );
                        record.finish();
                        Reply::Ok(response)
                    }),
                    req,
                )
                .await;
            // tonic has no API for custom trailers on an OK status.
            let (parts, body) = response.into_parts();
            let body = body.map_frame(|frame| match frame.into_trailers() {
                Ok(mut trailers) => {
                    trailers.insert("x-trailer", HeaderValue::from_static("t1"));
                    http_body::Frame::trailers(trailers)
                }
                Err(frame) => frame,
            });
            Response::from_parts(parts, tonic::body::Body::new(body))
        }
        ECHO_SERVER_STREAM => {
            grpc.server_streaming(
                once(move |r: tonic::Request<Bytes>| async move {
                    let m = r.into_inner();
                    record.message(&m);
                    let n = decimal(&m)?;
                    let fail = record.state.behaviour() == Behaviour::FailAfterMessages;
                    let messages = (0..n).map(|i| Ok(Bytes::from(format!("msg-{i}"))));
                    let end = fail.then(|| Err(Status::internal("failed after messages")));
                    let items = stream::iter(messages.chain(end));
                    ReplyStream::Ok(tonic::Response::new(until_end(items, record)))
                }),
                req,
            )
            .await
        }
        ECHO_CLIENT_STREAM => {
            grpc.client_streaming(
                once(move |r: tonic::Request<Streaming<Bytes>>| async move {
                    let mut incoming = r.into_inner();
                    let mut messages = Vec::new();
                    while let Some(m) = incoming.message().await? {
                        record.message(&m);
                        messages.push(String::from_utf8_lossy(&m).into_owned());
                    }
                    record.finish();
                    let reply = format!("{}:{}", messages.len(), messages.join("|"));
                    Reply::Ok(tonic::Response::new(Bytes::from(reply)))
                }),
                req,
            )
            .await
        }
        ECHO_BIDI => {
            grpc.streaming(
                once(move |r: tonic::Request<Streaming<Bytes>>| async move {
                    let state = record.state.clone();
                    let replies = r.into_inner().map(move |m| {
                        m.map(|m| {
                            state.calls.lock().unwrap()[index].messages.push(m.clone());
                            concat("re:", &m)
                        })
                    });
                    ReplyStream::Ok(tonic::Response::new(until_end(replies, record)))
                }),
                req,
            )
            .await
        }
        ECHO_FAIL => {
            grpc.unary(
                once(move |r: tonic::Request<Bytes>| async move {
                    let m = r.into_inner();
                    record.message(&m);
                    record.finish();
                    let text = String::from_utf8_lossy(&m);
                    let (code, message) = text.split_once(':').unwrap_or((&text, ""));
                    let code: i32 = code
                        .parse()
                        .map_err(|_| Status::invalid_argument("want <code>:<text>"))?;
                    let mut metadata = tonic::metadata::MetadataMap::new();
                    metadata.insert("x-why", MetadataValue::from_static("because"));
                    Reply::Err(Status::with_details_and_metadata(
                        Code::from_i32(code),
                        message,
                        Bytes::from(format!("details-for-{code}")),
                        metadata,
                    ))
                }),
                req,
            )
            .await
        }
        ECHO_SLOW => {
            grpc.unary(
                once(move |r: tonic::Request<Bytes>| async move {
                    let m = r.into_inner();
                    record.message(&m);
                    let ms = decimal(&m)?;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    record.finish();
                    Reply::Ok(tonic::Response::new(Bytes::from_static(b"slept")))
                }),
                req,
            )
            .await
        }
        ECHO_BIG => {
            grpc.unary(
                once(move |r: tonic::Request<Bytes>| async move {
                    let m = r.into_inner();
                    record.message(&m);
                    let n = decimal(&m)?;
                    record.finish();
                    Reply::Ok(tonic::Response::new(Bytes::from(big_payload(n as usize))))
                }),
                req,
            )
            .await
        }
        HEALTH_CHECK => {
            grpc.unary(
                once(move |r: tonic::Request<Bytes>| async move {
                    record.message(r.get_ref());
                    record.finish();
                    Reply::Ok(tonic::Response::new(Bytes::from_static(HEALTH_SERVING)))
                }),
                req,
            )
            .await
        }
        _ => {
            record.finish();
            Status::unimplemented(format!("no method {path}")).into_http()
        }
    }
}

fn concat(prefix: &str, message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(prefix.len() + message.len());
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

fn decimal(message: &[u8]) -> Result<u64, Status> {
    std::str::from_utf8(message)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Status::invalid_argument("want a decimal number"))
}

/// `items`, finishing `record` once the final status is reached (the end,
/// or an error, which ends a gRPC response); dropped earlier, it marks the
/// call cancelled.
fn until_end(
    items: impl Stream<Item = Result<Bytes, Status>> + Send + 'static,
    record: CallRecord,
) -> BoxStream<'static, Result<Bytes, Status>> {
    stream::unfold(
        (Box::pin(items), Some(record)),
        |(mut items, mut record)| async move {
            let record_ref = record.as_mut()?;
            match items.next().await {
                Some(Ok(m)) => Some((Ok(m), (items, record))),
                Some(Err(e)) => {
                    record_ref.finish();
                    Some((Err(e), (items, None)))
                }
                None => {
                    record_ref.finish();
                    None
                }
            }
        },
    )
    .boxed()
}

fn tls_acceptor(cert_pem: &str, key_pem: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("a PEM private key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("the key goes with the certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

// ---------------------------------------------------------------------------
// The tonic client.

/// What a call ended with, as a user of a gRPC stack sees it.
///
/// `headers` is the response's initial metadata; `trailers` the trailing
/// metadata without `grpc-status`, `grpc-message` and
/// `grpc-status-details-bin`, which are `code`, `message` and `details`
/// (decoded). A Trailers-Only response (a status without messages, e.g.
/// `Fail`) has empty `headers` and its one header block in `trailers`, as
/// grpcio reports it. The tonic client keeps every header it received
/// (`content-type`, `date` …); grpcio hides `content-type` and
/// `grpc-accept-encoding`, so compare named entries across stacks. A
/// transport failure is a status too (see `transport_status`).
#[derive(Debug, Clone, PartialEq)]
pub struct CallOutcome {
    pub code: i32,
    pub message: String,
    pub details: Bytes,
    pub headers: HeaderMap,
    pub messages: Vec<Bytes>,
    pub trailers: HeaderMap,
}

impl CallOutcome {
    /// `messages` as UTF-8 text, for short assertions.
    pub fn texts(&self) -> Vec<String> {
        self.messages
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.get(name).and_then(|v| v.to_str().ok())
    }

    fn from_status(status: &Status, headers: HeaderMap, messages: Vec<Bytes>) -> CallOutcome {
        CallOutcome {
            code: status.code() as i32,
            message: status.message().to_string(),
            details: status.details().to_vec().into(),
            headers,
            messages,
            trailers: status.metadata().clone().into_headers(),
        }
    }
}

/// One HTTP/2 connection as tonic's transport: each call is a stream on it.
#[derive(Clone)]
struct H2Connection {
    send: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
}

type ResponseBody = http_body_util::combinators::MapErr<Incoming, fn(hyper::Error) -> Status>;

impl tower_service::Service<Request<tonic::body::Body>> for H2Connection {
    type Response = Response<ResponseBody>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Response<ResponseBody>, Status>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.send.poll_ready(cx).map_err(transport_status)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let response = self.send.send_request(req);
        Box::pin(async move {
            let response = response.await.map_err(transport_status)?;
            let map: fn(hyper::Error) -> Status = transport_status;
            Ok(response.map(|body| body.map_err(map)))
        })
    }
}

/// The status a gRPC client reports for a transport failure (gRPC's
/// PROTOCOL-HTTP2.md, "Errors"): a stream reset by its reason, a lost or
/// refused connection UNAVAILABLE. (tonic alone maps these only with its
/// `server` feature, and a dead connection to CANCELLED or UNKNOWN.)
fn transport_status(e: hyper::Error) -> Status {
    use std::error::Error as _;
    let reset = e
        .source()
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .filter(|h2| h2.is_reset())
        .and_then(|h2| h2.reason());
    let code = match reset {
        Some(h2::Reason::REFUSED_STREAM) | None => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        Some(_) => Code::Internal,
    };
    let text = match e.source() {
        Some(source) => format!("transport: {e}: {source}"),
        None => format!("transport: {e}"),
    };
    Status::new(code, text)
}

/// A tonic client on one HTTP/2 connection (h2c, or TLS with ALPN h2); it
/// does not reconnect, so a test sees what happens to its connection.
/// Dropping a call's future resets its stream (RST_STREAM CANCEL).
pub struct GrpcClient {
    grpc: tonic::client::Grpc<H2Connection>,
    connection: tokio::task::JoinHandle<()>,
}

impl GrpcClient {
    pub async fn connect(addr: SocketAddr) -> GrpcClient {
        GrpcClient::try_connect(addr)
            .await
            .unwrap_or_else(|e| panic!("grpc client: cannot connect to {addr}: {e}"))
    }

    /// Connects, or says why not (refused, handshake failed).
    pub async fn try_connect(addr: SocketAddr) -> std::io::Result<GrpcClient> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        GrpcClient::handshake(stream, format!("http://{addr}")).await
    }

    /// Over TLS, trusting `ca_pem`, checking the server is `domain`.
    pub async fn connect_tls(addr: SocketAddr, ca_pem: &str, domain: &str) -> GrpcClient {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("PEM CA")).expect("a CA certificate");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from(domain.to_string()).expect("a server name");
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("grpc client: cannot connect to {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        let stream = connector
            .connect(name, stream)
            .await
            .unwrap_or_else(|e| panic!("grpc client: TLS handshake with {addr}: {e}"));
        GrpcClient::handshake(stream, format!("https://{domain}:{}", addr.port()))
            .await
            .unwrap_or_else(|e| panic!("grpc client: HTTP/2 handshake with {addr}: {e}"))
    }

    async fn handshake<S>(stream: S, origin: String) -> std::io::Result<GrpcClient>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, connection) = hyper::client::conn::http2::handshake::<_, _, tonic::body::Body>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .map_err(std::io::Error::other)?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let origin: Uri = origin.parse().expect("an origin URI");
        let grpc = tonic::client::Grpc::with_origin(H2Connection { send }, origin)
            .max_decoding_message_size(GRPC_MAX_MESSAGE)
            .max_encoding_message_size(GRPC_MAX_MESSAGE);
        Ok(GrpcClient { grpc, connection })
    }

    pub async fn unary(&mut self, path: &str, msg: &[u8]) -> CallOutcome {
        self.unary_with(path, msg, &[], None).await
    }

    /// With request metadata (a `-bin` key's value is sent base64-encoded)
    /// and a deadline: sent as `grpc-timeout`, and enforced here too by
    /// dropping the call (code 4, DEADLINE_EXCEEDED) when it passes.
    pub async fn unary_with(
        &mut self,
        path: &str,
        msg: &[u8],
        metadata: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> CallOutcome {
        let messages = vec![Bytes::copy_from_slice(msg)];
        self.call(path, messages, metadata, timeout).await
    }

    pub async fn server_stream(&mut self, path: &str, msg: &[u8]) -> CallOutcome {
        self.call(path, vec![Bytes::copy_from_slice(msg)], &[], None)
            .await
    }

    pub async fn client_stream(&mut self, path: &str, msgs: &[&[u8]]) -> CallOutcome {
        let messages = msgs.iter().map(|m| Bytes::copy_from_slice(m)).collect();
        self.call(path, messages, &[], None).await
    }

    /// Sends one message, waits for its reply, then sends the next; half
    /// closes after the last reply and reads to the end.
    pub async fn bidi(&mut self, path: &str, msgs: &[&[u8]]) -> CallOutcome {
        let path = path_and_query(path);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let outgoing = stream::unfold(rx, |mut rx| async move {
            let m = rx.recv().await?;
            Some((m, rx))
        });
        let mut pending = msgs.iter().map(|m| Bytes::copy_from_slice(m));
        let mut tx = Some(tx);
        // The first message goes before the response headers are awaited:
        // a server may hold its headers until it has something to say.
        match pending.next() {
            Some(first) => {
                let _ = tx.as_ref().unwrap().send(first);
            }
            None => tx = None,
        }
        if let Err(e) = self.grpc.ready().await {
            return CallOutcome::from_status(&e, HeaderMap::new(), vec![]);
        }
        let response = self
            .grpc
            .streaming(tonic::Request::new(outgoing), path, RawCodec)
            .await;
        let response = match response {
            Ok(r) => r,
            Err(status) => return trailers_only(&status),
        };
        let (metadata, mut incoming, _) = response.into_parts();
        let headers = metadata.into_headers();
        let mut messages = Vec::new();
        loop {
            match incoming.message().await {
                Ok(Some(m)) => {
                    messages.push(m);
                    match (pending.next(), tx.as_ref()) {
                        (Some(next), Some(sender)) => {
                            let _ = sender.send(next);
                        }
                        _ => tx = None,
                    }
                }
                Ok(None) => return ended(headers, messages, &mut incoming).await,
                Err(status) => return CallOutcome::from_status(&status, headers, messages),
            }
        }
    }

    async fn call(
        &mut self,
        path: &str,
        messages: Vec<Bytes>,
        metadata: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> CallOutcome {
        let mut request = tonic::Request::new(stream::iter(messages));
        for (key, value) in metadata {
            if key.ends_with("-bin") {
                let key = MetadataKey::from_bytes(key.as_bytes()).expect("a metadata key");
                let value = MetadataValue::from_bytes(value.as_bytes());
                request.metadata_mut().append_bin(key, value);
            } else {
                let key = MetadataKey::from_bytes(key.as_bytes()).expect("a metadata key");
                let value = value.parse().expect("an ASCII metadata value");
                request.metadata_mut().append(key, value);
            }
        }
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let call = self.call_streaming(path, request);
        match timeout {
            None => call.await,
            Some(timeout) => match tokio::time::timeout(timeout, call).await {
                Ok(outcome) => outcome,
                Err(_) => CallOutcome::from_status(
                    &Status::deadline_exceeded("client deadline passed"),
                    HeaderMap::new(),
                    vec![],
                ),
            },
        }
    }

    async fn call_streaming(
        &mut self,
        path: &str,
        request: tonic::Request<stream::Iter<std::vec::IntoIter<Bytes>>>,
    ) -> CallOutcome {
        if let Err(e) = self.grpc.ready().await {
            return CallOutcome::from_status(&e, HeaderMap::new(), vec![]);
        }
        let response = self
            .grpc
            .streaming(request, path_and_query(path), RawCodec)
            .await;
        let response = match response {
            Ok(r) => r,
            Err(status) => return trailers_only(&status),
        };
        let (metadata, mut incoming, _) = response.into_parts();
        let headers = metadata.into_headers();
        let mut messages = Vec::new();
        loop {
            match incoming.message().await {
                Ok(Some(m)) => messages.push(m),
                Ok(None) => return ended(headers, messages, &mut incoming).await,
                Err(status) => return CallOutcome::from_status(&status, headers, messages),
            }
        }
    }
}

impl Drop for GrpcClient {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

fn path_and_query(path: &str) -> http::uri::PathAndQuery {
    path.parse()
        .unwrap_or_else(|e| panic!("gRPC path {path:?}: {e}"))
}

/// tonic returns a Trailers-Only response (and a transport error) as the
/// `Err` of the call itself, with the header block as the status's metadata.
fn trailers_only(status: &Status) -> CallOutcome {
    CallOutcome::from_status(status, HeaderMap::new(), vec![])
}

/// After the last message: an OK status with its trailers.
async fn ended(
    headers: HeaderMap,
    messages: Vec<Bytes>,
    incoming: &mut Streaming<Bytes>,
) -> CallOutcome {
    let trailers = match incoming.trailers().await {
        Ok(t) => t.map(|t| t.into_headers()).unwrap_or_default(),
        Err(status) => return CallOutcome::from_status(&status, headers, messages),
    };
    let mut trailers = trailers;
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        trailers.remove(name);
    }
    CallOutcome {
        code: 0,
        message: String::new(),
        details: Bytes::new(),
        headers,
        messages,
        trailers,
    }
}

// ---------------------------------------------------------------------------
// Python grpcio: a second stack.

/// `grpc_peer.py`, beside this file.
fn grpc_peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/grpc_peer.py")
}

/// The first of `/usr/bin/python3`, `python3` that can `import grpc`.
/// Panics when none can: the tests that need it must not pass silently.
pub fn python_with_grpc() -> &'static str {
    static FOUND: OnceLock<Option<&'static str>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            ["/usr/bin/python3", "python3"].into_iter().find(|python| {
                Command::new(python)
                    .args(["-c", "import grpc"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "no Python with grpcio (tried /usr/bin/python3, python3): \
                 install python3-grpcio (`apt-get install python3-grpcio`; .ci/install-deps does)"
            )
        })
}

/// `grpc_peer.py server` on a free port; killed on drop.
pub struct PythonGrpcServer {
    addr: SocketAddr,
    child: Child,
    _stderr: tempfile::NamedTempFile,
}

impl PythonGrpcServer {
    pub fn start(name: &str) -> PythonGrpcServer {
        use std::io::BufRead;
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(python_with_grpc())
            .arg("-u")
            .arg(grpc_peer_script())
            .args(["server", "--port", "0", "--name", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python_with_grpc()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let Some(port) = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse::<u16>().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            let errors = std::fs::read_to_string(stderr.path()).unwrap_or_default();
            panic!("grpc_peer.py server did not say `listening <port>` (said {line:?}); stderr:\n{errors}");
        };
        PythonGrpcServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            _stderr: stderr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for PythonGrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One call with grpcio's client: `call` is `unary`, `server_stream`,
/// `client_stream`, `bidi` or `health`, to the matching `test.Echo` method
/// (or Health/Check). `data` goes as UTF-8 text.
pub async fn python_grpc_call(
    target: SocketAddr,
    call: &str,
    data: &[&[u8]],
    metadata: &[(&str, &str)],
) -> CallOutcome {
    python_grpc_call_to(target, call, None, data, metadata, None).await
}

/// [`python_grpc_call`] to another method of the same shape (`method`, e.g.
/// `/test.Echo/Fail` for `unary`) and with a deadline.
pub async fn python_grpc_call_to(
    target: SocketAddr,
    call: &str,
    method: Option<&str>,
    data: &[&[u8]],
    metadata: &[(&str, &str)],
    timeout: Option<Duration>,
) -> CallOutcome {
    let mut command = tokio::process::Command::new(python_with_grpc());
    command
        .arg(grpc_peer_script())
        .arg("client")
        .arg(format!("--target={target}"))
        .arg(format!("--call={call}"));
    if let Some(method) = method {
        command.arg(format!("--method={method}"));
    }
    for d in data {
        let text = std::str::from_utf8(d).expect("python_grpc_call sends UTF-8 text");
        command.arg(format!("--data={text}"));
    }
    for (k, v) in metadata {
        command.arg(format!("--metadata={k}={v}"));
    }
    if let Some(timeout) = timeout {
        command.arg(format!("--timeout-ms={}", timeout.as_millis()));
    }
    command.stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("grpc_peer.py client finishes within 30 s")
        .expect("grpc_peer.py client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "grpc_peer.py client failed ({}): {stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "grpc_peer.py client printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    outcome_from_json(&json)
}

fn outcome_from_json(json: &Value) -> CallOutcome {
    let b64 = base64::engine::general_purpose::STANDARD;
    let messages = json["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| Bytes::from(b64.decode(m.as_str().unwrap()).expect("base64 message")))
        .collect();
    let headers = metadata_from_json(&json["initial_metadata"]);
    let mut trailers = metadata_from_json(&json["trailing_metadata"]);
    let details = trailers
        .remove("grpc-status-details-bin")
        .map(|v| {
            let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD;
            Bytes::from(unpadded.decode(v.as_bytes()).expect("base64 details"))
        })
        .unwrap_or_default();
    CallOutcome {
        code: json["code"].as_i64().expect("code") as i32,
        message: json["details"].as_str().unwrap_or_default().to_string(),
        details,
        headers,
        messages,
        trailers,
    }
}

/// `[[key, value] …]`; the script gives `-bin` values base64 (unpadded, as
/// on the wire).
fn metadata_from_json(pairs: &Value) -> HeaderMap {
    let mut map = HeaderMap::new();
    for pair in pairs.as_array().expect("a metadata list") {
        let name = HeaderName::from_bytes(pair[0].as_str().unwrap().as_bytes()).expect("a name");
        let value = HeaderValue::from_str(pair[1].as_str().unwrap()).expect("a value");
        map.append(name, value);
    }
    map
}
