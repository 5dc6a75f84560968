//! Boot-time restore of every dashboard figure (FR-006).
//!
//! Runs after the registry loaded (counters, tokens, latency and status come
//! with it) and before the health checker, the proxy-facing services and the
//! dashboards start. Each step that fails logs a warning and leaves its
//! figure at zero/unknown; none deletes or rewrites data.

use std::time::Instant;

use crate::db::{daily_stats, model_stats, request_minutes, Db};
use crate::load::{LoadManager, WINDOW_MINUTES};
use crate::types::{minute_of, utc_date, UnixMs};

/// What the restore found, for the startup log line.
#[derive(Debug, Default, PartialEq)]
pub struct RestoreReport {
    /// Minutes of the timeline with requests.
    pub minutes: usize,
    /// Keys with exact TPS state.
    pub exact_tps: usize,
    /// Keys whose TPS came from today's totals.
    pub daily_tps: usize,
    /// Steps that failed (warned).
    pub failed_steps: Vec<&'static str>,
    /// How long it took.
    pub took_ms: f64,
}

/// Restores the LoadManager from the database as of `now`.
pub async fn restore(db: &Db, load: &LoadManager, now: UnixMs) -> RestoreReport {
    let started = Instant::now();
    let mut report = RestoreReport::default();
    let now_minute = minute_of(now);

    match request_minutes::load_range(&db.read, now_minute - WINDOW_MINUTES + 1, now_minute).await {
        Ok(rows) => {
            report.minutes = rows.len();
            load.seed_history(&rows, now_minute);
        }
        Err(error) => {
            tracing::warn!(%error, "restoring the request timeline failed; it starts empty");
            report.failed_steps.push("timeline");
        }
    }
    match model_stats::load_all(&db.read).await {
        Ok(rows) => {
            report.exact_tps = rows.iter().filter(|(_, s)| s.tps_ema.is_some()).count();
            load.seed_models(rows);
        }
        Err(error) => {
            tracing::warn!(%error, "restoring exact TPS state failed; falling back to today's totals");
            report.failed_steps.push("tps");
        }
    }
    match daily_stats::for_date(&db.read, &utc_date(now)).await {
        Ok(rows) => report.daily_tps = load.seed_tps_from_daily(&rows),
        Err(error) => {
            tracing::warn!(%error, "restoring TPS from today's totals failed; TPS starts unknown");
            report.failed_steps.push("daily tps");
        }
    }
    report.took_ms = started.elapsed().as_secs_f64() * 1000.0;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::request_minutes::MinuteTotals;
    use crate::db::test_db;
    use crate::events::Events;
    use crate::types::now_ms;

    #[tokio::test]
    async fn only_the_last_hour_is_restored() {
        let (db, _dir) = test_db().await;
        let now = now_ms();
        let m = minute_of(now);
        let mut conn = db.write.acquire().await.unwrap();
        let t = MinuteTotals {
            success: 2,
            failure: 1,
            total_duration_ms: 30.0,
        };
        request_minutes::add(&mut conn, m - 60, &t).await.unwrap();
        request_minutes::add(&mut conn, m - 120, &t).await.unwrap();
        drop(conn);
        let load = LoadManager::new(Events::default());
        let report = restore(&db, &load, now).await;
        assert_eq!((report.minutes, report.failed_steps.len()), (0, 0));
        assert!(load.history(m).iter().all(|(_, x)| x.count() == 0));
        assert_eq!(load.average_response_time(m), None);
    }

    #[tokio::test]
    async fn a_dropped_aggregate_table_only_costs_its_figure() {
        let (db, _dir) = test_db().await;
        let now = now_ms();
        let m = minute_of(now);
        let mut conn = db.write.acquire().await.unwrap();
        request_minutes::add(
            &mut conn,
            m,
            &MinuteTotals {
                success: 1,
                failure: 0,
                total_duration_ms: 5.0,
            },
        )
        .await
        .unwrap();
        sqlx::query("DROP TABLE model_stats")
            .execute(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        let load = LoadManager::new(Events::default());
        let report = restore(&db, &load, now).await;
        assert_eq!(report.failed_steps, vec!["tps"]);
        assert_eq!(report.minutes, 1);
        assert_eq!(load.history(m)[59].1.success, 1);
        assert_eq!(
            db.missing_aggregate_tables().await.unwrap(),
            vec!["model_stats"]
        );
        db.recreate_missing_tables().await.unwrap();
        assert!(db.missing_aggregate_tables().await.unwrap().is_empty());
        // The surviving table kept its data.
        assert_eq!(
            request_minutes::load_range(&db.read, m, m)
                .await
                .unwrap()
                .len(),
            1
        );
    }
}
