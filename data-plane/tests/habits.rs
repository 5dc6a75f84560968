//! The habits of real servers and real clients, through the proxy: each
//! upstream is `fake-openai` imitating one habit of a named server (see
//! `fake-openai --help`), each client does what an official SDK does.

mod common;

use std::time::Duration;

use common::{endpoint, eventually, start_routable, table, TestControlPlane};
use futures::StreamExt;
use llmlb_fake_openai::{FakeConfig, FakeMode, FakeServer, Habits};
use llmlb_proto::v1::{EndpointStatus, RequestRecord};
use serde_json::{json, Value};

/// A fake upstream serving model `m` with `habits`, 5 output tokens and 8
/// prompt tokens per request.
async fn fake(habits: &[&str], config: FakeConfig) -> FakeServer {
    FakeServer::start(FakeConfig {
        models: vec!["m".into()],
        tokens: 5,
        prompt_tokens: 8,
        habits: Habits::parse(habits.iter().copied()).unwrap(),
        ..config
    })
    .await
    .unwrap()
}

/// A test control plane routing `m` to `fakes` (ids e0, e1, ...), and a
/// proxy with `flags` that routes it.
async fn proxy_for(
    fakes: &[&FakeServer],
    flags: &[&str],
) -> (
    TestControlPlane,
    llmlb_proxy::ProxyHandle,
    String,
    reqwest::Client,
) {
    let endpoints = fakes
        .iter()
        .enumerate()
        .map(|(i, f)| {
            endpoint(
                &format!("e{i}"),
                &f.base_url(),
                EndpointStatus::Online,
                &["m"],
            )
        })
        .collect();
    let cp = TestControlPlane::start(table(1, endpoints), true).await;
    let (proxy, base, client) = start_routable(&cp.url(), flags, "m").await;
    (cp, proxy, base, client)
}

fn chat_stream_body() -> Value {
    json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

/// Reads an event stream the way openai-python and LangChain do: until the
/// `[DONE]` event, then closes the connection without reading the rest.
async fn read_until_done(response: reqwest::Response) -> String {
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        if text.contains("data: [DONE]\n\n") {
            return text;
        }
    }
    panic!("stream ended without [DONE]: {text}");
}

async fn one_record(cp: &TestControlPlane) -> RequestRecord {
    let records = cp.wait_records(1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    records.into_iter().next().unwrap()
}

#[tokio::test]
async fn a_stream_read_to_done_by_a_client_that_then_leaves_is_a_success() {
    // uvicorn ends the body after [DONE] in a separate write; the client
    // has left by then.
    let fake = fake(&["late-eof:2s"], FakeConfig::default()).await;
    let (cp, _proxy, base, client) = proxy_for(&[&fake], &[]).await;
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_stream_body())
        .send()
        .await
        .unwrap();
    let text = read_until_done(response).await;
    assert!(!text.contains("\"usage\":{"), "{text}");
    let record = one_record(&cp).await;
    assert!(record.success, "{record:?}");
    assert_eq!((record.input_tokens, record.output_tokens), (8, 5));
    assert!(
        record.duration_ms < 1500.0,
        "ends at [DONE], not at the end of the body"
    );
}

#[tokio::test]
async fn the_responses_api_ends_at_its_terminal_event() {
    let fake = fake(&["late-eof:2s"], FakeConfig::default()).await;
    let (cp, _proxy, base, client) = proxy_for(&[&fake], &[]).await;
    let response = client
        .post(format!("{base}/v1/responses"))
        .json(&json!({"model": "m", "stream": true, "input": "hi"}))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        if text.contains("event: response.completed") && text.ends_with("\n\n") {
            break;
        }
    }
    drop(body);
    let record = one_record(&cp).await;
    assert!(record.success, "{record:?}");
    assert_eq!((record.input_tokens, record.output_tokens), (8, 5));
}

