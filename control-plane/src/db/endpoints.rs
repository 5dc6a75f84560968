//! The `endpoints` table: registry rows, health, lifetime counters.

use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::db::{from_sql_count, sat_add_sql, to_sql_count};
use crate::types::{Status, UnixMs};

/// One endpoint as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointRow {
    /// UUID.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Base URL: the server root, which serves /v1/... (stored without a
    /// trailing `/v1`).
    pub base_url: String,
    /// Path probed for liveness instead of `/v1/models`, if set.
    pub health_path: Option<String>,
    /// Upstream key; never returned by an API.
    pub api_key: Option<String>,
    /// Operator's static model list; `None` = discover.
    pub static_models: Option<Vec<String>>,
    /// Models from the last successful probe.
    pub discovered_models: Vec<String>,
    /// Health.
    pub status: Status,
    /// Last successful probe duration; kept on failure.
    pub latency_ms: Option<f64>,
    /// Failed probes in a row.
    pub consecutive_failures: u32,
    /// Last probe time.
    pub last_checked_at: Option<UnixMs>,
    /// Error of the last failed probe.
    pub last_error: Option<String>,
    /// Lifetime request counters and tokens.
    pub counters: Counters,
    /// Each discovered model's full object from the last successful
    /// `/v1/models` reply, as JSON text (`created`, `owned_by`,
    /// `max_model_len`, ...). In memory only: empty after a restart until
    /// the first probe.
    pub model_objects: std::sync::Arc<[(String, String)]>,
    /// Registration time.
    pub created_at: UnixMs,
    /// Last configuration change.
    pub updated_at: UnixMs,
}

/// Lifetime request counters of an endpoint (also used as a delta).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Completed attempts.
    pub total_requests: u64,
    /// Successful attempts.
    pub successful_requests: u64,
    /// Failed attempts.
    pub failed_requests: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

impl Counters {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Counters) {
        // Saturating: a sum never wraps (see `db::to_sql_count`).
        self.total_requests = self.total_requests.saturating_add(other.total_requests);
        self.successful_requests = self
            .successful_requests
            .saturating_add(other.successful_requests);
        self.failed_requests = self.failed_requests.saturating_add(other.failed_requests);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
    }
}

/// Outcome of one health probe, as applied to the row.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeUpdate {
    /// New status.
    pub status: Status,
    /// Measured latency on success; `None` keeps the stored value.
    pub latency_ms: Option<f64>,
    /// Failures in a row after this probe.
    pub consecutive_failures: u32,
    /// Probe time.
    pub checked_at: UnixMs,
    /// Error on failure.
    pub last_error: Option<String>,
    /// Discovered models on success; `None` keeps the stored list.
    pub discovered_models: Option<Vec<String>>,
}

fn models_json(models: &[String]) -> String {
    serde_json::to_string(models).unwrap_or_else(|_| "[]".into())
}

fn parse_models(json: &str) -> Vec<String> {
    serde_json::from_str(json).unwrap_or_default()
}

/// Reads every endpoint.
pub async fn load_all(pool: &SqlitePool) -> Result<Vec<EndpointRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, name, base_url, api_key, static_models, discovered_models, status, \
         latency_ms, consecutive_failures, last_checked_at, last_error, \
         CAST(total_requests AS INTEGER), CAST(successful_requests AS INTEGER), \
         CAST(failed_requests AS INTEGER), CAST(total_input_tokens AS INTEGER), \
         CAST(total_output_tokens AS INTEGER), created_at, updated_at, health_path \
         FROM endpoints ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    use sqlx::Row as _;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = r.try_get(0)?;
        let Ok(id) = Uuid::parse_str(&id) else {
            tracing::warn!(%id, "skipping endpoint row with a malformed id");
            continue;
        };
        let count = |i: usize| -> Result<u64, sqlx::Error> {
            Ok(from_sql_count(r.try_get::<i64, _>(i)?, "endpoints counter"))
        };
        out.push(EndpointRow {
            id,
            name: r.try_get(1)?,
            base_url: r.try_get(2)?,
            health_path: r.try_get(18)?,
            api_key: r.try_get(3)?,
            static_models: r
                .try_get::<Option<String>, _>(4)?
                .as_deref()
                .map(parse_models),
            discovered_models: parse_models(&r.try_get::<String, _>(5)?),
            status: Status::parse(&r.try_get::<String, _>(6)?),
            latency_ms: r.try_get(7)?,
            consecutive_failures: r.try_get::<i64, _>(8)?.clamp(0, i64::from(u32::MAX)) as u32,
            last_checked_at: r.try_get(9)?,
            last_error: r.try_get(10)?,
            counters: Counters {
                total_requests: count(11)?,
                successful_requests: count(12)?,
                failed_requests: count(13)?,
                input_tokens: count(14)?,
                output_tokens: count(15)?,
            },
            model_objects: Default::default(),
            created_at: r.try_get(16)?,
            updated_at: r.try_get(17)?,
        });
    }
    Ok(out)
}

