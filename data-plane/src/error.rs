//! Errors the proxy answers itself, converted to OpenAI error bodies
//! (`{"error":{"message","type","code"}}`) in one place: [`ProxyError::response`].

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::proxy::body::ProxyBody;

/// A request the proxy answers without (or after failing to reach) an
/// upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No routing table arrived from the control plane yet.
    #[error("the proxy has not received a routing table from the control plane yet")]
    NotReady,
    /// An API key is required and none was sent.
    #[error("missing API key: send `Authorization: Bearer <key>`")]
    MissingApiKey,
    /// The API key sent is not valid.
    #[error("invalid API key")]
    InvalidApiKey,
    /// The request body is larger than `--max-body-size`.
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The request body stalled longer than `--body-timeout`.
    #[error("the request body stalled: nothing received for {secs}s")]
    BodyTimeout {
        /// The timeout, in seconds.
        secs: f64,
    },
    /// The request bodies being read on the connection would exceed its
    /// budget (`--connection-body-budget`).
    #[error("request bodies being read on this connection exceed its budget of {limit} bytes")]
    ConnectionBudget {
        /// The budget, in bytes.
        limit: usize,
    },
    /// An HTTP/1.1 request without exactly one `Host` header.
    #[error("an HTTP/1.1 request needs exactly one Host header (it has {0})")]
    HostHeaders(usize),
    /// A transfer coding other than `chunked`.
    #[error("unsupported Transfer-Encoding `{0}`: only `chunked` is accepted")]
    TransferEncoding(String),
    /// Reading the request body failed.
    #[error("failed to read the request body: {0}")]
    BodyRead(String),
    /// The body is not valid JSON.
    #[error("we could not parse the JSON body of your request: {0}")]
    InvalidJson(String),
    /// The body is JSON but not an object.
    #[error("the request body must be a JSON object")]
    NotAnObject,
    /// `model` is missing or not a string.
    #[error("you must provide a model parameter (a string)")]
    MissingModel,
    /// No endpoint of the routing table serves the model.
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    /// Endpoints serve the model but none is online.
    #[error("no online endpoint serves the model `{0}`")]
    NoOnlineEndpoint(String),
    /// Every upstream attempt failed before a response.
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    /// No such route.
    #[error("unknown URL: {method} {path}")]
    NotFound {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The route exists with another method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
        /// The allowed method.
        allow: &'static str,
    },
}

impl ProxyError {
    /// HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotReady | Self::NoOnlineEndpoint(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::MissingApiKey | Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::BodyTooLarge { .. } | Self::ConnectionBudget { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::TransferEncoding(_) => StatusCode::NOT_IMPLEMENTED,
            Self::HostHeaders(_)
            | Self::BodyRead(_)
            | Self::InvalidJson(_)
            | Self::NotAnObject
            | Self::MissingModel => StatusCode::BAD_REQUEST,
            Self::ModelNotFound(_) | Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// OpenAI error `type`.
    fn kind(&self) -> &'static str {
        match self.status() {
            _ if matches!(self, Self::TransferEncoding(_)) => "invalid_request_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// OpenAI error `code`.
    fn code(&self) -> &'static str {
        match self {
            Self::NotReady => "not_ready",
            Self::MissingApiKey | Self::InvalidApiKey => "invalid_api_key",
            Self::BodyTooLarge { .. } | Self::ConnectionBudget { .. } => "request_too_large",
            Self::BodyTimeout { .. } => "request_timeout",
            Self::HostHeaders(_) => "invalid_host",
            Self::TransferEncoding(_) => "unsupported_transfer_encoding",
            Self::BodyRead(_) => "invalid_body",
            Self::InvalidJson(_) => "invalid_json",
            Self::NotAnObject => "invalid_request",
            Self::MissingModel => "missing_model",
            Self::ModelNotFound(_) => "model_not_found",
            Self::NoOnlineEndpoint(_) => "no_online_endpoint",
            Self::UpstreamUnreachable(_) => "upstream_unreachable",
            Self::NotFound { .. } => "unknown_url",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
        }
    }

    /// The OpenAI-shaped HTTP answer.
    pub fn response(&self) -> Response<ProxyBody> {
        let body = json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "code": self.code(),
            }
        });
        let mut response = json_response(self.status(), &body);
        if let Self::MethodNotAllowed { allow, .. } = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// Most characters of client-supplied text (a model name) echoed in an
/// error message or a log line.
pub const CLIP_CHARS: usize = 256;

/// `text` cut to [`CLIP_CHARS`] characters, with `…` when cut.
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(CLIP_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// A JSON answer with `status`.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error and its sources, joined with `: `.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn long_client_text_is_clipped() {
        assert_eq!(clip("gpt-4"), "gpt-4");
        let long = "é".repeat(CLIP_CHARS + 10);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), CLIP_CHARS + 1);
        assert!(clipped.ends_with('…'));
    }

    #[tokio::test]
    async fn openai_error_body() {
        let response = ProxyError::ModelNotFound("gpt-x".into()).response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["message"], "the model `gpt-x` does not exist");
        let response = ProxyError::MethodNotAllowed {
            method: "GET".into(),
            path: "/v1/embeddings".into(),
            allow: "POST",
        }
        .response();
        assert_eq!(response.headers()[header::ALLOW], "POST");
    }
}
