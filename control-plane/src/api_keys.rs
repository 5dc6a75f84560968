//! Client API keys: creation (secret returned once), listing, revocation,
//! with an in-memory copy of the active keys for the routing table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::db::api_keys::{self as db_keys, ApiKeyRow};
use crate::db::Db;
use crate::events::Events;
use crate::registry::{validate_name, RegistryError};
use crate::types::{now_ms, UnixMs};

/// Characters of the secret kept as its visible prefix.
const PREFIX_LEN: usize = 12;

/// Hex SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Shared handle to the API keys.
#[derive(Clone, Debug)]
pub struct ApiKeys {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The database.
    db: Db,
    /// Active (not revoked) keys, oldest first.
    active: RwLock<Vec<ApiKeyRow>>,
    /// A key was created once (revoked or not): proxies require keys.
    required: AtomicBool,
    /// Serialises changes so DB and cache apply in one order.
    changes: tokio::sync::Mutex<()>,
    /// Change notifications (keys travel in the routing table).
    events: Events,
}

impl ApiKeys {
    /// Loads the active keys.
    pub async fn load(db: Db, events: Events) -> Result<ApiKeys, sqlx::Error> {
        let active = db_keys::list_active(&db.read).await?;
        let required = db_keys::any(&db.read).await?;
        Ok(ApiKeys {
            inner: Arc::new(Inner {
                db,
                active: RwLock::new(active),
                required: AtomicBool::new(required),
                changes: tokio::sync::Mutex::new(()),
                events,
            }),
        })
    }

    /// Whether proxies must require a client key: once a key was created,
    /// they do for good, so revoking the last key never opens them.
    pub fn required(&self) -> bool {
        self.inner.required.load(Ordering::Relaxed)
    }

    /// Active keys, oldest first.
    pub fn list(&self) -> Vec<ApiKeyRow> {
        self.inner.active.read().clone()
    }

    /// Creates a key; returns its record and the secret (shown once).
    pub async fn create(&self, name: &str) -> Result<(ApiKeyRow, String), RegistryError> {
        let name = validate_name(name)?;
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let secret = format!("llmlb-{}", hex::encode(bytes));
        let row = ApiKeyRow {
            id: uuid::Uuid::new_v4().to_string(),
            name,
            prefix: secret[..PREFIX_LEN].to_string(),
            sha256: hash_secret(&secret),
            created_at: now_ms(),
            last_used_at: None,
        };
        let _guard = self.inner.changes.lock().await;
        db_keys::insert(&self.inner.db.write, &row).await?;
        self.inner.active.write().push(row.clone());
        self.inner.required.store(true, Ordering::Relaxed);
        self.inner.events.routing_changed();
        Ok((row, secret))
    }

    /// Revokes a key.
    pub async fn revoke(&self, id: uuid::Uuid) -> Result<(), RegistryError> {
        let _guard = self.inner.changes.lock().await;
        if !db_keys::revoke(&self.inner.db.write, &id.to_string(), now_ms()).await? {
            return Err(RegistryError::NotFound("api key", id));
        }
        self.inner.active.write().retain(|k| k.id != id.to_string());
        self.inner.events.routing_changed();
        Ok(())
    }

    /// Moves `last_used_at` forward in the cache (after the writer committed it).
    pub fn touched(&self, used: &[(String, UnixMs)]) {
        let mut active = self.inner.active.write();
        for (id, at) in used {
            if let Some(k) = active.iter_mut().find(|k| &k.id == id) {
                k.last_used_at = Some(k.last_used_at.unwrap_or(0).max(*at));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_db;

    #[tokio::test]
    async fn secrets_are_returned_once_and_stored_as_hashes() {
        let (db, _dir) = test_db().await;
        let keys = ApiKeys::load(db.clone(), Events::default()).await.unwrap();
        let (row, secret) = keys.create("ci").await.unwrap();
        assert!(secret.starts_with(&row.prefix));
        assert_eq!(row.sha256, hash_secret(&secret));
        let stored: Vec<(String,)> = sqlx::query_as("SELECT sha256 FROM api_keys")
            .fetch_all(&db.read)
            .await
            .unwrap();
        assert_eq!(stored, vec![(hash_secret(&secret),)]);
        let dump: Vec<(String, String, String)> =
            sqlx::query_as("SELECT id, name, prefix FROM api_keys")
                .fetch_all(&db.read)
                .await
                .unwrap();
        assert!(!format!("{dump:?}").contains(&secret));
        let id = uuid::Uuid::parse_str(&row.id).unwrap();
        assert!(keys.required());
        keys.revoke(id).await.unwrap();
        assert!(keys.list().is_empty());
        assert!(keys.required(), "revoking the last key opens nothing");
        assert!(matches!(
            keys.revoke(id).await,
            Err(RegistryError::NotFound(..))
        ));
        let reloaded = ApiKeys::load(db, Events::default()).await.unwrap();
        assert!(reloaded.list().is_empty());
        assert!(reloaded.required());
    }
}
