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
//!
//! A count over [`MAX_TOKENS`] (2^40) is not a token count but a broken or
//! hostile server (`prompt_tokens: 9223372036854775807` has been seen): it
//! reads as 0, so no stats record carries it. The control plane applies the
//! same bound to every record it receives.

use serde::de::IgnoredAny;
use serde::Deserialize;

use serde_json::value::RawValue;

use crate::json::{push_key, Members};

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

/// Most tokens one count may say (2^40, about 1.1e12); larger counts read
/// as 0. The same bound as the control plane's `MAX_TOKENS_PER_RECORD`.
pub const MAX_TOKENS: u64 = 1 << 40;

fn bounded(count: Option<u64>) -> u64 {
    count.filter(|n| *n <= MAX_TOKENS).unwrap_or(0)
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
            input_tokens: bounded(self.prompt_tokens.or(self.input_tokens)),
            output_tokens: bounded(self.completion_tokens.or(self.output_tokens)),
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
    // serde_json does not check the UTF-8 of strings it skips.
    std::str::from_utf8(document).ok()?;
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

/// Whether `document` is one valid JSON value in UTF-8 (read without
/// building it; serde_json does not check the UTF-8 of strings it skips).
pub fn is_json(document: &[u8]) -> bool {
    std::str::from_utf8(document).is_ok() && serde_json::from_slice::<IgnoredAny>(document).is_ok()
}

/// Cheap pre-filter: does the document mention a `"usage"` key at all?
pub fn mentions_usage_key(document: &[u8]) -> bool {
    find(document, b"\"usage\"").is_some()
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
    memchr::memmem::find(haystack, needle)
}

/// What to do with one event of a stream whose usage the proxy asked for and
/// the client did not.
#[derive(Debug, PartialEq, Eq)]
pub enum Strip {
    /// The event carries no usage: forward it as it is.
    Keep,
    /// The event exists only for its usage (`choices` empty or absent): drop it.
    Drop,
    /// Forward this document instead: the same members in the same order,
    /// each value byte for byte, without `usage`.
    Rewrite(Vec<u8>),
}

/// Removes the `usage` member of one event's JSON data, wherever the server
/// put it: OpenAI sends it on a chunk of its own (`"choices":[]`) and
/// `"usage":null` on every other chunk, LiteLLM on a chunk that also
/// carries a choice. The client did not ask, so it sees none of them.
pub fn strip(document: &[u8]) -> Strip {
    let Ok(members) = serde_json::from_slice::<Members<'_>>(document) else {
        return Strip::Keep;
    };
    let carries_usage = match members.get("usage") {
        None => return Strip::Keep,
        Some(usage) => usage != "null",
    };
    // A chunk with `"usage":null` was not made for the usage: it stays.
    if carries_usage && members.get("choices").is_none_or(choices_say_nothing) {
        return Strip::Drop;
    }
    let mut out = Vec::with_capacity(document.len());
    out.push(b'{');
    for (key, value) in members.0.iter().filter(|(k, _)| k.0 != "usage") {
        if out.len() > 1 {
            out.push(b',');
        }
        push_key(&mut out, &key.0);
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    Strip::Rewrite(out)
}

/// Whether a `choices` array carries nothing but indexes: empty, or only
/// choices whose other members are `null`, `""`, or a `delta` of such
/// (LiteLLM's usage chunk carries `[{"index":0,"delta":{}}]`, its
/// completions one `[{"index":0}]`: without the usage, nothing is left).
fn choices_say_nothing(choices: &str) -> bool {
    let Ok(choices) = serde_json::from_str::<Vec<&RawValue>>(choices) else {
        return false;
    };
    choices.iter().all(|choice| {
        let Ok(members) = serde_json::from_str::<Members<'_>>(choice.get()) else {
            return false;
        };
        members
            .0
            .iter()
            .all(|(key, value)| match (&*key.0, value.get().trim()) {
                ("index", _) | (_, "null" | "\"\"") => true,
                ("delta", delta) => serde_json::from_str::<Members<'_>>(delta).is_ok_and(|d| {
                    d.0.iter()
                        .all(|(_, v)| matches!(v.get().trim(), "null" | "\"\""))
                }),
                _ => false,
            })
    })
}

