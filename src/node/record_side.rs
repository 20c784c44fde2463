//! A Record node's recording: the batch writer and its spool, retention,
//! the commit ledger, and answering MQTT queries and commits.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::fabric::Fabric;
use crate::config::{Config, Mode};
use crate::record::recorder::{Recorder, RecorderStats};
use crate::record::signal::ShardSignal;
use crate::record::spool::{DiskSpool, Recovered};
use crate::record::RecordId;
use crate::store::Store;
use crate::sync::ledger::Ledger;
use crate::sync::mqtt::serve_record_side;

/// How often retention trims the record streams.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// What the rest of a node needs from the record side (all `None` on a
/// Playback node; no recorder when `record.enabled` is false).
#[derive(Default)]
pub(super) struct RecordSide {
    pub recorder: Option<Recorder>,
    /// The writer thread: it ends once every recorder handle is gone and
    /// what it holds is written or on disk.
    pub writer: Option<JoinHandle<()>>,
    pub stats: Option<Arc<RecorderStats>>,
    pub ledger: Option<Arc<Ledger>>,
}

impl RecordSide {
    pub async fn start(
        config: &Config,
        store: &Arc<dyn Store>,
        fabric: &Fabric,
        spool: Option<(DiskSpool, Recovered)>,
        shutdown: &CancellationToken,
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> RecordSide {
        if config.mode != Mode::Record {
            return RecordSide::default();
        }
        let recording = config.record.enabled;
        let shards = config.sync.shards;
        let signal = fabric
            .client
            .as_ref()
            .filter(|_| recording)
            .map(|_| Arc::new(ShardSignal::new(shards)));
        let ledger = Arc::new(Ledger::new(store.clone(), shards, &config.sync));
        if let Some(client) = &fabric.client {
            let serving = serve_record_side(
                client.clone(),
                store.clone(),
                ledger.clone(),
                fabric.topics.clone(),
                signal
                    .clone()
                    .unwrap_or_else(|| Arc::new(ShardSignal::new(shards))),
                shards,
                config.mqtt.as_ref().map_or(4 << 20, |m| m.max_batch_bytes),
                shutdown.clone(),
            )
            .await;
            match serving {
                Ok(handles) => tasks.extend(handles),
                Err(e) => warn!(error = %e, "mqtt record side not started; HTTP sync still works"),
            }
        }
        let mut side = RecordSide {
            ledger: Some(ledger),
            ..RecordSide::default()
        };
        if recording {
            let (recorder, writer) =
                Recorder::spawn(store.clone(), &config.record, shards, signal, spool);
            tasks.push(spawn_retention(store.clone(), config, shutdown.clone()));
            side.stats = Some(recorder.stats().clone());
            side.recorder = Some(recorder);
            side.writer = Some(writer);
        }
        side
    }
}

fn spawn_retention(
    store: Arc<dyn Store>,
    config: &Config,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let shards = config.sync.shards;
    let max_age_ms = config.record.retention_secs.saturating_mul(1000);
    let max_len = config.record.max_len();
    tokio::spawn(async move {
        if max_age_ms == 0 && max_len.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RETENTION_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
            let min_id = (max_age_ms > 0)
                .then(|| RecordId::new(crate::clock::now_ms().saturating_sub(max_age_ms), 0));
            for shard in 0..shards {
                if let Err(e) = store.trim(shard, min_id, max_len).await {
                    debug!(shard, error = %e, "retention trim failed; will retry");
                }
            }
        }
    })
}
