//! OpenAI shapes served by the fake.

mod common;

use std::time::{Duration, Instant};

use common::{get, post, Conn};
use hyper::StatusCode;
use llmlb_fake_openai::{FakeConfig, FakeServer};
use serde_json::{json, Value};

async fn server() -> FakeServer {
    FakeServer::start(FakeConfig::default()).await.unwrap()
}

fn content_tokens(chunks: &[Value], pointer: &str) -> usize {
    chunks
        .iter()
        .filter_map(|c| c.pointer(pointer).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .count()
}

#[tokio::test]
async fn models_list_has_every_configured_model() {
    let config = FakeConfig {
        models: vec!["a".into(), "b".into()],
        ..FakeConfig::default()
    };
    let server = FakeServer::start(config).await.unwrap();
    let reply = get(server.addr(), "/v1/models", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        reply.json(),
        json!({"object": "list", "data": [
            {"id": "a", "object": "model", "created": 0, "owned_by": "fake"},
            {"id": "b", "object": "model", "created": 0, "owned_by": "fake"},
        ]})
    );
    assert_eq!(server.model_requests(), 1);
    assert_eq!(server.requests(), 0, "GET /v1/models is not a POST request");
    assert!(server.last_request().is_none());
}

#[tokio::test]
async fn chat_completion_reports_usage_and_records_the_request() {
    let server = server().await;
    let body = json!({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]});
    let reply = post(server.addr(), "/v1/chat/completions", Some("k1"), &body).await;
    assert_eq!(reply.status, StatusCode::OK);
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "fake-model");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content.split_whitespace().count(), 16);
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24})
    );

    assert_eq!(server.requests(), 1);
    let last = server.last_request().unwrap();
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(last.authorization.as_deref(), Some("Bearer k1"));
    assert_eq!(last.body, body);
}

#[tokio::test]
async fn max_tokens_fields_override_the_configured_count() {
    let server = FakeServer::start(FakeConfig {
        tokens: 4,
        prompt_tokens: 3,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let mut conn = Conn::open(server.addr()).await.unwrap();
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "fake-model", "max_tokens": 7}),
            7,
        ),
        (
            "/v1/chat/completions",
            json!({"model": "fake-model", "max_completion_tokens": 2, "max_tokens": 9}),
            2,
        ),
        (
            "/v1/completions",
            json!({"model": "fake-model", "prompt": "x", "max_tokens": 30}),
            30,
        ),
        (
            "/v1/completions",
            json!({"model": "fake-model", "prompt": "x"}),
            4,
        ),
    ];
    for (path, body, expected) in cases {
        let v = conn.post(path, None, &body).await.json();
        assert_eq!(v["usage"]["completion_tokens"], expected, "{path} {body}");
        assert_eq!(v["usage"]["total_tokens"], expected + 3, "{path} {body}");
    }
    let v = conn
        .post(
            "/v1/responses",
            None,
            &json!({"model": "fake-model", "input": "x", "max_output_tokens": 5}),
        )
        .await
        .json();
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 3, "output_tokens": 5, "total_tokens": 8})
    );
}

#[tokio::test]
async fn chat_stream_without_include_usage_has_no_usage_chunk() {
    let server = server().await;
    let body = json!({"model": "fake-model", "stream": true, "max_tokens": 5});
    let reply = post(server.addr(), "/v1/chat/completions", None, &body).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type.as_deref(), Some("text/event-stream"));
    let chunks = reply.chunks();
    assert_eq!(
        chunks.len(),
        5 + 1,
        "one chunk per token and a finish chunk"
    );
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "fake-model");
        assert!(chunk.get("usage").is_none(), "no usage field: {chunk}");
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
    assert_eq!(content_tokens(&chunks, "/choices/0/delta/content"), 5);
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn chat_stream_with_include_usage_ends_with_one_usage_chunk() {
    let server = server().await;
    let body = json!({
        "model": "fake-model", "stream": true, "stream_options": {"include_usage": true}
    });
    let reply = post(server.addr(), "/v1/chat/completions", None, &body).await;
    let chunks = reply.chunks();
    let usage_chunks: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(usage_chunks.len(), 1);
    let last = chunks.last().unwrap();
    assert_eq!(
        usage_chunks[0], last,
        "the usage chunk comes right before [DONE]"
    );
    assert_eq!(last["object"], "chat.completion.chunk");
    assert_eq!(last["id"], chunks[0]["id"]);
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24})
    );
    // Like OpenAI, every other chunk carries "usage": null.
    for chunk in &chunks[..chunks.len() - 1] {
        assert_eq!(chunk["usage"], Value::Null);
        assert!(chunk.get("usage").is_some());
    }
    assert_eq!(content_tokens(&chunks, "/choices/0/delta/content"), 16);
}

#[tokio::test]
async fn completions_stream_follows_the_same_usage_rules() {
    let server = server().await;
    let mut conn = Conn::open(server.addr()).await.unwrap();
    let plain = conn
        .post(
            "/v1/completions",
            None,
            &json!({"model": "fake-model", "prompt": "x", "stream": true}),
        )
        .await
        .chunks();
    assert!(plain.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(content_tokens(&plain, "/choices/0/text"), 16);
    assert!(plain.iter().all(|c| c["object"] == "text_completion"));

    let with_usage = conn
        .post(
            "/v1/completions",
            None,
            &json!({"model": "fake-model", "prompt": "x", "stream": true, "max_tokens": 3,
                    "stream_options": {"include_usage": true}}),
        )
        .await
        .chunks();
    let last = with_usage.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 3);
    assert_eq!(content_tokens(&with_usage, "/choices/0/text"), 3);
}

