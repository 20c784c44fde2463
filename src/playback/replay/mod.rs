//! Replaying records against zone B's target and judging the answers:
//! the dispatch and what every protocol shares; [`http`], [`grpc`] and
//! [`tcp`] hold each protocol's replay (a new protocol gets a file here).

mod grpc;
mod http;
mod tcp;

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{counter, histogram};
use tracing::{debug, info_span, Instrument};

use super::compare::Comparator;
use super::{Attempt, Outcome, ReplayResult};
use crate::config::{Downstream, TcpPacing};
use crate::downstream::{Endpoints, PipelineClient, TcpTarget};
use crate::metrics as m;
use crate::record::{Exchange, Protocol, Record, RecordId};

/// Every replayed request carries this, so a target can tell replays apart
/// and drop duplicates. Ids are unique within a shard, so a target that
/// drops duplicates keys on this and [`REPLAY_SHARD_HEADER`] together.
pub const REPLAY_ID_HEADER: &str = "x-qproxy-replay-id";
/// The shard of the replayed record.
pub const REPLAY_SHARD_HEADER: &str = "x-qproxy-replay-shard";

/// The span a record's replay logs in: its id, shard, protocol, service.
fn replay_span(record: &Record) -> tracing::Span {
    info_span!(
        "replay",
        record_id = %record.id.unwrap_or(RecordId::ZERO),
        shard = record.shard,
        protocol = record.protocol().as_str(),
        service = record.service.as_deref(),
    )
}

/// The recorded headers (or gRPC metadata) of a replayed request into
/// `headers`, less hop-by-hop ones and earlier replay marks, then this
/// replay's id and shard. `what` names them in errors.
pub(super) fn replay_headers(
    headers: &mut ::http::HeaderMap,
    recorded: &[crate::record::Header],
    what: &str,
    shard: u32,
    id: RecordId,
) -> Result<(), String> {
    use ::http::{HeaderName, HeaderValue};
    for (name, value) in recorded {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("recorded {what} name `{name}` is not valid"))?;
        if crate::model::headers::is_hop_by_hop(&name)
            || name == REPLAY_ID_HEADER
            || name == REPLAY_SHARD_HEADER
        {
            continue;
        }
        let value = crate::record::header_value_to_bytes(value)
            .and_then(|b| HeaderValue::from_bytes(&b).ok())
            .ok_or_else(|| format!("recorded value of {what} `{name}` is not valid"))?;
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
    Ok(())
}

/// Requests sent down one connection before the oldest is answered, by
/// default (`playback.pipeline_depth`).
pub const DEFAULT_PIPELINE_DEPTH: usize = 32;

pub struct Replayer {
    pipeline: PipelineClient,
    /// HTTP requests in flight on a run's connection (1: each waits for
    /// the answer before it).
    pipeline_depth: usize,
    /// Non-idempotent records (shard, id) written down a connection that
    /// broke before they were answered: counted when they are sent again.
    perhaps_delivered: Mutex<HashSet<(u32, RecordId)>>,
    resent: AtomicU64,
    target: Downstream,
    tcp_target: Option<TcpTarget>,
    timeout: Duration,
    max_body_bytes: usize,
    tcp_pacing: TcpPacing,
    /// Replayed statuses that mean a gateway could not reach the target.
    retry_statuses: Vec<u16>,
    comparator: Comparator,
    /// For TLS towards a TCP endpoint found by discovery.
    tls: Arc<rustls::ClientConfig>,
    /// The endpoints of the services records name, when service discovery
    /// is configured; other records go to `target`.
    endpoints: Option<Arc<Endpoints>>,
    /// `grpc.downstream`, where gRPC calls go that discovery does not place.
    grpc: grpc::GrpcTargets,
}

/// Why a replay did not reach its target.
pub(super) struct Failure {
    pub(super) reason: String,
    /// Another try may deliver it.
    pub(super) transient: bool,
}

impl Failure {
    pub(super) fn transient(reason: String) -> Failure {
        Failure {
            reason,
            transient: true,
        }
    }

