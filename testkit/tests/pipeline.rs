//! End to end with the real binaries: control plane, two proxies, fake
//! backends. Every completed upstream attempt is counted exactly once,
//! whatever happens to the control plane or a backend.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use llmlb_proto::v1 as pb;
use llmlb_testkit::*;

struct Setup {
    cp: ControlPlane,
    proxies: Vec<Proxy>,
    fakes: Vec<FakeServer>,
    endpoints: Vec<pb::Endpoint>,
    _dir: tempfile::TempDir,
}

async fn setup(backends: usize, fake: FakeConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(ControlPlaneOptions::new(dir.path().join("llmlb.db")));
    let grpc = cp.grpc_url();
    let mut fakes = Vec::new();
    let mut endpoints = Vec::new();
    for i in 0..backends {
        let f = FakeServer::start(FakeConfig {
            models: vec!["m".into()],
            ..fake.clone()
        })
        .await
        .unwrap();
        let e = create_endpoint(&grpc, &format!("backend-{i}"), &f.base_url(), &[]).await;
        wait_online(&grpc, &e.id).await;
        fakes.push(f);
        endpoints.push(e);
    }
    let proxies: Vec<Proxy> = (0..2)
        .map(|i| Proxy::start(&grpc, &["--proxy-id", &format!("proxy-{i}")]))
        .collect();
    for p in &proxies {
        wait_routable(p, "m").await;
    }
    Setup {
        cp,
        proxies,
        fakes,
        endpoints,
        _dir: dir,
    }
}

/// Waits until the proxy lists `model` (it received a routing table).
async fn wait_routable(p: &Proxy, model: &str) {
    let url = format!("{}/v1/models", p.url());
    eventually(Duration::from_secs(20), "proxy routing table", || {
        let url = url.clone();
        async move {
            let v: serde_json::Value = http().get(&url).send().await.ok()?.json().await.ok()?;
            v["data"]
                .as_array()?
                .iter()
                .any(|m| m["id"] == model)
                .then_some(())
        }
    })
    .await
}

