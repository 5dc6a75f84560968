//! The stats pipeline's receiving end: the `StatsService` stream handler and
//! the single writer task that commits batches.
//!
//! Write path of a batch: the stream handler converts its records into
//! history rows, binds their INSERT and sums their counter, token,
//! per-minute and per-day changes (all of this on the handler's own task,
//! beside the writer), then hands the batch to the writer. The writer groups
//! what is queued into one transaction — insert each batch's history rows
//! (`request_id` is the key; a batch with rows already stored is done again
//! row by row, and only its new rows count), fold the new rows into the TPS
//! states, add the summed changes — commits, applies the same changes to the
//! registry cache and the LoadManager, and only then acknowledges each
//! batch. A batch that is not acknowledged is resent by its proxy; the
//! `request_id` key makes the resend a no-op, so every record is applied
//! exactly once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use llmlb_proto::v1::{stats_upload, StatsAck, StatsUpload};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::api_keys::ApiKeys;
use crate::db::daily_stats::{self, DailyTotals};
use crate::db::endpoints::{self as db_endpoints, Counters};
use crate::db::model_stats::{self, ModelState};
use crate::db::request_history::PreparedInsert;
use crate::db::request_history::{self, HistoryRow};
use crate::db::request_minutes::{self, MinuteTotals};
use crate::db::{api_keys as db_keys, Db};
use crate::load::{observe, LoadManager, Sample};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::types::{from_timestamp, minute_of, now_ms, utc_date, ModelKey};

/// Milliseconds in a UTC day.
const DAY_MS: i64 = 86_400_000;

/// Most records committed in one transaction.
const MAX_RECORDS_PER_COMMIT: usize = 20_000;

/// A batch waiting for the writer, with where its ack goes.
#[derive(Debug)]
pub struct WriteJob {
    /// The proxy's batch id, echoed in the ack.
    pub batch_id: u64,
    /// Records received (malformed ones included: they count as not applied).
    pub received: u32,
    /// The well-formed records as history rows.
    pub rows: Arc<[HistoryRow]>,
    /// Their INSERT, bound ahead.
    pub insert: PreparedInsert,
    /// Their changes, if every row is new.
    pub deltas: Deltas,
    /// The proxy's stream.
    pub ack: mpsc::Sender<Result<StatsAck, Status>>,
}

impl WriteJob {
    /// Prepares a batch for the writer: rows, INSERT, summed changes.
    pub fn new(
        batch_id: u64,
        records: &[llmlb_proto::v1::RequestRecord],
        ack: mpsc::Sender<Result<StatsAck, Status>>,
    ) -> Result<WriteJob, Status> {
        let rows: Vec<HistoryRow> = records.iter().filter_map(to_row).collect();
        let insert = request_history::prepare_insert(&rows).map_err(|e| {
            tracing::error!(error = %e, "binding stats records failed");
            Status::internal("binding stats records failed")
        })?;
        let mut deltas = Deltas::default();
        for row in &rows {
            deltas.add(row);
        }
        Ok(WriteJob {
            batch_id,
            received: records.len() as u32,
            rows: rows.into(),
            insert,
            deltas,
            ack,
        })
    }
}

/// Handle to queue batches for the writer.
#[derive(Clone, Debug)]
pub struct StatsWriter {
    tx: mpsc::Sender<WriteJob>,
}

/// What the writer needs.
#[derive(Clone, Debug)]
pub struct WriterDeps {
    /// Database.
    pub db: Db,
    /// Endpoint registry (counters).
    pub registry: Registry,
    /// LoadManager (timeline, TPS).
    pub load: LoadManager,
    /// API keys (last used).
    pub api_keys: ApiKeys,
    /// Metrics.
    pub metrics: Metrics,
}

impl StatsWriter {
    /// Starts the writer task; it drains its queue and stops after `shutdown`.
    pub fn spawn(
        deps: WriterDeps,
        shutdown: CancellationToken,
    ) -> (StatsWriter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(run_writer(deps, rx, shutdown));
        (StatsWriter { tx }, task)
    }

    /// Queues a batch (waits while the queue is full: backpressure).
    pub async fn submit(&self, job: WriteJob) -> Result<(), Status> {
        self.tx
            .send(job)
            .await
            .map_err(|_| Status::unavailable("control plane is shutting down"))
    }
}

