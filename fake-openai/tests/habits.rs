//! Habits of real servers that the fake imitates on request (`--habit`).

mod common;

use std::time::{Duration, Instant};

use common::{get, post};
use hyper::StatusCode;
use llmlb_fake_openai::{FakeConfig, FakeMode, FakeServer, Habits};
use serde_json::{json, Value};

async fn server_with(habits: &[&str], mode: FakeMode) -> FakeServer {
    let config = FakeConfig {
        tokens: 5,
        mode,
        habits: Habits::parse(habits.iter().copied()).unwrap(),
        ..FakeConfig::default()
    };
    FakeServer::start(config).await.unwrap()
}

fn stream_body(include_usage: bool) -> Value {
    json!({"model": "fake-model", "stream": true, "messages": [],
           "stream_options": {"include_usage": include_usage}})
}

#[tokio::test]
async fn late_eof_ends_the_body_a_pause_after_done() {
    let server = server_with(&["late-eof:300ms"], FakeMode::Normal).await;
    let started = Instant::now();
    let reply = post(
        server.addr(),
        "/v1/chat/completions",
        None,
        &stream_body(false),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(reply.text().ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn usage_in_choice_puts_usage_on_a_chunk_with_a_choice() {
    let server = server_with(&["usage-in-choice"], FakeMode::Normal).await;
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let body = json!({"model": "fake-model", "stream": true, "prompt": "x",
                          "stream_options": {"include_usage": true}});
        let chunks = post(server.addr(), path, None, &body).await.chunks();
        let with_usage: Vec<&Value> = chunks.iter().filter(|c| !c["usage"].is_null()).collect();
        assert_eq!(with_usage.len(), 1, "{path}");
        assert_eq!(
            with_usage[0]["choices"].as_array().unwrap().len(),
            1,
            "{path}"
        );
        assert_eq!(with_usage[0]["usage"]["completion_tokens"], 5, "{path}");
    }
}

#[tokio::test]
async fn no_models_answers_404_and_still_serves_completions() {
    let server = server_with(&["no-models"], FakeMode::Normal).await;
    assert_eq!(
        get(server.addr(), "/v1/models", None).await.status,
        StatusCode::NOT_FOUND
    );
    let body = json!({"model": "fake-model", "messages": []});
    let reply = post(server.addr(), "/v1/chat/completions", None, &body).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn model_metadata_is_shaped_like_vllm() {
    let server = server_with(&["model-metadata"], FakeMode::Normal).await;
    let entry = get(server.addr(), "/v1/models", None).await.json()["data"][0].clone();
    assert_eq!(entry["owned_by"], "vllm");
    assert_eq!(entry["max_model_len"], 32768);
    assert_eq!(entry["root"], "/models/fake-model");
}

#[tokio::test]
async fn truncate_ends_the_stream_without_finish_or_done() {
    let server = server_with(&["truncate:2"], FakeMode::Normal).await;
    let reply = post(
        server.addr(),
        "/v1/chat/completions",
        None,
        &stream_body(true),
    )
    .await;
    let text = reply.text();
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(!text.contains("finish_reason\":\"stop"), "{text}");
    assert_eq!(reply.events().len(), 2);
    let body = json!({"model": "fake-model", "stream": true, "input": "x"});
    let text = post(server.addr(), "/v1/responses", None, &body)
        .await
        .text();
    assert!(!text.contains("response.completed"), "{text}");
}

#[tokio::test]
async fn retry_after_rides_on_injected_errors() {
    let server = server_with(&["retry-after:7"], FakeMode::Status(429)).await;
    let body = json!({"model": "fake-model", "messages": []});
    let reply = post(server.addr(), "/v1/chat/completions", None, &body).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.retry_after.as_deref(), Some("7"));
}

#[tokio::test]
async fn split_lines_cuts_every_event_in_its_data_line() {
    let server = server_with(&["split-lines"], FakeMode::Normal).await;
    let reply = post(
        server.addr(),
        "/v1/chat/completions",
        None,
        &stream_body(false),
    )
    .await;
    assert!(reply.frames.len() >= 2 * 5, "{} frames", reply.frames.len());
    for frame in &reply.frames {
        let whole_event = frame.starts_with(b"data: ") && frame.ends_with(b"\n\n");
        assert!(!whole_event, "{frame:?}");
    }
    assert!(reply.text().ends_with("data: [DONE]\n\n"));
    assert_eq!(reply.chunks().len(), 6);
}

#[tokio::test]
async fn redirect_names_the_host_asked_for() {
    let server = server_with(&["redirect"], FakeMode::Normal).await;
    let body = json!({"model": "fake-model", "messages": []});
    let reply = post(server.addr(), "/v1/chat/completions", None, &body).await;
    assert_eq!(reply.status, StatusCode::TEMPORARY_REDIRECT);
    // Built from the Host header, as Starlette does (this client sends `fake`).
    let location = reply.location.as_deref();
    assert_eq!(location, Some("http://fake/v1/chat/completions/"));
}
