//! Nodes in this process or as `qproxy` processes, and their configs.

use super::*;

/// Starts a node in this process from config JSON (through the real parser,
/// letting the system pick the ports that are 0).
pub async fn start_node(config: Value) -> RunningNode {
    let text = serde_json::to_string_pretty(&config).unwrap();
    let config = Config::parse_allowing_any_port(&text, Path::new("test-config.json"))
        .expect("test config is valid");
    qproxy::node::start(config).await.expect("node starts")
}

/// System thresholds that never trip: a test box running the suite on two
/// cores is often over 80% CPU, and tests that expect `/health` UP would
/// see it DEGRADED. `system_test` checks the thresholds.
pub fn untripped_thresholds() -> Value {
    serde_json::json!({"cpu_threshold": 100, "memory_threshold": 100, "disk_threshold": 100})
}

/// A Record node config: proxy on a free port to `downstream`.
pub fn record_config(downstream: &str, shards: u32, store: &StoreChoice) -> Value {
    let mut c = serde_json::json!({
        "mode": "Record",
        "http": {"host": "127.0.0.1", "port": 0, "downstream": downstream},
        "api": {"host": "127.0.0.1", "port": 0},
        "sync": {"shards": shards},
        "logging": {"level": "warn"},
        "monitoring": untripped_thresholds(),
    });
    store.apply(&mut c);
    c
}

/// A Playback node config pulling from `peer_api`.
pub fn playback_config(
    downstream: &str,
    shards: u32,
    peer_api: SocketAddr,
    store: &StoreChoice,
) -> Value {
    let mut c = serde_json::json!({
        "mode": "Playback",
        "http": {"host": "127.0.0.1", "port": 0, "downstream": downstream},
        "api": {"host": "127.0.0.1", "port": 0},
        "sync": {
            "enabled": true, "shards": shards, "interval": 100, "peer_id": "zone-b",
            "batch_size": 50,
            "peer": {"host": "127.0.0.1", "port": peer_api.port()},
        },
        "logging": {"level": "warn"},
        "monitoring": untripped_thresholds(),
    });
    store.apply(&mut c);
    c
}

/// A fresh folder under the system's temporary folder, for a node's
/// data_dir when its store is Redis (removed with the test process's other
/// leftovers by the OS, not by the test: nodes may still use it on drop).
pub fn scratch_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("qproxy-it-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where a node keeps its data.
pub enum StoreChoice {
    Redis { url: String, prefix: String },
    Embedded(PathBuf),
}

impl StoreChoice {
    pub fn apply(&self, config: &mut Value) {
        match self {
            StoreChoice::Redis { url, prefix } => {
                config["redis"] = serde_json::json!({
                    "url": url, "pool_size": 2, "connection_timeout": 1, "retry_count": 1, "key_prefix": prefix,
                });
                // The record spool lives under data_dir: one per node.
                config["data_dir"] = Value::String(scratch_dir().display().to_string());
            }
            StoreChoice::Embedded(dir) => {
                config["data_dir"] = Value::String(dir.display().to_string())
            }
        }
    }
}

/// A `qproxy` process; killed on drop.
pub struct NodeProcess {
    pub child: Child,
    pub config_path: PathBuf,
    log_path: PathBuf,
    out_path: PathBuf,
}

impl NodeProcess {
    pub fn spawn(config: &Value, dir: &Path, name: &str) -> NodeProcess {
        NodeProcess::spawn_command(
            Command::new(env!("CARGO_BIN_EXE_qproxy")),
            config,
            dir,
            name,
        )
    }

    /// With these command line arguments besides `-c`.
    pub fn spawn_with_args(config: &Value, dir: &Path, name: &str, args: &[&str]) -> NodeProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_qproxy"));
        command.args(args);
        NodeProcess::spawn_command(command, config, dir, name)
    }

    /// Started under `prlimit` with this (soft, hard) open file limit.
    pub fn spawn_with_fd_limit(
        config: &Value,
        dir: &Path,
        name: &str,
        (soft, hard): (u64, u64),
    ) -> NodeProcess {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={soft}:{hard}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_qproxy"));
        NodeProcess::spawn_command(command, config, dir, name)
    }

    fn spawn_command(mut command: Command, config: &Value, dir: &Path, name: &str) -> NodeProcess {
        let config_path = dir.join(format!("{name}.json"));
        std::fs::write(&config_path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let out_path = dir.join(format!("{name}.out"));
        let out = std::fs::File::create(&out_path).unwrap();
        let child = command
            .arg("-c")
            .arg(&config_path)
            .stdout(out)
            .stderr(log)
            .spawn()
            .expect("qproxy binary runs");
        NodeProcess {
            child,
            config_path,
            log_path,
            out_path,
        }
    }

    /// What the node has logged so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The first line of the log that contains `needle`, waited for until
    /// `deadline`; the whole log in the panic message when none comes.
    pub fn wait_for_line(&self, needle: &str, deadline: Duration) -> String {
        let until = Instant::now() + deadline;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < until,
                "no line with {needle:?} within {deadline:?}; the node logged:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// What the node has printed on its stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out_path).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- last lines of {}:", self.log_path.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