    pub(super) fn permanent(reason: String) -> Failure {
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
        // Every result of every protocol is scraped from 0, so rate() and
        // the alert rules see the first mismatch or failure.
        for protocol in [Protocol::Http, Protocol::Tcp, Protocol::Grpc] {
            for outcome in Outcome::ALL {
                counter!(m::REPLAYS_TOTAL, "protocol" => protocol.as_str(), "result" => outcome.as_str())
                    .increment(0);
            }
        }
        for method in http::RESENT_METHOD_LABELS {
            counter!(m::REPLAYS_RESENT_TOTAL, "method" => method).increment(0);
        }
        Replayer {
            pipeline: PipelineClient::new(&tls),
            pipeline_depth: DEFAULT_PIPELINE_DEPTH,
            perhaps_delivered: Mutex::default(),
            resent: AtomicU64::new(0),
            target,
            tcp_target,
            timeout,
            max_body_bytes,
            tcp_pacing: TcpPacing::Fast,
            retry_statuses: Vec::new(),
            comparator: Comparator::default(),
            endpoints: None,
            grpc: grpc::GrpcTargets::new(&tls),
            tls,
        }
    }

    /// Replays gRPC calls round robin over `downstreams` (each `https://`
    /// one over TLS), unless discovery knows the call's service.
    pub fn with_grpc(mut self, downstreams: Vec<Downstream>) -> Replayer {
        self.grpc = self.grpc.with_downstreams(downstreams);
        self
    }

    /// Replays each HTTP record to an endpoint of the service it names,
    /// when discovery knows that service.
    pub fn with_discovery(mut self, endpoints: Arc<Endpoints>) -> Replayer {
        self.endpoints = Some(endpoints);
        self
    }

    /// The service endpoints records are replayed to, when configured.
    pub fn discovery(&self) -> Option<&Arc<Endpoints>> {
        self.endpoints.as_ref()
    }

    /// Where an HTTP record goes: an endpoint of its service (round robin,
    /// passing over ones that refused lately), else the node's downstream.
    fn http_target(&self, record: &Record) -> Downstream {
        record
            .service
            .as_deref()
            .zip(self.endpoints.as_ref())
            .and_then(|(service, endpoints)| endpoints.pick(service))
            .unwrap_or_else(|| self.target.clone())
    }

    /// Where a TCP session goes: an endpoint of its service when discovery
    /// knows it (TLS for an `https://` one), else `tcp.downstream`; the
    /// endpoint found, to pass it over if it refuses.
    fn tcp_target(
        &self,
        record: &Record,
    ) -> Result<Option<(TcpTarget, Option<Downstream>)>, String> {
        let found = record
            .service
            .as_deref()
            .zip(self.endpoints.as_ref())
            .and_then(|(service, endpoints)| endpoints.pick(service));
        match found {
            Some(endpoint) => {
                let tls = endpoint.is_https().then(|| self.tls.clone());
                let target = TcpTarget::new(endpoint.authority().as_ref(), tls)
                    .map_err(|e| e.to_string())?;
                Ok(Some((target, Some(endpoint))))
            }
            None => Ok(self.tcp_target.clone().map(|t| (t, None))),
        }
    }

    /// `target` could not be reached: discovery passes it over for a while.
    fn unreachable(&self, target: &Downstream) {
        if let Some(endpoints) = &self.endpoints {
            endpoints.refused(target);
        }
    }

    /// How replayed HTTP answers are judged.
    pub fn with_comparator(mut self, comparator: Comparator) -> Replayer {
        self.comparator = comparator;
        self
    }

    /// Replayed statuses (e.g. 502, 503, 504 from a gateway) that count as
    /// not delivered, unless zone A's downstream answered the same.
    pub fn with_retry_statuses(mut self, statuses: Vec<u16>) -> Replayer {
        self.retry_statuses = statuses;
        self
    }

    /// HTTP requests sent down a connection ahead of the oldest answer (at
    /// least 1).
    pub fn with_pipeline_depth(mut self, depth: usize) -> Replayer {
        self.pipeline_depth = depth.max(1);
        self
    }

    /// Non-idempotent records sent again after a connection broke while
    /// they were in flight (they may have reached the target twice).
    pub fn resent(&self) -> u64 {
        self.resent.load(Ordering::Relaxed)
    }

    /// How TCP sessions are paced (fast by default).
    pub fn with_tcp_pacing(mut self, pacing: TcpPacing) -> Replayer {
        self.tcp_pacing = pacing;
        self
    }

