//! The pull loop: one task per shard, shards in parallel, records of a
//! shard in id order.
//!
//! A shard pulls again at once while records wait, otherwise when its MQTT
//! notification arrives or `sync.interval` has passed. Batches come by MQTT
//! query when the broker is there, else (or when the query fails) by
//! `GET /sync`; commits go as QoS 1 messages, else by `POST /commit`.
//!
//! One round: pull a batch after the last commit → replay what was
//! not replayed yet → store the results and the "replayed up to" mark in one
//! write → commit. While a backlog lasts, round N+1 replays (and pulls
//! N+2) while round N's results are stored and committed; stores and
//! commits keep their order. A crash before the local write replays the
//! records of at most those two rounds again (each carries
//! `X-QProxy-Replay-Id`); a crash after it only repeats the commit. A
//! committed record is never replayed again.
//!
//! A record that does not reach its target stops the round there: what came
//! before it is saved and committed, and the shard tries that record again
//! after a backoff ([`RetryPolicy`]), so nothing is committed past it. Once
//! the policy gives up, the record is parked with its last result (kept
//! until an operator re-drives it) and the shard moves on.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use metrics::{counter, gauge};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Outcome, ParkedRecord, ReplayResult, Replayer, RetryPolicy, Retrying};
use crate::metrics as m;
use crate::mqtt_client::MqttError;
use crate::record::{Record, RecordId};
use crate::store::{ReplayWrite, Store, StoreError};
use crate::sync::client::{PeerClient, PeerError};
use crate::sync::mqtt::{MqttLink, PullError};
use crate::sync::source::PullRequest;
use crate::sync::{CommitRequest, CommitStatus, ShardId, SyncBatch};

#[derive(Debug, Default)]
pub struct PlaybackStats {
    pub matched: AtomicU64,
    pub mismatched: AtomicU64,
    pub failed: AtomicU64,
    pub skipped: AtomicU64,
    pub pulls: AtomicU64,
    pub sync_errors: AtomicU64,
    pub commits: AtomicU64,
    pub last_sync_ms: AtomicU64,
    /// The last round of some shard succeeded (false after a failure).
    pub sync_ok: AtomicBool,
    /// The transport of the last pull: 0 none yet, 1 MQTT, 2 HTTP.
    pub transport: AtomicU8,
    pub notifications: Arc<AtomicU64>,
    pub mqtt_commits: AtomicU64,
    /// Tries again at records that had not reached their target.
    pub retries: AtomicU64,
    /// Records parked now (all shards).
    pub parked: AtomicU64,
    /// The shards waiting on a record that has not reached its target yet.
    pub waiting: Mutex<BTreeMap<u32, WaitingOn>>,
    /// The (shard, protocol) series of `qproxy_sync_lag_seconds` set so far.
    lag_series: Mutex<BTreeSet<(u32, &'static str)>>,
}

/// The record a shard waits on, for `/health` and `/api/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WaitingOn {
    pub record_id: RecordId,
    pub attempts: u32,
    pub error: String,
}

/// How a batch or a commit travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Mqtt = 1,
    Http = 2,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mqtt => "mqtt",
            Transport::Http => "http",
        }
    }
}

impl PlaybackStats {
    pub fn transport(&self) -> Option<Transport> {
        match self.transport.load(Ordering::Relaxed) {
            1 => Some(Transport::Mqtt),
            2 => Some(Transport::Http),
            _ => None,
        }
    }

    /// Shards waiting on a record now.
    pub fn waiting(&self) -> BTreeMap<u32, WaitingOn> {
        self.waiting.lock().expect("waiting lock").clone()
    }

    fn set_waiting(&self, shard: u32, on: Option<WaitingOn>) {
        let mut waiting = self.waiting.lock().expect("waiting lock");
        match on {
            Some(on) => waiting.insert(shard, on),
            None => waiting.remove(&shard),
        };
        gauge!(m::SYNC_SHARDS_RETRYING).set(waiting.len() as f64);
    }

