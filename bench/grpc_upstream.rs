//! The gRPC service behind the proxies in `bench/run`: HTTP/2 cleartext,
//! every call answered with one message of `SIZE` bytes and
//! `grpc-status: 0` in trailers, whatever it asked (the request's
//! messages are read to the end first, as a unary server does).
//!
//! `grpc_upstream PORT [SIZE]` — serves on 127.0.0.1:PORT until killed.
//! Written on hyper's HTTP/2 server, the stack QProxy's own listener uses,
//! so nginx's `grpc_pass` and QProxy are measured against the same upstream.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Frames = std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .and_then(|p| p.parse().ok())
        .expect("usage: grpc_upstream PORT [SIZE]");
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let message = Bytes::from(qproxy::model::grpc::frame(false, &vec![7u8; size]).to_vec());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("port free");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let message = message.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let message = message.clone();
                async move {
                    let _ = req.into_body().collect().await;
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    let frames: Frames =
                        vec![Ok(Frame::data(message)), Ok(Frame::trailers(trailers))].into_iter();
                    let mut response =
                        Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                    response
                        .headers_mut()
                        .insert("content-type", HeaderValue::from_static("application/grpc"));
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
