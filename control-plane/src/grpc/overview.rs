//! `GetOverview` without building the overview message per read.
//!
//! An overview of 1,000 endpoints × 4 models is 400 KiB of protobuf and
//! 1.1 MiB of JSON. Cloning the rows into a message and encoding it cost
//! about 2 ms of CPU per read, and during ingest almost every entry changes
//! between two reads, so caching whole entries does not help either. The
//! [`OverviewEncoder`] splits each entry in two:
//! - its *static* fields (an endpoint's id, name, URL, status, latency,
//!   models, last check and error; a TPS entry's key), encoded once per
//!   registry revision (which does not move with request counters) and kept;
//! - its *counters* (requests, tokens, active requests; TPS, request count,
//!   source), written straight into the reply at each read.
//!
//! A read walks the registry and the LoadManager in their order and writes
//! the reply in one buffer: every read is exact — it holds every change
//! applied before it started, like the other dashboard methods — so a
//! stats acknowledgement is visible to the next read. The output equals the
//! encoding of [`overview_at`]'s message (JSON byte for byte; protobuf
//! field for field, repeated fields after the others).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use llmlb_proto::v1 as pb;
use parking_lot::Mutex;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{NamedService, UnaryService};
use tonic::Status;
use uuid::Uuid;

use crate::db::endpoints::EndpointRow;
use crate::db::model_stats::ModelState;
use crate::load::{LoadManager, TpsSource};
use crate::registry::Registry;
use crate::types::{minute_of, now_ms, timestamp, ModelKey, Status as EpStatus, UnixMs};

/// Field numbers of dashboard.proto: `Overview`, `EndpointStats`,
/// `ModelTps`.
mod field {
    pub const OVERVIEW_ENDPOINTS: u32 = 2;
    pub const OVERVIEW_MODEL_TPS: u32 = 4;
    pub const EP_TOTAL_REQUESTS: u32 = 7;
    pub const EP_SUCCESSFUL_REQUESTS: u32 = 8;
    pub const EP_FAILED_REQUESTS: u32 = 9;
    pub const EP_ACTIVE_REQUESTS: u32 = 10;
    pub const EP_TOTAL_INPUT_TOKENS: u32 = 11;
    pub const EP_TOTAL_OUTPUT_TOKENS: u32 = 12;
    pub const EP_COOLING_DOWN_PROXIES: u32 = 15;
    pub const TPS_TPS: u32 = 4;
    pub const TPS_REQUEST_COUNT: u32 = 5;
    pub const TPS_TOTAL_OUTPUT_TOKENS: u32 = 6;
    pub const TPS_SOURCE: u32 = 7;
}

/// The JSON an entry's counters replace when its static part is rendered
/// with zero counters (pbjson's field order and spelling).
const EP_JSON_COUNTERS: &str = r#","totalRequests":"0","successfulRequests":"0","failedRequests":"0","activeRequests":"0","totalInputTokens":"0","totalOutputTokens":"0","coolingDownProxies":"0""#;
const TPS_JSON_COUNTERS: &str = r#","requestCount":"0","totalOutputTokens":"0","source":"LIVE""#;

/// An encoding of the overview.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Protobuf (gRPC).
    Protobuf,
    /// Proto3 JSON (REST).
    Json,
}

/// Static parts of the entries of the last read, in the order read.
#[derive(Debug, Default)]
struct Pieces {
    /// Keyed by (name, id); versioned by registry revision.
    endpoints: Vec<Piece<(String, Uuid)>>,
    /// Keyed by model key (all of a TPS entry's static fields).
    tps: Vec<Piece<ModelKey>>,
    /// Size of the last reply of each form (to size the next buffer).
    last_len: [usize; 2],
}

/// An entry's static fields, encoded when first asked for.
#[derive(Debug)]
struct Piece<K> {
    key: K,
    revision: u64,
    /// The static fields as protobuf (the counters are appended).
    protobuf: Option<Vec<u8>>,
    /// The JSON object around the counters: (before, after).
    json: Option<(Vec<u8>, Vec<u8>)>,
}

impl<K> Piece<K> {
    fn new(key: K, revision: u64) -> Self {
        Piece {
            key,
            revision,
            protobuf: None,
            json: None,
        }
    }

