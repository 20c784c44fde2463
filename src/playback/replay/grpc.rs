//! Replaying a gRPC call: the recorded method and metadata, the request
//! messages in order — each after the response messages that preceded it
//! in the recording, so a conversation replays in its turns — then the
//! answer judged by status, message and response messages.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::TE;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};

use super::super::compare::{header_map, GrpcAnswer};
use super::super::Outcome;
use super::{replay_headers, Failure, Replayer};
use crate::config::Downstream;
use crate::downstream::{root_cause, Endpoints, H2Channels, H2Error, StaticDiscovery};
use crate::model::grpc::{code, decode_message, frame, Framer, MESSAGE_HEADER};
use crate::record::grpc::grpc_status;
use crate::record::{GrpcCall, Record, RecordId};

/// The channels gRPC calls are replayed on, and `grpc.downstream`: where
/// they go when discovery does not place their service.
pub(super) struct GrpcTargets {
    channels: H2Channels<ReplayBody>,
    downstreams: Option<Endpoints>,
}

const DOWNSTREAMS: &str = "grpc.downstream";

impl GrpcTargets {
    pub(super) fn new(tls: &rustls::ClientConfig) -> GrpcTargets {
        GrpcTargets {
            channels: H2Channels::new(tls),
            downstreams: None,
        }
    }

    pub(super) fn with_downstreams(mut self, downstreams: Vec<Downstream>) -> GrpcTargets {
        self.downstreams = Some(Endpoints::new(Arc::new(StaticDiscovery::of(
            DOWNSTREAMS,
            downstreams,
        ))));
        self
    }
}

/// The request messages of a replayed call, as the sender hands them over.
pub(super) struct ReplayBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|message| message.map(|m| Ok(Frame::data(m))))
    }
}

/// The replayed answer.
struct Replayed {
    status: Option<u32>,
    metadata: HeaderMap,
    messages: Vec<Bytes>,
}

type Judged = (Outcome, Option<String>, Option<u16>);

