//! The Playback node's work: pull records, replay them in order, compare,
//! retry what did not arrive, park what never does, keep the results,
//! commit.

mod compare;
mod parked;
mod replay;
mod retry;
mod runner;

pub use crate::model::replay::{Attempt, Outcome, ParkedRecord, ReplayResult};
pub use compare::{compare_bytes, Answer, Comparator};
pub use parked::{Redrive, Redriven};
pub use replay::{Replayer, REPLAY_ID_HEADER, REPLAY_SHARD_HEADER};
pub use retry::{RetryPolicy, Retrying};
pub use runner::{PlaybackStats, SyncLink, SyncRunner, Transport, WaitingOn};