    /// Writes the entry: the static part (made from `message()`, which has
    /// zero counters, if missing) and the counters.
    fn write<M: Message + serde::Serialize>(
        &mut self,
        out: &mut Vec<u8>,
        form: Form,
        (field, json_counters): (u32, &str),
        message: impl FnOnce() -> M,
        counters: &Counters,
    ) -> Result<(), Status> {
        match form {
            Form::Protobuf => {
                let fixed = self
                    .protobuf
                    .get_or_insert_with(|| message().encode_to_vec());
                let len = fixed.len() + counters.protobuf_len();
                encode_key(field, WireType::LengthDelimited, out);
                encode_varint(len as u64, out);
                out.extend_from_slice(fixed);
                counters.protobuf(out);
            }
            Form::Json => {
                if self.json.is_none() {
                    let whole = serde_json::to_vec(&message()).map_err(json_error)?;
                    let at = find(&whole, json_counters.as_bytes()).ok_or_else(|| {
                        Status::internal("overview entry JSON without its counters")
                    })?;
                    let after = whole[at + json_counters.len()..].to_vec();
                    let mut before = whole;
                    before.truncate(at);
                    self.json = Some((before, after));
                }
                let (before, after) = self.json.as_ref().expect("just made");
                out.extend_from_slice(before);
                counters.json(out);
                out.extend_from_slice(after);
            }
        }
        Ok(())
    }
}

/// The counters of an entry, written at each read.
enum Counters {
    Endpoint([u64; 7]),
    Tps(ModelState, TpsSource),
}

