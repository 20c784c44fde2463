//! The Record node's rules for checkpoints, in one place for `POST /commit`,
//! MQTT commits, pulls and the operator's rewind: which peers it serves
//! (at most `sync.max_peers`, idle ones expire), and that no checkpoint
//! points past a shard's newest record.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Mutex;

use super::{Checkpoint, CommitRequest, CommitStatus, ShardId};
use crate::config::{valid_peer_id, SyncConfig};
use crate::record::RecordId;
use crate::store::{Store, StoreError};

/// The longest `error_message` kept; longer ones are cut at a character
/// boundary and end with `…`.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// Why a commit, pull or rewind is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("peer_id `{0}`: use 1 to 128 letters, digits, `-`, `_` or `.`")]
    BadPeer(String),
    #[error("shard_id {shard} is out of range: this node has {shards} shard(s), 0 to {}", .shards - 1)]
    NoSuchShard { shard: u32, shards: u32 },
    #[error("shard {shard} has no records, so last_record_id {id} is beyond its newest record (only 0-0 is not)")]
    EmptyShard { shard: u32, id: RecordId },
    #[error("shard {shard}: last_record_id {id} is beyond the shard's newest record {newest}")]
    BeyondData {
        shard: u32,
        id: RecordId,
        newest: RecordId,
    },
    #[error("peer `{peer}` is refused: this node already serves sync.max_peers = {max} peers (none idle past sync.peer_expiry_secs)")]
    TooManyPeers { peer: String, max: usize },
    #[error("store unavailable: {0}")]
    Store(#[from] StoreError),
}

/// The peers a Record node serves and the rules their checkpoints follow.
pub struct Ledger {
    store: Arc<dyn Store>,
    shards: u32,
    max_peers: usize,
    /// 0: peers never expire.
    peer_expiry_ms: u64,
    /// Peer → when it was last seen (Unix ms); loaded from the stored
    /// checkpoints on first use, so a store that is down does not stop
    /// start-up.
    peers: Mutex<Option<HashMap<String, u64>>>,
    /// Commits refused (both transports), for `/api/status`.
    refused: AtomicU64,
}

