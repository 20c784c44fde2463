//! The pull loop: one task per shard, shards in parallel, records of a
//! shard one by one in id order.
//!
//! A shard pulls again at once while records wait, otherwise when its MQTT
//! notification arrives or `sync.interval` has passed. Batches come by MQTT
//! query when the broker is there, else (or when the query fails) by
//! `GET /sync`; commits go as QoS 1 messages, else by `POST /commit`.
//!
//! One round: pull a batch after the last commit → replay what was
//! not replayed yet → store the results and the "replayed up to" mark in one
//! write → commit. A crash before the local write replays that batch's
//! records again (each carries `X-QProxy-Replay-Id`); a crash after it only
//! repeats the commit. A committed record is never replayed again.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use metrics::{counter, gauge};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Outcome, ReplayResult, Replayer};
use crate::metrics as m;
use crate::record::RecordId;
use crate::store::{Store, StoreError};
use crate::sync::client::{PeerClient, PeerError};
use crate::sync::mqtt::MqttLink;
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
    #[error("mqtt: {0} (and no HTTP peer to fall back to)")]
    Mqtt(String),
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
                    )
                    .await?;
                Ok((batch, Transport::Http))
            }
            None => Err(RoundError::Mqtt(
                mqtt_error.unwrap_or_else(|| "not connected".into()),
            )),
        }
    }

    async fn commit(&self, commit: &CommitRequest) -> Result<Transport, RoundError> {
        let mut mqtt_error = None;
        if let Some(mqtt) = self.mqtt.as_ref().filter(|m| m.is_connected()) {
            match mqtt.commit(commit).await {
                Ok(()) => return Ok(Transport::Mqtt),
                Err(e) => mqtt_error = Some(e.to_string()),
            }
        }
        match &self.http {
            Some(http) => {
                http.commit(commit).await?;
                Ok(Transport::Http)
            }
            None => Err(RoundError::Mqtt(
                mqtt_error.unwrap_or_else(|| "not connected".into()),
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
}

/// What a round did: whether more records wait, the id it committed, and
/// the next batch when it was pulled already.
struct RoundDone {
    more: bool,
    last: Option<RecordId>,
    next: Option<(SyncBatch, Transport)>,
}

impl SyncRunner {
    /// Starts one task per shard; they stop when `shutdown` is cancelled.
    pub fn spawn(self: Arc<Self>, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
        info!(link = %self.link.describe(), peer_id = %self.peer_id, shards = self.shards, "playback sync started");
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
        // The next batch, pulled while this one was replayed.
        let mut prefetched = None;
        loop {
            let round = tokio::select! {
                r = self.round(shard, cursor, prefetched.take()) => r,
                _ = shutdown.cancelled() => return,
            };
            self.stats.sync_ok.store(round.is_ok(), Ordering::Relaxed);
            let pause = match round {
                Ok(done) => {
                    failures = 0;
                    cursor = done.last.or(cursor);
                    prefetched = done.next;
                    if done.more {
                        continue;
                    }
                    self.interval
                }
                Err(e) => {
                    self.stats.sync_errors.fetch_add(1, Ordering::Relaxed);
                    counter!(m::SYNC_ERRORS_TOTAL).increment(1);
                    if failures == 0 {
                        warn!(shard, error = %e, "sync round failed; retrying");
                    } else {
                        debug!(shard, error = %e, failures, "sync round failed again");
                    }
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_millis(100u64 << failures.min(5));
                    backoff.min(self.interval.max(Duration::from_millis(100)))
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.wake[shard as usize].notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One pull → replay → save → commit. When more records wait, the next
    /// batch is pulled while this one is replayed (the pull names where it
    /// starts, so it does not wait for this round's commit).
    async fn round(
        &self,
        shard: u32,
        after: Option<RecordId>,
        prefetched: Option<(SyncBatch, Transport)>,
    ) -> Result<RoundDone, RoundError> {
        let request = PullRequest {
            peer_id: self.peer_id.clone(),
            shard,
            limit: self.batch_size,
            after,
            start_ms: None,
            end_ms: None,
        };
        let (batch, transport) = match prefetched {
            Some(pulled) => pulled,
            None => self.link.pull(&request).await?,
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
        let shard_label = shard.to_string();
        let Some(last) = batch.next_id else {
            gauge!(m::SYNC_LAG_SECONDS, "shard" => shard_label).set(0.0);
            return Ok(RoundDone {
                more: false,
                last: None,
                next: None,
            });
        };
        // Read every round, not only after a restart: a round whose commit
        // failed after its results were saved is pulled again by the next.
        let done = self.store.replayed_upto(&self.peer_id, shard).await?;
        let replay_all = async {
            let mut results = Vec::with_capacity(batch.records.len());
            for record in &batch.records {
                if done.is_some() && record.id <= done {
                    continue;
                }
                results.push(self.replayer.replay(record).await);
            }
            results
        };
        let (results, next) = if batch.has_more {
            let next_request = PullRequest {
                after: Some(last),
                ..request.clone()
            };
            // A failed prefetch is pulled again by the next round.
            let (results, next) = tokio::join!(replay_all, self.link.pull(&next_request));
            (results, next.ok())
        } else {
            (replay_all.await, None)
        };
        self.store
            .save_replays(
                &self.peer_id,
                shard,
                &results,
                Some(last),
                self.results_kept,
            )
            .await?;
        self.stats.count(&results);
        if let Some(newest) = batch.records.last() {
            let lag = crate::clock::now_ms().saturating_sub(newest.captured_at_ms);
            let lag = if batch.has_more {
                lag as f64 / 1000.0
            } else {
                0.0
            };
            gauge!(m::SYNC_LAG_SECONDS, "shard" => shard_label).set(lag);
        }
        let commit = CommitRequest {
            peer_id: self.peer_id.clone(),
            shard_id: ShardId(shard),
            last_sync_time: crate::clock::now_ms() / 1000,
            last_record_id: last,
            status: CommitStatus::Completed,
            retry_count: 0,
            error_message: String::new(),
        };
        let transport = self.link.commit(&commit).await?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        if transport == Transport::Mqtt {
            self.stats.mqtt_commits.fetch_add(1, Ordering::Relaxed);
        }
        counter!(m::COMMITS_TOTAL, "transport" => transport.as_str(), "result" => "sent")
            .increment(1);
        debug!(shard, replayed = results.len(), last = %last, via = transport.as_str(), "batch committed");
        Ok(RoundDone {
            more: batch.has_more,
            last: Some(last),
            next,
        })
    }
}
