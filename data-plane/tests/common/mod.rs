//! Test harness: a small in-process control plane (RoutingService and
//! StatsService), proxy configuration, and polling helpers.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use llmlb_proto::v1::routing_service_server::{RoutingService, RoutingServiceServer};
use llmlb_proto::v1::stats_service_server::{StatsService, StatsServiceServer};
use llmlb_proto::v1::{
    stats_upload::Kind, EndpointStatus, RequestRecord, RouteEndpoint, RoutingTable, StatsAck,
    StatsUpload, WatchRoutingRequest,
};
use llmlb_proxy::{Cli, Config};
use parking_lot::Mutex;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, WatchStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Default polling deadline.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `check` every 20 ms until it returns `Some`, or panics after
/// `DEADLINE` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the test control plane saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Records of every batch, in arrival order (resends included).
    pub records: Vec<RequestRecord>,
    /// `proxy_id` of every Hello.
    pub hellos: Vec<String>,
    /// `authorization` metadata of every call.
    pub authorizations: Vec<Option<String>>,
    /// Last in-flight report.
    pub inflight: Option<std::collections::HashMap<String, u64>>,
}

#[derive(Clone)]
struct Service {
    table: watch::Receiver<RoutingTable>,
    seen: Arc<Mutex<Seen>>,
    ack: bool,
    kill: CancellationToken,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn authorization<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tonic::async_trait]
impl RoutingService for Service {
    type WatchRoutingStream = BoxStream<RoutingTable>;

