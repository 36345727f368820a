//! The `lb` command: serve, or check a configuration.

use anyhow::Context;
use clap::{Parser, Subcommand};
use lb::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

// jemalloc instead of glibc's malloc, for idle connections: lb's per-connection records are small
// and long-lived, while a request's buffers are large and short-lived. glibc carves the next
// connection's records out of the holes the last requests left, so freed pages stay resident
// (2,500-2,900 bytes of RSS per idle connection); jemalloc keeps each size class in slabs of its
// own, and its background thread returns freed pages a second after they go unused (1,300-1,500
// bytes). CPU per request measured the same (docs/performance.md, "Idle connections").
// `dirty_decay_ms = 0` (return pages at once) cost 40% more CPU per request.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read by it at start (`_RJEM_MALLOC_CONF` in the environment overrides them).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

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
    Check {
        /// Also print what reloading it would change: against the running lb (asked over its admin
        /// listener), or against the file given with --against.
        #[arg(long)]
        diff: bool,
        /// Compare with this config file instead of the running lb.
        #[arg(long, requires = "diff", value_name = "FILE")]
        against: Option<PathBuf>,
        /// Admin address of the running lb. Default: the checked config's `admin.addr`.
        #[arg(long, requires = "diff", value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
    },
}

fn main() -> ExitCode {
    // Before anything else: an upgrade starts this same path again (see `lb::upgrade`).
    lb::upgrade::record_start();
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
        Some(Command::Check { diff, against, admin }) => {
            announce(&format!("{}: configuration is valid", cli.config.display()));
            if !diff {
                return ExitCode::SUCCESS;
            }
            match changes(&cli.config, &config, against.as_deref(), admin) {
                Ok(lines) if lines.is_empty() => announce("no changes"),
                Ok(lines) => lines.iter().for_each(|l| announce(l)),
                Err(e) => {
                    eprintln!("lb: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        None => match run(cli.config, config) {
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
///
/// Both layers' filters judge callsites by their metadata alone (an `EnvFilter` and `Targets`, no
/// closure), so every callsite neither wants is disabled once, at registration: h2 and hyper wrap
/// their internals in trace-level spans, and a filter the registry cannot see through made it create
/// and close those spans on every frame (20-30% of lb's CPU per HTTP/2 request, docs/performance.md).
fn init_logging() -> lb::proxy::access_writer::FlushOnDrop {
    use tracing_subscriber::{filter, fmt, prelude::*, EnvFilter};
    let (access_writer, guard) = lb::proxy::access_writer::AccessWriter::start(std::io::stdout());
    let levels = EnvFilter::try_from_env("LB_LOG").unwrap_or_else(|_| "info".into());
    // Access-log lines never go to stderr, whatever LB_LOG asks for.
    let levels = match format!("{}=off", lb::proxy::access::TARGET).parse() {
        Ok(directive) => levels.add_directive(directive),
        Err(_) => levels,
    };
    let access_only = filter::Targets::new().with_target(lb::proxy::access::TARGET, tracing::Level::INFO);
    tracing_subscriber::registry()
        .with(fmt::layer().with_writer(std::io::stderr).with_filter(levels))
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

/// How many I/O events one poll of the driver may hand to a busy worker (tokio's default: 1024).
/// A worker polls I/O every 61 tasks it runs (`event_interval`) and queues what it wakes on its local
/// run queue, which holds 256 tasks; what does not fit goes to the global queue, which a busy worker
/// serves only about one task in seven. With a thousand busy connections on one worker, a default poll
/// overflowed the local queue on nearly every tick, splitting connections into a fast lane and a
/// slow one: p99 315 ms against p50 81 ms at 1,024 connections. Handing out at most 48 wakes per
/// busy poll (fewer than the 61 tasks run between two polls), and 192 when the worker was idle
/// (less than the local queue holds), keeps every woken task in one FIFO: p99 112 ms, p50 73 ms,
/// CPU per request unchanged (docs/performance.md, "Fair service"; at 256 connections too, within
/// noise, in "Upstream connections driven by the request").
const IO_EVENTS_PER_BUSY_TICK: usize = 48;
/// See [`IO_EVENTS_PER_BUSY_TICK`].
const IO_EVENTS_PER_TICK: usize = 192;

fn run(path: PathBuf, config: Config) -> anyhow::Result<()> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.max_io_events_per_busy_tick(IO_EVENTS_PER_BUSY_TICK).max_io_events_per_tick(IO_EVENTS_PER_TICK);
    // `workers = 0`: tokio's default, one per core this process may run on (its CPU affinity).
    if config.workers > 0 {
        rt.worker_threads(config.workers);
    }
    let rt = rt.enable_all().build().context("starting runtime")?;
    rt.block_on(lb::launch::run(path, config, &announce))?;
    Ok(())
}

/// What loading `config` would change: against the file `against`, or against the running lb whose
/// admin listener is `admin` (default: the config's own admin address).
fn changes(
    path: &std::path::Path,
    config: &Config,
    against: Option<&std::path::Path>,
    admin: Option<std::net::SocketAddr>,
) -> anyhow::Result<Vec<String>> {
    if let Some(old) = against {
        let old = Config::load(old).map_err(|e| anyhow::anyhow!("{}: {e}", old.display()))?;
        return Ok(lb::reload::diff(&old, config));
    }
    let addr = admin.or(config.admin).context("no admin address: pass --admin ADDR or --against FILE")?;
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting runtime")?;
    let (status, body) = rt.block_on(post(addr, "/diff", text))?;
    let doc: serde_json::Value =
        serde_json::from_slice(&body).with_context(|| format!("unexpected answer from {addr}: {status}"))?;
    if !status.is_success() {
        anyhow::bail!("the running lb refused the config: {}", doc["error"].as_str().unwrap_or("?"));
    }
    let lines = |key: &str| -> Vec<String> {
        doc[key]
            .as_array()
            .map_or_else(Vec::new, |a| a.iter().filter_map(|l| l.as_str()).map(String::from).collect())
    };
    anyhow::ensure!(doc["changes"].is_array(), "no changes in the answer");
    // Operator overrides are not changes of the file, but they decide what the file's weights and
    // states will really be: say so after the changes.
    let (changes, overrides) = (lines("changes"), lines("overrides"));
    if overrides.is_empty() || !changes.is_empty() {
        return Ok(changes.into_iter().chain(overrides).collect());
    }
    Ok(std::iter::once("no changes".to_owned()).chain(overrides).collect())
}

/// One HTTP/1.1 POST to the admin listener at `addr`.
async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<(http::StatusCode, bytes::Bytes)> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the admin listener {addr}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let resp = send.send_request(req).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}
