//! The Playback node's work: pull records, replay them in order, compare,
//! keep the results, commit.

mod compare;
mod replay;
mod result;
mod runner;

pub use compare::{compare_bytes, compare_http};
pub use replay::{Replayer, REPLAY_ID_HEADER, REPLAY_SHARD_HEADER};
pub use result::{Outcome, ReplayResult};
pub use runner::{PlaybackStats, SyncLink, SyncRunner, Transport};
