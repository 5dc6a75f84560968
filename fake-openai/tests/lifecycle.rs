//! Start, stop, restart, authentication and injected failure modes.

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use common::{get, post, Conn};
use hyper::{Method, StatusCode};
use llmlb_fake_openai::{FakeConfig, FakeMode, FakeServer};
use serde_json::json;

fn chat() -> serde_json::Value {
    json!({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn stop_closes_open_connections_and_refuses_new_ones() {
    let server = FakeServer::start(FakeConfig::default()).await.unwrap();
    let addr = server.addr();
    assert_eq!(
        server.base_url(),
        format!("http://127.0.0.1:{}", addr.port())
    );
    let mut conn = Conn::open(addr).await.unwrap();
    assert_eq!(conn.get("/v1/models", None).await.status, StatusCode::OK);

    server.stop().await;

    let reused = conn.send(Method::GET, "/v1/models", None, None).await;
    assert!(reused.is_err(), "the kept-alive connection must be closed");
    let error = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn start_on_the_same_address_after_stop() {
    let first = FakeServer::start(FakeConfig::default()).await.unwrap();
    let addr = first.addr();
    // Leave a connection in use so the port has TIME_WAIT sockets after stop.
    let mut conn = Conn::open(addr).await.unwrap();
    assert_eq!(conn.get("/v1/models", None).await.status, StatusCode::OK);
    first.stop().await;

    let second = FakeServer::start_on(
        addr,
        FakeConfig {
            models: vec!["after-restart".into()],
            ..FakeConfig::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(second.addr(), addr);
    let v = get(addr, "/v1/models", None).await.json();
    assert_eq!(v["data"][0]["id"], "after-restart");
    assert_eq!(second.model_requests(), 1, "counters start afresh");
}

#[tokio::test]
async fn stop_cuts_a_stream_in_flight() {
    let server = FakeServer::start(FakeConfig {
        tokens: 1000,
        token_interval: Duration::from_millis(20),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let mut conn = Conn::open(server.addr()).await.unwrap();
    let body = json!({"model": "fake-model", "stream": true});
    let response = conn
        .send(Method::POST, "/v1/chat/completions", None, Some(&body))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = http_body_util::BodyExt::frame(&mut body).await;
    assert!(first.unwrap().is_ok());
    server.stop().await;
    let mut ended_with_error = false;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        if frame.is_err() {
            ended_with_error = true;
            break;
        }
    }
    assert!(
        ended_with_error,
        "an interrupted chunked body is an error, not a clean end"
    );
}

#[tokio::test]
async fn api_key_is_required_on_every_route() {
    let server = FakeServer::start(FakeConfig {
        api_key: Some("sk-test".into()),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let addr = server.addr();
    for auth in [None, Some("wrong")] {
        let models = get(addr, "/v1/models", auth).await;
        assert_eq!(models.status, StatusCode::UNAUTHORIZED);
        assert_eq!(models.json()["error"]["code"], "invalid_api_key");
        let chat = post(addr, "/v1/chat/completions", auth, &chat()).await;
        assert_eq!(chat.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        get(addr, "/v1/models", Some("sk-test")).await.status,
        StatusCode::OK
    );
    let ok = post(addr, "/v1/chat/completions", Some("sk-test"), &chat()).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        server.last_request().unwrap().authorization.as_deref(),
        Some("Bearer sk-test")
    );
    assert_eq!(server.requests(), 3, "rejected requests are still counted");
}

#[tokio::test]
async fn status_mode_answers_the_status_on_posts_and_models() {
    let server = FakeServer::start(FakeConfig {
        mode: FakeMode::Status(503),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let mut conn = Conn::open(server.addr()).await.unwrap();
    let chat_reply = conn.post("/v1/chat/completions", None, &chat()).await;
    assert_eq!(chat_reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(chat_reply.json()["error"]["type"], "server_error");
    let models = conn.get("/v1/models", None).await;
    assert_eq!(models.status, StatusCode::SERVICE_UNAVAILABLE);

    server.set_mode(FakeMode::Status(429));
    let limited = conn
        .post(
            "/v1/embeddings",
            None,
            &json!({"model": "fake-model", "input": "a"}),
        )
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.json()["error"]["message"].is_string());

    server.set_mode(FakeMode::Normal);
    assert_eq!(
        conn.post("/v1/chat/completions", None, &chat())
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn fail_models_only_breaks_the_model_list() {
    let server = FakeServer::start(FakeConfig {
        mode: FakeMode::FailModels,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let mut conn = Conn::open(server.addr()).await.unwrap();
    let models = conn.get("/v1/models", None).await;
    assert_eq!(models.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(models.json()["error"].is_object());
    assert_eq!(
        conn.post("/v1/chat/completions", None, &chat())
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn malformed_json_mode_sends_unparsable_bodies() {
    let server = FakeServer::start(FakeConfig {
        mode: FakeMode::MalformedJson,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let mut conn = Conn::open(server.addr()).await.unwrap();
    let plain = conn.post("/v1/chat/completions", None, &chat()).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert!(serde_json::from_str::<serde_json::Value>(&plain.text()).is_err());

    let streamed = conn
        .post(
            "/v1/chat/completions",
            None,
            &json!({"model": "fake-model", "stream": true}),
        )
        .await;
    assert_eq!(streamed.status, StatusCode::OK);
    assert_eq!(streamed.content_type.as_deref(), Some("text/event-stream"));
    let events = streamed.events();
    assert!(!events.is_empty());
    for (_, data) in &events {
        assert_ne!(data, "[DONE]");
        assert!(
            serde_json::from_str::<serde_json::Value>(data).is_err(),
            "{data}"
        );
    }
    assert_eq!(conn.get("/v1/models", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn hang_mode_never_answers_until_stopped() {
    let server = FakeServer::start(FakeConfig::default()).await.unwrap();
    server.set_config(FakeConfig {
        mode: FakeMode::Hang,
        ..FakeConfig::default()
    });
    let addr = server.addr();
    let request = tokio::spawn(async move {
        let mut conn = Conn::open(addr).await.unwrap();
        conn.send(Method::POST, "/v1/chat/completions", None, Some(&chat()))
            .await
            .map(|r| r.status())
    });
    let models =
        tokio::time::timeout(Duration::from_millis(300), get(addr, "/v1/models", None)).await;
    assert!(models.is_err(), "GET /v1/models hangs too");
    assert!(!request.is_finished());
    server.stop().await;
    let outcome = request.await.unwrap();
    assert!(
        outcome.is_err(),
        "the hung request fails when the server stops: {outcome:?}"
    );
}

#[tokio::test]
async fn set_config_applies_to_the_next_request() {
    let server = FakeServer::start(FakeConfig::default()).await.unwrap();
    let mut conn = Conn::open(server.addr()).await.unwrap();
    assert_eq!(
        conn.get("/v1/models", None).await.json()["data"][0]["id"],
        "fake-model"
    );
    server.set_config(FakeConfig {
        models: vec!["m2".into()],
        tokens: 2,
        prompt_tokens: 1,
        ..FakeConfig::default()
    });
    assert_eq!(
        conn.get("/v1/models", None).await.json()["data"][0]["id"],
        "m2"
    );
    let v = conn
        .post("/v1/chat/completions", None, &json!({"model": "m2"}))
        .await
        .json();
    assert_eq!(v["usage"]["total_tokens"], 3);
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let server = FakeServer::start(FakeConfig::default()).await.unwrap();
    let addr = server.addr();
    let mut conn = Conn::open(addr).await.unwrap();
    assert_eq!(conn.get("/v1/models", None).await.status, StatusCode::OK);
    drop(server);
    // Drop does not wait; the closed connection is the signal that it is done.
    let result = conn.send(Method::GET, "/v1/models", None, None).await;
    assert!(result.is_err());
}
