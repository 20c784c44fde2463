//! The `qproxy` command: parse flags, load the config, run a node until
//! Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use qproxy::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc: the proxy allocates per request (headers, bodies, futures),
/// and glibc's malloc showed up at about an eighth of the profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off for this process unless `MIMALLOC_ALLOW_THP`
/// is set. mimalloc asks the kernel for them, which is a few percent faster
/// under load, but idle keep-alive connections then pin part-used 2 MiB
/// pages: 30–43 KiB a connection instead of ~19 KiB here. With
/// `MIMALLOC_ALLOW_THP=1` mimalloc uses them again.
fn limit_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        qproxy::os::disable_huge_pages();
    }
}

/// mimalloc's `purge_delay` option: its index in the option enum of both
/// mimalloc 2 and 3 (libmimalloc-sys exports no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory freed back to mimalloc goes back to the OS after 10 ms instead of
/// mimalloc 3's 1 s, unless `MIMALLOC_PURGE_DELAY` says otherwise. A burst
/// of connections that then sit idle (their buffers freed: see
/// `server::PARK_AFTER`) leaves nothing behind then: with 1 s, 10,000
/// idle keep-alive connections kept ~11 MB more, since mimalloc purges
/// only when the thread allocates again. No throughput cost measured.
fn purge_freed_memory_soon() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: called once at start-up, before any other thread runs.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) };
    }
}

/// Record traffic in one network zone and replay it in another.
#[derive(Debug, Parser)]
#[command(
    name = "qproxy",
    version,
    about = "Record traffic in one network zone and replay it in another: an HTTP, gRPC and \
             TCP proxy that records into Redis Streams or an embedded store, synced over \
             HTTP or MQTT"
)]
struct Cli {
    /// Configuration file (JSON; comments and trailing commas allowed).
    #[arg(
        short,
        long,
        value_name = "FILE",
        env = "CONFIG_PATH",
        default_value = "config.json"
    )]
    config: PathBuf,

    /// Log level or filter: error, warn, info, debug, trace or off, or target=level
    /// pairs such as info,qproxy=debug [default: info, debug with -v; when not given:
    /// RUST_LOG, then logging.level]
    #[arg(short, long, value_name = "LEVEL", global = true)]
    log_level: Option<String>,

    /// Debug logs (unless a level is given) and a summary of the configuration
    /// in the log at start-up; with -t, also the whole effective configuration
    /// as JSON, passwords and tokens redacted.
    #[arg(short, long)]
    verbose: bool,

    /// Check the configuration, print what it runs (listeners, downstreams,
    /// store, MQTT broker) and exit: 0 when it is valid, 2 when not.
    #[arg(short = 't', long = "check-config")]
    check_config: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run a Record and a Playback node, an embedded MQTT broker and two
    /// sample services in this process, send sample traffic, and show what
    /// was recorded, replayed and matched. Needs nothing installed; runs
    /// until Ctrl-C.
    Demo {
        /// Let the system pick every port instead of 8080, 8084, 1883, 9080
        /// and 9084 (a taken one is replaced by a free one anyway).
        #[arg(long)]
        any_ports: bool,
    },
}

