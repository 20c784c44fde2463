//! The MQTT sync fabric: both nodes dial out to one broker.
//!
//! Topics, under `mqtt.topic_prefix` (default `qproxy`):
//! - `<prefix>/notify/<shard>` — Record → Playback, QoS 0, small JSON: a
//!   shard has new records (coalesced: one per shard per flush of the
//!   notifier, however many batches were written meanwhile).
//! - `<prefix>/query` — Playback → Record query envelope holding a
//!   MessagePack [`PullRequest`]; the answer is a MessagePack [`SyncBatch`].
//! - `<prefix>/commit` — Playback → Record, QoS 1, JSON [`CommitRequest`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use metrics::counter;
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::ledger::{Ledger, Refused};
use super::source::{read_batch, PullRequest};
use super::{CommitRequest, SyncBatch};
use crate::metrics as m;
use crate::mqtt_client::{MqttClient, MqttError, QoS, QueryHandler};
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Topics {
        Topics {
            prefix: prefix.to_string(),
        }
    }

    pub fn notify(&self, shard: u32) -> String {
        format!("{}/notify/{shard}", self.prefix)
    }

    pub fn notify_filter(&self) -> String {
        format!("{}/notify/+", self.prefix)
    }

    /// The shard a notification topic names, if it is one.
    pub fn shard_of_notify(&self, topic: &str) -> Option<u32> {
        topic
            .strip_prefix(&self.prefix)?
            .strip_prefix("/notify/")?
            .parse()
            .ok()
    }

    pub fn query(&self) -> String {
        format!("{}/query", self.prefix)
    }

    pub fn commit(&self) -> String {
        format!("{}/commit", self.prefix)
    }
}

pub use crate::record::signal::{Notification, ShardSignal};

