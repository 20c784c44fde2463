//! The proxy listeners: where zone traffic enters a node.
//!
//! HTTP ([`http::HttpProxy`]) and raw TCP ([`tcp::TcpProxy`]); gRPC comes next.
//! What they connect to is [`crate::downstream`].

pub mod headers;
pub mod http;
pub mod tcp;
