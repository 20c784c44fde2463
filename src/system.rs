//! Host and process figures — CPU, memory, network, disk — read from
//! `/proc` by one thread per process every [`SAMPLE_INTERVAL`], not per
//! scrape: for `/metrics`, the `system` object of `/api/status` and the
//! `system` component of `/health` ([`Thresholds`]).
//!
//! The parsers take the files' text and do no I/O (tested on sample
//! text below); [`monitor`] starts the sampling thread on first use.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::metrics as m;

/// How often the figures are read.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// The first figures (rates need two reads) come this soon after start.
const FIRST_SAMPLE_AFTER: Duration = Duration::from_millis(500);
/// The shortest time rates are taken over.
const MIN_SPAN: Duration = Duration::from_millis(250);
/// The process's memory trend is taken over this much history.
const TREND_WINDOW: Duration = Duration::from_secs(60);

/// CPU time in clock ticks, as a `cpu` line of `/proc/stat` counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// Guest time is counted in user time already, so it is not added.
    fn total(&self) -> u64 {
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }

    fn busy(&self) -> u64 {
        self.total() - self.idle - self.iowait
    }
}

/// `/proc/stat`: the all-CPU line, and one line per online core (by its
/// number).
pub fn parse_stat(text: &str) -> (Option<CpuTimes>, Vec<(u32, CpuTimes)>) {
    let mut all = None;
    let mut cores = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(name) = fields.next().and_then(|n| n.strip_prefix("cpu")) else {
            continue;
        };
        let n: Vec<u64> = fields.map_while(|f| f.parse().ok()).collect();
        if n.len() < 4 {
            continue;
        }
        let at = |i: usize| n.get(i).copied().unwrap_or(0);
        let times = CpuTimes {
            user: at(0),
            nice: at(1),
            system: at(2),
            idle: at(3),
            iowait: at(4),
            irq: at(5),
            softirq: at(6),
            steal: at(7),
        };
        if name.is_empty() {
            all = Some(times);
        } else if let Ok(core) = name.parse() {
            cores.push((core, times));
        }
    }
    (all, cores)
}

/// `/proc/self/stat`: user plus system CPU time of the process, in ticks.
pub fn parse_process_cpu_ticks(text: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: the
    // fields that follow start after its last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // Fields 14 (utime) and 15 (stime); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `kB` figures of a `/proc/meminfo` or `/proc/self/status` line, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        let mut parts = value.split_ascii_whitespace();
        let n: u64 = parts.next()?.parse().ok()?;
        Some(if parts.next() == Some("kB") {
            n * 1024
        } else {
            n
        })
    })
}

/// Memory of the host, from `/proc/meminfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    pub total_bytes: u64,
    /// What can be had without swapping (`MemAvailable`).
    pub available_bytes: u64,
}

pub fn parse_meminfo(text: &str) -> Option<HostMemory> {
    let total_bytes = kib_field(text, "MemTotal")?;
    // Kernels before 3.14 have no MemAvailable: free plus page cache.
    let available_bytes = kib_field(text, "MemAvailable").or_else(|| {
        Some(
            kib_field(text, "MemFree")?
                + kib_field(text, "Buffers").unwrap_or(0)
                + kib_field(text, "Cached").unwrap_or(0),
        )
    })?;
    Some(HostMemory {
        total_bytes,
        available_bytes: available_bytes.min(total_bytes),
    })
}

/// This process's memory and threads, from `/proc/self/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessStatus {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
}

pub fn parse_process_status(text: &str) -> ProcessStatus {
    ProcessStatus {
        resident_bytes: kib_field(text, "VmRSS").unwrap_or(0),
        virtual_bytes: kib_field(text, "VmSize").unwrap_or(0),
        threads: kib_field(text, "Threads").unwrap_or(0),
    }
}

/// One network interface's counters, from `/proc/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub receive_bytes: u64,
    pub receive_errors: u64,
    pub transmit_bytes: u64,
    pub transmit_errors: u64,
}

pub fn parse_net_dev(text: &str) -> Vec<Interface> {
    text.lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let n: Vec<u64> = counters
                .split_ascii_whitespace()
                .map(|f| f.parse().ok())
                .collect::<Option<_>>()?;
            // Receive: bytes packets errs drop fifo frame compressed
            // multicast; transmit: bytes packets errs …
            (n.len() >= 16).then(|| Interface {
                name: name.trim().to_string(),
                receive_bytes: n[0],
                receive_errors: n[2],
                transmit_bytes: n[8],
                transmit_errors: n[10],
            })
        })
        .collect()
}

