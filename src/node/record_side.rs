//! A Record node's recording: the batch writer and its spool, retention,
//! the commit ledger, and answering MQTT queries and commits.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::fabric::Fabric;
use crate::config::{Config, DiscoveryProvider, Mode, ZookeeperSettings};
use crate::downstream::RECORD_REGISTRY;
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
        api: std::net::SocketAddr,
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
        if let Some(zk) = config
            .service_discovery
            .as_ref()
            .filter(|sd| sd.provider == DiscoveryProvider::Zookeeper)
            .and_then(|sd| sd.config.zookeeper.clone())
        {
            let registration = json!({
                "host": config.api.host,
                "port": api.port(),
                "tls": config.api.tls,
            });
            tasks.push(tokio::spawn(register(zk, registration, shutdown.clone())));
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

/// Registers this Record node's sync API in ZooKeeper as an ephemeral node
/// `<base_path>/_qproxy/record/<host>:<port>` (data `{"host","port","tls"}`),
/// so Playback nodes without `sync.peer` find it; registers again after a
/// lost session, until `shutdown`.
async fn register(zk: ZookeeperSettings, data: serde_json::Value, shutdown: CancellationToken) {
    let base = zk.base_path.trim_end_matches('/');
    let dir = format!("{base}/{RECORD_REGISTRY}");
    let node = format!(
        "{dir}/{}:{}",
        data["host"].as_str().unwrap_or(""),
        data["port"]
    );
    let bytes = data.to_string().into_bytes();
    let mut logged = false;
    loop {
        let connected = tokio::select! {
            c = zookeeper_client::Client::connector()
                .with_session_timeout(Duration::from_secs(10))
                .with_connection_timeout(Duration::from_secs(2))
                .connect(&zk.address) => c,
            _ = shutdown.cancelled() => return,
        };
        match connected {
            Ok(client) => match register_once(&client, &dir, &node, &bytes).await {
                Ok(()) => {
                    info!(node = %node, "record node registered in zookeeper");
                    logged = false;
                    let mut state = client.state_watcher();
                    loop {
                        tokio::select! {
                            s = state.changed() => if s.is_terminated() { break },
                            _ = shutdown.cancelled() => return,
                        }
                    }
                    warn!(node = %node, "zookeeper session lost; registering again");
                }
                Err(e) => {
                    if !logged {
                        warn!(node = %node, error = %e, "cannot register in zookeeper; trying again");
                        logged = true;
                    }
                }
            },
            Err(e) => {
                if !logged {
                    warn!(address = %zk.address, error = %e, "zookeeper unreachable; registering when it is back");
                    logged = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn register_once(
    client: &zookeeper_client::Client,
    dir: &str,
    node: &str,
    data: &[u8],
) -> Result<(), zookeeper_client::Error> {
    let persistent =
        zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    let mut at = String::new();
    for part in dir.trim_start_matches('/').split('/') {
        at.push('/');
        at.push_str(part);
        match client.create(&at, b"", &persistent).await {
            Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
            Err(e) => return Err(e),
        }
    }
    let ephemeral =
        zookeeper_client::CreateMode::Ephemeral.with_acls(zookeeper_client::Acls::anyone_all());
    match client.create(node, data, &ephemeral).await {
        Ok(_) => Ok(()),
        // Left by a session of ours that has not expired yet.
        Err(zookeeper_client::Error::NodeExists) => {
            client.delete(node, None).await?;
            client.create(node, data, &ephemeral).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}
