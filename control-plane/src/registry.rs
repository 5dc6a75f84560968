//! The endpoint registry: an in-memory cache over the `endpoints` table.
//!
//! Every change goes to the database first and then, under the same lock,
//! to the cache, so the two never disagree; the cache is rebuilt from the
//! database at boot. Request counters are written by the stats writer inside
//! its batch transaction and added to the cache right after the commit.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use uuid::Uuid;

use crate::db::endpoints::{self as db_endpoints, Counters, EndpointRow, ProbeUpdate};
use crate::db::Db;
use crate::events::Events;
use crate::types::{now_ms, Status, UnixMs};

/// Errors of registry operations; mapped to gRPC codes in `grpc::error`.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Bad input (INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// No such endpoint (NOT_FOUND).
    #[error("{0} {1} not found")]
    NotFound(&'static str, Uuid),
    /// Name taken (ALREADY_EXISTS).
    #[error("an endpoint named {0:?} already exists")]
    NameTaken(String),
    /// Database failure (INTERNAL).
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// What an operator asks to create.
#[derive(Clone, Debug, Default)]
pub struct NewEndpoint {
    /// Unique name.
    pub name: String,
    /// Absolute http(s) URL.
    pub base_url: String,
    /// Upstream key.
    pub api_key: Option<String>,
    /// Static models; empty = discover.
    pub models: Vec<String>,
    /// Path probed for liveness instead of `/v1/models`; `None` or empty: none.
    pub health_path: Option<String>,
}

/// What an operator asks to change; `None` keeps the value.
#[derive(Clone, Debug, Default)]
pub struct EndpointChanges {
    /// New name.
    pub name: Option<String>,
    /// New base URL.
    pub base_url: Option<String>,
    /// New upstream key; `Some("")` removes it.
    pub api_key: Option<String>,
    /// New static model list.
    pub models: Option<Vec<String>>,
    /// Go back to discovery.
    pub clear_models: bool,
    /// New health path; `Some("")` removes it.
    pub health_path: Option<String>,
}

/// Shared handle to the registry.
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The database (write pool for changes).
    db: Db,
    /// The cache: every endpoint.
    endpoints: RwLock<Table>,
    /// Serialises configuration changes so DB and cache apply in one order.
    changes: tokio::sync::Mutex<()>,
    /// Change notifications.
    events: Events,
}

/// The cached rows, their revisions and their order by name.
#[derive(Debug, Default)]
pub struct Table {
    /// Row and revision (moves on every change of the row but its request
    /// counters) by id.
    rows: HashMap<Uuid, (EndpointRow, u64)>,
    /// Ids ordered by name.
    by_name: Vec<Uuid>,
    /// Revisions handed out so far.
    revisions: u64,
}

impl Table {
    fn new(rows: Vec<EndpointRow>) -> Table {
        let mut table = Table::default();
        for row in rows {
            table.insert(row);
        }
        table
    }

    fn get(&self, id: &Uuid) -> Option<&EndpointRow> {
        self.rows.get(id).map(|(row, _)| row)
    }

    fn insert(&mut self, row: EndpointRow) {
        self.revisions += 1;
        let at = self.position(&row.name);
        self.by_name.insert(at, row.id);
        self.rows.insert(row.id, (row, self.revisions));
    }

    fn remove(&mut self, id: &Uuid) {
        if self.rows.remove(id).is_some() {
            self.by_name.retain(|x| x != id);
        }
    }

    /// Adds to a row's request counters (the revision stays).
    fn add_counters(&mut self, id: &Uuid, d: &Counters) {
        if let Some((row, _)) = self.rows.get_mut(id) {
            row.counters.add(d);
        }
    }

    /// Changes a row (a new revision; re-sorted if renamed).
    fn modify<T>(&mut self, id: &Uuid, f: impl FnOnce(&mut EndpointRow) -> T) -> Option<T> {
        let (row, revision) = self.rows.get_mut(id)?;
        let name = row.name.clone();
        let out = f(row);
        self.revisions += 1;
        *revision = self.revisions;
        if row.name != name {
            let row = row.clone();
            self.by_name.retain(|x| x != id);
            let at = self.position(&row.name);
            self.by_name.insert(at, row.id);
        }
        Some(out)
    }

