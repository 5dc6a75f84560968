//! The `endpoint_daily_stats` table: per UTC day × endpoint × model × API
//! kind totals. Boot falls back to today's totals for TPS when no exact EMA
//! state was persisted.

use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::db::{from_sql_count, sat_add_sql, to_sql_count};
use crate::types::ModelKey;

/// Totals of one day and key (also used as a delta).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DailyTotals {
    /// Completed attempts.
    pub total_requests: u64,
    /// Successful attempts.
    pub successful_requests: u64,
    /// Failed attempts.
    pub failed_requests: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens of TPS-eligible requests (success, tokens > 0, duration > 0).
    pub output_tokens: u64,
    /// Duration of TPS-eligible requests.
    pub duration_ms: f64,
}

impl DailyTotals {
    /// Adds `o` to `self`.
    pub fn add(&mut self, o: &DailyTotals) {
        self.total_requests = self.total_requests.saturating_add(o.total_requests);
        self.successful_requests = self
            .successful_requests
            .saturating_add(o.successful_requests);
        self.failed_requests = self.failed_requests.saturating_add(o.failed_requests);
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.duration_ms += o.duration_ms;
    }
}

/// Rows per statement of [`add_many`] (10 variables each).
const ROWS_PER_STATEMENT: usize = 500;

/// Adds `d` to the row of `date` and `key`.
pub async fn add(
    conn: &mut SqliteConnection,
    date: &str,
    key: &ModelKey,
    d: &DailyTotals,
) -> Result<(), sqlx::Error> {
    add_many(conn, &[(date, key, d)]).await
}

/// Adds each `(date, key, totals)` to its row (the keys must be distinct),
/// [`ROWS_PER_STATEMENT`] rows per statement: a commit touching thousands of
/// keys costs a few round trips to the SQLite thread instead of one per key.
pub async fn add_many(
    conn: &mut SqliteConnection,
    rows: &[(&str, &ModelKey, &DailyTotals)],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO endpoint_daily_stats (date, endpoint_id, model, api_kind, total_requests, \
             successful_requests, failed_requests, total_input_tokens, total_output_tokens, total_duration_ms) ",
        );
        q.push_values(chunk, |mut b, (date, key, d)| {
            b.push_bind(*date)
                .push_bind(key.endpoint_id.to_string())
                .push_bind(key.model.as_str())
                .push_bind(key.api_kind)
                .push_bind(to_sql_count(d.total_requests))
                .push_bind(to_sql_count(d.successful_requests))
                .push_bind(to_sql_count(d.failed_requests))
                .push_bind(to_sql_count(d.input_tokens))
                .push_bind(to_sql_count(d.output_tokens))
                .push_bind(d.duration_ms);
        });
        q.push(format!(
            " ON CONFLICT (date, endpoint_id, model, api_kind) DO UPDATE SET \
             total_requests = {}, successful_requests = {}, failed_requests = {}, \
             total_input_tokens = {}, total_output_tokens = {}, \
             total_duration_ms = total_duration_ms + excluded.total_duration_ms",
            sat_add_sql("total_requests", "excluded.total_requests"),
            sat_add_sql("successful_requests", "excluded.successful_requests"),
            sat_add_sql("failed_requests", "excluded.failed_requests"),
            sat_add_sql("total_input_tokens", "excluded.total_input_tokens"),
            sat_add_sql("total_output_tokens", "excluded.total_output_tokens"),
        ));
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Every key's totals on `date` (seed T019 `get_today_stats_all`).
pub async fn for_date(
    pool: &SqlitePool,
    date: &str,
) -> Result<Vec<(ModelKey, DailyTotals)>, sqlx::Error> {
    type Row = (String, String, i32, i64, i64, i64, i64, i64, f64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT endpoint_id, model, api_kind, CAST(total_requests AS INTEGER), \
         CAST(successful_requests AS INTEGER), CAST(failed_requests AS INTEGER), \
         CAST(total_input_tokens AS INTEGER), CAST(total_output_tokens AS INTEGER), \
         CAST(total_duration_ms AS REAL) \
         FROM endpoint_daily_stats WHERE date = ?",
    )
    .bind(date)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, model, api_kind, t, s, f, i, o, d)| {
            let key = ModelKey {
                endpoint_id: Uuid::parse_str(&id).ok()?,
                model,
                api_kind,
            };
            let totals = DailyTotals {
                total_requests: from_sql_count(t, "daily total_requests"),
                successful_requests: from_sql_count(s, "daily successful_requests"),
                failed_requests: from_sql_count(f, "daily failed_requests"),
                input_tokens: from_sql_count(i, "daily total_input_tokens"),
                output_tokens: from_sql_count(o, "daily total_output_tokens"),
                duration_ms: d,
            };
            Some((key, totals))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_db;

    #[tokio::test]
    async fn many_keys_add_up_in_one_call() {
        let (db, _dir) = test_db().await;
        let keys: Vec<ModelKey> = (0..1200)
            .map(|i| ModelKey {
                endpoint_id: Uuid::new_v4(),
                model: format!("m{i}"),
                api_kind: 1 + i % 4,
            })
            .collect();
        let d = DailyTotals {
            total_requests: 3,
            successful_requests: 2,
            failed_requests: 1,
            input_tokens: 7,
            output_tokens: 11,
            duration_ms: 13.5,
        };
        let rows: Vec<(&str, &ModelKey, &DailyTotals)> =
            keys.iter().map(|k| ("2026-11-28", k, &d)).collect();
        let mut conn = db.write.acquire().await.unwrap();
        add_many(&mut conn, &rows).await.unwrap();
        add_many(&mut conn, &rows[..10]).await.unwrap();
        drop(conn);
        let mut got = for_date(&db.read, "2026-11-28").await.unwrap();
        assert_eq!(got.len(), 1200);
        got.sort_by_key(|(k, _)| k.model[1..].parse::<usize>().unwrap());
        let mut twice = d;
        twice.add(&d);
        for (i, (key, totals)) in got.iter().enumerate() {
            assert_eq!(key, &keys[i]);
            assert_eq!(totals, if i < 10 { &twice } else { &d });
        }
    }

    /// Seed T017: today's row comes back with the inserted values; other
    /// days do not.
    #[tokio::test]
    async fn todays_totals_come_back() {
        let (db, _dir) = test_db().await;
        let key = ModelKey {
            endpoint_id: Uuid::new_v4(),
            model: "m".into(),
            api_kind: 1,
        };
        let d = DailyTotals {
            total_requests: 1,
            successful_requests: 1,
            output_tokens: 100,
            duration_ms: 2000.0,
            ..Default::default()
        };
        let mut conn = db.write.acquire().await.unwrap();
        add(&mut conn, "2026-11-28", &key, &d).await.unwrap();
        add(&mut conn, "2026-11-27", &key, &d).await.unwrap();
        add(&mut conn, "2026-11-28", &key, &d).await.unwrap();
        drop(conn);
        let mut want = d;
        want.add(&d);
        assert_eq!(
            for_date(&db.read, "2026-11-28").await.unwrap(),
            vec![(key.clone(), want)]
        );
        assert_eq!(for_date(&db.read, "2026-11-26").await.unwrap(), vec![]);
    }
}
