#![forbid(unsafe_code)]
//! `fake-openai`: serve a fake OpenAI-compatible backend until SIGTERM/SIGINT.
//! Prints exactly one line, `listening on http://ADDR`, once bound.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use llmlb_fake_openai::{FakeConfig, FakeMode, FakeServer, Habits};

/// A fake OpenAI-compatible backend with configurable latency and token rate.
#[derive(Debug, Parser)]
#[command(name = "fake-openai", version)]
struct Cli {
    /// Address to listen on (port 0 picks a free port; the line printed on stdout tells which).
    #[arg(long, env = "FAKE_OPENAI_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Comma-separated model ids served by /v1/models and accepted in requests.
    #[arg(
        long,
        env = "FAKE_OPENAI_MODELS",
        value_delimiter = ',',
        default_value = "fake-model"
    )]
    models: Vec<String>,
    /// Delay before the response headers, on every route (e.g. 0ms, 20ms, 1s).
    #[arg(long, env = "FAKE_OPENAI_LATENCY", value_parser = humantime::parse_duration, default_value = "0ms")]
    latency: Duration,
    /// Output tokens per completion when the request sets no max_tokens.
    #[arg(long, env = "FAKE_OPENAI_TOKENS", default_value_t = 16)]
    tokens: u32,
    /// Delay before each streamed token (non-streaming replies wait tokens × interval).
    #[arg(long, env = "FAKE_OPENAI_TOKEN_INTERVAL", value_parser = humantime::parse_duration, default_value = "0ms")]
    token_interval: Duration,
    /// Input tokens reported in usage.
    #[arg(long, env = "FAKE_OPENAI_PROMPT_TOKENS", default_value_t = 8)]
    prompt_tokens: u32,
    /// Require `Authorization: Bearer <key>` on every route.
    #[arg(long, env = "FAKE_OPENAI_API_KEY")]
    api_key: Option<String>,
    /// normal, status:<code>, malformed-json, hang or fail-models.
    #[arg(long, env = "FAKE_OPENAI_MODE", default_value = "normal")]
    mode: FakeMode,
    /// Habits of real servers to imitate, comma-separated or repeated: late-eof:<duration>
    /// (uvicorn), usage-in-choice (LiteLLM), no-models, model-metadata (vLLM),
    /// truncate:<tokens>, retry-after:<seconds>, split-lines, redirect (Starlette).
    #[arg(long = "habit", env = "FAKE_OPENAI_HABITS", value_delimiter = ',', value_parser = parse_habit)]
    habits: Vec<String>,
}

fn parse_habit(spec: &str) -> Result<String, String> {
    Habits::default().add(spec)?;
    Ok(spec.to_owned())
}

impl Cli {
    fn config(self) -> FakeConfig {
        FakeConfig {
            models: self.models,
            latency: self.latency,
            tokens: self.tokens,
            token_interval: self.token_interval,
            prompt_tokens: self.prompt_tokens,
            mode: self.mode,
            api_key: self.api_key,
            // Each spec was checked by `parse_habit`.
            habits: Habits::parse(self.habits.iter().map(String::as_str)).unwrap_or_default(),
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(64);
        }
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fake-openai: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-openai: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let listen = cli.listen;
    let server = FakeServer::start_on(listen, cli.config())
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", server.base_url())?;
    stdout.flush()?;
    drop(stdout);
    shutdown_signal().await?;
    server.stop().await;
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r?,
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}
