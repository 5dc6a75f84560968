//! Restore at boot (issue 4, seed US1–US5, FR-006), driven through the
//! real control plane binary and its stats stream.

use std::time::Duration;

use llmlb_proto::v1 as pb;
use llmlb_testkit::*;

fn options(dir: &tempfile::TempDir) -> ControlPlaneOptions {
    ControlPlaneOptions::new(dir.path().join("llmlb.db"))
}

/// What must be identical across a restart: everything but the instant,
/// the connections and what health probes keep refreshing.
type Comparable = (
    pb::Stats,
    Vec<pb::EndpointStats>,
    Vec<(i64, u64, u64)>,
    Vec<pb::ModelTps>,
);

fn comparable(o: &pb::Overview) -> Comparable {
    let mut stats = o.stats.unwrap();
    stats.generated_at = None;
    stats.connected_proxies = 0;
    stats.active_requests = 0;
    let endpoints = o
        .endpoints
        .iter()
        .map(|e| pb::EndpointStats {
            last_checked_at: None,
            active_requests: 0,
            ..e.clone()
        })
        .collect();
    let history = o
        .history
        .iter()
        .filter(|m| m.success + m.failure > 0)
        .map(|m| (m.minute.unwrap().seconds, m.success, m.failure))
        .collect();
    let tps = o
        .model_tps
        .iter()
        .map(|t| pb::ModelTps {
            source: 0,
            ..t.clone()
        })
        .collect();
    (stats, endpoints, history, tps)
}

/// Two endpoints that were ONLINE (latency measured) and are now OFFLINE
/// for good (their backends are gone), so probes no longer change anything.
async fn two_offline_endpoints(grpc: &str) -> Vec<pb::Endpoint> {
    let mut out = Vec::new();
    for (name, latency) in [("e1", 20), ("e2", 40)] {
        let fake = FakeServer::start(FakeConfig {
            latency: Duration::from_millis(latency),
            ..Default::default()
        })
        .await
        .unwrap();
        let e = create_endpoint(grpc, name, &fake.base_url(), &["m"]).await;
        wait_online(grpc, &e.id).await;
        fake.stop().await;
        eventually(Duration::from_secs(10), "offline", || async {
            let o = overview(grpc).await;
            (endpoint_stats(&o, &e.id).status == pb::EndpointStatus::Offline as i32).then_some(())
        })
        .await;
        out.push(e);
    }
    out
}

fn failed(mut r: pb::RequestRecord) -> pb::RequestRecord {
    r.success = false;
    r.status_code = 500;
    r.output_tokens = 0;
    r.error = Some("upstream 500".into());
    r
}

#[tokio::test]
async fn every_figure_survives_sigterm_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(options(&dir));
    let grpc = cp.grpc_url();
    let eps = two_offline_endpoints(&grpc).await;
    let now = now_ms();
    let mut records = Vec::new();
    for i in 0..12 {
        let ep = &eps[i % 2].id;
        let at = now - (i as i64 % 5) * 60_000;
        let r = record(ep, at, 40 + i as u64, 500.0 + 100.0 * i as f64);
        records.push(if i % 4 == 3 { failed(r) } else { r });
    }
    let ack = send_stats(&grpc, "p1", 1, records).await;
    assert_eq!((ack.applied, ack.duplicates), (12, 0));
    let before = overview(&grpc).await;
    let stats = before.stats.unwrap();
    assert_eq!(
        (
            stats.total_requests,
            stats.successful_requests,
            stats.failed_requests
        ),
        (12, 9, 3)
    );
    assert_eq!(
        stats.average_response_time_source,
        Some(pb::AverageResponseTimeSource::Requests as i32)
    );
    assert_eq!(before.model_tps.len(), 2);
    assert!(before
        .model_tps
        .iter()
        .all(|t| t.tps.is_some() && t.source == pb::TpsSource::Live as i32));

    let options = cp.options.clone();
    assert!(cp.terminate().success());
    let cp = ControlPlane::restart_same(&options);
    let after_term = overview(&cp.grpc_url()).await;
    assert_eq!(comparable(&after_term), comparable(&before));
    assert!(after_term
        .model_tps
        .iter()
        .all(|t| t.source == pb::TpsSource::Restored as i32));

    cp.kill();
    let cp = ControlPlane::restart_same(&options);
    let after_kill = overview(&cp.grpc_url()).await;
    assert_eq!(comparable(&after_kill), comparable(&before));

    // A live sample turns an entry LIVE again and moves the EMA from the
    // restored value, exactly: 0.2 × new + 0.8 × old.
    let old = after_kill
        .model_tps
        .iter()
        .find(|t| t.endpoint_id == eps[0].id)
        .unwrap()
        .tps
        .unwrap();
    send_stats(
        &cp.grpc_url(),
        "p1",
        2,
        vec![record(&eps[0].id, now_ms(), 100, 1000.0)],
    )
    .await;
    let o = overview(&cp.grpc_url()).await;
    let t = o
        .model_tps
        .iter()
        .find(|t| t.endpoint_id == eps[0].id)
        .unwrap();
    assert_eq!(t.source, pb::TpsSource::Live as i32);
    assert_eq!(t.tps, Some(0.2 * 100.0 + 0.8 * old));
}

