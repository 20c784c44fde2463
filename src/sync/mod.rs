//! The sync protocol between zones: how batches, commits and checkpoints
//! travel. The types are [`crate::model::sync`] (re-exported here); the
//! HTTP side lives in `api` (serving) and [`client`] (pulling), the MQTT
//! side in [`mqtt`], the commit rules in [`ledger`].

pub mod client;
pub mod ledger;
pub mod mqtt;
pub mod source;

pub use crate::model::sync::*;
