//! The outbound side: everything a node connects to besides its peer
//! nodes' listeners. The pooled HTTP client ([`client`]), the pipelined
//! HTTP/1.1 client replays use ([`pipeline`]), raw TCP targets
//! ([`tcp`]), HTTP/2 channels for gRPC ([`h2`]), service discovery
//! ([`discovery`]), and [`peer`], the one place
//! that decides which address a request goes to.

pub mod client;
pub mod discovery;
pub mod h2;
pub mod peer;
pub mod pipeline;
pub mod tcp;

pub use client::{pooled_client, root_cause, Connector};
pub use discovery::{
    Discovery, Endpoints, KubernetesDiscovery, PeerAddr, PeerSource, StaticDiscovery,
    ZooKeeperDiscovery, RECORD_REGISTRY,
};
pub use h2::{H2Channels, H2Error};
pub use peer::{http_peer, origin_form};
pub use pipeline::{PipeError, PipelineClient};
pub use tcp::TcpTarget;
