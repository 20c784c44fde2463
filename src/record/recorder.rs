//! The bounded queue between the proxy and the store, and its batch writer.
//!
//! [`Recorder::submit`] never waits: when the queue is full the exchange is
//! dropped, counted and logged. The writer takes what has queued up, encodes
//! it into a spool, and writes the spool in store calls of up to
//! `record.batch_size` records and about 1 MiB. It keeps taking from the
//! queue while a write is in flight, so while the store is slow or down
//! records wait in the spool (bounded in records and bytes) and the writer
//! retries with backoff; past the spool's bounds the oldest are dropped,
//! counted and logged. With `record.spool: "disk"` (the default) a failed
//! write also puts the spool on disk ([`super::spool`]), and it stays there
//! until it has drained, so a crash while the store is away loses nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::encode::encode_exchange;
use super::exchange::RawExchange;
use super::shard::{shard_of, shard_of_client};
use super::signal::ShardSignal;
use super::spool::{DiskSpool, Recovered, SpoolError};
use super::{split_pieces, Exchange, Protocol, Record, RecordId};
use crate::config::RecordConfig;
use crate::metrics as m;
use crate::store::{NewRecord, Store};

/// Counters shown by `/api/status` and `/health`.
#[derive(Debug, Default)]
pub struct RecorderStats {
    pub submitted: AtomicU64,
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub spooled: AtomicU64,
    pub write_errors: AtomicU64,
    pub store_up: AtomicBool,
    /// Set while the spool is full and records are being dropped.
    pub overflowing: AtomicBool,
    /// Set while spooled records are kept on disk.
    pub spool_on_disk: AtomicBool,
    /// Why the last write failed, while the store is down.
    last_error: std::sync::Mutex<Option<String>>,
}

impl RecorderStats {
    pub fn last_write_error(&self) -> Option<String> {
        self.last_error.lock().expect("error lock").clone()
    }
}

/// What goes through the queue: an HTTP exchange still in its raw form, or
/// a record built already (a TCP session, built when it closes).
#[derive(Debug)]
pub enum Captured {
    Http(RawExchange),
    Ready(Record),
}

impl Captured {
    fn protocol(&self) -> Protocol {
        match self {
            Captured::Http(_) => Protocol::Http,
            Captured::Ready(record) => record.protocol(),
        }
    }
}

/// A cheap handle for submitting exchanges.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Captured>,
    shards: u32,
    stats: Arc<RecorderStats>,
    max_body_bytes: usize,
}

/// What the writer was started with; see `RecordConfig` for the meanings.
struct Writer {
    store: Arc<dyn Store>,
    rx: mpsc::Receiver<Captured>,
    stats: Arc<RecorderStats>,
    shards: u32,
    shard_key_header: Option<http::HeaderName>,
    redact: Vec<http::HeaderName>,
    batch_size: usize,
    spool_capacity: usize,
    spool_bytes: usize,
    spool: VecDeque<NewRecord>,
    /// Encoded bytes in `spool`.
    spooled_bytes: usize,
    /// False once every `Recorder` is gone.
    rx_open: bool,
    /// Told about every written record (for MQTT notifications).
    signal: Option<Arc<ShardSignal>>,
    /// Where the spool goes once a write fails (`record.spool: "disk"`).
    disk: Option<DiskSpool>,
    /// A disk error was logged; quiet until the disk works again.
    disk_error_logged: bool,
    /// While writes fail: the error last logged, when, and failures since.
    failing: Option<Failing>,
}

struct Failing {
    error: String,
    logged_at: Instant,
    since_logged: u64,
}

/// While the store keeps failing with the same error, one line this often.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(60);

/// How long the writer keeps trying to flush after the last sender is gone.
const FLUSH_GRACE: Duration = Duration::from_secs(5);
/// How long a busy writer lets a small batch grow before writing it
/// (tokio's timer rounds up to a millisecond). Records reach the store, and
/// a Playback node, about this much later under load, at once otherwise;
/// the client never waits for it.
const LINGER: Duration = Duration::from_millis(1);
/// The most encoded bytes one write carries (one record may be larger).
/// Large records in batches of `record.batch_size` made writes of several
/// MiB, and on the bench box the writer landed fewer 16 KiB records a second
/// that way than in writes of about 1 MiB.
const BATCH_BYTES: usize = 1 << 20;
/// While a write is in flight longer than this, the writer takes what waits
/// in the queue this often (a queue of 10,000 fills in ~300 ms at 30k/s).
const DRAIN_EVERY: Duration = Duration::from_millis(5);

