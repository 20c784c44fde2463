//! A Playback node's replaying: the replayer, the per-shard sync runner
//! with its MQTT wake-ups, and what the API shows of them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::fabric::Fabric;
use crate::api::PlaybackApi;
use crate::config::{Config, DiscoveryProvider, Mode};
use crate::downstream::{
    Endpoints, KubernetesDiscovery, PeerSource, StaticDiscovery, TcpTarget, ZooKeeperDiscovery,
};
use crate::playback::{Comparator, PlaybackStats, Replayer, RetryPolicy, SyncLink, SyncRunner};
use crate::store::Store;
use crate::sync::client::PeerClient;
use crate::sync::mqtt::{spawn_wakeups, MqttLink};

/// Starts replaying on a Playback node (pulling too, with `sync.enabled`);
/// `None` on a Record node.
pub(super) async fn start(
    config: &Config,
    store: &Arc<dyn Store>,
    fabric: &Fabric,
    tls: &crate::tls::Setup,
    tcp_target: Option<TcpTarget>,
    shutdown: &CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Option<PlaybackApi> {
    if config.mode != Mode::Playback {
        return None;
    }
    let stats = Arc::new(PlaybackStats::default());
    tasks.push(spawn_parked_count(
        stats.clone(),
        store.clone(),
        config.sync.shards,
        shutdown.clone(),
    ));
    let target = config.http.as_ref()?.downstream.clone();
    // The config checked every header name already.
    let comparator = Comparator::new(&config.playback).unwrap_or_default();
    let replayer = Replayer::new(
        target,
        tcp_target.clone(),
        Duration::from_millis(config.playback.timeout_ms),
        config.record.max_body_bytes,
        tls.client.clone(),
    )
    .with_tcp_pacing(config.playback.tcp_pacing)
    .with_pipeline_depth(config.playback.pipeline_depth)
    .with_retry_statuses(config.playback.retry_statuses.clone())
    .with_comparator(comparator)
    .with_grpc(
        config
            .grpc
            .as_ref()
            .map(|g| g.downstream.clone())
            .unwrap_or_default(),
    );
    let (endpoints, peer_source) = discovery(config, tls, shutdown, tasks);
    let discovered_peer = config.sync.peer.is_none() && peer_source.is_some();
    let replayer = Arc::new(match endpoints {
        Some(endpoints) => replayer.with_discovery(endpoints),
        None => replayer,
    });
    let peer = config.sync.peer.as_ref();
    if config.sync.enabled {
        let wake: Arc<[Notify]> = (0..config.sync.shards).map(|_| Notify::new()).collect();
        let mqtt_link = match &fabric.client {
            Some(client) => {
                match spawn_wakeups(
                    client.clone(),
                    fabric.topics.clone(),
                    wake.clone(),
                    stats.notifications.clone(),
                    shutdown.clone(),
                )
                .await
                {
                    Ok(handle) => tasks.push(handle),
                    Err(e) => {
                        warn!(error = %e, "mqtt notifications not subscribed; polling only")
                    }
                }
                Some(MqttLink {
                    client: client.clone(),
                    topics: fabric.topics.clone(),
                })
            }
            None => None,
        };
        let runner = Arc::new(SyncRunner {
            link: SyncLink {
                http: match (peer, peer_source) {
                    (Some(p), _) => Some(PeerClient::new(p, tls.client.clone())),
                    // No sync.peer: the Record node registered in ZooKeeper.
                    (None, Some(source)) => {
                        Some(PeerClient::discovered(source, tls.client.clone()))
                    }
                    (None, None) => None,
                },
                mqtt: mqtt_link,
            },
            wake,
            replayer: replayer.clone(),
            store: store.clone(),
            stats: stats.clone(),
            peer_id: config.sync.peer_id.clone(),
            shards: config.sync.shards,
            interval: config.sync.interval(),
            batch_size: config.sync.batch_size,
            results_kept: config.playback.results_retention_len,
            retry: RetryPolicy::new(&config.playback),
        });
        tasks.extend(runner.spawn(shutdown.clone()));
    }
    Some(PlaybackApi {
        replayer,
        stats,
        peer_id: config.sync.peer_id.clone(),
        peer_addr: match peer {
            Some(p) => Some(format!("{}:{}", p.host, p.port)),
            None if discovered_peer => Some("found in zookeeper".into()),
            None => None,
        },
        results_kept: config.playback.results_retention_len,
        parked_down_threshold: config.playback.parked_down_threshold,
        redrive: tokio::sync::Mutex::new(()),
        max_push_bytes: config.playback.max_push_bytes,
        pushes: tokio::sync::Semaphore::new(crate::api::MAX_CONCURRENT_PUSHES),
    })
}

/// The endpoints of the services records name, from `service_discovery`
/// (static, ZooKeeper or Kubernetes).
fn discovery(
    config: &Config,
    tls: &crate::tls::Setup,
    shutdown: &CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) -> (Option<Arc<Endpoints>>, Option<Arc<dyn PeerSource>>) {
    let Some(section) = config.service_discovery.as_ref() else {
        return (None, None);
    };
    match section.provider {
        DiscoveryProvider::Static => match StaticDiscovery::new(&section.config) {
            Ok(found) => {
                let endpoints = Endpoints::new(Arc::new(found));
                info!(discovery = %endpoints.describe(), "replaying to the services records name");
                (Some(Arc::new(endpoints)), None)
            }
            // The config checked every endpoint already.
            Err(e) => {
                warn!(error = %e, "service discovery not used");
                (None, None)
            }
        },
        DiscoveryProvider::Zookeeper => {
            // The config checked that the section is there.
            let Some(zk) = section.config.zookeeper.as_ref() else {
                return (None, None);
            };
            let discovery = Arc::new(ZooKeeperDiscovery::new(&zk.address, &zk.base_path));
            tasks.push(tokio::spawn(discovery.clone().run(shutdown.clone())));
            let endpoints = Endpoints::new(discovery.clone());
            info!(discovery = %endpoints.describe(), "replaying to the services records name");
            (Some(Arc::new(endpoints)), Some(discovery))
        }
        DiscoveryProvider::Kubernetes => {
            // The config checked that the section is there.
            let Some(k8s) = section.config.kubernetes.as_ref() else {
                return (None, None);
            };
            match KubernetesDiscovery::new(k8s, tls.client.clone()) {
                Ok(discovery) => {
                    let discovery = Arc::new(discovery);
                    tasks.push(tokio::spawn(discovery.clone().run(shutdown.clone())));
                    let endpoints = Endpoints::new(discovery);
                    info!(discovery = %endpoints.describe(), "replaying to the services records name");
                    (Some(Arc::new(endpoints)), None)
                }
                Err(e) => {
                    warn!(error = %e, "kubernetes service discovery not used; records are replayed to http.downstream");
                    (None, None)
                }
            }
        }
    }
}

/// Counts the records parked by an earlier run, once the store answers.
fn spawn_parked_count(
    stats: Arc<PlaybackStats>,
    store: Arc<dyn Store>,
    shards: u32,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match stats.refresh_parked(store.as_ref(), shards).await {
                Ok(0) => return,
                Ok(parked) => {
                    warn!(parked, "records parked by an earlier run wait to be re-driven (POST /api/replays/retry)");
                    return;
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    })
}
