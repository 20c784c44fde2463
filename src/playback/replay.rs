//! Replaying one record against zone B's target and judging the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use metrics::{counter, histogram};

use super::compare::{compare_bytes, compare_http};
use super::{Attempt, Outcome, ReplayResult};
use crate::config::{Downstream, TcpPacing};
use crate::metrics as m;
use crate::proxy::headers::is_hop_by_hop;
use crate::proxy::http::target_uri;
use crate::proxy::tcp::TcpTarget;
use crate::record::{header_value_to_bytes, Exchange, HttpExchange, Record, RecordId, TcpSession};

/// Every replayed request carries this, so a target can tell replays apart
/// and drop duplicates. Ids are unique within a shard, so a target that
/// drops duplicates keys on this and [`REPLAY_SHARD_HEADER`] together.
pub const REPLAY_ID_HEADER: &str = "x-qproxy-replay-id";
/// The shard of the replayed record.
pub const REPLAY_SHARD_HEADER: &str = "x-qproxy-replay-shard";

pub struct Replayer {
    client: Client<crate::proxy::Connector, Full<Bytes>>,
    target: Downstream,
    tcp_target: Option<TcpTarget>,
    timeout: Duration,
    max_body_bytes: usize,
    tcp_pacing: TcpPacing,
    /// Replayed statuses that mean a gateway could not reach the target.
    retry_statuses: Vec<u16>,
}

/// Why a replay did not reach its target.
struct Failure {
    reason: String,
    /// Another try may deliver it.
    transient: bool,
}

impl Failure {
    fn transient(reason: String) -> Failure {
        Failure {
            reason,
            transient: true,
        }
    }

    fn permanent(reason: String) -> Failure {
        Failure {
            reason,
            transient: false,
        }
    }
}

impl Replayer {
    /// Replays HTTP records against `target` (an https one with `tls`) and
    /// TCP sessions against `tcp_target`, when there is one.
    pub fn new(
        target: Downstream,
        tcp_target: Option<TcpTarget>,
        timeout: Duration,
        max_body_bytes: usize,
        tls: Arc<rustls::ClientConfig>,
    ) -> Replayer {
        Replayer {
            client: crate::proxy::pooled_client(tls),
            target,
            tcp_target,
            timeout,
            max_body_bytes,
            tcp_pacing: TcpPacing::Fast,
            retry_statuses: Vec::new(),
        }
    }

    /// Replayed statuses (e.g. 502, 503, 504 from a gateway) that count as
    /// not delivered, unless zone A's downstream answered the same.
    pub fn with_retry_statuses(mut self, statuses: Vec<u16>) -> Replayer {
        self.retry_statuses = statuses;
        self
    }

    /// How TCP sessions are paced (fast by default).
    pub fn with_tcp_pacing(mut self, pacing: TcpPacing) -> Replayer {
        self.tcp_pacing = pacing;
        self
    }

