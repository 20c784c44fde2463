//! Where records, checkpoints and replay results live.
//!
//! One trait, [`Store`], and two implementations: Redis Streams
//! ([`RedisStore`]) and a durable embedded store on local disk
//! ([`EmbeddedStore`], redb). The integration tests run one conformance
//! suite against both.

mod embedded;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::model::id::RecordId;
use crate::model::record::{Protocol, Record};
use crate::model::replay::{ParkedRecord, ReplayResult};
use crate::model::sync::Checkpoint;

pub use self::embedded::EmbeddedStore;
pub use self::redis::RedisStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("embedded store {path}: {message}")]
    Embedded { path: String, message: String },
    #[error("record {id} on shard {shard} cannot be decoded: {message}")]
    Corrupt {
        shard: u32,
        id: RecordId,
        message: String,
    },
}

/// A record ready to be written: its shard, its protocol (for the
/// metrics' `protocol` label) and its encoded pieces.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub shard: u32,
    pub protocol: Protocol,
    pub pieces: Vec<Bytes>,
}

impl NewRecord {
    pub fn encode(record: &Record) -> NewRecord {
        NewRecord {
            shard: record.shard,
            protocol: record.protocol(),
            pieces: record.encode_pieces(),
        }
    }

    pub fn size(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }
}

/// A record as read back, still encoded.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub shard: u32,
    pub id: RecordId,
    pub pieces: Vec<Bytes>,
}

impl StoredRecord {
    pub fn decode(&self) -> Result<Record, StoreError> {
        Record::decode_pieces(self.id, &self.pieces).map_err(|e| StoreError::Corrupt {
            shard: self.shard,
            id: self.id,
            message: e.to_string(),
        })
    }
}

/// Whether a store's server keeps its data when it restarts. A Redis with
/// `save ""` and `appendonly no` loses every record and checkpoint then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Persistence {
    #[serde(rename = "none")]
    None,
    #[serde(rename = "rdb")]
    Rdb,
    #[serde(rename = "aof")]
    Aof,
    #[serde(rename = "aof+rdb")]
    AofRdb,
    /// Not seen yet, or the server does not say (managed Redis often
    /// refuses `CONFIG`).
    #[serde(rename = "unknown")]
    Unknown,
}