/// Sends one chat request; returns the HTTP status and the body text.
async fn chat(client: &reqwest::Client, proxy: &str, stream: bool) -> (u16, String) {
    let resp = client
        .post(format!("{proxy}/v1/chat/completions"))
        .json(&chat_body("m", stream))
        .send()
        .await;
    match resp {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

async fn stats(grpc: &str) -> pb::Stats {
    overview(grpc).await.stats.unwrap()
}

#[tokio::test]
async fn requests_through_two_proxies_are_counted_exactly_once() {
    let s = setup(
        2,
        FakeConfig {
            tokens: 16,
            prompt_tokens: 8,
            ..Default::default()
        },
    )
    .await;
    let grpc = s.cp.grpc_url();
    let client = http();
    let n = 24;
    for i in 0..n {
        let proxy = s.proxies[i % 2].url();
        let stream = i % 3 == 0;
        let (status, body) = chat(&client, &proxy, stream).await;
        assert_eq!(status, 200, "{body}");
        if stream {
            assert!(body.contains("data: [DONE]"), "{body}");
            assert!(
                !body.contains("\"choices\":[]"),
                "the usage chunk llmlb asked for is not relayed: {body}"
            );
        } else {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["usage"]["completion_tokens"], 16);
        }
    }
    let n = n as u64;
    let o = eventually(Duration::from_secs(5), "all requests counted", || async {
        let o = overview(&grpc).await;
        (o.stats.unwrap().total_requests >= n).then_some(o)
    })
    .await;
    let st = o.stats.unwrap();
    assert_eq!(
        (
            st.total_requests,
            st.successful_requests,
            st.failed_requests
        ),
        (n, n, 0)
    );
    assert_eq!(
        (st.total_input_tokens, st.total_output_tokens),
        (8 * n, 16 * n)
    );
    assert_eq!(st.connected_proxies, 2);
    // Split by endpoint exactly as the backends saw it.
    for (e, f) in s.endpoints.iter().zip(&s.fakes) {
        assert_eq!(
            endpoint_stats(&o, &e.id).total_requests,
            f.requests(),
            "endpoint {}",
            e.name
        );
    }
    assert_eq!(s.fakes.iter().map(|f| f.requests()).sum::<u64>(), n);
    // TPS per endpoint × model × API kind, and the timeline.
    let tps: Vec<_> = o.model_tps.iter().filter(|t| t.model == "m").collect();
    assert_eq!(tps.iter().map(|t| t.request_count).sum::<u64>(), n);
    assert!(tps
        .iter()
        .all(|t| t.api_kind == pb::ApiKind::ChatCompletions as i32 && t.tps.unwrap() > 0.0));
    assert_eq!(o.history.iter().map(|m| m.success).sum::<u64>(), n);
    assert_eq!(
        st.average_response_time_source,
        Some(pb::AverageResponseTimeSource::Requests as i32)
    );

    // Prometheus says the same on the control plane.
    let metrics = http()
        .get(format!("{}/metrics", s.cp.http_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        format!("llmlb_control_stats_records_ingested_total {n}"),
        "llmlb_control_connected_proxies 2".to_string(),
        "llmlb_control_endpoints{status=\"online\"} 2".to_string(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from:\n{metrics}"
        );
    }
    assert!(metrics.contains("llmlb_control_restore_duration_seconds "));
    assert!(metrics.contains("llmlb_control_health_probe_duration_seconds_count "));

    // One more request is visible within a second of completing.
    let (status, _) = chat(&client, &s.proxies[0].url(), false).await;
    assert_eq!(status, 200);
    let done = Instant::now();
    eventually(
        Duration::from_secs(1),
        "a request counted within 1 s",
        || async { (stats(&grpc).await.total_requests == n + 1).then_some(()) },
    )
    .await;
    eprintln!("counted {:?} after completion", done.elapsed());
}

/// Sustained traffic from two proxies while the control plane is killed
/// with SIGKILL and restarted: no client request fails, and afterwards the
/// counters equal the completed attempts exactly.
#[tokio::test]
async fn killing_the_control_plane_under_load_loses_and_doubles_nothing() {
    let s = setup(
        2,
        FakeConfig {
            tokens: 4,
            ..Default::default()
        },
    )
    .await;
    let options = s.cp.options.clone();
    let ok = Arc::new(AtomicU64::new(0));
    let per_client = 60;
    let mut clients = Vec::new();
    for c in 0..4 {
        let proxy = s.proxies[c % 2].url();
        let ok = ok.clone();
        clients.push(tokio::spawn(async move {
            let client = http();
            for i in 0..per_client {
                let (status, body) = chat(&client, &proxy, i % 2 == 0).await;
                assert_eq!(
                    status, 200,
                    "request failed while the control plane was away: {body}"
                );
                ok.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    eventually(Duration::from_secs(30), "traffic under way", || async {
        (ok.load(Ordering::Relaxed) >= 40).then_some(())
    })
    .await;
    s.cp.kill();
    let at_kill = ok.load(Ordering::Relaxed);
    // Traffic goes on without a control plane.
    eventually(Duration::from_secs(30), "traffic while down", || async {
        (ok.load(Ordering::Relaxed) >= at_kill + 40).then_some(())
    })
    .await;
    let cp = ControlPlane::restart_same(&options);
    for c in clients {
        c.await.unwrap();
    }
    let total = 4 * per_client as u64;
    assert_eq!(ok.load(Ordering::Relaxed), total);
    let backend_total: u64 = s.fakes.iter().map(|f| f.requests()).sum();
    assert_eq!(backend_total, total, "no failover happened");
    let grpc = cp.grpc_url();
    let st = eventually(
        Duration::from_secs(20),
        "every attempt delivered",
        || async {
            let st = stats(&grpc).await;
            (st.total_requests >= total).then_some(st)
        },
    )
    .await;
    assert_eq!((st.total_requests, st.successful_requests), (total, total));
    let o = overview(&grpc).await;
    for (e, f) in s.endpoints.iter().zip(&s.fakes) {
        assert_eq!(endpoint_stats(&o, &e.id).total_requests, f.requests());
    }
    assert_eq!(o.history.iter().map(|m| m.success).sum::<u64>(), total);
    // Still exact a moment later: nothing arrives twice.
    eventually(
        Duration::from_secs(5),
        "both proxies reconnected",
        || async { (stats(&grpc).await.connected_proxies == 2).then_some(()) },
    )
    .await;
    assert_eq!(stats(&grpc).await.total_requests, total);
}

/// A backend dies mid-run: requests fail over to the other one, the dead
/// endpoint goes OFFLINE with its latency kept, and its failed attempts are
/// counted as failures.
#[tokio::test]
async fn a_dead_backend_is_failed_over_and_goes_offline() {
    let mut s = setup(2, FakeConfig::default()).await;
    let grpc = s.cp.grpc_url();
    let client = http();
    for i in 0..10 {
        assert_eq!(chat(&client, &s.proxies[i % 2].url(), false).await.0, 200);
    }
    eventually(
        Duration::from_secs(5),
        "first requests delivered",
        || async { (stats(&grpc).await.total_requests == 10).then_some(()) },
    )
    .await;
    let dead = s.endpoints[0].clone();
    let before = endpoint_stats(&overview(&grpc).await, &dead.id).clone();
    s.fakes.remove(0).stop().await;
    for i in 0..20 {
        let (status, body) = chat(&client, &s.proxies[i % 2].url(), i % 2 == 0).await;
        assert_eq!(status, 200, "failover: {body}");
    }
    // The latency of the last successful probe, as seen at the first failure…
    let latency = eventually(Duration::from_secs(10), "dead endpoint failing", || async {
        let o = overview(&grpc).await;
        let e = endpoint_stats(&o, &dead.id);
        (e.status != pb::EndpointStatus::Online as i32).then_some(e.latency_ms.expect("measured"))
    })
    .await;
    // … is still there once it is OFFLINE.
    let o = eventually(Duration::from_secs(10), "dead endpoint OFFLINE", || async {
        let o = overview(&grpc).await;
        (endpoint_stats(&o, &dead.id).status == pb::EndpointStatus::Offline as i32).then_some(o)
    })
    .await;
    let e = endpoint_stats(&o, &dead.id);
    assert_eq!(
        e.latency_ms.map(|l| l.to_bits()),
        Some(f64::to_bits(latency)),
        "latency kept"
    );
    // Every attempt on the dead backend after it died is a failure.
    let st = eventually(Duration::from_secs(5), "attempts delivered", || async {
        let o = overview(&grpc).await;
        let alive = endpoint_stats(&o, &s.endpoints[1].id).successful_requests;
        (alive == s.fakes[0].requests()).then_some(o)
    })
    .await;
    let dead_now = endpoint_stats(&st, &dead.id);
    assert_eq!(dead_now.successful_requests, before.successful_requests);
    assert_eq!(
        dead_now.failed_requests,
        dead_now.total_requests - before.total_requests
    );
    let total = st.stats.unwrap();
    assert_eq!(total.successful_requests, 30);
    assert_eq!(total.total_requests, 30 + total.failed_requests);
    // No request goes to it while it is OFFLINE.
    let failed_before = endpoint_stats(&overview(&grpc).await, &dead.id).total_requests;
    for i in 0..10 {
        assert_eq!(chat(&client, &s.proxies[i % 2].url(), false).await.0, 200);
    }
    eventually(Duration::from_secs(5), "delivered", || async {
        let o = overview(&grpc).await;
        (o.stats.unwrap().successful_requests == 40).then_some(())
    })
    .await;
    assert_eq!(
        endpoint_stats(&overview(&grpc).await, &dead.id).total_requests,
        failed_before
    );
}

/// Issue 4: traffic (streaming and not) through two proxies, then the
/// dashboard is identical after a SIGTERM restart and after a SIGKILL one.
#[tokio::test]
async fn the_dashboard_is_the_same_after_restarts() {
    let s = setup(
        2,
        FakeConfig {
            tokens: 12,
            token_interval: Duration::from_millis(2),
            ..Default::default()
        },
    )
    .await;
    let client = http();
    for i in 0..16 {
        assert_eq!(
            chat(&client, &s.proxies[i % 2].url(), i % 2 == 1).await.0,
            200
        );
    }
    let grpc = s.cp.grpc_url();
    eventually(Duration::from_secs(5), "delivered", || async {
        (stats(&grpc).await.total_requests == 16).then_some(())
    })
    .await;
    // Stop the backends so health probes no longer move latency.
    let Setup {
        cp,
        proxies,
        fakes,
        endpoints,
        _dir,
    } = s;
    for f in fakes {
        f.stop().await;
    }
    for e in &endpoints {
        eventually(Duration::from_secs(10), "offline", || async {
            (endpoint_stats(&overview(&grpc).await, &e.id).status
                == pb::EndpointStatus::Offline as i32)
                .then_some(())
        })
        .await;
    }
    let before = overview(&grpc).await;
    let options = cp.options.clone();
    assert!(cp.terminate().success());
    let cp = ControlPlane::restart_same(&options);
    let after = overview(&cp.grpc_url()).await;
    same_figures(&before, &after);
    cp.kill();
    let cp = ControlPlane::restart_same(&options);
    let after = overview(&cp.grpc_url()).await;
    same_figures(&before, &after);
    drop(proxies);
}

fn same_figures(a: &pb::Overview, b: &pb::Overview) {
    let (sa, sb) = (a.stats.unwrap(), b.stats.unwrap());
    assert_eq!(
        (
            sa.total_requests,
            sa.successful_requests,
            sa.failed_requests,
            sa.total_input_tokens,
            sa.total_output_tokens
        ),
        (
            sb.total_requests,
            sb.successful_requests,
            sb.failed_requests,
            sb.total_input_tokens,
            sb.total_output_tokens
        )
    );
    assert_eq!(sa.average_response_time_ms, sb.average_response_time_ms);
    for (x, y) in a.endpoints.iter().zip(&b.endpoints) {
        assert_eq!(
            (&x.id, x.latency_ms, x.total_requests, x.total_output_tokens),
            (&y.id, y.latency_ms, y.total_requests, y.total_output_tokens)
        );
    }
    let tps = |o: &pb::Overview| {
        o.model_tps
            .iter()
            .map(|t| {
                (
                    t.endpoint_id.clone(),
                    t.model.clone(),
                    t.api_kind,
                    t.tps,
                    t.request_count,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(tps(a), tps(b));
    let minutes = |o: &pb::Overview| {
        o.history
            .iter()
            .filter(|m| m.success + m.failure > 0)
            .map(|m| (m.minute.unwrap().seconds, m.success, m.failure))
            .collect::<Vec<_>>()
    };
    let (ma, mb) = (minutes(a), minutes(b));
    // Only the window may have moved: what is still in it is unchanged.
    let oldest_b = b.history[0].minute.unwrap().seconds;
    assert_eq!(
        ma.into_iter()
            .filter(|m| m.0 >= oldest_b)
            .collect::<Vec<_>>(),
        mb
    );
}

/// WatchOverview pushes a fresh overview when a request completes.
#[tokio::test]
async fn watch_overview_streams_changes() {
    let s = setup(1, FakeConfig::default()).await;
    let mut watch = dashboard_client(&s.cp.grpc_url())
        .watch_overview(pb::WatchOverviewRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.stats.unwrap().total_requests, 0);
    assert_eq!(chat(&http(), &s.proxies[0].url(), false).await.0, 200);
    let counted = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(o) = watch.next().await {
            if o.unwrap().stats.unwrap().total_requests == 1 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(counted, Ok(true));
}