#[tokio::test]
async fn usage_on_a_chunk_with_a_choice_is_removed_for_a_client_that_did_not_ask() {
    let fake = fake(&["usage-in-choice"], FakeConfig::default()).await;
    let (cp, _proxy, base, client) = proxy_for(&[&fake], &[]).await;
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let body = json!({"model": "m", "stream": true, "prompt": "x", "messages": []});
        let response = client
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let text = response.text().await.unwrap();
        assert!(!text.contains("usage"), "{path}: {text}");
        assert!(text.contains("\"finish_reason\":\"stop\""), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }
    let records = cp.wait_records(2).await;
    for record in records {
        assert!(record.success, "{record:?}");
        assert_eq!((record.input_tokens, record.output_tokens), (8, 5));
    }
    // A client that asked for usage gets it where the server put it.
    let body = json!({"model": "m", "stream": true, "messages": [],
                      "stream_options": {"include_usage": true}});
    let text = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"usage\":{\"prompt_tokens\":8"), "{text}");
}

#[tokio::test]
async fn a_stream_cut_short_is_a_failure_with_what_it_relayed() {
    let fake = fake(&["truncate:2"], FakeConfig::default()).await;
    let (cp, _proxy, base, client) = proxy_for(&[&fake], &[]).await;
    let text = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_stream_body())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.matches("\"content\":\"tok \"").count(), 2, "{text}");
    let record = one_record(&cp).await;
    assert!(!record.success, "{record:?}");
    assert_eq!(record.status_code, 200);
    assert!(
        record
            .error
            .as_deref()
            .unwrap_or("")
            .contains("terminal event"),
        "{record:?}"
    );
}

#[tokio::test]
async fn lines_split_across_chunks_are_relayed_whole() {
    let fake = fake(&["split-lines", "usage-in-choice"], FakeConfig::default()).await;
    let (cp, _proxy, base, client) = proxy_for(&[&fake], &[]).await;
    let text = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_stream_body())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 8, "5 tokens, finish, usage, [DONE]: {text}");
    for event in &events[..7] {
        let data: Value = serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap();
        assert!(data.get("usage").is_none(), "{event}");
    }
    let record = one_record(&cp).await;
    assert!(record.success, "{record:?}");
    assert_eq!(record.output_tokens, 5);
}

#[tokio::test]
async fn a_silent_stream_gets_keepalive_comments_between_events() {
    let fake = fake(
        &[],
        FakeConfig {
            token_interval: Duration::from_millis(350),
            ..FakeConfig::default()
        },
    )
    .await;
    let (cp, _proxy, base, client) = proxy_for(&[&fake], &["--sse-keepalive=100ms"]).await;
    let text = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_stream_body())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let comments = text.matches(": keep-alive\n\n").count();
    assert!(comments >= 5, "{comments} comments in {text}");
    for (at, _) in text.match_indices(": keep-alive") {
        assert!(
            at == 0 || text[..at].ends_with("\n\n"),
            "inside an event: {text}"
        );
    }
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty() && !e.starts_with(':'))
        .collect();
    assert_eq!(events.len(), 7, "{text}");
    let record = one_record(&cp).await;
    assert!(record.success, "{record:?}");
    assert_eq!(record.output_tokens, 5);
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_request_on_every_api() {
    let fake = fake(
        &[],
        FakeConfig {
            latency: Duration::from_secs(60),
            ..FakeConfig::default()
        },
    )
    .await;
    let (cp, _proxy, base, _client) = proxy_for(&[&fake], &[]).await;
    let bodies = [
        ("/v1/chat/completions", chat_stream_body()),
        (
            "/v1/chat/completions",
            json!({"model": "m", "messages": []}),
        ),
        ("/v1/completions", json!({"model": "m", "prompt": "x"})),
        ("/v1/embeddings", json!({"model": "m", "input": "x"})),
        ("/v1/responses", json!({"model": "m", "input": "x"})),
    ];
    for (n, (path, body)) in bodies.iter().enumerate() {
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let sent = impatient
            .post(format!("{base}{path}"))
            .json(body)
            .send()
            .await;
        assert!(sent.is_err(), "{path} answered before the client left");
        eventually(&format!("{path}: upstream request cancelled"), || async {
            (fake.in_flight() == 0).then_some(())
        })
        .await;
        let records = cp.wait_records(n + 1).await;
        let record = &records[n];
        assert!(!record.success, "{record:?}");
    }
    assert_eq!(fake.requests(), 5);
}

