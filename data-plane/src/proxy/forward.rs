//! Sending a request upstream, with failover.
//!
//! Up to [`MAX_ATTEMPTS`] attempts, each on an endpoint not tried yet for
//! this request (picked by power of two choices over peak-EWMA cost among the
//! endpoints not cooling down, see [`crate::breaker`]), while nothing has
//! reached the client. An attempt fails over when it cannot connect, when
//! anything else goes wrong before the response headers (including the
//! `--upstream-timeout`), or when the upstream answers 5xx or 429 and
//! another endpoint is left to try. An error answer or a failed connect
//! starts the endpoint's cool-down (its `Retry-After` when it sent one)
//! instead of giving the balancer a latency sample. Every attempt emits its
//! own stats record.
//!
//! When no attempt is left: if the last attempt got a 5xx or 429 answer, that
//! answer is relayed to the client as it is (the upstream's own error body
//! and `Retry-After` are the most useful things to show); if the last attempt
//! got no answer, the client gets 502 `upstream_unreachable` with the last
//! error.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri,
};
use http_body_util::Full;
use hyper::body::Incoming;
use tracing::Instrument;

use super::attempt::{Attempt, RequestInfo};
use super::relay::{Mode, RelayBody};
use super::request::ParsedRequest;
use super::{body::ProxyBody, error_chain, App};
use crate::error::ProxyError;
use crate::metrics::InflightRequest;
use crate::routing::Endpoint;
use crate::{balance, breaker};

/// Most attempts for one request (the first and two failovers).
pub const MAX_ATTEMPTS: usize = 3;

/// Client headers forwarded upstream (plus every `openai-*` header).
const FORWARDED: [HeaderName; 3] = [header::CONTENT_TYPE, header::ACCEPT, header::USER_AGENT];

/// Hop-by-hop headers, never relayed in either direction (as `HeaderName`s:
/// removing by `&str` parses the name again on every call).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// One client request ready to go upstream.
pub struct Forward {
    /// Method, URI and headers of the client request.
    pub parts: Parts,
    /// The parsed body.
    pub parsed: ParsedRequest,
    /// What every attempt's record says about the request.
    pub info: Arc<RequestInfo>,
    /// Routable endpoints serving the model.
    pub candidates: Vec<Arc<Endpoint>>,
    /// Keeps the request counted in flight.
    pub inflight: InflightRequest,
}

impl App {
    /// Runs the attempts; see the module documentation.
    pub(super) async fn forward(
        &self,
        forward: Forward,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Forward {
            parts,
            parsed,
            info,
            mut candidates,
            inflight,
        } = forward;
        let mut last_error = String::from("no endpoint tried");
        for attempt_no in 1..=MAX_ATTEMPTS {
            let now = Instant::now();
            let Some(index) = pick(&candidates, now) else {
                break;
            };
            let endpoint = candidates.swap_remove(index);
            endpoint.load.breaker.attempt(now);
            let last_chance = attempt_no == MAX_ATTEMPTS || candidates.is_empty();
            let mut attempt = Attempt::start(
                info.clone(),
                endpoint.clone(),
                self.loads.start(&endpoint.id),
                self.reporter.clone(),
            );
            let request = upstream_request(&endpoint, &parts, parsed.body.clone());
            let started = Instant::now();
            let sent = tokio::time::timeout(self.upstream_timeout, self.client.request(request))
                .instrument(attempt.span().clone())
                .await;
            match sent {
                Ok(Ok(response)) => {
                    let status = response.status();
                    let retryable =
                        status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                    // An error answer, however fast, is no latency sample:
                    // it would make the endpoint look cheap to the balancer.
                    // The breaker takes the endpoint out instead, and a
                    // recovered one comes back at its real latency.
                    if !retryable {
                        endpoint.load.observe(started.elapsed(), Instant::now());
                    }
                    attempt.set_status(status.as_u16());
                    if retryable {
                        let header = response.headers().get(header::RETRY_AFTER);
                        attempt.set_retry_after(breaker::retry_after(header));
                    }
                    if retryable && !last_chance {
                        attempt.fail(format!("upstream answered {status}; failing over"));
                        last_error = format!("endpoint {} answered {status}", endpoint.id);
                        continue;
                    }
                    return Ok(self.relay(response, attempt, parsed.strip_usage, inflight));
                }
                Ok(Err(e)) => {
                    last_error = format!("endpoint {}: {}", endpoint.id, error_chain(&e));
                    attempt.fail(format!("upstream request failed: {}", error_chain(&e)));
                }
                Err(_elapsed) => {
                    endpoint.load.observe(self.upstream_timeout, Instant::now());
                    let secs = self.upstream_timeout.as_secs_f64();
                    last_error = format!(
                        "endpoint {} sent no response headers within {secs}s",
                        endpoint.id
                    );
                    attempt.fail(format!("no response headers within {secs}s"));
                }
            }
        }
        Err(ProxyError::UpstreamUnreachable(last_error))
    }

