//! The sync and admin API, on its own listener (`api`, default
//! 127.0.0.1:8084) so a proxied application keeps its own `/health`.
//!
//! Record node: `GET /sync`, `POST /commit`, `GET`/`PUT /api/checkpoints`.
//! Playback node: `POST /sync`,
//! `GET /api/replays`, `GET /api/replays/parked`, `POST /api/replays/retry`.
//! Both: `GET /health`, `GET /api/status`,
//! `GET /metrics`. With `api.auth_token` set, everything but `/health`
//! needs `Authorization: Bearer <token>`.

mod query;
mod system;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::json;

use self::query::Query;
pub use self::system::SystemCheck;
use crate::config::{valid_peer_id, Mode};
use crate::mqtt_client::MqttClient;
use crate::playback::{Outcome, PlaybackStats, Redrive, ReplayResult, Replayer};
use crate::record::recorder::RecorderStats;
use crate::record::RecordId;
use crate::server::Handler;
use crate::store::{ReplayWrite, Store, StoreError};
use crate::sync::ledger::{Ledger, Refused};
use crate::sync::source::{read_batch, PullRequest};
use crate::sync::{CommitRequest, ShardId, SyncBatch};

/// Most records one `GET /sync` returns.
pub use crate::config::MAX_SYNC_LIMIT;
/// Default `limit` of `GET /sync`.
pub const DEFAULT_SYNC_LIMIT: usize = 100;
/// A `GET /sync` answer stops growing past this many encoded bytes (it
/// always holds at least one record).
const MAX_SYNC_BYTES: usize = 32 << 20;
const MAX_COMMIT_BODY: usize = 64 << 10;
const MSGPACK: &str = "application/msgpack";
/// `POST /sync` replays at most this many pushed batches at once; one more
/// is refused at once rather than held in memory while it waits.
pub const MAX_CONCURRENT_PUSHES: usize = 2;
/// `/api/status` lists at most this many checkpoints (all of them:
/// `GET /api/checkpoints`).
const STATUS_CHECKPOINTS: usize = 100;

/// What the Playback side of the API needs.
pub struct PlaybackApi {
    pub replayer: Arc<Replayer>,
    pub stats: Arc<PlaybackStats>,
    pub peer_id: String,
    pub peer_addr: Option<String>,
    pub results_kept: u64,
    /// `/health` is DOWN at this many parked records (0: never).
    pub parked_down_threshold: u64,
    /// One re-drive at a time, so no parked record is replayed twice at once.
    pub redrive: tokio::sync::Mutex<()>,
    /// `playback.max_push_bytes`: the largest `POST /sync` body.
    pub max_push_bytes: usize,
    /// [`MAX_CONCURRENT_PUSHES`] permits.
    pub pushes: tokio::sync::Semaphore,
}

pub struct ApiState {
    pub mode: Mode,
    pub shards: u32,
    pub auth_token: Option<String>,
    pub store: Arc<dyn Store>,
    pub uses_redis: bool,
    pub recorder: Option<Arc<RecorderStats>>,
    /// Record node: peers and the rules of their checkpoints.
    pub ledger: Option<Arc<Ledger>>,
    pub playback: Option<PlaybackApi>,
    pub mqtt: Option<Arc<MqttClient>>,
    pub started: Instant,
    pub system: SystemCheck,
}

#[derive(Clone)]
pub struct Api {
    state: Arc<ApiState>,
}

type ApiResponse = Response<Full<Bytes>>;

/// A request the API refuses, with the status and a message for a person.
struct Refusal(StatusCode, String);

impl Refusal {
    fn bad(message: impl Into<String>) -> Refusal {
        Refusal(StatusCode::BAD_REQUEST, message.into())
    }
}

impl From<Refused> for Refusal {
    fn from(e: Refused) -> Refusal {
        let status = match e {
            Refused::BadPeer(_) | Refused::NoSuchShard { .. } => StatusCode::BAD_REQUEST,
            Refused::EmptyShard { .. } | Refused::BeyondData { .. } => StatusCode::CONFLICT,
            Refused::TooManyPeers { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refused::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refusal(status, e.to_string())
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}"),
        )
    }
}

