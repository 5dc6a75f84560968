//! Builds control-plane databases of a given size, fast.
//!
//! The schema comes from the real binary (it is started once on the empty
//! file and stopped); then the rows are generated inside SQLite with a
//! recursive CTE in transactions of a million rows, with the journal off
//! (the file is thrown away if this fails). Aggregate tables are derived from
//! the generated history with `GROUP BY`, so every figure the control plane
//! restores is consistent with the rows:
//!
//! - `endpoints`: `endpoints` rows, each with `models` static (and
//!   discovered) models, ONLINE with a latency, counters = sums of history;
//! - `request_history`: `rows` attempts spread evenly over the last 6 days
//!   (inside the 7-day retention), ids shaped like UUIDv7 (time-ordered);
//!   2 % fail;
//! - `request_minutes`, `endpoint_daily_stats`: grouped from the history;
//! - `model_stats`: one row per endpoint × model, from the daily totals;
//! - optionally the history rows are deleted afterwards, aggregates kept (what
//!   the retention pruner leaves).

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};

use crate::{ControlPlane, Ctx};

/// Rows generated per transaction.
const CHUNK: u64 = 1_000_000;
/// History spans this far back from now.
const SPAN_MS: i64 = 6 * 24 * 3600 * 1000;

/// What to generate.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Endpoints.
    pub endpoints: usize,
    /// Models per endpoint.
    pub models: usize,
    /// Request-history rows.
    pub rows: u64,
    /// Base URL of every endpoint.
    pub base_url: String,
    /// Delete the history rows afterwards, keeping the aggregates — the
    /// state the retention pruner leaves behind.
    pub prune_history: bool,
}

