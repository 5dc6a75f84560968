//! The `request_minutes` table: success/failure and total duration per UTC
//! minute, so boot restores the timeline and the average response time
//! without scanning `request_history`.

use sqlx::{SqliteConnection, SqlitePool};

use crate::db::{from_sql_count, sat_add_sql, to_sql_count};

/// Totals of one UTC minute (also used as a delta).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MinuteTotals {
    /// Successful attempts completed in the minute.
    pub success: u64,
    /// Failed attempts completed in the minute.
    pub failure: u64,
    /// Summed duration of every attempt completed in the minute.
    pub total_duration_ms: f64,
}

impl MinuteTotals {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &MinuteTotals) {
        self.success = self.success.saturating_add(other.success);
        self.failure = self.failure.saturating_add(other.failure);
        self.total_duration_ms += other.total_duration_ms;
    }

    /// Completed attempts.
    pub fn count(&self) -> u64 {
        self.success.saturating_add(self.failure)
    }
}

/// Adds `d` to minute `minute` (minutes since the epoch).
pub async fn add(
    conn: &mut SqliteConnection,
    minute: i64,
    d: &MinuteTotals,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO request_minutes (minute, success, failure, total_duration_ms) VALUES (?, ?, ?, ?) \
         ON CONFLICT (minute) DO UPDATE SET success = {}, failure = {}, \
         total_duration_ms = total_duration_ms + excluded.total_duration_ms",
        sat_add_sql("success", "excluded.success"),
        sat_add_sql("failure", "excluded.failure"),
    ))
    .bind(minute)
    .bind(to_sql_count(d.success))
    .bind(to_sql_count(d.failure))
    .bind(d.total_duration_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Minutes from `first_minute` to `last_minute` inclusive that have totals.
pub async fn load_range(
    pool: &SqlitePool,
    first_minute: i64,
    last_minute: i64,
) -> Result<Vec<(i64, MinuteTotals)>, sqlx::Error> {
    let rows: Vec<(i64, i64, i64, f64)> = sqlx::query_as(
        "SELECT minute, CAST(success AS INTEGER), CAST(failure AS INTEGER), \
         CAST(total_duration_ms AS REAL) FROM request_minutes \
         WHERE minute BETWEEN ? AND ? ORDER BY minute",
    )
    .bind(first_minute)
    .bind(last_minute)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(m, s, f, d)| {
            let totals = MinuteTotals {
                success: from_sql_count(s, "request_minutes success"),
                failure: from_sql_count(f, "request_minutes failure"),
                total_duration_ms: d,
            };
            (m, totals)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_db;
    use crate::types::{minute_of, now_ms};

    /// Seed T012: 3 successes and 1 failure in the last 10 minutes come back
    /// in the right minutes; older minutes are not returned.
    #[tokio::test]
    async fn recent_minutes_come_back_in_their_buckets() {
        let (db, _dir) = test_db().await;
        let now = minute_of(now_ms());
        let ok = |ms| MinuteTotals {
            success: 1,
            failure: 0,
            total_duration_ms: ms,
        };
        let mut conn = db.write.acquire().await.unwrap();
        add(&mut conn, now - 2, &ok(100.0)).await.unwrap();
        add(&mut conn, now - 2, &ok(300.0)).await.unwrap();
        add(&mut conn, now - 5, &ok(50.0)).await.unwrap();
        add(
            &mut conn,
            now - 9,
            &MinuteTotals {
                success: 0,
                failure: 1,
                total_duration_ms: 7.0,
            },
        )
        .await
        .unwrap();
        add(&mut conn, now - 61, &ok(1.0)).await.unwrap();
        drop(conn);
        let got = load_range(&db.read, now - 59, now).await.unwrap();
        assert_eq!(
            got,
            vec![
                (
                    now - 9,
                    MinuteTotals {
                        success: 0,
                        failure: 1,
                        total_duration_ms: 7.0
                    }
                ),
                (now - 5, ok(50.0)),
                (
                    now - 2,
                    MinuteTotals {
                        success: 2,
                        failure: 0,
                        total_duration_ms: 400.0
                    }
                ),
            ]
        );
    }
}
