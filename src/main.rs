//! The `lb` command: serve, or check a configuration.

use anyhow::Context;
use clap::{Parser, Subcommand};
use lb::config::Config;
use lb::runtime::Runtime;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "lb", version, about = "HTTP reverse proxy and layer-7 load balancer")]
struct Cli {
    /// Configuration file.
    #[arg(short, long, global = true, default_value = "lb.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and exit: 0 if valid, 1 with every problem listed if not.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _flush_access_log_on_exit = init_logging();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: {e}", cli.config.display());
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Check) => {
            announce(&format!("{}: configuration is valid", cli.config.display()));
            ExitCode::SUCCESS
        }
        None => match run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lb: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Operational logs go to stderr (level from `LB_LOG`, default `info`); access-log lines go to
/// stdout through a batching writer with a bounded queue, so a slow stdout never stalls requests
/// (lines beyond the queue are dropped and counted in `lb_access_log_dropped_total`).
fn init_logging() -> lb::proxy::access_writer::FlushOnDrop {
    use tracing_subscriber::{filter, fmt, prelude::*, EnvFilter};
    let (access_writer, guard) = lb::proxy::access_writer::AccessWriter::start(std::io::stdout());
    let levels = EnvFilter::try_from_env("LB_LOG").unwrap_or_else(|_| "info".into());
    let not_access = filter::filter_fn(|m| m.target() != lb::proxy::access::TARGET);
    let access_only = filter::Targets::new().with_target(lb::proxy::access::TARGET, tracing::Level::INFO);
    tracing_subscriber::registry()
        .with(fmt::layer().with_writer(std::io::stderr).with_filter(levels).with_filter(not_access))
        .with(
            fmt::layer()
                .with_writer(access_writer)
                .without_time()
                .with_level(false)
                .with_target(false)
                .with_filter(access_only),
        )
        .init();
    guard
}

/// Prints a startup line on stdout. A closed stdout must not stop the balancer (`println!` would panic).
fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

fn run(config: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting runtime")?;
    rt.block_on(async {
        // Metrics are recorded only when the admin listener can serve them.
        let metrics = match config.admin {
            Some(_) => Some(lb::metrics::install().map_err(|e| anyhow::anyhow!("metrics: {e}"))?),
            None => None,
        };
        metrics::counter!(lb::metrics::CONFIG_RELOADS, "result" => "ok").increment(1);
        let listeners = lb::server::bind(&config).await?;
        for l in &listeners {
            // Printed on stdout so scripts and tests can wait for readiness and learn port-0 addresses.
            announce(&format!("lb listening on http://{}", l.local_addr()?));
        }
        let admin_addr = config.admin;
        let runtime = Arc::new(Runtime::new(config));
        let ready = Arc::new(AtomicBool::new(true));
        if let Some(addr) = admin_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin.addr)"))?;
            announce(&format!("lb admin on http://{}", listener.local_addr()?));
            let admin =
                lb::admin::Admin { runtime: Arc::clone(&runtime), metrics, ready: Arc::clone(&ready) };
            tokio::spawn(lb::admin::serve(listener, admin));
        }
        let shutdown = async move {
            lb::server::shutdown_signal().await;
            ready.store(false, Ordering::Relaxed);
        };
        lb::server::serve(listeners, runtime, shutdown).await;
        Ok(())
    })
}
