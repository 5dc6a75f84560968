//! Token usage as OpenAI-compatible APIs report it.
//!
//! No app dependencies: it reads JSON documents (a whole response body or the
//! data of one server-sent event) and knows the three shapes of `usage`:
//!
//! - chat/completions and completions: `usage.prompt_tokens` and
//!   `usage.completion_tokens`;
//! - embeddings: `usage.prompt_tokens` only (no output tokens);
//! - responses: `usage.input_tokens` and `usage.output_tokens`, at the top of
//!   a non-streamed response, or under `response` in the `response.completed`
//!   stream event.

use serde::de::IgnoredAny;
use serde::Deserialize;

/// Tokens consumed by one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub input_tokens: u64,
    /// Completion (output) tokens.
    pub output_tokens: u64,
}

/// What one JSON document says about usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageInfo {
    /// The usage found, if any.
    pub usage: Option<Usage>,
    /// The document is the usage-only chunk of a chat/completions stream:
    /// an empty `choices` array next to a non-null `usage`.
    pub usage_only_chunk: bool,
}

#[derive(Deserialize)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl RawUsage {
    fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens.or(self.input_tokens).unwrap_or(0),
            output_tokens: self.completion_tokens.or(self.output_tokens).unwrap_or(0),
        }
    }
}

#[derive(Deserialize)]
struct Nested {
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct Envelope {
    usage: Option<RawUsage>,
    response: Option<Nested>,
    choices: Option<Vec<IgnoredAny>>,
}

/// Reads the usage of one JSON document; `None` if it is not a JSON object
/// of a known shape.
pub fn parse(document: &[u8]) -> Option<UsageInfo> {
    let envelope: Envelope = serde_json::from_slice(document).ok()?;
    let top = envelope.usage.as_ref().map(RawUsage::usage);
    let nested = envelope
        .response
        .as_ref()
        .and_then(|r| r.usage.as_ref())
        .map(RawUsage::usage);
    let usage_only_chunk = top.is_some() && envelope.choices.is_some_and(|c| c.is_empty());
    Some(UsageInfo {
        usage: top.or(nested),
        usage_only_chunk,
    })
}

/// Whether `document` is one valid JSON value (read without building it).
pub fn is_json(document: &[u8]) -> bool {
    serde_json::from_slice::<IgnoredAny>(document).is_ok()
}

/// Cheap pre-filter: does the document have a `"usage"` key whose value is
/// not `null`? False positives only cost a parse; there are no false
/// negatives for valid JSON.
pub fn mentions_usage(document: &[u8]) -> bool {
    const KEY: &[u8] = b"\"usage\"";
    let mut rest = document;
    while let Some(at) = find(rest, KEY) {
        rest = &rest[at + KEY.len()..];
        let mut value = rest.iter().skip_while(|b| b.is_ascii_whitespace());
        if value.next() != Some(&b':') {
            continue;
        }
        match value.find(|b| !b.is_ascii_whitespace()) {
            Some(b'n') | None => continue,
            Some(_) => return true,
        }
    }
    false
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_completion_usage() {
        let doc = br#"{"id":"x","choices":[{"index":0}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;
        let info = parse(doc).unwrap();
        assert_eq!(
            info.usage,
            Some(Usage {
                input_tokens: 7,
                output_tokens: 3
            })
        );
        assert!(!info.usage_only_chunk);
    }

    #[test]
    fn usage_only_chunk() {
        let doc = br#"{"id":"x","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9}}"#;
        let info = parse(doc).unwrap();
        assert!(info.usage_only_chunk);
        assert_eq!(info.usage.unwrap().output_tokens, 9);
        let null_usage = br#"{"choices":[],"usage":null}"#;
        assert!(!parse(null_usage).unwrap().usage_only_chunk);
    }

    #[test]
    fn embeddings_have_no_output_tokens() {
        let doc = br#"{"object":"list","data":[],"usage":{"prompt_tokens":4,"total_tokens":4}}"#;
        assert_eq!(
            parse(doc).unwrap().usage,
            Some(Usage {
                input_tokens: 4,
                output_tokens: 0
            })
        );
    }

    #[test]
    fn responses_api_shapes() {
        let body = br#"{"object":"response","usage":{"input_tokens":11,"output_tokens":22}}"#;
        assert_eq!(
            parse(body).unwrap().usage,
            Some(Usage {
                input_tokens: 11,
                output_tokens: 22
            })
        );
        let event = br#"{"type":"response.completed","response":{"id":"r","usage":{"input_tokens":1,"output_tokens":2}}}"#;
        assert_eq!(
            parse(event).unwrap().usage,
            Some(Usage {
                input_tokens: 1,
                output_tokens: 2
            })
        );
    }

    #[test]
    fn prefilter() {
        assert!(mentions_usage(br#"{"usage" : {"prompt_tokens":1}}"#));
        assert!(!mentions_usage(br#"{"usage":null,"x":1}"#));
        assert!(!mentions_usage(br#"{"text":"the \"usage\" word"}"#));
        assert!(mentions_usage(
            br#"{"usage":null,"response":{"usage":{"input_tokens":1}}}"#
        ));
        assert!(parse(b"[1,2]").is_none_or(|i| i.usage.is_none()));
    }
}
