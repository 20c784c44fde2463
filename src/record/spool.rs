//! The spool on disk: records waiting for the store survive a crash.
//!
//! While the store takes every write, records pass through memory only. Once
//! a write fails (or the node stops with records still waiting), everything
//! spooled goes to disk, and so does every record spooled after it, until
//! the spool is empty again; then the files are removed.
//!
//! Layout under `<data_dir>/spool/`: segments `seg-<n>.log`, each a header
//! then entries `[len u32][crc32 u32][shard u32][payload]` (little endian;
//! the CRC covers shard and payload), and `ack`, which says how many entries
//! from the front are gone (written to the store, or dropped past the
//! spool's bounds). A segment is only appended to by the process that
//! created it; after a crash its torn tail (if any) is ignored and new
//! records go to a new segment. `lock` keeps a second process out.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{split_pieces, Protocol, Record, RecordId};
use crate::store::NewRecord;

const MAGIC: &[u8; 8] = b"QSPOOL1\n";
/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 << 20;
/// No entry is larger (a record is at most a few times 64 MiB of bodies).
const MAX_ENTRY: u32 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "spool {path} is in use by another qproxy process: give each node a data_dir of its own"
    )]
    Locked { path: String },
}

/// What a restart found on disk.
#[derive(Debug, Default)]
pub struct Recovered {
    pub records: Vec<NewRecord>,
    /// Entries that were cut short or failed their checksum (a crash in the
    /// middle of a write): skipped.
    pub damaged: u64,
}

pub struct DiskSpool {
    dir: PathBuf,
    _lock: File,
    /// Oldest first; the last one is being appended to.
    segments: VecDeque<Segment>,
    /// Entries of the front segment that are gone.
    acked: u64,
    next_id: u64,
    /// The open segment, when records are being appended.
    active: Option<File>,
}

struct Segment {
    id: u64,
    entries: u64,
    bytes: u64,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl DiskSpool {
    /// Opens `dir` (created if missing), takes its lock, and reads back what
    /// an earlier process left, oldest first.
    pub fn open(dir: &Path) -> Result<(DiskSpool, Recovered), SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked {
                    path: dir.display().to_string(),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let (ack_id, ack_entries) = read_ack(&dir.join("ack")).map_err(io_err(dir))?;
        let mut ids = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let name = entry.map_err(io_err(dir))?.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_prefix("seg-"))
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok());
            ids.extend(id);
        }
        ids.sort_unstable();
        let mut spool = DiskSpool {
            dir: dir.to_owned(),
            _lock: lock,
            segments: VecDeque::new(),
            acked: 0,
            next_id: ids.last().map_or(1, |id| id + 1),
            active: None,
        };
        let mut recovered = Recovered::default();
        for id in ids {
            let path = spool.segment_path(id);
            if id < ack_id {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let skip = if id == ack_id { ack_entries } else { 0 };
            let (entries, bytes) = read_segment(&path, skip, &mut recovered)?;
            spool.segments.push_back(Segment { id, entries, bytes });
        }
        spool.acked = match spool.segments.front() {
            Some(front) if front.id == ack_id => ack_entries.min(front.entries),
            _ => 0,
        };
        if recovered.records.is_empty() {
            spool.clear()?;
        }
        Ok((spool, recovered))
    }

    /// Whether spooled records are being kept on disk.
    pub fn is_active(&self) -> bool {
        !self.segments.is_empty()
    }

    /// Appends `records` and syncs them to disk before it returns.
    pub fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a NewRecord>,
    ) -> Result<(), SpoolError> {
        let mut buf = Vec::new();
        let mut count = 0;
        for record in records {
            encode_entry(record, &mut buf);
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        let rotate = match (self.active.as_ref(), self.segments.back()) {
            (Some(_), Some(seg)) => seg.bytes >= SEGMENT_BYTES,
            _ => true,
        };
        if rotate {
            self.start_segment()?;
        }
        let path = self.segment_path(self.segments.back().expect("a segment").id);
        let file = self.active.as_mut().expect("an active segment");
        file.write_all(&buf).map_err(io_err(&path))?;
        file.sync_data().map_err(io_err(&path))?;
        let seg = self.segments.back_mut().expect("a segment");
        seg.entries += count;
        seg.bytes += buf.len() as u64;
        Ok(())
    }

    /// The `n` oldest records are gone (written or dropped): remembers it
    /// on disk and removes segments left with nothing in them.
    pub fn consume(&mut self, mut n: u64) -> Result<(), SpoolError> {
        if n == 0 || self.segments.is_empty() {
            return Ok(());
        }
        while n > 0 {
            let Some(front) = self.segments.front() else {
                break;
            };
            let left = front.entries - self.acked;
            if n < left {
                self.acked += n;
                break;
            }
            n -= left;
            self.acked = front.entries;
            if self.segments.len() == 1 {
                break;
            }
            let done = self.segments.pop_front().expect("a front");
            self.acked = 0;
            let path = self.segment_path(done.id);
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        let front = self.segments.front().expect("a segment");
        write_ack(&self.dir, front.id, self.acked)
    }

    /// Nothing is spooled any more: every file goes.
    pub fn clear(&mut self) -> Result<(), SpoolError> {
        self.active = None;
        for seg in self.segments.drain(..) {
            let path = self.dir.join(format!("seg-{}.log", seg.id));
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
                _ => {}
            }
        }
        self.acked = 0;
        let ack = self.dir.join("ack");
        match fs::remove_file(&ack) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&ack)(e)),
            _ => Ok(()),
        }
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("seg-{id}.log"))
    }

    fn start_segment(&mut self) -> Result<(), SpoolError> {
        let id = self.next_id;
        self.next_id += 1;
        let path = self.segment_path(id);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.write_all(MAGIC).map_err(io_err(&path))?;
        file.sync_data().map_err(io_err(&path))?;
        // The new name must survive a crash too.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        if self.segments.is_empty() {
            self.acked = 0;
            write_ack(&self.dir, id, 0)?;
        }
        self.segments.push_back(Segment {
            id,
            entries: 0,
            bytes: MAGIC.len() as u64,
        });
        self.active = Some(file);
        Ok(())
    }
}