impl Api {
    pub fn new(state: ApiState) -> Api {
        Api {
            state: Arc::new(state),
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Result<ApiResponse, Refusal> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        if path != "/health" {
            self.authorize(req.headers())?;
        }
        let mode = self.state.mode;
        match (&method, path.as_str(), mode) {
            (&Method::GET, "/health", _) => Ok(self.health().await),
            (&Method::GET, "/api/status", _) => self.status().await,
            (&Method::GET, "/metrics", _) => Ok(text(StatusCode::OK, crate::metrics::render())),
            (&Method::GET, "/sync", Mode::Record) => self.pull(&req).await,
            (&Method::POST, "/commit", Mode::Record) => self.commit(req).await,
            (&Method::GET, "/api/checkpoints", Mode::Record) => self.checkpoints(&req).await,
            (&Method::PUT, "/api/checkpoints", Mode::Record) => self.rewind(req).await,
            (&Method::POST, "/sync", Mode::Playback) => self.push(req).await,
            (&Method::GET, "/api/replays", Mode::Playback) => self.replays(&req).await,
            (&Method::GET, "/api/replays/parked", Mode::Playback) => self.parked(&req).await,
            (&Method::POST, "/api/replays/retry", Mode::Playback) => self.redrive(req).await,
            (
                _,
                "/sync"
                | "/commit"
                | "/api/checkpoints"
                | "/api/replays"
                | "/api/replays/parked"
                | "/api/replays/retry",
                _,
            ) => Err(Refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} {path} is not served by a {mode} node"),
            )),
            _ => Err(Refusal(
                StatusCode::NOT_FOUND,
                format!("no such path: {path}"),
            )),
        }
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(token) = &self.state.auth_token else {
            return Ok(());
        };
        // RFC 9110 §11: the scheme is case-insensitive, then one or more spaces.
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, credentials)| credentials.trim_start_matches(' '));
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(Refusal(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer …)".into(),
            ))
        }
    }

    /// The `shard` query parameter, when given, checked against this node.
    fn take_shard(&self, q: &mut Query) -> Result<Option<u32>, Refusal> {
        q.take("shard")
            .map(|s| {
                ShardId::parse(&s)
                    .map_err(Refusal::bad)
                    .and_then(|id| self.shard(id))
            })
            .transpose()
    }

    /// `shard` alone, or every shard of this node.
    fn shards_or_all(&self, shard: Option<u32>) -> Vec<u32> {
        match shard {
            Some(s) => vec![s],
            None => (0..self.state.shards).collect(),
        }
    }

    fn shard(&self, id: ShardId) -> Result<u32, Refusal> {
        if id.0 < self.state.shards {
            Ok(id.0)
        } else {
            Err(Refusal::bad(format!(
                "shard_id {} is out of range: this node has {} shard(s), 0 to {}",
                id.0,
                self.state.shards,
                self.state.shards - 1
            )))
        }
    }

    /// `GET /sync?peer_id=&shard_id=&limit=&after=&start=&end=`
    async fn pull(&self, req: &Request<Incoming>) -> Result<ApiResponse, Refusal> {
        let mut q = Query::parse(req.uri().query().unwrap_or("")).map_err(Refusal::bad)?;
        let peer_id = q.take("peer_id").unwrap_or_else(|| "default".into());
        if !valid_peer_id(&peer_id) {
            return Err(Refusal::bad(format!(
                "peer_id `{peer_id}`: use 1 to 128 letters, digits, `-`, `_` or `.`"
            )));
        }
        let shard = match q.take("shard_id") {
            Some(s) => self.shard(ShardId::parse(&s).map_err(Refusal::bad)?)?,
            None => 0,
        };
        let limit = take_limit(&mut q, DEFAULT_SYNC_LIMIT)?;
        let after = q
            .take("after")
            .map(|s| s.parse::<RecordId>())
            .transpose()
            .map_err(|e| Refusal::bad(format!("after: {e}")))?;
        let time = |name: &str, q: &mut Query| {
            q.take(name)
                .map(|s| crate::clock::parse_rfc3339_ms(&s))
                .transpose()
                .map_err(|e| Refusal::bad(format!("{name}: {e}")))
        };
        let start = time("start", &mut q)?;
        let end = time("end", &mut q)?;
        let rewind = q
            .take("rewind")
            .map(|s| s.parse::<u64>())
            .transpose()
            .map_err(|e| Refusal::bad(format!("rewind: {e}")))?;
        q.finish(&[
            "peer_id", "shard_id", "limit", "after", "start", "end", "rewind",
        ])
        .map_err(Refusal::bad)?;
        self.ledger().admit(&peer_id).await?;

        let request = PullRequest {
            peer_id,
            shard,
            limit,
            after,
            start_ms: start,
            end_ms: end,
            rewind,
        };
        let batch = read_batch(self.state.store.as_ref(), &request, MAX_SYNC_BYTES).await?;
        Ok(encode(req.headers(), StatusCode::OK, &batch))
    }

    fn ledger(&self) -> &Ledger {
        self.state
            .ledger
            .as_deref()
            .expect("record nodes have a ledger")
    }

    /// `POST /commit` with the original README's body.
    async fn commit(&self, req: Request<Incoming>) -> Result<ApiResponse, Refusal> {
        let body = read_body(req, MAX_COMMIT_BODY).await?;
        let commit: CommitRequest =
            serde_json::from_slice(&body).map_err(|e| Refusal::bad(format!("commit body: {e}")))?;
        let count = |result| {
            metrics::counter!(crate::metrics::COMMITS_TOTAL, "transport" => "http", "result" => result)
                .increment(1)
        };
        match self.ledger().commit(commit).await {
            Ok(stored) => {
                count("ok");
                Ok(json_response(StatusCode::OK, &stored))
            }
            Err(e) => {
                if !matches!(e, Refused::Store(_)) {
                    count("refused");
                }
                Err(e.into())
            }
        }
    }

    /// `GET /api/checkpoints?peer_id=&shard=&limit=&offset=`: checkpoints by
    /// shard, then peer.
    async fn checkpoints(&self, req: &Request<Incoming>) -> Result<ApiResponse, Refusal> {
        let mut q = Query::parse(req.uri().query().unwrap_or("")).map_err(Refusal::bad)?;
        let peer = q.take("peer_id");
        let shard = self.take_shard(&mut q)?;
        let limit = take_limit(&mut q, STATUS_CHECKPOINTS)?;
        let offset = q
            .take("offset")
            .map(|s| s.parse::<usize>())
            .transpose()
            .map_err(|_| Refusal::bad("offset must be a number from 0"))?
            .unwrap_or(0);
        q.finish(&["peer_id", "shard", "limit", "offset"])
            .map_err(Refusal::bad)?;
        let mut all = self.state.store.checkpoints(self.state.shards).await?;
        all.retain(|c| {
            peer.as_ref().is_none_or(|p| c.peer_id == *p) && shard.is_none_or(|s| c.shard == s)
        });
        all.sort_by(|a, b| (a.shard, &a.peer_id).cmp(&(b.shard, &b.peer_id)));
        let total = all.len();
        let page: Vec<_> = all.into_iter().skip(offset).take(limit).collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({ "checkpoints": page, "total": total }),
        ))
    }

    /// `PUT /api/checkpoints` with `{"peer_id", "shard_id", "last_record_id"}`:
    /// an operator moves a peer's checkpoint, backwards too.
    async fn rewind(&self, req: Request<Incoming>) -> Result<ApiResponse, Refusal> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Move {
            peer_id: String,
            shard_id: ShardId,
            last_record_id: RecordId,
        }
        let body = read_body(req, MAX_COMMIT_BODY).await?;
        let to: Move = serde_json::from_slice(&body)
            .map_err(|e| Refusal::bad(format!("checkpoint body: {e}")))?;
        let stored = self
            .ledger()
            .rewind(&to.peer_id, to.shard_id, to.last_record_id)
            .await?;
        Ok(json_response(StatusCode::OK, &stored))
    }

    /// `POST /sync` on a Playback node: replay a pushed batch now, in order.
    async fn push(&self, req: Request<Incoming>) -> Result<ApiResponse, Refusal> {
        let playback = self
            .state
            .playback
            .as_ref()
            .expect("playback nodes have a replayer");
        let Ok(_permit) = playback.pushes.try_acquire() else {
            return Err(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{MAX_CONCURRENT_PUSHES} pushed batches are being replayed at once already; \
                     push again when one is done"
                ),
            ));
        };
        let limit = playback.max_push_bytes;
        let too_large = || {
            Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the batch is larger than playback.max_push_bytes ({limit} bytes); push smaller batches"
                ),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let is_msgpack = content_type_is(req.headers(), MSGPACK);
        let accept = req.headers().clone();
        let body = read_body_sized(req, limit, declared).await.map_err(|e| {
            if e.0 == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                e
            }
        })?;
        let batch: SyncBatch = if is_msgpack {
            rmp_serde::from_slice(&body)
                .map_err(|e| Refusal::bad(format!("sync batch (msgpack): {e}")))?
        } else {
            serde_json::from_slice(&body).map_err(|e| Refusal::bad(format!("sync batch: {e}")))?
        };
        // The records hold their own copies: the raw body can go before replay.
        drop(body);
        for (i, record) in batch.records.iter().enumerate() {
            if record.id.is_none() {
                return Err(Refusal::bad(format!("records[{i}] has no id")));
            }
            self.shard(ShardId(record.shard))
                .map_err(|Refusal(s, m)| Refusal(s, format!("records[{i}]: {m}")))?;
        }
        // Each record once, in order: the caller holds the batch and decides
        // what to do with a failed one (no retries or parking here).
        let mut results = Vec::with_capacity(batch.records.len());
        playback
            .replayer
            .replay_in_order(&batch.records, |_, attempt| {
                results.push(attempt.result);
                std::ops::ControlFlow::Continue(())
            })
            .await;
        playback.stats.count(&results);
        for shard in 0..self.state.shards {
            let of_shard: Vec<ReplayResult> = results
                .iter()
                .filter(|r| r.shard == shard)
                .cloned()
                .collect();
            if !of_shard.is_empty() {
                self.state
                    .store
                    .save_replays(ReplayWrite::results(
                        &playback.peer_id,
                        shard,
                        &of_shard,
                        playback.results_kept,
                    ))
                    .await?;
            }
        }
        Ok(encode(
            &accept,
            StatusCode::OK,
            &json!({ "results": results }),
        ))
    }

    /// `GET /api/replays?shard=&result=&limit=`, newest first.
    async fn replays(&self, req: &Request<Incoming>) -> Result<ApiResponse, Refusal> {
        let mut q = Query::parse(req.uri().query().unwrap_or("")).map_err(Refusal::bad)?;
        let shard = self.take_shard(&mut q)?;
        let outcome = q
            .take("result")
            .map(|s| s.parse::<Outcome>())
            .transpose()
            .map_err(|e| Refusal::bad(format!("result: {e}")))?;
        let limit = take_limit(&mut q, 100)?;
        q.finish(&["shard", "result", "limit"])
            .map_err(Refusal::bad)?;
        let shards = self.shards_or_all(shard);
        // Scan deeper than `limit` when filtering by result.
        let scan = if outcome.is_some() {
            limit.saturating_mul(10).min(100_000)
        } else {
            limit
        };
        let mut results = Vec::new();
        for shard in shards {
            results.extend(
                self.state
                    .store
                    .replays(shard, scan)
                    .await?
                    .into_iter()
                    .filter(|r| outcome.is_none_or(|o| r.outcome == o)),
            );
        }
        results.sort_by_key(|r| std::cmp::Reverse(r.replayed_at_ms));
        results.truncate(limit);
        Ok(json_response(
            StatusCode::OK,
            &json!({ "results": results }),
        ))
    }

    fn playback(&self) -> &PlaybackApi {
        self.state
            .playback
            .as_ref()
            .expect("playback nodes have a replayer")
    }

    /// `GET /api/replays/parked?shard=&limit=`: records given up on, with
    /// their last result, oldest first.
    async fn parked(&self, req: &Request<Incoming>) -> Result<ApiResponse, Refusal> {
        let mut q = Query::parse(req.uri().query().unwrap_or("")).map_err(Refusal::bad)?;
        let shard = self.take_shard(&mut q)?;
        let limit = take_limit(&mut q, 100)?;
        q.finish(&["shard", "limit"]).map_err(Refusal::bad)?;
        let shards = self.shards_or_all(shard);
        let mut parked = Vec::new();
        let mut total = 0;
        for shard in shards {
            total += self.state.store.parked_count(shard).await?;
            if parked.len() < limit {
                parked.extend(self.state.store.parked(shard, limit - parked.len()).await?);
            }
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({ "parked": parked, "total": total }),
        ))
    }

    /// `POST /api/replays/retry` with `{}` (every parked record),
    /// `{"shard": N}` or `{"shard": N, "record_id": "…"}`.
    async fn redrive(&self, req: Request<Incoming>) -> Result<ApiResponse, Refusal> {
        #[derive(serde::Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct Which {
            shard: Option<ShardId>,
            record_id: Option<RecordId>,
        }
        let body = read_body(req, MAX_COMMIT_BODY).await?;
        let which: Which = if body.iter().all(u8::is_ascii_whitespace) {
            Which::default()
        } else {
            serde_json::from_slice(&body).map_err(|e| Refusal::bad(format!("retry body: {e}")))?
        };
        let shard = which.shard.map(|s| self.shard(s)).transpose()?;
        if which.record_id.is_some() && shard.is_none() {
            return Err(Refusal::bad(
                "record_id goes with shard: ids are unique within a shard only",
            ));
        }
        let playback = self.playback();
        let _one_at_a_time = playback.redrive.lock().await;
        let done = Redrive {
            store: self.state.store.as_ref(),
            replayer: &playback.replayer,
            stats: &playback.stats,
            peer: &playback.peer_id,
            shards: self.state.shards,
            keep: playback.results_kept,
        }
        .run(shard, which.record_id)
        .await?;
        if let (Some(id), true) = (which.record_id, done.results.is_empty()) {
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!("record {id} is not parked on shard {}", shard.unwrap_or(0)),
            ));
        }
        Ok(json_response(StatusCode::OK, &done))
    }

    /// The store answers, and (on a Record node) took the last write of
    /// records: a store that reads but refuses writes is not up.
    async fn store_up(&self) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(2), self.state.store.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => {
                return Err(format!(
                    "{}: no answer within 2s",
                    self.state.store.describe()
                ))
            }
        }
        match &self.state.recorder {
            Some(rec) if !rec.store_up.load(Ordering::Relaxed) => Err(format!(
                "{}: the last write of records failed: {}",
                self.state.store.describe(),
                rec.last_write_error().unwrap_or_default()
            )),
            _ => Ok(()),
        }
    }

    /// The original README's shape; 503 when DOWN.
    async fn health(&self) -> ApiResponse {
        let store = self.store_up().await;
        let mut errors: Vec<String> = Vec::new();
        // Problems that leave the node DEGRADED but serving (200).
        let mut warnings: Vec<String> = Vec::new();
        let mut components = serde_json::Map::new();
        let store_key = if self.state.uses_redis {
            "redis"
        } else {
            "store"
        };
        components.insert(store_key.into(), up_down(store.is_ok()));
        if let Err(e) = &store {
            errors.push(e.clone());
        }
        if let Some(rec) = &self.state.recorder {
            let ok = !rec.overflowing.load(Ordering::Relaxed);
            if !ok {
                errors.push("recording spool is full: records are being dropped".into());
            }
            components.insert("recording".into(), up_down(ok));
        }
        let mut degraded = false;
        if let Some(pb) = &self.state.playback {
            let ok = pb.stats.sync_ok.load(Ordering::Relaxed);
            if !ok {
                errors.push("the last sync round with the peer failed".into());
            }
            components.insert("sync".into(), up_down(ok));
            let (replay, problems) = replay_health(pb);
            degraded |= replay == "DEGRADED";
            if replay == "DOWN" {
                errors.extend(problems);
            } else {
                warnings.extend(problems);
            }
            components.insert("replay".into(), json!(replay));
            if let Some(discovery) = pb.replayer.discovery() {
                let problem = discovery.problem();
                degraded |= problem.is_some();
                components.insert(
                    "discovery".into(),
                    json!(if problem.is_some() { "DEGRADED" } else { "UP" }),
                );
                warnings.extend(problem);
            }
        }
        // Past a threshold the node still serves: DEGRADED (200), so a
        // load balancer does not move a busy node's load onto the others.
        let system = self.state.system.problems();
        degraded |= !system.is_empty();
        components.insert("system".into(), up_down(system.is_empty()));
        warnings.extend(system);
        let up = errors.is_empty();
        let status = match (up, degraded) {
            (false, _) => "DOWN",
            (true, true) => "DEGRADED",
            (true, false) => "UP",
        };
        errors.extend(warnings);
        let body = json!({
            "status": status,
            "mode": self.state.mode,
            "components": components,
            "last_check": crate::clock::format_ms(crate::clock::now_ms()),
            "error": if errors.is_empty() { None } else { Some(errors.join("; ")) },
        });
        let code = if up {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(code, &body)
    }

    async fn status(&self) -> Result<ApiResponse, Refusal> {
        let state = &self.state;
        let store_up = self.store_up().await;
        let mut body = json!({
            "mode": state.mode,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": state.started.elapsed().as_secs(),
            "shards": state.shards,
            "store": {
                "backend": state.store.describe(),
                "status": if store_up.is_ok() { "UP" } else { "DOWN" },
                "error": store_up.as_ref().err(),
                "persistence": state.store.persistence(),
            },
            "system": state.system.status(),
        });
        if store_up.is_ok() {
            let mut stored = 0;
            for shard in 0..state.shards {
                stored += state.store.len(shard).await?;
            }
            body["records_stored"] = json!(stored);
        }
        if let Some(client) = &state.mqtt {
            body["mqtt"] = json!({
                "broker": client.broker(),
                "client_id": client.client_id(),
                "connected": client.is_connected(),
            });
        }
        if let Some(rec) = &state.recorder {
            body["recording"] = json!({
                "submitted": rec.submitted.load(Ordering::Relaxed),
                "written": rec.written.load(Ordering::Relaxed),
                "dropped": rec.dropped.load(Ordering::Relaxed),
                "spooled": rec.spooled.load(Ordering::Relaxed),
                "spool_on_disk": rec.spool_on_disk.load(Ordering::Relaxed),
                "write_errors": rec.write_errors.load(Ordering::Relaxed),
            });
            if store_up.is_ok() {
                let mut all = state.store.checkpoints(state.shards).await?;
                all.sort_by(|a, b| (a.shard, &a.peer_id).cmp(&(b.shard, &b.peer_id)));
                body["checkpoints_total"] = json!(all.len());
                all.truncate(STATUS_CHECKPOINTS);
                body["checkpoints"] = json!(all);
            }
            if let Some(ledger) = &state.ledger {
                body["commits_refused"] = json!(ledger.refused());
            }
        }
        if let Some(pb) = &state.playback {
            let s = &pb.stats;
            let matched = s.matched.load(Ordering::Relaxed);
            let mismatched = s.mismatched.load(Ordering::Relaxed);
            let compared = matched + mismatched;
            let last_sync = s.last_sync_ms.load(Ordering::Relaxed);
            body["playback"] = json!({
                "peer": pb.peer_addr,
                "peer_id": pb.peer_id,
                "transport": s.transport().map(|t| t.as_str()),
                "notifications": s.notifications.load(Ordering::Relaxed),
                "mqtt_commits": s.mqtt_commits.load(Ordering::Relaxed),
                "matched": matched,
                "mismatched": mismatched,
                "failed": s.failed.load(Ordering::Relaxed),
                "skipped": s.skipped.load(Ordering::Relaxed),
                "match_rate": if compared > 0 { Some(matched as f64 / compared as f64) } else { None },
                "pulls": s.pulls.load(Ordering::Relaxed),
                "commits": s.commits.load(Ordering::Relaxed),
                "sync_errors": s.sync_errors.load(Ordering::Relaxed),
                "last_sync": (last_sync > 0).then(|| crate::clock::format_ms(last_sync)),
                "retries": s.retries.load(Ordering::Relaxed),
                "resent": pb.replayer.resent(),
                "parked": s.parked.load(Ordering::Relaxed),
                "waiting": s.waiting(),
                "discovery": pb.replayer.discovery().map(|d| d.status()),
            });
        }
        Ok(json_response(StatusCode::OK, &body))
    }
}

