//! Faults with the real binaries: the control plane away for a while, a
//! stats buffer that overflows, a proxy stopped under load, slow and broken
//! backends, and history retention. (Control plane SIGKILL under load and a
//! dying backend are in `pipeline.rs`; database problems at boot in
//! `control_plane.rs` and `restore.rs`.)

use std::path::Path;
use std::time::{Duration, Instant};

use llmlb_proto::v1 as pb;
use llmlb_testkit::*;

/// How long the control plane stays away in the outage test. The mechanism
/// has no time limit (only the `--stats-buffer` bound); 5 s keeps the suite
/// short.
const OUTAGE: Duration = Duration::from_secs(5);

struct Setup {
    cp: ControlPlane,
    fake: FakeServer,
    endpoint: pb::Endpoint,
    dir: tempfile::TempDir,
}

/// A control plane (with `cp_args` replacing the default fast health-check
/// flags when given) and one ONLINE fake backend serving `m`.
async fn setup(fake: FakeConfig, cp_args: Option<Vec<String>>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ControlPlaneOptions::new(dir.path().join("llmlb.db"));
    if let Some(args) = cp_args {
        options.args = args;
    }
    let cp = ControlPlane::start(options);
    let fake = FakeServer::start(FakeConfig {
        models: vec!["m".into()],
        ..fake
    })
    .await
    .unwrap();
    let endpoint = create_endpoint(&cp.grpc_url(), "backend", &fake.base_url(), &[]).await;
    wait_online(&cp.grpc_url(), &endpoint.id).await;
    Setup {
        cp,
        fake,
        endpoint,
        dir,
    }
}

