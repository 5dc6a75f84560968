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
//!
//! What a record may say is checked here, once ([`Admission`]):
//! - **Tokens**: at most [`MAX_TOKENS_PER_RECORD`] (2^40) input or output
//!   tokens per record; a larger count is stored as 0 (the request still
//!   counts). Every sum is saturating, so no stored figure can overflow.
//! - **Duration**: finite, 0 ..= 30 days; anything else is stored as 0.
//! - **Minute** (the timeline, the average response time, the daily row):
//!   the proxy's completion time, clamped to the control plane's receive
//!   time when it lies in the future. The live path and the restore both
//!   read the stored time, so a proxy whose clock runs ahead moves the same
//!   minute in a control plane that restarted and in one that did not.
//! - **Age**: a record whose id (UUIDv7: the proxy's receive time) is older
//!   than `--history-retention` is refused (acknowledged, not applied). The
//!   pruner only deletes rows whose id is older than the retention, so any
//!   record it may have deleted is refused if resent: the dedup window
//!   always covers what a proxy may still resend. (A proxy whose clock lags
//!   the control plane's by more than the retention has all its records
//!   refused; the refusal metric shows it.)
//!
//! Every value changed or record refused is counted in
//! `llmlb_control_stats_values_rejected_total{reason}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt as _;
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

/// Most input or output tokens one record may carry (2^40, about 1.1e12:
/// far above any context window, far below what 20,000 records per commit
/// could overflow). Larger counts are stored as 0.
pub const MAX_TOKENS_PER_RECORD: u64 = 1 << 40;

/// Longest duration one record may carry (30 days).
const MAX_DURATION_MS: f64 = 30.0 * DAY_MS as f64;

/// How records are admitted: the control plane's receive time and the
/// history retention.
#[derive(Clone, Copy, Debug)]
pub struct Admission {
    /// When the batch was received (Unix ms, control plane clock).
    pub now: crate::types::UnixMs,
    /// `--history-retention` in ms.
    pub retention_ms: i64,
}

/// Values a batch's records carried that were not taken as they came.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rejected {
    /// Records with a malformed request or endpoint id (dropped).
    pub malformed_id: u32,
    /// Token counts over [`MAX_TOKENS_PER_RECORD`] (stored as 0).
    pub tokens: u32,
    /// Durations that are not finite or out of 0 ..= 30 days (stored as 0).
    pub duration: u32,
    /// Completion times in the future (clamped to the receive time).
    pub future_completion: u32,
    /// Records older than the retention (refused).
    pub older_than_retention: u32,
}

impl Rejected {
    /// `(reason, count)` pairs, for the metric.
    pub fn by_reason(&self) -> [(&'static str, u32); 5] {
        [
            ("malformed_id", self.malformed_id),
            ("tokens", self.tokens),
            ("duration", self.duration),
            ("future_completion", self.future_completion),
            ("older_than_retention", self.older_than_retention),
        ]
    }
}

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
    pub ack: AckTx,
}

/// Where a stream's acks go. The writer never waits on it: a stream whose
/// ack queue is full (its client does not read) is closed instead.
#[derive(Clone, Debug)]
pub struct AckTx {
    /// The stream's replies.
    pub tx: mpsc::Sender<Result<StatsAck, Status>>,
    /// Cancelled to close the stream.
    pub close: CancellationToken,
}

impl AckTx {
    /// Queues `reply` without waiting; closes the stream when its queue is
    /// full. Its records stay committed: the proxy resends what it did not
    /// see acknowledged, and deduplication makes that a no-op.
    fn send_now(&self, reply: Result<StatsAck, Status>) {
        match self.tx.try_send(reply) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.close.is_cancelled() {
                    tracing::warn!("a stats stream does not read its acknowledgements; closing it");
                }
                self.close.cancel();
            }
        }
    }
}

impl WriteJob {
    /// Prepares a batch for the writer: rows, INSERT, summed changes.
    pub fn new(
        batch_id: u64,
        records: &[llmlb_proto::v1::RequestRecord],
        ack: AckTx,
        admission: Admission,
    ) -> Result<(WriteJob, Rejected), Status> {
        let mut rejected = Rejected::default();
        let rows: Vec<HistoryRow> = records
            .iter()
            .filter_map(|r| to_row(r, admission, &mut rejected))
            .collect();
        let insert = request_history::prepare_insert(&rows).map_err(|e| {
            tracing::error!(error = %e, "binding stats records failed");
            Status::internal("binding stats records failed")
        })?;
        let mut deltas = Deltas::default();
        for row in &rows {
            deltas.add(row);
        }
        let job = WriteJob {
            batch_id,
            received: records.len() as u32,
            rows: rows.into(),
            insert,
            deltas,
            ack,
        };
        Ok((job, rejected))
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
                job.ack.send_now(Ok(ack));
            }
        }
        Err(error) => {
            tracing::error!(%error, "committing stats failed; proxies will resend");
            for job in jobs {
                job.ack
                    .send_now(Err(Status::unavailable("stats commit failed; resend")));
            }
        }
    }
}

