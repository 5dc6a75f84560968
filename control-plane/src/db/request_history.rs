//! The `request_history` table: one row per upstream attempt, keyed by the
//! attempt's UUIDv7 — the deduplication key of the stats pipeline.

use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::types::UnixMs;

/// One attempt as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryRow {
    /// Attempt id (UUIDv7).
    pub request_id: Uuid,
    /// Proxy that served it.
    pub proxy_id: String,
    /// Endpoint UUID.
    pub endpoint_id: Uuid,
    /// Model requested.
    pub model: String,
    /// `v1::ApiKind` as i32.
    pub api_kind: i32,
    /// Upstream HTTP status, 0 if none.
    pub status_code: u32,
    /// 2xx and relayed to the end.
    pub success: bool,
    /// Request received → last byte relayed.
    pub duration_ms: f64,
    /// Request received → first byte relayed.
    pub ttft_ms: Option<f64>,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Completion time.
    pub completed_at: UnixMs,
    /// Failure reason.
    pub error: Option<String>,
    /// Client API key id.
    pub api_key_id: Option<String>,
}

/// Rows per INSERT statement (14 columns; SQLite allows 32766 variables).
const ROWS_PER_STATEMENT: usize = 500;

/// Inserts the rows that are not stored yet and returns, for each input row,
/// whether it was new. Rows whose `request_id` exists are left untouched.
///
/// The stored ids are looked up first (`SELECT … WHERE request_id IN (…)`,
/// usually answering nothing) and only the new rows are inserted. Inside the
/// writer's transaction, on the only writer connection, nothing can slip in
/// between. (`INSERT … RETURNING` would tell the same, but sqlx hands every
/// returned row from its SQLite thread to the task one message at a time,
/// which cost more than the insert itself.)
pub async fn insert_new(
    conn: &mut SqliteConnection,
    rows: &[HistoryRow],
) -> Result<Vec<bool>, sqlx::Error> {
    let mut stored = std::collections::HashSet::new();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT request_id FROM request_history WHERE request_id IN (");
        let mut ids = q.separated(", ");
        for r in chunk {
            ids.push_bind(r.request_id.as_bytes().to_vec());
        }
        q.push(")");
        let found: Vec<(Vec<u8>,)> = q.build_query_as().fetch_all(&mut *conn).await?;
        stored.extend(
            found
                .into_iter()
                .filter_map(|(b,)| Uuid::from_slice(&b).ok()),
        );
    }
    // A request id repeated inside one batch is new only the first time.
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    let new: Vec<bool> = rows
        .iter()
        .map(|r| !stored.contains(&r.request_id) && seen.insert(r.request_id))
        .collect();
    let fresh: Vec<&HistoryRow> = rows
        .iter()
        .zip(&new)
        .filter(|(_, n)| **n)
        .map(|(r, _)| r)
        .collect();
    for chunk in fresh.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO request_history (request_id, proxy_id, endpoint_id, model, api_kind, \
             status_code, success, duration_ms, ttft_ms, input_tokens, output_tokens, completed_at, \
             error, api_key_id) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.request_id.as_bytes().to_vec())
                .push_bind(&r.proxy_id)
                .push_bind(r.endpoint_id.to_string())
                .push_bind(&r.model)
                .push_bind(r.api_kind)
                .push_bind(i64::from(r.status_code))
                .push_bind(r.success)
                .push_bind(r.duration_ms)
                .push_bind(r.ttft_ms)
                .push_bind(r.input_tokens as i64)
                .push_bind(r.output_tokens as i64)
                .push_bind(r.completed_at)
                .push_bind(&r.error)
                .push_bind(&r.api_key_id);
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(new)
}

/// Deletes up to `limit` rows completed before `cutoff`; returns how many.
pub async fn prune_before(
    pool: &SqlitePool,
    cutoff: UnixMs,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM request_history WHERE request_id IN \
         (SELECT request_id FROM request_history WHERE completed_at < ? LIMIT ?)",
    )
    .bind(cutoff)
    .bind(i64::from(limit))
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Number of stored attempts.
pub async fn count(pool: &SqlitePool) -> Result<u64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM request_history")
        .fetch_one(pool)
        .await?;
    Ok(n.max(0) as u64)
}

#[cfg(test)]
pub(crate) fn sample(endpoint_id: Uuid, success: bool, completed_at: UnixMs) -> HistoryRow {
    HistoryRow {
        request_id: Uuid::now_v7(),
        proxy_id: "p1".into(),
        endpoint_id,
        model: "m".into(),
        api_kind: 1,
        status_code: if success { 200 } else { 500 },
        success,
        duration_ms: 2000.0,
        ttft_ms: Some(10.0),
        input_tokens: 5,
        output_tokens: if success { 100 } else { 0 },
        completed_at,
        error: (!success).then(|| "upstream 500".into()),
        api_key_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_db;

    #[tokio::test]
    async fn a_resent_batch_inserts_nothing() {
        let (db, _dir) = test_db().await;
        let ep = Uuid::new_v4();
        let batch: Vec<_> = (0..1200)
            .map(|i| sample(ep, i % 3 != 0, 1000 + i))
            .collect();
        let mut conn = db.write.acquire().await.unwrap();
        let first = insert_new(&mut conn, &batch).await.unwrap();
        assert!(first.iter().all(|n| *n));
        let again = insert_new(&mut conn, &batch).await.unwrap();
        assert!(again.iter().all(|n| !*n));
        // A batch mixing old and new rows, and a duplicate inside itself.
        let fresh = sample(ep, true, 5000);
        let mixed = vec![batch[7].clone(), fresh.clone(), fresh];
        assert_eq!(
            insert_new(&mut conn, &mixed).await.unwrap(),
            vec![false, true, false]
        );
        drop(conn);
        assert_eq!(count(&db.read).await.unwrap(), 1201);
    }

    #[tokio::test]
    async fn pruning_removes_only_old_rows_in_small_batches() {
        let (db, _dir) = test_db().await;
        let ep = Uuid::new_v4();
        let rows: Vec<_> = (0..50).map(|i| sample(ep, true, i)).collect();
        insert_new(&mut db.write.acquire().await.unwrap(), &rows)
            .await
            .unwrap();
        assert_eq!(prune_before(&db.write, 30, 20).await.unwrap(), 20);
        assert_eq!(prune_before(&db.write, 30, 20).await.unwrap(), 10);
        assert_eq!(prune_before(&db.write, 30, 20).await.unwrap(), 0);
        assert_eq!(count(&db.read).await.unwrap(), 20);
    }
}
