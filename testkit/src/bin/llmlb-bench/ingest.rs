//! Workload 3: stats ingest. Simulated proxies speak
//! `llmlb.v1.StatsService/StreamStats` exactly as `llmlb-proxy` does — one
//! HTTP/2 connection each, `Hello`, then `StatsBatch`es of 512 records with
//! fresh UUIDv7 ids, up to 16 batches unacknowledged (the proxy's window) —
//! into one control plane with a file-backed database.
//!
//! Baseline, same run: the same rows inserted straight into a copy of the
//! same database with the statement shape, transaction size and pragmas the
//! control plane uses (the SQLite floor of the write path).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use llmlb_proto::v1 as pb;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use crate::procs::{cpu_time, rss_kib, Interference, Profile, RssPeak};
use crate::report::{Section, Table};
use crate::samples::{count, mib, ms, rate, ratio, us, Samples};
use crate::seed::{self, Spec};
use crate::{ControlPlane, Ctx, Fake};

/// Records per batch (the proxy's `MAX_BATCH`).
pub const BATCH: usize = 512;
/// Unacknowledged batches per stream (the proxy's `WINDOW`).
pub const WINDOW: usize = 32;
/// Goal: records committed per second.
const GOAL_RATE: f64 = 100_000.0;
/// Models per seeded endpoint.
pub const MODELS: usize = 4;
/// Seeded endpoints.
pub const ENDPOINTS: usize = 1000;

/// Makes records like a proxy's, spread over the seeded endpoints × models.
pub struct RecordGen {
    proxy_id: String,
    endpoints: Vec<String>,
    models: Vec<String>,
    n: u64,
}

impl RecordGen {
    /// Records of proxy `idx`.
    pub fn new(idx: usize) -> RecordGen {
        RecordGen {
            proxy_id: format!("bench-sim-{idx}"),
            endpoints: (0..ENDPOINTS).map(seed::endpoint_id).collect(),
            models: (0..MODELS).map(seed::model).collect(),
            n: idx as u64 * 7919,
        }
    }

    /// The next record, completed now.
    pub fn record(&mut self) -> pb::RequestRecord {
        let i = self.n;
        self.n += 1;
        let ok = i % 50 != 7;
        let e = self.endpoints.len() as u64;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        pb::RequestRecord {
            request_id: Uuid::now_v7().to_string(),
            proxy_id: self.proxy_id.clone(),
            endpoint_id: self.endpoints[(i % e) as usize].clone(),
            model: self.models[((i / e) % self.models.len() as u64) as usize].clone(),
            api_kind: pb::ApiKind::ChatCompletions as i32,
            status_code: if ok { 200 } else { 502 },
            success: ok,
            duration_ms: 100.0 + (i % 900) as f64,
            ttft_ms: Some(20.0),
            input_tokens: 30,
            output_tokens: if ok { 20 + i % 180 } else { 0 },
            completed_at: Some(pbjson_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: now.subsec_nanos() as i32,
            }),
            error: (!ok).then(|| "upstream answered 502".into()),
            api_key_id: None,
        }
    }

    /// `n` records.
    pub fn batch(&mut self, n: usize) -> Vec<pb::RequestRecord> {
        (0..n).map(|_| self.record()).collect()
    }
}

/// What a set of simulated proxies achieved.
#[derive(Debug, Default)]
pub struct Drive {
    /// Records acknowledged as applied for the first time.
    pub applied: u64,
    /// Records acknowledged as duplicates.
    pub duplicates: u64,
    /// Start → last ack.
    pub elapsed: Duration,
    /// Batch sent → its ack.
    pub acks: Samples,
}