    /// Turns an upstream response into the client's.
    fn relay(
        &self,
        response: Response<Incoming>,
        attempt: Attempt,
        strip_usage: bool,
        inflight: InflightRequest,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let mode = Mode::for_content_type(content_type, strip_usage);
        strip_hop_by_hop(&mut parts.headers);
        hide_upstream_address(&mut parts.headers);
        if mode.rewrites() {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let body = RelayBody::new(
            body,
            mode,
            attempt,
            self.upstream_timeout,
            self.sse_keepalive,
            inflight,
        );
        Response::from_parts(parts, ProxyBody::relay(body))
    }
}

/// Power of two choices among the candidates whose breaker lets them in;
/// among all of them when none does (a request is better tried than
/// refused).
fn pick(candidates: &[Arc<Endpoint>], now: Instant) -> Option<usize> {
    let excluded = |e: &Arc<Endpoint>| e.load.breaker.excluded(now);
    let mut rng = rand::rng();
    if !candidates.iter().any(excluded) || candidates.iter().all(excluded) {
        return balance::pick(candidates, |e| e.load.cost(now), &mut rng);
    }
    let open: Vec<usize> = (0..candidates.len())
        .filter(|&i| !excluded(&candidates[i]))
        .collect();
    balance::pick(&open, |&i| candidates[i].load.cost(now), &mut rng).map(|k| open[k])
}

/// The request to send to `endpoint`: same path and query, the forwardable
/// client headers, the endpoint's own API key, and `body`.
fn upstream_request(endpoint: &Endpoint, parts: &Parts, body: Bytes) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    // The URL was checked when the table was built; a failure here only
    // leaves the URI empty, which the client reports as an error.
    *request.uri_mut() = upstream_uri(endpoint, &parts.uri).unwrap_or_default();
    let headers = request.headers_mut();
    for (name, value) in &parts.headers {
        if FORWARDED.contains(name) || name.as_str().starts_with("openai-") {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
        .entry(header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("application/json"));
    if let Some(authorization) = &endpoint.authorization {
        headers.insert(header::AUTHORIZATION, authorization.clone());
    }
    request
}

/// The endpoint's base URL followed by the client's path and query.
fn upstream_uri(endpoint: &Endpoint, client: &Uri) -> Option<Uri> {
    if let (Some(origin), Some(path_and_query)) = (&endpoint.origin, client.path_and_query()) {
        let mut uri = http::uri::Parts::default();
        uri.scheme = origin.scheme().cloned();
        uri.authority = origin.authority().cloned();
        uri.path_and_query = Some(path_and_query.clone());
        return Uri::from_parts(uri).ok();
    }
    let path = client
        .path_and_query()
        .map_or_else(|| client.path(), |p| p.as_str());
    format!("{}{path}", endpoint.base_url).parse().ok()
}

/// Makes an absolute `Location` (and `Content-Location`) relative: a
/// server's redirect names its own address (Starlette's `redirect_slashes`
/// builds it from the Host the proxy sent), which clients must not learn
/// and could not reach. A value that is not a URI is removed.
fn hide_upstream_address(headers: &mut HeaderMap) {
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(value) = headers.get(&name) else {
            continue;
        };
        let relative = value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<Uri>().ok())
            .map(|uri| match uri.path_and_query() {
                Some(path) if uri.authority().is_some() => path.as_str().to_owned(),
                Some(_) => uri.to_string(),
                None => "/".to_owned(),
            })
            .and_then(|v| HeaderValue::from_str(&v).ok());
        match relative {
            Some(value) => headers.insert(name, value),
            None => headers.remove(name),
        };
    }
}

