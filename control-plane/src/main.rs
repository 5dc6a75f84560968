//! `llmlb-control`: tracing → config (exit 64 on bad config) → boot → serve
//! → SIGTERM/SIGINT → drain.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use llmlb_control::config::{Config, LogFormat};

/// Time the tasks get to stop after a signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(64);
        }
    };
    if let Err(reason) = config.validate() {
        eprintln!("llmlb-control: {reason}");
        return ExitCode::from(64);
    }
    init_tracing(config.log_format);
    let running = match llmlb_control::app::start(config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("llmlb-control: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "llmlb-control listening grpc={} http={}",
        running.grpc_addr, running.http_addr
    );
    let shutdown = running.shutdown.clone();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("signal received; shutting down");
        shutdown.cancel();
    });
    running.wait(SHUTDOWN_GRACE).await;
    ExitCode::SUCCESS
}