async fn run_writer(
    deps: WriterDeps,
    mut rx: mpsc::Receiver<WriteJob>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            job = rx.recv() => job,
            _ = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut n = first.rows.len();
        let mut jobs = vec![first];
        while n < MAX_RECORDS_PER_COMMIT {
            let Ok(job) = rx.try_recv() else { break };
            n += job.rows.len();
            jobs.push(job);
        }
        commit_and_ack(&deps, jobs).await;
    }
    // Shutdown: commit what is already queued, so acked work is never lost.
    rx.close();
    let mut rest = Vec::new();
    while let Ok(job) = rx.try_recv() {
        rest.push(job);
    }
    if !rest.is_empty() {
        commit_and_ack(&deps, rest).await;
    }
    tracing::info!("stats writer stopped");
}

async fn commit_and_ack(deps: &WriterDeps, mut jobs: Vec<WriteJob>) {
    let started = Instant::now();
    match commit(deps, &mut jobs).await {
        Ok(applied) => {
            deps.metrics.observe_commit(
                started.elapsed(),
                applied.iter().map(|a| u64::from(*a)).sum(),
            );
            for (job, applied) in jobs.into_iter().zip(applied) {
                let ack = StatsAck {
                    batch_id: job.batch_id,
                    applied,
                    duplicates: job.received - applied,
                };
                // A proxy that went away resends the batch; nothing to do here.
                let _ = job.ack.send(Ok(ack)).await;
            }
        }
        Err(error) => {
            tracing::error!(%error, "committing stats failed; proxies will resend");
            for job in jobs {
                let _ = job
                    .ack
                    .send(Err(Status::unavailable("stats commit failed; resend")))
                    .await;
            }
        }
    }
}

/// Converts a wire record; `None` (logged) when its ids are malformed.
fn to_row(r: &llmlb_proto::v1::RequestRecord) -> Option<HistoryRow> {
    let (Ok(request_id), Ok(endpoint_id)) = (
        Uuid::parse_str(&r.request_id),
        Uuid::parse_str(&r.endpoint_id),
    ) else {
        tracing::warn!(request_id = %r.request_id, endpoint_id = %r.endpoint_id, "dropping stats record with a malformed id");
        return None;
    };
    let duration_ms = if r.duration_ms.is_finite() {
        r.duration_ms.max(0.0)
    } else {
        0.0
    };
    Some(HistoryRow {
        request_id,
        proxy_id: r.proxy_id.clone(),
        endpoint_id,
        model: r.model.clone(),
        api_kind: r.api_kind,
        status_code: r.status_code,
        success: r.success,
        duration_ms,
        ttft_ms: r.ttft_ms.filter(|t| t.is_finite()),
        input_tokens: r.input_tokens,
        output_tokens: r.output_tokens,
        completed_at: r
            .completed_at
            .as_ref()
            .map(from_timestamp)
            .unwrap_or_else(now_ms),
        error: r.error.clone(),
        api_key_id: r.api_key_id.clone(),
    })
}

/// A row as the model figures see it.
fn sample_of(row: &HistoryRow) -> Sample {
    Sample {
        success: row.success,
        output_tokens: row.output_tokens,
        duration_ms: row.duration_ms,
    }
}

/// A row's endpoint × model × API kind.
fn key_of(row: &HistoryRow) -> ModelKey {
    ModelKey {
        endpoint_id: row.endpoint_id,
        model: row.model.clone(),
        api_kind: row.api_kind,
    }
}

/// What rows change besides the history table and the TPS states: sums
/// that add up in any order, so each batch's are made by its stream handler
/// and the writer merges them.
#[derive(Debug, Default)]
pub struct Deltas {
    counters: HashMap<Uuid, Counters>,
    minutes: HashMap<i64, MinuteTotals>,
    /// Keyed by UTC day number (days since the epoch); the date string is
    /// formatted once per day and key at write time, not per record.
    daily: HashMap<(i64, ModelKey), DailyTotals>,
    keys_used: HashMap<String, i64>,
}