/// Inserts a new endpoint. A taken name fails with a unique violation.
pub async fn insert(pool: &SqlitePool, e: &EndpointRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO endpoints (id, name, base_url, api_key, static_models, discovered_models, \
         status, latency_ms, consecutive_failures, created_at, updated_at, health_path) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(e.id.to_string())
    .bind(&e.name)
    .bind(&e.base_url)
    .bind(&e.api_key)
    .bind(e.static_models.as_deref().map(models_json))
    .bind(models_json(&e.discovered_models))
    .bind(e.status.as_str())
    .bind(e.latency_ms)
    .bind(i64::from(e.consecutive_failures))
    .bind(e.created_at)
    .bind(e.updated_at)
    .bind(&e.health_path)
    .execute(pool)
    .await?;
    Ok(())
}

/// Writes the configuration fields (and the reset health) of `e`.
pub async fn update_config(pool: &SqlitePool, e: &EndpointRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE endpoints SET name = ?, base_url = ?, api_key = ?, static_models = ?, \
         status = ?, consecutive_failures = ?, updated_at = ?, health_path = ? WHERE id = ?",
    )
    .bind(&e.name)
    .bind(&e.base_url)
    .bind(&e.api_key)
    .bind(e.static_models.as_deref().map(models_json))
    .bind(e.status.as_str())
    .bind(i64::from(e.consecutive_failures))
    .bind(e.updated_at)
    .bind(&e.health_path)
    .bind(e.id.to_string())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes an endpoint and its per-model TPS state; history stays.