/// The usage of a document too large to keep whole, from its last bytes:
/// the last `"usage"` member whose value is an object. OpenAI-compatible
/// servers put `usage` at the end of chat, completions, embeddings and
/// responses bodies. Inside a JSON string every quote is escaped, so the
/// bytes `"usage"` followed by `:` can only be a member name.
pub fn find_in_tail(tail: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    let finder = memchr::memmem::FinderRev::new(KEY);
    let mut end = tail.len();
    while let Some(at) = finder.rfind(&tail[..end]) {
        end = at;
        let rest = &tail[at + KEY.len()..];
        let Some(colon) = rest.iter().position(|b| !b.is_ascii_whitespace()) else {
            continue;
        };
        if rest[colon] != b':' {
            continue;
        }
        let value = &rest[colon + 1..];
        let Some(open) = value.iter().position(|b| !b.is_ascii_whitespace()) else {
            continue;
        };
        if value[open] != b'{' {
            continue;
        }
        let mut values =
            serde_json::Deserializer::from_slice(&value[open..]).into_iter::<RawUsage>();
        if let Some(Ok(raw)) = values.next() {
            return Some(raw.usage());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_drops_usage_only_chunks_and_rewrites_the_others() {
        let openai =
            br#"{"id":"c","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9}}"#;
        assert_eq!(strip(openai), Strip::Drop);
        let bare = br#"{"id":"c","usage":{"prompt_tokens":5,"completion_tokens":9}}"#;
        assert_eq!(strip(bare), Strip::Drop);
        // LiteLLM's usage chunks: without the usage nothing is left.
        for empty in [
            &br#"{"id":"c","choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":5}}"#[..],
            br#"{"id":"c","choices":[{"index":0}],"usage":{"prompt_tokens":5}}"#,
            br#"{"id":"c","choices":[{"index":0,"text":"","finish_reason":null,"delta":{"content":null}}],"usage":{}}"#,
        ] {
            assert_eq!(strip(empty), Strip::Drop, "{}", String::from_utf8_lossy(empty));
        }
        // Usage on a chunk that also carries a choice with something in it.
        let litellm = br#"{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"x":1.10,"usage":{"prompt_tokens":5},"model":"m"}"#;
        let Strip::Rewrite(out) = strip(litellm) else {
            panic!("not rewritten")
        };
        assert_eq!(
            out,
            br#"{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"x":1.10,"model":"m"}"#
        );
        let null = br#"{"id":"c","choices":[{"index":0}],"usage":null}"#;
        assert_eq!(
            strip(null),
            Strip::Rewrite(br#"{"id":"c","choices":[{"index":0}]}"#.to_vec())
        );
        for keep in [&br#"{"id":"c","choices":[{"index":0}]}"#[..], b"not json"] {
            assert_eq!(strip(keep), Strip::Keep);
        }
    }

    #[test]
    fn usage_is_found_in_the_tail_of_a_large_document() {
        let tail = br#"0.5,0.25]}],"model":"m","usage" : {"prompt_tokens":12,"total_tokens":12}}"#;
        assert_eq!(
            find_in_tail(tail),
            Some(Usage {
                input_tokens: 12,
                output_tokens: 0
            })
        );
        // A quoted "usage" inside a string is escaped, and a string value
        // "usage" is not followed by a colon.
        let decoys =
            br#"{"content":"say "usage": {1}","x":"usage","usage":{"completion_tokens":3}}"#;
        assert_eq!(find_in_tail(decoys).map(|u| u.output_tokens), Some(3));
        assert_eq!(find_in_tail(br#"{"a":"usage"}"#), None);
        assert_eq!(find_in_tail(br#"sage":{"prompt_tokens":1}}"#), None);
    }

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

    /// Absurd counts (over 2^40) read as 0; the bound itself is kept.
    #[test]
    fn absurd_token_counts_read_as_zero() {
        let doc = br#"{"choices":[],"usage":{"prompt_tokens":9223372036854775807,"completion_tokens":1099511627776}}"#;
        assert_eq!(
            parse(doc).unwrap().usage,
            Some(Usage {
                input_tokens: 0,
                output_tokens: MAX_TOKENS
            })
        );
        let doc = br#"{"usage":{"input_tokens":1099511627777,"output_tokens":5}}"#;
        assert_eq!(
            parse(doc).unwrap().usage,
            Some(Usage {
                input_tokens: 0,
                output_tokens: 5
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
