//! Test support for llmlb: starts the real `llmlb-control` and `llmlb-proxy`
//! binaries (each in its own process group, killed with it), fake OpenAI
//! backends, and offers small clients and a poll-with-deadline helper.
//!
//! The binaries are taken from the target directory the tests run from;
//! `make test` builds them first (`cargo build --workspace --bins`).
#![forbid(unsafe_code)]

pub mod process;
pub mod run_script;

pub use process::bin_path;

use std::future::Future;
use std::time::{Duration, Instant};

pub use llmlb_fake_openai::{FakeConfig, FakeMode, FakeServer, Habits};
pub use process::{ControlPlane, ControlPlaneOptions, Proxy, ProxyOptions};
pub use run_script::{RunAddrs, RunScript};

use llmlb_proto::v1 as pb;
use tonic::transport::Channel;

/// Polls `check` until it returns `Some`, failing after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gRPC channel to `url` (lazy: connects on first use, reconnects).
pub fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .expect("valid url")
        .connect_lazy()
}

/// EndpointService client.
pub fn endpoints_client(url: &str) -> pb::endpoint_service_client::EndpointServiceClient<Channel> {
    pb::endpoint_service_client::EndpointServiceClient::new(channel(url))
}

/// DashboardService client.
pub fn dashboard_client(
    url: &str,
) -> pb::dashboard_service_client::DashboardServiceClient<Channel> {
    pb::dashboard_service_client::DashboardServiceClient::new(channel(url))
}

/// Registers an endpoint over gRPC and returns it.
pub async fn create_endpoint(
    grpc_url: &str,
    name: &str,
    base_url: &str,
    models: &[&str],
) -> pb::Endpoint {
    endpoints_client(grpc_url)
        .create_endpoint(pb::CreateEndpointRequest {
            name: name.into(),
            base_url: base_url.into(),
            api_key: None,
            models: models.iter().map(|m| m.to_string()).collect(),
            health_path: None,
        })
        .await
        .expect("create endpoint")
        .into_inner()
}

/// The overview over gRPC.
pub async fn overview(grpc_url: &str) -> pb::Overview {
    dashboard_client(grpc_url)
        .get_overview(pb::GetOverviewRequest {})
        .await
        .expect("get overview")
        .into_inner()
}

/// An endpoint's dashboard figures from an overview.
pub fn endpoint_stats<'a>(o: &'a pb::Overview, id: &str) -> &'a pb::EndpointStats {
    o.endpoints
        .iter()
        .find(|e| e.id == id)
        .expect("endpoint in overview")
}

/// Waits until the endpoint is ONLINE (per gRPC).
pub async fn wait_online(grpc_url: &str, id: &str) {
    eventually(Duration::from_secs(20), "endpoint online", || async {
        let o = overview(grpc_url).await;
        (endpoint_stats(&o, id).status == pb::EndpointStatus::Online as i32).then_some(())
    })
    .await
}

/// A plain HTTP client.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// A chat completion request body.
pub fn chat_body(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}],
    })
}

/// Sends one batch of records over the stats stream, as a proxy does, and
/// returns the acknowledgement.
pub async fn send_stats(
    grpc_url: &str,
    proxy_id: &str,
    batch_id: u64,
    records: Vec<pb::RequestRecord>,
) -> pb::StatsAck {
    use pb::stats_upload::Kind;
    let mut client = pb::stats_service_client::StatsServiceClient::new(channel(grpc_url));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::StatsUpload {
        kind: Some(Kind::Hello(pb::StatsHello {
            proxy_id: proxy_id.into(),
        })),
    })
    .await
    .unwrap();
    tx.send(pb::StatsUpload {
        kind: Some(Kind::Batch(pb::StatsBatch { batch_id, records })),
    })
    .await
    .unwrap();
    let mut acks = client
        .stream_stats(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stats stream")
        .into_inner();
    let ack = acks.message().await.expect("ack").expect("one ack");
    drop(tx);
    ack
}

/// A stats record of a successful chat completion on `endpoint_id`.
pub fn record(
    endpoint_id: &str,
    completed_at_ms: i64,
    output_tokens: u64,
    duration_ms: f64,
) -> pb::RequestRecord {
    pb::RequestRecord {
        request_id: uuid::Uuid::now_v7().to_string(),
        proxy_id: "test".into(),
        endpoint_id: endpoint_id.into(),
        model: "m".into(),
        api_kind: pb::ApiKind::ChatCompletions as i32,
        status_code: 200,
        success: true,
        duration_ms,
        ttft_ms: Some(1.0),
        input_tokens: 3,
        output_tokens,
        completed_at: Some(pbjson_types::Timestamp {
            seconds: completed_at_ms.div_euclid(1000),
            nanos: (completed_at_ms.rem_euclid(1000) * 1_000_000) as i32,
        }),
        error: None,
        api_key_id: None,
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Waits until the proxy at `proxy_url` lists `model` in `/v1/models` (it
/// received a routing table with the model ONLINE); `api_key` is sent when
/// given.
pub async fn wait_model_listed(proxy_url: &str, model: &str, api_key: Option<&str>) {
    let url = format!("{proxy_url}/v1/models");
    eventually(Duration::from_secs(20), "proxy routing table", || {
        let url = url.clone();
        async move {
            let mut request = http().get(&url);
            if let Some(key) = api_key {
                request = request.bearer_auth(key);
            }
            let v: serde_json::Value = request.send().await.ok()?.json().await.ok()?;
            v["data"]
                .as_array()?
                .iter()
                .any(|m| m["id"] == model)
                .then_some(())
        }
    })
    .await
}

/// The value of an unlabelled sample `name` (e.g.
/// `llmlb_proxy_stats_dropped_total`) in the proxy's `/metrics`.
pub async fn proxy_metric(proxy_url: &str, name: &str) -> f64 {
    let text = http()
        .get(format!("{proxy_url}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| {
            let (sample, value) = line.split_once(' ')?;
            (sample == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .unwrap_or_else(|| panic!("no sample {name} in /metrics:\n{text}"))
}

/// GET `url` and parse the JSON reply (panics on any failure: for tests).
pub async fn get_json(url: impl reqwest::IntoUrl) -> serde_json::Value {
    http()
        .get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON reply")
}
