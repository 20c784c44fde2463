//! Metric names (one place for all of them) and the Prometheus exporter.
//!
//! The `http_*` names are the original README's. Labels are bounded: a
//! method outside the standard set counts as `OTHER`, statuses by class.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
pub const HTTP_ACTIVE_CONNECTIONS: &str = "http_active_connections";
pub const HTTP_REQUEST_SIZE_BYTES: &str = "http_request_size_bytes";
pub const HTTP_RESPONSE_SIZE_BYTES: &str = "http_response_size_bytes";
pub const HTTP_ERRORS_TOTAL: &str = "http_errors_total";

pub const GRPC_REQUESTS_TOTAL: &str = "grpc_requests_total";
pub const GRPC_REQUEST_DURATION_SECONDS: &str = "grpc_request_duration_seconds";
pub const GRPC_ACTIVE_CONNECTIONS: &str = "grpc_active_connections";
pub const GRPC_REQUEST_SIZE_BYTES: &str = "grpc_request_size_bytes";
pub const GRPC_RESPONSE_SIZE_BYTES: &str = "grpc_response_size_bytes";
pub const GRPC_ERRORS_TOTAL: &str = "grpc_errors_total";

pub const TCP_CONNECTIONS_TOTAL: &str = "tcp_connections_total";
pub const TCP_ACTIVE_CONNECTIONS: &str = "tcp_active_connections";
pub const TCP_ERRORS_TOTAL: &str = "tcp_errors_total";
/// TLS clients refused at the handshake, by listener (`http`, `api`, `tcp`).
pub const TLS_HANDSHAKE_ERRORS_TOTAL: &str = "qproxy_tls_handshake_errors_total";

/// Connections closed at once because their listener was at its
/// `max_connections`, by listener.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "qproxy_connections_refused_total";
/// Failed accepts (out of file descriptors, mostly), by listener.
pub const ACCEPT_ERRORS_TOTAL: &str = "qproxy_accept_errors_total";
/// Connections closed for sending no complete request head in time.
pub const HEADER_TIMEOUTS_TOTAL: &str = "qproxy_header_timeouts_total";
/// Plaintext HTTP/1.1 connections idle with no buffers held, by listener.
pub const PARKED_CONNECTIONS: &str = "qproxy_parked_connections";

pub const RECORDS_TOTAL: &str = "qproxy_records_total";
pub const RECORD_BYTES_TOTAL: &str = "qproxy_record_bytes_total";
pub const RECORDS_DROPPED_TOTAL: &str = "qproxy_records_dropped_total";
pub const RECORD_WRITE_ERRORS_TOTAL: &str = "qproxy_record_write_errors_total";
pub const RECORD_BATCH_SECONDS: &str = "qproxy_record_batch_write_seconds";
pub const SPOOL_RECORDS: &str = "qproxy_spool_records";
/// Failed writes to the spool on disk (the spool then waits in memory).
pub const SPOOL_DISK_ERRORS_TOTAL: &str = "qproxy_spool_disk_errors_total";
pub const STORE_UP: &str = "qproxy_store_up";

