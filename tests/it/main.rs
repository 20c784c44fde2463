//! The integration tests: one binary, one module per area. Test names start
//! with their module's name, so `cargo test record_test` (or `proxy_test`,
//! `playback_test`, `store_test`, `config_test`, `startup_test`) selects one area.

mod pki;
mod support;

mod config_test;
mod demo_test;
mod discovery_test;
mod failure_test;
mod grpc_support_test;
mod grpc_test;
mod layers_test;
mod limits_test;
mod logs_test;
mod mqtt_integration_test;
mod mqtt_test;
mod playback_pipeline_test;
mod playback_test;
mod prometheus_test;
mod proxy_test;
mod record_test;
mod startup_test;
mod store_test;
mod system_test;
mod tcp_test;
mod tls_test;