impl Deltas {
    fn add(&mut self, row: &HistoryRow) {
        let ok = u64::from(row.success);
        let sample = sample_of(row);
        let c = self.counters.entry(row.endpoint_id).or_default();
        c.add(&Counters {
            total_requests: 1,
            successful_requests: ok,
            failed_requests: 1 - ok,
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
        });
        let minute = minute_of(row.completed_at);
        self.minutes.entry(minute).or_default().add(&MinuteTotals {
            success: ok,
            failure: 1 - ok,
            total_duration_ms: row.duration_ms,
        });
        let eligible = sample.tps_eligible();
        self.daily
            .entry((row.completed_at.div_euclid(DAY_MS), key_of(row)))
            .or_default()
            .add(&DailyTotals {
                total_requests: 1,
                successful_requests: ok,
                failed_requests: 1 - ok,
                input_tokens: row.input_tokens,
                output_tokens: if eligible { row.output_tokens } else { 0 },
                duration_ms: if eligible { row.duration_ms } else { 0.0 },
            });
        if let Some(id) = &row.api_key_id {
            let at = self.keys_used.entry(id.clone()).or_insert(row.completed_at);
            *at = (*at).max(row.completed_at);
        }
    }

    fn merge(&mut self, other: Deltas) {
        if self.counters.is_empty() {
            *self = other;
            return;
        }
        for (k, v) in other.counters {
            self.counters.entry(k).or_default().add(&v);
        }
        for (k, v) in other.minutes {
            self.minutes.entry(k).or_default().add(&v);
        }
        for (k, v) in other.daily {
            self.daily.entry(k).or_default().add(&v);
        }
        for (k, at) in other.keys_used {
            let e = self.keys_used.entry(k).or_insert(at);
            *e = (*e).max(at);
        }
    }
}

/// New TPS states of a commit: its new rows folded, in order, into the
/// states so far — only for endpoints that still exist (no ghost entries);
/// the registry is asked once per key and commit, not per record.
#[derive(Debug, Default)]
struct Models(HashMap<ModelKey, ModelState>);

impl Models {
    fn add(&mut self, row: &HistoryRow, registry: &Registry, load: &LoadManager) {
        let (sample, key) = (sample_of(row), key_of(row));
        if let Some(state) = self.0.get_mut(&key) {
            observe(state, sample);
        } else if registry.contains(&row.endpoint_id) {
            let mut state = load.model_state(&key).unwrap_or_default();
            observe(&mut state, sample);
            self.0.insert(key, state);
        }
    }
}

/// Commits the batches in one transaction; returns how many records of
/// each were applied (new).
///
/// While SQLite inserts the rows, another thread merges the batches' sums
/// and folds the TPS states as if every row were new (the usual case); if
/// some were stored already, that work is redone for the new rows only.
async fn commit(deps: &WriterDeps, jobs: &mut [WriteJob]) -> Result<Vec<u32>, sqlx::Error> {
    let sums: Vec<(Deltas, Arc<[HistoryRow]>)> = jobs
        .iter_mut()
        .map(|j| (std::mem::take(&mut j.deltas), j.rows.clone()))
        .collect();
    let (registry, load) = (deps.registry.clone(), deps.load.clone());
    let all_new = tokio::task::spawn_blocking(move || {
        let mut deltas = Deltas::default();
        let mut models = Models::default();
        for (d, rows) in sums {
            deltas.merge(d);
            for row in rows.iter() {
                models.add(row, &registry, &load);
            }
        }
        (deltas, models)
    });

    let mut tx = deps.db.write.begin().await?;
    let mut flags = Vec::with_capacity(jobs.len());
    for job in jobs.iter_mut() {
        let insert = std::mem::take(&mut job.insert);
        flags.push(request_history::insert_prepared(&mut tx, &job.rows, insert).await?);
    }
    let (mut deltas, mut models) = all_new
        .await
        .map_err(|e| sqlx::Error::Protocol(format!("summing a stats commit failed: {e}")))?;
    if !flags.iter().flatten().all(|n| *n) {
        // Some rows were stored already: only the new ones count.
        deltas = Deltas::default();
        models = Models::default();
        for (job, new) in jobs.iter().zip(&flags) {
            for (row, _) in job.rows.iter().zip(new).filter(|(_, n)| **n) {
                deltas.add(row);
                models.add(row, &deps.registry, &deps.load);
            }
        }
    }
    let applied = flags
        .iter()
        .map(|new| new.iter().filter(|n| **n).count() as u32)
        .collect();
    let models = models.0;
    // One statement per ≤500 keys, not one per key: each statement is a
    // round trip to sqlx's SQLite thread.
    let counters: Vec<_> = deltas.counters.iter().map(|(id, c)| (*id, c)).collect();
    db_endpoints::add_counters_many(&mut tx, &counters).await?;
    for (minute, m) in &deltas.minutes {
        request_minutes::add(&mut tx, *minute, m).await?;
    }
    let dates: HashMap<i64, String> = deltas
        .daily
        .keys()
        .map(|(day, _)| (*day, utc_date(day * DAY_MS)))
        .collect();
    let daily: Vec<_> = deltas
        .daily
        .iter()
        .map(|((day, key), d)| (dates[day].as_str(), key, d))
        .collect();
    daily_stats::add_many(&mut tx, &daily).await?;
    let now = now_ms();
    let model_rows: Vec<_> = models.iter().collect();
    model_stats::put_many(&mut tx, &model_rows, now).await?;
    for (id, at) in &deltas.keys_used {
        db_keys::touch(&mut tx, id, *at).await?;
    }
    tx.commit().await?;

    deps.registry.apply_counters(&deltas.counters);
    deps.load
        .apply_committed(&deltas.minutes, &models, minute_of(now));
    deps.api_keys
        .touched(&deltas.keys_used.into_iter().collect::<Vec<_>>());
    Ok(applied)
}