impl Ledger {
    pub fn new(store: Arc<dyn Store>, shards: u32, sync: &SyncConfig) -> Ledger {
        Ledger {
            store,
            shards,
            max_peers: sync.max_peers,
            peer_expiry_ms: sync.peer_expiry_secs.saturating_mul(1000),
            peers: Mutex::new(None),
            refused: AtomicU64::new(0),
        }
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The shard number, if this node has it.
    pub fn shard(&self, id: ShardId) -> Result<u32, Refused> {
        if id.0 < self.shards {
            Ok(id.0)
        } else {
            Err(Refused::NoSuchShard {
                shard: id.0,
                shards: self.shards,
            })
        }
    }

    /// A peer that pulls or commits: known already, or a new one while
    /// there is room (made by forgetting peers idle past the expiry).
    pub async fn admit(&self, peer: &str) -> Result<(), Refused> {
        if !valid_peer_id(peer) {
            return Err(Refused::BadPeer(peer.to_string()));
        }
        let now = crate::clock::now_ms();
        let mut guard = self.peers.lock().await;
        if guard.is_none() {
            let mut seen: HashMap<String, u64> = HashMap::new();
            for c in self.store.checkpoints(self.shards).await? {
                let at = seen.entry(c.peer_id).or_default();
                *at = (*at).max(c.committed_at_ms);
            }
            *guard = Some(seen);
        }
        let peers = guard.as_mut().expect("loaded above");
        if let Some(at) = peers.get_mut(peer) {
            *at = now;
            return Ok(());
        }
        if peers.len() >= self.max_peers && self.peer_expiry_ms > 0 {
            let idle: Vec<String> = peers
                .iter()
                .filter(|(_, at)| now.saturating_sub(**at) > self.peer_expiry_ms)
                .map(|(p, _)| p.clone())
                .collect();
            for old in idle {
                self.store.forget_peer(&old, self.shards).await?;
                tracing::info!(peer = %old, "peer forgotten: not seen for sync.peer_expiry_secs");
                peers.remove(&old);
            }
        }
        if peers.len() >= self.max_peers {
            return Err(Refused::TooManyPeers {
                peer: peer.to_string(),
                max: self.max_peers,
            });
        }
        peers.insert(peer.to_string(), now);
        Ok(())
    }

    /// Checks and stores a commit; answers the stored checkpoint.
    pub async fn commit(&self, mut commit: CommitRequest) -> Result<Checkpoint, Refused> {
        let applied = async {
            let shard = self.shard(commit.shard_id)?;
            self.admit(&commit.peer_id).await?;
            self.within_data(&commit.peer_id, shard, commit.last_record_id)
                .await?;
            cap_error_message(&mut commit.error_message);
            let checkpoint = Checkpoint::from_commit(&commit, crate::clock::now_ms());
            Ok(self.store.commit(checkpoint).await?)
        }
        .await;
        if matches!(applied, Err(ref e) if !matches!(e, Refused::Store(_))) {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        applied
    }

    /// Moves `peer`'s checkpoint on `shard` to `to` exactly, backwards too
    /// (never past the newest record), marked `Pending` until the peer
    /// has replayed from there and committed again.
    pub async fn rewind(
        &self,
        peer: &str,
        shard: ShardId,
        to: RecordId,
    ) -> Result<Checkpoint, Refused> {
        let shard = self.shard(shard)?;
        self.admit(peer).await?;
        self.within_data(peer, shard, to).await?;
        let now = crate::clock::now_ms();
        let before = self.store.checkpoint(peer, shard).await?;
        let from = before
            .as_ref()
            .map_or_else(|| "no checkpoint".into(), |c| c.last_record_id.to_string());
        let checkpoint = Checkpoint {
            peer_id: peer.to_string(),
            shard,
            last_record_id: to,
            last_sync_time: before.as_ref().map_or(0, |c| c.last_sync_time),
            status: CommitStatus::Pending,
            retry_count: 0,
            error_message: format!("rewound by an operator from {from}"),
            committed_at_ms: now,
            // A new id each time, so a peer that saw an older rewind
            // replays this one too.
            rewind: Some(now.max(before.and_then(|c| c.rewind).map_or(0, |r| r + 1))),
        };
        self.store.set_checkpoint(checkpoint.clone()).await?;
        tracing::info!(peer, shard, to = %to, from = %from, "checkpoint rewound by an operator");
        Ok(checkpoint)
    }

    /// Refuses a position past the shard's newest record. One at or below
    /// the peer's stored checkpoint is let through (a repeat or a stale
    /// commit, which changes nothing), so a shard whose records were all
    /// trimmed by retention does not turn a late commit into an error.
    async fn within_data(&self, peer: &str, shard: u32, id: RecordId) -> Result<(), Refused> {
        if id == RecordId::ZERO {
            return Ok(());
        }
        let newest = self.store.last_id(shard).await?;
        if newest.is_some_and(|newest| id <= newest) {
            return Ok(());
        }
        let current = self.store.checkpoint(peer, shard).await?;
        if current.is_some_and(|c| id <= c.last_record_id) {
            return Ok(());
        }
        Err(match newest {
            Some(newest) => Refused::BeyondData { shard, id, newest },
            None => Refused::EmptyShard { shard, id },
        })
    }
}

/// Cuts `message` to [`MAX_ERROR_MESSAGE_BYTES`] at a character boundary.
fn cap_error_message(message: &mut String) {
    if message.len() <= MAX_ERROR_MESSAGE_BYTES {
        return;
    }
    let mut end = MAX_ERROR_MESSAGE_BYTES - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push('…');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_cut_at_a_character_boundary() {
        let mut short = "fine".to_string();
        cap_error_message(&mut short);
        assert_eq!(short, "fine");
        let mut long = "é".repeat(2000);
        cap_error_message(&mut long);
        assert!(long.len() <= MAX_ERROR_MESSAGE_BYTES, "{}", long.len());
        assert!(long.ends_with('…'));
        assert!(long.trim_end_matches('…').chars().all(|c| c == 'é'));
    }
}