/// TCP sockets of the host (of its network namespace), from
/// `/proc/net/sockstat` and `/proc/net/sockstat6`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TcpSockets {
    /// Open TCP sockets, IPv4 and IPv6 (listening ones too).
    pub in_use: u64,
    pub time_wait: u64,
    pub orphan: u64,
}

pub fn parse_sockstat(v4: &str, v6: &str) -> TcpSockets {
    let field = |text: &str, line: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|rest| {
                let mut words = rest.split_ascii_whitespace();
                while let Some(word) = words.next() {
                    if word == name {
                        return words.next()?.parse().ok();
                    }
                }
                None
            })
            .unwrap_or(0)
    };
    TcpSockets {
        in_use: field(v4, "TCP:", "inuse") + field(v6, "TCP6:", "inuse"),
        time_wait: field(v4, "TCP:", "tw"),
        orphan: field(v4, "TCP:", "orphan"),
    }
}

/// One block device's counters, from `/proc/diskstats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskCounters {
    pub name: String,
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// Milliseconds the device had I/O in flight.
    pub io_ms: u64,
}

pub fn parse_diskstats(text: &str) -> Vec<DiskCounters> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            // major minor name, reads merged sectors ms, writes merged
            // sectors ms, in flight, io ms, weighted ms, …; sectors are
            // 512 bytes whatever the device's own sector size.
            Some(DiskCounters {
                name: f.get(2)?.to_string(),
                read_bytes: n(5)? * 512,
                written_bytes: n(9)? * 512,
                io_ms: n(12)?,
            })
        })
        .collect()
}

/// Whole disks only: partitions would count their disk's I/O twice, and
/// loop and RAM devices are not disks.
fn is_disk(name: &str) -> bool {
    !["loop", "ram", "zram", "fd"]
        .iter()
        .any(|p| name.starts_with(p))
        && Path::new("/sys/block").join(name).exists()
}

/// Percent with one decimal, for people.
fn percent(part: f64, whole: f64) -> f64 {
    if whole <= 0.0 {
        return 0.0;
    }
    ((part / whole * 1000.0).round() / 10.0).clamp(0.0, 100.0)
}

/// Per second with no decimals.
fn per_sec(delta: u64, elapsed: Duration) -> u64 {
    (delta as f64 / elapsed.as_secs_f64().max(1e-3)).round() as u64
}

