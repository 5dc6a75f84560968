//! One upstream attempt and its stats record.
//!
//! An [`Attempt`] is created when the proxy picks an endpoint and emits
//! exactly one [`RequestRecord`] when it ends: when its body was relayed to
//! the end (success if the upstream answered 2xx), when it failed (connect
//! error, timeout, 5xx retried elsewhere, upstream body error), or when it is
//! dropped unfinished because the client went away (failure). It also holds
//! the endpoint's in-flight count for its whole life.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use llmlb_proto::v1::{ApiKind, RequestRecord};
use tracing::{debug, debug_span, warn, Span};
use uuid::Uuid;

use crate::breaker::Outcome;
use crate::loads::InflightGuard;
use crate::metrics::Metrics;
use crate::routing::Endpoint;
use crate::stats::StatsSink;
use crate::usage::Usage;

/// What the client asked, shared by every attempt of one request.
#[derive(Debug)]
pub struct RequestInfo {
    /// Proxy identity.
    pub proxy_id: Arc<str>,
    /// Model requested.
    pub model: String,
    /// API used.
    pub api_kind: ApiKind,
    /// Client API key id, if one was presented.
    pub api_key_id: Option<String>,
    /// When the proxy received the request.
    pub received: Instant,
}

/// Where finished attempts report.
#[derive(Clone, Debug)]
pub struct Reporter {
    /// Stats records for the control plane.
    pub stats: StatsSink,
    /// Prometheus metrics.
    pub metrics: Metrics,
}

/// One upstream attempt; see the module documentation.
#[derive(Debug)]
pub struct Attempt {
    /// `None` once the record was emitted.
    state: Option<State>,
    /// Span of the attempt (`endpoint_id`, `request_id`).
    span: Span,
}

#[derive(Debug)]
struct State {
    request_id: Uuid,
    request: Arc<RequestInfo>,
    endpoint: Arc<Endpoint>,
    status: Option<u16>,
    /// The upstream's `Retry-After`, for the circuit breaker.
    retry_after: Option<Duration>,
    ttft: Option<Duration>,
    usage: Usage,
    reporter: Reporter,
    _inflight: InflightGuard,
}

impl Attempt {
    /// Starts an attempt on `endpoint`, counting it in flight.
    pub fn start(
        request: Arc<RequestInfo>,
        endpoint: Arc<Endpoint>,
        inflight: InflightGuard,
        reporter: Reporter,
    ) -> Self {
        let request_id = request_id(SystemTime::now());
        // Per-request spans are debug-level: building an info span on every
        // request cost ~10% of the proxy CPU at saturation (docs/benchmarks.md).
        let span = debug_span!("attempt", endpoint_id = %endpoint.id, request_id = %request_id);
        Self {
            state: Some(State {
                request_id,
                request,
                endpoint,
                status: None,
                retry_after: None,
                ttft: None,
                usage: Usage::default(),
                reporter,
                _inflight: inflight,
            }),
            span,
        }
    }

    /// The attempt's span.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The upstream answered with `status`.
    pub fn set_status(&mut self, status: u16) {
        if let Some(state) = &mut self.state {
            state.status = Some(status);
        }
    }

    /// The upstream said when to come back (`Retry-After`).
    pub fn set_retry_after(&mut self, retry_after: Option<Duration>) {
        if let Some(state) = &mut self.state {
            state.retry_after = retry_after;
        }
    }

    /// The upstream's status, once it answered (and until the record is
    /// emitted).
    pub fn status(&self) -> Option<u16> {
        self.state.as_ref().and_then(|s| s.status)
    }

    /// The first body byte is being relayed now.
    pub fn first_byte(&mut self) {
        if let Some(state) = &mut self.state {
            state
                .ttft
                .get_or_insert_with(|| state.request.received.elapsed());
        }
    }

    /// Usage reported by the upstream.
    pub fn set_usage(&mut self, usage: Usage) {
        if let Some(state) = &mut self.state {
            state.usage = usage;
        }
    }

    /// Whether the record was emitted.
    pub fn is_finished(&self) -> bool {
        self.state.is_none()
    }