impl Replayer {
    /// Replays `call` unless it must be skipped, and judges the answer;
    /// also says which endpoint it went to.
    pub(super) async fn grpc(
        &self,
        record: &Record,
        id: RecordId,
        call: &GrpcCall,
    ) -> Result<(Judged, Option<String>), Failure> {
        if call.status.is_none() {
            let why = record.error.as_deref().unwrap_or("no status");
            return Ok((
                (
                    Outcome::Skipped,
                    Some(format!("zone A's call did not end with a status: {why}")),
                    None,
                ),
                None,
            ));
        }
        if call.truncated {
            return Ok((
                (
                    Outcome::Skipped,
                    Some(
                        "call was larger than record.max_body_bytes and was not recorded in full"
                            .into(),
                    ),
                    None,
                ),
                None,
            ));
        }
        let discovered = record
            .service
            .as_deref()
            .zip(self.endpoints.as_ref())
            .and_then(|(service, endpoints)| endpoints.pick(service).map(|e| (e, endpoints)));
        let (target, endpoints) = match (discovered, &self.grpc.downstreams) {
            (Some((target, endpoints)), _) => (target, &**endpoints),
            (None, Some(own)) => match own.pick(DOWNSTREAMS) {
                Some(target) => (target, own),
                None => return Err(no_target()),
            },
            (None, None) => return Err(no_target()),
        };
        let replayed = tokio::time::timeout(
            self.timeout,
            self.replay_grpc(record.shard, id, call, &target, endpoints),
        )
        .await
        .map_err(|_| {
            Failure::transient(format!(
                "no answer from {} within {:?}",
                target.authority(),
                self.timeout
            ))
        })??;
        let endpoint = Some(target.authority().to_string());
        if replayed.status == Some(code::UNAVAILABLE) && call.status != Some(code::UNAVAILABLE) {
            return Err(Failure::transient(format!(
                "target {} answered UNAVAILABLE",
                target.authority()
            )));
        }
        let recorded_metadata = header_map(
            &call
                .response_metadata
                .iter()
                .chain(&call.trailers)
                .cloned()
                .collect::<Vec<_>>(),
        );
        let (outcome, diff) = self.comparator.compare_grpc(
            &GrpcAnswer {
                status: call.status,
                message: call
                    .trailer(MESSAGE_HEADER)
                    .map(decode_message)
                    .unwrap_or_default(),
                metadata: &recorded_metadata,
                messages: call.response_messages.iter().map(|m| &m.data[..]).collect(),
            },
            &GrpcAnswer {
                status: replayed.status,
                message: replayed
                    .metadata
                    .get(MESSAGE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(decode_message)
                    .unwrap_or_default(),
                metadata: &replayed.metadata,
                messages: replayed.messages.iter().map(|m| &m[..]).collect(),
            },
        );
        Ok(((outcome, diff, replayed.status.map(|s| s as u16)), endpoint))
    }

    async fn replay_grpc(
        &self,
        shard: u32,
        id: RecordId,
        call: &GrpcCall,
        target: &Downstream,
        endpoints: &Endpoints,
    ) -> Result<Replayed, Failure> {
        let (tx, rx) = mpsc::unbounded_channel();
        let request = build_request(shard, id, call, target, ReplayBody { rx })
            .map_err(Failure::permanent)?;
        // How many response messages have come (u32::MAX once the answer
        // is over): the sender waits on it for each message's turn.
        let (seen_tx, mut seen) = watch::channel(0u32);
        let send = async {
            for message in &call.request_messages {
                let _ = seen.wait_for(|n| *n >= message.after).await;
                if tx.send(frame(message.compressed, &message.data)).is_err() {
                    break;
                }
            }
            drop(tx);
        };
        let receive = async {
            let response = match self.grpc.channels.send(target, request).await {
                Ok(response) => response,
                Err(H2Error::Unreachable(reason, _)) => {
                    endpoints.refused(target);
                    return Err(Failure::transient(format!(
                        "target {}: {reason}",
                        target.authority()
                    )));
                }
                Err(H2Error::Failed(e)) => {
                    return Err(Failure::transient(format!(
                        "target {}: {}",
                        target.authority(),
                        root_cause(&e)
                    )))
                }
            };
            let answer = self.read_answer(response, &seen_tx).await;
            seen_tx.send_replace(u32::MAX);
            answer
        };
        let ((), answer) = tokio::join!(send, receive);
        answer
    }

    /// The answer's messages as they come (each one moves the sender on),
    /// its metadata and trailers, its status.
    async fn read_answer(
        &self,
        response: http::Response<hyper::body::Incoming>,
        seen: &watch::Sender<u32>,
    ) -> Result<Replayed, Failure> {
        let (parts, mut body) = response.into_parts();
        let mut metadata = parts.headers;
        let mut status = grpc_status(&metadata);
        let mut framer = Framer::new(self.max_body_bytes as u64);
        let mut messages = Vec::new();
        let mut kept = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Failure::transient(format!("reading the replayed call: {}", root_cause(&e)))
            })?;
            if let Some(data) = frame.data_ref() {
                let mut over = false;
                framer
                    .push(
                        data.clone(),
                        |len| {
                            kept += len as usize;
                            over |= kept > self.max_body_bytes;
                            !over
                        },
                        |message| {
                            messages.push(message.data.unwrap_or_default());
                            seen.send_modify(|n| *n += 1);
                        },
                    )
                    .map_err(|e| Failure::permanent(format!("the replayed answer: {e}")))?;
                if over {
                    // Delivered: another try would get the same answer.
                    return Err(Failure::permanent(format!(
                        "the replayed answer is larger than record.max_body_bytes ({} bytes)",
                        self.max_body_bytes
                    )));
                }
            } else if let Some(trailers) = frame.trailers_ref() {
                status = grpc_status(trailers);
                metadata.extend(trailers.clone());
            }
        }
        framer
            .end()
            .map_err(|e| Failure::transient(format!("the replayed answer: {e}")))?;
        if status.is_none() && parts.status != http::StatusCode::OK {
            return Err(Failure::transient(format!(
                "target answered HTTP {} without a gRPC status",
                parts.status
            )));
        }
        Ok(Replayed {
            status,
            metadata,
            messages,
        })
    }
}

fn no_target() -> Failure {
    Failure::permanent("this Playback node has no grpc.downstream to replay to".into())
}

/// The recorded call as a request to `target`, carrying the replay id and
/// shard as metadata.
fn build_request(
    shard: u32,
    id: RecordId,
    call: &GrpcCall,
    target: &Downstream,
    body: ReplayBody,
) -> Result<Request<ReplayBody>, String> {
    let uri = Uri::builder()
        .scheme(match target.is_https() {
            true => "https",
            false => "http",
        })
        .authority(target.authority().clone())
        .path_and_query(call.method.as_str())
        .build()
        .map_err(|e| format!("recorded method `{}`: {e}", call.method))?;
    let mut request = Request::builder().method(Method::POST).uri(uri);
    let headers = request.headers_mut().expect("builder is fresh");
    replay_headers(headers, &call.request_metadata, "metadata", shard, id)?;
    headers.insert(TE, HeaderValue::from_static("trailers"));
    request.body(body).map_err(|e| e.to_string())
}