fn encode_entry(record: &NewRecord, buf: &mut Vec<u8>) {
    let len: usize = record.size();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&record.shard.to_le_bytes());
    for piece in &record.pieces {
        crc.update(piece);
    }
    buf.reserve(12 + len);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(&record.shard.to_le_bytes());
    for piece in &record.pieces {
        buf.extend_from_slice(piece);
    }
}

/// Reads the entries of one segment after the first `skip`; returns how
/// many whole entries it holds and its length up to the last of them.
fn read_segment(path: &Path, skip: u64, out: &mut Recovered) -> Result<(u64, u64), SpoolError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 8];
    if reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
        out.damaged += 1;
        return Ok((0, 0));
    }
    let mut entries = 0;
    let mut bytes = MAGIC.len() as u64;
    loop {
        let mut head = [0u8; 12];
        match reader.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io_err(path)(e)),
        }
        let word = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().expect("4 bytes"));
        let (len, crc, shard) = (word(0), word(4), word(8));
        if len > MAX_ENTRY {
            out.damaged += 1;
            break;
        }
        let mut payload = vec![0u8; len as usize];
        if reader.read_exact(&mut payload).is_err() {
            // Cut short by a crash mid-write.
            out.damaged += 1;
            break;
        }
        let mut check = crc32fast::Hasher::new();
        check.update(&shard.to_le_bytes());
        check.update(&payload);
        if check.finalize() != crc {
            out.damaged += 1;
            break;
        }
        if entries >= skip {
            // Decoded once for its protocol: recovery after a crash is rare.
            let protocol = Record::decode_pieces(RecordId::ZERO, &[&payload])
                .map_or(Protocol::Http, |r| r.protocol());
            out.records.push(NewRecord {
                shard,
                protocol,
                pieces: split_pieces(Bytes::from(payload)),
            });
        }
        entries += 1;
        bytes += 12 + u64::from(len);
    }
    Ok((entries, bytes))
}

fn read_ack(path: &Path) -> io::Result<(u64, u64)> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let mut words = text.split_whitespace().map(|w| w.parse::<u64>());
            match (words.next(), words.next()) {
                (Some(Ok(id)), Some(Ok(entries))) => Ok((id, entries)),
                _ => Ok((0, 0)),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((0, 0)),
        Err(e) => Err(e),
    }
}

