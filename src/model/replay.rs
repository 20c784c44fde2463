//! What replaying one record came to.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::id::RecordId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Replayed, and zone B answered what zone A answered.
    Matched,
    /// Replayed, with a different answer; `detail` holds a short diff.
    Mismatched,
    /// Could not be replayed (target down, timeout); `detail` says why.
    Failed,
    /// Deliberately not replayed (zone A's downstream never answered it, or
    /// its body was not recorded in full); `detail` says why.
    Skipped,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Matched,
        Outcome::Mismatched,
        Outcome::Failed,
        Outcome::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Matched => "matched",
            Outcome::Mismatched => "mismatched",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not one of matched, mismatched, failed, skipped"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayResult {
    pub record_id: RecordId,
    pub shard: u32,
    pub outcome: Outcome,
    #[serde(default)]
    pub detail: Option<String>,
    pub replayed_at_ms: u64,
    pub duration_us: u64,
    pub method: String,
    pub uri: String,
    pub recorded_status: Option<u16>,
    pub replayed_status: Option<u16>,
    /// Tries this result took: 1 unless the target could not be reached at
    /// first (see [`crate::playback::RetryPolicy`]).
    #[serde(default = "one")]
    pub attempts: u32,
    /// The service the record names, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Which endpoint (`host:port`) the replay went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

fn one() -> u32 {
    1
}

/// One try at replaying a record.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub result: ReplayResult,
    /// The record did not reach the target (refused, reset, timed out, or a
    /// gateway status listed in `playback.retry_statuses`): trying again may
    /// deliver it. False for failures that another try cannot fix (a record
    /// that cannot be sent, a missing target).
    pub transient: bool,
}

/// A record given up on, kept with its last result for re-driving.
#[derive(Debug, Clone)]
pub struct ParkedRecord {
    pub result: ReplayResult,
    pub pieces: Vec<bytes::Bytes>,
}
