//! What the fake backend answers: models, timing, token counts and failure mode.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Behaviour of a [`FakeServer`](crate::FakeServer). Changes through
/// [`FakeServer::set_config`](crate::FakeServer::set_config) apply to the next request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeConfig {
    /// Model ids served by `GET /v1/models` and accepted in request bodies.
    pub models: Vec<String>,
    /// Delay before the response headers, on every route (including `/v1/models`).
    pub latency: Duration,
    /// Output tokens per completion, unless the request asks for another count
    /// (`max_tokens`, `max_completion_tokens`, `max_output_tokens`).
    pub tokens: u32,
    /// Delay before each streamed token. Non-streaming replies wait
    /// `tokens * token_interval` before answering, so both report the same rate.
    pub token_interval: Duration,
    /// Reported input (prompt) tokens.
    pub prompt_tokens: u32,
    /// Normal operation or an injected failure.
    pub mode: FakeMode,
    /// When set, every route requires `Authorization: Bearer <key>`, else 401.
    pub api_key: Option<String>,
    /// Habits of real servers to imitate (all off by default).
    pub habits: Habits,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            models: vec!["fake-model".to_owned()],
            latency: Duration::ZERO,
            tokens: 16,
            token_interval: Duration::ZERO,
            prompt_tokens: 8,
            mode: FakeMode::Normal,
            api_key: None,
            habits: Habits::default(),
        }
    }
}

/// Habits of real OpenAI-compatible servers that a client of them must cope
/// with, each named after a server that has it. All off by default: the
/// default fake answers like api.openai.com.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Habits {
    /// uvicorn (vLLM, SGLang, LiteLLM, every FastAPI server): a stream's
    /// `data: [DONE]` and the end of its body are separate writes. Here the
    /// end of the body follows `[DONE]` after this pause, so a client that
    /// stops reading at `[DONE]` (openai-python, LangChain) always leaves
    /// before the body ends.
    pub late_eof: Option<Duration>,
    /// LiteLLM: the streamed usage rides on a chunk whose `choices` is
    /// `[{"index":0,"delta":{}}]` instead of `[]`.
    pub usage_in_choice: bool,
    /// Servers with no `GET /v1/models` (minimal FastAPI wrappers, some
    /// embedding servers): it answers 404.
    pub no_models: bool,
    /// vLLM: each `/v1/models` entry carries `owned_by: "vllm"`, `root`,
    /// `parent`, `max_model_len` and a `permission` list.
    pub model_metadata: bool,
    /// A server that dies mid-stream (an engine crash or OOM): after this many
    /// tokens the body ends cleanly, with no `finish_reason` and no `[DONE]`.
    pub truncate_after: Option<u32>,
    /// OpenAI, LiteLLM and vLLM's rate limiting: error answers
    /// (`--mode status:429` or `status:503`) carry `Retry-After: <seconds>`.
    pub retry_after: Option<u32>,
    /// Starlette (`redirect_slashes`, on in every FastAPI server): POSTs
    /// answer `307` with an absolute `Location` naming the server's own
    /// address (`http://127.0.0.1:PORT/...`).
    pub redirect: bool,
    /// What TCP segmentation and re-chunking intermediaries (nginx buffering
    /// off, proxies) do to a stream: every SSE event is sent as two frames
    /// split in the middle of its `data:` line.
    pub split_lines: bool,
}

impl Habits {
    /// Names accepted by [`Habits::add`], for `--help` and error messages.
    pub const NAMES: &'static str = "late-eof:<duration>, usage-in-choice, no-models, \
        model-metadata, truncate:<tokens>, retry-after:<seconds>, split-lines, redirect";