    /// One try at replaying `record`, judged against its recording.
    pub async fn replay(&self, record: &Record) -> Attempt {
        let started = Instant::now();
        let id = record.id.unwrap_or(RecordId::ZERO);
        let protocol = record.protocol().as_str();
        let mut transient = false;
        let mut failed = |f: Failure| {
            transient = f.transient;
            (Outcome::Failed, Some(f.reason), None)
        };
        let (outcome, detail, replayed_status) = match &record.exchange {
            Exchange::Http(http) => match skip_reason(record, http) {
                Some(reason) => (Outcome::Skipped, Some(reason), None),
                None => match self.replay_http(record.shard, id, http).await {
                    Ok((status, _)) if self.gateway_failure(status, http.status) => {
                        failed(Failure::transient(format!(
                            "target {} answered {status} (listed in playback.retry_statuses)",
                            self.target.authority()
                        )))
                    }
                    Ok((status, body)) => {
                        let recorded = http.status.unwrap_or(0);
                        let (outcome, diff) =
                            compare_http(recorded, &http.response_body, status, &body);
                        (outcome, diff, Some(status))
                    }
                    Err(f) => failed(f),
                },
            },
            Exchange::Tcp(tcp) => match self.replay_tcp(record, tcp).await {
                Ok((outcome, detail)) => (outcome, detail, None),
                Err(f) => failed(f),
            },
        };
        let (method, uri, recorded_status) = match &record.exchange {
            Exchange::Http(h) => (h.method.clone(), h.uri.clone(), h.status),
            Exchange::Tcp(t) => ("TCP".to_string(), t.downstream.clone(), None),
        };
        let elapsed = started.elapsed();
        counter!(m::REPLAYS_TOTAL, "protocol" => protocol, "result" => outcome.as_str())
            .increment(1);
        histogram!(m::REPLAY_DURATION_SECONDS, "protocol" => protocol)
            .record(elapsed.as_secs_f64());
        let now = crate::clock::now_ms();
        histogram!(m::REPLAY_LAG_SECONDS)
            .record(now.saturating_sub(record.captured_at_ms) as f64 / 1000.0);
        Attempt {
            result: ReplayResult {
                record_id: id,
                shard: record.shard,
                outcome,
                detail,
                replayed_at_ms: now,
                duration_us: elapsed.as_micros() as u64,
                method,
                uri,
                recorded_status,
                replayed_status,
                attempts: 1,
            },
            transient,
        }
    }

    fn gateway_failure(&self, replayed: u16, recorded: Option<u16>) -> bool {
        self.retry_statuses.contains(&replayed) && recorded != Some(replayed)
    }

    async fn replay_http(
        &self,
        shard: u32,
        id: RecordId,
        http: &HttpExchange,
    ) -> Result<(u16, Bytes), Failure> {
        let request = self
            .build_request(shard, id, http)
            .map_err(Failure::permanent)?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                Failure::transient(format!(
                    "target {}: {}",
                    self.target.authority(),
                    crate::proxy::root_cause(&e)
                ))
            })?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), self.max_body_bytes)
                .collect()
                .await
                .map_err(|e| {
                    let reason = format!("reading the replayed response: {e}");
                    if e.is::<http_body_util::LengthLimitError>() {
                        // Delivered: another try would get the same answer.
                        Failure::permanent(reason)
                    } else {
                        Failure::transient(reason)
                    }
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                Failure::transient(format!(
                    "no answer from {} within {:?}",
                    self.target.authority(),
                    self.timeout
                ))
            })?
    }

    fn build_request(
        &self,
        shard: u32,
        id: RecordId,
        http: &HttpExchange,
    ) -> Result<Request<Full<Bytes>>, String> {
        let method = Method::from_bytes(http.method.as_bytes())
            .map_err(|_| format!("recorded method `{}` is not valid", http.method))?;
        let uri = http
            .uri
            .parse()
            .map_err(|e| format!("recorded uri `{}`: {e}", http.uri))
            .and_then(|uri| target_uri(&self.target, &uri).map_err(|e| e.to_string()))?;
        let mut request = Request::builder().method(method).uri(uri);
        let headers = request.headers_mut().expect("builder is fresh");
        for (name, value) in &http.request_headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("recorded header name `{name}` is not valid"))?;
            if is_hop_by_hop(&name) || name == REPLAY_ID_HEADER || name == REPLAY_SHARD_HEADER {
                continue;
            }
            let value = header_value_to_bytes(value)
                .and_then(|b| HeaderValue::from_bytes(&b).ok())
                .ok_or_else(|| format!("recorded value of header `{name}` is not valid"))?;
            headers.append(name, value);
        }
        headers.insert(
            HeaderName::from_static(REPLAY_ID_HEADER),
            HeaderValue::from_str(&id.to_string()).expect("ids are ASCII"),
        );
        headers.insert(
            HeaderName::from_static(REPLAY_SHARD_HEADER),
            HeaderValue::from(shard),
        );
        request
            .body(Full::new(http.request_body.0.clone()))
            .map_err(|e| e.to_string())
    }
}