pub async fn delete(pool: &SqlitePool, id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query("DELETE FROM endpoints WHERE id = ?")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    // The aggregate table may be missing (FR-006); deleting its rows is best effort.
    let _ = sqlx::query("DELETE FROM model_stats WHERE endpoint_id = ?")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Applies a probe outcome. `latency_ms = None` keeps the stored latency
/// (seed US2: a failed probe never erases it); so does `discovered_models`.
pub async fn record_probe(
    pool: &SqlitePool,
    id: Uuid,
    p: &ProbeUpdate,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE endpoints SET status = ?, latency_ms = COALESCE(?, latency_ms), \
         consecutive_failures = ?, last_checked_at = ?, last_error = ?, \
         discovered_models = COALESCE(?, discovered_models) WHERE id = ?",
    )
    .bind(p.status.as_str())
    .bind(p.latency_ms)
    .bind(i64::from(p.consecutive_failures))
    .bind(p.checked_at)
    .bind(&p.last_error)
    .bind(p.discovered_models.as_deref().map(models_json))
    .bind(id.to_string())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Rows per statement of [`add_counters_many`] (6 variables each).
const COUNTER_ROWS_PER_STATEMENT: usize = 500;

/// Adds request counter deltas to an endpoint, inside the writer's transaction.
pub async fn add_counters(
    conn: &mut SqliteConnection,
    id: Uuid,
    d: &Counters,
) -> Result<(), sqlx::Error> {
    add_counters_many(conn, &[(id, d)]).await
}

/// Adds counter deltas to several endpoints (the ids must be distinct),
/// [`COUNTER_ROWS_PER_STATEMENT`] endpoints per `UPDATE … FROM (VALUES …)`
/// statement; ids that are not stored are skipped.
pub async fn add_counters_many(
    conn: &mut SqliteConnection,
    rows: &[(Uuid, &Counters)],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(COUNTER_ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(&format!(
            "UPDATE endpoints SET total_requests = {}, successful_requests = {}, \
                 failed_requests = {}, total_input_tokens = {}, total_output_tokens = {} FROM (",
            sat_add_sql("total_requests", "d.column2"),
            sat_add_sql("successful_requests", "d.column3"),
            sat_add_sql("failed_requests", "d.column4"),
            sat_add_sql("total_input_tokens", "d.column5"),
            sat_add_sql("total_output_tokens", "d.column6"),
        ));
        q.push_values(chunk, |mut b, (id, d)| {
            b.push_bind(id.to_string())
                .push_bind(to_sql_count(d.total_requests))
                .push_bind(to_sql_count(d.successful_requests))
                .push_bind(to_sql_count(d.failed_requests))
                .push_bind(to_sql_count(d.input_tokens))
                .push_bind(to_sql_count(d.output_tokens));
        });
        q.push(") AS d WHERE endpoints.id = d.column1");
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Which of `ids` are stored, read on `conn` (inside the writer's
/// transaction: what it says holds until the commit).
pub async fn existing(
    conn: &mut SqliteConnection,
    ids: &[Uuid],
) -> Result<std::collections::HashSet<Uuid>, sqlx::Error> {
    let mut found = std::collections::HashSet::with_capacity(ids.len());
    for chunk in ids.chunks(COUNTER_ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT id FROM endpoints WHERE id IN (");
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(id.to_string());
        }
        q.push(")");
        let rows: Vec<(String,)> = q.build_query_as().fetch_all(&mut *conn).await?;
        found.extend(rows.iter().filter_map(|(id,)| Uuid::parse_str(id).ok()));
    }
    Ok(found)
}

#[cfg(test)]
pub(crate) fn sample(name: &str) -> EndpointRow {
    EndpointRow {
        id: Uuid::new_v4(),
        name: name.into(),
        base_url: "http://127.0.0.1:9".into(),
        health_path: None,
        api_key: Some("sk-upstream".into()),
        static_models: None,
        discovered_models: vec![],
        status: Status::Pending,
        latency_ms: None,
        consecutive_failures: 0,
        last_checked_at: None,
        last_error: None,
        counters: Counters::default(),
        model_objects: Default::default(),
        created_at: 1,
        updated_at: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_db;

    fn probe(success: bool, latency: Option<f64>, failures: u32) -> ProbeUpdate {
        ProbeUpdate {
            status: Status::after_probe(success, failures),
            latency_ms: latency,
            consecutive_failures: failures,
            checked_at: 5,
            last_error: (!success).then(|| "connection refused".into()),
            discovered_models: success.then(|| vec!["m".into()]),
        }
    }

    /// Seed T001: a failed probe (latency None) keeps the stored latency.
    /// Endpoints stored by a build that kept a trailing `/v1` get their
    /// server root when the control plane is upgraded (migration 0004).
    #[tokio::test]
    async fn base_urls_stored_with_v1_get_their_root_on_upgrade() {
        let (db, dir) = test_db().await;
        let urls = [
            ("a", "http://h:1/v1"),
            ("b", "http://h:1/v1/"),
            ("c", "http://h:1/api/v1"),
            ("d", "http://h:1/"),
            ("e", "http://h:1/V1"),
            ("f", "http://h:1"),
        ];
        for (name, url) in urls {
            let mut e = sample(name);
            e.base_url = url.into();
            insert(&db.write, &e).await.unwrap();
        }
        // The database as the previous build left it: 0004 not applied yet.
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 4")
            .execute(&db.write)
            .await
            .unwrap();
        drop(db);
        let db = super::super::Db::open(&dir.path().join("test.db"))
            .await
            .unwrap();
        let mut rows = load_all(&db.read).await.unwrap();
        rows.sort_by(|x, y| x.name.cmp(&y.name));
        let got: Vec<&str> = rows.iter().map(|r| r.base_url.as_str()).collect();
        assert_eq!(
            got,
            [
                "http://h:1",
                "http://h:1",
                "http://h:1/api",
                "http://h:1",
                "http://h:1/V1",
                "http://h:1"
            ]
        );
    }

    #[tokio::test]
    async fn failed_probe_keeps_latency_in_the_database() {
        let (db, _dir) = test_db().await;
        let e = sample("a");
        insert(&db.write, &e).await.unwrap();
        record_probe(&db.write, e.id, &probe(true, Some(120.0), 0))
            .await
            .unwrap();
        record_probe(&db.write, e.id, &probe(false, None, 1))
            .await
            .unwrap();
        let row = &load_all(&db.read).await.unwrap()[0];
        assert_eq!(row.latency_ms, Some(120.0));
        assert_eq!(row.status, Status::Error);
        assert_eq!(row.discovered_models, vec!["m".to_string()]);
        record_probe(&db.write, e.id, &probe(false, None, 2))
            .await
            .unwrap();
        let row = &load_all(&db.read).await.unwrap()[0];
        assert_eq!((row.latency_ms, row.status), (Some(120.0), Status::Offline));
        record_probe(&db.write, e.id, &probe(true, Some(95.0), 0))
            .await
            .unwrap();
        let row = &load_all(&db.read).await.unwrap()[0];
        assert_eq!((row.latency_ms, row.status), (Some(95.0), Status::Online));
        assert_eq!(row.last_error, None);
    }

    #[tokio::test]
    async fn counters_add_up_and_rows_round_trip() {
        let (db, _dir) = test_db().await;
        let mut e = sample("a");
        e.static_models = Some(vec!["x".into(), "y".into()]);
        insert(&db.write, &e).await.unwrap();
        let d = Counters {
            total_requests: 2,
            successful_requests: 1,
            failed_requests: 1,
            input_tokens: 10,
            output_tokens: 20,
        };
        let mut conn = db.write.acquire().await.unwrap();
        add_counters(&mut conn, e.id, &d).await.unwrap();
        add_counters(&mut conn, e.id, &d).await.unwrap();
        drop(conn);
        let row = load_all(&db.read).await.unwrap().remove(0);
        let mut want = e.clone();
        want.counters.add(&d);
        want.counters.add(&d);
        assert_eq!(row, want);
    }

    #[tokio::test]
    async fn counters_of_many_endpoints_add_up_in_one_call() {
        let (db, _dir) = test_db().await;
        let endpoints: Vec<EndpointRow> = (0..700).map(|i| sample(&format!("e{i}"))).collect();
        for e in &endpoints {
            insert(&db.write, e).await.unwrap();
        }
        let d = |i: u64| Counters {
            total_requests: i + 2,
            successful_requests: i + 1,
            failed_requests: 1,
            input_tokens: 3 * i,
            output_tokens: 5 * i,
        };
        let deltas: Vec<Counters> = (0..700).map(d).collect();
        // More than one statement's worth, plus an id that is not stored.
        let mut rows: Vec<(Uuid, &Counters)> =
            endpoints.iter().map(|e| e.id).zip(&deltas).collect();
        rows.push((Uuid::new_v4(), &deltas[0]));
        let mut conn = db.write.acquire().await.unwrap();
        add_counters_many(&mut conn, &rows).await.unwrap();
        add_counters_many(&mut conn, &rows[..1]).await.unwrap();
        drop(conn);
        let stored = load_all(&db.read).await.unwrap();
        assert_eq!(stored.len(), 700);
        for row in stored {
            let i: u64 = row.name[1..].parse().unwrap();
            let mut want = d(i);
            if i == 0 {
                want.add(&d(0));
            }
            assert_eq!(row.counters, want, "endpoint {}", row.name);
        }
    }

    #[tokio::test]
    async fn names_are_unique_and_delete_reports_missing_rows() {
        let (db, _dir) = test_db().await;
        let e = sample("a");
        insert(&db.write, &e).await.unwrap();
        let dup = insert(&db.write, &sample("a")).await.unwrap_err();
        assert!(dup
            .as_database_error()
            .is_some_and(|d| d.is_unique_violation()));
        assert!(delete(&db.write, e.id).await.unwrap());
        assert!(!delete(&db.write, e.id).await.unwrap());
    }
}