impl Counters {
    /// Field number and the JSON up to the value's digits.
    const EP_FIELDS: [(u32, &'static [u8]); 7] = [
        (field::EP_TOTAL_REQUESTS, br#","totalRequests":""#),
        (
            field::EP_SUCCESSFUL_REQUESTS,
            br#"","successfulRequests":""#,
        ),
        (field::EP_FAILED_REQUESTS, br#"","failedRequests":""#),
        (field::EP_ACTIVE_REQUESTS, br#"","activeRequests":""#),
        (field::EP_TOTAL_INPUT_TOKENS, br#"","totalInputTokens":""#),
        (field::EP_TOTAL_OUTPUT_TOKENS, br#"","totalOutputTokens":""#),
        (
            field::EP_COOLING_DOWN_PROXIES,
            br#"","coolingDownProxies":""#,
        ),
    ];

    fn endpoint(row: &EndpointRow, (active, cooling): (u64, u64)) -> Counters {
        let c = &row.counters;
        Counters::Endpoint([
            c.total_requests,
            c.successful_requests,
            c.failed_requests,
            active,
            c.input_tokens,
            c.output_tokens,
            cooling,
        ])
    }

    fn tps_source(source: TpsSource) -> pb::TpsSource {
        match source {
            TpsSource::Live => pb::TpsSource::Live,
            TpsSource::Restored => pb::TpsSource::Restored,
        }
    }

    /// Protobuf leaves out zero scalars; an optional double is sent when set.
    fn protobuf_len(&self) -> usize {
        use prost::encoding::{double, int32, uint64};
        match self {
            Counters::Endpoint(values) => Self::EP_FIELDS
                .iter()
                .zip(values)
                .filter(|(_, v)| **v != 0)
                .map(|((tag, _), v)| uint64::encoded_len(*tag, v))
                .sum(),
            Counters::Tps(state, source) => {
                state
                    .tps_ema
                    .map_or(0, |t| double::encoded_len(field::TPS_TPS, &t))
                    + [
                        (field::TPS_REQUEST_COUNT, state.request_count),
                        (field::TPS_TOTAL_OUTPUT_TOKENS, state.total_output_tokens),
                    ]
                    .iter()
                    .filter(|(_, v)| *v != 0)
                    .map(|(tag, v)| uint64::encoded_len(*tag, v))
                    .sum::<usize>()
                    + int32::encoded_len(field::TPS_SOURCE, &(Self::tps_source(*source) as i32))
            }
        }
    }

    fn protobuf(&self, out: &mut Vec<u8>) {
        use prost::encoding::{double, int32, uint64};
        match self {
            Counters::Endpoint(values) => {
                for ((tag, _), v) in Self::EP_FIELDS.iter().zip(values) {
                    if *v != 0 {
                        uint64::encode(*tag, v, out);
                    }
                }
            }
            Counters::Tps(state, source) => {
                if let Some(t) = state.tps_ema {
                    double::encode(field::TPS_TPS, &t, out);
                }
                for (tag, v) in [
                    (field::TPS_REQUEST_COUNT, state.request_count),
                    (field::TPS_TOTAL_OUTPUT_TOKENS, state.total_output_tokens),
                ] {
                    if v != 0 {
                        uint64::encode(tag, &v, out);
                    }
                }
                int32::encode(field::TPS_SOURCE, &(Self::tps_source(*source) as i32), out);
            }
        }
    }

    /// As pbjson writes them: 64-bit integers as strings, enums by name.
    fn json(&self, out: &mut Vec<u8>) {
        match self {
            Counters::Endpoint(values) => {
                for ((_, before), v) in Self::EP_FIELDS.iter().zip(values) {
                    out.extend_from_slice(before);
                    push_u64(out, *v);
                }
                out.push(b'"');
            }
            Counters::Tps(state, source) => {
                if let Some(t) = state.tps_ema {
                    out.extend_from_slice(br#","tps":"#);
                    let _ = serde_json::to_writer(&mut *out, &t);
                }
                out.extend_from_slice(br#","requestCount":""#);
                push_u64(out, state.request_count);
                out.extend_from_slice(br#"","totalOutputTokens":""#);
                push_u64(out, state.total_output_tokens);
                out.extend_from_slice(br#"","source":""#);
                out.extend_from_slice(Self::tps_source(*source).as_str_name().as_bytes());
                out.push(b'"');
            }
        }
    }
}

/// Decimal digits of `v`.
fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn json_error(e: serde_json::Error) -> Status {
    tracing::error!(error = %e, "encoding the overview as JSON failed");
    Status::internal("encoding the overview as JSON failed")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Walks the pieces of the last read alongside this read's entries (both
/// in the same order), keeping the pieces of entries still there. No
/// hashing: at 5,000 entries per read, hashing their keys cost more than
/// writing them.
struct Merge<K> {
    last: std::iter::Peekable<std::vec::IntoIter<Piece<K>>>,
    next: Vec<Piece<K>>,
}

impl<K> Merge<K> {
    fn new(last: Vec<Piece<K>>) -> Self {
        Merge {
            next: Vec::with_capacity(last.len()),
            last: last.into_iter().peekable(),
        }
    }

    /// The piece of the entry read now. `same`: a last-read key is this
    /// entry's; `before`: it sorts before this entry's (that entry is gone).
    fn piece(
        &mut self,
        same: impl Fn(&K) -> bool,
        before: impl Fn(&K) -> bool,
        key: impl FnOnce() -> K,
        revision: u64,
    ) -> &mut Piece<K> {
        let piece = loop {
            match self.last.peek() {
                Some(p) if same(&p.key) => {
                    let p = self.last.next().expect("peeked");
                    break if p.revision == revision {
                        p
                    } else {
                        Piece::new(p.key, revision)
                    };
                }
                Some(p) if before(&p.key) => {
                    self.last.next();
                }
                _ => break Piece::new(key(), revision),
            }
        };
        self.next.push(piece);
        self.next.last_mut().expect("just pushed")
    }
}

/// Encodes overviews from the registry and the LoadManager.
#[derive(Clone, Debug)]
pub struct OverviewEncoder {
    registry: Registry,
    load: LoadManager,
    pieces: Arc<Mutex<Pieces>>,
}

impl OverviewEncoder {
    /// An encoder over the registry and the LoadManager.
    pub fn new(registry: Registry, load: LoadManager) -> OverviewEncoder {
        OverviewEncoder {
            registry,
            load,
            pieces: Arc::default(),
        }
    }

    /// The overview of now, encoded.
    pub fn encode(&self, form: Form) -> Result<Bytes, Status> {
        self.encode_at(form, now_ms())
    }

    /// The overview taken at `now`, encoded: the message [`overview_at`]
    /// builds.
    pub fn encode_at(&self, form: Form, now: UnixMs) -> Result<Bytes, Status> {
        let active = endpoint_loads(&self.load, now);
        let mut pieces = self.pieces.lock();
        let mut out = Vec::with_capacity(pieces.last_len[form as usize] + 4096);

        // The registry stays read-locked for both passes: the stats and the
        // entries are of the same rows.
        let rows = self.registry.read();
        let mut tally = Tally::default();
        let mut ids = Vec::with_capacity(pieces.endpoints.len());
        for (row, _) in rows.ordered() {
            tally.add(row, load_of(&active, row.id).0);
            ids.push(row.id);
        }
        let skeleton = pb::Overview {
            stats: Some(tally.stats(&self.load, now)),
            endpoints: Vec::new(),
            history: history(&self.load, now),
            model_tps: Vec::new(),
            generated_at: Some(timestamp(now)),
        };
        // Protobuf: the skeleton first, the repeated fields after it (their
        // place on the wire does not matter). JSON: the pieces go into the
        // skeleton's empty arrays.
        let frame = match form {
            Form::Protobuf => skeleton.encode_to_vec(),
            Form::Json => serde_json::to_vec(&skeleton).map_err(json_error)?,
        };
        let (e, m) = match form {
            Form::Protobuf => (frame.len(), frame.len()),
            Form::Json => {
                let at = |marker: &[u8]| {
                    find(&frame, marker)
                        .map(|i| i + marker.len())
                        .ok_or_else(|| Status::internal("overview JSON frame without its arrays"))
                };
                (at(br#""endpoints":["#)?, at(br#""modelTps":["#)?)
            }
        };
        out.extend_from_slice(&frame[..e]);

        let mut merge = Merge::new(std::mem::take(&mut pieces.endpoints));
        for (i, (row, revision)) in rows.ordered().enumerate() {
            if form == Form::Json && i > 0 {
                out.push(b',');
            }
            let act = load_of(&active, row.id);
            let static_part = || pb::EndpointStats {
                total_requests: 0,
                successful_requests: 0,
                failed_requests: 0,
                active_requests: 0,
                total_input_tokens: 0,
                total_output_tokens: 0,
                cooling_down_proxies: 0,
                ..endpoint_stats(row, (0, 0))
            };
            merge
                .piece(
                    |(_, id)| *id == row.id,
                    |(name, _)| name.as_str() < row.name.as_str(),
                    || (row.name.clone(), row.id),
                    revision,
                )
                .write(
                    &mut out,
                    form,
                    (field::OVERVIEW_ENDPOINTS, EP_JSON_COUNTERS),
                    static_part,
                    &Counters::endpoint(row, act),
                )?;
        }
        pieces.endpoints = merge.next;
        drop(rows);
        out.extend_from_slice(&frame[e..m]);

        // TPS keys come in endpoint id order: walk the sorted ids alongside
        // to show only entries of registered endpoints.
        ids.sort_unstable();
        let mut at = 0;
        let mut first = true;
        let mut failed = None;
        let mut merge = Merge::new(std::mem::take(&mut pieces.tps));
        self.load.visit_tps(|key, state, source| {
            while at < ids.len() && ids[at] < key.endpoint_id {
                at += 1;
            }
            if ids.get(at) != Some(&key.endpoint_id) || failed.is_some() {
                return;
            }
            if form == Form::Json && !first {
                out.push(b',');
            }
            first = false;
            let static_part = || pb::ModelTps {
                tps: None,
                request_count: 0,
                total_output_tokens: 0,
                // JSON needs a valid name to match TPS_JSON_COUNTERS; protobuf
                // leaves 0 out, and the counters carry the source.
                source: match form {
                    Form::Json => pb::TpsSource::Live as i32,
                    Form::Protobuf => 0,
                },
                ..tps_entry(key, &ModelState::default(), TpsSource::Live)
            };
            let written = merge
                .piece(|k| k == key, |k| k < key, || key.clone(), 0)
                .write(
                    &mut out,
                    form,
                    (field::OVERVIEW_MODEL_TPS, TPS_JSON_COUNTERS),
                    static_part,
                    &Counters::Tps(*state, source),
                );
            if let Err(e) = written {
                failed = Some(e);
            }
        });
        pieces.tps = merge.next;
        if let Some(e) = failed {
            return Err(e);
        }
        out.extend_from_slice(&frame[m..]);
        pieces.last_len[form as usize] = out.len();
        Ok(Bytes::from(out))
    }
}

/// The stats figures, summed over endpoints.
#[derive(Debug, Default)]
struct Tally {
    stats: pb::Stats,
    online_latencies: Vec<f64>,
}

impl Tally {
    fn add(&mut self, e: &EndpointRow, active: u64) {
        let s = &mut self.stats;
        s.total_endpoints += 1;
        match e.status {
            EpStatus::Online => s.online_endpoints += 1,
            EpStatus::Offline => s.offline_endpoints += 1,
            EpStatus::Pending => s.pending_endpoints += 1,
            EpStatus::Error => s.error_endpoints += 1,
        }
        // Saturating: stored sums may sit at 2^63 - 1 (see `db::to_sql_count`).
        s.active_requests = s.active_requests.saturating_add(active);
        s.total_requests = s.total_requests.saturating_add(e.counters.total_requests);
        s.successful_requests = s
            .successful_requests
            .saturating_add(e.counters.successful_requests);
        s.failed_requests = s.failed_requests.saturating_add(e.counters.failed_requests);
        s.total_input_tokens = s.total_input_tokens.saturating_add(e.counters.input_tokens);
        s.total_output_tokens = s
            .total_output_tokens
            .saturating_add(e.counters.output_tokens);
        if e.status == EpStatus::Online {
            if let Some(latency) = e.latency_ms {
                self.online_latencies.push(latency);
            }
        }
    }

    fn stats(self, load: &LoadManager, now: UnixMs) -> pb::Stats {
        let (avg, source) = average_response_time(
            load.average_response_time(minute_of(now)),
            &self.online_latencies,
        );
        pb::Stats {
            average_response_time_ms: avg,
            average_response_time_source: source.map(|s| s as i32),
            connected_proxies: load.connected_proxies() as u32,
            generated_at: Some(timestamp(now)),
            ..self.stats
        }
    }
}

/// Average response time and its source (seed US3): the mean duration of the
/// requests of the last 60 minutes; else the unweighted mean latency of the
/// ONLINE endpoints that have one (`online_latencies`); else unknown.
pub fn average_response_time(
    from_requests: Option<f64>,
    online_latencies: &[f64],
) -> (Option<f64>, Option<pb::AverageResponseTimeSource>) {
    if let Some(avg) = from_requests {
        return (Some(avg), Some(pb::AverageResponseTimeSource::Requests));
    }
    if online_latencies.is_empty() {
        return (None, None);
    }
    let mean = online_latencies.iter().sum::<f64>() / online_latencies.len() as f64;
    (
        Some(mean),
        Some(pb::AverageResponseTimeSource::EndpointLatency),
    )
}

/// `GetStats` at `now`.
pub fn stats_at(registry: &Registry, load: &LoadManager, now: UnixMs) -> pb::Stats {
    let active = load.active_by_endpoint();
    let mut tally = Tally::default();
    for (row, _) in registry.read().ordered() {
        tally.add(row, active.get(&row.id).copied().unwrap_or(0));
    }
    tally.stats(load, now)
}

/// Everything, taken at `now` (as a message).
pub fn overview_at(registry: &Registry, load: &LoadManager, now: UnixMs) -> pb::Overview {
    let rows = registry.snapshot();
    let active = endpoint_loads(load, now);
    let mut tally = Tally::default();
    for row in &rows {
        tally.add(row, load_of(&active, row.id).0);
    }
    let ids: HashSet<Uuid> = rows.iter().map(|e| e.id).collect();
    pb::Overview {
        stats: Some(tally.stats(load, now)),
        endpoints: endpoints_at(&rows, &active),
        history: history(load, now),
        model_tps: model_tps(load, &ids),
        generated_at: Some(timestamp(now)),
    }
}

/// Per endpoint: requests in flight and proxies cooling it down, at `now`.
pub fn endpoint_loads(load: &LoadManager, now: UnixMs) -> HashMap<Uuid, (u64, u64)> {
    let mut out: HashMap<Uuid, (u64, u64)> = load
        .active_by_endpoint()
        .into_iter()
        .map(|(id, n)| (id, (n, 0)))
        .collect();
    for (id, n) in load.cooling_by_endpoint(now) {
        out.entry(id).or_default().1 = n;
    }
    out
}

fn load_of(loads: &HashMap<Uuid, (u64, u64)>, id: Uuid) -> (u64, u64) {
    loads.get(&id).copied().unwrap_or_default()
}

/// `ListEndpointStats` entries of `rows`, with their [`endpoint_loads`].
pub fn endpoints_at(
    rows: &[EndpointRow],
    loads: &HashMap<Uuid, (u64, u64)>,
) -> Vec<pb::EndpointStats> {
    rows.iter()
        .map(|e| endpoint_stats(e, load_of(loads, e.id)))
        .collect()
}

/// The 60 minutes ending with the one of `now`.
pub fn history(load: &LoadManager, now: UnixMs) -> Vec<pb::HistoryMinute> {
    load.history(minute_of(now))
        .into_iter()
        .map(|(minute, m)| pb::HistoryMinute {
            minute: Some(timestamp(minute * 60_000)),
            success: m.success,
            failure: m.failure,
        })
        .collect()
}

/// `ListModelTps` entries of the endpoints in `endpoints`.
pub fn model_tps(load: &LoadManager, endpoints: &HashSet<Uuid>) -> Vec<pb::ModelTps> {
    let mut out = Vec::new();
    load.visit_tps(|key, state, source| {
        if endpoints.contains(&key.endpoint_id) {
            out.push(tps_entry(key, state, source));
        }
    });
    out
}

fn tps_entry(key: &ModelKey, state: &ModelState, source: TpsSource) -> pb::ModelTps {
    pb::ModelTps {
        endpoint_id: key.endpoint_id.to_string(),
        model: key.model.clone(),
        api_kind: key.api_kind,
        tps: state.tps_ema,
        request_count: state.request_count,
        total_output_tokens: state.total_output_tokens,
        source: match source {
            TpsSource::Live => pb::TpsSource::Live,
            TpsSource::Restored => pb::TpsSource::Restored,
        } as i32,
    }
}

fn endpoint_stats(e: &EndpointRow, (active, cooling): (u64, u64)) -> pb::EndpointStats {
    pb::EndpointStats {
        id: e.id.to_string(),
        name: e.name.clone(),
        base_url: e.base_url.clone(),
        status: pb::EndpointStatus::from(e.status) as i32,
        latency_ms: e.latency_ms,
        models: e.models().to_vec(),
        total_requests: e.counters.total_requests,
        successful_requests: e.counters.successful_requests,
        failed_requests: e.counters.failed_requests,
        active_requests: active,
        total_input_tokens: e.counters.input_tokens,
        total_output_tokens: e.counters.output_tokens,
        cooling_down_proxies: cooling,
        last_checked_at: e.last_checked_at.map(timestamp),
        last_error: e.last_error.clone(),
    }
}

// === GetOverview over gRPC from the encoder ===

/// Full path of `GetOverview`.
const GET_OVERVIEW: &str = "/llmlb.v1.DashboardService/GetOverview";

/// `DashboardService` with `GetOverview` answered with the encoder's bytes
/// (tonic's generated server would encode a message); every other method
/// goes to the generated server. Auth is applied around it.
#[derive(Clone, Debug)]
pub struct DashboardGrpc<S> {
    generated: S,
    encoder: OverviewEncoder,
}

impl<S> DashboardGrpc<S> {
    /// Wraps the generated server.
    pub fn new(generated: S, encoder: OverviewEncoder) -> Self {
        DashboardGrpc { generated, encoder }
    }
}

impl<S: NamedService> NamedService for DashboardGrpc<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for DashboardGrpc<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.generated.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != GET_OVERVIEW {
            return Box::pin(self.generated.call(request));
        }
        let method = EncodedOverview(self.encoder.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(OverviewCodec);
            Ok(grpc.unary(method, request).await)
        })
    }
}

struct EncodedOverview(OverviewEncoder);

impl UnaryService<pb::GetOverviewRequest> for EncodedOverview {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, _request: tonic::Request<pb::GetOverviewRequest>) -> Self::Future {
        let encoded = self.0.encode(Form::Protobuf).map(tonic::Response::new);
        Box::pin(std::future::ready(encoded))
    }
}

/// Decodes `GetOverviewRequest`, sends already encoded bytes.
#[derive(Clone, Copy, Debug)]
struct OverviewCodec;

impl Codec for OverviewCodec {
    type Encode = Bytes;
    type Decode = pb::GetOverviewRequest;
    type Encoder = OverviewCodec;
    type Decoder = OverviewCodec;

    fn encoder(&mut self) -> Self::Encoder {
        OverviewCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        OverviewCodec
    }
}

impl Encoder for OverviewCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for OverviewCodec {
    type Item = pb::GetOverviewRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        pb::GetOverviewRequest::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("invalid GetOverviewRequest: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::endpoints::{sample, Counters};
    use crate::db::request_minutes::MinuteTotals;
    use crate::db::test_db;
    use crate::events::Events;
    use crate::registry::{EndpointChanges, NewEndpoint};

    fn ep(status: EpStatus, latency: Option<f64>) -> EndpointRow {
        EndpointRow {
            status,
            latency_ms: latency,
            ..sample("x")
        }
    }

    /// Seed T010: no requests in the window → mean latency of ONLINE
    /// endpoints (100, 200 → 150); all offline → unknown.
    #[test]
    fn average_response_time_falls_back_to_endpoint_latency() {
        let latencies = |rows: &[EndpointRow]| {
            let mut tally = Tally::default();
            rows.iter().for_each(|r| tally.add(r, 0));
            tally.online_latencies
        };
        let online = latencies(&[
            ep(EpStatus::Online, Some(100.0)),
            ep(EpStatus::Online, Some(200.0)),
            ep(EpStatus::Offline, Some(900.0)),
        ]);
        assert_eq!(
            average_response_time(None, &online),
            (
                Some(150.0),
                Some(pb::AverageResponseTimeSource::EndpointLatency)
            )
        );
        assert_eq!(
            average_response_time(Some(42.0), &online),
            (Some(42.0), Some(pb::AverageResponseTimeSource::Requests))
        );
        let offline = latencies(&[
            ep(EpStatus::Offline, Some(100.0)),
            ep(EpStatus::Error, Some(200.0)),
            ep(EpStatus::Online, None),
        ]);
        assert_eq!(average_response_time(None, &offline), (None, None));
    }

    struct Fixture {
        registry: Registry,
        load: LoadManager,
        encoder: OverviewEncoder,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let (db, dir) = test_db().await;
        let events = Events::default();
        let registry = Registry::load(db, events.clone()).await.unwrap();
        let load = LoadManager::new(events);
        let encoder = OverviewEncoder::new(registry.clone(), load.clone());
        Fixture {
            registry,
            load,
            encoder,
            _dir: dir,
        }
    }

    impl Fixture {
        async fn endpoint(&self, name: &str) -> Uuid {
            let new = NewEndpoint {
                name: name.into(),
                base_url: "http://127.0.0.1:9".into(),
                models: vec!["m1".into(), "m2".into()],
                ..Default::default()
            };
            self.registry.create(new).await.unwrap().id
        }

        fn completed(&self, id: Uuid, model: &str, requests: u64) {
            let counters = Counters {
                total_requests: requests,
                successful_requests: requests,
                input_tokens: 3 * requests,
                output_tokens: 7 * requests,
                ..Default::default()
            };
            self.registry
                .apply_counters(&HashMap::from([(id, counters)]));
            let key = ModelKey {
                endpoint_id: id,
                model: model.into(),
                api_kind: pb::ApiKind::ChatCompletions as i32,
            };
            let mut state = self.load.model_state(&key).unwrap_or_default();
            state.request_count += requests;
            state.total_output_tokens += 7 * requests;
            state.tps_ema = Some(10.0 + requests as f64);
            let now = now_ms();
            let minute = MinuteTotals {
                success: requests,
                failure: 0,
                total_duration_ms: 100.0 * requests as f64,
            };
            self.load.apply_committed(
                &HashMap::from([(minute_of(now), minute)]),
                &HashMap::from([(key, state)]),
                minute_of(now),
            );
        }

        /// Both encodings hold exactly the message `overview_at` builds.
        fn assert_encodings_match(&self) -> pb::Overview {
            let now = now_ms();
            let message = overview_at(&self.registry, &self.load, now);
            let protobuf = self.encoder.encode_at(Form::Protobuf, now).unwrap();
            // Same fields, none sent twice (only their order differs).
            assert_eq!(protobuf.len(), message.encoded_len());
            assert_eq!(pb::Overview::decode(protobuf).unwrap(), message);
            let json = self.encoder.encode_at(Form::Json, now).unwrap();
            assert_eq!(
                String::from_utf8(json.to_vec()).unwrap(),
                serde_json::to_string(&message).unwrap()
            );
            message
        }
    }

    #[tokio::test]
    async fn an_empty_overview_encodes_like_the_message() {
        let f = fixture().await;
        let o = f.assert_encodings_match();
        assert!(o.endpoints.is_empty() && o.model_tps.is_empty());
        assert_eq!(o.history.len(), 60);
    }

    /// Every kind of change reaches the next read: new, renamed and deleted
    /// endpoints, counters, probe results, in-flight requests, TPS states,
    /// TPS keys of endpoints that no longer exist.
    #[tokio::test]
    async fn every_change_is_in_the_next_read() {
        let f = fixture().await;
        let c = f.endpoint("c").await;
        let a = f.endpoint("a").await;
        let b = f.endpoint("b").await;
        f.completed(a, "m1", 2);
        f.completed(b, "m2", 1);
        let o = f.assert_encodings_match();
        let names: Vec<_> = o.endpoints.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(o.model_tps.len(), 2);
        assert_eq!(o.stats.unwrap().total_requests, 3);

        f.completed(a, "m1", 5);
        f.completed(c, "m2", 1);
        let proxy = f.load.proxy_connected("p1");
        f.load.set_inflight("p1", proxy, HashMap::from([(b, 4)]));
        let generation = f.registry.get(c).unwrap().updated_at;
        f.registry
            .record_probe(
                c,
                generation,
                Ok(crate::health::ProbeOk::listed(12.5, vec!["m2".into()])),
            )
            .await
            .unwrap();
        let o = f.assert_encodings_match();
        assert_eq!(o.stats.unwrap().total_requests, 9);
        assert_eq!(o.stats.unwrap().active_requests, 4);
        assert_eq!(o.endpoints[0].total_requests, 7);
        assert_eq!(o.endpoints[2].latency_ms, Some(12.5));
        assert_eq!(o.model_tps.len(), 3);

        let renamed = EndpointChanges {
            name: Some("0-first".into()),
            ..Default::default()
        };
        f.registry.update(c, renamed).await.unwrap();
        f.registry.delete(b).await.unwrap();
        let o = f.assert_encodings_match();
        let names: Vec<_> = o.endpoints.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["0-first", "a"]);
        // b's TPS entry stays in the LoadManager until forgotten, but is not shown.
        assert!(o.model_tps.iter().all(|t| t.endpoint_id != b.to_string()));
        assert_eq!(o.model_tps.len(), 2);
        // The pieces of b are gone too.
        let pieces = f.encoder.pieces.lock();
        assert_eq!((pieces.endpoints.len(), pieces.tps.len()), (2, 2));
    }

    /// An entry's static part is encoded again only when its registry
    /// revision moves, not when its counters do.
    #[tokio::test]
    async fn static_parts_are_kept_until_the_row_changes() {
        let f = fixture().await;
        let a = f.endpoint("a").await;
        let b = f.endpoint("b").await;
        f.encoder.encode(Form::Json).unwrap();
        let piece = |id: &Uuid| {
            let pieces = f.encoder.pieces.lock();
            let piece = pieces.endpoints.iter().find(|p| p.key.1 == *id).unwrap();
            piece.json.as_ref().unwrap().0.as_ptr()
        };
        let (a_before, b_before) = (piece(&a), piece(&b));
        f.completed(b, "m1", 1);
        f.assert_encodings_match();
        assert_eq!((piece(&a), piece(&b)), (a_before, b_before));
        let generation = f.registry.get(b).unwrap().updated_at;
        f.registry
            .record_probe(
                b,
                generation,
                Ok(crate::health::ProbeOk::listed(3.0, vec!["m1".into()])),
            )
            .await
            .unwrap();
        f.assert_encodings_match();
        assert_eq!(piece(&a), a_before);
        assert_ne!(piece(&b), b_before);
    }
}
