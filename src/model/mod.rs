//! The plain data every layer shares: records and their ids, checkpoints
//! and commits, replay results. No I/O; everything above imports from here,
//! nothing here imports from above.

pub mod body;
pub mod grpc;
pub mod headers;
pub mod id;
pub mod record;
pub mod replay;
pub mod sync;