impl Drive {
    /// Applied records per second.
    pub fn rate(&self) -> f64 {
        self.applied as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct OneProxy {
    applied: u64,
    duplicates: u64,
    last_ack: Instant,
    acks: Samples,
}

async fn one_proxy(url: String, idx: usize, stop_at: Instant) -> Result<OneProxy> {
    use pb::stats_upload::Kind;
    let channel = tonic::transport::Endpoint::from_shared(url)?
        .connect()
        .await
        .context("connect to the control plane")?;
    let mut client = pb::stats_service_client::StatsServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(WINDOW + 1);
    let mut records = RecordGen::new(idx);
    tx.send(pb::StatsUpload {
        kind: Some(Kind::Hello(pb::StatsHello {
            proxy_id: records.proxy_id.clone(),
        })),
    })
    .await?;
    let mut acks = client
        .stream_stats(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut out = OneProxy {
        applied: 0,
        duplicates: 0,
        last_ack: Instant::now(),
        acks: Samples::default(),
    };
    let mut pending: HashMap<u64, Instant> = HashMap::new();
    let mut next_id = 1;
    loop {
        while pending.len() < WINDOW && Instant::now() < stop_at {
            let batch = pb::StatsBatch {
                batch_id: next_id,
                records: records.batch(BATCH),
            };
            pending.insert(next_id, Instant::now());
            tx.send(pb::StatsUpload {
                kind: Some(Kind::Batch(batch)),
            })
            .await?;
            next_id += 1;
        }
        if pending.is_empty() {
            break;
        }
        let ack = tokio::time::timeout(Duration::from_secs(60), acks.message())
            .await
            .context("no ack within 60 s")??
            .context("the control plane ended the stats stream")?;
        let Some(sent) = pending.remove(&ack.batch_id) else {
            bail!("ack for unknown batch {}", ack.batch_id);
        };
        out.acks.push(sent.elapsed());
        out.applied += u64::from(ack.applied);
        out.duplicates += u64::from(ack.duplicates);
        out.last_ack = Instant::now();
    }
    Ok(out)
}

/// Runs `proxies` simulated proxies against `url` for `run`, then waits for
/// the outstanding acks.
pub async fn drive(url: &str, proxies: usize, run: Duration) -> Result<Drive> {
    let start = Instant::now();
    let stop_at = start + run;
    let tasks: Vec<_> = (0..proxies)
        .map(|i| tokio::spawn(one_proxy(url.to_string(), i, stop_at)))
        .collect();
    let mut d = Drive::default();
    let mut last = start;
    for t in tasks {
        let p = t.await??;
        d.applied += p.applied;
        d.duplicates += p.duplicates;
        d.acks.extend(p.acks);
        last = last.max(p.last_ack);
    }
    d.elapsed = last - start;
    Ok(d)
}

/// Total requests the control plane counts (GetStats).
pub async fn total_requests(url: &str) -> Result<u64> {
    let mut c = pb::dashboard_service_client::DashboardServiceClient::new(
        tonic::transport::Endpoint::from_shared(url.to_string())?
            .connect()
            .await?,
    );
    Ok(c.get_stats(pb::GetStatsRequest {})
        .await?
        .into_inner()
        .total_requests)
}

// === baseline ===

/// Rows per INSERT statement and per transaction, as in the control plane
/// (`db/request_history.rs`, `ingest.rs`).
const ROWS_PER_STATEMENT: usize = 500;
const ROWS_PER_COMMIT: usize = 20_000;

/// Inserts generated rows into `db` for about `run` with the control plane's
/// statement shape (with or without `RETURNING`); returns the rows inserted
/// and the database time it took.
async fn raw_insert(db: &Path, run: Duration, returning: bool) -> Result<(u64, Duration)> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))?
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    let mut conn = SqliteConnection::connect_with(&options).await?;
    let mut records = RecordGen::new(99);
    let mut rows = 0u64;
    let mut db_time = Duration::ZERO;
    let started = Instant::now();
    while started.elapsed() < run {
        let batch = records.batch(ROWS_PER_COMMIT);
        let t = Instant::now();
        let mut tx = conn.begin().await?;
        for chunk in batch.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO request_history (request_id, proxy_id, endpoint_id, model, api_kind, \
                 status_code, success, duration_ms, ttft_ms, input_tokens, output_tokens, \
                 completed_at, error, api_key_id) ",
            );
            q.push_values(chunk, |mut b, r| {
                let id = Uuid::parse_str(&r.request_id).unwrap_or_default();
                let at = r
                    .completed_at
                    .as_ref()
                    .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
                    .unwrap_or(0);
                b.push_bind(id.as_bytes().to_vec())
                    .push_bind(r.proxy_id.clone())
                    .push_bind(r.endpoint_id.clone())
                    .push_bind(r.model.clone())
                    .push_bind(r.api_kind)
                    .push_bind(i64::from(r.status_code))
                    .push_bind(r.success)
                    .push_bind(r.duration_ms)
                    .push_bind(r.ttft_ms)
                    .push_bind(r.input_tokens as i64)
                    .push_bind(r.output_tokens as i64)
                    .push_bind(at)
                    .push_bind(r.error.clone())
                    .push_bind(r.api_key_id.clone());
            });
            q.push(" ON CONFLICT (request_id) DO NOTHING");
            if returning {
                q.push(" RETURNING request_id");
                let ids: Vec<(Vec<u8>,)> = q.build_query_as().fetch_all(&mut *tx).await?;
                rows += ids.len() as u64;
            } else {
                rows += q.build().execute(&mut *tx).await?.rows_affected();
            }
        }
        tx.commit().await?;
        db_time += t.elapsed();
    }
    conn.close().await?;
    Ok((rows, db_time))
}

