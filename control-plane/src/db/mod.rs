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
use std::sync::Arc;
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
    /// Another process (a second control plane) holds the file.
    #[error(
        "database {path} is in use by another control plane (it holds the lock on the file); \
         one control plane per SQLite file"
    )]
    Locked {
        /// The database path.
        path: String,
    },
    /// The lock on the file cannot be taken for another reason.
    #[error("cannot lock database {path}: {source}")]
    Lock {
        /// The database path.
        path: String,
        /// What the system said.
        source: std::io::Error,
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
    /// The database file, held with an exclusive `flock` for as long as the
    /// control plane runs (released by the kernel when the process ends,
    /// however it ends).
    _lock: Arc<std::fs::File>,
}

impl Db {
    /// Opens (creating if missing) and migrates the database at `path`.
    ///
    /// Fails without touching the file when it is not an SQLite database.
    pub async fn open(path: &Path) -> Result<Db, DbError> {
        let shown = path.display().to_string();
        let lock = lock_file(path)?;
        let open_err = |source| DbError::Open {
            path: shown.clone(),
            source,
        };
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(open_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: every commit is fsynced before it returns, so a batch the
            // writer acknowledged survives a power cut (NORMAL fsyncs only at
            // checkpoints: the last commits before a cut could vanish after
            // the proxies dropped them). What it cost is in docs/benchmarks.md.
            .synchronous(SqliteSynchronous::Full)
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
        Ok(Db {
            write,
            read,
            _lock: Arc::new(lock),
        })
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
    /// stays dropped) — except `ADD COLUMN`, which SQLite cannot make
    /// idempotent: its "duplicate column" error means it is done already.
    pub async fn recreate_missing_tables(&self) -> Result<(), DbError> {
        for migration in MIGRATOR.iter() {
            match sqlx::raw_sql(&migration.sql).execute(&self.write).await {
                Ok(_) => {}
                Err(sqlx::Error::Database(e)) if e.message().contains("duplicate column name") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Closes both pools, checkpointing the WAL.
    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

/// Takes an exclusive, non-blocking `flock` on the database file itself
/// (created empty if missing, which SQLite reads as a new database), so a
/// second control plane on the same file stops before it migrates, restores
/// or probes anything. `flock` locks are separate from the POSIX record
/// locks SQLite uses, so SQLite's own locking is unaffected, and no sidecar
/// file is left behind.
fn lock_file(path: &Path) -> Result<std::fs::File, DbError> {
    let shown = || path.display().to_string();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .or_else(|_| std::fs::File::open(path))
        .map_err(|source| DbError::Lock {
            path: shown(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DbError::Locked { path: shown() }),
        Err(std::fs::TryLockError::Error(source)) => Err(DbError::Lock {
            path: shown(),
            source,
        }),
    }
}

/// `col + add` in SQL, saturating at `i64::MAX` instead of overflowing
/// (SQLite turns an overflowing integer sum into a REAL, which a later read
/// as INTEGER refuses). `add` must not be negative.
pub(crate) fn sat_add_sql(col: &str, add: &str) -> String {
    format!("CASE WHEN {col} > 9223372036854775807 - {add} THEN 9223372036854775807 ELSE {col} + {add} END")
}

/// A count or sum to bind: `u64` values past `i64::MAX` are stored as
/// `i64::MAX` (a plain `as i64` would store them negative).
pub(crate) fn to_sql_count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored count or sum read back (selected as `CAST(col AS INTEGER)`, so a
/// REAL left by an overflow reads as `i64::MAX` instead of failing to
/// decode). A negative value reads as 0 and a saturated one as it is, each
/// with a warning: a figure degrades, boot never stops over it (FR-006).
pub(crate) fn from_sql_count(v: i64, what: &'static str) -> u64 {
    if v < 0 {
        tracing::warn!(
            column = what,
            value = v,
            "a stored count is negative; reading it as 0"
        );
        0
    } else {
        if v == i64::MAX {
            tracing::warn!(column = what, "a stored count is saturated (2^63 - 1)");
        }
        v as u64
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

    /// Every acknowledged commit is durable: the writer connection runs
    /// `synchronous=FULL` (2) in WAL mode.
    #[tokio::test]
    async fn the_writer_fsyncs_every_commit() {
        let (db, _dir) = test_db().await;
        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(&db.write)
            .await
            .unwrap();
        let (sync,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(&db.write)
            .await
            .unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2));
    }

    /// One control plane per file: a second open fails naming the file,
    /// and succeeds once the first is gone.
    #[tokio::test]
    async fn a_second_open_of_the_same_file_is_refused_naming_it() {
        let (db, dir) = test_db().await;
        let path = dir.path().join("test.db");
        let err = Db::open(&path).await.unwrap_err();
        assert!(matches!(err, DbError::Locked { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        db.close().await;
        drop(db);
        Db::open(&path).await.expect("open after the first closed");
    }
}
