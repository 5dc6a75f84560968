//! The `request_history` table: one row per upstream attempt, keyed by the
//! attempt's UUIDv7 — the deduplication key of the stats pipeline.

use sqlx::error::BoxDynError;
use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
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

/// Columns of an INSERT, in the order [`prepare_insert`] binds them.
const INSERT_COLUMNS: &str = "INSERT INTO request_history (request_id, proxy_id, endpoint_id, \
     model, api_kind, status_code, success, duration_ms, ttft_ms, input_tokens, output_tokens, \
     completed_at, error, api_key_id) VALUES ";

/// `INSERT … ON CONFLICT DO NOTHING` statements of a set of rows, with
/// their arguments bound (owned), made ahead of the writer — by the stream
/// handler that received the rows, on another thread than the writer's.
#[derive(Debug, Default)]
pub struct PreparedInsert {
    statements: Vec<(String, SqliteArguments<'static>)>,
}

/// Prepares the insert of `rows` (one statement per 500 rows).
pub fn prepare_insert(rows: &[HistoryRow]) -> Result<PreparedInsert, sqlx::Error> {
    let mut statements = Vec::with_capacity(rows.len().div_ceil(ROWS_PER_STATEMENT));
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::with_capacity(INSERT_COLUMNS.len() + chunk.len() * 44 + 40);
        sql.push_str(INSERT_COLUMNS);
        let mut args = SqliteArguments::default();
        for (i, r) in chunk.iter().enumerate() {
            sql.push_str(if i == 0 { "(" } else { ",(" });
            sql.push_str("?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
            bind_row(&mut args, r).map_err(sqlx::Error::Encode)?;
        }
        sql.push_str(" ON CONFLICT (request_id) DO NOTHING");
        statements.push((sql, args));
    }
    Ok(PreparedInsert { statements })
}

fn bind_row(args: &mut SqliteArguments<'static>, r: &HistoryRow) -> Result<(), BoxDynError> {
    args.add(r.request_id.as_bytes().to_vec())?;
    args.add(r.proxy_id.clone())?;
    args.add(r.endpoint_id.to_string())?;
    args.add(r.model.clone())?;
    args.add(r.api_kind)?;
    args.add(i64::from(r.status_code))?;
    args.add(r.success)?;
    args.add(r.duration_ms)?;
    args.add(r.ttft_ms)?;
    args.add(r.input_tokens as i64)?;
    args.add(r.output_tokens as i64)?;
    args.add(r.completed_at)?;
    args.add(r.error.clone())?;
    args.add(r.api_key_id.clone())?;
    Ok(())
}

/// Runs `prepared` (the insert of `rows`) and returns, for each row, whether
/// it was new. Rows whose `request_id` exists are left untouched.
///
/// The fast path runs the prepared statements inside a savepoint; when they
/// inserted every row, all were new (the usual case: duplicates come only
/// from a resend after a lost ack). Otherwise the savepoint is rolled back
/// and the rows take the slow path: look the ids up (`SELECT … WHERE
/// request_id IN (…)`), insert the rest. Inside the writer's transaction, on
/// the only writer connection, nothing can slip in between. (`INSERT …
/// RETURNING` would tell the same, but sqlx hands every returned row from
/// its SQLite thread to the task one message at a time, which cost more than
/// the insert itself.)
pub async fn insert_prepared(
    conn: &mut SqliteConnection,
    rows: &[HistoryRow],
    prepared: PreparedInsert,
) -> Result<Vec<bool>, sqlx::Error> {
    sqlx::query("SAVEPOINT insert_new")
        .execute(&mut *conn)
        .await?;
    let mut inserted = 0;
    for (sql, args) in prepared.statements {
        inserted += sqlx::query_with(&sql, args)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    }
    if inserted == rows.len() as u64 {
        sqlx::query("RELEASE insert_new")
            .execute(&mut *conn)
            .await?;
        return Ok(vec![true; rows.len()]);
    }
    sqlx::query("ROLLBACK TO insert_new")
        .execute(&mut *conn)
        .await?;
    sqlx::query("RELEASE insert_new")
        .execute(&mut *conn)
        .await?;
    let mut new = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        new.extend(new_in(&mut *conn, chunk).await?);
    }
    // A request id repeated across chunks is new only the first time.
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    for (r, n) in rows.iter().zip(new.iter_mut()) {
        *n = *n && seen.insert(r.request_id);
    }
    let fresh: Vec<HistoryRow> = rows
        .iter()
        .zip(&new)
        .filter(|(_, n)| **n)
        .map(|(r, _)| r.clone())
        .collect();
    for (sql, args) in prepare_insert(&fresh)?.statements {
        sqlx::query_with(&sql, args).execute(&mut *conn).await?;
    }
    Ok(new)
}

/// [`prepare_insert`] and [`insert_prepared`] in one step.
#[cfg(test)]
pub async fn insert_new(
    conn: &mut SqliteConnection,
    rows: &[HistoryRow],
) -> Result<Vec<bool>, sqlx::Error> {
    insert_prepared(conn, rows, prepare_insert(rows)?).await
}

