//! TLS for both listeners (`--tls-cert`, `--tls-key`, PEM files).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::rustls::{self, pki_types::pem::PemObject};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Errors reading the certificate or key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The PEM content is not usable.
    #[error("invalid TLS certificate or key: {0}")]
    Invalid(String),
}

/// The certificate chain and key, as PEM.
#[derive(Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// Private key (PEM).
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsFiles { .. }")
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl TlsFiles {
    /// Reads and checks both files.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsFiles, TlsError> {
        let files = TlsFiles {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        };
        files.acceptor()?;
        Ok(files)
    }

    /// A rustls acceptor for the HTTP listener (ALPN h2 and http/1.1).
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let invalid = |e: &dyn std::fmt::Display| TlsError::Invalid(e.to_string());
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&e))?;
        if certs.is_empty() {
            return Err(TlsError::Invalid("no certificate in --tls-cert".into()));
        }
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| invalid(&e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(&e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Serves `router` over TLS until `shutdown`, then drains connections for
/// at most five seconds.
pub async fn serve_https(
    listener: TcpListener,
    router: Router,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let builder = Builder::new(TokioExecutor::new());
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    (tcp, peer)
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
            };
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .into_owned();
            if let Err(error) = watcher.watch(conn).await {
                tracing::debug!(%peer, %error, "connection error");
            }
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
}
