//! OpenAI wire shapes: request fields the fake reads, and the JSON / SSE payloads
//! it writes. Payloads are formatted by hand (not through `serde_json::Value`)
//! because this sits on the benchmark hot path; `model` is always passed
//! already JSON-encoded (quoted and escaped).

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

/// Text of one generated token, as streamed in each delta.
pub(crate) const TOKEN: &str = "tok ";

/// Every embedding vector: 8 floats.
const EMBEDDING: &str = "0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0";

// === Requests ===

/// Fields of chat, completions and responses requests that change the reply.
#[derive(Debug, Deserialize)]
pub(crate) struct GenerateRequest<'a> {
    #[serde(borrow, default)]
    pub(crate) model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) stream: Option<bool>,
    #[serde(default)]
    pub(crate) stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub(crate) max_tokens: Option<u32>,
    #[serde(default)]
    pub(crate) max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub(crate) max_output_tokens: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EmbeddingsRequest<'a> {
    #[serde(borrow, default)]
    pub(crate) model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) input: Option<Value>,
}

impl EmbeddingsRequest<'_> {
    /// One embedding per input: an array of strings or of token arrays holds
    /// several inputs; a string or a single token array is one.
    pub(crate) fn input_count(&self) -> usize {
        match &self.input {
            Some(Value::Array(items)) if items.first().is_some_and(|v| !v.is_number()) => {
                items.len()
            }
            _ => 1,
        }
    }
}

// === Errors ===

/// `{"error":{"message":..,"type":..,"param":null,"code":..}}`.
pub(crate) fn error_body(message: &str, kind: &str, code: Option<&str>) -> Bytes {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    Bytes::from(body.to_string())
}

// === Models ===

/// `GET /v1/models` reply for `models`; with `vllm_metadata`, each entry is
/// shaped like vLLM's (`owned_by`, `root`, `parent`, `max_model_len`,
/// `permission`).
pub(crate) fn models_list(models: &[String], vllm_metadata: bool) -> Bytes {
    let data: Vec<Value> = models
        .iter()
        .map(|id| {
            if vllm_metadata {
                serde_json::json!({
                    "id": id, "object": "model", "created": 1_733_000_000, "owned_by": "vllm",
                    "root": format!("/models/{id}"), "parent": null, "max_model_len": 32768,
                    "permission": [{"id": "modelperm-1", "object": "model_permission",
                        "allow_sampling": true, "allow_logprobs": true}],
                })
            } else {
                serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "fake"})
            }
        })
        .collect();
    Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
}

// === Shared pieces ===

/// Identity of one reply, shared by all of its chunks.
pub(crate) struct Reply<'a> {
    pub(crate) id: u64,
    pub(crate) created: u64,
    /// JSON-encoded model id.
    pub(crate) model: &'a str,
    pub(crate) prompt_tokens: u32,
    pub(crate) completion_tokens: u32,
}

impl Reply<'_> {
    fn total_tokens(&self) -> u64 {
        u64::from(self.prompt_tokens) + u64::from(self.completion_tokens)
    }

    /// `"usage":{..}` in the chat / completions shape.
    fn chat_usage(&self) -> String {
        format!(
            r#""usage":{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{}}}"#,
            self.prompt_tokens,
            self.completion_tokens,
            self.total_tokens()
        )
    }

    /// `{"id":..,"object":..,"created":..,"model":..,` (open object).
    fn envelope(&self, id_prefix: &str, object: &str) -> String {
        format!(
            r#"{{"id":"{id_prefix}{}","object":"{object}","created":{},"model":{},"#,
            self.id, self.created, self.model
        )
    }
}

/// The whole generated text, tokens separated by spaces.
fn content(tokens: u32) -> String {
    TOKEN.repeat(tokens as usize).trim_end().to_owned()
}

fn sse_data(json: &str) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}

fn sse_event(event: &str, json: &str) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {json}\n\n"))
}

/// The end of an OpenAI chat / completions stream.
pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";

/// Frames of a chat or completions stream: the repeated token chunk and the tail
/// (finish chunk, optional usage chunk, `[DONE]`).
pub(crate) struct StreamFrames {
    pub(crate) token: Bytes,
    pub(crate) tail: Vec<Bytes>,
}

// === Chat completions ===

