//! `llmlb-proxy`: tracing → config (exit 64 on a bad one) → start → wait for
//! SIGTERM/SIGINT → drain and flush stats → exit 0.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use llmlb_proxy::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// Exit code for a configuration error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

// The main thread runs the listener, the routing watcher and the stats
// uploader; requests are served by the worker threads (see `server`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let config = Config::from_args();
    let format = config.as_ref().map_or(LogFormat::Text, |c| c.log_format);
    init_tracing(format);
    let config = match config {
        Ok(config) => config,
        Err(error) => {
            eprintln!("llmlb-proxy: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let proxy = match llmlb_proxy::start(config).await {
        Ok(proxy) => proxy,
        Err(error) => {
            eprintln!("llmlb-proxy: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Readiness line on stdout, `key=value` pairs, for scripts and tests
    // (logs go to stderr).
    println!(
        "llmlb-proxy listening http={} proxy_id={}",
        proxy.local_addr(),
        proxy.proxy_id()
    );
    proxy.run_until(shutdown_signal()).await;
    ExitCode::SUCCESS
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