/// Removes hop-by-hop headers, including those named by `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Load;

    #[test]
    fn upstream_request_keeps_useful_headers_only() {
        let endpoint = Endpoint {
            id: "e".into(),
            name: "e".into(),
            base_url: "http://127.0.0.1:9/prefix".into(),
            origin: None,
            authorization: Some(HeaderValue::from_static("Bearer upstream")),
            routable: true,
            models: vec![],
            model_objects: Default::default(),
            load: Arc::new(Load::new(Instant::now())),
        };
        let client = Request::post("/v1/chat/completions?x=1")
            .header("authorization", "Bearer client-key")
            .header("user-agent", "sdk/1")
            .header("openai-organization", "org")
            .header("cookie", "a=b")
            .header("connection", "keep-alive")
            .body(())
            .unwrap();
        let (parts, ()) = client.into_parts();
        let request = upstream_request(&endpoint, &parts, Bytes::from_static(b"{}"));
        assert_eq!(
            request.uri(),
            "http://127.0.0.1:9/prefix/v1/chat/completions?x=1"
        );
        let headers = request.headers();
        assert_eq!(headers["authorization"], "Bearer upstream");
        assert_eq!(headers["user-agent"], "sdk/1");
        assert_eq!(headers["openai-organization"], "org");
        assert_eq!(headers["content-type"], "application/json");
        assert!(headers.get("cookie").is_none() && headers.get("connection").is_none());
    }

    #[test]
    fn upstream_uri_with_and_without_a_base_path() {
        let loads = crate::loads::Loads::default();
        let table = |base_url: &str| {
            crate::routing::Table::new(
                llmlb_proto::v1::RoutingTable {
                    endpoints: vec![llmlb_proto::v1::RouteEndpoint {
                        id: "e".into(),
                        base_url: base_url.into(),
                        status: llmlb_proto::v1::EndpointStatus::Online as i32,
                        models: vec!["m".into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                &loads,
            )
        };
        let client: Uri = "/v1/chat/completions?x=1".parse().unwrap();
        for (base, expected) in [
            (
                "http://127.0.0.1:9",
                "http://127.0.0.1:9/v1/chat/completions?x=1",
            ),
            (
                "https://h.example/",
                "https://h.example/v1/chat/completions?x=1",
            ),
            ("http://h:1/api/", "http://h:1/api/v1/chat/completions?x=1"),
            ("http://h:1/?k=v", "http://h:1/?k=v/v1/chat/completions?x=1"),
        ] {
            let endpoint = table(base).route("m").unwrap().remove(0);
            assert_eq!(
                endpoint.origin.is_some(),
                !base.contains("api") && !base.contains('?'),
                "{base}"
            );
            let uri = upstream_uri(&endpoint, &client).unwrap();
            assert_eq!(uri.to_string(), expected, "{base}");
        }
    }

    #[test]
    fn redirects_do_not_name_the_upstream() {
        for (location, expected) in [
            (
                "http://10.0.0.5:8000/v1/chat/completions/?a=1",
                Some("/v1/chat/completions/?a=1"),
            ),
            ("https://inner.example", Some("/")),
            ("/v1/models", Some("/v1/models")),
            ("not a uri", None),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::LOCATION, HeaderValue::from_static(location));
            hide_upstream_address(&mut headers);
            let got = headers.get(header::LOCATION).map(|v| v.to_str().unwrap());
            assert_eq!(got, expected, "{location}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close, x-private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
    }
}
