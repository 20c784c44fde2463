//! The Record node's side of a pull: which records a peer gets next.
//! Shared by `GET /sync` and the MQTT query, so both answer the same.

use bytes::Bytes;

use super::SyncBatch;
use crate::record::RecordId;
use crate::store::{Store, StoreError};

/// What a peer asks for.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PullRequest {
    pub peer_id: String,
    pub shard: u32,
    pub limit: usize,
    /// Records after this id; without it, after the peer's checkpoint.
    #[serde(default)]
    pub after: Option<RecordId>,
    /// Unix ms: records stored at or after this time.
    #[serde(default)]
    pub start_ms: Option<u64>,
    /// Unix ms: records stored at or before this time.
    #[serde(default)]
    pub end_ms: Option<u64>,
    /// The operator's rewind the peer has seen ([`SyncBatch::rewind`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind: Option<u64>,
}

/// Reads the batch `request` asks for: at most `limit` records and, past the
/// first record, at most `max_bytes` of encoded records. `has_more` says
/// whether records are left after the batch.
///
/// While the peer's checkpoint carries an operator's rewind it has not
/// seen, a pull by position starts at the rewound checkpoint (or at `after`
/// when that is earlier) and the batch says so, so the peer replays from
/// there; time windows are served as asked.
pub async fn read_batch(
    store: &dyn Store,
    request: &PullRequest,
    max_bytes: usize,
) -> Result<SyncBatch, StoreError> {
    let shard = request.shard;
    let by_time = request.start_ms.is_some() || request.end_ms.is_some();
    let checkpoint = if request.after.is_none() || !by_time {
        store.checkpoint(&request.peer_id, shard).await?
    } else {
        None
    };
    let rewound = checkpoint
        .as_ref()
        .filter(|c| !by_time && c.rewind.is_some() && c.rewind != request.rewind)
        .map(|c| {
            let to = request
                .after
                .map_or(c.last_record_id, |after| after.min(c.last_record_id));
            (to, c.rewind)
        });
    let mut from = match (rewound, request.after, request.start_ms) {
        (Some((to, _)), _, _) => to.successor(),
        (None, Some(after), _) => after.successor(),
        (None, None, Some(_)) => RecordId::ZERO,
        (None, None, None) => checkpoint.map_or(RecordId::ZERO, |c| c.last_record_id.successor()),
    };
    if let Some(start) = request.start_ms {
        from = from.max(RecordId::new(start, 0));
    }
    let to = request
        .end_ms
        .map_or(RecordId::MAX, |end| RecordId::new(end, u64::MAX));
    let limit = request.limit.max(1);
    let stored = store.read(shard, from, to, limit + 1).await?;
    let mut has_more = stored.len() > limit;
    let mut records = Vec::with_capacity(stored.len().min(limit));
    let mut bytes = 0;
    for entry in stored.iter().take(limit) {
        let size: usize = entry.pieces.iter().map(Bytes::len).sum();
        if !records.is_empty() && bytes + size > max_bytes {
            has_more = true;
            break;
        }
        bytes += size;
        records.push(entry.decode()?);
    }
    Ok(SyncBatch {
        next_id: records.last().and_then(|r| r.id),
        records,
        has_more,
        rewound_to: rewound.map(|(to, _)| to),
        rewind: rewound.and_then(|(_, id)| id),
    })
}