impl Handler<Full<Bytes>> for Api {
    async fn call(&self, req: Request<Incoming>, _client: SocketAddr) -> ApiResponse {
        match self.route(req).await {
            Ok(response) => response,
            Err(Refusal(status, message)) => {
                let mut response = json_response(status, &json!({ "error": message }));
                if status == StatusCode::UNAUTHORIZED {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                response
            }
        }
    }
}

/// The `limit` parameter: 1 to [`MAX_SYNC_LIMIT`], `default` when absent.
fn take_limit(q: &mut Query, default: usize) -> Result<usize, Refusal> {
    match q.take("limit") {
        None => Ok(default),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_SYNC_LIMIT).contains(n))
            .ok_or_else(|| Refusal::bad(format!("limit `{s}` must be 1 to {MAX_SYNC_LIMIT}"))),
    }
}

/// The replay component: DEGRADED while a shard waits on a record that has
/// not reached its target or records are parked, DOWN once
/// `playback.parked_down_threshold` records are parked.
fn replay_health(pb: &PlaybackApi) -> (&'static str, Vec<String>) {
    let mut problems = Vec::new();
    for (shard, on) in pb.stats.waiting() {
        problems.push(format!(
            "shard {shard} waits on record {} after {} attempt(s): {}",
            on.record_id, on.attempts, on.error
        ));
    }
    let parked = pb.stats.parked.load(Ordering::Relaxed);
    if parked > 0 {
        problems.push(format!(
            "{parked} record(s) parked after every attempt (GET /api/replays/parked; POST /api/replays/retry re-drives them)"
        ));
    }
    let state = if pb.parked_down_threshold > 0 && parked >= pb.parked_down_threshold {
        "DOWN"
    } else if problems.is_empty() {
        "UP"
    } else {
        "DEGRADED"
    };
    (state, problems)
}

