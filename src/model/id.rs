//! Record ids: the Redis stream entry id of a shard, `<ms>-<seq>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Strictly increasing within a shard; ordered as `(ms, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RecordId {
    pub ms: u64,
    pub seq: u64,
}

impl RecordId {
    pub const ZERO: RecordId = RecordId { ms: 0, seq: 0 };
    pub const MAX: RecordId = RecordId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    pub fn new(ms: u64, seq: u64) -> Self {
        RecordId { ms, seq }
    }

    /// The smallest id after this one.
    pub fn successor(self) -> RecordId {
        match self.seq.checked_add(1) {
            Some(seq) => RecordId { ms: self.ms, seq },
            None => RecordId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }

    /// The id a store assigns after `last` at wall-clock `now_ms`.
    pub fn next_after(last: RecordId, now_ms: u64) -> RecordId {
        if now_ms > last.ms {
            RecordId { ms: now_ms, seq: 0 }
        } else {
            last.successor()
        }
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a record id (expected <ms>-<seq>, e.g. 1747629658000-0, or 0)")]
pub struct BadRecordId(pub String);

impl FromStr for RecordId {
    type Err = BadRecordId;

    /// Accepts `<ms>-<seq>` and a bare `<ms>` (sequence 0).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadRecordId(s.chars().take(64).collect());
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        let (ms, seq) = match s.split_once('-') {
            Some((ms, seq)) => (ms, seq),
            None => (s, "0"),
        };
        if !digits(ms) || !digits(seq) {
            return Err(bad());
        }
        Ok(RecordId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for RecordId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RecordId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let id: RecordId = "1747629658000-7".parse().unwrap();
        assert_eq!(id, RecordId::new(1_747_629_658_000, 7));
        assert_eq!(id.to_string(), "1747629658000-7");
        assert_eq!("0".parse::<RecordId>().unwrap(), RecordId::ZERO);
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "+1",
            "1 -2",
            "99999999999999999999",
        ] {
            assert!(bad.parse::<RecordId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn orders_by_ms_then_seq() {
        assert!(RecordId::new(1, 9) < RecordId::new(2, 0));
        assert!(RecordId::new(2, 0) < RecordId::new(2, 1));
        assert_eq!(RecordId::new(1, u64::MAX).successor(), RecordId::new(2, 0));
    }

    #[test]
    fn next_after_is_strictly_increasing_even_if_the_clock_steps_back() {
        let a = RecordId::next_after(RecordId::ZERO, 100);
        let b = RecordId::next_after(a, 100);
        let c = RecordId::next_after(b, 50);
        assert!(a < b && b < c);
        assert_eq!(c, RecordId::new(100, 2));
    }
}
