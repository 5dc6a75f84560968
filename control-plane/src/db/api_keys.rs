//! The `api_keys` table: client keys for the proxies, stored as SHA-256.

use sqlx::{SqliteConnection, SqlitePool};

use crate::types::UnixMs;

/// One key as stored (no secret).
#[derive(Clone, Debug, PartialEq)]
pub struct ApiKeyRow {
    /// UUID.
    pub id: String,
    /// Label.
    pub name: String,
    /// First characters of the secret.
    pub prefix: String,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
    /// Creation time.
    pub created_at: UnixMs,
    /// Last accepted use.
    pub last_used_at: Option<UnixMs>,
}

/// Inserts a key.
pub async fn insert(pool: &SqlitePool, k: &ApiKeyRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO api_keys (id, name, prefix, sha256, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&k.id)
    .bind(&k.name)
    .bind(&k.prefix)
    .bind(&k.sha256)
    .bind(k.created_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether any key was ever created (revoked keys included).
pub async fn any(pool: &SqlitePool) -> Result<bool, sqlx::Error> {
    let (any,): (bool,) = sqlx::query_as("SELECT EXISTS (SELECT 1 FROM api_keys)")
        .fetch_one(pool)
        .await?;
    Ok(any)
}

/// Keys that are not revoked, oldest first.
pub async fn list_active(pool: &SqlitePool) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
    let rows: Vec<(String, String, String, String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT id, name, prefix, sha256, created_at, last_used_at FROM api_keys \
         WHERE revoked_at IS NULL ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, name, prefix, sha256, created_at, last_used_at)| ApiKeyRow {
                id,
                name,
                prefix,
                sha256,
                created_at,
                last_used_at,
            },
        )
        .collect())
}

/// Revokes a key; false if no active key has this id.
pub async fn revoke(pool: &SqlitePool, id: &str, now: UnixMs) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(pool)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves `last_used_at` forward, inside the writer's transaction.
pub async fn touch(
    conn: &mut SqliteConnection,
    id: &str,
    used_at: UnixMs,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?",
    )
    .bind(used_at)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}
