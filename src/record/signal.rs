//! Which shards got new records: the record writer tells, whoever announces
//! them (the MQTT fabric) takes. Coalesced: however many batches were
//! written meanwhile, one notification per shard.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::RecordId;

/// A notification, as `mosquitto_sub` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub shard: u32,
    pub last_id: RecordId,
    /// Records written since the previous notification of this shard.
    pub records: u64,
}

/// Which shards have new records since they were last announced.
pub struct ShardSignal {
    pending: Mutex<Vec<Option<(RecordId, u64)>>>,
    notify: Notify,
}

impl ShardSignal {
    pub fn new(shards: u32) -> ShardSignal {
        ShardSignal {
            pending: Mutex::new(vec![None; shards as usize]),
            notify: Notify::new(),
        }
    }

    /// The writer wrote `id` on `shard`.
    pub fn written(&self, shard: u32, id: RecordId) {
        {
            let mut pending = self.pending.lock().expect("signal lock");
            if let Some(slot) = pending.get_mut(shard as usize) {
                let count = slot.map_or(0, |(_, n)| n);
                *slot = Some((id, count + 1));
            }
        }
        self.notify.notify_one();
    }

    /// Waits for news, then takes all of it.
    pub async fn take(&self) -> Vec<Notification> {
        self.notify.notified().await;
        let mut pending = self.pending.lock().expect("signal lock");
        pending
            .iter_mut()
            .enumerate()
            .filter_map(|(shard, slot)| {
                slot.take().map(|(last_id, records)| Notification {
                    shard: shard as u32,
                    last_id,
                    records,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signals_coalesce_per_shard() {
        let signal = ShardSignal::new(3);
        signal.written(0, RecordId::new(1, 0));
        signal.written(0, RecordId::new(1, 1));
        signal.written(2, RecordId::new(2, 0));
        signal.written(9, RecordId::new(3, 0));
        let news = signal.take().await;
        assert_eq!(
            news,
            vec![
                Notification {
                    shard: 0,
                    last_id: RecordId::new(1, 1),
                    records: 2
                },
                Notification {
                    shard: 2,
                    last_id: RecordId::new(2, 0),
                    records: 1
                },
            ]
        );
        let json = serde_json::to_string(&news[0]).unwrap();
        assert_eq!(json, r#"{"shard":0,"last_id":"1-1","records":2}"#);
    }
}
