//! The Record node's sections: `record` and `redis`.

use super::*;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Seconds.
    #[serde(default = "default_connection_timeout")]
    pub connection_timeout: u64,
    #[serde(default = "default_retry_count")]
    pub retry_count: usize,
    /// Prefix of every key QProxy writes.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// Record on a Record node; false makes it a plain proxy.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Exchanges waiting for the batch writer; beyond it they are dropped
    /// (counted and logged) rather than slowing the client.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Records per store write.
    #[serde(default = "default_record_batch")]
    pub batch_size: usize,
    /// Records kept in memory while the store is unreachable or behind.
    #[serde(default = "default_spool_capacity")]
    pub spool_capacity: usize,
    /// Encoded bytes the spool holds at most (records of any size).
    #[serde(default = "default_spool_bytes")]
    pub spool_bytes: usize,
    /// Where spooled records are kept while the store is away: on disk
    /// under `data_dir/spool` (they survive a crash), or in memory only.
    #[serde(default)]
    pub spool: SpoolMode,
    /// Body bytes kept per direction; a longer body is proxied in full but
    /// recorded as truncated and not replayed.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Shard by this request header instead of the client address.
    #[serde(default)]
    pub shard_key_header: Option<String>,
    /// Request and response headers whose values are stored as
    /// `[redacted]` (e.g. authorization, cookie, set-cookie). The proxied
    /// exchange is untouched; a replay then sends `[redacted]`.
    #[serde(default)]
    pub redact_headers: Vec<String>,
    /// Records older than this many seconds are trimmed (0 keeps them).
    #[serde(default = "default_retention_secs")]
    pub retention_secs: u64,
    /// At most this many records per shard (0 = no limit).
    #[serde(default = "default_retention_len")]
    pub retention_len: u64,
}

/// `record.spool`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolMode {
    #[default]
    Disk,
    Memory,
}

impl RecordConfig {
    /// At most this many records per shard; `None` keeps them all (0).
    pub fn max_len(&self) -> Option<u64> {
        (self.retention_len > 0).then_some(self.retention_len)
    }
}

impl Default for RecordConfig {
    fn default() -> Self {
        RecordConfig {
            enabled: true,
            queue_capacity: default_queue_capacity(),
            batch_size: default_record_batch(),
            spool_capacity: default_spool_capacity(),
            spool_bytes: default_spool_bytes(),
            spool: SpoolMode::default(),
            max_body_bytes: default_max_body_bytes(),
            shard_key_header: None,
            redact_headers: Vec::new(),
            retention_secs: default_retention_secs(),
            retention_len: default_retention_len(),
        }
    }
}

fn default_pool_size() -> usize {
    10
}

fn default_connection_timeout() -> u64 {
    5
}

fn default_retry_count() -> usize {
    3
}

fn default_key_prefix() -> String {
    "qproxy".into()
}

fn default_queue_capacity() -> usize {
    10_000
}

fn default_record_batch() -> usize {
    256
}

fn default_spool_capacity() -> usize {
    100_000
}

fn default_spool_bytes() -> usize {
    512 << 20
}

fn default_max_body_bytes() -> usize {
    64 << 20
}

fn default_retention_secs() -> u64 {
    7 * 24 * 3600
}

fn default_retention_len() -> u64 {
    1_000_000
}