    /// Where `name` goes in `by_name`.
    fn position(&self, name: &str) -> usize {
        self.by_name
            .partition_point(|id| self.get(id).is_some_and(|r| r.name.as_str() < name))
    }

    /// Every row, ordered by name, with its revision.
    pub fn ordered(&self) -> impl Iterator<Item = (&EndpointRow, u64)> {
        self.by_name
            .iter()
            .filter_map(|id| self.rows.get(id).map(|(row, rev)| (row, *rev)))
    }
}

// === validation ===

/// Checks and normalises a name.
pub fn validate_name(name: &str) -> Result<String, RegistryError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(RegistryError::Invalid("name must not be empty".into()));
    }
    if name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(RegistryError::Invalid(
            "name must be at most 128 printable characters".into(),
        ));
    }
    Ok(name.to_string())
}

/// Checks that `url` is an absolute http(s) URL with a host and returns it
/// without a trailing slash.
pub fn validate_base_url(url: &str) -> Result<String, RegistryError> {
    let bad = |why: &str| RegistryError::Invalid(format!("baseUrl {url:?} {why}"));
    let uri: http::Uri = url.trim().parse().map_err(|_| bad("is not a valid URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("must start with http:// or https://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(bad("has no host"));
    };
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(bad("must have a host and no user info"));
    }
    // `Uri` accepts any digits as a port (`port_u16` is then `None`).
    let after_host = authority
        .as_str()
        .rsplit_once(']')
        .map_or(authority.as_str(), |(_, rest)| rest);
    if let Some((_, port)) = after_host.rsplit_once(':') {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(bad("has a port outside 1-65535"));
        }
    }
    if uri.query().is_some() {
        return Err(bad("must not have a query"));
    }
    // The server root is stored: `http://h:8000/v1` and `http://h:8000/v1/`
    // (what OpenAI client settings hold) mean `http://h:8000`, whose
    // `/v1/models` is probed and whose `/v1/...` the proxies call.
    let root = url.trim().trim_end_matches('/');
    let root = root
        .strip_suffix("/v1")
        .unwrap_or(root)
        .trim_end_matches('/');
    Ok(root.to_string())
}

/// Checks a health path: `/` followed by at most 1,024 URL path
/// characters (a query is allowed); `Some("")` means "none" (`Ok(None)`).
pub fn validate_health_path(path: &str) -> Result<Option<String>, RegistryError> {
    let path = path.trim();
    if path.is_empty() {
        return Ok(None);
    }
    let bad = || {
        RegistryError::Invalid(format!(
            "healthPath {path:?} must be an absolute path such as /health (at most 1024 characters)"
        ))
    };
    if !path.starts_with('/') || path.starts_with("//") || path.len() > 1024 {
        return Err(bad());
    }
    match path.parse::<http::uri::PathAndQuery>() {
        Ok(_) => Ok(Some(path.to_string())),
        Err(_) => Err(bad()),
    }
}

/// Checks a static model list: non-empty names, no duplicates (order kept).
pub fn validate_models(models: &[String]) -> Result<Vec<String>, RegistryError> {
    let mut out: Vec<String> = Vec::with_capacity(models.len());
    for m in models {
        let m = m.trim();
        if m.is_empty() || m.len() > 256 {
            return Err(RegistryError::Invalid(
                "model names must be 1 to 256 characters".into(),
            ));
        }
        if !out.iter().any(|o| o == m) {
            out.push(m.to_string());
        }
    }
    Ok(out)
}

fn map_unique(e: sqlx::Error, name: &str) -> RegistryError {
    match e.as_database_error() {
        Some(d) if d.is_unique_violation() => RegistryError::NameTaken(name.to_string()),
        _ => RegistryError::Db(e),
    }
}

// === impl Registry ===

impl Registry {
    /// Loads the cache from the database.
    pub async fn load(db: Db, events: Events) -> Result<Registry, sqlx::Error> {
        let rows = db_endpoints::load_all(&db.read).await?;
        let endpoints = Table::new(rows);
        Ok(Registry {
            inner: Arc::new(Inner {
                db,
                endpoints: RwLock::new(endpoints),
                changes: tokio::sync::Mutex::new(()),
                events,
            }),
        })
    }

