//! Stats delivery across a control plane restart, and serving with the last
//! routing table while the control plane is away.

mod common;

use std::collections::HashSet;

use common::{endpoint, start_routable, table, TestControlPlane};
use llmlb_fake_openai::{FakeConfig, FakeServer};
use llmlb_proto::v1::EndpointStatus;
use serde_json::json;

#[tokio::test]
async fn unacked_records_are_resent_after_a_control_plane_restart() {
    let fake = FakeServer::start(FakeConfig {
        models: vec!["m".into()],
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let routes = table(
        7,
        vec![endpoint(
            "e1",
            &fake.base_url(),
            EndpointStatus::Online,
            &["m"],
        )],
    );
    // The first control plane never acknowledges anything.
    let first = TestControlPlane::start(routes.clone(), false).await;
    let addr = first.addr();
    let (proxy, base, client) = start_routable(&first.url(), &[], "m").await;
    for _ in 0..3 {
        let response = client
            .post(format!("{base}/v1/completions"))
            .json(&json!({"model": "m", "prompt": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let sent: HashSet<String> = first
        .wait_records(3)
        .await
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    assert_eq!(sent.len(), 3);
    assert_eq!(proxy.stats_held(), 3, "unacknowledged records are kept");
    first.stop().await;

    // The control plane is away: the proxy keeps serving with its last table.
    let response = client
        .post(format!("{base}/v1/completions"))
        .json(&json!({"model": "m", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // A restarted control plane, starting its versions again, gets the
    // unacknowledged records again, then the new one.
    let second = TestControlPlane::start_on(addr, table(1, routes.endpoints.clone()), true).await;
    let records = second.wait_records(4).await;
    let again: HashSet<String> = records.iter().map(|r| r.request_id.clone()).collect();
    assert!(
        sent.is_subset(&again),
        "resent {again:?}, first sent {sent:?}"
    );
    assert_eq!(again.len(), 4);
    common::eventually("every record acknowledged", || async {
        (proxy.stats_held() == 0).then_some(())
    })
    .await;
    assert!(proxy.metrics().stats_resent_total() >= 3);
    let metrics = common::get_text(&client, &format!("{base}/metrics")).await;
    assert!(
        metrics.contains("llmlb_proxy_stats_resent_total "),
        "{metrics}"
    );
    common::eventually(
        "the restarted control plane's table (version 1)",
        || async {
            let text = client
                .get(format!("{base}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains("llmlb_proxy_routing_table_version 1\n")
                .then_some(())
        },
    )
    .await;

    let report = proxy.shutdown().await;
    assert_eq!(report.unflushed_records, 0);
    second.stop().await;
    fake.stop().await;
}

#[tokio::test]
async fn concurrent_requests_make_exactly_one_record_each() {
    let fake = FakeServer::start(FakeConfig {
        models: vec!["m".into()],
        tokens: 4,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let fake2 = FakeServer::start(FakeConfig {
        models: vec!["m".into()],
        tokens: 4,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let routes = table(
        1,
        vec![
            endpoint("e1", &fake.base_url(), EndpointStatus::Online, &["m"]),
            endpoint("e2", &fake2.base_url(), EndpointStatus::Online, &["m"]),
        ],
    );
    let cp = TestControlPlane::start(routes, true).await;
    let (proxy, base, client) = start_routable(&cp.url(), &[], "m").await;
    const REQUESTS: usize = 600;
    let tasks: Vec<_> = (0..16)
        .map(|worker| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                for i in (worker..REQUESTS).step_by(16) {
                    let body = json!({"model": "m", "stream": i % 2 == 0, "messages": []});
                    let response = client
                        .post(format!("{base}/v1/chat/completions"))
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    let text = response.text().await.unwrap();
                    assert!(!text.contains("\"choices\":[]"));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let report = proxy.shutdown().await;
    assert_eq!(report.unflushed_records, 0);
    let records = cp.records();
    assert_eq!(records.len(), REQUESTS);
    let ids: HashSet<&str> = records.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids.len(), REQUESTS);
    assert!(records
        .iter()
        .all(|r| r.success && r.output_tokens == 4 && r.input_tokens > 0));
    let on_e1 = records.iter().filter(|r| r.endpoint_id == "e1").count();
    assert!(
        on_e1 > 0 && on_e1 < REQUESTS,
        "both endpoints used: {on_e1} on e1"
    );
    cp.stop().await;
    fake.stop().await;
    fake2.stop().await;
}
