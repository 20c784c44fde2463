//! The `system` object of `/api/status` and the `system` component of
//! `/health`: the sampled host and process figures (`crate::system`)
//! against this node's thresholds.

use serde_json::{json, Value};

use crate::system::{Thresholds, WatchedPath};

/// What a node's API checks its system figures against.
pub struct SystemCheck {
    pub thresholds: Thresholds,
    /// The filesystem of this node's `data_dir`, watched while the API lives.
    pub data_dir: WatchedPath,
}

impl SystemCheck {
    /// What is over its threshold in the last sample (nothing before the
    /// first).
    pub fn problems(&self) -> Vec<String> {
        match crate::system::monitor().latest() {
            Some(snapshot) => self
                .thresholds
                .problems(&snapshot, Some(self.data_dir.key())),
            None => Vec::new(),
        }
    }

    /// The last sample's figures, this process's memory and threads read
    /// now, and the thresholds with what is over them.
    pub fn status(&self) -> Value {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let live = crate::system::parse_process_status(&status);
        let load = std::fs::read_to_string("/proc/loadavg").ok().and_then(|l| {
            l.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        });
        let mut body = json!({
            "rss_bytes": (live.resident_bytes > 0).then_some(live.resident_bytes),
            "threads": (live.threads > 0).then_some(live.threads),
            "load_1m": load,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "data_dir": self.data_dir.key(),
            "thresholds": {
                "cpu_percent": self.thresholds.cpu_percent,
                "memory_percent": self.thresholds.memory_percent,
                "disk_percent": self.thresholds.disk_percent,
            },
        });
        if let Some(snapshot) = crate::system::monitor().latest() {
            body["over_thresholds"] = json!(self
                .thresholds
                .problems(&snapshot, Some(self.data_dir.key())));
            if let (Value::Object(out), Ok(Value::Object(figures))) =
                (&mut body, serde_json::to_value(&*snapshot))
            {
                out.extend(figures);
            }
            body["sampled_at"] = json!(crate::clock::format_ms(snapshot.sampled_at_ms));
        }
        body
    }
}
