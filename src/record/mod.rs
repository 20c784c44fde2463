//! Recording: the capture tee on the proxy's streams, the bounded queue
//! and batch writer ([`recorder::Recorder`]), the spool on disk, sharding.
//! The record itself is [`crate::model::record`], re-exported here.

pub mod capture;
pub mod encode;
pub mod exchange;
pub mod grpc;
pub mod recorder;
pub mod shard;
pub mod signal;
pub mod spool;

pub use crate::model::record::*;
pub(crate) use crate::model::record::{split_pieces, text_in};