/// Replaces `ack` atomically (write, sync, rename).
fn write_ack(dir: &Path, id: u64, entries: u64) -> Result<(), SpoolError> {
    let tmp = dir.join("ack.tmp");
    let path = dir.join("ack");
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(format!("{id} {entries}\n").as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(shard: u32, text: &str) -> NewRecord {
        NewRecord {
            shard,
            protocol: Protocol::Http,
            pieces: vec![Bytes::copy_from_slice(text.as_bytes())],
        }
    }

    fn texts(records: &[NewRecord]) -> Vec<(u32, String)> {
        records
            .iter()
            .map(|r| {
                let whole: Vec<u8> = r.pieces.iter().flat_map(|p| p.to_vec()).collect();
                (r.shard, String::from_utf8(whole).unwrap())
            })
            .collect()
    }

    #[test]
    fn what_was_appended_and_not_consumed_comes_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, recovered) = DiskSpool::open(dir.path()).unwrap();
            assert!(recovered.records.is_empty());
            assert!(!spool.is_active());
            spool
                .append(&[record(0, "a"), record(1, "b"), record(2, "c")])
                .unwrap();
            spool.consume(1).unwrap();
            spool.append(&[record(3, "d")]).unwrap();
            // Dropped without clear(): a crash.
        }
        let (mut spool, recovered) = DiskSpool::open(dir.path()).unwrap();
        assert_eq!(
            texts(&recovered.records),
            [(1, "b".into()), (2, "c".into()), (3, "d".into())]
        );
        assert_eq!(recovered.damaged, 0);
        assert!(spool.is_active());
        // New records go to a new segment; consuming the old ones removes it.
        spool.append(&[record(4, "e")]).unwrap();
        spool.consume(3).unwrap();
        drop(spool);
        let (spool, recovered) = DiskSpool::open(dir.path()).unwrap();
        assert_eq!(texts(&recovered.records), [(4, "e".into())]);
        let segments = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("seg-")
            })
            .count();
        assert_eq!(segments, 1, "fully consumed segments are removed");
        drop(spool);
    }

    #[test]
    fn a_torn_tail_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = DiskSpool::open(dir.path()).unwrap();
            spool
                .append(&[record(0, "whole"), record(0, "torn")])
                .unwrap();
        }
        let seg = dir.path().join("seg-1.log");
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 2)
            .unwrap();
        let (_, recovered) = DiskSpool::open(dir.path()).unwrap();
        assert_eq!(texts(&recovered.records), [(0, "whole".into())]);
        assert_eq!(recovered.damaged, 1);

        // A flipped byte fails the checksum.
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = DiskSpool::open(dir.path()).unwrap();
            spool
                .append(&[record(0, "fine"), record(0, "flipped")])
                .unwrap();
        }
        let seg = dir.path().join("seg-1.log");
        let mut bytes = fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&seg, bytes).unwrap();
        let (_, recovered) = DiskSpool::open(dir.path()).unwrap();
        assert_eq!(texts(&recovered.records), [(0, "fine".into())]);
        assert_eq!(recovered.damaged, 1);
    }

    #[test]
    fn clear_removes_everything_and_a_second_process_is_kept_out() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = DiskSpool::open(dir.path()).unwrap();
        match DiskSpool::open(dir.path()) {
            Err(SpoolError::Locked { .. }) => {}
            other => panic!("expected Locked, got {:?}", other.map(|_| ())),
        }
        spool.append(&[record(0, "x")]).unwrap();
        spool.clear().unwrap();
        assert!(!spool.is_active());
        drop(spool);
        let (_, recovered) = DiskSpool::open(dir.path()).unwrap();
        assert!(recovered.records.is_empty());
    }

    #[test]
    fn large_records_come_back_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let big = NewRecord {
            shard: 5,
            protocol: Protocol::Tcp,
            pieces: split_pieces(Bytes::from(vec![3u8; 3 * crate::record::PIECE_BYTES + 1])),
        };
        {
            let (mut spool, _) = DiskSpool::open(dir.path()).unwrap();
            spool.append([&big]).unwrap();
        }
        let (_, recovered) = DiskSpool::open(dir.path()).unwrap();
        assert_eq!(recovered.records.len(), 1);
        assert_eq!(recovered.records[0].pieces.len(), 4);
        assert_eq!(recovered.records[0].size(), big.size());
    }
}