/// One chat request; the HTTP status and the body (or the client error).
async fn chat(proxy: &str, stream: bool) -> (u16, Result<String, String>) {
    let resp = http()
        .post(format!("{proxy}/v1/chat/completions"))
        .json(&chat_body("m", stream))
        .send()
        .await
        .expect("the proxy answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.map_err(|e| format!("{e:?}")))
}

async fn stats(grpc: &str) -> pb::Stats {
    overview(grpc).await.stats.unwrap()
}

/// Waits until the proxy holds no stats record (everything acknowledged).
async fn wait_flushed(proxy: &str) {
    eventually(Duration::from_secs(10), "stats acknowledged", || async {
        (proxy_metric(proxy, "llmlb_proxy_stats_buffered").await == 0.0).then_some(())
    })
    .await
}

/// Proxies keep serving with their last routing table while the control
/// plane is away, hold every record, and deliver each exactly once after
/// it is back.
#[tokio::test]
async fn proxies_serve_and_buffer_while_the_control_plane_is_down() {
    let s = setup(
        FakeConfig {
            tokens: 5,
            token_interval: Duration::from_millis(10),
            ..Default::default()
        },
        None,
    )
    .await;
    let grpc = s.cp.grpc_url();
    let proxies: Vec<Proxy> = (0..2)
        .map(|i| Proxy::start(&grpc, &["--proxy-id", &format!("outage-{i}")]))
        .collect();
    for p in &proxies {
        wait_model_listed(&p.url(), "m", None).await;
        assert_eq!(chat(&p.url(), false).await.0, 200);
        wait_flushed(&p.url()).await;
    }
    assert_eq!(stats(&grpc).await.total_requests, 2);

    let options = s.cp.options.clone();
    s.cp.kill();
    let down = Instant::now();
    let mut sent_while_down = [0u64; 2];
    let mut i = 0;
    while down.elapsed() < OUTAGE {
        let p = i % 2;
        let (status, body) = chat(&proxies[p].url(), i % 3 == 0).await;
        assert_eq!(status, 200, "served without a control plane: {body:?}");
        assert!(body.is_ok());
        sent_while_down[p] += 1;
        i += 1;
    }
    // Every record of the outage is held, none dropped.
    for (p, sent) in proxies.iter().zip(sent_while_down) {
        assert!(sent > 0);
        assert_eq!(
            proxy_metric(&p.url(), "llmlb_proxy_stats_buffered").await,
            sent as f64
        );
        assert_eq!(
            proxy_metric(&p.url(), "llmlb_proxy_stats_dropped_total").await,
            0.0
        );
    }

    let cp = ControlPlane::restart_same(&options);
    let grpc = cp.grpc_url();
    let total = 2 + sent_while_down.iter().sum::<u64>();
    eventually(
        Duration::from_secs(20),
        "buffered stats delivered",
        || async { (stats(&grpc).await.total_requests >= total).then_some(()) },
    )
    .await;
    for p in &proxies {
        wait_flushed(&p.url()).await;
    }
    let st = stats(&grpc).await;
    assert_eq!(
        (
            st.total_requests,
            st.successful_requests,
            st.failed_requests
        ),
        (total, total, 0),
        "every request of the outage counted exactly once"
    );
    assert_eq!(s.fake.requests(), total);
    assert_eq!(st.total_output_tokens, 5 * total);
    let o = overview(&grpc).await;
    assert_eq!(o.history.iter().map(|m| m.success).sum::<u64>(), total);
    assert_eq!(endpoint_stats(&o, &s.endpoint.id).total_requests, total);
}

/// A small `--stats-buffer` overflows while the control plane is away: the
/// requests are still served, each record that does not fit is counted in
/// `llmlb_proxy_stats_dropped_total` and the loss is logged; what fits is
/// delivered afterwards.
#[tokio::test]
async fn a_full_stats_buffer_counts_and_logs_what_it_drops() {
    let s = setup(FakeConfig::default(), None).await;
    let grpc = s.cp.grpc_url();
    let log = s.dir.path().join("proxy.log");
    let proxy = Proxy::start_with(
        &grpc,
        ProxyOptions {
            args: vec!["--stats-buffer".into(), "5".into()],
            stderr: Some(log.clone()),
            ..Default::default()
        },
    );
    let url = proxy.url();
    wait_model_listed(&url, "m", None).await;
    for _ in 0..2 {
        assert_eq!(chat(&url, false).await.0, 200);
    }
    wait_flushed(&url).await;
    assert_eq!(stats(&grpc).await.total_requests, 2);

    let options = s.cp.options.clone();
    s.cp.kill();
    let sent = 12;
    for i in 0..sent {
        assert_eq!(chat(&url, i % 2 == 0).await.0, 200, "request {i} served");
    }
    assert_eq!(proxy_metric(&url, "llmlb_proxy_stats_buffered").await, 5.0);
    assert_eq!(
        proxy_metric(&url, "llmlb_proxy_stats_dropped_total").await,
        7.0
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("stats buffer full"),
        "the overflow is logged: {logged}"
    );

    let cp = ControlPlane::restart_same(&options);
    let grpc = cp.grpc_url();
    eventually(
        Duration::from_secs(20),
        "what fitted is delivered",
        || async { (stats(&grpc).await.total_requests >= 2 + 5).then_some(()) },
    )
    .await;
    wait_flushed(&url).await;
    let counted = stats(&grpc).await.total_requests;
    assert_eq!(counted, 2 + 5);
    let dropped = proxy_metric(&url, "llmlb_proxy_stats_dropped_total").await;
    assert_eq!(
        dropped as u64,
        s.fake.requests() - counted,
        "the metric is exactly what the dashboard misses"
    );
}

/// SIGTERM while streams are in flight: every stream completes for its
/// client, the stats of all of them are acknowledged before the process
/// exits (the counters are right the moment it is gone), exit code 0.
#[tokio::test]
async fn sigterm_completes_streams_and_flushes_stats_before_exit() {
    let s = setup(
        FakeConfig {
            tokens: 20,
            token_interval: Duration::from_millis(50),
            ..Default::default()
        },
        None,
    )
    .await;
    let grpc = s.cp.grpc_url();
    let proxy = Proxy::start(&grpc, &["--proxy-id", "draining"]);
    let url = proxy.url();
    wait_model_listed(&url, "m", None).await;

    let n = 6;
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { chat(&url, true).await })
        })
        .collect();
    eventually(Duration::from_secs(10), "every stream started", || async {
        (s.fake.requests() == n).then_some(())
    })
    .await;
    assert_eq!(stats(&grpc).await.total_requests, 0, "none finished yet");
    proxy.send_sigterm();
    for c in clients {
        let (status, body) = c.await.unwrap();
        assert_eq!(status, 200);
        let body = body.expect("the stream is complete");
        assert!(body.contains("data: [DONE]"), "{body}");
        assert_eq!(body.matches("\"content\"").count(), 20, "{body}");
    }
    let exit = proxy.wait_exit(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(0));
    // No polling: the acknowledgement came after the commit.
    let st = stats(&grpc).await;
    assert_eq!(
        (st.total_requests, st.successful_requests),
        (n, n),
        "counted before the proxy exited"
    );
    assert_eq!(st.total_output_tokens, 20 * n);
}