#[tokio::test]
async fn resent_batches_are_counted_once_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(options(&dir));
    let e = create_endpoint(&cp.grpc_url(), "e", "http://127.0.0.1:9", &["m"]).await;
    let batch: Vec<_> = (0..50).map(|i| record(&e.id, now_ms(), i, 100.0)).collect();
    let ack = send_stats(&cp.grpc_url(), "p1", 7, batch.clone()).await;
    assert_eq!((ack.batch_id, ack.applied, ack.duplicates), (7, 50, 0));
    let ack = send_stats(&cp.grpc_url(), "p1", 8, batch.clone()).await;
    assert_eq!((ack.applied, ack.duplicates), (0, 50));
    let options = cp.options.clone();
    cp.kill();
    let cp = ControlPlane::restart_same(&options);
    let mut mixed = batch[..10].to_vec();
    mixed.push(record(&e.id, now_ms(), 5, 100.0));
    let ack = send_stats(&cp.grpc_url(), "p1", 1, mixed).await;
    assert_eq!((ack.applied, ack.duplicates), (1, 10));
    let o = overview(&cp.grpc_url()).await;
    assert_eq!(o.stats.unwrap().total_requests, 51);
    assert_eq!(
        endpoint_stats(&o, &e.id).total_output_tokens,
        (0..50).sum::<u64>() + 5
    );
    assert_eq!(o.history.iter().map(|m| m.success).sum::<u64>(), 51);
}

#[tokio::test]
async fn history_older_than_an_hour_restores_an_empty_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(options(&dir));
    let e = create_endpoint(&cp.grpc_url(), "e", "http://127.0.0.1:9", &["m"]).await;
    let now = now_ms();
    let old = vec![
        record(&e.id, now - 61 * 60_000, 10, 100.0),
        record(&e.id, now - 3 * 3_600_000, 10, 100.0),
    ];
    send_stats(&cp.grpc_url(), "p1", 1, old).await;
    let options = cp.options.clone();
    assert!(cp.terminate().success());
    let cp = ControlPlane::restart_same(&options);
    let o = overview(&cp.grpc_url()).await;
    assert_eq!(o.history.len(), 60);
    assert!(o.history.iter().all(|m| m.success == 0 && m.failure == 0));
    let stats = o.stats.unwrap();
    assert_eq!(
        stats.total_requests, 2,
        "lifetime counters keep old requests"
    );
    assert_eq!(stats.average_response_time_source, None);
    assert_eq!(
        stats.average_response_time_ms, None,
        "no request in the hour and no ONLINE endpoint"
    );
}