/// The figures of one sample, as `/api/status` shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// When they were read (Unix ms; `/api/status` shows `sampled_at`).
    #[serde(skip_serializing)]
    pub sampled_at_ms: u64,
    pub interval_secs: u64,
    pub cpu: CpuFigures,
    pub memory: MemoryFigures,
    pub network: NetworkFigures,
    pub disk: DiskFigures,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuFigures {
    /// All cores of the host, busy (not idle, not waiting on I/O).
    pub usage_percent: f64,
    /// All cores of the host, idle while I/O was outstanding.
    pub iowait_percent: f64,
    pub cores_percent: Vec<f64>,
    /// This process, as a share of all cores.
    pub process_percent: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryFigures {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_percent: f64,
    pub process_resident_bytes: u64,
    pub process_virtual_bytes: u64,
    /// Change of the process's resident memory over the last minute (null
    /// until a minute of samples is in).
    pub process_resident_trend_bytes_per_min: Option<i64>,
    pub process_threads: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NetworkFigures {
    pub receive_bytes_per_sec: u64,
    pub transmit_bytes_per_sec: u64,
    /// Receive and transmit errors of every interface since boot.
    pub errors_total: u64,
    pub tcp: TcpSockets,
    pub interfaces: Vec<InterfaceFigures>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct InterfaceFigures {
    pub name: String,
    pub receive_bytes_per_sec: u64,
    pub transmit_bytes_per_sec: u64,
    pub receive_errors_total: u64,
    pub transmit_errors_total: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DiskFigures {
    pub devices: Vec<DeviceFigures>,
    /// The filesystems of the nodes' `data_dir`s.
    pub filesystems: Vec<FilesystemFigures>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceFigures {
    pub name: String,
    pub read_bytes_per_sec: u64,
    pub written_bytes_per_sec: u64,
    /// Share of the time the device had I/O in flight.
    pub busy_percent: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FilesystemFigures {
    pub path: String,
    pub size_bytes: u64,
    pub available_bytes: u64,
    /// As `df` counts it: used ÷ (used + available to users).
    pub used_percent: f64,
}

impl Snapshot {
    pub fn filesystem(&self, path: &str) -> Option<&FilesystemFigures> {
        self.disk.filesystems.iter().find(|f| f.path == path)
    }
}

/// The alert thresholds of `/health`'s `system` component, in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    pub cpu_percent: f64,
    pub memory_percent: f64,
    pub disk_percent: f64,
}

impl Default for Thresholds {
    /// The product's alert thresholds: CPU over 80%, memory over 85%,
    /// disk over 90%.
    fn default() -> Self {
        Thresholds {
            cpu_percent: 80.0,
            memory_percent: 85.0,
            disk_percent: 90.0,
        }
    }
}

impl Thresholds {
    /// What in `snapshot` is over its threshold, in words; `data_dir` is
    /// the path [`Monitor::watch`] returned.
    pub fn problems(&self, snapshot: &Snapshot, data_dir: Option<&str>) -> Vec<String> {
        let mut problems = Vec::new();
        if snapshot.cpu.usage_percent > self.cpu_percent {
            problems.push(format!(
                "CPU {:.1}% busy, over monitoring.cpu_threshold {}%",
                snapshot.cpu.usage_percent, self.cpu_percent
            ));
        }
        if snapshot.memory.used_percent > self.memory_percent {
            problems.push(format!(
                "memory {:.1}% used, over monitoring.memory_threshold {}%",
                snapshot.memory.used_percent, self.memory_percent
            ));
        }
        if let Some(fs) = data_dir.and_then(|p| snapshot.filesystem(p)) {
            if fs.used_percent > self.disk_percent {
                problems.push(format!(
                    "disk of data_dir {} {:.1}% used, over monitoring.disk_threshold {}%",
                    fs.path, fs.used_percent, self.disk_percent
                ));
            }
        }
        problems
    }
}

/// Counters read at one instant; two of them make a [`Snapshot`].
struct Reading {
    at: Instant,
    cpu: Option<CpuTimes>,
    cores: Vec<(u32, CpuTimes)>,
    process_ticks: Option<u64>,
    interfaces: Vec<Interface>,
    disks: Vec<DiskCounters>,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Reading {
    fn now() -> Reading {
        let (cpu, cores) = parse_stat(&read("/proc/stat"));
        Reading {
            at: Instant::now(),
            cpu,
            cores,
            process_ticks: parse_process_cpu_ticks(&read("/proc/self/stat")),
            interfaces: parse_net_dev(&read("/proc/net/dev")),
            disks: parse_diskstats(&read("/proc/diskstats"))
                .into_iter()
                .filter(|d| is_disk(&d.name))
                .collect(),
        }
    }
}

/// The process-wide sampler: the latest figures and the `data_dir`s whose
/// filesystems it watches.
pub struct Monitor {
    latest: RwLock<Option<Arc<Snapshot>>>,
    /// Watched paths, with how many nodes watch each.
    paths: Mutex<BTreeMap<String, usize>>,
    /// Wakes the thread for a sample at once (a path was added).
    nudge: Mutex<mpsc::Sender<()>>,
}

static MONITOR: OnceLock<Monitor> = OnceLock::new();

/// The sampler, started on first use.
pub fn monitor() -> &'static Monitor {
    MONITOR.get_or_init(|| {
        crate::metrics::handle();
        crate::metrics::describe_system();
        let (nudge, wake) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("qproxy-system".into())
            .spawn(move || sample_forever(wake));
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the system figures thread");
        }
        Monitor {
            latest: RwLock::new(None),
            paths: Mutex::new(BTreeMap::new()),
            nudge: Mutex::new(nudge),
        }
    })
}

impl Monitor {
    /// The figures of the last sample (none before the first).
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.latest.read().expect("snapshot lock").clone()
    }

    /// Watches the filesystem holding `path` until the handle is dropped.
    pub fn watch(&'static self, path: &Path) -> WatchedPath {
        let key = std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string();
        *self
            .paths
            .lock()
            .expect("paths lock")
            .entry(key.clone())
            .or_default() += 1;
        let _ = self.nudge.lock().expect("nudge lock").send(());
        WatchedPath { monitor: self, key }
    }

    fn watched(&self) -> Vec<String> {
        self.paths
            .lock()
            .expect("paths lock")
            .keys()
            .cloned()
            .collect()
    }
}

/// A filesystem watched for a node (its `data_dir`), while this lives.
pub struct WatchedPath {
    monitor: &'static Monitor,
    key: String,
}

impl WatchedPath {
    /// The path as figures name it (made absolute).
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for WatchedPath {
    fn drop(&mut self) {
        let mut paths = self.monitor.paths.lock().expect("paths lock");
        if let Some(n) = paths.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                paths.remove(&self.key);
            }
        }
    }
}

fn sample_forever(wake: mpsc::Receiver<()>) {
    let ticks = crate::os::clock_ticks_per_second();
    let mut before = Reading::now();
    let mut resident: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut wait = FIRST_SAMPLE_AFTER;
    loop {
        // A nudge (a new path to watch) samples at once; the channel
        // cannot close while the monitor lives, which is for ever.
        if let Err(mpsc::RecvTimeoutError::Disconnected) = wake.recv_timeout(wait) {
            std::thread::sleep(wait);
        }
        let Some(monitor) = MONITOR.get() else {
            wait = FIRST_SAMPLE_AFTER;
            continue;
        };
        let now = Reading::now();
        // Rates over a few milliseconds would be noise.
        let span = now.at.duration_since(before.at);
        if span < MIN_SPAN {
            wait = MIN_SPAN - span;
            continue;
        }
        wait = SAMPLE_INTERVAL;
        let snapshot = sample(&before, &now, ticks, &mut resident, &monitor.watched());
        export(&snapshot, &now);
        *monitor.latest.write().expect("snapshot lock") = Some(Arc::new(snapshot));
        before = now;
    }
}

/// Figures from two readings, plus what is read once (memory, sockets,
/// filesystems).
fn sample(
    before: &Reading,
    now: &Reading,
    ticks: u64,
    resident: &mut VecDeque<(Instant, u64)>,
    paths: &[String],
) -> Snapshot {
    let elapsed = now.at.duration_since(before.at);
    let busy = |a: &CpuTimes, b: &CpuTimes| {
        percent(
            b.busy().saturating_sub(a.busy()) as f64,
            b.total().saturating_sub(a.total()) as f64,
        )
    };
    let mut cpu = CpuFigures::default();
    if let (Some(a), Some(b)) = (before.cpu, now.cpu) {
        cpu.usage_percent = busy(&a, &b);
        cpu.iowait_percent = percent(
            b.iowait.saturating_sub(a.iowait) as f64,
            b.total().saturating_sub(a.total()) as f64,
        );
    }
    let earlier: HashMap<u32, CpuTimes> = before.cores.iter().copied().collect();
    cpu.cores_percent = now
        .cores
        .iter()
        .map(|(core, b)| earlier.get(core).map_or(0.0, |a| busy(a, b)))
        .collect();
    let cores = now.cores.len().max(1) as f64;
    if let (Some(a), Some(b)) = (before.process_ticks, now.process_ticks) {
        let capacity = elapsed.as_secs_f64() * ticks as f64 * cores;
        cpu.process_percent = percent(b.saturating_sub(a) as f64, capacity);
    }

    let status = parse_process_status(&read("/proc/self/status"));
    resident.push_back((now.at, status.resident_bytes));
    while resident
        .front()
        .is_some_and(|(at, _)| now.at.duration_since(*at) > TREND_WINDOW + SAMPLE_INTERVAL)
    {
        resident.pop_front();
    }
    let trend = resident.front().and_then(|(at, bytes)| {
        let span = now.at.duration_since(*at);
        (span >= TREND_WINDOW).then(|| {
            ((status.resident_bytes as f64 - *bytes as f64) * 60.0 / span.as_secs_f64()) as i64
        })
    });
    let host = parse_meminfo(&read("/proc/meminfo"));
    let memory = MemoryFigures {
        total_bytes: host.map_or(0, |h| h.total_bytes),
        available_bytes: host.map_or(0, |h| h.available_bytes),
        used_percent: host.map_or(0.0, |h| {
            percent(
                (h.total_bytes - h.available_bytes) as f64,
                h.total_bytes as f64,
            )
        }),
        process_resident_bytes: status.resident_bytes,
        process_virtual_bytes: status.virtual_bytes,
        process_resident_trend_bytes_per_min: trend,
        process_threads: status.threads,
    };

    let mut network = NetworkFigures {
        tcp: parse_sockstat(&read("/proc/net/sockstat"), &read("/proc/net/sockstat6")),
        ..Default::default()
    };
    for b in &now.interfaces {
        let a = before.interfaces.iter().find(|a| a.name == b.name);
        let rx = a.map_or(0, |a| b.receive_bytes.saturating_sub(a.receive_bytes));
        let tx = a.map_or(0, |a| b.transmit_bytes.saturating_sub(a.transmit_bytes));
        network.receive_bytes_per_sec += per_sec(rx, elapsed);
        network.transmit_bytes_per_sec += per_sec(tx, elapsed);
        network.errors_total += b.receive_errors + b.transmit_errors;
        network.interfaces.push(InterfaceFigures {
            name: b.name.clone(),
            receive_bytes_per_sec: per_sec(rx, elapsed),
            transmit_bytes_per_sec: per_sec(tx, elapsed),
            receive_errors_total: b.receive_errors,
            transmit_errors_total: b.transmit_errors,
        });
    }

    let mut disk = DiskFigures::default();
    for b in &now.disks {
        let a = before.disks.iter().find(|a| a.name == b.name);
        let delta = |f: fn(&DiskCounters) -> u64| a.map_or(0, |a| f(b).saturating_sub(f(a)));
        disk.devices.push(DeviceFigures {
            name: b.name.clone(),
            read_bytes_per_sec: per_sec(delta(|d| d.read_bytes), elapsed),
            written_bytes_per_sec: per_sec(delta(|d| d.written_bytes), elapsed),
            busy_percent: percent(delta(|d| d.io_ms) as f64, elapsed.as_millis() as f64),
        });
    }
    for path in paths {
        if let Ok((size, free, available)) = crate::os::filesystem_space(Path::new(path)) {
            let used = size.saturating_sub(free);
            disk.filesystems.push(FilesystemFigures {
                path: path.clone(),
                size_bytes: size,
                available_bytes: available,
                used_percent: percent(used as f64, (used + available) as f64),
            });
        }
    }

    Snapshot {
        sampled_at_ms: crate::clock::now_ms(),
        interval_secs: SAMPLE_INTERVAL.as_secs(),
        cpu,
        memory,
        network,
        disk,
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
        max_fds: crate::os::fd_limits().map(|(soft, _)| soft),
    }
}

/// Sets the gauges and counters of a snapshot (ratios 0–1, as Prometheus
/// names them; `/api/status` shows percent).
fn export(s: &Snapshot, counters: &Reading) {
    use metrics::{counter, gauge};
    let ratio = |p: f64| p / 100.0;
    gauge!(m::SYSTEM_CPU_USAGE_RATIO).set(ratio(s.cpu.usage_percent));
    gauge!(m::SYSTEM_CPU_IOWAIT_RATIO).set(ratio(s.cpu.iowait_percent));
    for (core, p) in s.cpu.cores_percent.iter().enumerate() {
        gauge!(m::SYSTEM_CPU_CORE_USAGE_RATIO, "core" => core.to_string()).set(ratio(*p));
    }
    gauge!(m::PROCESS_CPU_USAGE_RATIO).set(ratio(s.cpu.process_percent));
    gauge!(m::SYSTEM_MEMORY_TOTAL_BYTES).set(s.memory.total_bytes as f64);
    gauge!(m::SYSTEM_MEMORY_AVAILABLE_BYTES).set(s.memory.available_bytes as f64);
    gauge!(m::SYSTEM_MEMORY_USAGE_RATIO).set(ratio(s.memory.used_percent));
    gauge!(m::PROCESS_RESIDENT_MEMORY_BYTES).set(s.memory.process_resident_bytes as f64);
    gauge!(m::PROCESS_VIRTUAL_MEMORY_BYTES).set(s.memory.process_virtual_bytes as f64);
    gauge!(m::PROCESS_THREADS).set(s.memory.process_threads as f64);
    if let Some(n) = s.open_fds {
        gauge!(m::PROCESS_OPEN_FDS).set(n as f64);
    }
    if let Some(n) = s.max_fds {
        gauge!(m::PROCESS_MAX_FDS).set(n as f64);
    }
    for (state, n) in [
        ("in_use", s.network.tcp.in_use),
        ("time_wait", s.network.tcp.time_wait),
        ("orphan", s.network.tcp.orphan),
    ] {
        gauge!(m::SYSTEM_TCP_CONNECTIONS, "state" => state).set(n as f64);
    }
    for dev in &s.disk.devices {
        gauge!(m::SYSTEM_DISK_BUSY_RATIO, "device" => dev.name.clone())
            .set(ratio(dev.busy_percent));
    }
    for fs in &s.disk.filesystems {
        let path = fs.path.clone();
        gauge!(m::SYSTEM_FILESYSTEM_SIZE_BYTES, "path" => path.clone()).set(fs.size_bytes as f64);
        gauge!(m::SYSTEM_FILESYSTEM_AVAILABLE_BYTES, "path" => path.clone())
            .set(fs.available_bytes as f64);
        gauge!(m::SYSTEM_FILESYSTEM_USAGE_RATIO, "path" => path).set(ratio(fs.used_percent));
    }
    // Counters since boot, as the kernel keeps them (rate() makes rates).
    for i in &counters.interfaces {
        let name = i.name.clone();
        counter!(m::SYSTEM_NETWORK_RECEIVE_BYTES_TOTAL, "interface" => name.clone())
            .absolute(i.receive_bytes);
        counter!(m::SYSTEM_NETWORK_TRANSMIT_BYTES_TOTAL, "interface" => name.clone())
            .absolute(i.transmit_bytes);
        counter!(m::SYSTEM_NETWORK_RECEIVE_ERRORS_TOTAL, "interface" => name.clone())
            .absolute(i.receive_errors);
        counter!(m::SYSTEM_NETWORK_TRANSMIT_ERRORS_TOTAL, "interface" => name)
            .absolute(i.transmit_errors);
    }
    for d in &counters.disks {
        counter!(m::SYSTEM_DISK_READ_BYTES_TOTAL, "device" => d.name.clone())
            .absolute(d.read_bytes);
        counter!(m::SYSTEM_DISK_WRITTEN_BYTES_TOTAL, "device" => d.name.clone())
            .absolute(d.written_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  755203 58390 224074 737441 14211 0 24566 1614 0 0
cpu0 358539 30449 104473 398127 3299 0 11854 824 0 0
cpu1 396663 27940 119600 339314 10911 0 12712 790 0 0
intr 123 0 0
ctxt 4567
btime 1700000000
";

    #[test]
    fn proc_stat_gives_all_cores_and_each() {
        let (all, cores) = parse_stat(STAT);
        let all = all.unwrap();
        assert_eq!(all.user, 755203);
        assert_eq!(all.iowait, 14211);
        assert_eq!(all.steal, 1614);
        assert_eq!(
            all.total(),
            755203 + 58390 + 224074 + 737441 + 14211 + 24566 + 1614
        );
        assert_eq!(all.busy(), all.total() - 737441 - 14211);
        assert_eq!(cores.len(), 2);
        assert_eq!(cores[1].0, 1);
        assert_eq!(cores[1].1.idle, 339314);
    }

    #[test]
    fn proc_self_stat_survives_a_command_name_with_spaces_and_parens() {
        let text = "25340 (my (odd) cmd) R 25331 25331 19520 0 -1 4194304 101 0 0 0 \
                    17 4 0 0 20 0 1 0 913542 3133440 413 18446744073709551615";
        assert_eq!(parse_process_cpu_ticks(text), Some(21));
        assert_eq!(parse_process_cpu_ticks("garbage"), None);
    }

    #[test]
    fn meminfo_and_status_are_read_in_bytes() {
        let meminfo = "MemTotal:        8000000 kB\nMemFree:          100000 kB\n\
                       MemAvailable:    2000000 kB\nBuffers:           50000 kB\n";
        assert_eq!(
            parse_meminfo(meminfo),
            Some(HostMemory {
                total_bytes: 8_000_000 * 1024,
                available_bytes: 2_000_000 * 1024
            })
        );
        // Before MemAvailable existed: free + buffers + cached.
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 200 kB\n";
        assert_eq!(parse_meminfo(old).unwrap().available_bytes, 310 * 1024);
        let status = "Name:\tqproxy\nVmSize:\t    3760 kB\nVmHWM:\t    1960 kB\n\
                      VmRSS:\t    1960 kB\nThreads:\t7\n";
        assert_eq!(
            parse_process_status(status),
            ProcessStatus {
                resident_bytes: 1960 * 1024,
                virtual_bytes: 3760 * 1024,
                threads: 7
            }
        );
    }

    #[test]
    fn net_dev_counts_bytes_and_errors_per_interface() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 566419811533 64476706    0    0    0     0          0         0 566419811533 64476706    0    0    0     0       0          0
  eth0:233561765   10094    3    1    0     0          0         0   581487    5722    2    0    0     0       0          0
";
        let ifs = parse_net_dev(text);
        assert_eq!(ifs.len(), 2);
        assert_eq!(ifs[0].name, "lo");
        assert_eq!(
            ifs[1],
            Interface {
                name: "eth0".into(),
                receive_bytes: 233561765,
                receive_errors: 3,
                transmit_bytes: 581487,
                transmit_errors: 2,
            }
        );
    }

    #[test]
    fn diskstats_in_bytes_and_sockstat_counts_both_families() {
        let text = "   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 856158 14029 35389922 4066905 699253 191997 366004856 2125445 0 264380 6246425 129401 84 298816992 45224 83808 8850
";
        let disks = parse_diskstats(text);
        assert_eq!(disks.len(), 2);
        assert_eq!(
            disks[1],
            DiskCounters {
                name: "vda".into(),
                read_bytes: 35389922 * 512,
                written_bytes: 366004856 * 512,
                io_ms: 264380,
            }
        );
        assert!(!is_disk("loop0"));
        let v4 =
            "sockets: used 16\nTCP: inuse 5 orphan 1 tw 7 alloc 9 mem 210\nUDP: inuse 0 mem 0\n";
        let v6 = "TCP6: inuse 3\nUDP6: inuse 0\n";
        assert_eq!(
            parse_sockstat(v4, v6),
            TcpSockets {
                in_use: 8,
                time_wait: 7,
                orphan: 1
            }
        );
    }

    #[test]
    fn thresholds_name_what_is_over_and_by_how_much() {
        let mut s = Snapshot::default();
        s.cpu.usage_percent = 81.5;
        s.memory.used_percent = 50.0;
        s.disk.filesystems.push(FilesystemFigures {
            path: "/data".into(),
            size_bytes: 100,
            available_bytes: 5,
            used_percent: 95.0,
        });
        let t = Thresholds::default();
        let problems = t.problems(&s, Some("/data"));
        assert_eq!(
            problems,
            [
                "CPU 81.5% busy, over monitoring.cpu_threshold 80%",
                "disk of data_dir /data 95.0% used, over monitoring.disk_threshold 90%"
            ]
        );
        assert!(t.problems(&s, Some("/elsewhere")).len() == 1);
        assert_eq!(percent(1.0, 3.0), 33.3);
        assert_eq!(percent(1.0, 0.0), 0.0);
    }

    #[test]
    fn two_readings_make_rates() {
        let a = Reading {
            at: Instant::now(),
            cpu: Some(CpuTimes {
                user: 100,
                idle: 100,
                ..Default::default()
            }),
            cores: vec![(0, CpuTimes::default())],
            process_ticks: Some(0),
            interfaces: vec![Interface {
                name: "eth0".into(),
                receive_bytes: 1000,
                ..Default::default()
            }],
            disks: vec![],
        };
        let b = Reading {
            at: a.at + Duration::from_secs(2),
            cpu: Some(CpuTimes {
                user: 150,
                idle: 250,
                ..Default::default()
            }),
            cores: vec![(
                0,
                CpuTimes {
                    user: 100,
                    idle: 100,
                    ..Default::default()
                },
            )],
            process_ticks: Some(20),
            interfaces: vec![Interface {
                name: "eth0".into(),
                receive_bytes: 5000,
                ..Default::default()
            }],
            disks: vec![],
        };
        let s = sample(&a, &b, 100, &mut VecDeque::new(), &[]);
        assert_eq!(s.cpu.usage_percent, 25.0);
        assert_eq!(s.cpu.cores_percent, [50.0]);
        // 20 ticks of 200 available on one core in 2 s.
        assert_eq!(s.cpu.process_percent, 10.0);
        assert_eq!(s.network.receive_bytes_per_sec, 2000);
    }
}
