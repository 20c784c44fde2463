//! Re-driving parked records: the operator's way to deliver what the
//! retry policy gave up on, once zone B can take it.

use super::{Outcome, ParkedRecord, PlaybackStats, ReplayResult, Replayer};
use crate::record::RecordId;
use crate::store::{ReplayWrite, Store, StoreError};

/// Most parked records one call re-drives per shard.
const MAX_REDRIVE: usize = 10_000;

/// What a re-drive did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Redriven {
    /// The new result of each record tried, in order per shard.
    pub results: Vec<ReplayResult>,
    /// Tried and delivered: no longer parked.
    pub delivered: usize,
    /// Parked records left on every shard.
    pub still_parked: u64,
}

/// Where and what to re-drive.
pub struct Redrive<'a> {
    pub store: &'a dyn Store,
    pub replayer: &'a Replayer,
    pub stats: &'a PlaybackStats,
    pub peer: &'a str,
    pub shards: u32,
    pub keep: u64,
}

impl Redrive<'_> {
    /// Replays the parked records of `shard` (every shard when `None`;
    /// only `id` when given) once each, oldest first. A record that reaches
    /// its target leaves the parked list, whatever the comparison says; one
    /// that does not stays, with its new result and one more attempt.
    pub async fn run(
        &self,
        shard: Option<u32>,
        id: Option<RecordId>,
    ) -> Result<Redriven, StoreError> {
        let mut done = Redriven::default();
        let shards: Vec<u32> = match shard {
            Some(s) => vec![s],
            None => (0..self.shards).collect(),
        };
        for shard in shards {
            let parked = self.store.parked(shard, MAX_REDRIVE).await?;
            let mut results = Vec::new();
            let mut park = Vec::new();
            let mut unpark = Vec::new();
            for last in parked {
                if id.is_some_and(|id| id != last.record_id) {
                    continue;
                }
                let Some(stored) = self.store.parked_record(shard, last.record_id).await? else {
                    continue;
                };
                let record = stored.decode()?;
                let mut result = self.replayer.replay(&record).await.result;
                result.attempts = last.attempts.saturating_add(1);
                if result.outcome == Outcome::Failed {
                    park.push(ParkedRecord {
                        result: result.clone(),
                        pieces: stored.pieces,
                    });
                } else {
                    unpark.push(result.record_id);
                    done.delivered += 1;
                }
                results.push(result);
            }
            if results.is_empty() {
                continue;
            }
            self.store
                .save_replays(ReplayWrite {
                    park: &park,
                    unpark: &unpark,
                    ..ReplayWrite::results(self.peer, shard, &results, self.keep)
                })
                .await?;
            self.stats.count(&results);
            done.results.extend(results);
        }
        done.still_parked = self.stats.refresh_parked(self.store, self.shards).await?;
        Ok(done)
    }
}
