//! The `model_stats` table: exact TPS state (EMA) and totals per endpoint ×
//! model × API kind, restored as is at boot.

use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::db::{from_sql_count, to_sql_count};
use crate::types::{ModelKey, UnixMs};

/// Persisted state of one key.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ModelState {
    /// Completed attempts.
    pub request_count: u64,
    /// Output tokens.
    pub total_output_tokens: u64,
    /// Current EMA of tokens per second; `None` before the first sample.
    pub tps_ema: Option<f64>,
}

/// Rows per statement of [`put_many`] (7 variables each).
const ROWS_PER_STATEMENT: usize = 500;

/// Writes the full state of `key` (absolute values, not deltas).
pub async fn put(
    conn: &mut SqliteConnection,
    key: &ModelKey,
    s: &ModelState,
    now: UnixMs,
) -> Result<(), sqlx::Error> {
    put_many(conn, &[(key, s)], now).await
}

/// Writes the full state of each key (the keys must be distinct),
/// [`ROWS_PER_STATEMENT`] rows per statement.
pub async fn put_many(
    conn: &mut SqliteConnection,
    rows: &[(&ModelKey, &ModelState)],
    now: UnixMs,
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO model_stats (endpoint_id, model, api_kind, request_count, \
             total_output_tokens, tps_ema, updated_at) ",
        );
        q.push_values(chunk, |mut b, (key, s)| {
            b.push_bind(key.endpoint_id.to_string())
                .push_bind(key.model.as_str())
                .push_bind(key.api_kind)
                .push_bind(to_sql_count(s.request_count))
                .push_bind(to_sql_count(s.total_output_tokens))
                .push_bind(s.tps_ema)
                .push_bind(now);
        });
        q.push(
            " ON CONFLICT (endpoint_id, model, api_kind) DO UPDATE SET \
             request_count = excluded.request_count, total_output_tokens = excluded.total_output_tokens, \
             tps_ema = excluded.tps_ema, updated_at = excluded.updated_at",
        );
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Every key's state.
pub async fn load_all(pool: &SqlitePool) -> Result<Vec<(ModelKey, ModelState)>, sqlx::Error> {
    let rows: Vec<(String, String, i32, i64, i64, Option<f64>)> = sqlx::query_as(
        "SELECT endpoint_id, model, api_kind, CAST(request_count AS INTEGER), \
         CAST(total_output_tokens AS INTEGER), CAST(tps_ema AS REAL) FROM model_stats",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, model, api_kind, n, o, tps)| {
            let key = ModelKey {
                endpoint_id: Uuid::parse_str(&id).ok()?,
                model,
                api_kind,
            };
            Some((
                key,
                ModelState {
                    request_count: from_sql_count(n, "model_stats request_count"),
                    total_output_tokens: from_sql_count(o, "model_stats total_output_tokens"),
                    tps_ema: tps.filter(|t| t.is_finite() && *t >= 0.0),
                },
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_db;

    #[tokio::test]
    async fn ema_state_round_trips_exactly() {
        let (db, _dir) = test_db().await;
        let key = ModelKey {
            endpoint_id: Uuid::new_v4(),
            model: "m".into(),
            api_kind: 3,
        };
        // A value with every mantissa bit in use must come back bit for bit.
        let s = ModelState {
            request_count: 3,
            total_output_tokens: 300,
            tps_ema: Some(1.0 / 3.0 + 47.123_456_789),
        };
        let mut conn = db.write.acquire().await.unwrap();
        put(&mut conn, &key, &ModelState::default(), 1)
            .await
            .unwrap();
        put(&mut conn, &key, &s, 2).await.unwrap();
        drop(conn);
        let got = load_all(&db.read).await.unwrap();
        assert_eq!(got, vec![(key, s)]);
        assert_eq!(
            got[0].1.tps_ema.unwrap().to_bits(),
            s.tps_ema.unwrap().to_bits()
        );
    }
}