    /// Turns on the habit named `spec` (one of [`Habits::NAMES`]).
    pub fn add(&mut self, spec: &str) -> Result<(), String> {
        let (name, arg) = spec.split_once(':').unwrap_or((spec, ""));
        let bad = || format!("unknown habit `{spec}` (expected {})", Self::NAMES);
        match (name, arg.is_empty()) {
            ("late-eof", false) => {
                self.late_eof = Some(humantime::parse_duration(arg).map_err(|_| bad())?);
            }
            ("usage-in-choice", true) => self.usage_in_choice = true,
            ("no-models", true) => self.no_models = true,
            ("model-metadata", true) => self.model_metadata = true,
            ("truncate", false) => self.truncate_after = Some(arg.parse().map_err(|_| bad())?),
            ("retry-after", false) => self.retry_after = Some(arg.parse().map_err(|_| bad())?),
            ("split-lines", true) => self.split_lines = true,
            ("redirect", true) => self.redirect = true,
            _ => return Err(bad()),
        }
        Ok(())
    }

    /// Habits from a list of names.
    pub fn parse<'a>(specs: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut habits = Self::default();
        for spec in specs {
            habits.add(spec)?;
        }
        Ok(habits)
    }
}

/// Injected behaviour. Textual form (for `--mode`): `normal`, `status:503`,
/// `malformed-json`, `hang`, `fail-models`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FakeMode {
    /// Answer like OpenAI.
    #[default]
    Normal,
    /// Every POST and `GET /v1/models` answers this status with an OpenAI error body.
    Status(u16),
    /// Completion routes answer 200 with a body that is not JSON (non-stream) or
    /// with SSE `data:` lines that are not JSON and no `[DONE]` (stream).
    /// `GET /v1/models` keeps answering normally so the endpoint stays routable.
    MalformedJson,
    /// Never answer, on every route, until the connection drops or the server stops.
    Hang,
    /// Only `GET /v1/models` answers 500; completions work.
    FailModels,
}

impl fmt::Display for FakeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Normal => f.write_str("normal"),
            Self::Status(code) => write!(f, "status:{code}"),
            Self::MalformedJson => f.write_str("malformed-json"),
            Self::Hang => f.write_str("hang"),
            Self::FailModels => f.write_str("fail-models"),
        }
    }
}

impl FromStr for FakeMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(Self::Normal),
            "malformed-json" => Ok(Self::MalformedJson),
            "hang" => Ok(Self::Hang),
            "fail-models" => Ok(Self::FailModels),
            other => match other.strip_prefix("status:").map(str::parse::<u16>) {
                Some(Ok(code)) if (100..=999).contains(&code) => Ok(Self::Status(code)),
                _ => Err(format!(
                    "unknown mode `{other}` (expected normal, status:<code>, malformed-json, hang, fail-models)"
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_round_trips_through_text() {
        for mode in [
            FakeMode::Normal,
            FakeMode::Status(503),
            FakeMode::MalformedJson,
            FakeMode::Hang,
            FakeMode::FailModels,
        ] {
            assert_eq!(mode.to_string().parse::<FakeMode>(), Ok(mode));
        }
        assert!("status:abc".parse::<FakeMode>().is_err());
        assert!("status:42".parse::<FakeMode>().is_err());
        assert!("broken".parse::<FakeMode>().is_err());
    }

    #[test]
    fn habits_parse_by_name() {
        let habits = Habits::parse([
            "late-eof:50ms",
            "usage-in-choice",
            "no-models",
            "model-metadata",
            "truncate:3",
            "retry-after:7",
            "split-lines",
            "redirect",
        ])
        .unwrap();
        assert_eq!(habits.late_eof, Some(Duration::from_millis(50)));
        assert_eq!(habits.truncate_after, Some(3));
        assert_eq!(habits.retry_after, Some(7));
        assert!(habits.usage_in_choice && habits.no_models && habits.model_metadata);
        assert!(habits.split_lines && habits.redirect);
        for bad in ["late-eof", "truncate:x", "no-models:1", "gzip"] {
            assert!(Habits::parse([bad]).is_err(), "{bad}");
        }
    }
}
