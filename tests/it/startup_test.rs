//! A node's first minutes as an operator sees them in its log: the ready
//! line, a start-up failure said once, a downstream or a store that is
//! not there.

use std::time::Duration;

use serde_json::json;

use crate::support::{free_port, NodeProcess};

/// One info line once everything is bound, naming the bound addresses,
/// the mode, the store and the broker in plain words.
#[test]
fn startup_test_the_ready_line_names_every_listener_the_store_and_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let (http, tcp, api, broker) = (free_port(), free_port(), free_port(), free_port());
    let data_dir = dir.path().join("record");
    let config = json!({
        "mode": "Record",
        "http": {"host": "127.0.0.1", "port": http, "downstream": "http://127.0.0.1:9"},
        "tcp": {"host": "127.0.0.1", "port": tcp, "downstream": "127.0.0.1:9"},
        "api": {"host": "127.0.0.1", "port": api},
        "data_dir": data_dir,
        "mqtt": {"client_id": "ready-test", "embedded_broker": {"enabled": true, "host": "127.0.0.1", "port": broker}},
    });
    let node = NodeProcess::spawn(&config, dir.path(), "ready");
    let line = node.wait_for_line("ready:", Duration::from_secs(20));
    assert!(line.contains(" INFO "), "{line}");
    let tail = &line[line.find("ready:").unwrap()..];
    assert_eq!(
        tail,
        format!(
            "ready: mode Record, http 127.0.0.1:{http} -> http://127.0.0.1:9, \
             tcp 127.0.0.1:{tcp} -> 127.0.0.1:9, api 127.0.0.1:{api}, \
             store embedded {}, mqtt 127.0.0.1:{broker} (embedded broker)",
            data_dir.display()
        )
    );
    let log = node.log();
    assert_eq!(log.matches("ready:").count(), 1, "{log}");
    assert!(!log.contains("Some("), "{log}");
}