impl Persistence {
    /// From Redis's `appendonly` (`yes`/`no`) and `save` (`""`: no snapshots).
    pub fn of_redis(appendonly: &str, save: &str) -> Persistence {
        match (
            appendonly.eq_ignore_ascii_case("yes"),
            !save.trim().is_empty(),
        ) {
            (true, true) => Persistence::AofRdb,
            (true, false) => Persistence::Aof,
            (false, true) => Persistence::Rdb,
            (false, false) => Persistence::None,
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Names the backend for status pages and logs (never a password).
    fn describe(&self) -> String;

    /// The same store over connections of its own, driven by the runtime
    /// that first uses them: for a component on its own thread (the record
    /// writer), so its writes do not hop to another thread and back. `None`
    /// when the backend has no connections (embedded).
    fn dedicated(&self) -> Option<Arc<dyn Store>> {
        None
    }

    async fn ping(&self) -> Result<(), StoreError>;

    /// Whether the store's server keeps data across its own restart, as
    /// last checked; `None` where that does not apply (the embedded store
    /// syncs every write to its file).
    fn persistence(&self) -> Option<Persistence> {
        None
    }

    /// Asks the server again and remembers the answer for
    /// [`Store::persistence`]. An error means the server could not be
    /// reached; a server that will not say is [`Persistence::Unknown`].
    async fn check_persistence(&self) -> Result<Option<Persistence>, StoreError> {
        Ok(None)
    }

    /// Writes a batch; returns the assigned ids in the same order. The
    /// batch is written all or none.
    async fn append(&self, records: &[NewRecord]) -> Result<Vec<RecordId>, StoreError>;

    /// Records of `shard` with `from <= id <= to`, oldest first, at most `limit`.
    async fn read(
        &self,
        shard: u32,
        from: RecordId,
        to: RecordId,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError>;

    async fn len(&self, shard: u32) -> Result<u64, StoreError>;

    async fn last_id(&self, shard: u32) -> Result<Option<RecordId>, StoreError>;

    /// Drops records older than `min_id` and beyond the newest `max_len`.
    async fn trim(
        &self,
        shard: u32,
        min_id: Option<RecordId>,
        max_len: Option<u64>,
    ) -> Result<(), StoreError>;

    async fn checkpoint(&self, peer: &str, shard: u32) -> Result<Option<Checkpoint>, StoreError>;

    /// Every peer's checkpoint on shards `0..shards`.
    async fn checkpoints(&self, shards: u32) -> Result<Vec<Checkpoint>, StoreError>;

    /// Stores a commit without ever moving a checkpoint backwards
    /// ([`Checkpoint::merge`]); returns what is stored afterwards.
    async fn commit(&self, checkpoint: Checkpoint) -> Result<Checkpoint, StoreError>;

    /// Stores `checkpoint` as it is, backwards too: an operator's rewind,
    /// where [`Store::commit`] would refuse to move back.
    async fn set_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), StoreError>;

    /// Removes `peer`'s checkpoints on shards `0..shards` (an expired peer).
    async fn forget_peer(&self, peer: &str, shards: u32) -> Result<(), StoreError>;

    /// Playback side: keeps what one replay round did, all in one write.
    async fn save_replays(&self, write: ReplayWrite<'_>) -> Result<(), StoreError>;

    async fn replayed_upto(&self, peer: &str, shard: u32) -> Result<Option<RecordId>, StoreError>;

    /// Replay results of `shard`, newest first, at most `limit`.
    async fn replays(&self, shard: u32, limit: usize) -> Result<Vec<ReplayResult>, StoreError>;

    /// The last results of the parked records of `shard`, oldest first, at
    /// most `limit`.
    async fn parked(&self, shard: u32, limit: usize) -> Result<Vec<ReplayResult>, StoreError>;

    /// A parked record, to replay it again.
    async fn parked_record(
        &self,
        shard: u32,
        id: RecordId,
    ) -> Result<Option<StoredRecord>, StoreError>;

    /// How many records of `shard` are parked.
    async fn parked_count(&self, shard: u32) -> Result<u64, StoreError>;
}

/// What one replay round of a shard keeps: its results, the records given
/// up on, the parked records delivered at last, and how far `peer` got.
#[derive(Debug, Clone, Copy)]
pub struct ReplayWrite<'a> {
    pub peer: &'a str,
    pub shard: u32,
    pub results: &'a [ReplayResult],
    /// Records given up on (or re-driven in vain): kept, with their last
    /// result, until re-driven; a record parked again is replaced.
    pub park: &'a [ParkedRecord],
    /// Parked records that have now been delivered.
    pub unpark: &'a [RecordId],
    /// Marks everything up to here as replayed by `peer`.
    pub upto: Option<RecordId>,
    /// Results kept per shard.
    pub keep: u64,
}

impl<'a> ReplayWrite<'a> {
    /// Results only, with nothing parked and no mark.
    pub fn results(peer: &'a str, shard: u32, results: &'a [ReplayResult], keep: u64) -> Self {
        ReplayWrite {
            peer,
            shard,
            results,
            park: &[],
            unpark: &[],
            upto: None,
            keep,
        }
    }
}

/// The store a config asks for: Redis when `redis` is set, else embedded.
pub fn open(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    match &config.redis {
        Some(redis) => Ok(Arc::new(
            RedisStore::new(redis)?.with_max_len(config.record.max_len()),
        )),
        None => Ok(Arc::new(EmbeddedStore::open(&config.data_dir)?)),
    }
}

fn encode_result(result: &ReplayResult) -> Vec<u8> {
    rmp_serde::to_vec_named(result).expect("replay results always encode")
}

fn decode_result(bytes: &[u8]) -> Option<ReplayResult> {
    rmp_serde::from_slice(bytes).ok()
}

/// How long the start-up check waits for the store to answer.
const FIRST_PING: Duration = Duration::from_secs(5);

/// Pings the store once at start-up and warns when it cannot be reached,
/// naming it (`name`, no password in it) and what waits meanwhile
/// (`waits`), so a Redis that is down is heard of before the first
/// request; then says when it answers.
pub async fn check_reachable(
    store: Arc<dyn Store>,
    name: String,
    waits: &'static str,
    shutdown: CancellationToken,
) {
    let mut warned = false;
    loop {
        let answer = tokio::select! {
            answer = tokio::time::timeout(FIRST_PING, store.ping()) => answer,
            _ = shutdown.cancelled() => return,
        };
        match answer {
            Ok(Ok(())) if warned => return info!("store reachable: {name}"),
            Ok(Ok(())) => return debug!("store reachable: {name}"),
            Ok(Err(e)) if !warned => warn!(error = %e, "store unreachable: {name}; {waits}"),
            Err(_) if !warned => {
                warn!("store unreachable: {name} did not answer within {FIRST_PING:?}; {waits}")
            }
            _ => {}
        }
        warned = true;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// How often a store's persistence is checked again once it answered
/// (a Redis may be reconfigured or replaced); while it has not, every second.
const PERSISTENCE_EVERY: Duration = Duration::from_secs(60);

/// Checks the store's persistence in the background, so a Redis that is
/// down does not hold up start-up, and warns whenever it is seen to keep
/// nothing across a restart.
pub async fn watch_persistence(store: Arc<dyn Store>, shutdown: CancellationToken) {
    let mut last = Persistence::Unknown;
    loop {
        let checked = tokio::select! {
            checked = store.check_persistence() => checked,
            _ = shutdown.cancelled() => return,
        };
        let wait = match checked {
            Ok(None) => return,
            Ok(Some(seen)) => {
                if seen != last {
                    match seen {
                        Persistence::None => warn!(
                            store = %store.describe(),
                            "redis persists nothing (save \"\" and appendonly no): \
                             a restart of Redis loses every record and checkpoint; \
                             set appendonly yes (README: Redis settings)"
                        ),
                        Persistence::Unknown => info!(
                            store = %store.describe(),
                            "the store does not say whether it persists (CONFIG GET refused)"
                        ),
                        _ => {
                            info!(store = %store.describe(), persistence = ?seen, "store persistence")
                        }
                    }
                    last = seen;
                }
                PERSISTENCE_EVERY
            }
            Err(e) => {
                debug!(error = %e, "store persistence not checked yet");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_settings_name_their_persistence() {
        for (appendonly, save, expected, shown) in [
            ("no", "", Persistence::None, "\"none\""),
            ("no", "3600 1 300 100 60 10000", Persistence::Rdb, "\"rdb\""),
            ("yes", "", Persistence::Aof, "\"aof\""),
            ("yes", "3600 1", Persistence::AofRdb, "\"aof+rdb\""),
        ] {
            let seen = Persistence::of_redis(appendonly, save);
            assert_eq!(seen, expected, "{appendonly} {save:?}");
            assert_eq!(serde_json::to_string(&seen).unwrap(), shown);
        }
    }
}
