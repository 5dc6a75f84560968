//! Reading a client request: API key, body (with its size limit) and the
//! few JSON fields the proxy needs.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap};
use http_body::Body;
use http_body_util::BodyExt;
use llmlb_proto::v1::ApiKind;
use serde_json::error::Category;

use super::body::BoxError;
use crate::error::ProxyError;
use crate::json::{push_key, Members};
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

/// Checks the client's API key when one is required (the table says so, or
/// `require` is set); returns the id of the key presented.
pub fn authorize(
    table: &Table,
    headers: &HeaderMap,
    require: bool,
) -> Result<Option<String>, ProxyError> {
    if !require && !table.requires_api_key() {
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

/// Most bytes of a refused (too large) body read and thrown away after the
/// 413, so that a client still sending it reads the answer instead of a
/// reset connection (what nginx calls a lingering close).
const DRAIN_BYTES: u64 = 64 << 20;

/// Longest time spent draining a refused body.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Reads the whole body, refusing more than `limit` bytes (checked against
/// `Content-Length` first). A refused body is drained in the background
/// (bounded by [`DRAIN_BYTES`] and [`DRAIN_TIME`]).
pub async fn read_body<B>(body: B, headers: &HeaderMap, limit: usize) -> Result<Bytes, ProxyError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|len| *len > limit as u64) {
        if len <= limit as u64 + DRAIN_BYTES {
            drain(body);
        }
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let mut body = Box::pin(body);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProxyError::BodyRead(e.into().to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        len += data.len();
        if len > limit {
            drain(body);
            return Err(ProxyError::BodyTooLarge { limit });
        }
        chunks.push(data);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut whole = BytesMut::with_capacity(len);
            chunks.iter().for_each(|c| whole.extend_from_slice(c));
            whole.freeze()
        }
    })
}

