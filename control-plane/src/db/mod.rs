//! SQLite persistence: one module per table, one writer connection, a
//! separate read pool.
//!
//! The write pool holds exactly one connection, so every write (registry
//! changes, health results, stats batches, pruning) is serialised by SQLite
//! itself without `SQLITE_BUSY` between our own writers.

pub mod api_keys;
pub mod daily_stats;
pub mod endpoints;
pub mod model_stats;
pub mod request_history;
pub mod request_minutes;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

/// The schema, embedded: `migrations/` at the repository root.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Tables whose absence boot tolerates (FR-006): their figures start at zero.
pub const AGGREGATE_TABLES: [&str; 3] = ["request_minutes", "model_stats", "endpoint_daily_stats"];

/// Errors of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The file cannot be opened as an SQLite database.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The database path.
        path: String,
        /// What SQLite said.
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("cannot migrate database {path}: {source}")]
    Migrate {
        /// The database path.
        path: String,
        /// What the migrator said.
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

/// Handles to the database: one writer connection and a read pool.
#[derive(Clone, Debug)]
pub struct Db {
    /// The single writer connection.
    pub write: SqlitePool,
    /// Readers (WAL lets them run beside the writer).
    pub read: SqlitePool,
}

impl Db {
    /// Opens (creating if missing) and migrates the database at `path`.
    ///
    /// Fails without touching the file when it is not an SQLite database.
    pub async fn open(path: &Path) -> Result<Db, DbError> {
        let shown = path.display().to_string();
        let open_err = |source| DbError::Open {
            path: shown.clone(),
            source,
        };
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(open_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(false);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await
            .map_err(open_err)?;
        // A file that is not SQLite passes `open` and fails on first read.
        sqlx::query("SELECT count(*) FROM sqlite_master")
            .execute(&write)
            .await
            .map_err(open_err)?;
        MIGRATOR
            .run(&write)
            .await
            .map_err(|source| DbError::Migrate {
                path: shown.clone(),
                source,
            })?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(open_err)?;
        Ok(Db { write, read })
    }

    /// Names of the aggregate tables that are missing.
    pub async fn missing_aggregate_tables(&self) -> Result<Vec<&'static str>, DbError> {
        let mut missing = Vec::new();
        for table in AGGREGATE_TABLES {
            let found: Option<(String,)> =
                sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?")
                    .bind(table)
                    .fetch_optional(&self.read)
                    .await?;
            if found.is_none() {
                missing.push(table);
            }
        }
        Ok(missing)
    }

    /// Recreates missing tables by running every migration again, in
    /// order: every statement in `migrations/` is idempotent, so a table
    /// that exists is never touched (and what a later migration dropped
    /// stays dropped).
    pub async fn recreate_missing_tables(&self) -> Result<(), DbError> {
        for migration in MIGRATOR.iter() {
            sqlx::raw_sql(&migration.sql).execute(&self.write).await?;
        }
        Ok(())
    }

    /// Closes both pools, checkpointing the WAL.
    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

/// An empty database in a temporary directory, for tests.
#[cfg(test)]
pub(crate) async fn test_db() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("test.db"))
        .await
        .expect("open db");
    (db, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn indexes(db: &Db) -> Vec<String> {
        sqlx::query_as::<_, (String,)>(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'request_history' \
             AND sql IS NOT NULL",
        )
        .fetch_all(&db.read)
        .await
        .unwrap()
        .into_iter()
        .map(|(n,)| n)
        .collect()
    }

    /// Migration 0002 drops the completed_at index, and repairing a dropped
    /// table (which re-runs every migration) does not bring it back.
    #[tokio::test]
    async fn history_has_no_secondary_index_after_migrations_and_repair() {
        let (db, _dir) = test_db().await;
        assert_eq!(indexes(&db).await, Vec::<String>::new());
        sqlx::query("DROP TABLE model_stats")
            .execute(&db.write)
            .await
            .unwrap();
        assert_eq!(
            db.missing_aggregate_tables().await.unwrap(),
            ["model_stats"]
        );
        db.recreate_missing_tables().await.unwrap();
        assert!(db.missing_aggregate_tables().await.unwrap().is_empty());
        assert_eq!(indexes(&db).await, Vec::<String>::new());
    }
}