/// Which rows of `chunk` are not stored (the first of a repeated id only).
async fn new_in(
    conn: &mut SqliteConnection,
    chunk: &[HistoryRow],
) -> Result<Vec<bool>, sqlx::Error> {
    let mut q: QueryBuilder<Sqlite> =
        QueryBuilder::new("SELECT request_id FROM request_history WHERE request_id IN (");
    let mut ids = q.separated(", ");
    for r in chunk {
        ids.push_bind(r.request_id.as_bytes().to_vec());
    }
    q.push(")");
    let found: Vec<(Vec<u8>,)> = q.build_query_as().fetch_all(&mut *conn).await?;
    let stored: std::collections::HashSet<Uuid> = found
        .into_iter()
        .filter_map(|(b,)| Uuid::from_slice(&b).ok())
        .collect();
    let mut seen = std::collections::HashSet::with_capacity(chunk.len());
    Ok(chunk
        .iter()
        .map(|r| !stored.contains(&r.request_id) && seen.insert(r.request_id))
        .collect())
}

/// Deletes up to `limit` rows completed before `cutoff`; returns how many.
///
/// There is no index on `completed_at` (it cost the writer a second B-tree
/// insert per row). Request ids are UUIDv7 — their first 48 bits are the
/// Unix millisecond the proxy received the request, before it completed —
/// so every row completed before `cutoff` has an id below the smallest v7 id
/// of `cutoff`, and the primary key finds them from the start. A row whose
/// id is not a v7 one and sorts above that bound is never pruned.
pub async fn prune_before(
    pool: &SqlitePool,
    cutoff: UnixMs,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM request_history WHERE request_id IN \
         (SELECT request_id FROM request_history \
          WHERE request_id < ? AND completed_at < ? LIMIT ?)",
    )
    .bind(v7_floor(cutoff).to_vec())
    .bind(cutoff)
    .bind(i64::from(limit))
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The Unix millisecond in the first 48 bits of `id` (for a UUIDv7, when
/// the proxy received the request). Any id has one: `id < v7_floor(ms)`
/// exactly when `id_time_ms(id) < ms`, which is what lets ingest refuse
/// every record the pruner may have deleted.
pub fn id_time_ms(id: &Uuid) -> UnixMs {
    let b = id.as_bytes();
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&b[..6]);
    u64::from_be_bytes(ms) as UnixMs
}

/// The smallest UUIDv7 of Unix millisecond `ms` (as stored: big-endian
/// bytes, compared as a BLOB).
fn v7_floor(ms: UnixMs) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&(ms.max(0) as u64).to_be_bytes()[2..]);
    id
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
        request_id: v7_at(completed_at),
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

/// A UUIDv7 of Unix millisecond `ms` (random below the time bits).
#[cfg(test)]
pub(crate) fn v7_at(ms: UnixMs) -> Uuid {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        ms.div_euclid(1000) as u64,
        (ms.rem_euclid(1000) * 1_000_000) as u32,
    );
    Uuid::new_v7(ts)
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

    /// An id repeated in two statements of one batch: the fast path sees a
    /// row missing, rolls back, and the slow path keeps the first copy only.
    #[tokio::test]
    async fn a_repeat_across_statements_is_new_once() {
        let (db, _dir) = test_db().await;
        let ep = Uuid::new_v4();
        let mut batch: Vec<_> = (0..1000).map(|i| sample(ep, true, 1000 + i)).collect();
        batch[600].request_id = batch[3].request_id;
        let mut conn = db.write.acquire().await.unwrap();
        let new = insert_new(&mut conn, &batch).await.unwrap();
        let old: Vec<usize> = (0..1000).filter(|i| !new[*i]).collect();
        assert_eq!(old, [600]);
        drop(conn);
        assert_eq!(count(&db.read).await.unwrap(), 999);
    }

    #[test]
    fn the_v7_floor_sorts_between_milliseconds() {
        for ms in [1, 1_000, 1_764_500_000_123, 1_764_500_000_124] {
            let floor = v7_floor(ms);
            assert!(floor <= *v7_at(ms).as_bytes());
            assert!(floor > *v7_at(ms - 1).as_bytes());
            assert_eq!(id_time_ms(&v7_at(ms)), ms);
        }
    }

    #[tokio::test]
    async fn pruning_removes_only_old_rows_in_small_batches() {
        let (db, _dir) = test_db().await;
        let ep = Uuid::new_v4();
        let mut rows: Vec<_> = (0..50).map(|i| sample(ep, true, i)).collect();
        // Started before the cutoff, completed after it: kept.
        rows[45].request_id = v7_at(10);
        // Not a v7 id: pruned by completion time when it sorts low, never
        // when it sorts high.
        rows[0].request_id = Uuid::from_u128(1);
        rows[1].request_id = Uuid::from_u128(u128::MAX);
        insert_new(&mut db.write.acquire().await.unwrap(), &rows)
            .await
            .unwrap();
        assert_eq!(prune_before(&db.write, 30, 20).await.unwrap(), 20);
        assert_eq!(prune_before(&db.write, 30, 20).await.unwrap(), 9);
        assert_eq!(prune_before(&db.write, 30, 20).await.unwrap(), 0);
        assert_eq!(count(&db.read).await.unwrap(), 21);
        let (kept_high,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM request_history WHERE request_id = ?")
                .bind(Uuid::from_u128(u128::MAX).as_bytes().to_vec())
                .fetch_one(&db.read)
                .await
                .unwrap();
        assert_eq!(kept_high, 1);
    }
}