    /// Every endpoint, ordered by name.
    pub fn snapshot(&self) -> Vec<EndpointRow> {
        let table = self.inner.endpoints.read();
        table.ordered().map(|(row, _)| row.clone()).collect()
    }

    /// The rows, read-locked while the guard lives (changes wait): for
    /// readers that walk them more than once. [`Table::ordered`] gives each
    /// row with its revision, a number that moves whenever anything in the
    /// row but its request counters changes.
    pub fn read(&self) -> parking_lot::RwLockReadGuard<'_, Table> {
        self.inner.endpoints.read()
    }

    /// One endpoint.
    pub fn get(&self, id: Uuid) -> Result<EndpointRow, RegistryError> {
        self.inner
            .endpoints
            .read()
            .get(&id)
            .cloned()
            .ok_or(RegistryError::NotFound("endpoint", id))
    }

    /// Whether an endpoint exists.
    pub fn contains(&self, id: &Uuid) -> bool {
        self.inner.endpoints.read().rows.contains_key(id)
    }

    /// Registers an endpoint (PENDING).
    pub async fn create(&self, new: NewEndpoint) -> Result<EndpointRow, RegistryError> {
        let name = validate_name(&new.name)?;
        let base_url = validate_base_url(&new.base_url)?;
        let models = validate_models(&new.models)?;
        let health_path = new
            .health_path
            .as_deref()
            .map(validate_health_path)
            .transpose()?
            .flatten();
        let now = now_ms();
        let row = EndpointRow {
            id: Uuid::new_v4(),
            name,
            base_url,
            health_path,
            api_key: new.api_key.filter(|k| !k.is_empty()),
            static_models: (!models.is_empty()).then_some(models),
            discovered_models: Vec::new(),
            status: Status::Pending,
            latency_ms: None,
            consecutive_failures: 0,
            last_checked_at: None,
            last_error: None,
            counters: Counters::default(),
            model_objects: Default::default(),
            created_at: now,
            updated_at: now,
        };
        let _guard = self.inner.changes.lock().await;
        db_endpoints::insert(&self.inner.db.write, &row)
            .await
            .map_err(|e| map_unique(e, &row.name))?;
        self.inner.endpoints.write().insert(row.clone());
        self.inner.events.routing_changed();
        Ok(row)
    }

    /// Changes the given fields. A new URL, key or model list resets the
    /// endpoint to PENDING (it is probed again; latency is kept).
    pub async fn update(
        &self,
        id: Uuid,
        ch: EndpointChanges,
    ) -> Result<EndpointRow, RegistryError> {
        let name = ch.name.as_deref().map(validate_name).transpose()?;
        let base_url = ch.base_url.as_deref().map(validate_base_url).transpose()?;
        let models = ch.models.as_deref().map(validate_models).transpose()?;
        let health_path = ch
            .health_path
            .as_deref()
            .map(validate_health_path)
            .transpose()?;
        let _guard = self.inner.changes.lock().await;
        let mut row = self.get(id)?;
        let mut reprobe = false;
        if let Some(name) = name {
            row.name = name;
        }
        if let Some(url) = base_url {
            reprobe |= url != row.base_url;
            row.base_url = url;
        }
        if let Some(key) = ch.api_key {
            let key = (!key.is_empty()).then_some(key);
            reprobe |= key != row.api_key;
            row.api_key = key;
        }
        if let Some(path) = health_path {
            reprobe |= path != row.health_path;
            row.health_path = path;
        }
        if ch.clear_models {
            reprobe |= row.static_models.is_some();
            row.static_models = None;
        }
        if let Some(models) = models.filter(|m| !m.is_empty()) {
            reprobe |= row.static_models.as_ref() != Some(&models);
            row.static_models = Some(models);
        }
        if reprobe {
            row.status = Status::Pending;
            row.consecutive_failures = 0;
        }
        // The configuration generation: strictly increasing, so a probe
        // result of the previous configuration is always told apart.
        row.updated_at = now_ms().max(row.updated_at + 1);
        let found = db_endpoints::update_config(&self.inner.db.write, &row)
            .await
            .map_err(|e| map_unique(e, &row.name))?;
        if !found {
            return Err(RegistryError::NotFound("endpoint", id));
        }
        let mut cache = self.inner.endpoints.write();
        let cached = cache.modify(&id, |cached| {
            // Counters and probe results may have moved meanwhile: keep them.
            cached.name = row.name.clone();
            cached.base_url = row.base_url.clone();
            cached.health_path = row.health_path.clone();
            cached.api_key = row.api_key.clone();
            cached.static_models = row.static_models.clone();
            cached.status = row.status;
            cached.consecutive_failures = row.consecutive_failures;
            cached.updated_at = row.updated_at;
            cached.clone()
        });
        drop(cache);
        if let Some(cached) = cached {
            row = cached;
        }
        self.inner.events.routing_changed();
        Ok(row)
    }

    /// Removes an endpoint.
    pub async fn delete(&self, id: Uuid) -> Result<(), RegistryError> {
        let _guard = self.inner.changes.lock().await;
        if !db_endpoints::delete(&self.inner.db.write, id).await? {
            return Err(RegistryError::NotFound("endpoint", id));
        }
        self.inner.endpoints.write().remove(&id);
        self.inner.events.routing_changed();
        Ok(())
    }

    /// Applies a health probe result to the database and the cache. A failed
    /// probe keeps the last latency (seed US2). `generation` is the
    /// `updated_at` of the configuration the probe was made for: a result
    /// for an older configuration (a probe of the old URL that lands after
    /// `UpdateEndpoint`) is dropped. Returns the new row, or `None` if the
    /// endpoint was deleted or changed meanwhile.
    pub async fn record_probe(
        &self,
        id: Uuid,
        generation: UnixMs,
        result: crate::health::ProbeResult,
    ) -> Result<Option<EndpointRow>, RegistryError> {
        let _guard = self.inner.changes.lock().await;
        let Ok(current) = self.get(id) else {
            return Ok(None);
        };
        if current.updated_at != generation {
            tracing::debug!(endpoint_id = %id, "dropping a probe result of an older configuration");
            return Ok(None);
        }
        let mut objects = None;
        let update = match result {
            Ok(ok) => {
                objects = Some(ok.objects);
                ProbeUpdate {
                    status: Status::Online,
                    latency_ms: Some(ok.latency_ms),
                    consecutive_failures: 0,
                    checked_at: now_ms(),
                    last_error: None,
                    discovered_models: Some(ok.models),
                }
            }
            Err(error) => {
                let failures = current.consecutive_failures.saturating_add(1);
                ProbeUpdate {
                    status: Status::after_probe(false, failures),
                    latency_ms: None,
                    consecutive_failures: failures,
                    checked_at: now_ms(),
                    last_error: Some(error),
                    discovered_models: None,
                }
            }
        };
        if !db_endpoints::record_probe(&self.inner.db.write, id, &update).await? {
            return Ok(None);
        }
        let Some(row) = self.apply_probe_to_cache(id, &update, objects) else {
            return Ok(None);
        };
        if row.status != current.status
            || row.discovered_models != current.discovered_models
            || row.model_objects != current.model_objects
        {
            self.inner.events.routing_changed();
        } else {
            self.inner.events.dashboard_changed();
        }
        Ok(Some(row))
    }

    /// Cache half of `record_probe` (seed T004: `None` latency keeps the value).
    fn apply_probe_to_cache(
        &self,
        id: Uuid,
        u: &ProbeUpdate,
        objects: Option<Vec<(String, String)>>,
    ) -> Option<EndpointRow> {
        self.inner.endpoints.write().modify(&id, |row| {
            if let Some(objects) = objects {
                row.model_objects = objects.into();
            }
            row.status = u.status;
            if let Some(latency) = u.latency_ms {
                row.latency_ms = Some(latency);
            }
            row.consecutive_failures = u.consecutive_failures;
            row.last_checked_at = Some(u.checked_at);
            row.last_error = u.last_error.clone();
            if let Some(models) = &u.discovered_models {
                row.discovered_models = models.clone();
            }
            row.clone()
        })
    }

    /// Adds committed counter deltas to the cache (called by the stats
    /// writer right after the commit that wrote them to the database).
    pub fn apply_counters(&self, deltas: &HashMap<Uuid, Counters>) {
        let mut cache = self.inner.endpoints.write();
        for (id, d) in deltas {
            cache.add_counters(id, d);
        }
    }
}