// === the workload ===

/// One measured ingest run.
struct Run {
    proxies: usize,
    drive: Drive,
    counted: u64,
    cpu: Duration,
    rss_idle: u64,
    rss_peak: u64,
    other_load: f64,
}

/// Starts a control plane on a fresh copy of `seeded`, lets its first
/// health probes settle, and returns it.
pub fn start_on_copy(ctx: &Ctx, seeded: &Path, name: &str) -> Result<ControlPlane> {
    let db = ctx.path(&format!("{name}.db"));
    seed::copy_db(seeded, &db)?;
    let cp = ControlPlane::start(ctx, &db, &format!("{name}.log"), &[])?;
    std::thread::sleep(Duration::from_secs(2));
    Ok(cp)
}

/// Seeds the database the ingest and dashboard workloads start from:
/// 1,000 endpoints × 4 models (all with TPS state) and 100,000 history rows.
pub fn seed_base(ctx: &Ctx, fake: &Fake) -> Result<std::path::PathBuf> {
    let seeded = ctx.path("ingest-seed.db");
    seed::create(
        ctx,
        &seeded,
        &Spec {
            endpoints: ENDPOINTS,
            models: MODELS,
            rows: 100_000,
            base_url: fake.url.clone(),
            prune_history: false,
        },
    )?;
    Ok(seeded)
}

/// The health-probe backend: serves the seeded models.
pub fn probe_backend(ctx: &Ctx, log: &str) -> Result<Fake> {
    let models = (0..MODELS).map(seed::model).collect::<Vec<_>>().join(",");
    Fake::start(ctx, log, &["--models", &models])
}

