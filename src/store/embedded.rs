//! A durable embedded store on local disk (redb), for one-binary deployments.
//!
//! Ids follow the Redis rule (`<ms>-<seq>`, strictly increasing per shard).
//! Every write is one transaction, synced to disk before it returns.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tracing::{info, warn};

use super::{decode_result, encode_result, NewRecord, ReplayWrite, StoreError, StoredRecord};
use crate::model::id::RecordId;
use crate::model::replay::ReplayResult;
use crate::model::sync::Checkpoint;

type IdKey = (u32, u64, u64);

const RECORDS: TableDefinition<IdKey, &[u8]> = TableDefinition::new("records");
const CHECKPOINTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("checkpoints");
const REPLAYS: TableDefinition<IdKey, &[u8]> = TableDefinition::new("replays");
const REPLAYED: TableDefinition<(&str, u32), (u64, u64)> = TableDefinition::new("replayed");
/// Parked records' last results, and the records themselves.
const PARKED: TableDefinition<IdKey, &[u8]> = TableDefinition::new("parked");
const PARKED_RECORDS: TableDefinition<IdKey, &[u8]> = TableDefinition::new("parked_records");
/// Entries per (table, shard), kept in the same transactions that change
/// them, so counting never scans a shard. [`COUNTS_VALID`] marks a file
/// whose counts are complete (older files are counted once when opened).
const COUNTS: TableDefinition<(u8, u32), u64> = TableDefinition::new("counts");
const COUNT_RECORDS: u8 = 0;
const COUNT_REPLAYS: u8 = 1;
const COUNT_PARKED: u8 = 2;
const COUNTS_VALID: (u8, u32) = (255, 0);

/// After an I/O error redb refuses every write until the file is opened
/// again; no more often than this.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` while closed after an I/O error (until it opens again). Work
    /// holds the read lock for its duration, so a reopen (write lock) waits
    /// for it and the file is really closed before it opens again.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// The last id given per shard, loaded on first use.
    last_ids: Mutex<HashMap<u32, RecordId>>,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    /// The last I/O error, until a write succeeds again.
    broken: Option<String>,
    last_reopen: Option<Instant>,
}

fn key(shard: u32, id: RecordId) -> IdKey {
    (shard, id.ms, id.seq)
}

/// Whether redb failed on the file itself (a full or failing disk): the
/// database must be closed and opened again before it writes.
fn is_io_error(message: &str) -> bool {
    message.starts_with("I/O error") || message.contains("Previous I/O error")
}

/// Opens the file, creating the tables and counting what is not counted.
fn open_db(path: &Path) -> Result<Database, String> {
    let db = Database::create(path).map_err(err)?;
    let txn = db.begin_write().map_err(err)?;
    {
        txn.open_table(RECORDS).map_err(err)?;
        txn.open_table(CHECKPOINTS).map_err(err)?;
        txn.open_table(REPLAYS).map_err(err)?;
        txn.open_table(REPLAYED).map_err(err)?;
        txn.open_table(PARKED).map_err(err)?;
        txn.open_table(PARKED_RECORDS).map_err(err)?;
        let mut counts = txn.open_table(COUNTS).map_err(err)?;
        if counts.get(COUNTS_VALID).map_err(err)?.is_none() {
            let mut found: HashMap<(u8, u32), u64> = HashMap::new();
            for (kind, def) in [
                (COUNT_RECORDS, RECORDS),
                (COUNT_REPLAYS, REPLAYS),
                (COUNT_PARKED, PARKED),
            ] {
                let table = txn.open_table(def).map_err(err)?;
                for entry in table.iter().map_err(err)? {
                    let (k, _) = entry.map_err(err)?;
                    *found.entry((kind, k.value().0)).or_default() += 1;
                }
            }
            for (k, n) in found {
                counts.insert(k, n).map_err(err)?;
            }
            counts.insert(COUNTS_VALID, 1).map_err(err)?;
        }
    }
    txn.commit().map_err(err)?;
    Ok(db)
}