    /// Counts the parked records of every shard again, from the store.
    pub async fn refresh_parked(&self, store: &dyn Store, shards: u32) -> Result<u64, StoreError> {
        let mut parked = 0;
        for shard in 0..shards {
            parked += store.parked_count(shard).await?;
        }
        self.parked.store(parked, Ordering::Relaxed);
        gauge!(m::REPLAYS_PARKED).set(parked as f64);
        Ok(parked)
    }

    /// `qproxy_sync_lag_seconds{shard, protocol}` after a round that
    /// replayed `records`: while the shard is `behind`, the age of the
    /// newest record of each protocol in them; once it has caught up,
    /// zero for every protocol the shard has had.
    fn note_lag(&self, shard: u32, records: &[Record], behind: bool) {
        let now = crate::clock::now_ms();
        let mut newest: Vec<(&'static str, u64)> = Vec::new();
        for record in records {
            let protocol = record.protocol().as_str();
            match newest.iter_mut().find(|(p, _)| *p == protocol) {
                Some((_, at)) => *at = (*at).max(record.captured_at_ms),
                None => newest.push((protocol, record.captured_at_ms)),
            }
        }
        let mut series = self.lag_series.lock().expect("lag lock");
        let label = shard.to_string();
        for (protocol, at) in &newest {
            series.insert((shard, protocol));
            let lag = if behind {
                now.saturating_sub(*at) as f64 / 1000.0
            } else {
                0.0
            };
            gauge!(m::SYNC_LAG_SECONDS, "shard" => label.clone(), "protocol" => *protocol).set(lag);
        }
        if !behind {
            for (_, protocol) in series.range((shard, "")..(shard + 1, "")) {
                gauge!(m::SYNC_LAG_SECONDS, "shard" => label.clone(), "protocol" => *protocol)
                    .set(0.0);
            }
        }
    }

    pub fn count(&self, results: &[ReplayResult]) {
        for r in results {
            let counter = match r.outcome {
                Outcome::Matched => &self.matched,
                Outcome::Mismatched => &self.mismatched,
                Outcome::Failed => &self.failed,
                Outcome::Skipped => &self.skipped,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} (and no HTTP peer to fall back to)")]
    NoFallback(PullError),
}

/// The ways to the Record node: MQTT first when connected, HTTP otherwise.
pub struct SyncLink {
    pub http: Option<PeerClient>,
    pub mqtt: Option<MqttLink>,
}

impl SyncLink {
    pub fn describe(&self) -> String {
        match (&self.http, &self.mqtt) {
            (Some(h), Some(m)) => {
                format!("mqtt {} with http {} fallback", m.client.broker(), h.addr())
            }
            (Some(h), None) => format!("http {}", h.addr()),
            (None, Some(m)) => format!("mqtt {}", m.client.broker()),
            (None, None) => "nothing".into(),
        }
    }

    async fn pull(&self, request: &PullRequest) -> Result<(SyncBatch, Transport), RoundError> {
        let mut mqtt_error = None;
        if let Some(mqtt) = self.mqtt.as_ref().filter(|m| m.is_connected()) {
            match mqtt.pull(request).await {
                Ok(batch) => return Ok((batch, Transport::Mqtt)),
                Err(e) => {
                    debug!(shard = request.shard, error = %e, "mqtt pull failed; trying http");
                    mqtt_error = Some(e);
                }
            }
        }
        match &self.http {
            Some(http) => {
                let batch = http
                    .pull(
                        &request.peer_id,
                        request.shard,
                        request.limit,
                        request.after,
                        request.rewind,
                    )
                    .await?;
                Ok((batch, Transport::Http))
            }
            None => Err(RoundError::NoFallback(
                mqtt_error.unwrap_or_else(|| self.not_connected().into()),
            )),
        }
    }

    /// The MQTT link's error when it is not connected (or not configured).
    fn not_connected(&self) -> MqttError {
        MqttError::NotConnected(
            self.mqtt
                .as_ref()
                .map_or("no broker".into(), |m| m.client.broker().to_string()),
        )
    }

    async fn commit(&self, commit: &CommitRequest) -> Result<Transport, RoundError> {
        let mut mqtt_error = None;
        if let Some(mqtt) = self.mqtt.as_ref().filter(|m| m.is_connected()) {
            match mqtt.commit(commit).await {
                Ok(()) => return Ok(Transport::Mqtt),
                Err(e) => mqtt_error = Some(e),
            }
        }
        match &self.http {
            Some(http) => {
                http.commit(commit).await?;
                Ok(Transport::Http)
            }
            None => Err(RoundError::NoFallback(
                mqtt_error.unwrap_or_else(|| self.not_connected()).into(),
            )),
        }
    }
}

pub struct SyncRunner {
    pub link: SyncLink,
    /// One per shard: notified when the shard's MQTT notification arrives.
    pub wake: Arc<[Notify]>,
    pub replayer: Arc<Replayer>,
    pub store: Arc<dyn Store>,
    pub stats: Arc<PlaybackStats>,
    pub peer_id: String,
    pub shards: u32,
    pub interval: Duration,
    pub batch_size: usize,
    pub results_kept: u64,
    pub retry: RetryPolicy,
}

/// What a round did: whether more records wait, the id it replayed up to,
/// the next batch when it was pulled already, and its results, to be saved
/// and committed.
struct RoundDone {
    more: bool,
    last: Option<RecordId>,
    next: Option<(SyncBatch, Transport)>,
    unsaved: Option<Unsaved>,
}

/// A round's results and its commit, not saved yet.
struct Unsaved {
    shard: u32,
    replayed: Replayed,
    commit: Option<CommitRequest>,
}

/// What replaying a batch in order came to.
#[derive(Default)]
struct Replayed {
    results: Vec<ReplayResult>,
    park: Vec<ParkedRecord>,
    /// Every record up to here is done (replayed, parked, or done before).
    upto: Option<RecordId>,
    /// The round stopped at a record that did not reach its target.
    stopped: Option<String>,
}

impl SyncRunner {
    /// Starts one task per shard; they stop when `shutdown` is cancelled.
    pub fn spawn(self: Arc<Self>, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
        info!(link = %self.link.describe(), peer_id = %self.peer_id, shards = self.shards, "playback sync started");
        counter!(m::SYNC_ERRORS_TOTAL).increment(0);
        counter!(m::REPLAY_RETRIES_TOTAL).increment(0);
        (0..self.shards)
            .map(|shard| {
                let runner = self.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move { runner.run_shard(shard, shutdown).await })
            })
            .collect()
    }

    async fn run_shard(&self, shard: u32, shutdown: CancellationToken) {
        let mut failures = 0u32;
        // After the first commit of this run, pull after it rather than
        // after the Record node's checkpoint: an MQTT commit may still be
        // on its way there.
        let mut cursor: Option<RecordId> = None;
        // The last id committed in this run: where to pull from again when
        // results could not be saved or committed.
        let mut committed: Option<RecordId> = None;
        // The next batch, pulled while this one was replayed.
        let mut prefetched = None;
        // The last round's results, saved and committed while the next
        // round replays.
        let mut unsaved: Option<Unsaved> = None;
        // The record this shard waits on, when one did not reach its target.
        let mut retrying: Option<Retrying> = None;
        let mut last_error: Option<String> = None;
        // The Record node's last rewind of this shard that was seen.
        let mut rewind: Option<u64> = None;
        loop {
            let step = tokio::select! {
                r = self.step(shard, cursor, prefetched.take(), unsaved.take(), &mut committed, &mut retrying, &mut rewind) => r,
                _ = shutdown.cancelled() => return,
            };
            // A backlog goes on at once, its results saved while the next
            // batch replays; otherwise they are saved before the shard waits.
            let step = match step {
                Ok(mut done) if !(done.more && retrying.is_none()) => {
                    match self.persist_all(done.unsaved.take(), &mut committed).await {
                        Ok(()) => Ok(done),
                        Err(e) => Err(e),
                    }
                }
                other => other,
            };
            self.stats.sync_ok.store(step.is_ok(), Ordering::Relaxed);
            let (pause, wake_early) = match step {
                Ok(done) => {
                    failures = 0;
                    cursor = done.last.or(cursor);
                    prefetched = done.next;
                    unsaved = done.unsaved;
                    match &retrying {
                        // Notifications must not hurry a backoff.
                        Some(r) => (self.retry.backoff(r.attempts), false),
                        None if done.more => continue,
                        None => (self.interval, true),
                    }
                }
                Err(e) => {
                    // What was replayed and not saved is replayed again,
                    // from after the last commit.
                    cursor = committed;
                    prefetched = None;
                    self.stats.sync_errors.fetch_add(1, Ordering::Relaxed);
                    counter!(m::SYNC_ERRORS_TOTAL).increment(1);
                    // Each distinct error once; a repeat only at debug.
                    let error = e.to_string();
                    failures = failures.saturating_add(1);
                    if failures == 1 || last_error.as_deref() != Some(error.as_str()) {
                        warn!(shard, %error, failures, "sync round failed; retrying");
                        last_error = Some(error);
                    } else {
                        debug!(shard, %error, failures, "sync round failed again");
                    }
                    let backoff = Duration::from_millis(100u64 << (failures - 1).min(5));
                    (
                        backoff.min(self.interval.max(Duration::from_millis(100))),
                        true,
                    )
                }
            };
            let woken = async {
                if wake_early {
                    self.wake[shard as usize].notified().await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = woken => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One round, with the results of the round before it saved and
    /// committed meanwhile when its batch is in hand already (pulled while
    /// the round before replayed) — else, or when the batch carries an
    /// operator's rewind, saved first. Either way they are saved and
    /// committed before this round's.
    #[allow(clippy::too_many_arguments)]
    async fn step(
        &self,
        shard: u32,
        cursor: Option<RecordId>,
        prefetched: Option<(SyncBatch, Transport)>,
        unsaved: Option<Unsaved>,
        committed: &mut Option<RecordId>,
        retrying: &mut Option<Retrying>,
        rewind: &mut Option<u64>,
    ) -> Result<RoundDone, RoundError> {
        let overlap = matches!(
            &prefetched,
            Some((batch, _)) if batch.rewind.is_none() || batch.rewind == *rewind
        );
        if !overlap {
            self.persist_all(unsaved, committed).await?;
            return self
                .round(shard, cursor, prefetched, retrying, rewind)
                .await;
        }
        let (done, saved) = tokio::join!(
            self.round(shard, cursor, prefetched, retrying, rewind),
            self.persist_all(unsaved, committed)
        );
        // Results not saved: this round's are dropped too and replayed
        // again after the last commit.
        saved?;
        done
    }

    async fn persist_all(
        &self,
        unsaved: Option<Unsaved>,
        committed: &mut Option<RecordId>,
    ) -> Result<(), RoundError> {
        if let Some(unsaved) = unsaved {
            if let Some(id) = self.persist(unsaved).await? {
                *committed = Some(id);
            }
        }
        Ok(())
    }

    /// Replays `records` in order, skipping those up to `done`, until one
    /// does not reach its target (the shard then waits and tries it again)
    /// or the retry policy gives up on it (it is parked and the round goes
    /// on).
    async fn replay_in_order(
        &self,
        shard: u32,
        records: &[Record],
        done: Option<RecordId>,
        retrying: &mut Option<Retrying>,
    ) -> Replayed {
        let mut out = Replayed::default();
        // Records up to `done` were replayed before (a round whose commit
        // failed, or a restart): skipped, still committed.
        let start =
            records.partition_point(|r| done.is_some_and(|done| r.id.is_some_and(|id| id <= done)));
        out.upto = start.checked_sub(1).and_then(|i| records[i].id);
        let mut waiting = false;
        self.replayer
            .replay_in_order(&records[start..], |record, attempt| {
                let id = record.id.unwrap_or(RecordId::ZERO);
                let mut result = attempt.result;
                if result.outcome != Outcome::Failed {
                    if let Some(r) = retrying.take_if(|r| r.id == id) {
                        result.attempts = r.attempts + 1;
                        info!(shard, record_id = %id, attempts = result.attempts, "replay delivered after retrying");
                    }
                    out.results.push(result);
                    out.upto = Some(id);
                    return ControlFlow::Continue(());
                }
                let tried = Retrying::failed(retrying.take(), id);
                result.attempts = tried.attempts;
                let error = result.detail.clone().unwrap_or_default();
                if attempt.transient && !self.retry.gives_up(tried.attempts, tried.since.elapsed()) {
                    if tried.attempts == 1 {
                        warn!(shard, record_id = %id, %error, "replay did not reach its target; the shard waits and tries it again");
                    } else {
                        debug!(shard, record_id = %id, attempts = tried.attempts, %error, "replay failed again");
                    }
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    counter!(m::REPLAY_RETRIES_TOTAL).increment(1);
                    self.stats.set_waiting(
                        shard,
                        Some(WaitingOn {
                            record_id: id,
                            attempts: tried.attempts,
                            error: error.clone(),
                        }),
                    );
                    *retrying = Some(tried);
                    out.stopped = Some(error);
                    waiting = true;
                    return ControlFlow::Break(());
                }
                warn!(
                    shard, record_id = %id, attempts = tried.attempts, %error,
                    "replay given up and parked; GET /api/replays/parked lists it, POST /api/replays/retry re-drives it"
                );
                out.park.push(ParkedRecord {
                    result: result.clone(),
                    pieces: record.encode_pieces(),
                });
                out.results.push(result);
                out.upto = Some(id);
                ControlFlow::Continue(())
            })
            .await;
        if waiting {
            return out;
        }
        self.stats.set_waiting(shard, None);
        out
    }

    /// One pull → replay → save → commit. When more records wait, the next
    /// batch is pulled while this one is replayed (the pull names where it
    /// starts, so it does not wait for this round's commit).
    async fn round(
        &self,
        shard: u32,
        after: Option<RecordId>,
        prefetched: Option<(SyncBatch, Transport)>,
        retrying: &mut Option<Retrying>,
        rewind: &mut Option<u64>,
    ) -> Result<RoundDone, RoundError> {
        let mut request = PullRequest {
            peer_id: self.peer_id.clone(),
            shard,
            limit: self.batch_size,
            after,
            start_ms: None,
            end_ms: None,
            rewind: *rewind,
        };
        let (batch, transport) = match prefetched {
            Some(pulled) => pulled,
            None => self.link.pull(&request).await?,
        };
        // An operator moved the checkpoint back: replay from there again.
        let after = match (batch.rewound_to, batch.rewind) {
            (Some(to), Some(id)) if *rewind != Some(id) => {
                info!(shard, to = %to, "checkpoint rewound on the Record node; replaying from there again");
                self.store
                    .save_replays(ReplayWrite {
                        upto: Some(to),
                        ..ReplayWrite::results(&self.peer_id, shard, &[], self.results_kept)
                    })
                    .await?;
                *rewind = Some(id);
                request.rewind = Some(id);
                Some(to)
            }
            _ => after,
        };
        self.stats
            .transport
            .store(transport as u8, Ordering::Relaxed);
        for t in [Transport::Mqtt, Transport::Http] {
            gauge!(m::SYNC_TRANSPORT, "transport" => t.as_str()).set(if t == transport {
                1.0
            } else {
                0.0
            });
        }
        self.stats.pulls.fetch_add(1, Ordering::Relaxed);
        counter!(m::SYNC_PULLS_TOTAL).increment(1);
        self.stats
            .last_sync_ms
            .store(crate::clock::now_ms(), Ordering::Relaxed);
        let Some(last) = batch.next_id else {
            self.stats.note_lag(shard, &[], false);
            return Ok(RoundDone {
                more: false,
                last: None,
                next: None,
                unsaved: None,
            });
        };
        // Read every round, not only after a restart: a round whose commit
        // failed after its results were saved is pulled again by the next.
        let done = self.store.replayed_upto(&self.peer_id, shard).await?;
        let started = std::time::Instant::now();
        let replay_all = async {
            let replayed = self
                .replay_in_order(shard, &batch.records, done, retrying)
                .await;
            (replayed, started.elapsed())
        };
        let (replayed, next) = if batch.has_more {
            let next_request = PullRequest {
                after: Some(last),
                ..request.clone()
            };
            // A failed prefetch is pulled again by the next round.
            let (replayed, next) = tokio::join!(replay_all, self.link.pull(&next_request));
            (replayed, next.ok())
        } else {
            (replay_all.await, None)
        };
        let ((replayed, replay_alone), replay_took) = (replayed, started.elapsed());
        if replayed.stopped.is_none() {
            self.stats.note_lag(shard, &batch.records, batch.has_more);
        }
        // The commit says how the shard stands: waiting on a record (never
        // past it), some records parked, or all done.
        let (status, retry_count, error_message) = match (&replayed.stopped, retrying.as_ref()) {
            (Some(error), Some(r)) => (CommitStatus::InProgress, r.attempts, error.clone()),
            _ if !replayed.park.is_empty() => (
                CommitStatus::Failed,
                replayed
                    .park
                    .iter()
                    .map(|p| p.result.attempts)
                    .max()
                    .unwrap_or(0),
                format!(
                    "{} record(s) parked after every attempt; the last: {}",
                    replayed.park.len(),
                    replayed
                        .park
                        .last()
                        .and_then(|p| p.result.detail.as_deref())
                        .unwrap_or("")
                ),
            ),
            _ => (CommitStatus::Completed, 0, String::new()),
        };
        debug!(
            shard,
            replayed = replayed.results.len(),
            replay_us = replay_alone.as_micros() as u64,
            replay_and_pull_us = replay_took.as_micros() as u64,
            "batch replayed"
        );
        let stopped = replayed.stopped.is_some();
        // Stopped at the first record after a restart: nothing to commit.
        let upto = replayed.upto.or(after);
        let commit = upto.map(|upto| CommitRequest {
            peer_id: self.peer_id.clone(),
            shard_id: ShardId(shard),
            last_sync_time: crate::clock::now_ms() / 1000,
            last_record_id: upto,
            status,
            retry_count,
            error_message,
            rewind: *rewind,
        });
        Ok(RoundDone {
            more: batch.has_more && !stopped && upto.is_some(),
            last: upto,
            // Waiting on a record: the same batch serves the next try (what
            // is done in it is skipped), so a backoff costs no pull.
            next: if stopped {
                Some((batch, transport))
            } else {
                next
            },
            unsaved: Some(Unsaved {
                shard,
                replayed,
                commit,
            }),
        })
    }

    /// Saves a round's results with its "replayed up to" mark, then
    /// commits: the commit never names a record whose result is not saved.
    /// Returns the id committed.
    async fn persist(&self, unsaved: Unsaved) -> Result<Option<RecordId>, RoundError> {
        let Unsaved {
            shard,
            replayed,
            commit,
        } = unsaved;
        let started = std::time::Instant::now();
        if !replayed.results.is_empty() || replayed.upto.is_some() {
            self.store
                .save_replays(ReplayWrite {
                    peer: &self.peer_id,
                    shard,
                    results: &replayed.results,
                    park: &replayed.park,
                    unpark: &[],
                    upto: replayed.upto,
                    keep: self.results_kept,
                })
                .await?;
        }
        self.stats.count(&replayed.results);
        if !replayed.park.is_empty() {
            self.stats
                .refresh_parked(self.store.as_ref(), self.shards)
                .await?;
        }
        let Some(commit) = commit else {
            return Ok(None);
        };
        let save_took = started.elapsed();
        let transport = self.link.commit(&commit).await?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        if transport == Transport::Mqtt {
            self.stats.mqtt_commits.fetch_add(1, Ordering::Relaxed);
        }
        counter!(m::COMMITS_TOTAL, "transport" => transport.as_str(), "result" => "sent")
            .increment(1);
        debug!(
            shard, replayed = replayed.results.len(), last = %commit.last_record_id,
            via = transport.as_str(), save_us = save_took.as_micros() as u64,
            commit_us = (started.elapsed() - save_took).as_micros() as u64, "batch committed"
        );
        Ok(Some(commit.last_record_id))
    }
}