impl Recorder {
    /// Starts the batch writer; it stops once every `Recorder` clone is
    /// dropped and what it holds is flushed (or `FLUSH_GRACE` has passed).
    pub fn spawn(
        store: Arc<dyn Store>,
        config: &RecordConfig,
        shards: u32,
        signal: Option<Arc<ShardSignal>>,
        disk: Option<(DiskSpool, Recovered)>,
    ) -> (Recorder, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let stats = Arc::new(RecorderStats::default());
        stats.store_up.store(true, Ordering::Relaxed);
        // Scraped from the start, not from the first failure: rate() and
        // the alert rules then see the first one.
        gauge!(m::STORE_UP).set(1.0);
        counter!(m::RECORD_WRITE_ERRORS_TOTAL).increment(0);
        if disk.is_some() {
            counter!(m::SPOOL_DISK_ERRORS_TOTAL).increment(0);
        }
        let (disk, recovered) = match disk {
            Some((disk, recovered)) => (Some(disk), Some(recovered)),
            None => (None, None),
        };
        let mut writer = Writer {
            store,
            rx,
            stats: stats.clone(),
            shards,
            shard_key_header: config
                .shard_key_header
                .as_deref()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
            redact: config
                .redact_headers
                .iter()
                .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            batch_size: config.batch_size,
            spool_capacity: config.spool_capacity,
            spool_bytes: config.spool_bytes,
            spool: VecDeque::new(),
            spooled_bytes: 0,
            rx_open: true,
            signal,
            disk,
            disk_error_logged: false,
            failing: None,
        };
        if let Some(recovered) = recovered {
            writer.restore(recovered);
        }
        // The writer gets a thread of its own: on a busy runtime a task that
        // waits its turn behind every connection falls behind at tens of
        // thousands of records a second, and the queue overflows.
        // Its store connections live on that thread too.
        let handle = tokio::task::spawn_blocking(move || {
            let _batch = BatchScheduling::enter();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the record writer");
            runtime.block_on(async move {
                let mut writer = writer;
                if let Some(own) = writer.store.dedicated() {
                    writer.store = own;
                }
                writer.run().await
            });
        });
        (
            Recorder {
                tx,
                shards,
                stats,
                max_body_bytes: config.max_body_bytes,
            },
            handle,
        )
    }

    pub fn stats(&self) -> &Arc<RecorderStats> {
        &self.stats
    }