pub const REPLAYS_TOTAL: &str = "qproxy_replays_total";
pub const REPLAY_DURATION_SECONDS: &str = "qproxy_replay_duration_seconds";
pub const REPLAY_LAG_SECONDS: &str = "qproxy_replay_lag_seconds";
/// Tries again at replays that did not reach their target.
pub const REPLAY_RETRIES_TOTAL: &str = "qproxy_replay_retries_total";
/// Non-idempotent replays sent again after a pipelined connection broke
/// while they were in flight (they may have reached the target twice).
pub const REPLAYS_RESENT_TOTAL: &str = "qproxy_replays_resent_total";
/// Records given up on after every attempt, waiting for an operator.
pub const REPLAYS_PARKED: &str = "qproxy_replays_parked";
/// Shards waiting on a record that could not be delivered yet.
pub const SYNC_SHARDS_RETRYING: &str = "qproxy_sync_shards_retrying";
pub const SYNC_PULLS_TOTAL: &str = "qproxy_sync_pulls_total";
/// Service discovery reads that changed the known endpoints, and failures.
pub const DISCOVERY_UPDATES_TOTAL: &str = "qproxy_discovery_updates_total";
pub const DISCOVERY_ERRORS_TOTAL: &str = "qproxy_discovery_errors_total";
pub const SYNC_ERRORS_TOTAL: &str = "qproxy_sync_errors_total";
pub const SYNC_LAG_SECONDS: &str = "qproxy_sync_lag_seconds";
pub const COMMITS_TOTAL: &str = "qproxy_commits_total";
/// 1 for the transport the last pull used (`mqtt` or `http`), 0 for the other.
pub const SYNC_TRANSPORT: &str = "qproxy_sync_transport";
pub const MQTT_NOTIFICATIONS_TOTAL: &str = "qproxy_mqtt_notifications_total";
pub const MQTT_CONNECTED: &str = "qproxy_mqtt_connected";

/// Seconds buckets good for P50/P90/P99 from 100 µs to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
const BYTES_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once; later calls reuse it.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS))
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (an embedding program);
        // then ours still renders what is recorded through it.
        if metrics::set_global_recorder(recorder).is_ok() {
            describe();
        }
        let upkept = handle.clone();
        let spawned = std::thread::Builder::new()
            .name(UPKEEP_THREAD.into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkept.run_upkeep();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms grow until /metrics is scraped");
        }
        handle
    })
}

/// How often histogram samples are folded into their buckets. The exporter
/// keeps every sample recorded since the last fold (8 bytes each), and
/// without this only a scrape of `/metrics` folds them: a node nobody
/// scraped grew by ~57 bytes a request (11 MB a minute at 34k requests a
/// second, measured).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
const UPKEEP_THREAD: &str = "qproxy-metrics";