/// Record side: answers queries, applies commits, announces new records.
#[allow(clippy::too_many_arguments)]
pub async fn serve_record_side(
    client: Arc<MqttClient>,
    store: Arc<dyn Store>,
    ledger: Arc<Ledger>,
    topics: Topics,
    signal: Arc<ShardSignal>,
    shards: u32,
    max_batch_bytes: usize,
    shutdown: CancellationToken,
) -> Result<Vec<JoinHandle<()>>, MqttError> {
    let query_ledger = ledger.clone();
    let handler: QueryHandler = Arc::new(move |payload: Bytes| {
        let store = store.clone();
        let ledger = query_ledger.clone();
        Box::pin(async move {
            answer_pull(store.as_ref(), &ledger, &payload, shards, max_batch_bytes).await
        })
    });
    client.serve_queries(topics.query(), handler).await?;

    let mut messages = client.messages();
    client.subscribe(topics.commit(), QoS::AtLeastOnce).await?;
    let commit_topic = topics.commit();
    let stop = shutdown.clone();
    let commits = tokio::spawn(async move {
        let mut warnings = RateLimited::default();
        loop {
            let message = tokio::select! {
                m = messages.recv() => m,
                _ = stop.cancelled() => return,
            };
            match message {
                Ok(message) if message.topic == commit_topic => {
                    apply_commit(&ledger, &message.payload, &mut warnings).await;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "mqtt commits arrived faster than they were applied; later commits cover them")
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });

    let notifier = tokio::spawn(async move {
        loop {
            let news = tokio::select! {
                n = signal.take() => n,
                _ = shutdown.cancelled() => return,
            };
            for note in news {
                let json = serde_json::to_vec(&note).expect("notifications always encode");
                match client.try_publish(
                    topics.notify(note.shard),
                    Bytes::from(json),
                    QoS::AtMostOnce,
                ) {
                    Ok(()) => counter!(m::MQTT_NOTIFICATIONS_TOTAL).increment(1),
                    Err(e) => debug!(shard = note.shard, error = %e, "notification not sent"),
                }
            }
        }
    });
    Ok(vec![commits, notifier])
}

async fn answer_pull(
    store: &dyn Store,
    ledger: &Ledger,
    payload: &[u8],
    shards: u32,
    max_batch_bytes: usize,
) -> Result<Bytes, String> {
    let request: PullRequest =
        rmp_serde::from_slice(payload).map_err(|e| format!("not a pull request: {e}"))?;
    if request.shard >= shards {
        return Err(format!(
            "shard {} is out of range (0 to {})",
            request.shard,
            shards - 1
        ));
    }
    ledger
        .admit(&request.peer_id)
        .await
        .map_err(|e| e.to_string())?;
    let batch = read_batch(store, &request, max_batch_bytes)
        .await
        .map_err(|e| e.to_string())?;
    let encoded = rmp_serde::to_vec_named(&batch).expect("batches always encode");
    if encoded.len() > max_batch_bytes.saturating_add(64 << 10) {
        return Err(format!(
            "the next record alone is {} bytes, over mqtt.max_batch_bytes; pull it over HTTP",
            encoded.len()
        ));
    }
    Ok(Bytes::from(encoded))
}

/// Warnings at most every [`RateLimited::EVERY`], with how many were held back.
#[derive(Default)]
struct RateLimited {
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl RateLimited {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    /// Whether to log now, and how many were held back since the last one.
    fn due(&mut self) -> Option<u64> {
        if self.last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(std::time::Instant::now());
        Some(std::mem::take(&mut self.held_back))
    }
}

/// Applies an MQTT commit by the same rules as `POST /commit`
/// ([`Ledger::commit`]). There is no one to answer: a refusal is counted
/// (`qproxy_commits_total{result="refused"}`, `/api/status`
/// `commits_refused`) and logged, at most every 10 s.
async fn apply_commit(ledger: &Ledger, payload: &[u8], warnings: &mut RateLimited) {
    let commit: CommitRequest = match serde_json::from_slice(payload) {
        Ok(c) => c,
        Err(e) => {
            counter!(m::COMMITS_TOTAL, "transport" => "mqtt", "result" => "malformed").increment(1);
            if let Some(held_back) = warnings.due() {
                warn!(error = %e, held_back, "ignoring a malformed mqtt commit");
            }
            return;
        }
    };
    let peer = commit.peer_id.clone();
    match ledger.commit(commit).await {
        Ok(_) => counter!(m::COMMITS_TOTAL, "transport" => "mqtt", "result" => "ok").increment(1),
        // The peer commits again with its next batch; the position only moves on.
        Err(Refused::Store(e)) => warn!(error = %e, %peer, "cannot store an mqtt commit"),
        Err(refused) => {
            counter!(m::COMMITS_TOTAL, "transport" => "mqtt", "result" => "refused").increment(1);
            if let Some(held_back) = warnings.due() {
                warn!(%peer, reason = %refused, held_back, "mqtt commit refused");
            }
        }
    }
}

/// Playback side: pulls by query and commits with QoS 1.
pub struct MqttLink {
    pub client: Arc<MqttClient>,
    pub topics: Topics,
}

/// Why a batch did not come by MQTT.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error("mqtt batch cannot be decoded: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

impl MqttLink {
    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    pub async fn pull(&self, request: &PullRequest) -> Result<SyncBatch, PullError> {
        let payload = rmp_serde::to_vec_named(request).expect("pull requests always encode");
        let answer = self
            .client
            .query(self.topics.query(), Bytes::from(payload))
            .await?;
        Ok(rmp_serde::from_slice(&answer)?)
    }

    pub async fn commit(&self, commit: &CommitRequest) -> Result<(), MqttError> {
        let json = serde_json::to_vec(commit).expect("commits always encode");
        self.client
            .publish(self.topics.commit(), Bytes::from(json), QoS::AtLeastOnce)
            .await
    }
}

/// Wakes a shard's pull loop when its notification arrives.
pub async fn spawn_wakeups(
    client: Arc<MqttClient>,
    topics: Topics,
    wake: Arc<[Notify]>,
    notifications: Arc<AtomicU64>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, MqttError> {
    let mut messages = client.messages();
    client
        .subscribe(topics.notify_filter(), QoS::AtMostOnce)
        .await?;
    Ok(tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                m = messages.recv() => m,
                _ = shutdown.cancelled() => return,
            };
            match message {
                Ok(message) => {
                    if let Some(shard) = topics.shard_of_notify(&message.topic) {
                        if let Some(w) = wake.get(shard as usize) {
                            notifications.fetch_add(1, Ordering::Relaxed);
                            w.notify_one();
                        }
                    }
                }
                // Missed some: wake every shard rather than miss one.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    wake.iter().for_each(Notify::notify_one)
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        let t = Topics::new("qp/zone-a");
        assert_eq!(t.notify(3), "qp/zone-a/notify/3");
        assert_eq!(t.notify_filter(), "qp/zone-a/notify/+");
        assert_eq!(t.shard_of_notify("qp/zone-a/notify/3"), Some(3));
        assert_eq!(t.shard_of_notify("qp/zone-a/notify/x"), None);
        assert_eq!(t.shard_of_notify("other/notify/3"), None);
        assert_eq!(t.query(), "qp/zone-a/query");
        assert_eq!(t.commit(), "qp/zone-a/commit");
    }
}