    /// Registers at 0 the per-protocol counts of a listener that records
    /// `protocol`, so its success rate, written ÷ (written + dropped), is
    /// defined before the first drop.
    pub fn counts(&self, protocol: Protocol) {
        let label = protocol.as_str();
        counter!(m::RECORDS_TOTAL, "protocol" => label).increment(0);
        counter!(m::RECORD_BYTES_TOTAL, "protocol" => label).increment(0);
        for reason in ["queue full", "spool full"] {
            counter!(m::RECORDS_DROPPED_TOTAL, "reason" => reason, "protocol" => label)
                .increment(0);
        }
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Queues an exchange for recording without ever waiting.
    pub fn submit(&self, exchange: RawExchange) {
        self.send(Captured::Http(exchange));
    }

    /// Queues a finished record of `client`'s traffic (sets its shard).
    pub fn submit_record(&self, mut record: Record, client: std::net::IpAddr) {
        record.shard = shard_of_client(client, self.shards);
        self.send(Captured::Ready(record));
    }

    fn send(&self, captured: Captured) {
        self.stats.submitted.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.try_send(captured) {
            let (reason, captured) = match e {
                mpsc::error::TrySendError::Full(c) => ("queue full", c),
                mpsc::error::TrySendError::Closed(c) => ("recorder stopped", c),
            };
            note_drop(&self.stats, reason, &[(captured.protocol().as_str(), 1)]);
        }
    }
}

/// The writer's thread runs as batch work (Linux `SCHED_BATCH`) while the
/// guard lives: the writer wakes about every millisecond with a batch to
/// encode, and as a normal thread that has slept it would preempt whatever
/// runs on its core, usually a proxied request. As batch work it waits for
/// the core's next turn instead: records land microseconds later, requests
/// are not pushed aside. Needs no privilege; back to normal on drop (the
/// thread returns to tokio's blocking pool).
struct BatchScheduling {
    changed: bool,
}

impl BatchScheduling {
    fn enter() -> BatchScheduling {
        let changed = match crate::os::set_batch_scheduling(true) {
            Ok(()) => true,
            Err(error) => {
                debug!(%error, "cannot run the record writer as batch work");
                false
            }
        };
        BatchScheduling { changed }
    }
}

impl Drop for BatchScheduling {
    fn drop(&mut self) {
        if self.changed {
            let _ = crate::os::set_batch_scheduling(false);
        }
    }
}

/// Awaits `write`; if it takes long, moves what waits on `rx` into
/// `arrived` every [`DRAIN_EVERY`] meanwhile (`open` turns false when every
/// sender is gone). Not on every arrival: that would wake the writer's
/// thread once per request while it writes.
async fn receive_while<T>(
    rx: &mut mpsc::Receiver<Captured>,
    arrived: &mut Vec<Captured>,
    open: &mut bool,
    write: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(write);
    loop {
        tokio::select! {
            biased;
            result = &mut write => return result,
            _ = tokio::time::sleep(DRAIN_EVERY), if *open => {
                *open = take_ready(rx, arrived, usize::MAX);
            }
        }
    }
}

/// Moves what is queued into `batch`, without waiting, until it holds
/// `limit`; false once every sender is gone.
fn take_ready(rx: &mut mpsc::Receiver<Captured>, batch: &mut Vec<Captured>, limit: usize) -> bool {
    while batch.len() < limit {
        match rx.try_recv() {
            Ok(captured) => batch.push(captured),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
    true
}

/// How many of `records` are of each protocol (label, count).
fn by_protocol<'a>(records: impl Iterator<Item = &'a NewRecord>) -> Vec<(&'static str, u64)> {
    let mut counts: Vec<(&'static str, u64)> = Vec::new();
    for record in records {
        let label = record.protocol.as_str();
        match counts.iter_mut().find(|(p, _)| *p == label) {
            Some((_, n)) => *n += 1,
            None => counts.push((label, 1)),
        }
    }
    counts
}

/// Counts dropped records by reason and protocol (`unknown` for spool
/// entries too damaged to read).
fn note_drop(stats: &RecorderStats, reason: &'static str, by_protocol: &[(&'static str, u64)]) {
    let n: u64 = by_protocol.iter().map(|(_, n)| n).sum();
    let before = stats.dropped.fetch_add(n, Ordering::Relaxed);
    for (protocol, k) in by_protocol {
        counter!(m::RECORDS_DROPPED_TOTAL, "reason" => reason, "protocol" => *protocol)
            .increment(*k);
    }
    // The first drop, then one line per thousand: loud, but not a flood.
    if before == 0 || before / 1000 != (before + n) / 1000 {
        warn!(
            dropped_total = before + n,
            reason, "records dropped: recording cannot keep up"
        );
    }
}

impl Writer {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut backoff = Duration::from_millis(50);
        // Set after a failed write: no new attempt before then.
        let mut retry_at: Option<Instant> = None;
        let mut closed_at: Option<Instant> = None;
        // When the last write ended: a writer that wrote within LINGER is busy.
        let mut last_write: Option<Instant> = None;
        loop {
            if self.rx_open {
                if self.spool.is_empty() {
                    self.rx_open = self.rx.recv_many(&mut batch, self.batch_size).await > 0;
                    let busy = last_write.is_some_and(|at| at.elapsed() < LINGER);
                    if self.rx_open && busy && batch.len() < self.batch_size / 4 {
                        // Writing back to back, a small batch costs a store
                        // round trip and a thread wake-up for a few
                        // records: let a few more arrive first. An idle
                        // writer writes at once.
                        tokio::time::sleep(LINGER).await;
                        self.rx_open = take_ready(&mut self.rx, &mut batch, self.batch_size);
                    }
                } else if let Some(at) = retry_at {
                    tokio::select! {
                        n = self.rx.recv_many(&mut batch, self.batch_size) => self.rx_open = n > 0,
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                } else {
                    self.rx_open = take_ready(&mut self.rx, &mut batch, self.batch_size);
                }
                self.spool_batch(&mut batch);
            } else {
                let since = *closed_at.get_or_insert_with(Instant::now);
                if self.spool.is_empty() {
                    break;
                }
                let give_up = since.elapsed() > FLUSH_GRACE;
                // The store is away (or too slow): what waits stays on disk
                // for the next start instead of holding up the shutdown.
                if (retry_at.is_some() || give_up) && self.keep_on_disk() {
                    info!(
                        records = self.spool.len(),
                        "spooled records stay on disk; they are written when the node starts again"
                    );
                    break;
                }
                if give_up {
                    let left = by_protocol(self.spool.iter());
                    self.spool.clear();
                    self.spooled_bytes = 0;
                    self.note_spool();
                    note_drop(&self.stats, "shutdown with store unreachable", &left);
                    break;
                }
                if let Some(at) = retry_at {
                    tokio::time::sleep_until(at.into()).await;
                }
            }
            if retry_at.is_some_and(|at| Instant::now() < at) {
                continue;
            }
            let flushed = self.flush().await;
            last_write = Some(Instant::now());
            if flushed {
                retry_at = None;
                backoff = Duration::from_millis(50);
            } else {
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        debug!("record writer stopped");
    }

    /// Encodes exchanges into the spool, dropping the oldest past its bounds.
    fn spool_batch(&mut self, batch: &mut Vec<Captured>) {
        // Body bytes by protocol.
        let mut body_bytes: Vec<(Protocol, u64)> = Vec::new();
        let added = batch.len();
        for captured in batch.drain(..) {
            let (record, bytes) = match captured {
                Captured::Http(raw) => {
                    let bytes = raw.request_body.len + raw.response_body.len;
                    (self.encode_exchange(&raw), bytes)
                }
                Captured::Ready(mut record) => {
                    let bytes = record_body_bytes(&record);
                    self.apply_policy(&mut record);
                    (NewRecord::encode(&record), bytes)
                }
            };
            match body_bytes.iter_mut().find(|(p, _)| *p == record.protocol) {
                Some((_, n)) => *n += bytes as u64,
                None => body_bytes.push((record.protocol, bytes as u64)),
            }
            self.spooled_bytes += record.size();
            self.spool.push_back(record);
        }
        for (protocol, bytes) in body_bytes {
            counter!(m::RECORD_BYTES_TOTAL, "protocol" => protocol.as_str()).increment(bytes);
        }
        if added > 0 && self.disk.as_ref().is_some_and(DiskSpool::is_active) {
            let disk = self.disk.as_mut().expect("checked");
            let result = disk.append(self.spool.range(self.spool.len() - added..));
            self.disk_result(result);
        }
        self.enforce_bounds();
    }

    /// Drops the oldest records past the spool's bounds, counted.
    fn enforce_bounds(&mut self) {
        let mut dropped = Vec::new();
        while self.spool.len() > self.spool_capacity || self.spooled_bytes > self.spool_bytes {
            let Some(oldest) = self.spool.pop_front() else {
                break;
            };
            self.spooled_bytes -= oldest.size();
            dropped.push(oldest);
        }
        if !dropped.is_empty() {
            self.stats.overflowing.store(true, Ordering::Relaxed);
            note_drop(&self.stats, "spool full", &by_protocol(dropped.iter()));
            self.disk_consumed(dropped.len() as u64);
        }
        self.note_spool();
    }

    /// Logs each distinct store error once, and a repeated one once a
    /// minute with how often it happened meanwhile.
    fn note_write_error(&mut self, error: String) {
        *self.stats.last_error.lock().expect("error lock") = Some(error.clone());
        let spooled = self.spool.len();
        match &mut self.failing {
            Some(f) if f.error == error => {
                f.since_logged += 1;
                if f.logged_at.elapsed() >= REPEAT_LOG_EVERY {
                    warn!(%error, failed_writes = f.since_logged, spooled, "still cannot write records");
                    f.logged_at = Instant::now();
                    f.since_logged = 0;
                }
            }
            _ => {
                warn!(%error, spooled, "cannot write records; spooling until the store is back");
                self.failing = Some(Failing {
                    error,
                    logged_at: Instant::now(),
                    since_logged: 0,
                });
            }
        }
    }

    /// Takes back what an earlier process left in the spool on disk.
    fn restore(&mut self, recovered: Recovered) {
        if recovered.damaged > 0 {
            warn!(
                damaged = recovered.damaged,
                "spool entries cut short or damaged by a crash were skipped"
            );
            note_drop(
                &self.stats,
                "spool damaged",
                &[("unknown", recovered.damaged)],
            );
        }
        if recovered.records.is_empty() {
            return;
        }
        info!(
            records = recovered.records.len(),
            "records spooled on disk by an earlier run will be written to the store first"
        );
        for record in recovered.records {
            self.spooled_bytes += record.size();
            self.spool.push_back(record);
        }
        self.stats.spool_on_disk.store(true, Ordering::Relaxed);
        self.enforce_bounds();
    }

    /// Puts the whole spool on disk, if it is not there yet; true when the
    /// spool is on disk now.
    fn keep_on_disk(&mut self) -> bool {
        let Some(disk) = self.disk.as_mut() else {
            return false;
        };
        if !disk.is_active() && !self.spool.is_empty() {
            let result = disk.append(self.spool.iter());
            if self.disk_result(result) {
                info!(
                    records = self.spool.len(),
                    "the store is away: spooled records are kept on disk until it is back"
                );
            }
        }
        let on_disk = self.disk.as_ref().is_some_and(DiskSpool::is_active);
        self.stats.spool_on_disk.store(on_disk, Ordering::Relaxed);
        on_disk
    }

    /// `n` records left the front of the spool (written or dropped).
    fn disk_consumed(&mut self, n: u64) {
        let Some(disk) = self.disk.as_mut().filter(|d| d.is_active()) else {
            return;
        };
        let result = if self.spool.is_empty() {
            disk.clear()
        } else {
            disk.consume(n)
        };
        self.disk_result(result);
        let on_disk = self.disk.as_ref().is_some_and(DiskSpool::is_active);
        self.stats.spool_on_disk.store(on_disk, Ordering::Relaxed);
    }

    /// On a disk error the spool is memory only again (the files go: disk
    /// and memory must hold the same records) until the next failed write
    /// tries the disk again. True when it worked.
    fn disk_result(&mut self, result: Result<(), SpoolError>) -> bool {
        match result {
            Ok(()) => {
                self.disk_error_logged = false;
                true
            }
            Err(e) => {
                counter!(m::SPOOL_DISK_ERRORS_TOTAL).increment(1);
                if !self.disk_error_logged {
                    warn!(error = %e, spooled = self.spool.len(), "cannot keep spooled records on disk; they wait in memory only");
                    self.disk_error_logged = true;
                }
                if let Some(disk) = self.disk.as_mut() {
                    let _ = disk.clear();
                }
                self.stats.spool_on_disk.store(false, Ordering::Relaxed);
                false
            }
        }
    }

    fn note_spool(&self) {
        self.stats
            .spooled
            .store(self.spool.len() as u64, Ordering::Relaxed);
        gauge!(m::SPOOL_RECORDS).set(self.spool.len() as f64);
    }

    /// How many records from the front of the spool the next write takes:
    /// up to `record.batch_size`, and no more than [`BATCH_BYTES`] (at
    /// least one record).
    fn next_batch_len(&self) -> usize {
        let mut bytes = 0;
        let mut n = 0;
        for record in self.spool.iter().take(self.batch_size) {
            if n > 0 && bytes + record.size() > BATCH_BYTES {
                break;
            }
            bytes += record.size();
            n += 1;
        }
        n
    }

    /// Writes the front of the spool; false when the store failed.
    async fn flush(&mut self) -> bool {
        while !self.spool.is_empty() {
            let n = self.next_batch_len();
            let started = Instant::now();
            let mut arrived = Vec::new();
            let result = {
                let chunk: Vec<NewRecord>;
                let batch = match self.spool.as_slices() {
                    (front, _) if front.len() >= n => &front[..n],
                    _ => {
                        chunk = self.spool.iter().take(n).cloned().collect();
                        &chunk[..]
                    }
                };
                // Whatever the proxy captures meanwhile is taken too: while
                // the store is slow or down, records wait in the spool
                // (bounded in records and bytes), not in the small queue
                // in front of it.
                let write = self.store.append(batch);
                receive_while(&mut self.rx, &mut arrived, &mut self.rx_open, write).await
            };
            match result {
                Ok(ids) => {
                    histogram!(m::RECORD_BATCH_SECONDS).record(started.elapsed().as_secs_f64());
                    if let Some(signal) = &self.signal {
                        for (record, id) in self.spool.iter().zip(&ids) {
                            signal.written(record.shard, *id);
                        }
                    }
                    for (protocol, k) in by_protocol(self.spool.iter().take(n)) {
                        counter!(m::RECORDS_TOTAL, "protocol" => protocol).increment(k);
                    }
                    for written in self.spool.drain(..n) {
                        self.spooled_bytes -= written.size();
                    }
                    self.disk_consumed(n as u64);
                    self.stats.written.fetch_add(n as u64, Ordering::Relaxed);
                    if !self.stats.store_up.swap(true, Ordering::Relaxed) {
                        info!(store = %self.store.describe(), spooled = self.spool.len(), "store is back; writing spooled records");
                        gauge!(m::STORE_UP).set(1.0);
                        *self.stats.last_error.lock().expect("error lock") = None;
                        self.failing = None;
                    }
                    if self.spool.len() < self.spool_capacity
                        && self.spooled_bytes < self.spool_bytes
                    {
                        self.stats.overflowing.store(false, Ordering::Relaxed);
                    }
                    debug!(records = n, last = ?ids.last().map(RecordId::to_string), "batch written");
                    self.spool_batch(&mut arrived);
                }
                Err(e) => {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    counter!(m::RECORD_WRITE_ERRORS_TOTAL).increment(1);
                    self.stats.store_up.store(false, Ordering::Relaxed);
                    gauge!(m::STORE_UP).set(0.0);
                    self.note_write_error(e.to_string());
                    self.keep_on_disk();
                    self.spool_batch(&mut arrived);
                    return false;
                }
            }
        }
        self.note_spool();
        true
    }

    /// `record.shard_key_header` and `record.redact_headers` for a record
    /// built by its proxy (a gRPC call's metadata; a TCP session has none).
    fn apply_policy(&self, record: &mut Record) {
        let Exchange::Grpc(call) = &mut record.exchange else {
            return;
        };
        if let Some(key) = self.shard_key_header.as_ref().and_then(|h| {
            call.request_metadata
                .iter()
                .find(|(name, _)| name == h.as_str())
        }) {
            record.shard = shard_of(key.1.as_bytes(), self.shards);
        }
        if self.redact.is_empty() {
            return;
        }
        for metadata in [
            &mut call.request_metadata,
            &mut call.response_metadata,
            &mut call.trailers,
        ] {
            for (name, value) in metadata.iter_mut() {
                if self.redact.iter().any(|r| r.as_str() == name) {
                    *value = super::encode::REDACTED.to_string();
                }
            }
        }
    }

    /// The stored form of an HTTP exchange, on the shard its key picks.
    fn encode_exchange(&self, raw: &RawExchange) -> NewRecord {
        let shard = match self
            .shard_key_header
            .as_ref()
            .and_then(|h| raw.request_headers.get(h))
        {
            Some(key) => shard_of(key.as_bytes(), self.shards),
            None => shard_of_client(raw.client_addr.ip(), self.shards),
        };
        let encoded = encode_exchange(raw, shard, &self.redact);
        NewRecord {
            shard,
            protocol: Protocol::Http,
            pieces: split_pieces(encoded),
        }
    }
}

fn record_body_bytes(record: &Record) -> usize {
    match &record.exchange {
        Exchange::Http(h) => h.request_body.len() + h.response_body.len(),
        Exchange::Tcp(t) => t.kept_bytes(),
        Exchange::Grpc(g) => g.kept_bytes(),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_writer_thread_runs_as_batch_work_until_the_guard_drops() {
        std::thread::spawn(|| {
            assert!(!crate::os::is_batch_scheduled());
            let guard = BatchScheduling::enter();
            assert!(guard.changed);
            assert!(crate::os::is_batch_scheduled());
            drop(guard);
            assert!(!crate::os::is_batch_scheduled());
        })
        .join()
        .unwrap();
    }
}
