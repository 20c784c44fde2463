//! Replaying an HTTP exchange: rebuild the request, send it to zone B's
//! target, judge the answer with the [`Comparator`](super::Comparator).

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full, Limited};

use super::super::compare::{header_map, Answer};
use super::super::Outcome;
use super::{replay_headers, Failure, Replayer};
use crate::config::Downstream;
use crate::downstream::{http_peer, root_cause};
use crate::record::{HttpExchange, Record, RecordId};

type Judged = (Outcome, Option<String>, Option<u16>);

impl Replayer {
    /// Replays `http` unless it must be skipped, and judges the answer.
    pub(super) async fn http(
        &self,
        record: &Record,
        id: RecordId,
        http: &HttpExchange,
        target: &Downstream,
    ) -> Result<Judged, Failure> {
        if let Some(reason) = skip_reason(record, http) {
            return Ok((Outcome::Skipped, Some(reason), None));
        }
        let (status, headers, body) = self.replay_http(record.shard, id, http, target).await?;
        if self.gateway_failure(status, http.status) {
            return Err(Failure::transient(format!(
                "target {} answered {status} (listed in playback.retry_statuses)",
                target.authority()
            )));
        }
        let recorded_headers = header_map(&http.response_headers);
        let (outcome, diff) = self.comparator.compare(
            &Answer {
                status: http.status.unwrap_or(0),
                headers: &recorded_headers,
                body: &http.response_body,
            },
            &Answer {
                status,
                headers: &headers,
                body: &body,
            },
        );
        Ok((outcome, diff, Some(status)))
    }

    fn gateway_failure(&self, replayed: u16, recorded: Option<u16>) -> bool {
        self.retry_statuses.contains(&replayed) && recorded != Some(replayed)
    }

    async fn replay_http(
        &self,
        shard: u32,
        id: RecordId,
        http: &HttpExchange,
        target: &Downstream,
    ) -> Result<(u16, HeaderMap, Bytes), Failure> {
        let request = self
            .build_request(shard, id, http, target)
            .map_err(Failure::permanent)?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    self.unreachable(target);
                }
                Failure::transient(format!("target {}: {}", target.authority(), root_cause(&e)))
            })?;
            let (parts, body) = response.into_parts();
            let status = parts.status.as_u16();
            let body = Limited::new(body, self.max_body_bytes)
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
            Ok((status, parts.headers, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                Failure::transient(format!(
                    "no answer from {} within {:?}",
                    target.authority(),
                    self.timeout
                ))
            })?
    }

    fn build_request(
        &self,
        shard: u32,
        id: RecordId,
        http: &HttpExchange,
        target: &Downstream,
    ) -> Result<Request<Full<Bytes>>, String> {
        let method = Method::from_bytes(http.method.as_bytes())
            .map_err(|_| format!("recorded method `{}` is not valid", http.method))?;
        let uri = http
            .uri
            .parse()
            .map_err(|e| format!("recorded uri `{}`: {e}", http.uri))
            .and_then(|uri| http_peer(target, &uri).map_err(|e| e.to_string()))?;
        let mut request = Request::builder().method(method).uri(uri);
        let headers = request.headers_mut().expect("builder is fresh");
        replay_headers(headers, &http.request_headers, "header", shard, id)?;
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
