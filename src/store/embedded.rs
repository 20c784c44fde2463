//! A durable embedded store on local disk (redb), for one-binary deployments.
//!
//! Ids follow the Redis rule (`<ms>-<seq>`, strictly increasing per shard).
//! Every write is one transaction, synced to disk before it returns.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{decode_result, encode_result, NewRecord, ReplayWrite, StoreError, StoredRecord};
use crate::playback::ReplayResult;
use crate::record::RecordId;
use crate::sync::Checkpoint;

type IdKey = (u32, u64, u64);

const RECORDS: TableDefinition<IdKey, &[u8]> = TableDefinition::new("records");
const CHECKPOINTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("checkpoints");
const REPLAYS: TableDefinition<IdKey, &[u8]> = TableDefinition::new("replays");
const REPLAYED: TableDefinition<(&str, u32), (u64, u64)> = TableDefinition::new("replayed");
/// Parked records' last results, and the records themselves.
const PARKED: TableDefinition<IdKey, &[u8]> = TableDefinition::new("parked");
const PARKED_RECORDS: TableDefinition<IdKey, &[u8]> = TableDefinition::new("parked_records");

#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// The last id given per shard, loaded on first use.
    last_ids: Mutex<HashMap<u32, RecordId>>,
}

fn key(shard: u32, id: RecordId) -> IdKey {
    (shard, id.ms, id.seq)
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/qproxy.redb`.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        let path = dir.join("qproxy.redb");
        let fail = |message: String| StoreError::Embedded {
            path: path.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create folder: {e}")))?;
        let db = Database::create(&path).map_err(|e| fail(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| fail(e.to_string()))?;
        {
            txn.open_table(RECORDS).map_err(|e| fail(e.to_string()))?;
            txn.open_table(CHECKPOINTS)
                .map_err(|e| fail(e.to_string()))?;
            txn.open_table(REPLAYS).map_err(|e| fail(e.to_string()))?;
            txn.open_table(REPLAYED).map_err(|e| fail(e.to_string()))?;
            txn.open_table(PARKED).map_err(|e| fail(e.to_string()))?;
            txn.open_table(PARKED_RECORDS)
                .map_err(|e| fail(e.to_string()))?;
        }
        txn.commit().map_err(|e| fail(e.to_string()))?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                path,
                last_ids: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Runs blocking redb work off the async threads.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, String> + Send + 'static,
    {
        let inner = self.inner.clone();
        let path = inner.path.display().to_string();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|message| StoreError::Embedded { path, message })
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn last_in(
    table: &impl ReadableTable<IdKey, &'static [u8]>,
    shard: u32,
) -> Result<Option<RecordId>, String> {
    let mut range = table
        .range((shard, 0, 0)..=(shard, u64::MAX, u64::MAX))
        .map_err(err)?;
    Ok(range.next_back().transpose().map_err(err)?.map(|(k, _)| {
        let (_, ms, seq) = k.value();
        RecordId::new(ms, seq)
    }))
}

fn count_in(table: &impl ReadableTable<IdKey, &'static [u8]>, shard: u32) -> Result<u64, String> {
    let range = table
        .range((shard, 0, 0)..=(shard, u64::MAX, u64::MAX))
        .map_err(err)?;
    Ok(range.count() as u64)
}

#[async_trait]
impl super::Store for EmbeddedStore {
    fn describe(&self) -> String {
        format!("embedded {}", self.inner.path.display())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|inner| inner.db.begin_read().map(|_| ()).map_err(err))
            .await
    }

    async fn append(&self, records: &[NewRecord]) -> Result<Vec<RecordId>, StoreError> {
        let records = records.to_vec();
        self.blocking(move |inner| {
            let now = crate::clock::now_ms();
            let txn = inner.db.begin_write().map_err(err)?;
            let mut ids = Vec::with_capacity(records.len());
            let mut last_ids = inner.last_ids.lock().expect("last id lock");
            let mut given: HashMap<u32, RecordId> = HashMap::new();
            {
                let mut table = txn.open_table(RECORDS).map_err(err)?;
                for record in &records {
                    let last = match given.get(&record.shard).or(last_ids.get(&record.shard)) {
                        Some(id) => *id,
                        None => last_in(&table, record.shard)?.unwrap_or(RecordId::ZERO),
                    };
                    let id = RecordId::next_after(last, now);
                    let mut whole = Vec::with_capacity(record.size());
                    for piece in &record.pieces {
                        whole.extend_from_slice(piece);
                    }
                    table
                        .insert(key(record.shard, id), whole.as_slice())
                        .map_err(err)?;
                    given.insert(record.shard, id);
                    ids.push(id);
                }
            }
            txn.commit().map_err(err)?;
            last_ids.extend(given);
            Ok(ids)
        })
        .await
    }

    async fn read(
        &self,
        shard: u32,
        from: RecordId,
        to: RecordId,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        if from > to || limit == 0 {
            return Ok(Vec::new());
        }
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(err)?;
            let table = txn.open_table(RECORDS).map_err(err)?;
            let mut out = Vec::new();
            for entry in table
                .range(key(shard, from)..=key(shard, to))
                .map_err(err)?
            {
                let (k, v) = entry.map_err(err)?;
                let (_, ms, seq) = k.value();
                out.push(StoredRecord {
                    shard,
                    id: RecordId::new(ms, seq),
                    pieces: vec![Bytes::copy_from_slice(v.value())],
                });
                if out.len() == limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn len(&self, shard: u32) -> Result<u64, StoreError> {
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(err)?;
            count_in(&txn.open_table(RECORDS).map_err(err)?, shard)
        })
        .await
    }

    async fn last_id(&self, shard: u32) -> Result<Option<RecordId>, StoreError> {
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(err)?;
            last_in(&txn.open_table(RECORDS).map_err(err)?, shard)
        })
        .await
    }

    async fn trim(
        &self,
        shard: u32,
        min_id: Option<RecordId>,
        max_len: Option<u64>,
    ) -> Result<(), StoreError> {
        self.blocking(move |inner| {
            let txn = inner.db.begin_write().map_err(err)?;
            {
                let mut table = txn.open_table(RECORDS).map_err(err)?;
                if let Some(min_id) = min_id {
                    table
                        .retain_in(key(shard, RecordId::ZERO)..key(shard, min_id), |_, _| false)
                        .map_err(err)?;
                }
                if let Some(max_len) = max_len {
                    let count = count_in(&table, shard)?;
                    if count > max_len {
                        let cut = {
                            let mut range = table
                                .range(key(shard, RecordId::ZERO)..=key(shard, RecordId::MAX))
                                .map_err(err)?;
                            let nth = range.nth((count - max_len) as usize);
                            nth.transpose().map_err(err)?.map(|(k, _)| k.value())
                        };
                        if let Some((_, ms, seq)) = cut {
                            table
                                .retain_in(
                                    key(shard, RecordId::ZERO)..key(shard, RecordId::new(ms, seq)),
                                    |_, _| false,
                                )
                                .map_err(err)?;
                        }
                    }
                }
            }
            txn.commit().map_err(err)
        })
        .await
    }

    async fn checkpoint(&self, peer: &str, shard: u32) -> Result<Option<Checkpoint>, StoreError> {
        let peer = peer.to_owned();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(err)?;
            let table = txn.open_table(CHECKPOINTS).map_err(err)?;
            let value = table.get((peer.as_str(), shard)).map_err(err)?;
            Ok(value.and_then(|v| serde_json::from_slice(v.value()).ok()))
        })
        .await
    }

    async fn checkpoints(&self, shards: u32) -> Result<Vec<Checkpoint>, StoreError> {
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(err)?;
            let table = txn.open_table(CHECKPOINTS).map_err(err)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(err)? {
                let (k, v) = entry.map_err(err)?;
                if k.value().1 < shards {
                    out.extend(serde_json::from_slice::<Checkpoint>(v.value()).ok());
                }
            }
            Ok(out)
        })
        .await
    }

    async fn commit(&self, checkpoint: Checkpoint) -> Result<Checkpoint, StoreError> {
        self.blocking(move |inner| {
            let txn = inner.db.begin_write().map_err(err)?;
            let stored = {
                let mut table = txn.open_table(CHECKPOINTS).map_err(err)?;
                let k = (checkpoint.peer_id.as_str(), checkpoint.shard);
                let current = table
                    .get(k)
                    .map_err(err)?
                    .and_then(|v| serde_json::from_slice::<Checkpoint>(v.value()).ok());
                let merged = Checkpoint::merge(current, checkpoint.clone());
                let json = serde_json::to_vec(&merged).expect("checkpoints always encode");
                table.insert(k, json.as_slice()).map_err(err)?;
                merged
            };
            txn.commit().map_err(err)?;
            Ok(stored)
        })
        .await
    }

    async fn set_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), StoreError> {
        self.blocking(move |inner| {
            let txn = inner.db.begin_write().map_err(err)?;
            {
                let mut table = txn.open_table(CHECKPOINTS).map_err(err)?;
                let json = serde_json::to_vec(&checkpoint).expect("checkpoints always encode");
                table
                    .insert(
                        (checkpoint.peer_id.as_str(), checkpoint.shard),
                        json.as_slice(),
                    )
                    .map_err(err)?;
            }
            txn.commit().map_err(err)
        })
        .await
    }

    async fn forget_peer(&self, peer: &str, shards: u32) -> Result<(), StoreError> {
        let peer = peer.to_owned();
        self.blocking(move |inner| {
            let txn = inner.db.begin_write().map_err(err)?;
            {
                let mut table = txn.open_table(CHECKPOINTS).map_err(err)?;
                for shard in 0..shards {
                    table.remove((peer.as_str(), shard)).map_err(err)?;
                }
            }
            txn.commit().map_err(err)
        })
        .await
    }

    async fn save_replays(&self, write: ReplayWrite<'_>) -> Result<(), StoreError> {
        let peer = write.peer.to_owned();
        let shard = write.shard;
        let results = write.results.to_vec();
        let park: Vec<(RecordId, Vec<u8>, Vec<u8>)> = write
            .park
            .iter()
            .map(|p| {
                let mut whole = Vec::with_capacity(p.pieces.iter().map(Bytes::len).sum());
                for piece in &p.pieces {
                    whole.extend_from_slice(piece);
                }
                (p.result.record_id, encode_result(&p.result), whole)
            })
            .collect();
        let unpark = write.unpark.to_vec();
        let (upto, keep) = (write.upto, write.keep);
        self.blocking(move |inner| {
            let txn = inner.db.begin_write().map_err(err)?;
            {
                let mut table = txn.open_table(REPLAYS).map_err(err)?;
                for result in &results {
                    table
                        .insert(
                            key(shard, result.record_id),
                            encode_result(result).as_slice(),
                        )
                        .map_err(err)?;
                }
                let count = count_in(&table, shard)?;
                let keep = keep.max(1);
                if count > keep {
                    let mut dropped = 0;
                    table
                        .retain_in(
                            key(shard, RecordId::ZERO)..=key(shard, RecordId::MAX),
                            |_, _| {
                                dropped += 1;
                                dropped > count - keep
                            },
                        )
                        .map_err(err)?;
                }
                if !park.is_empty() || !unpark.is_empty() {
                    let mut parked = txn.open_table(PARKED).map_err(err)?;
                    let mut records = txn.open_table(PARKED_RECORDS).map_err(err)?;
                    for (id, result, record) in &park {
                        parked
                            .insert(key(shard, *id), result.as_slice())
                            .map_err(err)?;
                        records
                            .insert(key(shard, *id), record.as_slice())
                            .map_err(err)?;
                    }
                    for id in &unpark {
                        parked.remove(key(shard, *id)).map_err(err)?;
                        records.remove(key(shard, *id)).map_err(err)?;
                    }
                }
                if let Some(upto) = upto {
                    let mut marks = txn.open_table(REPLAYED).map_err(err)?;
                    marks
                        .insert((peer.as_str(), shard), (upto.ms, upto.seq))
                        .map_err(err)?;
                }
            }
            txn.commit().map_err(err)
        })
        .await
    }

    async fn replayed_upto(&self, peer: &str, shard: u32) -> Result<Option<RecordId>, StoreError> {
        let peer = peer.to_owned();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(err)?;
            let table = txn.open_table(REPLAYED).map_err(err)?;
            let value = table.get((peer.as_str(), shard)).map_err(err)?;
            Ok(value.map(|v| {
                let (ms, seq) = v.value();
                RecordId::new(ms, seq)
            }))
        })
        .await
    }

    async fn replays(&self, shard: u32, limit: usize) -> Result<Vec<ReplayResult>, StoreError> {
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(err)?;
            let table = txn.open_table(REPLAYS).map_err(err)?;
            let mut out = Vec::new();
            let range = table
                .range(key(shard, RecordId::ZERO)..=key(shard, RecordId::MAX))
                .map_err(err)?;
            for entry in range.rev().take(limit) {
                let (_, v) = entry.map_err(err)?;
                out.extend(decode_result(v.value()));
            }
            Ok(out)
        })
        .await
    }

    async fn parked(&self, shard: u32, limit: usize) -> Result<Vec<ReplayResult>, StoreError> {
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(err)?;
            let table = txn.open_table(PARKED).map_err(err)?;
            let mut out = Vec::new();
            let range = table
                .range(key(shard, RecordId::ZERO)..=key(shard, RecordId::MAX))
                .map_err(err)?;
            for entry in range.take(limit) {
                let (_, v) = entry.map_err(err)?;
                out.extend(decode_result(v.value()));
            }
            Ok(out)
        })
        .await
    }

    async fn parked_record(
        &self,
        shard: u32,
        id: RecordId,
    ) -> Result<Option<StoredRecord>, StoreError> {
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(err)?;
            let table = txn.open_table(PARKED_RECORDS).map_err(err)?;
            let value = table.get(key(shard, id)).map_err(err)?;
            Ok(value.map(|v| StoredRecord {
                shard,
                id,
                pieces: vec![Bytes::copy_from_slice(v.value())],
            }))
        })
        .await
    }

    async fn parked_count(&self, shard: u32) -> Result<u64, StoreError> {
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(err)?;
            count_in(&txn.open_table(PARKED).map_err(err)?, shard)
        })
        .await
    }
}