#[tokio::test]
async fn a_malformed_stream_is_still_a_failure_after_done() {
    let fake = fake(&[], FakeConfig::default()).await;
    fake.set_mode(FakeMode::MalformedJson);
    let (cp, _proxy, base, client) = proxy_for(&[&fake], &[]).await;
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_stream_body())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.text().await;
    let record = one_record(&cp).await;
    assert!(!record.success, "{record:?}");
}

/// The value of `name{endpoint="id"}` in the proxy's `/metrics`.
async fn endpoint_metric(client: &reqwest::Client, base: &str, name: &str, id: &str) -> f64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{name}{{endpoint=\"{id}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn a_fast_429_fails_over_and_cools_down_for_its_retry_after() {
    // An endpoint that answers 429 at once looks fastest to a latency-based
    // balancer; next to a healthy one, every request must still succeed.
    let limited = fake(
        &["retry-after:30"],
        FakeConfig {
            mode: FakeMode::Status(429),
            ..FakeConfig::default()
        },
    )
    .await;
    let healthy = fake(
        &[],
        FakeConfig {
            latency: Duration::from_millis(20),
            ..FakeConfig::default()
        },
    )
    .await;
    let (cp, _proxy, base, client) = proxy_for(&[&limited, &healthy], &[]).await;
    for _ in 0..20 {
        let response = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": "m", "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert!(limited.requests() <= 1, "{} requests", limited.requests());
    assert_eq!(healthy.requests(), 20);
    let left = endpoint_metric(
        &client,
        &base,
        "llmlb_proxy_endpoint_cooldown_seconds",
        "e0",
    )
    .await;
    assert!((20.0..=30.0).contains(&left), "cool-down left {left}");
    let started =
        endpoint_metric(&client, &base, "llmlb_proxy_endpoint_cooldowns_total", "e0").await;
    assert_eq!(started, limited.requests() as f64);
    let records = cp.wait_records(20 + limited.requests() as usize).await;
    let failed: Vec<&RequestRecord> = records.iter().filter(|r| !r.success).collect();
    assert!(failed
        .iter()
        .all(|r| r.status_code == 429 && r.endpoint_id == "e0"));
}

#[tokio::test]
async fn a_cooled_endpoint_gets_one_trial_then_returns_to_rotation() {
    let flaky = fake(
        &["retry-after:1"],
        FakeConfig {
            mode: FakeMode::Status(503),
            ..FakeConfig::default()
        },
    )
    .await;
    let healthy = fake(&[], FakeConfig::default()).await;
    let (_cp, _proxy, base, client) = proxy_for(&[&flaky, &healthy], &[]).await;
    let send = || async {
        let response = client
            .post(format!("{base}/v1/completions"))
            .json(&json!({"model": "m", "prompt": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    };
    while flaky.requests() == 0 {
        send().await;
    }
    flaky.set_mode(FakeMode::Normal);
    // Within its cool-down of 1 s it gets nothing; after it, traffic again.
    let before = flaky.requests();
    eventually("the endpoint back in rotation", || async {
        send().await;
        (flaky.requests() > before + 3).then_some(())
    })
    .await;
    let left = endpoint_metric(
        &client,
        &base,
        "llmlb_proxy_endpoint_cooldown_seconds",
        "e0",
    )
    .await;
    assert_eq!(left, 0.0);
}

#[tokio::test]
async fn a_clients_own_error_does_not_cool_the_endpoint_down() {
    let strict = fake(
        &[],
        FakeConfig {
            mode: FakeMode::Status(400),
            ..FakeConfig::default()
        },
    )
    .await;
    let (_cp, _proxy, base, client) = proxy_for(&[&strict], &[]).await;
    for _ in 0..3 {
        let response = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": "m", "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
    }
    assert_eq!(strict.requests(), 3);
    let started =
        endpoint_metric(&client, &base, "llmlb_proxy_endpoint_cooldowns_total", "e0").await;
    assert_eq!(started, 0.0);
}

#[tokio::test]
async fn a_redirect_does_not_reveal_the_servers_address() {
    let starlette = fake(&["redirect"], FakeConfig::default()).await;
    let (_cp, _proxy, base, _client) = proxy_for(&[&starlette], &[]).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 307);
    let location = response.headers()["location"].to_str().unwrap();
    assert_eq!(location, "/v1/chat/completions/");
}