// === impl StatsService ===

/// The proxy-facing `StatsService`.
#[derive(Clone, Debug)]
pub struct StatsService {
    /// Where batches go.
    pub writer: StatsWriter,
    /// In-flight gauges and connected proxies.
    pub load: LoadManager,
    /// Ends every stream at shutdown.
    pub shutdown: CancellationToken,
}

#[tonic::async_trait]
impl llmlb_proto::v1::stats_service_server::StatsService for StatsService {
    type StreamStatsStream = ReceiverStream<Result<StatsAck, Status>>;

    async fn stream_stats(
        &self,
        request: Request<Streaming<StatsUpload>>,
    ) -> Result<Response<Self::StreamStatsStream>, Status> {
        let mut inbound = request.into_inner();
        let proxy_id = match inbound.message().await?.and_then(|m| m.kind) {
            Some(stats_upload::Kind::Hello(h)) if !h.proxy_id.is_empty() => h.proxy_id,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a hello with a proxy id",
                ))
            }
        };
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            let conn = this.load.proxy_connected(&proxy_id);
            tracing::info!(%proxy_id, "proxy connected");
            loop {
                let msg = tokio::select! {
                    msg = inbound.message() => msg,
                    _ = this.shutdown.cancelled() => break,
                };
                let kind = match msg {
                    Ok(Some(m)) => m.kind,
                    Ok(None) => break,
                    Err(status) => {
                        // E.g. a message over the size limit (OUT_OF_RANGE):
                        // the proxy gets the reason instead of a silent end.
                        tracing::debug!(%proxy_id, %status, "stats stream error");
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                match kind {
                    Some(stats_upload::Kind::Batch(b)) => {
                        // CPU work of a millisecond or so: on the blocking pool,
                        // so the runtime's threads stay free for dashboard reads.
                        let ack = tx.clone();
                        let prepared = tokio::task::spawn_blocking(move || {
                            WriteJob::new(b.batch_id, &b.records, ack)
                        })
                        .await
                        .unwrap_or_else(|e| Err(Status::internal(e.to_string())));
                        let job = match prepared {
                            Ok(job) => job,
                            Err(status) => {
                                let _ = tx.send(Err(status)).await;
                                break;
                            }
                        };
                        if this.writer.submit(job).await.is_err() {
                            break;
                        }
                    }
                    Some(stats_upload::Kind::Inflight(r)) => {
                        let map = r
                            .by_endpoint
                            .into_iter()
                            .filter_map(|(id, n)| Some((Uuid::parse_str(&id).ok()?, n)))
                            .filter(|(_, n)| *n > 0)
                            .collect();
                        // Cool-downs are reported as time left, so that the
                        // proxy's clock does not matter; at most 60 s.
                        let now = crate::types::now_ms();
                        let cooling = r
                            .cooldown_ms
                            .into_iter()
                            .filter_map(|(id, ms)| Some((Uuid::parse_str(&id).ok()?, ms)))
                            .filter(|(_, ms)| *ms > 0)
                            .map(|(id, ms)| (id, now.saturating_add(ms.min(60_000) as i64)))
                            .collect();
                        this.load.set_report(&proxy_id, conn, map, cooling);
                    }
                    Some(stats_upload::Kind::Hello(_)) | None => {}
                }
            }
            this.load.proxy_disconnected(&proxy_id, conn);
            tracing::info!(%proxy_id, "proxy disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
