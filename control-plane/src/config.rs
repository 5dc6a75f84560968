//! Command-line configuration of `llmlb-control`; every flag is also an
//! `LLMLB_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Parses `500ms`, `10s`, `5m`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 10s, 5m or 7d ({e})"))?;
    if d.is_zero() {
        return Err(format!("{s:?} must be greater than zero"));
    }
    Ok(d)
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// llmlb control plane: endpoint registry, health checks, stats ingestion
/// and dashboard metrics, over gRPC and a REST/JSON gateway.
#[derive(Clone, Debug, Parser)]
#[command(name = "llmlb-control", version, about)]
pub struct Config {
    /// gRPC listener (operator APIs, proxy streams, reflection, health).
    #[arg(long, env = "LLMLB_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,

    /// HTTP listener: REST gateway (/api/...), /metrics, /healthz and the dashboard page (/).
    #[arg(long, env = "LLMLB_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,

    /// SQLite database: a file path or a `sqlite:` URL (created if missing).
    /// `postgres://` URLs are refused by this build (PostgreSQL is not there yet).
    #[arg(long, env = "LLMLB_DATABASE", default_value = "./llmlb.db")]
    pub database: PathBuf,

    /// Time between two health probes of one endpoint.
    #[arg(long, env = "LLMLB_HEALTH_CHECK_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub health_check_interval: Duration,

    /// Time a health probe may take before it counts as failed.
    #[arg(long, env = "LLMLB_HEALTH_CHECK_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub health_check_timeout: Duration,

    /// How long per-request history rows are kept (daily and per-minute totals are kept for good);
    /// older rows are pruned every retention/2 (between 1s and 60s), 1,000 rows per statement.
    #[arg(long, env = "LLMLB_HISTORY_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub history_retention: Duration,

    /// Token that operator APIs require (gRPC metadata and REST header `authorization: Bearer <token>`).
    #[arg(long, env = "LLMLB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Token that proxies must present on the proxy-facing services.
    #[arg(long, env = "LLMLB_PROXY_TOKEN", hide_env_values = true)]
    pub proxy_token: Option<String>,

    /// Allow non-loopback listeners without tokens.
    #[arg(long, env = "LLMLB_INSECURE")]
    pub insecure: bool,

    /// TLS certificate (PEM) for both listeners (needs --tls-key).
    #[arg(long, env = "LLMLB_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for both listeners (needs --tls-cert).
    #[arg(long, env = "LLMLB_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "LLMLB_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// The SQLite file `--database` names: a path as given, or the path of a
    /// `sqlite:` / `sqlite://` URL (without its `?options`).
    pub fn sqlite_path(&self) -> PathBuf {
        let given = self.database.to_string_lossy();
        match given
            .strip_prefix("sqlite://")
            .or_else(|| given.strip_prefix("sqlite:"))
        {
            Some(rest) => PathBuf::from(rest.split('?').next().unwrap_or(rest)),
            None => self.database.clone(),
        }
    }

    /// Checks what clap cannot; the error is one line.
    pub fn validate(&self) -> Result<(), String> {
        let database = self.database.to_string_lossy();
        if database.starts_with("postgres://") || database.starts_with("postgresql://") {
            return Err(
                "--database postgres://...: PostgreSQL is not supported by this build yet; give a SQLite file path or a sqlite: URL"
                    .into(),
            );
        }
        if self.sqlite_path().as_os_str().is_empty() {
            return Err("--database names no file".into());
        }
        if self.health_check_timeout > self.health_check_interval.max(Duration::from_secs(600)) {
            return Err("--health-check-timeout is longer than 10 minutes".into());
        }
        if self.insecure {
            return Ok(());
        }
        if !self.grpc_listen.ip().is_loopback()
            && (self.admin_token.is_none() || self.proxy_token.is_none())
        {
            return Err(format!(
                "refusing to listen on {} (gRPC) without --admin-token and --proxy-token; pass --insecure to allow it",
                self.grpc_listen
            ));
        }
        if !self.http_listen.ip().is_loopback() && self.admin_token.is_none() {
            return Err(format!(
                "refusing to listen on {} (HTTP) without --admin-token; pass --insecure to allow it",
                self.http_listen
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let c =
            Config::try_parse_from(std::iter::once("llmlb-control").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn database_is_a_path_or_a_sqlite_url() {
        let path = |db: &str| parse(&["--database", db]).map(|c| c.sqlite_path());
        assert_eq!(path("./x.db"), Ok(PathBuf::from("./x.db")));
        assert_eq!(path("sqlite:./x.db"), Ok(PathBuf::from("./x.db")));
        assert_eq!(
            path("sqlite:///tmp/x.db?mode=rwc"),
            Ok(PathBuf::from("/tmp/x.db"))
        );
        let err = path("postgres://u@h:5432/db").unwrap_err();
        assert!(err.contains("PostgreSQL is not supported"), "{err}");
        assert!(path("sqlite:").is_err());
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.grpc_listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database, PathBuf::from("./llmlb.db"));
        assert_eq!(c.health_check_interval, Duration::from_secs(10));
        assert_eq!(c.health_check_timeout, Duration::from_secs(5));
        assert_eq!(c.history_retention, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn durations_and_exposure_are_checked() {
        assert_eq!(
            parse(&["--health-check-interval", "500ms"])
                .unwrap()
                .health_check_interval,
            Duration::from_millis(500)
        );
        assert!(parse(&["--health-check-interval", "soon"]).is_err());
        assert!(parse(&["--health-check-interval", "0s"]).is_err());
        let err = parse(&["--grpc-listen", "0.0.0.0:50051"]).unwrap_err();
        assert!(err.contains("--insecure"), "{err}");
        assert!(parse(&["--grpc-listen", "0.0.0.0:1", "--insecure"]).is_ok());
        assert!(parse(&[
            "--grpc-listen",
            "0.0.0.0:1",
            "--admin-token",
            "a",
            "--proxy-token",
            "b"
        ])
        .is_ok());
        assert!(parse(&["--http-listen", "0.0.0.0:1", "--admin-token", "a"]).is_ok());
        assert!(parse(&["--tls-cert", "c.pem"]).is_err());
    }
}