/// The id of seeded endpoint `i` (a valid UUID).
pub fn endpoint_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// Model `k` of every seeded endpoint.
pub fn model(k: usize) -> String {
    format!("model-{k}")
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Removes a database and its WAL files.
pub fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// Size of a database file with its WAL, bytes.
pub fn db_bytes(path: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", path.display())).ok())
        .map(|m| m.len())
        .sum()
}

/// Creates `path` afresh per `spec`; returns how long it took.
pub fn create(ctx: &Ctx, path: &Path, spec: &Spec) -> Result<Duration> {
    let started = Instant::now();
    remove_db(path);
    // The schema, exactly as the binary creates it.
    ControlPlane::start(ctx, path, "seed-schema.log", &[])?.stop()?;
    crate::runtime()?.block_on(fill(path, spec))?;
    Ok(started.elapsed())
}

async fn fill(path: &Path, spec: &Spec) -> Result<()> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .journal_mode(SqliteJournalMode::Off)
        .synchronous(SqliteSynchronous::Off)
        .pragma("cache_size", "-262144")
        .pragma("temp_store", "memory");
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .context("open the seeded database")?;
    let now = now_ms();
    let models: Vec<String> = (0..spec.models).map(model).collect();
    let models_json = serde_json::to_string(&models)?;

    let mut tx = conn.begin().await?;
    for i in 0..spec.endpoints {
        sqlx::query(
            "INSERT INTO endpoints (id, name, base_url, static_models, discovered_models, status, \
             latency_ms, consecutive_failures, last_checked_at, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, 'online', ?, 0, ?, ?, ?)",
        )
        .bind(endpoint_id(i))
        .bind(format!("bench-{i:05}"))
        .bind(&spec.base_url)
        .bind(&models_json)
        .bind(&models_json)
        .bind(1.0 + (i % 10) as f64 / 10.0)
        .bind(now)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;

    let start_ms = now - SPAN_MS;
    let mut from = 0;
    while from < spec.rows {
        let to = (from + CHUNK).min(spec.rows);
        let mut tx = conn.begin().await?;
        sqlx::query(
            "WITH RECURSIVE s(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < ?2), \
             r(i, t, ok) AS (SELECT i, ?3 + (i * ?4) / ?5, (i % 50) != 7 FROM s) \
             INSERT INTO request_history (request_id, proxy_id, endpoint_id, model, api_kind, \
             status_code, success, duration_ms, ttft_ms, input_tokens, output_tokens, \
             completed_at, error, api_key_id) \
             SELECT unhex(printf('%012X70008000%012X', t, i)), 'bench-proxy-' || (i % 4), \
             printf('00000000-0000-4000-8000-%012d', i % ?6), 'model-' || ((i / ?6) % ?7), 1, \
             CASE WHEN ok THEN 200 ELSE 502 END, ok, 100.0 + (i % 900), 20.0, 30, \
             CASE WHEN ok THEN 20 + (i % 180) ELSE 0 END, t, \
             CASE WHEN ok THEN NULL ELSE 'upstream answered 502' END, NULL FROM r",
        )
        .bind(from as i64)
        .bind(to as i64)
        .bind(start_ms)
        .bind(SPAN_MS)
        .bind(spec.rows as i64)
        .bind(spec.endpoints as i64)
        .bind(spec.models as i64)
        .execute(&mut *tx)
        .await
        .context("generate request history")?;
        tx.commit().await?;
        from = to;
    }

    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO request_minutes (minute, success, failure, total_duration_ms) \
         SELECT completed_at / 60000, sum(success), sum(1 - success), sum(duration_ms) \
         FROM request_history GROUP BY completed_at / 60000",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO endpoint_daily_stats (date, endpoint_id, model, api_kind, total_requests, \
         successful_requests, failed_requests, total_input_tokens, total_output_tokens, \
         total_duration_ms) \
         SELECT strftime('%Y-%m-%d', completed_at / 1000, 'unixepoch'), endpoint_id, model, \
         api_kind, count(*), sum(success), sum(1 - success), sum(input_tokens), \
         sum(CASE WHEN success AND output_tokens > 0 AND duration_ms > 0 THEN output_tokens ELSE 0 END), \
         sum(CASE WHEN success AND output_tokens > 0 AND duration_ms > 0 THEN duration_ms ELSE 0 END) \
         FROM request_history GROUP BY 1, 2, 3, 4",
    )
    .execute(&mut *tx)
    .await?;
    // Every output token in this data set is TPS-eligible (failures have
    // none), so the daily eligible totals are the full totals.
    sqlx::query(
        "INSERT INTO model_stats (endpoint_id, model, api_kind, request_count, \
         total_output_tokens, tps_ema, updated_at) \
         SELECT endpoint_id, model, api_kind, sum(total_requests), sum(total_output_tokens), \
         CASE WHEN sum(total_duration_ms) > 0 \
         THEN sum(total_output_tokens) / (sum(total_duration_ms) / 1000.0) END, ?1 \
         FROM endpoint_daily_stats GROUP BY 1, 2, 3",
    )
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE endpoints SET total_requests = a.n, successful_requests = a.ok, \
         failed_requests = a.failed, total_input_tokens = a.inp, total_output_tokens = a.outp \
         FROM (SELECT endpoint_id, sum(total_requests) AS n, sum(successful_requests) AS ok, \
         sum(failed_requests) AS failed, sum(total_input_tokens) AS inp, \
         sum(total_output_tokens) AS outp FROM endpoint_daily_stats GROUP BY endpoint_id) AS a \
         WHERE endpoints.id = a.endpoint_id",
    )
    .execute(&mut *tx)
    .await?;
    if spec.prune_history {
        sqlx::query("DELETE FROM request_history")
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    sqlx::query("PRAGMA journal_mode = WAL")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// Copies a database (file and WAL) to `to`.
pub fn copy_db(from: &Path, to: &Path) -> Result<()> {
    remove_db(to);
    std::fs::copy(from, to).with_context(|| format!("copy {}", from.display()))?;
    let wal = format!("{}-wal", from.display());
    if Path::new(&wal).exists() {
        std::fs::copy(&wal, format!("{}-wal", to.display()))?;
    }
    Ok(())
}