pub(crate) fn chat_completion(r: &Reply<'_>) -> Bytes {
    Bytes::from(format!(
        r#"{}"choices":[{{"index":0,"message":{{"role":"assistant","content":"{}"}},"logprobs":null,"finish_reason":"stop"}}],{}}}"#,
        r.envelope("chatcmpl-", "chat.completion"),
        content(r.completion_tokens),
        r.chat_usage()
    ))
}

/// Like OpenAI, every chunk carries `"usage":null` when usage was requested, and
/// the usage chunk has `"choices":[]`.
/// With `usage_in_choice` (LiteLLM's habit) the usage chunk carries one empty
/// choice instead of none.
pub(crate) fn chat_stream(
    r: &Reply<'_>,
    include_usage: bool,
    usage_in_choice: bool,
) -> StreamFrames {
    let env = r.envelope("chatcmpl-", "chat.completion.chunk");
    let null_usage = if include_usage {
        r#","usage":null"#
    } else {
        ""
    };
    let token = format!(
        r#"{env}"choices":[{{"index":0,"delta":{{"content":"{TOKEN}"}},"logprobs":null,"finish_reason":null}}]{null_usage}}}"#
    );
    let finish = format!(
        r#"{env}"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}]{null_usage}}}"#
    );
    let usage_choices = if usage_in_choice {
        r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":null}]"#
    } else {
        "[]"
    };
    stream_frames(
        r,
        &env,
        &token,
        &finish,
        include_usage.then_some(usage_choices),
    )
}

// === Completions ===

pub(crate) fn completion(r: &Reply<'_>) -> Bytes {
    Bytes::from(format!(
        r#"{}"choices":[{{"text":"{}","index":0,"logprobs":null,"finish_reason":"stop"}}],{}}}"#,
        r.envelope("cmpl-", "text_completion"),
        content(r.completion_tokens),
        r.chat_usage()
    ))
}

pub(crate) fn completion_stream(
    r: &Reply<'_>,
    include_usage: bool,
    usage_in_choice: bool,
) -> StreamFrames {
    let env = r.envelope("cmpl-", "text_completion");
    let null_usage = if include_usage {
        r#","usage":null"#
    } else {
        ""
    };
    let token = format!(
        r#"{env}"choices":[{{"text":"{TOKEN}","index":0,"logprobs":null,"finish_reason":null}}]{null_usage}}}"#
    );
    let finish = format!(
        r#"{env}"choices":[{{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}}]{null_usage}}}"#
    );
    let usage_choices = if usage_in_choice {
        r#"[{"text":"","index":0,"logprobs":null,"finish_reason":null}]"#
    } else {
        "[]"
    };
    stream_frames(
        r,
        &env,
        &token,
        &finish,
        include_usage.then_some(usage_choices),
    )
}

fn stream_frames(
    r: &Reply<'_>,
    env: &str,
    token: &str,
    finish: &str,
    usage_choices: Option<&str>,
) -> StreamFrames {
    let mut tail = Vec::with_capacity(3);
    tail.push(sse_data(finish));
    if let Some(choices) = usage_choices {
        tail.push(sse_data(&format!(
            r#"{env}"choices":{choices},{}}}"#,
            r.chat_usage()
        )));
    }
    tail.push(Bytes::from_static(DONE));
    StreamFrames {
        token: sse_data(token),
        tail,
    }
}

// === Embeddings ===