#[tokio::test]
async fn responses_stream_ends_with_completed_carrying_usage() {
    let server = server().await;
    let body =
        json!({"model": "fake-model", "input": "hi", "stream": true, "max_output_tokens": 4});
    let reply = post(server.addr(), "/v1/responses", None, &body).await;
    assert_eq!(reply.content_type.as_deref(), Some("text/event-stream"));
    let events = reply.events();
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.completed",
        ]
    );
    let data: Vec<Value> = events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    for (name, value) in names.iter().zip(&data) {
        assert_eq!(value["type"], *name, "data type matches the event name");
    }
    assert_eq!(data[1]["delta"], "tok ");
    let completed = &data[5]["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["model"], "fake-model");
    assert_eq!(
        completed["usage"],
        json!({"input_tokens": 8, "output_tokens": 4, "total_tokens": 12})
    );
}

#[tokio::test]
async fn responses_non_stream_shape() {
    let server = server().await;
    let v = post(
        server.addr(),
        "/v1/responses",
        None,
        &json!({"model": "fake-model", "input": "hi"}),
    )
    .await
    .json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["role"], "assistant");
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(v["usage"]["output_tokens"], 16);
}

#[tokio::test]
async fn embeddings_one_vector_per_input() {
    let server = server().await;
    let mut conn = Conn::open(server.addr()).await.unwrap();
    let v = conn
        .post(
            "/v1/embeddings",
            None,
            &json!({"model": "fake-model", "input": ["a", "b", "c"]}),
        )
        .await
        .json();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        assert_eq!(item["embedding"].as_array().unwrap().len(), 8);
    }
    assert_eq!(v["usage"], json!({"prompt_tokens": 8, "total_tokens": 8}));
    let single = conn
        .post(
            "/v1/embeddings",
            None,
            &json!({"model": "fake-model", "input": "a"}),
        )
        .await
        .json();
    assert_eq!(single["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn request_errors_use_openai_error_bodies() {
    let server = server().await;
    let mut conn = Conn::open(server.addr()).await.unwrap();

    let unknown = conn
        .post(
            "/v1/chat/completions",
            None,
            &json!({"model": "nope", "messages": []}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let error = &unknown.json()["error"];
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["code"], "model_not_found");
    assert!(error["message"].as_str().unwrap().contains("nope"));

    let malformed = conn.send_raw("/v1/chat/completions", "{not json").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.json()["error"]["type"], "invalid_request_error");

    let missing = conn
        .post("/v1/embeddings", None, &json!({"input": "a"}))
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);

    let unknown_route = conn.post("/v1/audio/speech", None, &json!({})).await;
    assert_eq!(unknown_route.status, StatusCode::NOT_FOUND);
    assert_eq!(server.requests(), 4, "every POST on /v1/* is counted");
    assert_eq!(server.last_request().unwrap().path, "/v1/audio/speech");
}

#[tokio::test]
async fn keep_alive_connection_serves_many_requests() {
    let server = server().await;
    let mut conn = Conn::open(server.addr()).await.unwrap();
    let body = json!({"model": "fake-model", "stream": true});
    for _ in 0..50 {
        assert_eq!(conn.get("/v1/models", None).await.status, StatusCode::OK);
        assert_eq!(
            conn.post("/v1/chat/completions", None, &body)
                .await
                .chunks()
                .len(),
            17
        );
    }
    assert_eq!(server.requests(), 50);
    assert_eq!(server.model_requests(), 50);
}

#[tokio::test]
async fn latency_delays_every_route() {
    let server = FakeServer::start(FakeConfig {
        latency: Duration::from_millis(150),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let mut conn = Conn::open(server.addr()).await.unwrap();
    let start = Instant::now();
    assert_eq!(conn.get("/v1/models", None).await.status, StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(150));
    let start = Instant::now();
    let reply = conn
        .post(
            "/v1/embeddings",
            None,
            &json!({"model": "fake-model", "input": "a"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn tokens_are_spaced_by_the_token_interval() {
    let server = FakeServer::start(FakeConfig {
        tokens: 4,
        token_interval: Duration::from_millis(50),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let mut conn = Conn::open(server.addr()).await.unwrap();
    let body = json!({"model": "fake-model", "stream": true});
    let response = conn
        .send(
            hyper::Method::POST,
            "/v1/chat/completions",
            None,
            Some(&body),
        )
        .await
        .unwrap();
    let start = Instant::now();
    let mut body = response.into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        if let Ok(data) = frame.unwrap().into_data() {
            arrivals.push((start.elapsed(), data));
        }
    }
    // Each token is its own frame, so frames arrive one by one, >= 50ms apart.
    let tokens: Vec<Duration> = arrivals
        .iter()
        .filter(|(_, d)| {
            std::str::from_utf8(d)
                .unwrap()
                .contains("\"content\":\"tok \"")
        })
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(tokens.len(), 4, "{arrivals:?}");
    for pair in tokens.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(40), "{tokens:?}");
    }

    let start = Instant::now();
    let v = conn
        .post(
            "/v1/chat/completions",
            None,
            &json!({"model": "fake-model"}),
        )
        .await
        .json();
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "non-stream waits tokens * interval"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let server = server().await;
    let stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get(format!("{}/v1/models", server.base_url()))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.model_requests(), 1);
}
