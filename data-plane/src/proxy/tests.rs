//! Request-path tests that need no upstream: everything the proxy answers
//! itself.

use super::*;
use crate::config::{ServerConfig, UpstreamConfig};
use crate::routing::Table;
use crate::stats::StatsSink;
use http_body_util::BodyExt;
use llmlb_proto::v1::{EndpointStatus, RouteApiKey, RouteEndpoint, RoutingTable};
use sha2::{Digest, Sha256};

fn app(require_api_key: bool) -> App {
    let metrics = Metrics::new();
    let server = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_body_size: 1024,
        require_api_key,
        shutdown_grace: Duration::from_secs(1),
        workers: 1,
        timeouts: crate::config::Timeouts {
            header: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            body: Duration::from_secs(1),
            send: Duration::from_secs(1),
        },
        max_connections: 10,
        connection_body_budget: 2048,
    };
    let upstream = UpstreamConfig {
        connect_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        sse_keepalive: None,
    };
    let reporter = Reporter {
        stats: StatsSink::new(10, metrics.clone()),
        metrics,
    };
    App::new(
        &server,
        &upstream,
        Arc::from("p"),
        Routes::default(),
        Loads::default(),
        reporter,
    )
}

fn install(app: &App, api_keys: Vec<RouteApiKey>) {
    let endpoint = |id: &str, status: EndpointStatus, models: &[&str]| RouteEndpoint {
        id: id.into(),
        base_url: "http://127.0.0.1:9".into(),
        api_key: None,
        status: status as i32,
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        name: id.into(),
        model_objects: Default::default(),
    };
    let proto = RoutingTable {
        version: 1,
        endpoints: vec![
            endpoint("on", EndpointStatus::Online, &["m-on", "shared"]),
            endpoint("off", EndpointStatus::Offline, &["m-off", "shared"]),
        ],
        api_keys,
        generated_at: None,
        require_api_key: false,
    };
    app.routes.install(Table::new(proto, &app.loads));
}

async fn call(
    app: &App,
    method: &str,
    path: &str,
    body: &str,
    auth: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(key) = auth {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = app.handle(request).await;
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
        String::from_utf8_lossy(&bytes).into(),
    ));
    (status, json)
}

#[tokio::test]
async fn before_any_table_requests_get_503() {
    let app = app(false);
    let (status, body) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"m"}"#,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "not_ready");
    assert_eq!(
        call(&app, "GET", "/healthz", "", None).await,
        (StatusCode::OK, "ok".into())
    );
}

#[tokio::test]
async fn bad_requests() {
    let app = app(false);
    install(&app, vec![]);
    let cases = [
        (
            "POST",
            "/v1/chat/completions",
            "{oops",
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/completions",
            "[]",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/embeddings",
            r#"{"input":"x"}"#,
            StatusCode::BAD_REQUEST,
            "missing_model",
        ),
        (
            "POST",
            "/v1/responses",
            r#"{"model":1}"#,
            StatusCode::BAD_REQUEST,
            "missing_model",
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"nope"}"#,
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"m-off"}"#,
            StatusCode::SERVICE_UNAVAILABLE,
            "no_online_endpoint",
        ),
        (
            "GET",
            "/v1/chat/completions",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "POST",
            "/v1/models",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "GET",
            "/v2/unknown",
            "",
            StatusCode::NOT_FOUND,
            "unknown_url",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got, json) = call(&app, method, path, body, None).await;
        assert_eq!(
            (got, json["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {path} {body}"
        );
        assert!(json["error"]["message"].is_string() && json["error"]["type"].is_string());
    }
    let big = format!(r#"{{"model":"m-on","pad":"{}"}}"#, "x".repeat(2000));
    let (status, json) = call(&app, "POST", "/v1/chat/completions", &big, None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json["error"]["code"], "request_too_large");
    let metrics = app.metrics().encode();
    assert!(
        metrics.contains(r#"llmlb_proxy_requests_total{endpoint="",model="",status="400"} 4"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn models_lists_online_models_only() {
    let app = app(false);
    install(&app, vec![]);
    let (status, body) = call(&app, "GET", "/v1/models", "", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m-on", "shared"]);
    assert_eq!(body["data"][0]["owned_by"], "llmlb");
}

/// A model's object from its server's `/v1/models` (via the routing table)
/// is served whole: `created`, `owned_by` and extra fields such as
/// `max_model_len`; the first ONLINE endpoint's wins.
#[tokio::test]
async fn models_keep_what_the_first_server_said() {
    let app = app(false);
    let endpoint = |id: &str, status: EndpointStatus, owner: &str| {
        RouteEndpoint {
        id: id.into(),
        base_url: "http://127.0.0.1:9".into(),
        status: status as i32,
        models: vec!["m".into()],
        name: id.into(),
        model_objects: [(
            "m".to_string(),
            format!(r#"{{"id":"m","object":"model","created":1700000000,"owned_by":"{owner}","max_model_len":32768}}"#),
        )]
        .into(),
        ..Default::default()
    }
    };
    let proto = RoutingTable {
        version: 1,
        endpoints: vec![
            endpoint("off", EndpointStatus::Offline, "offline-one"),
            endpoint("a", EndpointStatus::Online, "vllm"),
            endpoint("b", EndpointStatus::Online, "other"),
        ],
        ..Default::default()
    };
    app.routes.install(Table::new(proto, &app.loads));
    let (status, body) = call(&app, "GET", "/v1/models", "", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["data"],
        json!([{"id":"m","object":"model","created":1700000000,"owned_by":"vllm","max_model_len":32768}])
    );
}

#[tokio::test]
async fn api_keys_are_checked_once_any_exists_or_when_required() {
    let app = app(false);
    install(
        &app,
        vec![RouteApiKey {
            id: "k1".into(),
            sha256: hex::encode(Sha256::digest(b"sk-good")),
        }],
    );
    for key in [None, Some("sk-bad")] {
        let (status, body) = call(&app, "GET", "/v1/models", "", key).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    assert_eq!(
        call(&app, "GET", "/v1/models", "", Some("sk-good")).await.0,
        StatusCode::OK
    );
    let (status, _) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"nope"}"#,
        Some("sk-good"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let strict = app_with_no_keys(true);
    assert_eq!(
        call(&strict, "GET", "/v1/models", "", Some("anything"))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app_with_no_keys(false), "GET", "/v1/models", "", None)
            .await
            .0,
        StatusCode::OK
    );
}

fn app_with_no_keys(require: bool) -> App {
    let app = app(require);
    install(&app, vec![]);
    app
}