pub(crate) fn embeddings(model: &str, inputs: usize, prompt_tokens: u32) -> Bytes {
    let data: Vec<String> = (0..inputs)
        .map(|i| format!(r#"{{"object":"embedding","index":{i},"embedding":[{EMBEDDING}]}}"#))
        .collect();
    Bytes::from(format!(
        r#"{{"object":"list","data":[{}],"model":{model},"usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{prompt_tokens}}}}}"#,
        data.join(",")
    ))
}

// === Responses ===

/// A `response` object; `completed` adds the output message and usage.
fn response_object(r: &Reply<'_>, completed: bool) -> String {
    let head = format!(
        r#"{{"id":"resp_{}","object":"response","created_at":{},"model":{},"#,
        r.id, r.created, r.model
    );
    if !completed {
        return format!(r#"{head}"status":"in_progress","output":[],"usage":null}}"#);
    }
    format!(
        r#"{head}"status":"completed","output":[{{"type":"message","id":"msg_{}","status":"completed","role":"assistant","content":[{{"type":"output_text","text":"{}","annotations":[]}}]}}],"usage":{{"input_tokens":{},"output_tokens":{},"total_tokens":{}}}}}"#,
        r.id,
        content(r.completion_tokens),
        r.prompt_tokens,
        r.completion_tokens,
        r.total_tokens()
    )
}

pub(crate) fn response(r: &Reply<'_>) -> Bytes {
    Bytes::from(response_object(r, true))
}

/// Frames of a Responses API stream: `response.created`, the repeated
/// `response.output_text.delta`, `response.completed` (with usage). The
/// Responses API sends no `[DONE]`.
pub(crate) fn response_stream(r: &Reply<'_>) -> (Bytes, Bytes, Bytes) {
    let created = format!(
        r#"{{"type":"response.created","response":{}}}"#,
        response_object(r, false)
    );
    let delta = format!(
        r#"{{"type":"response.output_text.delta","item_id":"msg_{}","output_index":0,"content_index":0,"delta":"{TOKEN}"}}"#,
        r.id
    );
    let completed = format!(
        r#"{{"type":"response.completed","response":{}}}"#,
        response_object(r, true)
    );
    (
        sse_event("response.created", &created),
        sse_event("response.output_text.delta", &delta),
        sse_event("response.completed", &completed),
    )
}

// === Malformed ===

/// A 200 body that is not JSON.
pub(crate) const MALFORMED_JSON: &[u8] =
    br#"{"id":"chatcmpl-malformed","object":"chat.completion","choices":[{"#;

/// SSE lines whose data is not JSON, and no terminator.
pub(crate) const MALFORMED_SSE: &[&[u8]] = &[
    b"data: {\"id\":\"chatcmpl-malformed\",\"choices\":[{\n\n",
    b"data: this is not json\n\n",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(model: &str) -> (String, u32) {
        (serde_json::to_string(model).unwrap(), 3)
    }

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    fn sse_json(frame: &Bytes) -> Value {
        let text = std::str::from_utf8(frame).unwrap();
        let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        serde_json::from_str(data).unwrap()
    }

    #[test]
    fn payloads_are_valid_json_even_with_odd_model_names() {
        let (model, n) = reply("we\"ird\\model\n");
        let r = Reply {
            id: 7,
            created: 1,
            model: &model,
            prompt_tokens: 5,
            completion_tokens: n,
        };
        let chat = parse(&chat_completion(&r));
        assert_eq!(chat["model"], "we\"ird\\model\n");
        assert_eq!(chat["choices"][0]["message"]["content"], "tok tok tok");
        assert_eq!(chat["usage"]["total_tokens"], 8);
        let cmpl = parse(&completion(&r));
        assert_eq!(cmpl["choices"][0]["text"], "tok tok tok");
        let resp = parse(&response(&r));
        assert_eq!(resp["usage"]["output_tokens"], 3);
        assert_eq!(resp["output"][0]["content"][0]["text"], "tok tok tok");
        let emb = parse(&embeddings(&model, 2, 5));
        assert_eq!(emb["data"].as_array().unwrap().len(), 2);
        assert_eq!(emb["data"][1]["embedding"].as_array().unwrap().len(), 8);

        for include_usage in [false, true] {
            for frames in [
                chat_stream(&r, include_usage, false),
                completion_stream(&r, include_usage, false),
            ] {
                let token = sse_json(&frames.token);
                assert_eq!(token.get("usage").is_some(), include_usage);
                for frame in &frames.tail[..frames.tail.len() - 1] {
                    sse_json(frame);
                }
                assert_eq!(frames.tail.last().unwrap().as_ref(), DONE);
            }
        }
        let (created, delta, completed) = response_stream(&r);
        assert_eq!(sse_json(&created)["response"]["status"], "in_progress");
        assert_eq!(sse_json(&delta)["delta"], TOKEN);
        assert_eq!(sse_json(&completed)["response"]["usage"]["input_tokens"], 5);
    }

    #[test]
    fn malformed_payloads_do_not_parse() {
        assert!(serde_json::from_slice::<Value>(MALFORMED_JSON).is_err());
    }

    #[test]
    fn embedding_input_count() {
        let count = |body: &str| {
            serde_json::from_str::<EmbeddingsRequest<'_>>(body)
                .unwrap()
                .input_count()
        };
        assert_eq!(count(r#"{"input":"a"}"#), 1);
        assert_eq!(count(r#"{"input":["a","b","c"]}"#), 3);
        assert_eq!(count(r#"{"input":[1,2,3]}"#), 1);
        assert_eq!(count(r#"{"input":[[1],[2]]}"#), 2);
    }
}