/// HELP lines for every metric (`promtool check metrics` asks for them).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests proxied, by protocol, method and status class"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time to the downstream's response head"
    );
    describe_gauge!(
        HTTP_ACTIVE_CONNECTIONS,
        "Open client connections on the HTTP listener"
    );
    describe_histogram!(HTTP_REQUEST_SIZE_BYTES, Unit::Bytes, "Request body sizes");
    describe_histogram!(
        HTTP_RESPONSE_SIZE_BYTES,
        Unit::Bytes,
        "Response body sizes (when known up front)"
    );
    describe_counter!(HTTP_ERRORS_TOTAL, "HTTP exchanges that failed, by kind");
    describe_counter!(
        GRPC_REQUESTS_TOTAL,
        "gRPC calls proxied, by method (at most 100, then `other`) and status code"
    );
    describe_histogram!(
        GRPC_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "gRPC call durations, to the last response message or status"
    );
    describe_gauge!(
        GRPC_ACTIVE_CONNECTIONS,
        "Open client connections on the gRPC listener"
    );
    describe_histogram!(
        GRPC_REQUEST_SIZE_BYTES,
        Unit::Bytes,
        "Request message bytes per gRPC call"
    );
    describe_histogram!(
        GRPC_RESPONSE_SIZE_BYTES,
        Unit::Bytes,
        "Response message bytes per gRPC call"
    );
    describe_counter!(
        GRPC_ERRORS_TOTAL,
        "gRPC calls that failed in the proxy or at the downstream, by kind"
    );
    describe_counter!(
        TCP_CONNECTIONS_TOTAL,
        "TCP connections accepted by the TCP proxy"
    );
    describe_gauge!(TCP_ACTIVE_CONNECTIONS, "Open connections on the TCP proxy");
    describe_counter!(TCP_ERRORS_TOTAL, "TCP sessions that ended with an error");
    describe_counter!(
        TLS_HANDSHAKE_ERRORS_TOTAL,
        "TLS clients refused at the handshake (garbage, untrusted or missing client certificate, timeout)"
    );
    describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        "Connections closed at once because the listener was at its max_connections"
    );
    describe_counter!(
        ACCEPT_ERRORS_TOTAL,
        "Failed accepts (out of file descriptors, mostly), by listener"
    );
    describe_counter!(
        HEADER_TIMEOUTS_TOTAL,
        "Connections closed for sending no complete request head within header_timeout_ms"
    );
    describe_gauge!(
        PARKED_CONNECTIONS,
        "Idle plaintext HTTP/1.1 connections holding no buffers, by listener"
    );
    describe_counter!(RECORDS_TOTAL, "Records written to the store");
    describe_counter!(RECORD_BYTES_TOTAL, Unit::Bytes, "Body bytes recorded");
    describe_counter!(
        RECORDS_DROPPED_TOTAL,
        "Records dropped (queue or spool full), by reason"
    );
    describe_counter!(
        RECORD_WRITE_ERRORS_TOTAL,
        "Failed batch writes to the store"
    );
    describe_histogram!(
        RECORD_BATCH_SECONDS,
        Unit::Seconds,
        "Time to write one batch of records"
    );
    describe_gauge!(SPOOL_RECORDS, "Records waiting in memory for the store");
    describe_counter!(
        SPOOL_DISK_ERRORS_TOTAL,
        "Failed writes to the record spool on disk"
    );
    describe_gauge!(STORE_UP, "1 while the record store accepts writes");
    describe_counter!(REPLAYS_TOTAL, "Records replayed, by protocol and result");
    describe_histogram!(
        REPLAY_DURATION_SECONDS,
        Unit::Seconds,
        "Time to replay one record"
    );
    describe_histogram!(
        REPLAY_LAG_SECONDS,
        Unit::Seconds,
        "From capture in zone A to replay in zone B"
    );
    describe_counter!(
        REPLAY_RETRIES_TOTAL,
        "Replays tried again because the target was not reached"
    );
    describe_counter!(
        REPLAYS_RESENT_TOTAL,
        "Non-idempotent replays sent again after a connection broke while they were in flight, by method"
    );
    describe_gauge!(
        REPLAYS_PARKED,
        "Records given up on after every attempt, waiting to be re-driven"
    );
    describe_gauge!(
        SYNC_SHARDS_RETRYING,
        "Shards waiting on a record that could not be delivered yet"
    );
    describe_counter!(SYNC_PULLS_TOTAL, "Batches pulled from the Record node");
    describe_counter!(
        DISCOVERY_UPDATES_TOTAL,
        "Service discovery reads that changed the known endpoints"
    );
    describe_counter!(
        DISCOVERY_ERRORS_TOTAL,
        "Service discovery reads or connections that failed"
    );
    describe_counter!(SYNC_ERRORS_TOTAL, "Failed sync rounds");
    describe_gauge!(
        SYNC_LAG_SECONDS,
        Unit::Seconds,
        "Age of the newest replayed record while a shard is behind"
    );
    describe_counter!(
        COMMITS_TOTAL,
        "Commits sent or taken, by transport and result"
    );
    describe_gauge!(SYNC_TRANSPORT, "1 for the transport the last pull used");
    describe_counter!(MQTT_NOTIFICATIONS_TOTAL, "Shard notifications published");
    describe_gauge!(
        MQTT_CONNECTED,
        "1 while the node's MQTT client is connected"
    );
}

/// The Prometheus text page.
pub fn render() -> String {
    handle().render()
}

/// A method as a bounded label.
pub fn method_label(method: &http::Method) -> &'static str {
    METHODS[method_index(method)]
}

const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

fn method_index(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::POST => 1,
        http::Method::PUT => 2,
        http::Method::DELETE => 3,
        http::Method::PATCH => 4,
        http::Method::HEAD => 5,
        http::Method::OPTIONS => 6,
        http::Method::CONNECT => 7,
        http::Method::TRACE => 8,
        _ => 9,
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// `2xx`, `4xx`, … for a status.
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_index(status)]
}

