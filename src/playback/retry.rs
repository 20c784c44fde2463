//! When a replay that did not reach its target is tried again, and when it
//! is given up on and parked.

use std::time::{Duration, Instant};

use crate::config::PlaybackConfig;
use crate::record::RecordId;

/// First wait after a failed try; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries before a record is parked (at least 1).
    pub max_attempts: u32,
    /// Also parked once this long has passed since its first failed try.
    pub max_retry: Option<Duration>,
}

impl RetryPolicy {
    pub fn new(config: &PlaybackConfig) -> RetryPolicy {
        RetryPolicy {
            max_attempts: config.max_attempts,
            max_retry: config.max_retry_ms.map(Duration::from_millis),
        }
    }

    /// The wait after `failed` tries in a row have failed.
    pub fn backoff(&self, failed: u32) -> Duration {
        let doublings = failed.saturating_sub(1).min(16);
        (FIRST_BACKOFF * (1u32 << doublings)).min(MAX_BACKOFF)
    }

    /// Whether a record that failed `attempts` times, the first `since`
    /// ago, is given up on.
    pub fn gives_up(&self, attempts: u32, since: Duration) -> bool {
        attempts >= self.max_attempts.max(1) || self.max_retry.is_some_and(|max| since >= max)
    }
}

/// The record a shard waits on: not delivered yet, tried `attempts` times.
#[derive(Debug, Clone)]
pub struct Retrying {
    pub id: RecordId,
    pub attempts: u32,
    pub since: Instant,
}

impl Retrying {
    /// Counts one more failed try at `id` (a new record starts over).
    pub fn failed(current: Option<Retrying>, id: RecordId) -> Retrying {
        match current {
            Some(mut r) if r.id == id => {
                r.attempts += 1;
                r
            }
            _ => Retrying {
                id,
                attempts: 1,
                since: Instant::now(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let p = RetryPolicy {
            max_attempts: 10,
            max_retry: None,
        };
        let waits: Vec<u64> = (1..=8).map(|n| p.backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(p.backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn gives_up_after_max_attempts_or_max_retry() {
        let p = RetryPolicy {
            max_attempts: 3,
            max_retry: Some(Duration::from_secs(60)),
        };
        assert!(!p.gives_up(2, Duration::from_secs(1)));
        assert!(p.gives_up(3, Duration::from_secs(1)));
        assert!(p.gives_up(1, Duration::from_secs(60)));
        let once = RetryPolicy {
            max_attempts: 0,
            max_retry: None,
        };
        assert!(once.gives_up(1, Duration::ZERO), "0 attempts means 1");
    }

    #[test]
    fn a_new_record_starts_counting_over() {
        let a = RecordId::new(1, 0);
        let b = RecordId::new(2, 0);
        let r = Retrying::failed(None, a);
        assert_eq!(r.attempts, 1);
        let r = Retrying::failed(Some(r), a);
        assert_eq!(r.attempts, 2);
        let r = Retrying::failed(Some(r), b);
        assert_eq!((r.id, r.attempts), (b, 1));
    }
}
