//! End to end with the real binaries: what the dashboard shows when the
//! servers and clients have the habits of real ones (fake-openai's
//! `--habit`s, each named after the server that has it).

use std::time::Duration;

use futures::StreamExt;
use llmlb_proto::v1 as pb;
use llmlb_testkit::*;

struct Setup {
    cp: ControlPlane,
    proxy: Proxy,
    _dir: tempfile::TempDir,
}

/// A control plane, one proxy, and `fakes` registered as endpoints serving
/// `m`; returns the endpoints in the same order.
async fn setup(fakes: &[&FakeServer]) -> (Setup, Vec<pb::Endpoint>) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(ControlPlaneOptions::new(dir.path().join("llmlb.db")));
    let grpc = cp.grpc_url();
    let mut endpoints = Vec::new();
    for (i, fake) in fakes.iter().enumerate() {
        let e = create_endpoint(&grpc, &format!("backend-{i}"), &fake.base_url(), &[]).await;
        wait_online(&grpc, &e.id).await;
        endpoints.push(e);
    }
    let proxy = Proxy::start(&grpc, &[]);
    wait_model_listed(&proxy.url(), "m", None).await;
    let setup = Setup {
        cp,
        proxy,
        _dir: dir,
    };
    (setup, endpoints)
}

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

#[tokio::test]
async fn streams_read_to_done_are_counted_as_successes_with_their_tokens() {
    // uvicorn (vLLM, SGLang, LiteLLM) ends the body after [DONE] in another
    // write; openai-python and LangChain close the connection at [DONE].
    let uvicorn = fake(&["late-eof:1s", "usage-in-choice"], FakeConfig::default()).await;
    let (setup, endpoints) = setup(&[&uvicorn]).await;
    let client = http();
    for _ in 0..10 {
        let response = client
            .post(format!("{}/v1/chat/completions", setup.proxy.url()))
            .json(&chat_body("m", true))
            .send()
            .await
            .unwrap();
        let mut body = response.bytes_stream();
        let mut text = String::new();
        while let Some(chunk) = body.next().await {
            text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            if text.contains("data: [DONE]\n\n") {
                break;
            }
        }
        assert!(text.contains("data: [DONE]"), "{text}");
        assert!(!text.contains("usage"), "usage leaked: {text}");
    }
    let grpc = setup.cp.grpc_url();
    let stats = eventually(Duration::from_secs(10), "10 requests counted", || async {
        let o = overview(&grpc).await;
        let e = endpoint_stats(&o, &endpoints[0].id).clone();
        (e.total_requests == 10).then_some(e)
    })
    .await;
    assert_eq!(stats.successful_requests, 10);
    assert_eq!(stats.failed_requests, 0);
    assert_eq!(stats.total_input_tokens, 80);
    assert_eq!(stats.total_output_tokens, 50);
}

#[tokio::test]
async fn a_cool_down_shows_in_the_dashboard_over_grpc_and_rest() {
    let limited = fake(&["rate-limited:30"], FakeConfig::default()).await;
    let healthy = fake(&[], FakeConfig::default()).await;
    let (setup, endpoints) = setup(&[&limited, &healthy]).await;
    let client = http();
    for _ in 0..10 {
        let response = client
            .post(format!("{}/v1/chat/completions", setup.proxy.url()))
            .json(&chat_body("m", false))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let grpc = setup.cp.grpc_url();
    eventually(
        Duration::from_secs(10),
        "cool-down in GetOverview",
        || async {
            let o = overview(&grpc).await;
            let cooling = endpoint_stats(&o, &endpoints[0].id).cooling_down_proxies;
            let other = endpoint_stats(&o, &endpoints[1].id).cooling_down_proxies;
            (cooling == 1 && other == 0).then_some(())
        },
    )
    .await;
    for path in ["endpoints", "overview"] {
        let url = format!("{}/api/dashboard/{path}", setup.cp.http_url());
        let reply = get_json(url).await;
        let entry = reply["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == endpoints[0].id.as_str())
            .unwrap()
            .clone();
        assert_eq!(entry["coolingDownProxies"], "1", "{path}: {entry}");
    }
    assert_eq!(limited.requests(), 1, "cooling for its Retry-After");
}
