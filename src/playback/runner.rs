//! The pull loop: one task per shard, shards in parallel, records of a
//! shard one by one in id order.
//!
//! One round: pull a batch after the committed checkpoint → replay what was
//! not replayed yet → store the results and the "replayed up to" mark in one
//! write → commit. A crash before the local write replays that batch's
//! records again (each carries `X-QProxy-Replay-Id`); a crash after it only
//! repeats the commit. A committed record is never replayed again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Outcome, ReplayResult, Replayer};
use crate::metrics as m;
use crate::store::{Store, StoreError};
use crate::sync::client::{PeerClient, PeerError};
use crate::sync::{CommitRequest, CommitStatus, ShardId};

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
}

impl PlaybackStats {
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
}

pub struct SyncRunner {
    pub peer: PeerClient,
    pub replayer: Arc<Replayer>,
    pub store: Arc<dyn Store>,
    pub stats: Arc<PlaybackStats>,
    pub peer_id: String,
    pub shards: u32,
    pub interval: Duration,
    pub batch_size: usize,
    pub results_kept: u64,
}

impl SyncRunner {
    /// Starts one task per shard; they stop when `shutdown` is cancelled.
    pub fn spawn(self: Arc<Self>, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
        info!(peer = %self.peer.addr(), peer_id = %self.peer_id, shards = self.shards, "playback sync started");
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
        loop {
            let round = tokio::select! {
                r = self.round(shard) => r,
                _ = shutdown.cancelled() => return,
            };
            self.stats.sync_ok.store(round.is_ok(), Ordering::Relaxed);
            let pause = match round {
                Ok(true) => {
                    failures = 0;
                    continue;
                }
                Ok(false) => {
                    failures = 0;
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
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One pull → replay → save → commit; true when more records wait.
    async fn round(&self, shard: u32) -> Result<bool, RoundError> {
        let batch = self
            .peer
            .pull(&self.peer_id, shard, self.batch_size, None)
            .await?;
        self.stats.pulls.fetch_add(1, Ordering::Relaxed);
        counter!(m::SYNC_PULLS_TOTAL).increment(1);
        self.stats
            .last_sync_ms
            .store(crate::clock::now_ms(), Ordering::Relaxed);
        let shard_label = shard.to_string();
        let Some(last) = batch.next_id else {
            gauge!(m::SYNC_LAG_SECONDS, "shard" => shard_label).set(0.0);
            return Ok(false);
        };
        let done = self.store.replayed_upto(&self.peer_id, shard).await?;
        let mut results = Vec::with_capacity(batch.records.len());
        for record in &batch.records {
            if done.is_some() && record.id <= done {
                continue;
            }
            results.push(self.replayer.replay(record).await);
        }
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
        self.peer.commit(&commit).await?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        counter!(m::COMMITS_TOTAL, "transport" => "http").increment(1);
        debug!(shard, replayed = results.len(), last = %last, "batch committed");
        Ok(batch.has_more)
    }
}