/// A kept count, read from the counts table of any transaction.
fn count_in(
    counts: &impl ReadableTable<(u8, u32), u64>,
    kind: u8,
    shard: u32,
) -> Result<u64, String> {
    Ok(counts
        .get((kind, shard))
        .map_err(err)?
        .map_or(0, |v| v.value()))
}

fn count_of(txn: &WriteTransaction, kind: u8, shard: u32) -> Result<u64, String> {
    count_in(&txn.open_table(COUNTS).map_err(err)?, kind, shard)
}

/// Adds `delta` to a count in the same transaction as the change.
fn add_count(txn: &WriteTransaction, kind: u8, shard: u32, delta: i64) -> Result<(), String> {
    if delta == 0 {
        return Ok(());
    }
    let next = count_of(txn, kind, shard)?.saturating_add_signed(delta);
    txn.open_table(COUNTS)
        .map_err(err)?
        .insert((kind, shard), next)
        .map_err(err)?;
    Ok(())
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
        let db = open_db(&path).map_err(fail)?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db: RwLock::new(Some(db)),
                path,
                last_ids: Mutex::new(HashMap::new()),
                health: Mutex::new(Health::default()),
            }),
        })
    }

    /// Runs blocking redb work off the async threads. An I/O error marks
    /// the store broken; the next call after [`REOPEN_EVERY`] closes and
    /// opens the file again, and a write that works clears the mark.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &Database) -> Result<T, String> + Send + 'static,
    {
        let inner = self.inner.clone();
        let path = inner.path.display().to_string();
        tokio::task::spawn_blocking(move || {
            inner.reopen_if_due();
            let result = {
                let guard = inner.db.read().expect("db lock");
                match guard.as_ref() {
                    Some(db) => f(&inner, db),
                    None => Err(inner
                        .broken()
                        .unwrap_or_else(|| "closed after an I/O error".into())),
                }
            };
            if let Err(message) = &result {
                if is_io_error(message) {
                    inner.mark_broken(message);
                }
            }
            result
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|message| StoreError::Embedded { path, message })
    }

    /// Like [`Self::blocking`] for work that writes: success means the
    /// disk takes writes again.
    async fn writing<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &Database) -> Result<T, String> + Send + 'static,
    {
        let result = self.blocking(f).await;
        if result.is_ok() {
            self.inner.mark_healthy();
        }
        result
    }
}

impl EmbeddedStore {
    /// Replay results kept in `table` for `shard`: at most `limit`, newest
    /// first or oldest first.
    async fn results(
        &self,
        table: TableDefinition<'static, IdKey, &'static [u8]>,
        shard: u32,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<ReplayResult>, StoreError> {
        self.blocking(move |_, db| {
            let txn = db.begin_read().map_err(err)?;
            let table = txn.open_table(table).map_err(err)?;
            let range = table
                .range(key(shard, RecordId::ZERO)..=key(shard, RecordId::MAX))
                .map_err(err)?;
            let entries: Box<dyn Iterator<Item = _>> = if newest_first {
                Box::new(range.rev())
            } else {
                Box::new(range)
            };
            let mut out = Vec::new();
            for entry in entries.take(limit) {
                let (_, v) = entry.map_err(err)?;
                out.extend(decode_result(v.value()));
            }
            Ok(out)
        })
        .await
    }

    /// A kept count: no scan.
    async fn counted(&self, kind: u8, shard: u32) -> Result<u64, StoreError> {
        self.blocking(move |_, db| {
            let txn = db.begin_read().map_err(err)?;
            count_in(&txn.open_table(COUNTS).map_err(err)?, kind, shard)
        })
        .await
    }
}

impl Inner {
    fn broken(&self) -> Option<String> {
        self.health.lock().expect("health lock").broken.clone()
    }

    fn mark_broken(&self, message: &str) {
        let mut health = self.health.lock().expect("health lock");
        if health.broken.as_deref() != Some(message) {
            warn!(path = %self.path.display(), error = %message, "embedded store cannot write; records wait in the spool, the file is opened again until it works");
        }
        health.broken = Some(message.to_owned());
    }

