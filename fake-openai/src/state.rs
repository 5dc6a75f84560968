//! State shared by the [`FakeServer`](crate::FakeServer) handle and its
//! connection tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde_json::Value;

use crate::config::FakeConfig;
use crate::openai;

/// The last POST received on `/v1/*` (other than `/v1/models`).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// Request path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Value of the `authorization` header, if any.
    pub authorization: Option<String>,
    /// The body parsed as JSON; a body that is not JSON is kept as a string
    /// (lossy UTF-8), an empty one is `null`.
    pub body: Value,
}

/// A request as stored on the hot path; the body is parsed only when asked for.
pub(crate) struct RawRequest {
    path: String,
    authorization: Option<String>,
    body: Bytes,
}

impl RawRequest {
    fn decode(&self) -> RecordedRequest {
        let body = if self.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
        };
        RecordedRequest {
            path: self.path.clone(),
            authorization: self.authorization.clone(),
            body,
        }
    }
}

/// A [`FakeConfig`] with what every request derives from it computed once.
pub(crate) struct Active {
    pub(crate) config: FakeConfig,
    /// JSON-encoded (quoted, escaped) form of each model id, aligned with `config.models`.
    models_json: Vec<String>,
    /// The `GET /v1/models` reply.
    pub(crate) models_body: Bytes,
    /// The `authorization` header value required, if any.
    bearer: Option<String>,
}

impl Active {
    fn new(config: FakeConfig) -> Self {
        let models_json = config
            .models
            .iter()
            .map(|m| serde_json::Value::from(m.as_str()).to_string())
            .collect();
        let models_body = openai::models_list(&config.models, config.habits.model_metadata);
        let bearer = config.api_key.as_ref().map(|key| format!("Bearer {key}"));
        Self {
            config,
            models_json,
            models_body,
            bearer,
        }
    }

    /// JSON-encoded id of `model` if it is served.
    pub(crate) fn model_json(&self, model: &str) -> Option<&str> {
        let index = self.config.models.iter().position(|m| m == model)?;
        Some(&self.models_json[index])
    }

    /// Whether a request with this `authorization` header may proceed.
    pub(crate) fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        match &self.bearer {
            None => true,
            Some(expected) => authorization == Some(expected.as_bytes()),
        }
    }
}

pub(crate) struct Shared {
    /// The behaviour in force; replaced whole by `set_config` / `set_mode`.
    active: RwLock<Arc<Active>>,
    /// POST requests received on `/v1/*` other than `/v1/models`.
    requests: AtomicU64,
    /// `GET /v1/models` requests received.
    model_requests: AtomicU64,
    /// The last POST counted in `requests`.
    last: Mutex<Option<RawRequest>>,
    /// Source of reply ids (`chatcmpl-N`, `resp_N`, ...).
    next_id: AtomicU64,
    /// Requests being answered: from their arrival until their response
    /// body ends or is dropped (a client that goes away drops it).
    in_flight: Arc<AtomicU64>,
}

/// Counts one request in [`Shared::in_flight`] until dropped.
pub(crate) struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    pub(crate) fn new(config: FakeConfig) -> Self {
        Self {
            active: RwLock::new(Arc::new(Active::new(config))),
            requests: AtomicU64::new(0),
            model_requests: AtomicU64::new(0),
            last: Mutex::new(None),
            next_id: AtomicU64::new(1),
            in_flight: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub(crate) fn start_request(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.in_flight.clone())
    }

    /// Requests being answered now.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn active(&self) -> Arc<Active> {
        self.active.read().clone()
    }

    pub(crate) fn set_config(&self, config: FakeConfig) {
        *self.active.write() = Arc::new(Active::new(config));
    }

    pub(crate) fn update_config(&self, update: impl FnOnce(&mut FakeConfig)) {
        let mut active = self.active.write();
        let mut config = active.config.clone();
        update(&mut config);
        *active = Arc::new(Active::new(config));
    }

    pub(crate) fn record_post(&self, path: &str, authorization: Option<String>, body: Bytes) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *self.last.lock() = Some(RawRequest {
            path: path.to_owned(),
            authorization,
            body,
        });
    }

    pub(crate) fn record_models(&self) {
        self.model_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn model_requests(&self) -> u64 {
        self.model_requests.load(Ordering::Relaxed)
    }

    pub(crate) fn last_request(&self) -> Option<RecordedRequest> {
        self.last.lock().as_ref().map(RawRequest::decode)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}
