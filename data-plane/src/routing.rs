//! The routing table pushed by the control plane, and the task that watches
//! it.
//!
//! `RoutingService/WatchRouting` sends a full table on connect and again on
//! every change. Tables are swapped in atomically; within one connection a
//! table older than the one in use is ignored, but the first table of a new
//! connection is always taken (a restarted control plane may start its
//! versions again). While the control plane is unreachable the last table
//! stays in use; the watcher reconnects with jittered exponential backoff.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use llmlb_proto::v1::routing_service_client::RoutingServiceClient;
use llmlb_proto::v1::{EndpointStatus, RouteEndpoint, RoutingTable, WatchRoutingRequest};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::balance::Load;
use crate::control::ControlPlane;
use crate::loads::Loads;
use crate::metrics::Metrics;

/// One endpoint as the proxy uses it.
#[derive(Debug)]
pub struct Endpoint {
    /// Endpoint UUID.
    pub id: String,
    /// Endpoint name, for logs.
    pub name: String,
    /// Base URL without a trailing slash; the request path is appended.
    pub base_url: String,
    /// The base URL parsed, when it has no path and no query (the usual
    /// case): the upstream URI is then this origin and the client's path
    /// and query, without formatting and parsing a URI per request.
    pub origin: Option<http::Uri>,
    /// `Bearer <api key>` to send upstream, if the endpoint has a key.
    pub authorization: Option<HeaderValue>,
    /// ONLINE and with a usable URL: receives traffic.
    pub routable: bool,
    /// Models served.
    pub models: Vec<String>,
    /// Model id → its full object (JSON text) from the endpoint's own
    /// `/v1/models`, as the control plane last saw it.
    pub model_objects: HashMap<String, String>,
    /// Shared in-flight count and latency estimate.
    pub load: Arc<Load>,
}

/// Why a model cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No endpoint of the table, whatever its status, serves the model.
    UnknownModel,
    /// Endpoints serve it, but none is ONLINE.
    NoOnlineEndpoint,
}

/// An immutable routing table.
#[derive(Debug)]
pub struct Table {
    /// Version given by the control plane.
    pub version: u64,
    /// When it arrived.
    pub received: Instant,
    /// Every endpoint, whatever its status.
    endpoints: Vec<Arc<Endpoint>>,
    /// Model → indexes in `endpoints` of every endpoint serving it.
    by_model: HashMap<String, Vec<usize>>,
    /// Hex SHA-256 of a client API key → key id.
    api_keys: HashMap<String, String>,
    /// Clients must present a valid key (a key exists or existed).
    require_api_key: bool,
}

impl Table {
    /// Builds a table from the control plane's message; endpoint loads come
    /// from (and are kept in) `loads`.
    pub fn new(proto: RoutingTable, loads: &Loads) -> Self {
        let endpoints: Vec<Arc<Endpoint>> = proto
            .endpoints
            .into_iter()
            .map(|e| Arc::new(endpoint(e, loads)))
            .collect();
        let mut by_model: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            for model in &endpoint.models {
                let entry = by_model.entry(model.clone()).or_default();
                if !entry.contains(&i) {
                    entry.push(i);
                }
            }
        }
        let require_api_key = proto.require_api_key || !proto.api_keys.is_empty();
        let api_keys = proto
            .api_keys
            .into_iter()
            .map(|k| (k.sha256.to_ascii_lowercase(), k.id))
            .collect();
        let ids: HashSet<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
        loads.retain(&ids);
        Self {
            version: proto.version,
            received: Instant::now(),
            endpoints,
            by_model,
            api_keys,
            require_api_key,
        }
    }

    /// The routable endpoints serving `model`.
    pub fn route(&self, model: &str) -> Result<Vec<Arc<Endpoint>>, RouteError> {
        let indexes = self.by_model.get(model).ok_or(RouteError::UnknownModel)?;
        let routable: Vec<Arc<Endpoint>> = indexes
            .iter()
            .map(|&i| &self.endpoints[i])
            .filter(|e| e.routable)
            .cloned()
            .collect();
        if routable.is_empty() {
            return Err(RouteError::NoOnlineEndpoint);
        }
        Ok(routable)
    }

    /// Whether clients must present an API key: some key exists, or one
    /// existed and was revoked (the control plane says so).
    pub fn requires_api_key(&self) -> bool {
        self.require_api_key
    }

    /// The id of the API key whose secret is `secret`, if valid.
    pub fn api_key_id(&self, secret: &str) -> Option<&str> {
        let digest = hex::encode(Sha256::digest(secret.as_bytes()));
        self.api_keys.get(&digest).map(String::as_str)
    }

    /// The full object of `model` (JSON text) as the first routable endpoint
    /// (in table order) that has one reported it, if any did.
    pub fn model_object(&self, model: &str) -> Option<&str> {
        self.by_model.get(model)?.iter().find_map(|&i| {
            let e = &self.endpoints[i];
            e.routable
                .then(|| e.model_objects.get(model).map(String::as_str))
                .flatten()
        })
    }

    /// Models of the routable endpoints, sorted, without duplicates.
    pub fn online_models(&self) -> BTreeSet<&str> {
        self.endpoints
            .iter()
            .filter(|e| e.routable)
            .flat_map(|e| e.models.iter().map(String::as_str))
            .collect()
    }
}

