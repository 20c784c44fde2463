//! The proxy listeners: where zone traffic enters a node.
//!
//! HTTP ([`http::HttpProxy`]), gRPC ([`grpc::GrpcProxy`]) and raw TCP
//! ([`tcp::TcpProxy`]).
//! What they connect to is [`crate::downstream`].

pub mod grpc;
pub mod headers;
pub mod http;
pub mod tcp;