impl EndpointRow {
    /// Models the endpoint serves: the static list, else the discovered one.
    pub fn models(&self) -> &[String] {
        self.static_models
            .as_deref()
            .unwrap_or(&self.discovered_models)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{endpoints, test_db};

    async fn registry() -> (Registry, tempfile::TempDir) {
        let (db, dir) = test_db().await;
        (Registry::load(db, Events::default()).await.unwrap(), dir)
    }

    fn new(name: &str) -> NewEndpoint {
        NewEndpoint {
            name: name.into(),
            base_url: "http://127.0.0.1:9/".into(),
            ..Default::default()
        }
    }

    /// Seed T002/T004 and issue 2: register → 120 → failure → still 120 →
    /// success 95 → 95, in the cache and in the database.
    #[tokio::test]
    async fn latency_survives_failed_probes_in_cache_and_database() {
        let (reg, _dir) = registry().await;
        let e = reg.create(new("a")).await.unwrap();
        assert_eq!(e.status, Status::Pending);
        assert_eq!(e.base_url, "http://127.0.0.1:9");
        let steps: [(crate::health::ProbeResult, Status, f64); 4] = [
            (
                Ok(crate::health::ProbeOk::listed(120.0, vec!["m".into()])),
                Status::Online,
                120.0,
            ),
            (Err("refused".into()), Status::Error, 120.0),
            (Err("refused".into()), Status::Offline, 120.0),
            (
                Ok(crate::health::ProbeOk::listed(95.0, vec!["m".into()])),
                Status::Online,
                95.0,
            ),
        ];
        for (result, status, latency) in steps {
            let row = reg
                .record_probe(e.id, e.updated_at, result)
                .await
                .unwrap()
                .unwrap();
            assert_eq!((row.status, row.latency_ms), (status, Some(latency)));
            let cached = reg.get(e.id).unwrap();
            let stored = endpoints::load_all(&reg.inner.db.read)
                .await
                .unwrap()
                .remove(0);
            assert_eq!((cached.status, cached.latency_ms), (status, Some(latency)));
            assert_eq!((stored.status, stored.latency_ms), (status, Some(latency)));
            assert_eq!(cached.models(), ["m".to_string()]);
        }
    }

    /// Seed T005: counters move in the cache.
    #[tokio::test]
    async fn counters_increment_in_the_cache() {
        let (reg, _dir) = registry().await;
        let e = reg.create(new("a")).await.unwrap();
        let ok = Counters {
            total_requests: 1,
            successful_requests: 1,
            ..Default::default()
        };
        let failed = Counters {
            total_requests: 1,
            failed_requests: 1,
            ..Default::default()
        };
        reg.apply_counters(&HashMap::from([(e.id, ok)]));
        let c = reg.get(e.id).unwrap().counters;
        assert_eq!((c.total_requests, c.successful_requests), (1, 1));
        reg.apply_counters(&HashMap::from([(e.id, failed)]));
        let c = reg.get(e.id).unwrap().counters;
        assert_eq!(
            (c.total_requests, c.successful_requests, c.failed_requests),
            (2, 1, 1)
        );
    }

    #[test]
    fn base_urls_need_a_scheme_a_host_and_a_real_port() {
        for bad in [
            "ftp://h",
            "h:80",
            "http://",
            "http://u:p@h",
            "http://h/?q",
            "http://h:0",
            "http://h:65536",
            "http://h:99999",
        ] {
            assert!(validate_base_url(bad).is_err(), "{bad}");
        }
        assert_eq!(
            validate_base_url(" https://h:65535/v/ ").unwrap(),
            "https://h:65535/v"
        );
        assert!(validate_base_url("http://[::1]").is_ok());
        assert!(validate_base_url("http://[::1]:8080").is_ok());
        // With or without a trailing /v1 (and /): the server root is stored.
        for same in [
            "http://h:8000",
            "http://h:8000/",
            "http://h:8000/v1",
            "http://h:8000/v1/",
        ] {
            assert_eq!(validate_base_url(same).unwrap(), "http://h:8000", "{same}");
        }
        assert_eq!(
            validate_base_url("https://h/openai/v1/").unwrap(),
            "https://h/openai"
        );
        assert_eq!(validate_health_path("").unwrap(), None);
        assert_eq!(
            validate_health_path("/health").unwrap().as_deref(),
            Some("/health")
        );
        for bad in ["health", "//h/x", "/a b"] {
            assert!(validate_health_path(bad).is_err(), "{bad}");
        }
        assert!(validate_base_url("http://[::1]:0").is_err());
    }

    #[tokio::test]
    async fn validation_rejects_bad_input_and_keeps_data() {
        let (reg, _dir) = registry().await;
        let e = reg.create(new("a")).await.unwrap();
        for url in [
            "",
            "ftp://x",
            "localhost:8080",
            "http://",
            "/v1",
            "http://u:p@h:1",
            "not a url",
        ] {
            let err = reg
                .create(NewEndpoint {
                    name: "b".into(),
                    base_url: url.into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert!(matches!(err, RegistryError::Invalid(_)), "{url}: {err}");
        }
        assert!(matches!(
            reg.create(new("  ")).await,
            Err(RegistryError::Invalid(_))
        ));
        assert!(matches!(
            reg.create(new("a")).await,
            Err(RegistryError::NameTaken(_))
        ));
        let missing = Uuid::new_v4();
        assert!(matches!(
            reg.delete(missing).await,
            Err(RegistryError::NotFound(..))
        ));
        let b = reg.create(new("b")).await.unwrap();
        let rename = EndpointChanges {
            name: Some("a".into()),
            ..Default::default()
        };
        assert!(matches!(
            reg.update(b.id, rename).await,
            Err(RegistryError::NameTaken(_))
        ));
        assert_eq!(reg.get(b.id).unwrap().name, "b");
        assert_eq!(reg.snapshot().len(), 2);
        assert_eq!(reg.get(e.id).unwrap().name, "a");
    }

    /// A probe made for the old URL that lands after `UpdateEndpoint` is
    /// dropped: the endpoint stays PENDING, without the old latency and
    /// models; a probe of the new configuration applies.
    #[tokio::test]
    async fn a_probe_of_an_older_configuration_is_dropped() {
        let (reg, _dir) = registry().await;
        let e = reg.create(new("a")).await.unwrap();
        let updated = reg
            .update(
                e.id,
                EndpointChanges {
                    base_url: Some("http://127.0.0.1:10".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(updated.updated_at > e.updated_at);
        let stale = reg
            .record_probe(
                e.id,
                e.updated_at,
                Ok(crate::health::ProbeOk::listed(1.0, vec!["old".into()])),
            )
            .await
            .unwrap();
        assert_eq!(stale, None);
        let now = reg.get(e.id).unwrap();
        assert_eq!((now.status, now.latency_ms), (Status::Pending, None));
        assert!(now.discovered_models.is_empty());
        let fresh = reg
            .record_probe(
                e.id,
                updated.updated_at,
                Ok(crate::health::ProbeOk::listed(2.0, vec!["new".into()])),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (fresh.status, fresh.latency_ms),
            (Status::Online, Some(2.0))
        );
    }

    #[tokio::test]
    async fn the_cache_is_rebuilt_from_the_database() {
        let (db, _dir) = test_db().await;
        let reg = Registry::load(db.clone(), Events::default()).await.unwrap();
        let e = reg
            .create(NewEndpoint {
                models: vec!["x".into(), "x".into()],
                api_key: Some("k".into()),
                ..new("a")
            })
            .await
            .unwrap();
        reg.record_probe(
            e.id,
            e.updated_at,
            Ok(crate::health::ProbeOk::listed(7.5, vec![])),
        )
        .await
        .unwrap();
        let again = Registry::load(db, Events::default()).await.unwrap();
        assert_eq!(again.snapshot(), reg.snapshot());
        assert_eq!(again.get(e.id).unwrap().models(), ["x".to_string()]);
    }
}