impl Replayer {
    /// Sends the client's chunks in order, each once the server bytes that
    /// preceded it in the recording have arrived, then compares what the
    /// server sent with what zone A's server sent.
    async fn replay_tcp(
        &self,
        record: &Record,
        tcp: &TcpSession,
    ) -> Result<(Outcome, Option<String>), Failure> {
        if tcp.chunks.is_empty() && record.error.is_some() {
            let why = record.error.as_deref().unwrap_or("no connection");
            return Ok((
                Outcome::Skipped,
                Some(format!("zone A's downstream was not reached: {why}")),
            ));
        }
        if tcp.truncated {
            return Ok((
                Outcome::Skipped,
                Some(
                    "session was larger than record.max_body_bytes and was not recorded in full"
                        .into(),
                ),
            ));
        }
        let Some(target) = &self.tcp_target else {
            return Err(Failure::permanent(
                "this Playback node has no tcp.downstream to replay to".into(),
            ));
        };
        // Paced as recorded, a session takes at least as long as it did.
        let timeout = match self.tcp_pacing {
            TcpPacing::Fast => self.timeout,
            TcpPacing::Recorded => {
                let span = tcp.chunks.last().map_or(0, |c| c.at_us);
                self.timeout + Duration::from_micros(span)
            }
        };
        match tokio::time::timeout(timeout, run_tcp(target, tcp, self.tcp_pacing)).await {
            Ok(Ok(server_bytes)) => Ok(
                match compare_bytes("server bytes", &tcp.server_stream(), &server_bytes) {
                    None => (Outcome::Matched, None),
                    Some(diff) => (Outcome::Mismatched, Some(diff)),
                },
            ),
            Ok(Err(e)) => Err(Failure::transient(format!("target {target}: {e}"))),
            Err(_) => Err(Failure::transient(format!(
                "target {target}: session not done within {timeout:?}"
            ))),
        }
    }
}

/// How long a replayed TCP session waits for the server's next bytes.
const TCP_IDLE: Duration = Duration::from_secs(2);

async fn run_tcp(
    target: &TcpTarget,
    tcp: &TcpSession,
    pacing: TcpPacing,
) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = tokio::time::Instant::now();
    let stream = target.connect().await?;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut got: Vec<u8> = Vec::with_capacity(tcp.server_bytes as usize);
    let mut buf = vec![0u8; 64 << 10];
    let mut server_done = false;
    // Reads until `want` server bytes are in, the server closes, or it idles.
    async fn read_up_to(
        reader: &mut tokio::io::ReadHalf<crate::tls::Stream>,
        buf: &mut [u8],
        got: &mut Vec<u8>,
        want: u64,
        server_done: &mut bool,
    ) -> Result<(), String> {
        while !*server_done && (got.len() as u64) < want {
            match tokio::time::timeout(TCP_IDLE, reader.read(buf)).await {
                Ok(Ok(0)) => *server_done = true,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => return Err(format!("reading: {e}")),
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }
    let mut server_before: u64 = 0;
    for chunk in &tcp.chunks {
        if chunk.from_client {
            read_up_to(
                &mut reader,
                &mut buf,
                &mut got,
                server_before,
                &mut server_done,
            )
            .await?;
            if pacing == TcpPacing::Recorded {
                tokio::time::sleep_until(started + Duration::from_micros(chunk.at_us)).await;
            }
            writer
                .write_all(&chunk.data)
                .await
                .map_err(|e| format!("writing: {e}"))?;
        } else {
            server_before += chunk.data.len() as u64;
        }
    }
    if tcp.closed_by == "client" {
        let _ = writer.shutdown().await;
    }
    read_up_to(
        &mut reader,
        &mut buf,
        &mut got,
        tcp.server_bytes,
        &mut server_done,
    )
    .await?;
    Ok(got)
}

/// Records that must not be replayed, and why.
fn skip_reason(record: &Record, http: &HttpExchange) -> Option<String> {
    if http.status.is_none() {
        return Some(format!(
            "zone A's downstream never answered: {}",
            record.error.as_deref().unwrap_or("no response")
        ));
    }
    if http.request_body_truncated {
        return Some(
            "request body was larger than record.max_body_bytes and was not recorded in full"
                .into(),
        );
    }
    None
}