/// Reads and discards what is left of a refused body, in the background.
fn drain<B>(body: B)
where
    B: Body<Data = Bytes> + Send + 'static,
{
    tokio::spawn(async move {
        let mut body = Box::pin(body);
        let mut left = DRAIN_BYTES;
        let discard = async {
            while let Some(Ok(frame)) = body.frame().await {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                match left.checked_sub(n) {
                    Some(rest) => left = rest,
                    None => break,
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
    });
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
/// `stream_options.include_usage: true` (key order kept, every other value
/// copied byte for byte). Other bodies are forwarded exactly as received.
pub fn parse(body: Bytes, kind: ApiKind) -> Result<ParsedRequest, ProxyError> {
    let members: Members<'_> = serde_json::from_slice(&body).map_err(|e| match e.classify() {
        Category::Data => ProxyError::NotAnObject,
        _ => ProxyError::InvalidJson(e.to_string()),
    })?;
    let model = match members.get("model").map(serde_json::from_str::<String>) {
        Some(Ok(model)) if !model.is_empty() => model,
        _ => return Err(ProxyError::MissingModel),
    };
    let stream = members.get("stream") == Some("true");
    let asks_usage = members
        .get("stream_options")
        .and_then(|o| serde_json::from_str::<Members<'_>>(o).ok())
        .is_some_and(|o| o.get("include_usage") == Some("true"));
    let injectable = matches!(kind, ApiKind::ChatCompletions | ApiKind::Completions);
    let strip_usage = stream && injectable && !asks_usage;
    let body = if strip_usage {
        Bytes::from(with_include_usage(&members, body.len()))
    } else {
        body
    };
    Ok(ParsedRequest {
        model,
        stream,
        strip_usage,
        body,
    })
}

/// The object of `members` with `stream_options.include_usage` set to true.
fn with_include_usage(members: &Members<'_>, len: usize) -> Vec<u8> {
    const OPTION: &[u8] = br#""include_usage":true"#;
    let mut out = Vec::with_capacity(len + 48);
    out.push(b'{');
    let mut has_options = false;
    for (i, (key, value)) in members.0.iter().enumerate() {
        let key: &str = &key.0;
        if i > 0 {
            out.push(b',');
        }
        push_key(&mut out, key);
        if key != "stream_options" {
            out.extend_from_slice(value.get().as_bytes());
            continue;
        }
        has_options = true;
        out.push(b'{');
        let options = serde_json::from_str::<Members<'_>>(value.get()).unwrap_or(Members(vec![]));
        let mut set = false;
        for (j, (key, value)) in options.0.iter().enumerate() {
            let key: &str = &key.0;
            if j > 0 {
                out.push(b',');
            }
            if key == "include_usage" {
                out.extend_from_slice(OPTION);
                set = true;
            } else {
                push_key(&mut out, key);
                out.extend_from_slice(value.get().as_bytes());
            }
        }
        if !set {
            if !options.0.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(OPTION);
        }
        out.push(b'}');
    }
    if !has_options {
        if !members.0.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(br#""stream_options":{"#);
        out.extend_from_slice(OPTION);
        out.push(b'}');
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

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
    fn numbers_are_forwarded_exactly_even_when_the_body_is_rewritten() {
        let body = r#"{"model":"m","stream":true,"n":123456789012345678901234567890,"max_tokens":18446744073709551615,"temperature":2.1123409482766507e156,"x":1e400,"stream_options":{"include_usage":false,"y":0.1000000000000000055511151231257827}}"#;
        let parsed = parse_str(body, ApiKind::ChatCompletions).unwrap();
        assert!(parsed.strip_usage);
        assert_eq!(
            std::str::from_utf8(&parsed.body).unwrap(),
            r#"{"model":"m","stream":true,"n":123456789012345678901234567890,"max_tokens":18446744073709551615,"temperature":2.1123409482766507e156,"x":1e400,"stream_options":{"include_usage":true,"y":0.1000000000000000055511151231257827}}"#
        );
        let plain = r#"{"model":"m","stream":"yes","n":1e400}"#;
        assert_eq!(
            parse_str(plain, ApiKind::ChatCompletions).unwrap().body,
            plain.as_bytes()
        );
    }

    #[test]
    fn invalid_utf8_and_trailing_garbage_are_400() {
        for body in [
            &b"{\"model\":\"m\",\"x\":\"\xff\"}"[..],
            b"{\"model\":\"m\"} x",
            b"",
        ] {
            let err = parse(Bytes::copy_from_slice(body), ApiKind::ChatCompletions).unwrap_err();
            assert_eq!(err.status(), http::StatusCode::BAD_REQUEST, "{err}");
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

    #[test]
    fn escaped_member_names_are_read() {
        let body = r#"{"mod\u0065l":"m","stream":true,"a\"b":1}"#;
        let parsed = parse_str(body, ApiKind::ChatCompletions).unwrap();
        assert_eq!(parsed.model, "m");
        assert_eq!(
            std::str::from_utf8(&parsed.body).unwrap(),
            r#"{"model":"m","stream":true,"a\"b":1,"stream_options":{"include_usage":true}}"#
        );
    }

    /// JSON values of limited depth, for property tests.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(("[a-z_]{1,8}", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_with_a_client_error(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Err(err) = parse(Bytes::from(body), ApiKind::ChatCompletions) {
                prop_assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
            }
        }

        #[test]
        fn any_request_keeps_every_field_the_proxy_does_not_own(
            model in "[^\\x00]{1,16}",
            fields in proptest::collection::vec(("[a-z_]{1,10}", json_value()), 0..6),
            stream in any::<bool>(),
            kind in prop_oneof![
                Just(ApiKind::ChatCompletions),
                Just(ApiKind::Completions),
                Just(ApiKind::Embeddings),
                Just(ApiKind::Responses),
            ],
        ) {
            let mut object: Map<String, Value> = fields
                .into_iter()
                .filter(|(k, _)| k != "model" && k != "stream" && k != "stream_options")
                .collect();
            object.insert("model".into(), Value::String(model.clone()));
            object.insert("stream".into(), Value::Bool(stream));
            let body = serde_json::to_vec(&Value::Object(object.clone())).unwrap();
            let parsed = parse(Bytes::from(body.clone()), kind).unwrap();
            prop_assert_eq!(&parsed.model, &model);
            prop_assert_eq!(parsed.stream, stream);
            let injected = stream && matches!(kind, ApiKind::ChatCompletions | ApiKind::Completions);
            prop_assert_eq!(parsed.strip_usage, injected);
            if !injected {
                prop_assert_eq!(&parsed.body[..], &body[..], "forwarded byte for byte");
            } else {
                // Compared as text: parsing it back could round floats.
                let mut expected = object;
                expected.insert("stream_options".into(), serde_json::json!({"include_usage": true}));
                let expected = serde_json::to_vec(&Value::Object(expected)).unwrap();
                prop_assert_eq!(
                    String::from_utf8_lossy(&parsed.body),
                    String::from_utf8_lossy(&expected),
                    "every other value copied as it was"
                );
            }
        }
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
