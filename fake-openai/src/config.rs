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
        }
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
}
