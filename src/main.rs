//! `ext-plugin-runner`: parse the command line, set up logging, listen, serve until SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use ext_plugin_runner::cli::Cli;
use ext_plugin_runner::config::DEFAULT_LISTEN_ADDRESS;
use ext_plugin_runner::{serve, Listener, Registry, Runner};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let registry = Registry::builtin();
    if cli.list_plugins {
        for name in registry.names() {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }

    // Everything on stderr lands in the gateway's error log.
    let filter = match &cli.log {
        Some(f) => EnvFilter::try_new(f),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    };
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ext-plugin-runner: bad log filter: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let config = match cli.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ext-plugin-runner: {e}");
            return ExitCode::from(2);
        }
    };
    if std::env::var_os("APISIX_LISTEN_ADDRESS").is_none() && cli.listen == DEFAULT_LISTEN_ADDRESS {
        info!("APISIX_LISTEN_ADDRESS is not set and --listen not given; using {DEFAULT_LISTEN_ADDRESS}");
    }

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = cli.workers {
        runtime.worker_threads(usize::from(n));
    }
    let runtime = match runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ext-plugin-runner: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };

    runtime.block_on(async move {
        let listener = match Listener::bind(&config.listen) {
            Ok(l) => l,
            Err(e) => {
                error!("cannot listen on {}: {e}", config.listen.display());
                return ExitCode::FAILURE;
            }
        };
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                error!("cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        info!(
            path = %config.listen.display(),
            protocol = %config.protocol,
            plugins = ?registry.names(),
            "listening"
        );
        let runner = Runner::new(config, registry);
        serve(listener, runner, async move {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: draining"),
                _ = int.recv() => info!("SIGINT: draining"),
            }
        })
        .await;
        ExitCode::SUCCESS
    })
}
