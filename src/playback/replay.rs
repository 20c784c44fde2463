//! Replaying one record against zone B's target and judging the answer.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use metrics::{counter, histogram};

use super::compare::compare_http;
use super::{Outcome, ReplayResult};
use crate::config::Downstream;
use crate::metrics as m;
use crate::proxy::headers::is_hop_by_hop;
use crate::proxy::http::target_uri;
use crate::record::{header_value_to_bytes, Exchange, HttpExchange, Record, RecordId};

/// Every replayed request carries this, so a target can tell replays apart
/// and drop duplicates. Ids are unique within a shard, so a target that
/// drops duplicates keys on this and [`REPLAY_SHARD_HEADER`] together.
pub const REPLAY_ID_HEADER: &str = "x-qproxy-replay-id";
/// The shard of the replayed record.
pub const REPLAY_SHARD_HEADER: &str = "x-qproxy-replay-shard";

pub struct Replayer {
    client: Client<HttpConnector, Full<Bytes>>,
    target: Downstream,
    timeout: Duration,
    max_body_bytes: usize,
}

impl Replayer {
    pub fn new(target: Downstream, timeout: Duration, max_body_bytes: usize) -> Replayer {
        Replayer {
            client: crate::proxy::pooled_client(),
            target,
            timeout,
            max_body_bytes,
        }
    }

    pub async fn replay(&self, record: &Record) -> ReplayResult {
        let started = Instant::now();
        let id = record.id.unwrap_or(RecordId::ZERO);
        let Exchange::Http(http) = &record.exchange;
        let (outcome, detail, replayed_status) = match skip_reason(record, http) {
            Some(reason) => (Outcome::Skipped, Some(reason), None),
            None => match self.replay_http(record.shard, id, http).await {
                Ok((status, body)) => {
                    let recorded = http.status.unwrap_or(0);
                    let (outcome, diff) =
                        compare_http(recorded, &http.response_body, status, &body);
                    (outcome, diff, Some(status))
                }
                Err(reason) => (Outcome::Failed, Some(reason), None),
            },
        };
        let elapsed = started.elapsed();
        counter!(m::REPLAYS_TOTAL, "protocol" => "http", "result" => outcome.as_str()).increment(1);
        histogram!(m::REPLAY_DURATION_SECONDS, "protocol" => "http").record(elapsed.as_secs_f64());
        let now = crate::clock::now_ms();
        histogram!(m::REPLAY_LAG_SECONDS)
            .record(now.saturating_sub(record.captured_at_ms) as f64 / 1000.0);
        ReplayResult {
            record_id: id,
            shard: record.shard,
            outcome,
            detail,
            replayed_at_ms: now,
            duration_us: elapsed.as_micros() as u64,
            method: http.method.clone(),
            uri: http.uri.clone(),
            recorded_status: http.status,
            replayed_status,
        }
    }

    async fn replay_http(
        &self,
        shard: u32,
        id: RecordId,
        http: &HttpExchange,
    ) -> Result<(u16, Bytes), String> {
        let request = self.build_request(shard, id, http)?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                format!(
                    "target {}: {}",
                    self.target.authority(),
                    crate::proxy::root_cause(&e)
                )
            })?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), self.max_body_bytes)
                .collect()
                .await
                .map_err(|e| format!("reading the replayed response: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                format!(
                    "no answer from {} within {:?}",
                    self.target.authority(),
                    self.timeout
                )
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