/// The per-request metrics of a proxy listener, as handles: the macros
/// hash a metric's name and labels on every call, which a proxy doing tens
/// of thousands of requests a second should not.
pub struct RequestMetrics {
    protocol: &'static str,
    /// `http_requests_total` by method and status class, made on first use.
    requests: [[OnceLock<metrics::Counter>; 5]; 10],
    pub duration: metrics::Histogram,
    pub request_size: metrics::Histogram,
    pub response_size: metrics::Histogram,
}

impl RequestMetrics {
    /// Handles for `protocol` (`http`, `grpc`) from the installed recorder.
    pub fn new(protocol: &'static str) -> RequestMetrics {
        handle();
        RequestMetrics {
            protocol,
            requests: Default::default(),
            duration: metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "protocol" => protocol),
            request_size: metrics::histogram!(HTTP_REQUEST_SIZE_BYTES, "protocol" => protocol),
            response_size: metrics::histogram!(HTTP_RESPONSE_SIZE_BYTES, "protocol" => protocol),
        }
    }

    /// Counts one request in `http_requests_total`.
    pub fn request(&self, method: &http::Method, status: u16) {
        let (m, s) = (method_index(method), status_index(status));
        self.requests[m][s]
            .get_or_init(|| {
                metrics::counter!(HTTP_REQUESTS_TOTAL, "protocol" => self.protocol,
                    "method" => METHODS[m], "status" => STATUS_CLASSES[s])
            })
            .increment(1);
    }
}

// System figures: host and process, read from /proc by `crate::system`
// every few seconds (not per scrape). Ratios are 0 to 1.

/// Host CPU busy, all cores.
pub const SYSTEM_CPU_USAGE_RATIO: &str = "qproxy_system_cpu_usage_ratio";
/// Host CPU busy, by `core`.
pub const SYSTEM_CPU_CORE_USAGE_RATIO: &str = "qproxy_system_cpu_core_usage_ratio";
/// Host CPU idle with I/O outstanding, all cores.
pub const SYSTEM_CPU_IOWAIT_RATIO: &str = "qproxy_system_cpu_iowait_ratio";
/// This process's CPU, as a share of all cores.
pub const PROCESS_CPU_USAGE_RATIO: &str = "qproxy_process_cpu_usage_ratio";
pub const SYSTEM_MEMORY_TOTAL_BYTES: &str = "qproxy_system_memory_total_bytes";
pub const SYSTEM_MEMORY_AVAILABLE_BYTES: &str = "qproxy_system_memory_available_bytes";
/// 1 − available ÷ total.
pub const SYSTEM_MEMORY_USAGE_RATIO: &str = "qproxy_system_memory_usage_ratio";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "qproxy_process_resident_memory_bytes";
pub const PROCESS_VIRTUAL_MEMORY_BYTES: &str = "qproxy_process_virtual_memory_bytes";
pub const PROCESS_THREADS: &str = "qproxy_process_threads";
pub const PROCESS_OPEN_FDS: &str = "qproxy_process_open_fds";
pub const PROCESS_MAX_FDS: &str = "qproxy_process_max_fds";
/// By `interface`, since boot.
pub const SYSTEM_NETWORK_RECEIVE_BYTES_TOTAL: &str = "qproxy_system_network_receive_bytes_total";
pub const SYSTEM_NETWORK_TRANSMIT_BYTES_TOTAL: &str = "qproxy_system_network_transmit_bytes_total";
pub const SYSTEM_NETWORK_RECEIVE_ERRORS_TOTAL: &str = "qproxy_system_network_receive_errors_total";
pub const SYSTEM_NETWORK_TRANSMIT_ERRORS_TOTAL: &str =
    "qproxy_system_network_transmit_errors_total";
