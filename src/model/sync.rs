//! What crosses between zones: batches of records, commits, and the
//! per-peer checkpoints they move. Plain types; the transport lives in
//! `crate::sync`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::id::RecordId;
use super::record::Record;

/// What `GET /sync` answers and `POST /sync` takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncBatch {
    pub records: Vec<Record>,
    /// The id of the last record in `records`: the cursor to commit.
    pub next_id: Option<RecordId>,
    /// More records follow `next_id` right now.
    pub has_more: bool,
    /// An operator moved the peer's checkpoint back to here: the batch
    /// starts after it, and the peer replays from it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewound_to: Option<RecordId>,
    /// That rewind's id, which the peer's next pulls and commits carry to
    /// say it has seen it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind: Option<u64>,
}

/// A shard as the API names it: a number, or `default` for shard 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ShardId(pub u32);

impl ShardId {
    pub fn parse(s: &str) -> Result<ShardId, String> {
        if s == "default" {
            return Ok(ShardId(0));
        }
        s.parse::<u32>()
            .map(ShardId)
            .map_err(|_| format!("shard_id `{s}` is not a shard number or `default`"))
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for ShardId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u32),
            Text(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("shard_id must be a number or \"default\""))?
        {
            Raw::Number(n) => Ok(ShardId(n)),
            Raw::Text(s) => ShardId::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CommitStatus {
    Pending,
    InProgress,
    #[default]
    Completed,
    Failed,
}

/// The body of `POST /commit`, as in the original README.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    pub peer_id: String,
    pub shard_id: ShardId,
    /// Unix seconds of the peer's sync (informative).
    #[serde(default)]
    pub last_sync_time: u64,
    pub last_record_id: RecordId,
    #[serde(default)]
    pub status: CommitStatus,
    #[serde(default)]
    pub retry_count: u32,
    #[serde(default)]
    pub error_message: String,
    /// The operator's rewind this peer has seen ([`SyncBatch::rewind`]);
    /// only such a commit moves a rewound checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind: Option<u64>,
}

/// Where a peer stands on a shard: everything up to `last_record_id` is done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub peer_id: String,
    pub shard: u32,
    pub last_record_id: RecordId,
    pub last_sync_time: u64,
    pub status: CommitStatus,
    pub retry_count: u32,
    pub error_message: String,
    /// Unix milliseconds when the Record node took the commit.
    pub committed_at_ms: u64,
    /// Stored: an operator's rewind the peer has not seen yet. On an
    /// incoming commit: the rewind the peer has seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind: Option<u64>,
}

impl Checkpoint {
    pub fn from_commit(req: &CommitRequest, now_ms: u64) -> Checkpoint {
        Checkpoint {
            peer_id: req.peer_id.clone(),
            shard: req.shard_id.0,
            last_record_id: req.last_record_id,
            last_sync_time: req.last_sync_time,
            status: req.status,
            retry_count: req.retry_count,
            error_message: req.error_message.clone(),
            committed_at_ms: now_ms,
            rewind: req.rewind,
        }
    }

    /// The stored checkpoint after `incoming` arrives when `current` was
    /// stored: the position never moves backwards, a stale commit changes
    /// nothing, and neither does a commit sent before the peer saw an
    /// operator's rewind (it would undo the rewind).
    pub fn merge(current: Option<Checkpoint>, incoming: Checkpoint) -> Checkpoint {
        match current {
            Some(current) if current.rewind.is_some() && current.rewind != incoming.rewind => {
                current
            }
            Some(current) if current.last_record_id > incoming.last_record_id => current,
            _ => Checkpoint {
                rewind: None,
                ..incoming
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_commit_body_parses() {
        let body = r#"{
          "peer_id": "default",
          "shard_id": "default",
          "last_sync_time": 1747629658,
          "last_record_id": "0",
          "status": "Completed",
          "retry_count": 0,
          "error_message": ""
        }"#;
        let req: CommitRequest = serde_json::from_str(body).unwrap();
        assert_eq!(req.shard_id, ShardId(0));
        assert_eq!(req.last_record_id, RecordId::ZERO);
        assert_eq!(req.status, CommitStatus::Completed);
    }

    #[test]
    fn shard_ids_as_numbers_or_text() {
        let req: CommitRequest =
            serde_json::from_str(r#"{"peer_id":"p","shard_id":3,"last_record_id":"5-1"}"#).unwrap();
        assert_eq!(req.shard_id, ShardId(3));
        let req: CommitRequest =
            serde_json::from_str(r#"{"peer_id":"p","shard_id":"2","last_record_id":"5-1"}"#)
                .unwrap();
        assert_eq!(req.shard_id, ShardId(2));
        for bad in [r#""x""#, "-1", "null", "1.5"] {
            let body = format!(r#"{{"peer_id":"p","shard_id":{bad},"last_record_id":"5-1"}}"#);
            assert!(
                serde_json::from_str::<CommitRequest>(&body).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn checkpoints_never_move_backwards() {
        let at = |id: &str, status| Checkpoint {
            peer_id: "p".into(),
            shard: 0,
            last_record_id: id.parse().unwrap(),
            last_sync_time: 0,
            status,
            retry_count: 0,
            error_message: String::new(),
            committed_at_ms: 0,
            rewind: None,
        };
        let merged = Checkpoint::merge(
            Some(at("5-0", CommitStatus::Completed)),
            at("4-9", CommitStatus::Failed),
        );
        assert_eq!(merged, at("5-0", CommitStatus::Completed));
        let merged = Checkpoint::merge(
            Some(at("5-0", CommitStatus::Completed)),
            at("5-0", CommitStatus::Failed),
        );
        assert_eq!(merged.status, CommitStatus::Failed);
        let merged = Checkpoint::merge(None, at("1-0", CommitStatus::Completed));
        assert_eq!(merged.last_record_id, RecordId::new(1, 0));
    }

    #[test]
    fn a_rewound_checkpoint_moves_only_for_a_peer_that_saw_the_rewind() {
        let at = |id: &str, rewind| Checkpoint {
            peer_id: "p".into(),
            shard: 0,
            last_record_id: id.parse().unwrap(),
            last_sync_time: 0,
            status: CommitStatus::Pending,
            retry_count: 0,
            error_message: String::new(),
            committed_at_ms: 0,
            rewind,
        };
        let rewound = at("5-0", Some(7));
        let stale = Checkpoint::merge(Some(rewound.clone()), at("10-0", None));
        assert_eq!(stale, rewound, "sent before the peer saw the rewind");
        let other = Checkpoint::merge(Some(rewound.clone()), at("10-0", Some(6)));
        assert_eq!(other, rewound, "an older rewind");
        let seen = Checkpoint::merge(Some(rewound), at("10-0", Some(7)));
        assert_eq!(seen.last_record_id, RecordId::new(10, 0));
        assert_eq!(seen.rewind, None, "the rewind is done");
    }
}
