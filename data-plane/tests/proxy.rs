//! The proxy library in-process against fake OpenAI backends and a test
//! control plane: routing, streaming, usage, stats records and failover.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{
    endpoint, eventually, proxy_config, start_routable, table, wait_routable, TestControlPlane,
};
use futures::StreamExt;
use llmlb_fake_openai::{FakeConfig, FakeServer};
use llmlb_proto::v1::{ApiKind, EndpointStatus, RequestRecord, RouteApiKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const MODEL: &str = "m";

fn fake_config(tokens: u32) -> FakeConfig {
    FakeConfig {
        models: vec![MODEL.into(), "m-off".into()],
        tokens,
        prompt_tokens: 7,
        ..FakeConfig::default()
    }
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> reqwest::Response {
    client
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("proxy answers")
}

fn by_id<'a>(records: &'a [RequestRecord], id: &str) -> Vec<&'a RequestRecord> {
    records.iter().filter(|r| r.endpoint_id == id).collect()
}

#[tokio::test]
async fn requests_streams_and_one_record_per_attempt() {
    let fake = FakeServer::start(fake_config(5)).await.unwrap();
    let cp = TestControlPlane::start(
        table(
            1,
            vec![
                endpoint("e1", &fake.base_url(), EndpointStatus::Online, &[MODEL]),
                endpoint(
                    "off",
                    "http://127.0.0.1:9",
                    EndpointStatus::Offline,
                    &["m-off"],
                ),
            ],
        ),
        true,
    )
    .await;
    let (proxy, base, client) = start_routable(&cp.url(), &["--proxy-token=t0k"], MODEL).await;

    // Non-streaming chat: relayed as is, usage read from the body.
    let response = post(
        &client,
        format!("{base}/v1/chat/completions"),
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 5);
    let upstream = fake.last_request().unwrap();
    assert_eq!(
        upstream.authorization.as_deref(),
        Some("Bearer key-of-e1"),
        "client auth replaced by the endpoint key"
    );
    let records = cp.wait_records(1).await;
    let r = &records[0];
    assert!(
        r.success && r.status_code == 200 && r.error.is_none(),
        "{r:?}"
    );
    assert_eq!((r.input_tokens, r.output_tokens), (7, 5));
    assert_eq!(
        (
            r.endpoint_id.as_str(),
            r.model.as_str(),
            r.proxy_id.as_str()
        ),
        ("e1", MODEL, "test-proxy")
    );
    assert_eq!(r.api_kind, ApiKind::ChatCompletions as i32);
    assert!(r.duration_ms > 0.0 && r.ttft_ms.is_some_and(|t| t <= r.duration_ms));
    assert!(r.completed_at.is_some());
    assert_eq!(
        uuid::Uuid::parse_str(&r.request_id)
            .unwrap()
            .get_version_num(),
        7
    );

    // Streaming chat without include_usage: the proxy asks for usage and
    // hides the usage chunk.
    let response = post(
        &client,
        format!("{base}/v1/chat/completions"),
        json!({"model": MODEL, "stream": true, "messages": []}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = response.text().await.unwrap();
    assert!(
        !text.contains("\"choices\":[]"),
        "usage chunk leaked:\n{text}"
    );
    assert!(text.contains("data: [DONE]"));
    assert_eq!(text.matches("\"delta\":{\"content\"").count(), 5, "{text}");
    assert_eq!(
        fake.last_request().unwrap().body["stream_options"]["include_usage"],
        true
    );
    let records = cp.wait_records(2).await;
    assert_eq!((records[1].input_tokens, records[1].output_tokens), (7, 5));
    assert!(records[1].success);

    // Streaming chat that asked for usage itself: the client sees it.
    let response = post(
        &client,
        format!("{base}/v1/chat/completions"),
        json!({"model": MODEL, "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    let text = response.text().await.unwrap();
    assert!(text.contains("\"choices\":[]"), "{text}");

    // Responses API stream and embeddings.
    let response = post(
        &client,
        format!("{base}/v1/responses"),
        json!({"model": MODEL, "input": "hi", "stream": true}),
    )
    .await;
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("response.completed"));
    let response = post(
        &client,
        format!("{base}/v1/embeddings"),
        json!({"model": MODEL, "input": "hi"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let records = cp.wait_records(5).await;
    assert_eq!(records[3].api_kind, ApiKind::Responses as i32);
    assert_eq!((records[3].input_tokens, records[3].output_tokens), (7, 5));
    assert_eq!(records[4].api_kind, ApiKind::Embeddings as i32);
    assert_eq!((records[4].input_tokens, records[4].output_tokens), (7, 0));

    // Errors answered by the proxy make no record.
    let response = post(
        &client,
        format!("{base}/v1/chat/completions"),
        json!({"model": "nope"}),
    )
    .await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    let response = post(
        &client,
        format!("{base}/v1/chat/completions"),
        json!({"model": "m-off"}),
    )
    .await;
    assert_eq!(response.status(), 503);

    let metrics = common::get_text(&client, &format!("{base}/metrics")).await;
    assert!(
        metrics.contains(r#"llmlb_proxy_requests_total{endpoint="e1",model="m",status="200"} 5"#),
        "{metrics}"
    );
    assert!(metrics.contains("llmlb_proxy_routing_table_version 1"));

    let report = proxy.shutdown().await;
    assert_eq!(report.unflushed_records, 0);
    let records = cp.records();
    assert_eq!(
        records.len(),
        5,
        "exactly one record per attempt: {records:#?}"
    );
    let ids: HashSet<&str> = records.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids.len(), 5);
    cp.seen(|seen| {
        assert!(
            seen.authorizations
                .iter()
                .all(|a| a.as_deref() == Some("Bearer t0k")),
            "{:?}",
            seen.authorizations
        );
        assert_eq!(seen.hellos, ["test-proxy"]);
    });
    cp.stop().await;
    fake.stop().await;
}

#[tokio::test]
async fn failover_to_the_second_endpoint() {
    // e2 answers after 600 ms, slower than the default latency estimate.
    let fast = FakeServer::start(fake_config(3)).await.unwrap();
    let slow = FakeServer::start(FakeConfig {
        latency: Duration::from_millis(600),
        ..fake_config(3)
    })
    .await
    .unwrap();
    let cp = TestControlPlane::start(
        table(
            1,
            vec![
                endpoint("e1", &fast.base_url(), EndpointStatus::Online, &[MODEL]),
                endpoint("e2", &slow.base_url(), EndpointStatus::Online, &[MODEL]),
            ],
        ),
        true,
    )
    .await;
    let (proxy, base, client) = start_routable(&cp.url(), &[], MODEL).await;
    let chat = json!({"model": MODEL, "messages": []});
    let mut warm = 0;
    while by_id(&cp.records(), "e1").is_empty() {
        assert!(warm < 5, "e1 never chosen");
        assert_eq!(
            post(&client, format!("{base}/v1/chat/completions"), chat.clone())
                .await
                .status(),
            200
        );
        warm += 1;
        cp.wait_records(warm).await;
    }

    // With e1 down, a request that tries e1 first fails over to e2. The
    // first request may go straight to e2: an endpoint without samples
    // decays toward zero and can look a hair cheaper than e1, which answered
    // once. Once e2 answered (600 ms), e1 is the cheaper one and is tried
    // first, so a failover happens within two requests. A request's records
    // arrive in order: the failed attempt's before the one that served it.
    fast.stop().await;
    let mut seen = warm;
    let mut failed_over = false;
    for _ in 0..2 {
        let response = post(&client, format!("{base}/v1/chat/completions"), chat.clone()).await;
        assert_eq!(response.status(), 200);
        let records = eventually("the record of e2 serving the request", || async {
            let records = cp.records();
            records[seen..]
                .iter()
                .any(|r| r.endpoint_id == "e2")
                .then_some(records)
        })
        .await;
        let new = &records[seen..];
        seen = records.len();
        let served = new.last().unwrap();
        assert_eq!(served.endpoint_id, "e2");
        assert!(served.success && served.output_tokens == 3, "{served:?}");
        match new {
            [_served] => {}
            [failed, _served] => {
                assert_eq!(failed.endpoint_id, "e1");
                assert!(
                    !failed.success && failed.status_code == 0 && failed.error.is_some(),
                    "{failed:?}"
                );
                failed_over = true;
                break;
            }
            more => panic!("unexpected records {more:?}"),
        }
    }
    assert!(failed_over, "e1 was never tried after it went down");

    // With every endpoint down: 502 after one attempt per endpoint.
    slow.stop().await;
    let response = post(&client, format!("{base}/v1/chat/completions"), chat).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unreachable");
    let records = cp.wait_records(seen + 2).await;
    assert!(records[seen..]
        .iter()
        .all(|r| !r.success && r.status_code == 0));
    proxy.shutdown().await;
    assert_eq!(cp.records().len(), seen + 2);
    cp.stop().await;
}

#[tokio::test]
async fn last_5xx_is_relayed_and_client_disconnect_is_a_failure() {
    let fake = FakeServer::start(FakeConfig {
        token_interval: Duration::from_millis(30),
        ..fake_config(100)
    })
    .await
    .unwrap();
    let mut routes = table(
        1,
        vec![endpoint(
            "e1",
            &fake.base_url(),
            EndpointStatus::Online,
            &[MODEL],
        )],
    );
    routes.api_keys.push(RouteApiKey {
        id: "k1".into(),
        sha256: hex::encode(Sha256::digest(b"sk-client")),
    });
    let cp = TestControlPlane::start(routes, true).await;
    let proxy = llmlb_proxy::start(proxy_config(&cp.url(), &[]))
        .await
        .unwrap();
    let base = format!("http://{}", proxy.local_addr());
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", "Bearer sk-client".parse().unwrap());
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    wait_routable(&client, &base, MODEL).await;
    let anonymous = post(
        &reqwest::Client::new(),
        format!("{base}/v1/chat/completions"),
        json!({"model": MODEL}),
    )
    .await;
    assert_eq!(anonymous.status(), 401);

    // The client reads one chunk of a long stream and goes away.
    let response = post(
        &client,
        format!("{base}/v1/chat/completions"),
        json!({"model": MODEL, "stream": true}),
    )
    .await;
    assert_eq!(
        fake.last_request().unwrap().authorization.as_deref(),
        Some("Bearer key-of-e1")
    );
    let mut body = response.bytes_stream();
    assert!(body.next().await.unwrap().is_ok());
    let inflight_is = |n: u64| {
        let cp = &cp;
        move || async move {
            cp.seen(|s| {
                s.inflight
                    .as_ref()
                    .is_some_and(|m| m.get("e1") == Some(&n))
                    .then_some(())
            })
        }
    };
    eventually("in-flight 1 reported", inflight_is(1)).await;
    drop(body);
    let records = cp.wait_records(1).await;
    let r = &records[0];
    assert!(
        !r.success && r.status_code == 200 && r.ttft_ms.is_some(),
        "{r:?}"
    );
    assert!(r.error.as_deref().unwrap().contains("client went away"));
    assert_eq!(r.api_key_id.as_deref(), Some("k1"));
    eventually("in-flight back to zero", inflight_is(0)).await;

    // The only endpoint answers 503: relayed as it is.
    fake.set_mode(llmlb_fake_openai::FakeMode::Status(503));
    let response = post(
        &client,
        format!("{base}/v1/chat/completions"),
        json!({"model": MODEL}),
    )
    .await;
    assert_eq!(response.status(), 503);
    let records = cp.wait_records(2).await;
    assert_eq!((records[1].status_code, records[1].success), (503, false));
    proxy.shutdown().await;
    cp.stop().await;
    fake.stop().await;
}

#[tokio::test]
async fn upstream_timeout_and_table_updates() {
    let fake = FakeServer::start(FakeConfig {
        mode: llmlb_fake_openai::FakeMode::Hang,
        ..fake_config(3)
    })
    .await
    .unwrap();
    let online = table(
        1,
        vec![endpoint(
            "e1",
            &fake.base_url(),
            EndpointStatus::Online,
            &[MODEL],
        )],
    );
    let cp = TestControlPlane::start(online, true).await;
    let (proxy, base, client) =
        start_routable(&cp.url(), &["--upstream-timeout=300ms"], MODEL).await;

    let response = post(
        &client,
        format!("{base}/v1/chat/completions"),
        json!({"model": MODEL}),
    )
    .await;
    assert_eq!(response.status(), 502);
    let records = cp.wait_records(1).await;
    assert_eq!(records[0].status_code, 0);
    assert!(
        records[0]
            .error
            .as_deref()
            .unwrap()
            .contains("no response headers"),
        "{:?}",
        records[0]
    );

    // The control plane marks the endpoint offline: 503 from then on.
    cp.set_table(table(
        2,
        vec![endpoint(
            "e1",
            &fake.base_url(),
            EndpointStatus::Offline,
            &[MODEL],
        )],
    ));
    eventually("the model no longer listed", || async {
        let models: Value = client
            .get(format!("{base}/v1/models"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        models["data"].as_array()?.is_empty().then_some(())
    })
    .await;
    let response = post(
        &client,
        format!("{base}/v1/chat/completions"),
        json!({"model": MODEL}),
    )
    .await;
    assert_eq!(response.status(), 503);
    proxy.shutdown().await;
    assert_eq!(cp.records().len(), 1);
    cp.stop().await;
    fake.stop().await;
}