fn endpoint(proto: RouteEndpoint, loads: &Loads) -> Endpoint {
    let base_url = proto.base_url.trim_end_matches('/').to_owned();
    let online = proto.status == EndpointStatus::Online as i32;
    let parsed = base_url
        .parse::<http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
    let url_ok = parsed.is_some();
    let origin = parsed.filter(|u| matches!(u.path(), "" | "/") && u.query().is_none());
    if online && !url_ok {
        warn!(endpoint_id = %proto.id, base_url = %proto.base_url, "endpoint URL unusable (not an http:// or https:// URL): not routed");
    }
    let authorization = proto.api_key.as_deref().and_then(|key| {
        let mut value = HeaderValue::from_str(&format!("Bearer {key}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    });
    Endpoint {
        load: loads.get(&proto.id),
        id: proto.id,
        name: proto.name,
        base_url,
        origin,
        authorization,
        routable: online && url_ok,
        models: proto.models,
        model_objects: proto.model_objects,
    }
}

/// Handle to the routing table in use; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    /// The table in use; `None` until the first one arrives.
    current: Arc<ArcSwapOption<Table>>,
}

impl Routes {
    /// The table in use, if any arrived.
    pub fn current(&self) -> Option<Arc<Table>> {
        self.current.load_full()
    }

    /// Puts `table` in use.
    pub fn install(&self, table: Table) {
        self.current.store(Some(Arc::new(table)));
    }
}

/// Watches `WatchRouting` until `cancel` fires, reconnecting as needed.
pub async fn watch(
    control: ControlPlane,
    proxy_id: String,
    routes: Routes,
    loads: Loads,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        let session = Session {
            control: &control,
            proxy_id: &proxy_id,
            routes: &routes,
            loads: &loads,
            metrics: &metrics,
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            result = session.run(&mut backoff) => match result {
                Ok(()) => warn!("routing stream ended by the control plane; reconnecting"),
                Err(status) if backoff.should_warn() => warn!(code = ?status.code(), error = %crate::control::status_text(&status), "routing stream failed; reconnecting (keeping the last table)"),
                Err(status) => debug!(code = ?status.code(), error = %crate::control::status_text(&status), "routing stream failed again"),
            },
        }
        let delay = backoff.next_delay();
        debug!(?delay, "waiting before reconnecting to the routing stream");
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection of the routing watcher.
struct Session<'a> {
    control: &'a ControlPlane,
    proxy_id: &'a str,
    routes: &'a Routes,
    loads: &'a Loads,
    metrics: &'a Metrics,
}

impl Session<'_> {
    /// Reads tables until the stream ends (`Ok`) or fails.
    async fn run(self, backoff: &mut Backoff) -> Result<(), tonic::Status> {
        let mut client = RoutingServiceClient::new(self.control.channel());
        let request = self.control.request(WatchRoutingRequest {
            proxy_id: self.proxy_id.to_owned(),
        });
        let mut stream = client.watch_routing(request).await?.into_inner();
        let mut last_version: Option<u64> = None;
        while let Some(proto) = stream.message().await? {
            backoff.reset();
            if !accept_version(last_version, proto.version) {
                warn!(version = proto.version, current = ?last_version, "ignoring an older routing table");
                continue;
            }
            let first = last_version.is_none();
            last_version = Some(proto.version);
            let table = Table::new(proto, self.loads);
            let online = table.endpoints.iter().filter(|e| e.routable).count();
            if first {
                info!(
                    version = table.version,
                    endpoints = table.endpoints.len(),
                    online,
                    "routing table received"
                );
            } else {
                debug!(
                    version = table.version,
                    endpoints = table.endpoints.len(),
                    online,
                    "routing table updated"
                );
            }
            self.metrics.table_installed(table.version, table.received);
            self.routes.install(table);
        }
        Ok(())
    }
}

/// Whether a table of `version` replaces the one taken last on this
/// connection (`None`: the first table of the connection, always taken).
fn accept_version(last_on_connection: Option<u64>, version: u64) -> bool {
    last_on_connection.is_none_or(|last| version >= last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlb_proto::v1::RouteApiKey;

    fn ep(id: &str, status: EndpointStatus, models: &[&str]) -> RouteEndpoint {
        RouteEndpoint {
            id: id.into(),
            base_url: format!("http://127.0.0.1:1/{id}/"),
            api_key: Some("up-key".into()),
            status: status as i32,
            models: models.iter().map(|m| (*m).into()).collect(),
            name: id.into(),
            model_objects: Default::default(),
        }
    }

    fn table() -> Table {
        let proto = RoutingTable {
            version: 3,
            endpoints: vec![
                ep("a", EndpointStatus::Online, &["m1", "m2"]),
                ep("b", EndpointStatus::Offline, &["m2", "m3"]),
                ep("c", EndpointStatus::Online, &["m1"]),
            ],
            api_keys: vec![RouteApiKey {
                id: "k1".into(),
                sha256: hex::encode(Sha256::digest(b"secret")).to_uppercase(),
            }],
            generated_at: None,
            require_api_key: false,
        };
        Table::new(proto, &Loads::default())
    }

    #[test]
    fn routes_only_to_online_endpoints() {
        let table = table();
        let ids = |r: Vec<Arc<Endpoint>>| r.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(table.route("m1").unwrap()), ["a", "c"]);
        assert_eq!(ids(table.route("m2").unwrap()), ["a"]);
        assert_eq!(table.route("m3").unwrap_err(), RouteError::NoOnlineEndpoint);
        assert_eq!(table.route("nope").unwrap_err(), RouteError::UnknownModel);
        assert_eq!(
            table.online_models().into_iter().collect::<Vec<_>>(),
            ["m1", "m2"]
        );
        assert_eq!(table.model_object("m1"), None);
        let a = &table.route("m2").unwrap()[0];
        assert_eq!(a.base_url, "http://127.0.0.1:1/a");
        assert_eq!(a.authorization.as_ref().unwrap(), "Bearer up-key");
    }

    #[test]
    fn older_tables_are_ignored_only_within_a_connection() {
        assert!(
            accept_version(None, 1),
            "a restarted control plane starts again"
        );
        assert!(accept_version(Some(5), 5));
        assert!(accept_version(Some(5), 6));
        assert!(!accept_version(Some(5), 4));
    }

    #[test]
    fn api_keys_match_by_hash() {
        let table = table();
        assert!(table.requires_api_key());
        let revoked = Table::new(
            RoutingTable {
                require_api_key: true,
                ..RoutingTable::default()
            },
            &Loads::default(),
        );
        assert!(revoked.requires_api_key(), "no key left, still required");
        assert_eq!(revoked.api_key_id("secret"), None);
        assert_eq!(table.api_key_id("secret"), Some("k1"));
        assert_eq!(table.api_key_id("Secret"), None);
    }
}
