//! Command line, environment and the validated [`Config`].
//!
//! Every flag can also be set with the `LLMLB_*` environment variable shown
//! in `--help`. Durations accept humantime strings (`500ms`, `10s`, `5m`,
//! `7d`); sizes accept a number of bytes with an optional unit (`8MiB`,
//! `512KiB`, `1MB`, `1048576`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// OpenAI-compatible load-balancing proxy of llmlb (data plane).
///
/// Routes each request to an endpoint pushed by the control plane and
/// streams one stats record per upstream attempt back to it.
#[derive(Debug, Clone, Parser)]
#[command(name = "llmlb-proxy", version)]
pub struct Cli {
    /// Address to serve the OpenAI-compatible API, /healthz and /metrics on.
    #[arg(long, env = "LLMLB_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// gRPC URL of the control plane (`https://` when it runs with TLS).
    #[arg(
        long,
        env = "LLMLB_CONTROL_PLANE",
        default_value = "http://127.0.0.1:50051"
    )]
    pub control_plane: String,

    /// PEM file of a CA certificate to trust for an `https://` control plane
    /// (besides the public web roots), e.g. its self-signed certificate.
    #[arg(long, env = "LLMLB_CONTROL_PLANE_CA")]
    pub control_plane_ca: Option<PathBuf>,

    /// Identity reported to the control plane [default: hostname:listen port].
    #[arg(long, env = "LLMLB_PROXY_ID")]
    pub proxy_id: Option<String>,

    /// Token presented to the control plane (`authorization: Bearer <token>`).
    /// Required when --listen is not a loopback address, unless --insecure.
    #[arg(long, env = "LLMLB_PROXY_TOKEN", hide_env_values = true)]
    pub proxy_token: Option<String>,

    /// Require `Authorization: Bearer <api key>` from clients even before any
    /// API key exists (once a key exists it is always required).
    #[arg(long, env = "LLMLB_REQUIRE_API_KEY")]
    pub require_api_key: bool,

    /// Allow a non-loopback --listen address without --proxy-token.
    #[arg(long, env = "LLMLB_INSECURE")]
    pub insecure: bool,

    /// Largest request body accepted (413 above it).
    #[arg(long, env = "LLMLB_MAX_BODY_SIZE", default_value = "8MiB", value_parser = parse_size)]
    pub max_body_size: usize,

    /// Most stats records held for the control plane (pending and
    /// unacknowledged); new records are dropped, and counted, above it.
    #[arg(long, env = "LLMLB_STATS_BUFFER", default_value_t = 100_000)]
    pub stats_buffer: usize,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish,
    /// then how long stats may take to be acknowledged (what is left of it,
    /// at least 1s).
    #[arg(long, env = "LLMLB_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// How long a TCP connect to an upstream endpoint may take.
    #[arg(long, env = "LLMLB_UPSTREAM_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub upstream_connect_timeout: Duration,

    /// Longest wait for an upstream's response headers, and longest silence
    /// between two chunks of its body.
    #[arg(long, env = "LLMLB_UPSTREAM_TIMEOUT", default_value = "300s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,

    /// While an event stream's upstream is silent, send the client an SSE
    /// comment (`: keep-alive`) this often, so that intermediaries with idle
    /// timeouts keep the stream of a model that thinks for minutes; 0 turns
    /// it off.
    #[arg(long, env = "LLMLB_SSE_KEEPALIVE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub sse_keepalive: Duration,

    /// Worker threads serving HTTP connections, each with its own event loop
    /// and upstream connection pool [default: the number of CPUs].
    #[arg(long, env = "LLMLB_WORKERS")]
    pub workers: Option<usize>,

    /// Log format (the level comes from RUST_LOG, default info).
    #[arg(long, env = "LLMLB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A non-loopback listener needs a token or `--insecure`.
    #[error("refusing to listen on non-loopback {0} without --proxy-token (pass --insecure to allow it)")]
    InsecureListen(SocketAddr),
    /// The control plane URL is unusable.
    #[error("invalid --control-plane {url:?}: {reason}")]
    ControlPlane {
        /// The URL given.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// The CA file cannot be read.
    #[error("cannot read --control-plane-ca {path}: {source}")]
    ControlPlaneCa {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The proxy token cannot be sent as a header.
    #[error("--proxy-token must be non-empty printable ASCII")]
    ProxyToken,
    /// A zero size or count where one is needed.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

/// Validated configuration of the proxy, by module.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listener and request limits.
    pub server: ServerConfig,
    /// Control plane connection.
    pub control: ControlConfig,
    /// Upstream HTTP client.
    pub upstream: UpstreamConfig,
    /// Stats buffering.
    pub stats: StatsConfig,
    /// Log format.
    pub log_format: LogFormat,
}

/// HTTP listener and request limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Largest request body, bytes.
    pub max_body_size: usize,
    /// Require a client API key even when the table has none.
    pub require_api_key: bool,
    /// Drain time for in-flight requests on shutdown.
    pub shutdown_grace: Duration,
    /// Worker threads (at least 1).
    pub workers: usize,
}

/// Control plane connection.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// gRPC URL (`http://` or `https://`).
    pub url: String,
    /// Extra CA certificate (PEM) to trust for `https://`.
    pub ca_pem: Option<Vec<u8>>,
    /// Proxy identity; `None` means hostname:port of the bound listener.
    pub proxy_id: Option<String>,
    /// Token for the proxy-facing services.
    pub proxy_token: Option<String>,
}

/// Upstream HTTP client.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Timeout to response headers, and idle timeout between body chunks.
    pub timeout: Duration,
    /// Keep-alive comment period of silent event streams (`None`: off).
    pub sse_keepalive: Option<Duration>,
}