/// Runs the workload.
pub fn run(ctx: &mut Ctx) -> Result<Section> {
    let rt = crate::runtime()?;
    let fake = probe_backend(ctx, "ingest-fake.log")?;
    let seeded = seed_base(ctx, &fake)?;
    let secs = ctx.scale.ingest_run;

    let mut raw = Vec::new();
    for returning in [false, true] {
        let raw_db = ctx.path("ingest-raw.db");
        seed::copy_db(&seeded, &raw_db)?;
        let (rows, took) = rt.block_on(raw_insert(&raw_db, secs, returning))?;
        seed::remove_db(&raw_db);
        let r = rows as f64 / took.as_secs_f64().max(1e-9);
        eprintln!(
            "  ingest: raw SQLite (RETURNING: {returning}) {} rows/s",
            rate(r)
        );
        raw.push(r);
    }
    let raw_rate = raw[0];

    let mut runs = Vec::new();
    for proxies in [2, 8] {
        let name = format!("ingest-{proxies}");
        let cp = start_on_copy(ctx, &seeded, &name)?;
        let url = cp.grpc_url();
        let pid = cp.pid();
        let before = rt.block_on(total_requests(&url))?;
        let rss_idle = rss_kib(pid)?;
        let cpu0 = cpu_time(pid)?;
        let other = Interference::start(&[pid, fake.proc.pid()]);
        let peak = RssPeak::start(pid);
        let profile = Profile::start(pid, &name);
        let drive = rt.block_on(drive(&url, proxies, secs))?;
        profile.finish();
        let rss_peak = peak.finish();
        let cpu = cpu_time(pid)? - cpu0;
        let other_load = other.finish();
        let after = rt.block_on(total_requests(&url))?;
        cp.stop()?;
        seed::remove_db(&ctx.path(&format!("{name}.db")));
        eprintln!(
            "  ingest: {proxies} proxies: {} records/s, ack p99 {}",
            rate(drive.rate()),
            ms(drive.acks.clone().p99())
        );
        runs.push(Run {
            proxies,
            counted: after - before,
            drive,
            cpu,
            rss_idle,
            rss_peak,
            other_load,
        });
    }
    fake.proc.stop(Duration::from_secs(10))?;

    let mut t = Table::new(&[
        "setup",
        "records/s committed",
        "vs. raw SQLite",
        "ack p50",
        "ack p99",
        "ack max",
        "control-plane CPU / record",
        "CPU cores used",
        "RSS idle → peak",
        "other load",
    ]);
    for (label, r) in [
        ("baseline: raw `INSERT … ON CONFLICT DO NOTHING`", raw[0]),
        ("same, with `RETURNING request_id`", raw[1]),
    ] {
        let mut row = vec![label.to_string(), rate(r), ratio(r, raw_rate)];
        row.extend(std::iter::repeat_n("–".to_string(), 7));
        t.row(row);
    }
    for r in &mut runs {
        let elapsed = r.drive.elapsed.as_secs_f64().max(1e-9);
        t.row(vec![
            format!("{} simulated proxies", r.proxies),
            rate(r.drive.rate()),
            ratio(r.drive.rate(), raw_rate),
            ms(r.drive.acks.p50()),
            ms(r.drive.acks.p99()),
            ms(r.drive.acks.max()),
            us(r.cpu / (r.drive.applied.max(1) as u32)),
            format!("{:.2}", r.cpu.as_secs_f64() / elapsed),
            format!("{} → {}", mib(r.rss_idle), mib(r.rss_peak)),
            format!("{:.2} cores", r.other_load),
        ]);
    }
    let mut body = String::new();
    let _ = writeln!(
        body,
        "Setup: one `llmlb-control` (release) on a file-backed SQLite database (WAL, \
         `synchronous=FULL` on the writer) holding 1,000 endpoints × 4 models and 100,000 history rows; \
         endpoints probed every 10 s (the default) against a `fake-openai`. N simulated proxies, \
         one HTTP/2 connection each, stream `StatsBatch`es of {BATCH} records with fresh UUIDv7 \
         ids, spread over the 4,000 endpoint × model keys, keeping up to {WINDOW} batches \
         unacknowledged (the proxy's window), for {:.0} s; then the outstanding acks are awaited. \
         *records/s* = records acknowledged as applied / (first send → last ack); *ack* = batch \
         handed to the stream → its `StatsAck`. Baseline: the same kind of rows inserted straight \
         into a copy of the same database through sqlx (as the control plane does) with the \
         control plane's statement shape — `INSERT … ON CONFLICT DO NOTHING`, 500 rows per \
         statement, 20,000 per transaction — without and with `RETURNING request_id` (the form \
         `llmlb-control` 0.1 used to find the new rows), timed on database time only: the \
         floor the write path cannot beat.\n",
        secs.as_secs_f64()
    );
    body.push_str(&t.render());
    let exact: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{} proxies: {} acknowledged, {} counted by `GetStats`{}",
                r.proxies,
                count(r.drive.applied),
                count(r.counted),
                if r.counted == r.drive.applied && r.drive.duplicates == 0 {
                    " (exact)"
                } else {
                    " (**mismatch**)"
                }
            )
        })
        .collect();
    let _ = writeln!(body, "\nCheck: {}.", exact.join("; "));
    for r in &runs {
        ctx.report.goal(
            "3 ingest",
            &format!("records/s, {} simulated proxies", r.proxies),
            "≥ 100,000",
            rate(r.drive.rate()),
            Some(r.drive.rate() >= GOAL_RATE),
        );
    }
    for r in &mut runs {
        ctx.report.goal(
            "3 ingest",
            &format!("ack p50 / p99, {} proxies", r.proxies),
            "–",
            format!("{} / {}", ms(r.drive.acks.p50()), ms(r.drive.acks.p99())),
            None,
        );
    }
    Ok(Section {
        title: "3. Stats ingest".into(),
        body,
    })
}
