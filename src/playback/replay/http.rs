//! Replaying HTTP exchanges: a run of records for one endpoint goes down
//! one pipelined HTTP/1.1 connection ([`PipelineClient`]), up to
//! `playback.pipeline_depth` requests ahead of the oldest answer, and each
//! answer is judged with the [`Comparator`](super::Comparator) in record
//! order.
//!
//! [`PipelineClient`]: crate::downstream::PipelineClient

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use http::Uri;
use metrics::counter;

use super::super::compare::{header_map, Answer};
use super::super::{Attempt, Outcome};
use super::{replay_span, Failure, Replayer, REPLAY_ID_HEADER, REPLAY_SHARD_HEADER};
use crate::config::Downstream;
use crate::downstream::pipeline::{Connection, Response};
use crate::downstream::{origin_form, PipeError};
use crate::metrics as m;
use crate::model::headers::is_hop_by_hop_name;
use crate::record::{Exchange, HttpExchange, Record, RecordId};

type Judged = (Outcome, Option<String>, Option<u16>);

/// Records marked as perhaps delivered are forgotten beyond this many (they
/// are sent again within a round anyway; this only bounds memory).
const MAX_PERHAPS_DELIVERED: usize = 1 << 16;

/// A record of a run that was sent (or found not to be sendable) and not
/// judged yet.
struct InFlight {
    index: usize,
    started: Instant,
    /// `None`: sent on the run's connection. Else how it ended unsent.
    decided: Option<Result<Judged, Failure>>,
}

impl Replayer {
    /// Replays `records` (HTTP ones for one service) in order down one
    /// connection, `pipeline_depth` requests ahead of the oldest answer,
    /// handing each try to `judge` in record order. At `judge`'s first
    /// `Break` nothing more is sent.
    ///
    /// When the connection breaks with requests unanswered, the oldest is a
    /// transient failure (the runner tries it again); those written after
    /// it may have reached the target and are sent again after it — each
    /// non-idempotent one counted in `qproxy_replays_resent_total`. After
    /// an answer with `Connection: close` the requests sent after it were
    /// not processed (RFC 9112 §9.6): they go again on a new connection,
    /// not counted.
    pub(super) async fn http_run<F>(&self, records: &[Record], judge: &mut F) -> ControlFlow<()>
    where
        F: FnMut(&Record, Attempt) -> ControlFlow<()>,
    {
        let Some(first) = records.first() else {
            return ControlFlow::Continue(());
        };
        let target = self.http_target(first);
        let endpoint = target.authority().to_string();
        let mut conn: Option<Connection> = None;
        let mut queue: VecDeque<InFlight> = VecDeque::with_capacity(self.pipeline_depth);
        let mut next = 0;
        let mut last_answer = Instant::now();
        let flow = loop {
            // The window is refilled once half of it is answered: requests
            // go out (and are read by the target) many to a write, not one
            // per answer.
            let refill = queue.len() <= self.pipeline_depth / 2;
            while refill && next < records.len() && queue.len() < self.pipeline_depth {
                let started = Instant::now();
                let sent = self.send(&records[next], &target, &mut conn).await;
                // An unreachable target: judged before the next one tries.
                let stop = matches!(&sent, Err(Err(f)) if f.transient);
                queue.push_back(InFlight {
                    index: next,
                    started,
                    decided: sent.err(),
                });
                next += 1;
                if stop {
                    break;
                }
            }
            let Some(InFlight {
                index,
                started,
                decided,
            }) = queue.pop_front()
            else {
                break ControlFlow::Continue(());
            };
            let record = &records[index];
            let judged = match decided {
                Some(decided) => decided,
                None => {
                    let c = conn.as_mut().expect("a sent record has its connection");
                    let deadline = started.max(last_answer) + self.timeout;
                    let answer =
                        tokio::time::timeout_at(deadline.into(), c.response(self.max_body_bytes))
                            .await;
                    match answer {
                        Ok(Ok(response)) => {
                            last_answer = Instant::now();
                            self.judge_answer(http_of(record), &target, response)
                        }
                        Ok(Err(PipeError::Closed)) => {
                            // Not processed: sent again on a new connection.
                            conn = None;
                            next = index;
                            queue.clear();
                            continue;
                        }
                        broken => {
                            let reason = match broken {
                                Ok(Err(e)) => format!("target {}: {e}", target.authority()),
                                _ => format!(
                                    "no answer from {} within {:?}",
                                    target.authority(),
                                    self.timeout
                                ),
                            };
                            // This record is the oldest unanswered one; those
                            // written after it may have arrived.
                            let written = c.unanswered_written().saturating_sub(1);
                            self.perhaps_delivered(records, &queue, written);
                            conn = None;
                            next = index + 1;
                            queue.clear();
                            Err(Failure::transient(reason))
                        }
                    }
                }
            };
            let flow = replay_span(record).in_scope(|| {
                let attempt = self.finish(record, started, judged, Some(endpoint.clone()));
                judge(record, attempt)
            });
            if flow.is_break() {
                if let Some(c) = conn.take() {
                    self.perhaps_delivered(records, &queue, c.unanswered_written());
                    self.pipeline.release(&target, c);
                }
                break flow;
            }
        };
        if let Some(c) = conn {
            self.pipeline.release(&target, c);
        }
        flow
    }