/// Host TCP sockets by `state` (`in_use`, `time_wait`, `orphan`).
pub const SYSTEM_TCP_CONNECTIONS: &str = "qproxy_system_tcp_connections";
/// By `device` (whole disks), since boot.
pub const SYSTEM_DISK_READ_BYTES_TOTAL: &str = "qproxy_system_disk_read_bytes_total";
pub const SYSTEM_DISK_WRITTEN_BYTES_TOTAL: &str = "qproxy_system_disk_written_bytes_total";
/// Share of the time a `device` had I/O in flight.
pub const SYSTEM_DISK_BUSY_RATIO: &str = "qproxy_system_disk_busy_ratio";
/// The filesystem of a node's `data_dir`, by `path`.
pub const SYSTEM_FILESYSTEM_SIZE_BYTES: &str = "qproxy_system_filesystem_size_bytes";
pub const SYSTEM_FILESYSTEM_AVAILABLE_BYTES: &str = "qproxy_system_filesystem_available_bytes";
/// Used ÷ (used + available to users), as `df` counts it.
pub const SYSTEM_FILESYSTEM_USAGE_RATIO: &str = "qproxy_system_filesystem_usage_ratio";

/// HELP lines of the system figures (called once, when sampling starts).
pub fn describe_system() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(
        SYSTEM_CPU_USAGE_RATIO,
        "Host CPU busy over the last sample, all cores (0 to 1)"
    );
    describe_gauge!(
        SYSTEM_CPU_CORE_USAGE_RATIO,
        "Host CPU busy over the last sample, by core (0 to 1)"
    );
    describe_gauge!(
        SYSTEM_CPU_IOWAIT_RATIO,
        "Host CPU idle while I/O was outstanding, all cores (0 to 1)"
    );
    describe_gauge!(
        PROCESS_CPU_USAGE_RATIO,
        "This process's CPU over the last sample, as a share of all cores (0 to 1)"
    );
    describe_gauge!(SYSTEM_MEMORY_TOTAL_BYTES, Unit::Bytes, "Host memory");
    describe_gauge!(
        SYSTEM_MEMORY_AVAILABLE_BYTES,
        Unit::Bytes,
        "Host memory available without swapping (MemAvailable)"
    );
    describe_gauge!(
        SYSTEM_MEMORY_USAGE_RATIO,
        "Host memory in use: 1 - available / total"
    );
    describe_gauge!(
        PROCESS_RESIDENT_MEMORY_BYTES,
        Unit::Bytes,
        "This process's resident memory"
    );
    describe_gauge!(
        PROCESS_VIRTUAL_MEMORY_BYTES,
        Unit::Bytes,
        "This process's virtual memory"
    );
    describe_gauge!(PROCESS_THREADS, "This process's threads");
    describe_gauge!(PROCESS_OPEN_FDS, "This process's open file descriptors");
    describe_gauge!(PROCESS_MAX_FDS, "This process's open file limit (soft)");
    describe_counter!(
        SYSTEM_NETWORK_RECEIVE_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes received by the host, by interface"
    );
    describe_counter!(
        SYSTEM_NETWORK_TRANSMIT_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes sent by the host, by interface"
    );
    describe_counter!(
        SYSTEM_NETWORK_RECEIVE_ERRORS_TOTAL,
        "Receive errors of the host, by interface"
    );
    describe_counter!(
        SYSTEM_NETWORK_TRANSMIT_ERRORS_TOTAL,
        "Transmit errors of the host, by interface"
    );
    describe_gauge!(
        SYSTEM_TCP_CONNECTIONS,
        "Host TCP sockets by state (in_use, time_wait, orphan)"
    );
    describe_counter!(
        SYSTEM_DISK_READ_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes read by the host's disks, by device"
    );
    describe_counter!(
        SYSTEM_DISK_WRITTEN_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes written by the host's disks, by device"
    );
    describe_gauge!(
        SYSTEM_DISK_BUSY_RATIO,
        "Share of the last sample a disk had I/O in flight, by device"
    );
    describe_gauge!(
        SYSTEM_FILESYSTEM_SIZE_BYTES,
        Unit::Bytes,
        "Size of the filesystem holding a node's data_dir, by path"
    );
    describe_gauge!(
        SYSTEM_FILESYSTEM_AVAILABLE_BYTES,
        Unit::Bytes,
        "Space available to QProxy on the filesystem holding a data_dir, by path"
    );
    describe_gauge!(
        SYSTEM_FILESYSTEM_USAGE_RATIO,
        "Filesystem holding a data_dir in use, as df counts it, by path"
    );
}