    async fn watch_routing(
        &self,
        request: Request<WatchRoutingRequest>,
    ) -> Result<Response<Self::WatchRoutingStream>, Status> {
        self.seen
            .lock()
            .authorizations
            .push(authorization(&request));
        let stream = WatchStream::new(self.table.clone())
            .map(Ok)
            .take_until(self.kill.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl StatsService for Service {
    type StreamStatsStream = BoxStream<StatsAck>;

    async fn stream_stats(
        &self,
        request: Request<Streaming<StatsUpload>>,
    ) -> Result<Response<Self::StreamStatsStream>, Status> {
        self.seen
            .lock()
            .authorizations
            .push(authorization(&request));
        let mut uploads = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let (seen, ack, kill) = (self.seen.clone(), self.ack, self.kill.clone());
        tokio::spawn(async move {
            loop {
                let upload = tokio::select! {
                    () = kill.cancelled() => return,
                    upload = uploads.message() => match upload {
                        Ok(Some(upload)) => upload,
                        _ => return,
                    },
                };
                match upload.kind {
                    Some(Kind::Hello(hello)) => seen.lock().hellos.push(hello.proxy_id),
                    Some(Kind::Inflight(report)) => seen.lock().inflight = Some(report.by_endpoint),
                    Some(Kind::Batch(batch)) => {
                        let applied = batch.records.len() as u32;
                        seen.lock().records.extend(batch.records);
                        let reply = StatsAck {
                            batch_id: batch.batch_id,
                            applied,
                            duplicates: 0,
                        };
                        if ack && tx.send(Ok(reply)).await.is_err() {
                            return;
                        }
                    }
                    None => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// An in-process control plane serving the proxy-facing services.
pub struct TestControlPlane {
    addr: SocketAddr,
    table: watch::Sender<RoutingTable>,
    seen: Arc<Mutex<Seen>>,
    kill: CancellationToken,
    task: JoinHandle<()>,
}

impl TestControlPlane {
    /// Starts on a free port; acknowledges batches if `ack`.
    pub async fn start(table: RoutingTable, ack: bool) -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), table, ack).await
    }

    /// Starts on `addr` (reusable right after [`stop`](Self::stop)).
    pub async fn start_on(addr: SocketAddr, table: RoutingTable, ack: bool) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(128).unwrap();
        let addr = listener.local_addr().unwrap();
        let (table_tx, table_rx) = watch::channel(table);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let kill = CancellationToken::new();
        let service = Service {
            table: table_rx,
            seen: seen.clone(),
            ack,
            kill: kill.clone(),
        };
        let server = tonic::transport::Server::builder()
            .add_service(RoutingServiceServer::new(service.clone()))
            .add_service(StatsServiceServer::new(service))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                kill.clone().cancelled_owned(),
            );
        let task = tokio::spawn(async move {
            server.await.unwrap();
        });
        Self {
            addr,
            table: table_tx,
            seen,
            kill,
            task,
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Pushes a new table to every watcher.
    pub fn set_table(&self, table: RoutingTable) {
        self.table.send_replace(table);
    }

    /// Runs `f` on what was seen so far.
    pub fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock())
    }

    /// Every record received so far.
    pub fn records(&self) -> Vec<RequestRecord> {
        self.seen.lock().records.clone()
    }

    /// Waits until at least `n` records arrived; returns them all.
    pub async fn wait_records(&self, n: usize) -> Vec<RequestRecord> {
        eventually(&format!("{n} stats records"), || async {
            let records = self.records();
            (records.len() >= n).then_some(records)
        })
        .await
    }

    /// Ends every stream and stops the server; the port is free after.
    pub async fn stop(self) {
        self.kill.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("test control plane stops")
            .unwrap();
    }
}

/// An ONLINE (or not) endpoint of a routing table.
pub fn endpoint(
    id: &str,
    base_url: &str,
    status: EndpointStatus,
    models: &[&str],
) -> RouteEndpoint {
    RouteEndpoint {
        id: id.into(),
        base_url: base_url.into(),
        api_key: Some(format!("key-of-{id}")),
        status: status as i32,
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        name: format!("name-{id}"),
        model_objects: Default::default(),
    }
}

/// A routing table.
pub fn table(version: u64, endpoints: Vec<RouteEndpoint>) -> RoutingTable {
    RoutingTable {
        version,
        endpoints,
        api_keys: vec![],
        generated_at: None,
        require_api_key: false,
    }
}

/// Proxy config on a free port against `control_plane`, plus `extra` flags.
pub fn proxy_config(control_plane: &str, extra: &[&str]) -> Config {
    let mut args = vec![
        "llmlb-proxy".to_owned(),
        "--listen=127.0.0.1:0".to_owned(),
        format!("--control-plane={control_plane}"),
        "--proxy-id=test-proxy".to_owned(),
    ];
    if !extra.iter().any(|a| a.starts_with("--shutdown-grace")) {
        args.push("--shutdown-grace=5s".to_owned());
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Config::try_from(<Cli as clap::Parser>::try_parse_from(args).unwrap()).unwrap()
}

/// Starts a proxy against `control_plane` (with `extra` flags) and waits
/// until it routes `model`; returns it, its base URL and a client.
pub async fn start_routable(
    control_plane: &str,
    extra: &[&str],
    model: &str,
) -> (llmlb_proxy::ProxyHandle, String, reqwest::Client) {
    let proxy = llmlb_proxy::start(proxy_config(control_plane, extra))
        .await
        .unwrap();
    let base = format!("http://{}", proxy.local_addr());
    let client = reqwest::Client::new();
    wait_routable(&client, &base, model).await;
    (proxy, base, client)
}

/// Waits until the proxy at `base` serves `GET /v1/models` with `model`.
pub async fn wait_routable(client: &reqwest::Client, base: &str, model: &str) {
    eventually(&format!("model {model} routable"), || async {
        let response = client.get(format!("{base}/v1/models")).send().await.ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        body["data"]
            .as_array()?
            .iter()
            .any(|m| m["id"] == model)
            .then_some(())
    })
    .await;
}

/// GET `url`; the body as text (panics on failure: for tests).
pub async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// POST `body` as JSON to `url`; the answer's body as text.
pub async fn post_text(client: &reqwest::Client, url: &str, body: &serde_json::Value) -> String {
    client
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