    /// Sends `record` on `conn` (connecting first when there is none), or
    /// says how it ends unsent.
    async fn send(
        &self,
        record: &Record,
        target: &Downstream,
        conn: &mut Option<Connection>,
    ) -> Result<(), Result<Judged, Failure>> {
        let http = http_of(record);
        if let Some(reason) = skip_reason(record, http) {
            return Err(Ok((Outcome::Skipped, Some(reason), None)));
        }
        let c = match conn {
            Some(c) => c,
            None => match self.pipeline.connection(target).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    self.unreachable(target);
                    return Err(Err(Failure::transient(format!(
                        "target {}: {e}",
                        target.authority()
                    ))));
                }
            },
        };
        let id = record.id.unwrap_or(RecordId::ZERO);
        let body = &http.request_body.0;
        c.send(http.method == "HEAD", body, |out| {
            write_head(out, record.shard, id, http, target, body.len())
        })
        .map_err(|e| Err(Failure::permanent(e)))?;
        self.count_resend(record.shard, id, &http.method);
        Ok(())
    }

    /// Judges an answer against the recording.
    fn judge_answer(
        &self,
        http: &HttpExchange,
        target: &Downstream,
        response: Response,
    ) -> Result<Judged, Failure> {
        if response.too_large {
            // Delivered: another try would get the same answer.
            return Err(Failure::permanent(
                "reading the replayed response: length limit exceeded".into(),
            ));
        }
        let status = response.status;
        if self.gateway_failure(status, http.status) {
            return Err(Failure::transient(format!(
                "target {} answered {status} (listed in playback.retry_statuses)",
                target.authority()
            )));
        }
        let recorded_headers = if self.comparator.compares_headers() {
            header_map(&http.response_headers)
        } else {
            http::HeaderMap::new()
        };
        let (outcome, diff) = self.comparator.compare(
            &Answer {
                status: http.status.unwrap_or(0),
                headers: &recorded_headers,
                body: &http.response_body,
            },
            &Answer {
                status,
                headers: &response.headers,
                body: &response.body,
            },
        );
        Ok((outcome, diff, Some(status)))
    }

    fn gateway_failure(&self, replayed: u16, recorded: Option<u16>) -> bool {
        self.retry_statuses.contains(&replayed) && recorded != Some(replayed)
    }

    /// The first `written` sent records in `queue` may have reached the
    /// target and will be sent again: the non-idempotent ones are counted
    /// when they are.
    fn perhaps_delivered(&self, records: &[Record], queue: &VecDeque<InFlight>, written: usize) {
        let mut marked = self.perhaps_delivered.lock().expect("resend lock");
        for f in queue.iter().filter(|f| f.decided.is_none()).take(written) {
            let record = &records[f.index];
            if !is_idempotent(&http_of(record).method) {
                if marked.len() >= MAX_PERHAPS_DELIVERED {
                    marked.clear();
                }
                marked.insert((record.shard, record.id.unwrap_or(RecordId::ZERO)));
            }
        }
    }

    /// Counts a non-idempotent record sent again after it may have arrived.
    fn count_resend(&self, shard: u32, id: RecordId, method: &str) {
        if is_idempotent(method) {
            return;
        }
        let again = {
            let mut marked = self.perhaps_delivered.lock().expect("resend lock");
            !marked.is_empty() && marked.remove(&(shard, id))
        };
        if again {
            self.resent.fetch_add(1, Ordering::Relaxed);
            counter!(m::REPLAYS_RESENT_TOTAL, "method" => method_label(method)).increment(1);
        }
    }
}

fn http_of(record: &Record) -> &HttpExchange {
    match &record.exchange {
        Exchange::Http(http) => http,
        _ => unreachable!("runs hold HTTP records only"),
    }
}

/// Methods a target may receive twice with the effect of once (RFC 9110
/// §9.2.2).
fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
    )
}

/// A bounded label for a non-idempotent method.
/// Every `method` label of `qproxy_replays_resent_total`.
pub(super) const RESENT_METHOD_LABELS: [&str; 4] = ["POST", "PATCH", "CONNECT", "other"];

fn method_label(method: &str) -> &'static str {
    match method {
        "POST" => "POST",
        "PATCH" => "PATCH",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
}

