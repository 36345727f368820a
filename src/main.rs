//! The `lb` command: serve, or check a configuration.

use anyhow::Context;
use clap::{Parser, Subcommand};
use lb::config::Config;
use lb::runtime::Runtime;
use std::path::PathBuf;
use std::process::ExitCode;
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LB_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: {e}", cli.config.display());
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Check) => {
            println!("{}: configuration is valid", cli.config.display());
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

fn run(config: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting runtime")?;
    rt.block_on(async {
        let listeners = lb::server::bind(&config).await?;
        for l in &listeners {
            // Printed on stdout so scripts and tests can wait for readiness and learn port-0 addresses.
            println!("lb listening on http://{}", l.local_addr()?);
        }
        let runtime = Arc::new(Runtime::new(config));
        lb::server::serve(listeners, runtime, lb::server::shutdown_signal()).await;
        Ok(())
    })
}
