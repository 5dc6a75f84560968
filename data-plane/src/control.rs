//! The connection to the control plane shared by the routing watcher and the
//! stats uploader: one lazily connected gRPC channel, and the proxy token
//! presented as `authorization: Bearer <token>` metadata on every call.

use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How long a TCP connect to the control plane may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 PING interval, to notice a dead control plane on an idle stream.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How long to wait for a PING answer before dropping the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors building the control-plane connection.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The URL is not a valid gRPC endpoint URI.
    #[error("invalid control plane URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// TLS settings refused by the gRPC client.
    #[error("TLS setup for the control plane failed: {0}")]
    Tls(String),
    /// The token cannot be sent as gRPC metadata.
    #[error("the proxy token must be printable ASCII")]
    InvalidToken,
}

/// The gRPC channel to the control plane and the credentials to use on it.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// Lazily connected, reconnecting channel.
    channel: Channel,
    /// `Bearer <proxy token>`, if a token is configured.
    authorization: Option<AsciiMetadataValue>,
}

impl ControlPlane {
    /// Builds the channel without connecting yet. An `https://` URL uses
    /// TLS, trusting the public web roots and `ca_pem` if given.
    pub fn new(
        url: &str,
        token: Option<&str>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, ControlError> {
        let invalid = |reason: String| ControlError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|e| invalid(format!("{e}")))?;
        let mut endpoint =
            Endpoint::from_shared(url.to_owned()).map_err(|e| invalid(format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                let mut tls = ClientTlsConfig::new().with_webpki_roots();
                if let Some(pem) = ca_pem {
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|e| ControlError::Tls(e.to_string()))?;
            }
            _ => return Err(invalid("the scheme must be http:// or https://".into())),
        }
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_lazy();
        let authorization = token
            .map(|t| {
                let mut value: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| ControlError::InvalidToken)?;
                value.set_sensitive(true);
                Ok::<_, ControlError>(value)
            })
            .transpose()?;
        Ok(Self {
            channel,
            authorization,
        })
    }

    /// The shared channel.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Wraps `message` in a request carrying the proxy token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }
}

/// The message of a gRPC status and the errors under it, joined with `: `
/// (e.g. `tcp connect error: Connection refused (os error 111)`).
pub fn status_text(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
