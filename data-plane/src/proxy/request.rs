//! Reading a client request: API key, body (with its size limit) and the
//! few JSON fields the proxy needs.

use bytes::Bytes;
use http::{header, HeaderMap};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use llmlb_proto::v1::ApiKind;
use serde_json::{Map, Value};

use super::body::BoxError;
use crate::error::ProxyError;
use crate::routing::Table;

/// The API of a POST path, if it is one the proxy serves.
pub fn api_kind(path: &str) -> Option<ApiKind> {
    match path {
        "/v1/chat/completions" => Some(ApiKind::ChatCompletions),
        "/v1/completions" => Some(ApiKind::Completions),
        "/v1/embeddings" => Some(ApiKind::Embeddings),
        "/v1/responses" => Some(ApiKind::Responses),
        _ => None,
    }
}

/// Checks the client's API key when one is required (the table has keys, or
/// `require` is set); returns the id of the key presented.
pub fn authorize(
    table: &Table,
    headers: &HeaderMap,
    require: bool,
) -> Result<Option<String>, ProxyError> {
    if !require && !table.has_api_keys() {
        return Ok(None);
    }
    let secret = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|s| !s.is_empty())
        .ok_or(ProxyError::MissingApiKey)?;
    table
        .api_key_id(secret)
        .map(|id| Some(id.to_owned()))
        .ok_or(ProxyError::InvalidApiKey)
}

/// Reads the whole body, refusing more than `limit` bytes (checked against
/// `Content-Length` first).
pub async fn read_body<B>(body: B, headers: &HeaderMap, limit: usize) -> Result<Bytes, ProxyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(e) => Err(ProxyError::BodyRead(e.to_string())),
    }
}

/// What the proxy needs from a request body.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    /// The `model` field.
    pub model: String,
    /// `stream: true` was asked.
    pub stream: bool,
    /// The proxy added `stream_options.include_usage`: the usage-only chunk
    /// must be removed from what the client sees.
    pub strip_usage: bool,
    /// The body to send upstream (the client's bytes, unless rewritten).
    pub body: Bytes,
}

/// Parses a JSON request body; for streaming chat/completions and
/// completions requests that do not ask for usage, adds
/// `stream_options.include_usage: true` (key order kept).
pub fn parse(body: Bytes, kind: ApiKind) -> Result<ParsedRequest, ProxyError> {
    let mut value: Value =
        serde_json::from_slice(&body).map_err(|e| ProxyError::InvalidJson(e.to_string()))?;
    let object = value.as_object_mut().ok_or(ProxyError::NotAnObject)?;
    let model = match object.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        _ => return Err(ProxyError::MissingModel),
    };
    let stream = object.get("stream") == Some(&Value::Bool(true));
    let asks_usage = object
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        == Some(&Value::Bool(true));
    let injectable = matches!(kind, ApiKind::ChatCompletions | ApiKind::Completions);
    if !(stream && injectable && !asks_usage) {
        return Ok(ParsedRequest {
            model,
            stream,
            strip_usage: false,
            body,
        });
    }
    let options = object
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()));
    if !options.is_object() {
        *options = Value::Object(Map::new());
    }
    if let Value::Object(options) = options {
        options.insert("include_usage".into(), Value::Bool(true));
    }
    let body = serde_json::to_vec(&value).map_err(|e| ProxyError::InvalidJson(e.to_string()))?;
    Ok(ParsedRequest {
        model,
        stream,
        strip_usage: true,
        body: Bytes::from(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn parse_str(body: &str, kind: ApiKind) -> Result<ParsedRequest, ProxyError> {
        parse(Bytes::from(body.to_owned()), kind)
    }

    #[test]
    fn bad_bodies_are_400() {
        for body in [
            "{not json",
            "[1,2]",
            "\"model\"",
            "{}",
            "{\"model\":42}",
            "{\"model\":\"\"}",
        ] {
            let err = parse_str(body, ApiKind::ChatCompletions).unwrap_err();
            assert_eq!(err.status(), http::StatusCode::BAD_REQUEST, "{body}: {err}");
        }
    }

    #[test]
    fn non_streaming_body_is_forwarded_unchanged() {
        let body = r#"{ "model" : "m",  "messages": [], "stream": false }"#;
        let parsed = parse_str(body, ApiKind::ChatCompletions).unwrap();
        assert_eq!(parsed.model, "m");
        assert!(!parsed.strip_usage);
        assert_eq!(parsed.body, body.as_bytes());
    }

    #[test]
    fn streaming_gets_include_usage_in_place() {
        let body = r#"{"model":"m","stream":true,"stream_options":{"x":1},"messages":[]}"#;
        let parsed = parse_str(body, ApiKind::ChatCompletions).unwrap();
        assert!(parsed.strip_usage && parsed.stream);
        assert_eq!(
            std::str::from_utf8(&parsed.body).unwrap(),
            r#"{"model":"m","stream":true,"stream_options":{"x":1,"include_usage":true},"messages":[]}"#
        );
        let asked = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        let parsed = parse_str(asked, ApiKind::Completions).unwrap();
        assert!(!parsed.strip_usage);
        assert_eq!(parsed.body, asked.as_bytes());
        let responses = r#"{"model":"m","stream":true}"#;
        assert!(
            !parse_str(responses, ApiKind::Responses)
                .unwrap()
                .strip_usage
        );
    }

    #[tokio::test]
    async fn body_limit_is_413() {
        let mut headers = HeaderMap::new();
        let body = Full::new(Bytes::from(vec![b' '; 100]));
        let err = read_body(body.clone(), &headers, 10).await.unwrap_err();
        assert_eq!(err.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
        headers.insert(header::CONTENT_LENGTH, "1000".parse().unwrap());
        let err = read_body(Full::new(Bytes::new()), &headers, 10)
            .await
            .unwrap_err();
        assert_eq!(err.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
        headers.clear();
        assert_eq!(read_body(body, &headers, 100).await.unwrap().len(), 100);
    }
}