    /// Replays `records` in their order, handing each try to `judge` in
    /// that order, which says whether to go on. Every replay of a batch
    /// goes through here (the pull loop and `POST /sync`): the place where
    /// pacing, rewrites and filters of a batch belong. Consecutive HTTP
    /// records for one target go down one pipelined connection
    /// ([`Replayer::http_run`]); gRPC calls and TCP sessions one at a time.
    /// With service discovery a run is at most `pipeline_depth` records:
    /// the next run (once this one is answered) goes to the service's next
    /// endpoint, so endpoints share the load and the order still holds.
    pub async fn replay_in_order<F>(&self, records: &[Record], mut judge: F)
    where
        F: FnMut(&Record, Attempt) -> ControlFlow<()>,
    {
        let mut rest = records;
        while let Some(record) = rest.first() {
            if let Exchange::Http(_) = record.exchange {
                let most = match self.endpoints {
                    Some(_) => self.pipeline_depth,
                    None => rest.len(),
                };
                let run = rest
                    .iter()
                    .take(most)
                    .take_while(|r| {
                        matches!(r.exchange, Exchange::Http(_)) && self.same_target(r, record)
                    })
                    .count();
                if self.http_run(&rest[..run], &mut judge).await.is_break() {
                    return;
                }
                rest = &rest[run..];
                continue;
            }
            let span = replay_span(record);
            let attempt = self.replay(record).instrument(span.clone()).await;
            let _in_span = span.enter();
            if judge(record, attempt).is_break() {
                return;
            }
            rest = &rest[1..];
        }
    }

    /// Whether two HTTP records go to the same place: the node's downstream,
    /// or the endpoints of one service.
    fn same_target(&self, a: &Record, b: &Record) -> bool {
        self.endpoints.is_none() || a.service == b.service
    }

    /// One try at replaying `record`, judged against its recording.
    pub async fn replay(&self, record: &Record) -> Attempt {
        let started = Instant::now();
        let id = record.id.unwrap_or(RecordId::ZERO);
        let mut endpoint = None;
        let judged = match &record.exchange {
            Exchange::Http(_) => {
                let mut attempt = None;
                let _ = self
                    .http_run(std::slice::from_ref(record), &mut |_, a| {
                        attempt = Some(a);
                        ControlFlow::Continue(())
                    })
                    .await;
                return attempt.expect("a run judges each of its records");
            }
            Exchange::Tcp(tcp) => self.tcp(record, tcp).await.map(|(o, d)| (o, d, None)),
            Exchange::Grpc(call) => self.grpc(record, id, call).await.map(|(judged, to)| {
                endpoint = to;
                judged
            }),
        };
        self.finish(record, started, judged, endpoint)
    }

    /// The try's result, counted in the metrics.
    fn finish(
        &self,
        record: &Record,
        started: Instant,
        judged: Result<(Outcome, Option<String>, Option<u16>), Failure>,
        endpoint: Option<String>,
    ) -> Attempt {
        let id = record.id.unwrap_or(RecordId::ZERO);
        let protocol = record.protocol().as_str();
        let mut transient = false;
        let (outcome, detail, replayed_status) = match judged {
            Ok(judged) => judged,
            Err(f) => {
                transient = f.transient;
                (Outcome::Failed, Some(f.reason), None)
            }
        };
        let (method, uri, recorded_status) = match &record.exchange {
            Exchange::Http(h) => (h.method.clone(), h.uri.clone(), h.status),
            Exchange::Tcp(t) => ("TCP".to_string(), t.downstream.clone(), None),
            Exchange::Grpc(g) => (
                "gRPC".to_string(),
                g.method.clone(),
                g.status.map(|s| s as u16),
            ),
        };
        let elapsed = started.elapsed();
        counter!(m::REPLAYS_TOTAL, "protocol" => protocol, "result" => outcome.as_str())
            .increment(1);
        histogram!(m::REPLAY_DURATION_SECONDS, "protocol" => protocol)
            .record(elapsed.as_secs_f64());
        let now = crate::clock::now_ms();
        histogram!(m::REPLAY_LAG_SECONDS, "protocol" => protocol)
            .record(now.saturating_sub(record.captured_at_ms) as f64 / 1000.0);
        // In the record's `replay` span: its id, shard, protocol, service.
        debug!(
            result = outcome.as_str(),
            duration_us = elapsed.as_micros() as u64,
            endpoint = endpoint.as_deref(),
            "replayed"
        );
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
                service: record.service.clone(),
                endpoint: endpoint.filter(|_| outcome != Outcome::Skipped),
            },
            transient,
        }
    }
}
