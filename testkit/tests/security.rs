//! Tokens and exposure rules of the control plane.

use llmlb_proto::v1 as pb;
use llmlb_testkit::*;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;

#[tokio::test]
async fn the_admin_token_guards_operator_apis_but_not_reflection_or_health() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ControlPlaneOptions::new(dir.path().join("llmlb.db"));
    options.args.extend([
        "--admin-token".into(),
        "op-secret".into(),
        "--proxy-token".into(),
        "px-secret".into(),
    ]);
    let cp = ControlPlane::start(options);
    let grpc = cp.grpc_url();

    // gRPC without / with a wrong / with the right token.
    let err = endpoints_client(&grpc)
        .list_endpoints(pb::ListEndpointsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::GetStatsRequest {});
    req.metadata_mut()
        .insert("authorization", MetadataValue::from_static("Bearer wrong"));
    assert_eq!(
        dashboard_client(&grpc)
            .get_stats(req)
            .await
            .unwrap_err()
            .code(),
        tonic::Code::Unauthenticated
    );
    let mut req = tonic::Request::new(pb::GetStatsRequest {});
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::from_static("Bearer op-secret"),
    );
    assert!(dashboard_client(&grpc).get_stats(req).await.is_ok());
    // GetOverview is served from encoded bytes by its own route: same check.
    let err = dashboard_client(&grpc)
        .get_overview(pb::GetOverviewRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::GetOverviewRequest {});
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::from_static("Bearer op-secret"),
    );
    let overview = dashboard_client(&grpc)
        .get_overview(req)
        .await
        .expect("GetOverview with the admin token")
        .into_inner();
    assert_eq!(overview.history.len(), 60);

    // The proxy token does not open operator APIs, and vice versa.
    let mut req = tonic::Request::new(pb::GetStatsRequest {});
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::from_static("Bearer px-secret"),
    );
    assert_eq!(
        dashboard_client(&grpc)
            .get_stats(req)
            .await
            .unwrap_err()
            .code(),
        tonic::Code::Unauthenticated
    );
    let mut routing = pb::routing_service_client::RoutingServiceClient::new(channel(&grpc));
    let err = routing
        .watch_routing(pb::WatchRoutingRequest {
            proxy_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::WatchRoutingRequest {
        proxy_id: "x".into(),
    });
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::from_static("Bearer op-secret"),
    );
    assert_eq!(
        routing.watch_routing(req).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    // REST: 401 with the grpc-gateway body; the token opens it.
    let url = format!("{}/api/dashboard/stats", cp.http_url());
    let resp = http().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], 16);
    let resp = http()
        .get(&url)
        .bearer_auth("op-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http()
        .post(format!("{}/api/endpoints", cp.http_url()))
        .body(r#"{"name":"x","baseUrl":"http://h"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "no write without the token");

    // Health and reflection stay open.
    assert_eq!(
        http()
            .get(format!("{}/healthz", cp.http_url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let out = std::process::Command::new("grpcurl")
        .args(["-plaintext", &cp.options.grpc.to_string(), "list"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("llmlb.v1.EndpointService"));
    let out = std::process::Command::new("grpcurl")
        .args([
            "-plaintext",
            &cp.options.grpc.to_string(),
            "grpc.health.v1.Health/Check",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("SERVING"));
}

/// The `Bearer` scheme is case-insensitive (RFC 7235) on gRPC and REST, as
/// on the proxy; the token itself is compared exactly.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_on_grpc_and_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ControlPlaneOptions::new(dir.path().join("llmlb.db"));
    options
        .args
        .extend(["--admin-token".into(), "op-secret".into()]);
    let cp = ControlPlane::start(options);
    let grpc = cp.grpc_url();
    for value in ["bearer op-secret", "BEARER op-secret", "Bearer op-secret"] {
        let mut req = tonic::Request::new(pb::GetStatsRequest {});
        req.metadata_mut()
            .insert("authorization", MetadataValue::from_static(value));
        assert!(
            dashboard_client(&grpc).get_stats(req).await.is_ok(),
            "gRPC with {value:?}"
        );
        let resp = http()
            .get(format!("{}/api/dashboard/stats", cp.http_url()))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "REST with {value:?}");
    }
    let resp = http()
        .get(format!("{}/api/dashboard/stats", cp.http_url()))
        .header("authorization", "bearer OP-SECRET")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the token is case-sensitive");
}

#[tokio::test]
async fn secrets_never_appear_in_replies() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(ControlPlaneOptions::new(dir.path().join("llmlb.db")));
    let mut ec = endpoints_client(&cp.grpc_url());
    ec.create_endpoint(pb::CreateEndpointRequest {
        name: "e".into(),
        base_url: "http://127.0.0.1:9".into(),
        api_key: Some("sk-upstream-DO-NOT-LEAK".into()),
        models: vec!["m".into()],
        health_path: None,
    })
    .await
    .unwrap();
    let key: serde_json::Value = http()
        .post(format!("{}/api/api-keys", cp.http_url()))
        .body(r#"{"name":"ci"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = key["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with(key["apiKey"]["prefix"].as_str().unwrap()));
    for path in [
        "/api/endpoints",
        "/api/dashboard/overview",
        "/api/api-keys",
        "/metrics",
    ] {
        let text = http()
            .get(format!("{}{path}", cp.http_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains("DO-NOT-LEAK"), "{path}");
        assert!(!text.contains(&secret), "{path}");
    }
    let listed: serde_json::Value = get_json(format!("{}/api/api-keys", cp.http_url())).await;
    assert_eq!(listed["apiKeys"][0]["name"], "ci");
    let id = listed["apiKeys"][0]["id"].as_str().unwrap();
    let resp = http()
        .delete(format!("{}/api/api-keys/{id}", cp.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let listed: serde_json::Value = get_json(format!("{}/api/api-keys", cp.http_url())).await;
    assert_eq!(listed["apiKeys"], serde_json::json!([]));
}

/// A control plane with TLS on both listeners (self-signed for
/// `localhost`); returns it, the certificate PEM and its path.
fn tls_control_plane(dir: &tempfile::TempDir) -> (ControlPlane, String, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut options = ControlPlaneOptions::new(dir.path().join("llmlb.db"));
    options.args.extend([
        "--tls-cert".into(),
        cert_path.display().to_string(),
        "--tls-key".into(),
        key_path.display().to_string(),
    ]);
    (ControlPlane::start(options), cert_pem, cert_path)
}

/// TLS on both listeners with a self-signed certificate.
#[tokio::test]
async fn tls_protects_both_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, cert_pem, _cert_path) = tls_control_plane(&dir);

    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&cert_pem))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!(
        "https://localhost:{}",
        cp.options.grpc.port()
    ))
    .unwrap()
    .tls_config(tls)
    .unwrap()
    .connect()
    .await
    .unwrap();
    let stats = pb::dashboard_service_client::DashboardServiceClient::new(channel)
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.total_endpoints, 0);

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!(
        "https://localhost:{}/api/dashboard/stats",
        cp.options.http.port()
    );
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Plain HTTP on the TLS port does not get an answer.
    let plain = http()
        .get(format!("http://{}/api/dashboard/stats", cp.options.http))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

#[test]
fn an_unusable_certificate_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let out = std::process::Command::new(bin_path("llmlb-control"))
        .args([
            "--database",
            dir.path().join("x.db").to_str().unwrap(),
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--tls-cert",
            bad.to_str().unwrap(),
            "--tls-key",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A REST call to the control plane, with the admin token when given.
async fn rest(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = http().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let resp = request.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// A chat request to a proxy with an optional client key; status and body.
async fn chat_with_key(proxy: &str, key: Option<&str>, stream: bool) -> (u16, String) {
    let mut request = http()
        .post(format!("{proxy}/v1/chat/completions"))
        .json(&chat_body("m", stream));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let resp = request.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

fn assert_openai_401(body: &str) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

/// Client API keys end to end: created over REST, required by every proxy
/// once one exists (and by a `--require-api-key` proxy before), `lastUsedAt`
/// follows the requests, and a revoked key is refused by every proxy
/// within one second of the revoke reply.
#[tokio::test]
async fn client_api_keys_guard_every_proxy_and_revocation_reaches_them_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(ControlPlaneOptions::new(dir.path().join("llmlb.db")));
    let grpc = cp.grpc_url();
    let fake = FakeServer::start(FakeConfig {
        models: vec!["m".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let e = create_endpoint(&grpc, "backend", &fake.base_url(), &[]).await;
    wait_online(&grpc, &e.id).await;
    let proxies = [Proxy::start(&grpc, &[]), Proxy::start(&grpc, &[])];
    let strict = Proxy::start(&grpc, &["--require-api-key"]);
    for p in &proxies {
        wait_model_listed(&p.url(), "m", None).await;
    }
    // --require-api-key: no key exists, still 401 without one.
    let body = eventually(
        Duration::from_secs(20),
        "strict proxy has a table",
        || async {
            let (status, body) = chat_with_key(&strict.url(), None, false).await;
            (status == 401).then_some(body)
        },
    )
    .await;
    assert_openai_401(&body);
    assert_eq!(chat_with_key(&proxies[0].url(), None, false).await.0, 200);

    let keys_url = format!("{}/api/api-keys", cp.http_url());
    let (status, created) = rest(
        reqwest::Method::POST,
        keys_url.clone(),
        None,
        Some(serde_json::json!({"name": "ci"})),
    )
    .await;
    assert_eq!(status, 200);
    let secret = created["secret"].as_str().unwrap().to_string();
    let id = created["apiKey"]["id"].as_str().unwrap().to_string();
    assert!(created["apiKey"].get("lastUsedAt").is_none());

    // Every proxy now refuses requests without the key and accepts it.
    let all = [&proxies[0], &proxies[1], &strict];
    for p in all {
        let body = eventually(Duration::from_secs(5), "key required", || async {
            let (status, body) = chat_with_key(&p.url(), None, false).await;
            (status == 401).then_some(body)
        })
        .await;
        assert_openai_401(&body);
        assert_eq!(chat_with_key(&p.url(), Some(&secret), false).await.0, 200);
        assert_eq!(chat_with_key(&p.url(), Some(&secret), true).await.0, 200);
        let (status, body) = chat_with_key(&p.url(), Some("llmlb-wrong"), false).await;
        assert_eq!(status, 401);
        assert_openai_401(&body);
        let resp = http()
            .get(format!("{}/v1/models", p.url()))
            .basic_auth("user", Some(&secret))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "only Bearer carries a key");
    }

    // lastUsedAt is set by the requests, and moves with the next one.
    let last_used = || async {
        let (_, listed) = rest(reqwest::Method::GET, keys_url.clone(), None, None).await;
        listed["apiKeys"][0]["lastUsedAt"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let first = eventually(Duration::from_secs(5), "lastUsedAt set", || async {
        last_used().await
    })
    .await;
    assert_eq!(
        chat_with_key(&proxies[1].url(), Some(&secret), false)
            .await
            .0,
        200
    );
    eventually(Duration::from_secs(5), "lastUsedAt moves", || async {
        last_used().await.filter(|t| *t > first)
    })
    .await;

    // Revoke: every proxy refuses the key within 1 s of the reply.
    let (status, _) = rest(
        reqwest::Method::DELETE,
        format!("{keys_url}/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let revoked = Instant::now();
    eventually(
        Duration::from_secs(1),
        "revoked key refused by every proxy",
        || async {
            for p in all {
                if chat_with_key(&p.url(), Some(&secret), false).await.0 != 401 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    eprintln!("revocation reached 3 proxies in {:?}", revoked.elapsed());
    // No key is left, and the proxies stay closed: revoking never opens them.
    for p in all {
        let (status, body) = chat_with_key(&p.url(), None, false).await;
        assert_eq!(status, 401);
        assert_openai_401(&body);
    }
}

/// A proxy talks to a TLS control plane (`https://`, self-signed
/// certificate trusted with `--control-plane-ca`): it gets the routing
/// table and its stats are counted. Without the CA it gets nothing.
#[tokio::test]
async fn a_proxy_reaches_an_https_control_plane_with_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, cert_pem, cert_path) = tls_control_plane(&dir);
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let rest_url = format!("https://localhost:{}", cp.options.http.port());

    let fake = FakeServer::start(FakeConfig {
        models: vec!["m".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let resp = client
        .post(format!("{rest_url}/api/endpoints"))
        .json(&serde_json::json!({"name": "b", "baseUrl": fake.base_url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let grpc = format!("https://localhost:{}", cp.options.grpc.port());
    let proxy = Proxy::start(&grpc, &["--control-plane-ca", cert_path.to_str().unwrap()]);
    let untrusting = Proxy::start(&grpc, &[]);
    wait_model_listed(&proxy.url(), "m", None).await;
    for stream in [false, true, false] {
        assert_eq!(chat_with_key(&proxy.url(), None, stream).await.0, 200);
    }
    let stats_url = format!("{rest_url}/api/dashboard/stats");
    eventually(Duration::from_secs(5), "counted over TLS", || async {
        let v: serde_json::Value = client
            .get(&stats_url)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["totalRequests"] == "3" && v["connectedProxies"] == 1).then_some(())
    })
    .await;
    assert_eq!(fake.requests(), 3);
    // The proxy without the CA never got a table.
    let resp = http()
        .get(format!("{}/v1/models", untrusting.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_ready");
}

/// Runs a binary that must refuse to start: exit 64 and one line on stderr
/// naming `--insecure`.
fn refused(binary: &str, args: &[&str]) {
    let out = std::process::Command::new(bin_path(binary))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{binary} {args:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("--insecure"), "{stderr}");
}

/// Starts `binary` (which must start) and returns its readiness line.
fn starts(binary: &str, args: &[&str]) -> String {
    use std::io::BufRead;
    let mut child = std::process::Command::new(bin_path(binary))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.contains("listening"), "{binary} {args:?}: {line:?}");
    line
}

/// Non-loopback listeners without the relevant token are refused (exit 64,
/// one line); with the token, or with `--insecure`, they start.
#[test]
fn non_loopback_listeners_need_a_token_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let db = db.to_str().unwrap();
    refused(
        "llmlb-control",
        &["--database", db, "--grpc-listen", "0.0.0.0:0"],
    );
    refused(
        "llmlb-control",
        &[
            "--database",
            db,
            "--grpc-listen",
            "0.0.0.0:0",
            "--admin-token",
            "a",
        ],
    );
    refused(
        "llmlb-control",
        &["--database", db, "--http-listen", "0.0.0.0:0"],
    );
    refused(
        "llmlb-proxy",
        &[
            "--listen",
            "0.0.0.0:0",
            "--control-plane",
            "http://127.0.0.1:9",
        ],
    );

    let line = starts(
        "llmlb-control",
        &[
            "--database",
            db,
            "--grpc-listen",
            "0.0.0.0:0",
            "--http-listen",
            "0.0.0.0:0",
            "--insecure",
        ],
    );
    assert!(line.contains("grpc=0.0.0.0:"), "{line}");
    starts(
        "llmlb-control",
        &[
            "--database",
            db,
            "--grpc-listen",
            "0.0.0.0:0",
            "--http-listen",
            "0.0.0.0:0",
            "--admin-token",
            "a",
            "--proxy-token",
            "p",
        ],
    );
    let line = starts(
        "llmlb-proxy",
        &[
            "--listen",
            "0.0.0.0:0",
            "--control-plane",
            "http://127.0.0.1:9",
            "--insecure",
        ],
    );
    assert!(line.contains("http=0.0.0.0:"), "{line}");
    starts(
        "llmlb-proxy",
        &[
            "--listen",
            "0.0.0.0:0",
            "--control-plane",
            "http://127.0.0.1:9",
            "--proxy-token",
            "p",
        ],
    );
}

/// With `RUST_LOG=debug` on both binaries and traffic through every path
/// that handles a secret (operator calls with the admin token, proxy streams
/// with the proxy token, an upstream key sent on every request and probe,
/// a client API key used, wrong and revoked), no secret appears in either
/// log.
#[tokio::test]
async fn no_secret_appears_in_the_logs_even_at_debug_level() {
    const ADMIN: &str = "admin-tok-DO-NOT-LOG-1";
    const PROXY: &str = "proxy-tok-DO-NOT-LOG-2";
    const UPSTREAM: &str = "sk-upstream-DO-NOT-LOG-3";
    let dir = tempfile::tempdir().unwrap();
    let cp_log = dir.path().join("control.log");
    let proxy_log = dir.path().join("proxy.log");
    let debug = vec![("RUST_LOG".to_string(), "debug".to_string())];
    let mut options = ControlPlaneOptions::new(dir.path().join("llmlb.db"));
    options.args.extend([
        "--admin-token".into(),
        ADMIN.into(),
        "--proxy-token".into(),
        PROXY.into(),
    ]);
    options.env = debug.clone();
    options.stderr = Some(cp_log.clone());
    let cp = ControlPlane::start(options);
    let api = format!("{}/api", cp.http_url());

    let fake = FakeServer::start(FakeConfig {
        models: vec!["m".into()],
        api_key: Some(UPSTREAM.into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let (status, e) = rest(
        reqwest::Method::POST,
        format!("{api}/endpoints"),
        Some(ADMIN),
        Some(serde_json::json!({"name": "b", "baseUrl": fake.base_url(), "apiKey": UPSTREAM})),
    )
    .await;
    assert_eq!(status, 200, "{e}");
    let (status, key) = rest(
        reqwest::Method::POST,
        format!("{api}/api-keys"),
        Some(ADMIN),
        Some(serde_json::json!({"name": "ci"})),
    )
    .await;
    assert_eq!(status, 200);
    let secret = key["secret"].as_str().unwrap().to_string();
    let key_id = key["apiKey"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        rest(
            reqwest::Method::GET,
            format!("{api}/endpoints"),
            Some("wrong"),
            None
        )
        .await
        .0,
        401
    );

    let proxy = Proxy::start_with(
        &cp.grpc_url(),
        ProxyOptions {
            args: vec!["--proxy-token".into(), PROXY.into()],
            env: debug,
            stderr: Some(proxy_log.clone()),
        },
    );
    wait_model_listed(&proxy.url(), "m", Some(&secret)).await;
    assert_eq!(
        chat_with_key(&proxy.url(), Some(&secret), false).await.0,
        200
    );
    assert_eq!(
        chat_with_key(&proxy.url(), Some(&secret), true).await.0,
        200
    );
    assert_eq!(
        fake.last_request().unwrap().authorization.as_deref(),
        Some(format!("Bearer {UPSTREAM}").as_str()),
        "the upstream key was used"
    );
    assert_eq!(
        chat_with_key(&proxy.url(), Some("llmlb-guess"), false)
            .await
            .0,
        401
    );
    eventually(Duration::from_secs(5), "requests counted", || async {
        let (_, st) = rest(
            reqwest::Method::GET,
            format!("{api}/dashboard/stats"),
            Some(ADMIN),
            None,
        )
        .await;
        (st["totalRequests"] == "2").then_some(())
    })
    .await;
    let (status, _) = rest(
        reqwest::Method::DELETE,
        format!("{api}/api-keys/{key_id}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(5), "revoked key refused", || async {
        (chat_with_key(&proxy.url(), Some(&secret), false).await.0 == 401).then_some(())
    })
    .await;
    assert!(proxy.terminate().success());
    assert!(cp.terminate().success());

    for (name, path) in [("control plane", &cp_log), ("proxy", &proxy_log)] {
        let log = std::fs::read_to_string(path).unwrap();
        assert!(log.contains("DEBUG"), "{name} logged at debug level");
        for secret in [ADMIN, PROXY, UPSTREAM, secret.as_str()] {
            assert!(
                !log.contains(secret),
                "{name} log contains the secret {secret:?}"
            );
        }
        // Nor the part after the visible prefix, in any form.
        assert!(!log.contains(&secret[12..]), "{name} log contains the key");
    }
}