    fn mark_healthy(&self) {
        let mut health = self.health.lock().expect("health lock");
        if health.broken.take().is_some() {
            info!(path = %self.path.display(), "embedded store writes again");
        }
    }

    /// Closes and opens the file again when it is broken and the last try
    /// was long enough ago.
    fn reopen_if_due(&self) {
        {
            let mut health = self.health.lock().expect("health lock");
            if health.broken.is_none()
                || health
                    .last_reopen
                    .is_some_and(|at| at.elapsed() < REOPEN_EVERY)
            {
                return;
            }
            health.last_reopen = Some(Instant::now());
        }
        let mut db = self.db.write().expect("db lock");
        // Closed first: redb keeps one open handle per file.
        *db = None;
        match open_db(&self.path) {
            Ok(opened) => *db = Some(opened),
            Err(e) => {
                drop(db);
                self.mark_broken(&format!("opening again: {e}"));
            }
        }
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

#[async_trait]
impl super::Store for EmbeddedStore {
    fn describe(&self) -> String {
        format!("embedded {}", self.inner.path.display())
    }

    /// Fails while the file refuses writes (a full disk), though it still
    /// reads: a store that cannot take records is not up.
    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|inner, db| match inner.broken() {
            Some(message) => Err(message),
            None => db.begin_read().map(|_| ()).map_err(err),
        })
        .await
    }