/// The most gRPC method labels: calls to further methods count as `other`,
/// so a client inventing method names cannot grow the metrics without end.
pub const MAX_GRPC_METHODS: usize = 100;

/// `grpc_*` metric handles by method, made on a method's first call.
#[derive(Default)]
pub struct GrpcMetrics {
    methods: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<GrpcMethod>>>,
}

/// One method's handles.
pub struct GrpcMethod {
    label: String,
    codes: [OnceLock<metrics::Counter>; 18],
    pub duration: metrics::Histogram,
    pub request_size: metrics::Histogram,
    pub response_size: metrics::Histogram,
}

impl GrpcMetrics {
    pub fn new() -> GrpcMetrics {
        handle();
        GrpcMetrics::default()
    }

    /// The handles of `method` (or of `other` past [`MAX_GRPC_METHODS`]).
    pub fn method(&self, method: &str) -> std::sync::Arc<GrpcMethod> {
        let mut methods = self.methods.lock().expect("grpc metrics lock");
        if let Some(found) = methods.get(method) {
            return found.clone();
        }
        let label = match methods.len() < MAX_GRPC_METHODS {
            true => method,
            false => "other",
        };
        if let Some(other) = methods.get(label) {
            return other.clone();
        }
        let made = std::sync::Arc::new(GrpcMethod {
            label: label.to_string(),
            codes: Default::default(),
            duration: metrics::histogram!(GRPC_REQUEST_DURATION_SECONDS, "method" => label.to_string()),
            request_size: metrics::histogram!(GRPC_REQUEST_SIZE_BYTES, "method" => label.to_string()),
            response_size: metrics::histogram!(GRPC_RESPONSE_SIZE_BYTES, "method" => label.to_string()),
        });
        methods.insert(label.to_string(), made.clone());
        made
    }
}

impl GrpcMethod {
    /// Counts one call that ended with `code`, labelled `name` (codes
    /// past 16 share one handle; None, no status at all, is another).
    pub fn call(&self, code: Option<u32>, name: &'static str) {
        let i = code.map_or(17, |c| c.min(16) as usize);
        self.codes[i]
            .get_or_init(|| {
                metrics::counter!(GRPC_REQUESTS_TOTAL, "method" => self.label.clone(), "code" => name)
            })
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_method_labels_are_bounded() {
        let metrics = GrpcMetrics::new();
        for i in 0..MAX_GRPC_METHODS {
            assert_eq!(
                metrics.method(&format!("/s.S/M{i}")).label,
                format!("/s.S/M{i}")
            );
        }
        assert_eq!(metrics.method("/s.S/OneTooMany").label, "other");
        assert_eq!(metrics.method("/s.S/Another").label, "other");
        // Methods labelled before the bound keep their label.
        assert_eq!(metrics.method("/s.S/M7").label, "/s.S/M7");
        assert_eq!(metrics.methods.lock().unwrap().len(), MAX_GRPC_METHODS + 1);
    }

    /// Histogram samples are folded by a thread of their own, not only by a
    /// scrape (the exporter keeps every sample until then).
    #[test]
    #[cfg(target_os = "linux")]
    fn histograms_are_folded_without_a_scrape() {
        handle();
        let threads = || -> Vec<String> {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_string())
                .collect()
        };
        // A thread names itself once it runs.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !threads().iter().any(|name| name == UPKEEP_THREAD) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {UPKEEP_THREAD} thread among {:?}",
                threads()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