/// Converts a wire record by the rules of the module doc; `None` (logged)
/// when its ids are malformed or it is older than the retention.
fn to_row(
    r: &llmlb_proto::v1::RequestRecord,
    admission: Admission,
    rejected: &mut Rejected,
) -> Option<HistoryRow> {
    let (Ok(request_id), Ok(endpoint_id)) = (
        Uuid::parse_str(&r.request_id),
        Uuid::parse_str(&r.endpoint_id),
    ) else {
        tracing::warn!(request_id = %r.request_id, endpoint_id = %r.endpoint_id, "dropping stats record with a malformed id");
        rejected.malformed_id += 1;
        return None;
    };
    if request_history::id_time_ms(&request_id)
        < admission.now.saturating_sub(admission.retention_ms)
    {
        tracing::warn!(request_id = %r.request_id, proxy_id = %r.proxy_id, "refusing a stats record older than the history retention (is the proxy's clock behind?)");
        rejected.older_than_retention += 1;
        return None;
    }
    let duration_ms = if (0.0..=MAX_DURATION_MS).contains(&r.duration_ms) {
        r.duration_ms
    } else {
        rejected.duration += 1;
        0.0
    };
    let mut tokens = |n: u64| {
        if n > MAX_TOKENS_PER_RECORD {
            rejected.tokens += 1;
            0
        } else {
            n
        }
    };
    let (input_tokens, output_tokens) = (tokens(r.input_tokens), tokens(r.output_tokens));
    let completed_at = match r.completed_at.as_ref().map(from_timestamp) {
        Some(at) if at > admission.now => {
            rejected.future_completion += 1;
            admission.now
        }
        Some(at) => at,
        None => admission.now,
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
        input_tokens,
        output_tokens,
        completed_at,
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
    // Endpoints deleted since the states were folded (the fold asked the
    // registry before this transaction began): their rows must not be
    // written back, or a deleted endpoint's TPS would come back at boot.
    // Deletes go through this same connection, so inside the transaction
    // the answer cannot change.
    let mut models = models.0;
    let ids: std::collections::HashSet<Uuid> = models.keys().map(|k| k.endpoint_id).collect();
    if !ids.is_empty() {
        let ids: Vec<Uuid> = ids.into_iter().collect();
        let stored = db_endpoints::existing(&mut tx, &ids).await?;
        models.retain(|k, _| stored.contains(&k.endpoint_id));
    }
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
    /// Counts the values records were refused or changed for.
    pub metrics: Metrics,
    /// `--history-retention`: older records are refused.
    pub retention: std::time::Duration,
}

#[tonic::async_trait]
impl llmlb_proto::v1::stats_service_server::StatsService for StatsService {
    type StreamStatsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<StatsAck, Status>> + Send>>;

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
        // 64 replies: twice what a proxy keeps unacknowledged. A client that
        // lets them pile up is closed (see `AckTx`), never waited for.
        let (tx, rx) = mpsc::channel(64);
        let close = CancellationToken::new();
        let ack = AckTx {
            tx: tx.clone(),
            close: close.clone(),
        };
        let retention_ms = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        let this = self.clone();
        let closed = close.clone();
        tokio::spawn(async move {
            let conn = this.load.proxy_connected(&proxy_id);
            tracing::info!(%proxy_id, "proxy connected");
            loop {
                let msg = tokio::select! {
                    msg = inbound.message() => msg,
                    _ = this.shutdown.cancelled() => break,
                    _ = closed.cancelled() => break,
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
                        let ack = ack.clone();
                        let admission = Admission {
                            now: now_ms(),
                            retention_ms,
                        };
                        let prepared = tokio::task::spawn_blocking(move || {
                            WriteJob::new(b.batch_id, &b.records, ack, admission)
                        })
                        .await
                        .unwrap_or_else(|e| Err(Status::internal(e.to_string())));
                        let job = match prepared {
                            Ok((job, rejected)) => {
                                this.metrics.count_rejected(&rejected);
                                job
                            }
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
        let replies = ReceiverStream::new(rx).take_until(close.cancelled_owned());
        Ok(Response::new(Box::pin(replies)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{endpoints as stored_endpoints, test_db};
    use crate::events::Events;
    use crate::registry::NewEndpoint;
    use llmlb_proto::v1::RequestRecord;

    async fn deps() -> (WriterDeps, tempfile::TempDir) {
        let (db, dir) = test_db().await;
        let events = Events::default();
        let registry = Registry::load(db.clone(), events.clone()).await.unwrap();
        let api_keys = ApiKeys::load(db.clone(), events.clone()).await.unwrap();
        let deps = WriterDeps {
            db,
            registry,
            load: LoadManager::new(events),
            api_keys,
            metrics: Metrics::default(),
        };
        (deps, dir)
    }

    async fn endpoint(deps: &WriterDeps) -> Uuid {
        let new = NewEndpoint {
            name: "e".into(),
            base_url: "http://127.0.0.1:9".into(),
            api_key: None,
            models: vec!["m".into()],
            health_path: None,
        };
        deps.registry.create(new).await.unwrap().id
    }

    fn wire(endpoint_id: Uuid, completed_at: i64, input: u64, output: u64) -> RequestRecord {
        RequestRecord {
            request_id: Uuid::now_v7().to_string(),
            proxy_id: "p".into(),
            endpoint_id: endpoint_id.to_string(),
            model: "m".into(),
            api_kind: 1,
            status_code: 200,
            success: true,
            duration_ms: 1000.0,
            ttft_ms: None,
            input_tokens: input,
            output_tokens: output,
            completed_at: Some(crate::types::timestamp(completed_at)),
            error: None,
            api_key_id: None,
        }
    }

    fn job(records: &[RequestRecord], now: i64) -> (WriteJob, Rejected) {
        let (tx, rx) = mpsc::channel(64);
        std::mem::forget(rx);
        let ack = AckTx {
            tx,
            close: CancellationToken::new(),
        };
        let admission = Admission {
            now,
            retention_ms: 7 * DAY_MS,
        };
        WriteJob::new(1, records, ack, admission).unwrap()
    }

    /// A backend reporting `prompt_tokens: i64::MAX` on two requests: the
    /// counts over the bound are stored as 0 (and counted), the requests
    /// still count, and every figure reads back at the next boot.
    #[tokio::test]
    async fn absurd_token_counts_are_refused_and_boot_still_reads_everything() {
        let (deps, _dir) = deps().await;
        let e = endpoint(&deps).await;
        let now = now_ms();
        let huge = i64::MAX as u64;
        let records = [wire(e, now, huge, 5), wire(e, now, huge, huge)];
        let (mut job, rejected) = job(&records, now);
        assert_eq!(rejected.tokens, 3);
        assert_eq!(
            commit(&deps, std::slice::from_mut(&mut job)).await.unwrap(),
            [2]
        );
        let stored = stored_endpoints::load_all(&deps.db.read).await.unwrap();
        let c = stored[0].counters;
        assert_eq!(
            (c.total_requests, c.input_tokens, c.output_tokens),
            (2, 0, 5)
        );
        let report =
            crate::restore::restore(&deps.db, &LoadManager::new(Events::default()), now).await;
        assert!(report.failed_steps.is_empty(), "{report:?}");
    }

    /// Sums past 2^63 saturate in SQL and in memory; a REAL or negative
    /// value left in a counter column (by an older version, or by hand)
    /// reads as saturated / 0 with a warning instead of stopping boot.
    #[tokio::test]
    async fn stored_sums_saturate_and_any_stored_value_boots() {
        let (deps, _dir) = deps().await;
        let e = endpoint(&deps).await;
        let big = Counters {
            total_requests: 1,
            input_tokens: u64::MAX / 2 + 7,
            ..Default::default()
        };
        let mut conn = deps.db.write.acquire().await.unwrap();
        for _ in 0..3 {
            stored_endpoints::add_counters(&mut conn, e, &big)
                .await
                .unwrap();
        }
        // Saturated in SQL, still an INTEGER (an overflowing `+` would
        // have turned the column REAL).
        let (kind, value): (String, i64) = sqlx::query_as(
            "SELECT typeof(total_input_tokens), CAST(total_input_tokens AS INTEGER) FROM endpoints",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!((kind.as_str(), value), ("integer", i64::MAX));
        let now = now_ms();
        let minute = crate::types::minute_of(now);
        for (sql, bind) in [
            (
                "UPDATE endpoints SET total_output_tokens = 1.5e19, failed_requests = -4",
                None,
            ),
            (
                "INSERT INTO request_minutes VALUES (?, 1.5e19, -3, 10.0)",
                Some(minute),
            ),
            (
                "INSERT INTO model_stats VALUES (?, 'm', 1, 1.5e19, -2, 3.0, 0)",
                None,
            ),
        ] {
            let mut q = sqlx::query(sql);
            if sql.contains("model_stats") {
                q = q.bind(e.to_string());
            } else if let Some(m) = bind {
                q = q.bind(m);
            }
            q.execute(&mut *conn).await.unwrap();
        }
        drop(conn);
        let again = Registry::load(deps.db.clone(), Events::default())
            .await
            .expect("boot reads any stored value");
        let c = again.get(e).unwrap().counters;
        assert_eq!(c.input_tokens, i64::MAX as u64);
        assert_eq!(c.output_tokens, i64::MAX as u64);
        assert_eq!((c.total_requests, c.failed_requests), (3, 0));
        let load = LoadManager::new(Events::default());
        let report = crate::restore::restore(&deps.db, &load, now).await;
        assert!(report.failed_steps.is_empty(), "{report:?}");
        let last = load.history(minute)[59].1;
        assert_eq!((last.success, last.failure), (i64::MAX as u64, 0));
    }

    /// One rule for a record's minute, live and restored: a completion time
    /// in the future is clamped to the receive time, so the record shows in
    /// the current minute at once, and the same after a restart.
    #[tokio::test]
    async fn a_future_completion_counts_in_the_receive_minute_live_and_restored() {
        let (deps, _dir) = deps().await;
        let e = endpoint(&deps).await;
        let now = now_ms();
        let minute = crate::types::minute_of(now);
        let (mut job, rejected) = job(&[wire(e, now + 10 * 60_000, 1, 1)], now);
        assert_eq!(rejected.future_completion, 1);
        commit(&deps, std::slice::from_mut(&mut job)).await.unwrap();
        let live = deps.load.history(minute);
        assert_eq!(live[59].1.success, 1, "live: the receive minute");
        let restored = LoadManager::new(Events::default());
        crate::restore::restore(&deps.db, &restored, now).await;
        assert_eq!(restored.history(minute), live);
        assert_eq!(
            restored.average_response_time(minute),
            deps.load.average_response_time(minute)
        );
    }

    /// A record older than the retention (by its id: the proxy's receive
    /// time) is refused, so the pruner can never have deleted a record that
    /// is then applied again.
    #[test]
    fn records_older_than_the_retention_are_refused() {
        let now = now_ms();
        let e = Uuid::new_v4();
        let mut old = wire(e, now, 1, 1);
        old.request_id = crate::db::request_history::v7_at(now - 8 * DAY_MS).to_string();
        let fresh = wire(e, now, 1, 1);
        let (job, rejected) = job(&[old, fresh], now);
        assert_eq!(job.rows.len(), 1);
        assert_eq!(rejected.older_than_retention, 1);
    }

    /// Deleting an endpoint while a commit for it is in flight (its TPS
    /// state folded before the delete, written after it) leaves no
    /// `model_stats` row behind to be restored at every boot.
    #[tokio::test]
    async fn a_commit_racing_a_delete_leaves_no_model_stats() {
        let (deps, _dir) = deps().await;
        let e = endpoint(&deps).await;
        let now = now_ms();
        let (mut job, _) = job(&[wire(e, now, 1, 10)], now);
        // The delete lands in the database between the fold (which still
        // finds the endpoint in the registry) and the writer's transaction.
        stored_endpoints::delete(&deps.db.write, e).await.unwrap();
        commit(&deps, std::slice::from_mut(&mut job)).await.unwrap();
        let rows = crate::db::model_stats::load_all(&deps.db.read)
            .await
            .unwrap();
        assert!(rows.is_empty(), "{rows:?}");
    }

    /// The writer never waits for a stream's acks: a full ack queue closes
    /// that stream instead.
    #[test]
    fn a_full_ack_queue_closes_its_stream_without_waiting() {
        let (tx, _rx) = mpsc::channel(1);
        let ack = AckTx {
            tx,
            close: CancellationToken::new(),
        };
        let reply = || {
            Ok(StatsAck {
                batch_id: 1,
                applied: 1,
                duplicates: 0,
            })
        };
        ack.send_now(reply());
        assert!(!ack.close.is_cancelled());
        ack.send_now(reply());
        assert!(ack.close.is_cancelled());
    }
}