/// A backend that is too slow (no headers within `--upstream-timeout`, or
/// silent mid-stream) and one that sends malformed JSON or SSE: the client
/// gets a clear error (502, a cut stream) or the bytes as they came (200),
/// the proxy keeps working, and every such attempt is a failure on the
/// dashboard, with its reason in the history row.
#[tokio::test]
async fn slow_and_malformed_backends_are_failures_and_the_proxy_stays_healthy() {
    // One immediate probe, then none during the test: the broken modes do
    // not take the endpoint offline.
    let s = setup(
        FakeConfig {
            tokens: 3,
            token_interval: Duration::from_secs(2),
            ..Default::default()
        },
        Some(vec![
            "--health-check-interval".into(),
            "1h".into(),
            "--health-check-timeout".into(),
            "5s".into(),
        ]),
    )
    .await;
    let grpc = s.cp.grpc_url();
    let proxy = Proxy::start(&grpc, &["--upstream-timeout", "500ms"]);
    let url = proxy.url();
    wait_model_listed(&url, "m", None).await;

    // 1. No response headers in time (a non-streaming reply waits for all
    //    its tokens): 502 upstream_unreachable.
    let (status, body) = chat(&url, false).await;
    assert_eq!(status, 502);
    let v: serde_json::Value = serde_json::from_str(&body.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "upstream_unreachable");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no response headers within 0.5s"),
        "{v}"
    );
    // 2. Headers, then silence longer than the timeout: the stream is cut,
    //    which the client sees as an error.
    let (status, body) = chat(&url, true).await;
    assert_eq!(status, 200);
    assert!(body.is_err(), "a cut stream is an error: {body:?}");

    // 3. and 4. Malformed bodies are relayed as they came.
    s.fake.set_config(FakeConfig {
        models: vec!["m".into()],
        mode: FakeMode::MalformedJson,
        ..Default::default()
    });
    let (status, body) = chat(&url, false).await;
    assert_eq!(status, 200);
    let body = body.unwrap();
    assert!(serde_json::from_str::<serde_json::Value>(&body).is_err());
    assert!(body.starts_with(r#"{"id":"chatcmpl-malformed""#), "{body}");
    let (status, body) = chat(&url, true).await;
    assert_eq!(status, 200);
    assert!(body.unwrap().contains("data: this is not json"));

    // 5. The proxy is fine: the next normal request works.
    s.fake.set_config(FakeConfig {
        models: vec!["m".into()],
        ..Default::default()
    });
    let (status, body) = chat(&url, false).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body.unwrap()).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 16);
    let health = http().get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let e = eventually(Duration::from_secs(10), "five attempts counted", || async {
        let o = overview(&grpc).await;
        let e = endpoint_stats(&o, &s.endpoint.id).clone();
        (e.total_requests == 5).then_some(e)
    })
    .await;
    assert_eq!((e.successful_requests, e.failed_requests), (1, 4));
    assert_eq!(stats(&grpc).await.failed_requests, 4);
    let errors = history_errors(&s.dir.path().join("llmlb.db")).await;
    for reason in [
        "no response headers within 0.5s",
        "upstream sent nothing for 0.5s",
        "upstream sent a body that is not valid JSON",
        "event(s) whose data is not JSON",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(reason)),
            "{reason:?} in {errors:?}"
        );
    }
}

/// The `error` column of every history row, oldest first.
async fn history_errors(db: &Path) -> Vec<String> {
    let pool = open_db(db).await;
    let rows: Vec<(Option<String>,)> =
        sqlx::query_as("SELECT error FROM request_history ORDER BY completed_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    rows.into_iter().filter_map(|(e,)| e).collect()
}

/// A read-only connection to the control plane's database.
async fn open_db(path: &Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true);
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap()
}

async fn count(pool: &sqlx::SqlitePool, sql: &str) -> i64 {
    sqlx::query_as::<_, (i64,)>(sql)
        .fetch_one(pool)
        .await
        .unwrap()
        .0
}