/// RFC 9110 `tchar`: what methods and header names are made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The request line and headers of a replay, as hyper's client would
/// write them: the recorded headers less hop-by-hop ones, `Host` the
/// recorded one (else the target's), the replay's id and shard, and a
/// `Content-Length` for the body.
fn write_head(
    out: &mut BytesMut,
    shard: u32,
    id: RecordId,
    http: &HttpExchange,
    target: &Downstream,
    body_len: usize,
) -> Result<(), String> {
    if http.method.is_empty() || !http.method.bytes().all(is_tchar) {
        return Err(format!("recorded method `{}` is not valid", http.method));
    }
    let uri: Uri = http
        .uri
        .parse()
        .map_err(|e| format!("recorded uri `{}`: {e}", http.uri))?;
    out.put_slice(http.method.as_bytes());
    out.put_u8(b' ');
    origin_form(target, &uri, out);
    out.put_slice(b" HTTP/1.1\r\n");
    let (mut host, mut length) = (false, false);
    for (name, value) in &http.request_headers {
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(format!("recorded header name `{name}` is not valid"));
        }
        if is_hop_by_hop_name(name)
            || name.eq_ignore_ascii_case(REPLAY_ID_HEADER)
            || name.eq_ignore_ascii_case(REPLAY_SHARD_HEADER)
        {
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = true;
            continue;
        }
        host |= name.eq_ignore_ascii_case("host");
        out.put_slice(name.as_bytes());
        out.put_slice(b": ");
        // Stored as chars, one per byte (see `header_value_to_bytes`).
        for c in value.chars() {
            match u8::try_from(c) {
                Ok(b) if (b >= 0x20 && b != 0x7f) || b == b'\t' => out.put_u8(b),
                _ => return Err(format!("recorded value of header `{name}` is not valid")),
            }
        }
        out.put_slice(b"\r\n");
    }
    if !host {
        let _ = write!(out, "host: {}\r\n", target.authority());
    }
    let _ = write!(
        out,
        "{REPLAY_ID_HEADER}: {id}\r\n{REPLAY_SHARD_HEADER}: {shard}\r\n"
    );
    if length || body_len > 0 {
        let _ = write!(out, "content-length: {body_len}\r\n");
    }
    out.put_slice(b"\r\n");
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Body, HttpExchange};

    fn exchange(method: &str, uri: &str, headers: &[(&str, &str)]) -> HttpExchange {
        HttpExchange {
            method: method.into(),
            uri: uri.into(),
            version: "HTTP/1.1".into(),
            request_headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            request_body: Body::default(),
            request_body_truncated: false,
            status: Some(200),
            response_headers: Vec::new(),
            response_body: Body::default(),
            response_body_truncated: false,
        }
    }

    fn head(http: &HttpExchange, body_len: usize) -> Result<String, String> {
        let target: Downstream = "http://10.0.0.1:9000/base".parse().unwrap();
        let mut out = BytesMut::new();
        write_head(&mut out, 3, RecordId::new(7, 1), http, &target, body_len)?;
        // One char per byte, as records keep header values.
        Ok(out.iter().map(|&b| char::from(b)).collect())
    }

    #[test]
    fn a_head_keeps_recorded_headers_and_drops_hop_by_hop_ones() {
        let http = exchange(
            "POST",
            "/a?b=1",
            &[
                ("host", "zone-a"),
                ("x-tag", "t\u{e9}"),
                ("connection", "keep-alive"),
                ("content-length", "4"),
                ("x-qproxy-replay-id", "forged"),
            ],
        );
        assert_eq!(
            head(&http, 4).unwrap(),
            "POST /base/a?b=1 HTTP/1.1\r\nhost: zone-a\r\nx-tag: t\u{e9}\r\n\
             x-qproxy-replay-id: 7-1\r\nx-qproxy-replay-shard: 3\r\ncontent-length: 4\r\n\r\n"
        );
    }

    #[test]
    fn a_head_without_host_names_the_target_and_an_empty_get_has_no_length() {
        let http = exchange("GET", "http://elsewhere:1/p", &[]);
        assert_eq!(
            head(&http, 0).unwrap(),
            "GET /base/p HTTP/1.1\r\nhost: 10.0.0.1:9000\r\n\
             x-qproxy-replay-id: 7-1\r\nx-qproxy-replay-shard: 3\r\n\r\n"
        );
    }

    #[test]
    fn what_cannot_be_sent_is_refused() {
        assert!(head(&exchange("GE T", "/", &[]), 0).is_err());
        assert!(head(&exchange("GET", "/a b", &[]), 0).is_err());
        assert!(head(&exchange("GET", "/", &[("bad name", "v")]), 0).is_err());
        assert!(head(&exchange("GET", "/", &[("x", "a\r\nb: c")]), 0).is_err());
        assert!(head(&exchange("GET", "/", &[("x", "\u{100}")]), 0).is_err());
    }

    #[test]
    fn only_non_idempotent_methods_are_counted() {
        for m in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"] {
            assert!(is_idempotent(m), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "PURGE"] {
            assert!(!is_idempotent(m), "{m}");
        }
        assert_eq!(method_label("PURGE"), "other");
    }
}