    /// The body was relayed to its end: emits the record (success if 2xx).
    pub fn complete(&mut self) {
        self.finish(None, false);
    }

    /// The attempt failed: emits the record with `error`.
    pub fn fail(&mut self, error: impl Into<String>) {
        self.finish(Some(error.into()), false);
    }

    /// Emits the record; `client_gone` failures are the client's doing and
    /// logged at debug level only.
    fn finish(&mut self, error: Option<String>, client_gone: bool) {
        let Some(state) = self.state.take() else {
            return;
        };
        let _entered = self.span.enter();
        let duration = state.request.received.elapsed();
        let ok_status = state.status.is_some_and(|s| (200..300).contains(&s));
        let error = match (error, state.status) {
            (Some(error), _) => Some(error),
            (None, Some(status)) if !ok_status => Some(format!("upstream answered {status}")),
            (None, _) => None,
        };
        let success = ok_status && error.is_none();
        let outcome = breaker_outcome(success, client_gone, state.status, state.retry_after);
        state.endpoint.load.breaker.record(outcome, Instant::now());
        if let Outcome::Failure { .. } = outcome {
            state.reporter.metrics.cooldown_started(&state.endpoint.id);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let request = &state.request;
        if let (Some(error), false) = (&error, client_gone) {
            warn!(endpoint_id = %state.endpoint.id, status = state.status, duration_ms = ms(duration), %error, "upstream attempt failed");
        } else {
            debug!(
                status = state.status,
                duration_ms = ms(duration),
                ttft_ms = state.ttft.map(ms),
                input_tokens = state.usage.input_tokens,
                output_tokens = state.usage.output_tokens,
                error = error.as_deref(),
                "upstream attempt done"
            );
        }
        state.reporter.metrics.attempt(
            &state.endpoint.id,
            &request.model,
            state.status,
            duration,
            state.ttft,
        );
        state.reporter.stats.push(RequestRecord {
            request_id: state.request_id.to_string(),
            proxy_id: String::from(&*request.proxy_id),
            endpoint_id: state.endpoint.id.clone(),
            model: request.model.clone(),
            api_kind: request.api_kind as i32,
            status_code: state.status.map_or(0, u32::from),
            success,
            duration_ms: ms(duration),
            ttft_ms: state.ttft.map(ms),
            input_tokens: state.usage.input_tokens,
            output_tokens: state.usage.output_tokens,
            completed_at: Some(timestamp(SystemTime::now())),
            error,
            api_key_id: request.api_key_id.clone(),
        });
    }
}

/// What an attempt says about its endpoint: a client's own 4xx (not 429 or
/// 408) and a client that left say nothing.
fn breaker_outcome(
    success: bool,
    client_gone: bool,
    status: Option<u16>,
    retry_after: Option<Duration>,
) -> Outcome {
    match status {
        _ if success => Outcome::Success,
        _ if client_gone => Outcome::Neutral,
        Some(status) if (400..500).contains(&status) && status != 429 && status != 408 => {
            Outcome::Neutral
        }
        _ => Outcome::Failure { retry_after },
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.state.is_some() {
            let during = match self.state.as_ref().and_then(|s| s.status) {
                Some(_) => "client went away before the response body ended",
                None => "client went away before the upstream answered",
            };
            self.finish(Some(during.to_owned()), true);
        }
    }
}

/// A UUIDv7 for an attempt starting at `now`: the Unix time in milliseconds
/// and 74 random bits from the thread-local generator. (`Uuid::now_v7` takes
/// a process-wide lock and asks the kernel for randomness on every call:
/// 3 % of the proxy's CPU at saturation.) Ids of one millisecond are not
/// ordered among themselves; nothing relies on that.
fn request_id(now: SystemTime) -> Uuid {
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    uuid::Builder::from_unix_timestamp_millis(millis, &rand::random()).into_uuid()
}

fn timestamp(time: SystemTime) -> pbjson_types::Timestamp {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn request_ids_are_v7_unique_and_carry_the_time() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let ids: std::collections::HashSet<Uuid> = (0..1000).map(|_| request_id(at)).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
            assert_eq!((secs, nanos), (1_700_000_000, 123_000_000));
        }
    }
}
