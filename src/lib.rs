//! QProxy records live traffic in one network zone and replays it in another.
//!
//! A **Record node** proxies zone A's clients to their downstream and
//! records every exchange; a **Playback node** in zone B pulls the records,
//! replays them in order against zone B's services, compares the answers and
//! commits its progress so nothing is lost or replayed twice.
//!
//! Where a request goes, in module order:
//! - [`config`] — the JSON config (comments and trailing commas allowed),
//!   checked before any port is bound.
//! - [`node`] — wires one node together and runs it until shutdown.
//! - [`server`] — the accept loop shared by every HTTP listener.
//! - [`proxy`] — the proxy listeners (`proxy::http`, `proxy::tcp`).
//! - [`record`] — the record model, the capture tee and the batch
//!   [`record::recorder::Recorder`].
//! - [`store`] — the [`store::Store`] trait: Redis Streams or embedded redb.
//! - [`sync`] — batches, commits and checkpoints between zones; the
//!   ledger (the one set of rules for commits, peers and rewinds), the
//!   Playback node's HTTP client, and the MQTT fabric (notify, query,
//!   QoS 1 commits).
//! - [`playback`] — replay, compare, and the per-shard pull loop.
//! - [`api`] — the sync and admin listener (`/sync`, `/commit`, `/health`,
//!   `/api/status`, `/api/checkpoints`, `/api/replays`, `/metrics`).
//! - [`mqtt_client`] — the public MQTT 3.1.1 client (publish, subscribe,
//!   query) the sync fabric is built on; [`broker`] — the embedded broker.
//! - [`metrics`] — metric names and the Prometheus exporter.
//! - [`tls`] — TLS from PEM files for the listeners and every outgoing link.
//! - [`os`] — the open file limit, raised at start-up, and every other
//!   call into the OS; [`system`] — host and process figures from `/proc`.

pub mod api;
pub mod broker;
pub mod clock;
pub mod config;
pub mod demo;
pub mod downstream;
pub mod metrics;
pub mod model;
pub mod mqtt_client;
pub mod node;
pub mod os;
pub mod playback;
pub mod proxy;
pub mod record;
pub mod server;
pub mod store;
pub mod sync;
pub mod system;
pub mod tls;

/// The rustls version QProxy is built with, for [`mqtt_client::MqttConfig::tls`].
pub use rustls;