fn up_down(up: bool) -> serde_json::Value {
    json!(if up { "UP" } else { "DOWN" })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn content_type_is(headers: &HeaderMap, mime: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(mime))
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Refusal> {
    Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Refusal(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body is larger than {limit} bytes"),
                )
            } else {
                Refusal::bad(format!("cannot read the body: {e}"))
            }
        })
}

/// Reads a large body into one buffer sized by its `Content-Length`: one
/// copy in memory rather than the chunks plus their concatenation.
async fn read_body_sized(
    req: Request<Incoming>,
    limit: usize,
    declared: Option<u64>,
) -> Result<Bytes, Refusal> {
    let capacity = declared.map_or(0, |n| n.min(limit as u64) as usize);
    let mut buf = bytes::BytesMut::with_capacity(capacity);
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Refusal::bad(format!("cannot read the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(Refusal(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body is larger than {limit} bytes"),
                ));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> ApiResponse {
    let body = serde_json::to_vec(value).expect("API answers always encode");
    with_type(status, body, "application/json")
}

/// JSON, or MessagePack when the client accepts it.
fn encode<T: Serialize>(headers: &HeaderMap, status: StatusCode, value: &T) -> ApiResponse {
    let wants_msgpack = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(MSGPACK));
    if wants_msgpack {
        let body = rmp_serde::to_vec_named(value).expect("API answers always encode");
        with_type(status, body, MSGPACK)
    } else {
        json_response(status, value)
    }
}

fn text(status: StatusCode, body: String) -> ApiResponse {
    with_type(
        status,
        body.into_bytes(),
        "text/plain; version=0.0.4; charset=utf-8",
    )
}

fn with_type(status: StatusCode, body: Vec<u8>, content_type: &'static str) -> ApiResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