/// With `--history-retention 2s`, history rows older than that are pruned
/// (in batches, while new stats keep being committed), and the counters,
/// the per-minute and the daily aggregates stay.
#[tokio::test]
async fn history_past_the_retention_is_pruned_and_aggregates_stay() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("llmlb.db");
    let mut options = ControlPlaneOptions::new(db.clone());
    options
        .args
        .extend(["--history-retention".into(), "2s".into()]);
    let cp = ControlPlane::start(options);
    let grpc = cp.grpc_url();
    let e = create_endpoint(&grpc, "e", "http://127.0.0.1:9", &["m"]).await;
    // 2,500 rows (more than one pruning batch) completed a few seconds ago,
    // in the current minute's neighbourhood so the timeline shows them.
    let old = now_ms() - 5_000;
    let mut batch_id = 0;
    for _ in 0..5 {
        batch_id += 1;
        let records = (0..500).map(|_| record(&e.id, old, 10, 100.0)).collect();
        let ack = send_stats(&grpc, "retention", batch_id, records).await;
        assert_eq!(ack.applied, 500);
    }
    let before = overview(&grpc).await;
    let pool = open_db(&db).await;
    let sums = |pool: sqlx::SqlitePool| async move {
        (
            count(&pool, "SELECT sum(success + failure) FROM request_minutes").await,
            count(
                &pool,
                "SELECT sum(total_requests) FROM endpoint_daily_stats",
            )
            .await,
            count(&pool, "SELECT sum(total_requests) FROM endpoints").await,
        )
    };
    assert_eq!(sums(pool.clone()).await, (2_500, 2_500, 2_500));

    // New stats keep being committed while the pruner works. A row from a
    // proxy whose clock runs a minute ahead (its id, the proxy's receive
    // time, is ahead too) is younger than the retention and stays: only
    // rows past it go. (Its completion time is stored clamped to the
    // receive time; pruning goes by the id.)
    batch_id += 1;
    let ahead = now_ms() + 60_000;
    let fresh = pb::RequestRecord {
        request_id: uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            (ahead / 1000) as u64,
            0,
        ))
        .to_string(),
        ..record(&e.id, ahead, 10, 100.0)
    };
    let fresh_id = fresh.request_id.clone();
    assert_eq!(
        send_stats(&grpc, "retention", batch_id, vec![fresh])
            .await
            .applied,
        1
    );
    eventually(Duration::from_secs(10), "old rows pruned", || async {
        (count(&pool, "SELECT count(*) FROM request_history").await == 1).then_some(())
    })
    .await;
    let (kept,): (Vec<u8>,) = sqlx::query_as("SELECT request_id FROM request_history")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(uuid::Uuid::from_slice(&kept).unwrap().to_string(), fresh_id);
    // Aggregates and counters keep every request.
    assert_eq!(sums(pool.clone()).await, (2_501, 2_501, 2_501));
    let after = overview(&grpc).await;
    let (b, a) = (before.stats.unwrap(), after.stats.unwrap());
    assert_eq!(a.total_requests, b.total_requests + 1);
    assert_eq!(a.total_output_tokens, b.total_output_tokens + 10);
    assert_eq!(endpoint_stats(&after, &e.id).total_requests, 2_501);
    pool.close().await;
}

/// A proxy whose clock is 8 days behind, with `--history-retention 2s`:
/// its records are older than the retention by their id (the proxy's
/// receive time), so they are refused and counted. Before, the pruner
/// deleted the stored row within a second and the resend after a lost
/// acknowledgement was applied a second time.
#[tokio::test]
async fn a_record_older_than_the_retention_is_refused_not_counted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ControlPlaneOptions::new(dir.path().join("llmlb.db"));
    options
        .args
        .extend(["--history-retention".into(), "2s".into()]);
    let cp = ControlPlane::start(options);
    let grpc = cp.grpc_url();
    let e = create_endpoint(&grpc, "e", "http://127.0.0.1:9", &["m"]).await;
    let behind = now_ms() - 8 * 86_400_000;
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        (behind / 1000) as u64,
        ((behind % 1000) * 1_000_000) as u32,
    );
    let old = pb::RequestRecord {
        request_id: uuid::Uuid::new_v7(ts).to_string(),
        ..record(&e.id, behind, 10, 100.0)
    };
    assert_eq!(
        send_stats(&grpc, "late", 1, vec![old.clone()])
            .await
            .applied,
        0
    );
    // Past a pruning round, the "lost ack" resend.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(send_stats(&grpc, "late", 1, vec![old]).await.applied, 0);
    let o = overview(&grpc).await;
    assert_eq!(o.stats.unwrap().total_requests, 0);
    let metrics = http()
        .get(format!("{}/metrics", cp.http_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "llmlb_control_stats_values_rejected_total{reason=\"older_than_retention\"} 2"
        ),
        "{metrics}"
    );
}