#[tokio::test]
async fn a_dropped_aggregate_table_costs_only_its_figure() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(options(&dir));
    let e = create_endpoint(&cp.grpc_url(), "e", "http://127.0.0.1:9", &["m"]).await;
    send_stats(
        &cp.grpc_url(),
        "p1",
        1,
        vec![record(&e.id, now_ms(), 100, 2000.0)],
    )
    .await;
    let options = cp.options.clone();
    assert!(cp.terminate().success());

    let url = format!("sqlite://{}", options.database.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("DROP TABLE request_minutes")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let cp = ControlPlane::restart_same(&options);
    let o = overview(&cp.grpc_url()).await;
    assert!(
        o.history.iter().all(|m| m.success == 0),
        "timeline starts empty"
    );
    assert_eq!(
        o.stats.as_ref().unwrap().total_requests,
        1,
        "counters restored"
    );
    assert_eq!(o.model_tps[0].tps, Some(50.0), "TPS restored");
    // Ingestion keeps working.
    let ack = send_stats(
        &cp.grpc_url(),
        "p1",
        2,
        vec![record(&e.id, now_ms(), 1, 10.0)],
    )
    .await;
    assert_eq!(ack.applied, 1);
    let o = overview(&cp.grpc_url()).await;
    assert_eq!(o.history.iter().map(|m| m.success).sum::<u64>(), 1);
    assert_eq!(o.stats.unwrap().total_requests, 2);
}

#[tokio::test]
async fn tps_falls_back_to_todays_totals_without_exact_state() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(options(&dir));
    let e = create_endpoint(&cp.grpc_url(), "e", "http://127.0.0.1:9", &["m"]).await;
    // EMA would be 0.2×(50/1)+0.8×(50/4)… the daily fallback is 100/5 s.
    let records = vec![
        record(&e.id, now_ms(), 50, 4000.0),
        record(&e.id, now_ms(), 50, 1000.0),
    ];
    send_stats(&cp.grpc_url(), "p1", 1, records).await;
    let options = cp.options.clone();
    assert!(cp.terminate().success());
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", options.database.display()))
        .await
        .unwrap();
    sqlx::query("DELETE FROM model_stats")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let cp = ControlPlane::restart_same(&options);
    let o = overview(&cp.grpc_url()).await;
    assert_eq!(o.model_tps.len(), 1);
    assert_eq!(o.model_tps[0].tps, Some(100.0 / 5.0));
    assert_eq!(o.model_tps[0].source, pb::TpsSource::Restored as i32);
}

#[tokio::test]
async fn grpc_and_rest_serve_the_same_figures() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(options(&dir));
    let e = create_endpoint(&cp.grpc_url(), "e", "http://127.0.0.1:9", &["m"]).await;
    send_stats(
        &cp.grpc_url(),
        "p1",
        1,
        vec![
            record(&e.id, now_ms(), 100, 2000.0),
            failed(record(&e.id, now_ms(), 0, 5.0)),
        ],
    )
    .await;
    let grpc = overview(&cp.grpc_url()).await;
    let rest: serde_json::Value =
        get_json(format!("{}/api/dashboard/overview", cp.http_url())).await;
    let s = grpc.stats.unwrap();
    let rs = &rest["stats"];
    assert_eq!(rs["totalRequests"], s.total_requests.to_string());
    assert_eq!(rs["successfulRequests"], s.successful_requests.to_string());
    assert_eq!(rs["failedRequests"], s.failed_requests.to_string());
    assert_eq!(rs["totalOutputTokens"], s.total_output_tokens.to_string());
    assert_eq!(
        rs["averageResponseTimeMs"].as_f64(),
        s.average_response_time_ms
    );
    assert_eq!(rs["averageResponseTimeSource"], "REQUESTS");
    assert_eq!(rest["history"].as_array().unwrap().len(), 60);
    let rest_sum: u64 = rest["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["success"].as_str().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(
        rest_sum,
        grpc.history.iter().map(|m| m.success).sum::<u64>()
    );
    assert_eq!(rest["modelTps"][0]["tps"].as_f64(), grpc.model_tps[0].tps);
    assert_eq!(rest["modelTps"][0]["apiKind"], "CHAT_COMPLETIONS");
    assert_eq!(rest["modelTps"][0]["source"], "LIVE");
    assert_eq!(rest["endpoints"][0]["id"], e.id);
    for path in ["stats", "endpoints", "request-history", "model-tps"] {
        let resp = http()
            .get(format!("{}/api/dashboard/{path}", cp.http_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
}