fn main() -> ExitCode {
    limit_huge_pages();
    purge_freed_memory_soon();
    let cli = Cli::parse();
    if let Some(Command::Demo { any_ports }) = cli.command {
        return demo(&cli, any_ports);
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("qproxy: configuration error: {e}");
            if matches!(e, qproxy::config::ConfigError::Read { .. }) {
                eprintln!("qproxy: pass -c FILE or set CONFIG_PATH; ready configs are in config/");
            }
            return ExitCode::from(2);
        }
    };
    // The PEM files are part of the configuration: a bad one is exit 2 too.
    let tls = match qproxy::tls::Setup::new(&config) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!(
                "qproxy: configuration error: {}",
                config.invalid(e.key(), e.message())
            );
            return ExitCode::from(2);
        }
    };
    let directive = match log_directive(&cli, &config.logging) {
        Ok(directive) => directive,
        Err(e) => {
            eprintln!("qproxy: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        println!(
            "{}: ok ({} node, {} shard(s), store: {})",
            cli.config.display(),
            config.mode,
            config.sync.shards,
            if config.redis.is_some() {
                "redis"
            } else {
                "embedded"
            }
        );
        for (part, what) in config.outline(None) {
            println!("  {part:<6} {what}");
        }
        if cli.verbose {
            println!("effective configuration (passwords and tokens redacted):");
            println!("{}", config.effective_json());
        }
        return ExitCode::SUCCESS;
    }
    init_tracing(&directive, &config.logging);
    raise_fd_limit();
    if cli.verbose {
        tracing::info!(
            "configuration loaded from {}: {}",
            cli.config.display(),
            config.summary()
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qproxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let node = match qproxy::node::start_with_tls(config, tls).await {
            Ok(node) => node,
            Err(e) => {
                // Once: in the log's own format, or plainly when the log
                // is off.
                if tracing::enabled!(tracing::Level::ERROR) {
                    tracing::error!("{e}");
                } else {
                    eprintln!("qproxy: {e}");
                }
                return ExitCode::FAILURE;
            }
        };
        let token = node.shutdown_token();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            token.cancel();
            // Whatever hangs (a store that never answers, a stuck disk),
            // the process ends: after the deadline, or at a second signal.
            tokio::select! {
                _ = tokio::time::sleep(SHUTDOWN_DEADLINE) => {
                    tracing::error!("shutdown did not finish within {SHUTDOWN_DEADLINE:?}; exiting");
                }
                _ = shutdown_signal() => tracing::warn!("second signal; exiting now"),
            }
            std::process::exit(1);
        });
        node.wait().await;
        ExitCode::SUCCESS
    });
    // Blocking work still running (a store call that hangs) must not keep
    // the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

/// Connections get [`qproxy::node::SHUTDOWN_GRACE`], the record writer a few
/// seconds more to put its spool on disk; past this the process exits.
const SHUTDOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// Every connection is a file: the soft limit goes up to the hard one.
fn raise_fd_limit() {
    match qproxy::os::raise_fd_limit() {
        Ok((before, after)) if after > before => {
            tracing::info!("raised the open file limit from {before} to {after} (the hard limit)")
        }
        Ok((_, limit)) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!("cannot raise the open file limit: {e}"),
    }
}

fn demo(cli: &Cli, any_ports: bool) -> ExitCode {
    let logging = qproxy::config::LoggingConfig {
        level: Some("warn".into()),
        ..Default::default()
    };
    let directive = match log_directive(cli, &logging) {
        Ok(directive) => directive,
        Err(e) => {
            eprintln!("qproxy: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&directive, &logging);
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else {
        eprintln!("qproxy: cannot start the runtime");
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let token = tokio_util::sync::CancellationToken::new();
        let stop = token.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            stop.cancel();
        });
        let options = qproxy::demo::DemoOptions {
            usual_ports: !any_ports,
        };
        match qproxy::demo::run(options, token).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("qproxy: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The log filter: `-l`, else `RUST_LOG`, else `logging.level`, else info
/// (debug with `-v`). A mistyped level is an error, not a silent filter
/// that logs nothing (`warning` would name a target, not a level).
fn log_directive(cli: &Cli, logging: &qproxy::config::LoggingConfig) -> Result<String, String> {
    let (directive, from) = if let Some(l) = &cli.log_level {
        (l.clone(), "-l/--log-level")
    } else if let Some(env) = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()) {
        (env, "RUST_LOG")
    } else if let Some(level) = &logging.level {
        (level.clone(), "logging.level")
    } else {
        let level = if cli.verbose { "debug" } else { "info" };
        return Ok(format!("{level},rumqttd=warn"));
    };
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |s: &str| LEVELS.contains(&s.to_ascii_lowercase().as_str());
    let valid = !directive.trim().is_empty()
        && directive
            .split(',')
            .all(|part| match part.trim().split_once('=') {
                Some((target, level)) => !target.is_empty() && is_level(level),
                None => is_level(part.trim()),
            });
    if !valid {
        return Err(format!(
            "log level `{directive}` (from {from}) is not valid: use error, warn, info, debug, trace \
             or off, or target=level pairs such as info,qproxy=debug"
        ));
    }
    // rumqttd reports every client connection at info: keep it quieter
    // unless asked for by name.
    Ok(if directive.contains("rumqttd") {
        directive
    } else {
        format!("{directive},rumqttd=warn")
    })
}

fn init_tracing(directive: &str, logging: &qproxy::config::LoggingConfig) {
    let filter = EnvFilter::try_new(directive).unwrap_or_else(|e| {
        eprintln!("qproxy: log level `{directive}` is not valid ({e}); using info");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match logging.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
