//! Tokens and exposure rules of the control plane.

use llmlb_proto::v1 as pb;
use llmlb_testkit::*;
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
    let listed: serde_json::Value = http()
        .get(format!("{}/api/api-keys", cp.http_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["apiKeys"][0]["name"], "ci");
    let id = listed["apiKeys"][0]["id"].as_str().unwrap();
    let resp = http()
        .delete(format!("{}/api/api-keys/{id}", cp.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let listed: serde_json::Value = http()
        .get(format!("{}/api/api-keys", cp.http_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["apiKeys"], serde_json::json!([]));
}

/// TLS on both listeners with a self-signed certificate.
#[tokio::test]
async fn tls_protects_both_listeners() {
    let dir = tempfile::tempdir().unwrap();
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
    let cp = ControlPlane::start(options);

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