    async fn append(&self, records: &[NewRecord]) -> Result<Vec<RecordId>, StoreError> {
        let records = records.to_vec();
        self.writing(move |inner, db| {
            let now = crate::clock::now_ms();
            let txn = db.begin_write().map_err(err)?;
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
            let mut added: HashMap<u32, i64> = HashMap::new();
            for record in &records {
                *added.entry(record.shard).or_default() += 1;
            }
            for (shard, n) in added {
                add_count(&txn, COUNT_RECORDS, shard, n)?;
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
        self.blocking(move |_, db| {
            let txn = db.begin_read().map_err(err)?;
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
        self.counted(COUNT_RECORDS, shard).await
    }

    async fn last_id(&self, shard: u32) -> Result<Option<RecordId>, StoreError> {
        self.blocking(move |_, db| {
            let txn = db.begin_read().map_err(err)?;
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
        self.writing(move |_, db| {
            let txn = db.begin_write().map_err(err)?;
            let mut removed = 0i64;
            {
                let mut table = txn.open_table(RECORDS).map_err(err)?;
                if let Some(min_id) = min_id {
                    table
                        .retain_in(key(shard, RecordId::ZERO)..key(shard, min_id), |_, _| {
                            removed += 1;
                            false
                        })
                        .map_err(err)?;
                }
                if let Some(max_len) = max_len {
                    let count =
                        count_of(&txn, COUNT_RECORDS, shard)?.saturating_sub(removed as u64);
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
                                    |_, _| {
                                        removed += 1;
                                        false
                                    },
                                )
                                .map_err(err)?;
                        }
                    }
                }
            }
            add_count(&txn, COUNT_RECORDS, shard, -removed)?;
            txn.commit().map_err(err)
        })
        .await
    }

    async fn checkpoint(&self, peer: &str, shard: u32) -> Result<Option<Checkpoint>, StoreError> {
        let peer = peer.to_owned();
        self.blocking(move |_, db| {
            let txn = db.begin_read().map_err(err)?;
            let table = txn.open_table(CHECKPOINTS).map_err(err)?;
            let value = table.get((peer.as_str(), shard)).map_err(err)?;
            Ok(value.and_then(|v| serde_json::from_slice(v.value()).ok()))
        })
        .await
    }

    async fn checkpoints(&self, shards: u32) -> Result<Vec<Checkpoint>, StoreError> {
        self.blocking(move |_, db| {
            let txn = db.begin_read().map_err(err)?;
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
        self.writing(move |_, db| {
            let txn = db.begin_write().map_err(err)?;
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
        self.writing(move |_, db| {
            let txn = db.begin_write().map_err(err)?;
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
        self.writing(move |_, db| {
            let txn = db.begin_write().map_err(err)?;
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
        self.writing(move |_, db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut table = txn.open_table(REPLAYS).map_err(err)?;
                let before = count_of(&txn, COUNT_REPLAYS, shard)?;
                let mut count = before;
                for result in &results {
                    let old = table
                        .insert(
                            key(shard, result.record_id),
                            encode_result(result).as_slice(),
                        )
                        .map_err(err)?;
                    count += u64::from(old.is_none());
                }
                let keep = keep.max(1);
                if count > keep {
                    // The oldest beyond `keep` go; the rest are not visited
                    // (a full shard holds `keep` results, and this runs for
                    // every batch).
                    let cut = {
                        let mut range = table
                            .range(key(shard, RecordId::ZERO)..=key(shard, RecordId::MAX))
                            .map_err(err)?;
                        let first_kept = range.nth((count - keep) as usize);
                        first_kept.transpose().map_err(err)?.map(|(k, _)| k.value())
                    };
                    if let Some((_, ms, seq)) = cut {
                        table
                            .retain_in(
                                key(shard, RecordId::ZERO)..key(shard, RecordId::new(ms, seq)),
                                |_, _| false,
                            )
                            .map_err(err)?;
                    }
                    count = keep;
                }
                add_count(&txn, COUNT_REPLAYS, shard, count as i64 - before as i64)?;
                if !park.is_empty() || !unpark.is_empty() {
                    let mut parked = txn.open_table(PARKED).map_err(err)?;
                    let mut records = txn.open_table(PARKED_RECORDS).map_err(err)?;
                    let mut delta = 0i64;
                    for (id, result, record) in &park {
                        let old = parked
                            .insert(key(shard, *id), result.as_slice())
                            .map_err(err)?;
                        delta += i64::from(old.is_none());
                        records
                            .insert(key(shard, *id), record.as_slice())
                            .map_err(err)?;
                    }
                    for id in &unpark {
                        let old = parked.remove(key(shard, *id)).map_err(err)?;
                        delta -= i64::from(old.is_some());
                        records.remove(key(shard, *id)).map_err(err)?;
                    }
                    add_count(&txn, COUNT_PARKED, shard, delta)?;
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
        self.blocking(move |_, db| {
            let txn = db.begin_read().map_err(err)?;
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
        self.results(REPLAYS, shard, limit, true).await
    }

    async fn parked(&self, shard: u32, limit: usize) -> Result<Vec<ReplayResult>, StoreError> {
        self.results(PARKED, shard, limit, false).await
    }

    async fn parked_record(
        &self,
        shard: u32,
        id: RecordId,
    ) -> Result<Option<StoredRecord>, StoreError> {
        self.blocking(move |_, db| {
            let txn = db.begin_read().map_err(err)?;
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
        self.counted(COUNT_PARKED, shard).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn a_file_from_before_counts_is_counted_once_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join("qproxy.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut records = txn.open_table(RECORDS).unwrap();
                for (shard, seq) in [(0, 1), (0, 2), (1, 1)] {
                    records.insert((shard, 5, seq), &b"x"[..]).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.len(0).await.unwrap(), 2);
        assert_eq!(store.len(1).await.unwrap(), 1);
        assert_eq!(store.len(2).await.unwrap(), 0);
        store
            .trim(0, Some(RecordId::new(5, 2)), None)
            .await
            .unwrap();
        assert_eq!(store.len(0).await.unwrap(), 1, "trimming keeps the count");
    }

    #[test]
    fn io_errors_are_told_apart() {
        assert!(is_io_error(
            "I/O error: No space left on device (os error 28)"
        ));
        assert!(is_io_error(
            "Previous I/O error occurred. Please close and re-open the database."
        ));
        assert!(!is_io_error("Table 'records' does not exist"));
    }
}