/// Stats buffering.
#[derive(Debug, Clone)]
pub struct StatsConfig {
    /// Most records held (pending and unacknowledged).
    pub buffer: usize,
}

impl Config {
    /// Parses the command line and environment; on error, prints it and
    /// exits (help and version exit 0, bad usage exits 64).
    pub fn from_args() -> Result<Self, ConfigError> {
        let cli = Cli::try_parse().unwrap_or_else(|e| {
            if !e.use_stderr() {
                let _ = e.print();
                std::process::exit(0);
            }
            let rendered = e.render().to_string();
            let line = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("{line}");
            std::process::exit(64);
        });
        Self::try_from(cli)
    }
}

impl TryFrom<Cli> for Config {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, ConfigError> {
        let token = cli.proxy_token.filter(|t| !t.is_empty());
        if let Some(token) = &token {
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::ProxyToken);
            }
        }
        if !cli.listen.ip().is_loopback() && token.is_none() && !cli.insecure {
            return Err(ConfigError::InsecureListen(cli.listen));
        }
        validate_url(&cli.control_plane)?;
        let ca_pem = cli
            .control_plane_ca
            .map(|path| {
                std::fs::read(&path).map_err(|source| ConfigError::ControlPlaneCa { path, source })
            })
            .transpose()?;
        if cli.max_body_size == 0 {
            return Err(ConfigError::Zero("--max-body-size"));
        }
        if cli.stats_buffer == 0 {
            return Err(ConfigError::Zero("--stats-buffer"));
        }
        if cli.upstream_timeout.is_zero() {
            return Err(ConfigError::Zero("--upstream-timeout"));
        }
        let workers = match cli.workers {
            Some(0) => return Err(ConfigError::Zero("--workers")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        Ok(Self {
            server: ServerConfig {
                listen: cli.listen,
                max_body_size: cli.max_body_size,
                require_api_key: cli.require_api_key,
                shutdown_grace: cli.shutdown_grace,
                workers,
            },
            control: ControlConfig {
                url: cli.control_plane,
                ca_pem,
                proxy_id: cli.proxy_id.filter(|id| !id.is_empty()),
                proxy_token: token,
            },
            upstream: UpstreamConfig {
                connect_timeout: cli.upstream_connect_timeout,
                timeout: cli.upstream_timeout,
                sse_keepalive: Some(cli.sse_keepalive).filter(|d| !d.is_zero()),
            },
            stats: StatsConfig {
                buffer: cli.stats_buffer,
            },
            log_format: cli.log_format,
        })
    }
}

fn validate_url(url: &str) -> Result<(), ConfigError> {
    let err = |reason| ConfigError::ControlPlane {
        url: url.to_owned(),
        reason,
    };
    let uri: http::Uri = url.parse().map_err(|_| err("not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(err("the scheme must be http:// or https://"));
    }
    if uri.host().is_none() {
        return Err(err("no host"));
    }
    Ok(())
}

/// Parses `8MiB`, `512KiB`, `1MB`, `10k` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    number
        .checked_mul(factor)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["llmlb-proxy"];
        argv.extend_from_slice(args);
        Config::try_from(Cli::try_parse_from(argv).expect("arguments parse"))
    }

    #[test]
    fn defaults() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(config.server.max_body_size, 8 << 20);
        assert_eq!(config.server.shutdown_grace, Duration::from_secs(30));
        assert_eq!(config.control.url, "http://127.0.0.1:50051");
        assert_eq!(config.upstream.timeout, Duration::from_secs(300));
        assert_eq!(config.upstream.connect_timeout, Duration::from_secs(5));
        assert_eq!(config.stats.buffer, 100_000);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(
            config.server.workers,
            std::thread::available_parallelism().map_or(1, usize::from)
        );
        assert_eq!(parse(&["--workers=3"]).unwrap().server.workers, 3);
    }

    #[test]
    fn durations_and_sizes() {
        let config = parse(&[
            "--shutdown-grace=500ms",
            "--upstream-timeout=5m",
            "--upstream-connect-timeout=7d",
            "--max-body-size=512KiB",
        ])
        .unwrap();
        assert_eq!(config.server.shutdown_grace, Duration::from_millis(500));
        assert_eq!(config.upstream.timeout, Duration::from_secs(300));
        assert_eq!(
            config.upstream.connect_timeout,
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(config.server.max_body_size, 512 * 1024);
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("1XB").is_err());
    }

    #[test]
    fn non_loopback_listener_needs_a_token_or_insecure() {
        let err = parse(&["--listen=0.0.0.0:8000"]).unwrap_err();
        assert!(matches!(err, ConfigError::InsecureListen(_)), "{err}");
        assert!(parse(&["--listen=0.0.0.0:8000", "--insecure"]).is_ok());
        assert!(parse(&["--listen=0.0.0.0:8000", "--proxy-token=s3cret"]).is_ok());
        assert!(parse(&["--listen=[::1]:8000"]).is_ok());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--control-plane=ftp://x"]).is_err());
        assert!(parse(&["--control-plane=https://cp.example:50051"]).is_ok());
        assert!(parse(&["--control-plane-ca=/nonexistent.pem"]).is_err());
        assert!(parse(&["--stats-buffer=0"]).is_err());
        assert!(parse(&["--workers=0"]).is_err());
        assert!(parse(&["--proxy-token=has space"]).is_err());
        assert!(Cli::try_parse_from(["llmlb-proxy", "--shutdown-grace=soon"]).is_err());
    }
}
