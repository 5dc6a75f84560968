//! The control plane binary on its own: registry over gRPC and REST,
//! health checks against a fake backend, restarts, grpcurl, bad databases.

use std::time::Duration;

use llmlb_proto::v1 as pb;
use llmlb_testkit::*;
use serde_json::json;

fn start() -> (ControlPlane, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(ControlPlaneOptions::new(dir.path().join("llmlb.db")));
    (cp, dir)
}

#[tokio::test]
async fn endpoints_are_managed_through_grpc_and_rest() {
    let (cp, _dir) = start();
    let grpc = cp.grpc_url();
    let rest = format!("{}/api/endpoints", cp.http_url());
    let client = http();

    let mut ec = endpoints_client(&grpc);
    let a = ec
        .create_endpoint(pb::CreateEndpointRequest {
            name: "a".into(),
            base_url: "http://127.0.0.1:9".into(),
            api_key: Some("sk-secret-upstream".into()),
            models: vec!["m1".into()],
            health_path: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(a.has_api_key);
    assert_eq!(a.models, vec!["m1".to_string()]);

    let resp = client
        .post(&rest)
        .json(&json!({"name": "b", "baseUrl": "http://127.0.0.1:10/"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let b: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(b["baseUrl"], "http://127.0.0.1:10");
    assert_eq!(b["status"], "ENDPOINT_STATUS_PENDING");

    // Both show up both ways; the upstream key never does.
    let listed = ec
        .list_endpoints(pb::ListEndpointsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .endpoints
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    let text = client
        .get(&rest)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let listed: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(listed["endpoints"].as_array().unwrap().len(), 2);
    assert!(!text.contains("sk-secret-upstream"));

    // PATCH renames; GET reads it back.
    let url_a = format!("{rest}/{}", a.id);
    let patched: serde_json::Value = client
        .patch(&url_a)
        .json(&json!({"name": "a2"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["name"], "a2");
    let got = ec
        .get_endpoint(pb::GetEndpointRequest { id: a.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.name, "a2");

    // Errors: status codes and grpc-gateway bodies.
    let cases = [
        (
            client
                .post(&rest)
                .json(&json!({"name": "c", "baseUrl": "ftp://x"})),
            400,
            3,
        ),
        (
            client
                .post(&rest)
                .json(&json!({"name": "b", "baseUrl": "http://x"})),
            409,
            6,
        ),
        (client.post(&rest).body("{not json"), 400, 3),
        (
            client
                .post(&rest)
                .json(&json!({"name": "c", "baseUrl": "http://x", "bogus": 1})),
            400,
            3,
        ),
        (client.get(format!("{rest}/not-a-uuid")), 400, 3),
        (
            client.get(format!("{rest}/{}", uuid::Uuid::new_v4())),
            404,
            5,
        ),
        (
            client.delete(format!("{rest}/{}", uuid::Uuid::new_v4())),
            404,
            5,
        ),
        (client.get(format!("{}/api/nope", cp.http_url())), 404, 5),
        (client.put(&rest), 405, 12),
    ];
    for (request, status, code) in cases {
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["code"], code, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(body["details"], json!([]));
    }
    let err = ec
        .create_endpoint(pb::CreateEndpointRequest {
            name: "b".into(),
            base_url: "http://x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let err = ec
        .get_endpoint(pb::GetEndpointRequest { id: "zzz".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Nothing was lost or changed by the bad requests.
    let listed = ec
        .list_endpoints(pb::ListEndpointsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .endpoints
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        vec!["a2", "b"]
    );

    let resp = client.delete(&url_a).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let err = ec
        .get_endpoint(pb::GetEndpointRequest { id: a.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// Issue 2 / seed US2: ONLINE → ERROR → OFFLINE → ONLINE as the backend
/// stops and comes back; the last latency is kept while it is down.
#[tokio::test]
async fn health_checks_follow_the_backend_and_keep_latency() {
    let (cp, _dir) = start();
    let grpc = cp.grpc_url();
    let config = FakeConfig {
        models: vec!["m1".into(), "m2".into()],
        latency: Duration::from_millis(30),
        ..Default::default()
    };
    let fake = FakeServer::start(config.clone()).await.unwrap();
    let addr = fake.addr();
    let e = create_endpoint(&grpc, "fake", &fake.base_url(), &[]).await;
    assert_eq!(e.status, pb::EndpointStatus::Pending as i32);
    assert_eq!(e.latency_ms, None);

    let status_is = |want: pb::EndpointStatus| {
        let grpc = grpc.clone();
        let id = e.id.clone();
        move || {
            let grpc = grpc.clone();
            let id = id.clone();
            async move {
                let o = overview(&grpc).await;
                let s = endpoint_stats(&o, &id).clone();
                (s.status == want as i32).then_some(s)
            }
        }
    };
    let online = eventually(
        Duration::from_secs(10),
        "ONLINE",
        status_is(pb::EndpointStatus::Online),
    )
    .await;
    let latency = online.latency_ms.expect("latency measured");
    assert!(
        latency >= 30.0,
        "latency {latency} includes the backend's 30 ms"
    );
    assert_eq!(online.models, vec!["m1".to_string(), "m2".to_string()]);

    fake.stop().await;
    let error = eventually(
        Duration::from_secs(10),
        "ERROR",
        status_is(pb::EndpointStatus::Error),
    )
    .await;
    assert_eq!(error.latency_ms, Some(latency));
    assert!(error.last_error.is_some());
    let offline = eventually(
        Duration::from_secs(10),
        "OFFLINE",
        status_is(pb::EndpointStatus::Offline),
    )
    .await;
    assert_eq!(offline.latency_ms, Some(latency));
    assert_eq!(offline.models, vec!["m1".to_string(), "m2".to_string()]);

    let _fake = FakeServer::start_on(
        addr,
        FakeConfig {
            latency: Duration::from_millis(60),
            ..config
        },
    )
    .await
    .unwrap();
    let back = eventually(
        Duration::from_secs(10),
        "ONLINE again",
        status_is(pb::EndpointStatus::Online),
    )
    .await;
    let new_latency = back.latency_ms.unwrap();
    assert!(
        new_latency >= 60.0,
        "the next success replaces the latency ({new_latency})"
    );
    assert_eq!(back.last_error, None);

    // The figures went to the database too: a restart shows the same.
    let options = cp.options.clone();
    assert!(cp.terminate().success());
    let cp = ControlPlane::restart_same(&ControlPlaneOptions {
        args: vec!["--health-check-interval".into(), "1h".into()],
        ..options
    });
    let o = overview(&cp.grpc_url()).await;
    let s = endpoint_stats(&o, &e.id);
    assert_eq!(s.latency_ms, Some(new_latency));
    assert_eq!(s.status, pb::EndpointStatus::Online as i32);
}

#[tokio::test]
async fn the_registry_survives_a_restart() {
    let (cp, _dir) = start();
    let grpc = cp.grpc_url();
    for (i, name) in ["x", "y", "z"].iter().enumerate() {
        create_endpoint(&grpc, name, &format!("http://127.0.0.1:{}", 9 + i), &["m"]).await;
    }
    let mut ec = endpoints_client(&grpc);
    let before = ec
        .list_endpoints(pb::ListEndpointsRequest {})
        .await
        .unwrap()
        .into_inner();
    let options = cp.options.clone();
    assert!(cp.kill().code().is_none(), "killed by a signal");
    let cp = ControlPlane::restart_same(&ControlPlaneOptions {
        args: vec!["--health-check-interval".into(), "1h".into()],
        ..options
    });
    let after = endpoints_client(&cp.grpc_url())
        .list_endpoints(pb::ListEndpointsRequest {})
        .await
        .unwrap()
        .into_inner();
    let key = |l: &pb::ListEndpointsResponse| {
        l.endpoints
            .iter()
            .map(|e| {
                (
                    e.id.clone(),
                    e.name.clone(),
                    e.base_url.clone(),
                    e.models.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&after), key(&before));
    assert_eq!(after.endpoints.len(), 3);
}

#[tokio::test]
async fn grpcurl_lists_services_and_creates_an_endpoint() {
    let (cp, _dir) = start();
    let addr = cp.options.grpc.to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("grpcurl")
            .args(args)
            .output()
            .expect("grpcurl on PATH (make test-deps installs it in ~/.cache/llmlb-venv/bin, which make test puts on PATH)");
        assert!(
            out.status.success(),
            "grpcurl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let list = run(&["-plaintext", &addr, "list"]);
    for service in [
        "llmlb.v1.EndpointService",
        "llmlb.v1.DashboardService",
        "llmlb.v1.ApiKeyService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            list.lines().any(|l| l == service),
            "{service} missing from:\n{list}"
        );
    }
    let describe = run(&["-plaintext", &addr, "describe", "llmlb.v1.Stats"]);
    assert!(describe.contains("average_response_time_ms"), "{describe}");
    let created = run(&[
        "-plaintext",
        "-d",
        r#"{"name": "via-grpcurl", "baseUrl": "http://127.0.0.1:9"}"#,
        &addr,
        "llmlb.v1.EndpointService/CreateEndpoint",
    ]);
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["name"], "via-grpcurl");
    let listed = endpoints_client(&cp.grpc_url())
        .list_endpoints(pb::ListEndpointsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.endpoints[0].id, created["id"].as_str().unwrap());
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not.db");
    let content = b"this is not a database, but somebody's notes\n".repeat(100);
    std::fs::write(&path, &content).unwrap();
    let out = std::process::Command::new(process::bin_path("llmlb-control"))
        .args([
            "--database",
            path.to_str().unwrap(),
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not.db"),
        "the error names the file: {stderr}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), content);
}

/// One writer per SQLite file: a second control plane on the file of a
/// running one exits non-zero with a message naming the file, before it
/// serves anything; the first keeps running.
#[tokio::test]
async fn a_second_control_plane_on_the_same_file_exits_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let first = ControlPlane::start(ControlPlaneOptions::new(path.clone()));
    let out = std::process::Command::new(process::bin_path("llmlb-control"))
        .args([
            "--database",
            path.to_str().unwrap(),
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the second one must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&path.display().to_string()) && stderr.contains("another control plane"),
        "the error names the file: {stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "it never listened"
    );
    // The first one is unaffected.
    overview(&first.grpc_url()).await;
}

#[test]
fn bad_flags_exit_64_with_one_line() {
    for args in [
        &["--health-check-interval", "soon"][..],
        &["--grpc-listen", "0.0.0.0:0"][..],
    ] {
        let out = std::process::Command::new(process::bin_path("llmlb-control"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}

#[tokio::test]
async fn a_missing_database_file_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub-dir-free.db");
    assert!(!path.exists());
    let cp = ControlPlane::start(ControlPlaneOptions::new(path.clone()));
    assert!(path.exists());
    let health = http()
        .get(format!("{}/healthz", cp.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["role"], "leader", "SQLite: always the leader");
}

/// The endpoint's state as the API shows it.
async fn endpoint_now(grpc: &str, id: &str) -> pb::Endpoint {
    endpoints_client(grpc)
        .get_endpoint(pb::GetEndpointRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn wait_status(grpc: &str, id: &str, status: pb::EndpointStatus) -> pb::Endpoint {
    eventually(Duration::from_secs(20), "endpoint status", || async {
        let e = endpoint_now(grpc, id).await;
        (e.status == status as i32).then_some(e)
    })
    .await
}

/// A server without `GET /v1/models` (404): with models given by hand it is
/// ONLINE (any answer but 5xx is alive); without them it is not, and
/// `lastError` names the full URL probed. A `baseUrl` ending in `/v1` (or
/// `/v1/`) is stored as the server root, so nothing asks `/v1/v1/models`.
/// With a `healthPath`, that path is probed instead (any 2xx is alive).
#[tokio::test]
async fn servers_without_a_model_list_are_usable_with_models_given_by_hand() {
    let (cp, _dir) = start();
    let grpc = cp.grpc_url();
    let fake = FakeServer::start(FakeConfig {
        models: vec!["m".into()],
        habits: llmlb_fake_openai::Habits::parse(["no-models"]).unwrap(),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let by_hand = create_endpoint(
        &grpc,
        "by-hand",
        &format!("{}/v1/", fake.base_url()),
        &["m"],
    )
    .await;
    assert_eq!(by_hand.base_url, fake.base_url(), "the root is stored");
    wait_status(&grpc, &by_hand.id, pb::EndpointStatus::Online).await;

    let discover =
        create_endpoint(&grpc, "discover", &format!("{}/v1", fake.base_url()), &[]).await;
    let e = wait_status(&grpc, &discover.id, pb::EndpointStatus::Error).await;
    assert_eq!(
        e.last_error.as_deref(),
        Some(format!("GET {}/v1/models answered 404 Not Found", fake.base_url()).as_str())
    );

    // A health path is probed instead of /v1/models: here one that does not
    // exist, so the endpoint with models by hand fails, naming that URL.
    let mut client = endpoints_client(&grpc);
    let e = client
        .update_endpoint(pb::UpdateEndpointRequest {
            id: by_hand.id.clone(),
            health_path: Some("/health".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.health_path.as_deref(), Some("/health"));
    let e = wait_status(&grpc, &by_hand.id, pb::EndpointStatus::Error).await;
    assert_eq!(
        e.last_error.as_deref(),
        Some(format!("GET {}/health answered 404 Not Found", fake.base_url()).as_str())
    );
    // Removed again (the empty string): /v1/models' 404 counts as alive.
    client
        .update_endpoint(pb::UpdateEndpointRequest {
            id: by_hand.id.clone(),
            health_path: Some(String::new()),
            ..Default::default()
        })
        .await
        .unwrap();
    let e = wait_status(&grpc, &by_hand.id, pb::EndpointStatus::Online).await;
    assert_eq!(e.health_path, None);

    // A health path that answers 2xx, on a server with a model list: the
    // models are still discovered from /v1/models. It survives a restart.
    let listing = FakeServer::start(FakeConfig {
        models: vec!["x".into()],
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let e = endpoints_client(&grpc)
        .create_endpoint(pb::CreateEndpointRequest {
            name: "health-path".into(),
            base_url: listing.base_url(),
            health_path: Some("/v1/models".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let online = wait_status(&grpc, &e.id, pb::EndpointStatus::Online).await;
    assert_eq!(online.models, ["x"]);
    let options = cp.options.clone();
    let _ = cp.terminate();
    let cp = ControlPlane::restart_same(&options);
    let e = endpoint_now(&cp.grpc_url(), &e.id).await;
    assert_eq!(e.health_path.as_deref(), Some("/v1/models"));
}

/// The proxy's `GET /v1/models` serves each model as its server described
/// it (vLLM-like: `owned_by`, `created`, `max_model_len`, ...), not a
/// placeholder.
#[tokio::test]
async fn the_proxy_lists_models_as_their_server_described_them() {
    let (cp, _dir) = start();
    let grpc = cp.grpc_url();
    let fake = FakeServer::start(FakeConfig {
        models: vec!["m".into()],
        habits: llmlb_fake_openai::Habits::parse(["model-metadata"]).unwrap(),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let e = create_endpoint(&grpc, "vllm", &fake.base_url(), &[]).await;
    wait_online(&grpc, &e.id).await;
    let proxy = Proxy::start(&grpc, &[]);
    wait_model_listed(&proxy.url(), "m", None).await;
    let direct = get_json(format!("{}/v1/models", fake.base_url())).await;
    let via_proxy = get_json(format!("{}/v1/models", proxy.url())).await;
    assert_eq!(via_proxy["data"], direct["data"]);
    assert_eq!(via_proxy["data"][0]["owned_by"], "vllm");
    assert_eq!(via_proxy["data"][0]["max_model_len"], 32768);
    assert_eq!(via_proxy["data"][0]["created"], 1_733_000_000);
}
