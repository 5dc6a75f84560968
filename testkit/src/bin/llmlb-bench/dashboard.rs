//! Workload 5: dashboard reads — `GetOverview` over gRPC and
//! `GET /api/dashboard/overview` over REST with 1,000 endpoints × 4 models,
//! while 2 simulated proxies stream stats into the same control plane.
//! Baseline, same run: the same reads with no ingest.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;

use crate::grpc_raw;
use crate::http1::{self, Conn};
use crate::ingest::{self, probe_backend, seed_base, start_on_copy};
use crate::procs::{Interference, Profile};
use crate::report::{Section, Table};
use crate::samples::{count, ms, rate, ratio, Samples};
use crate::{seed, Ctx};

/// Goal: p99 of a read.
const GOAL: Duration = Duration::from_millis(2);
/// Reads this slow carry the signature of Nagle's algorithm meeting a
/// delayed ACK (40 ms on Linux).
const STALL: Duration = Duration::from_millis(40);
const OVERVIEW: &str = "/llmlb.v1.DashboardService/GetOverview";

#[derive(Default)]
struct Reads {
    grpc: Samples,
    rest: Samples,
    grpc_bytes: usize,
    rest_bytes: usize,
    other_load: f64,
}

/// Alternates gRPC and REST overview reads, `rate` per second each, one at
/// a time, for `run`.
async fn reads(
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    rate: u32,
    run: Duration,
    pids: &[i32],
) -> Result<Reads> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(256 << 20);
    let mut rest = Conn::connect(http_addr).await?;
    let mut out = Reads::default();
    for _ in 0..10 {
        out.grpc_bytes = grpc_raw::unary(&mut grpc, OVERVIEW, Bytes::new()).await?;
        out.rest_bytes = rest
            .call(http1::get(http_addr, "/api/dashboard/overview"))
            .await?
            .1;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(0.5 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let other = Interference::start(pids);
    let end = Instant::now() + run;
    let mut grpc_turn = true;
    while Instant::now() < end {
        tick.tick().await;
        let t = Instant::now();
        if grpc_turn {
            grpc_raw::unary(&mut grpc, OVERVIEW, Bytes::new()).await?;
            out.grpc.push(t.elapsed());
        } else {
            let (status, _) = rest
                .call(http1::get(http_addr, "/api/dashboard/overview"))
                .await?;
            if status != 200 {
                bail!("GET /api/dashboard/overview answered {status}");
            }
            out.rest.push(t.elapsed());
        }
        grpc_turn = !grpc_turn;
    }
    out.other_load = other.finish();
    Ok(out)
}

/// Runs the workload.
pub fn run(ctx: &mut Ctx) -> Result<Section> {
    let rt = crate::runtime()?;
    let fake = probe_backend(ctx, "dashboard-fake.log")?;
    let seeded = seed_base(ctx, &fake)?;
    let cp = start_on_copy(ctx, &seeded, "dashboard")?;
    let pids = [cp.pid(), fake.proc.pid()];
    let run = ctx.scale.dashboard_run;
    let per_sec = ctx.scale.dashboard_rate;

    let profile = Profile::start(cp.pid(), "dashboard-idle");
    let mut idle = rt.block_on(reads(cp.grpc, cp.http, per_sec, run, &pids))?;
    profile.finish();

    let url = cp.grpc_url();
    let ingest_run = run + Duration::from_secs(1);
    let ingest = std::thread::spawn(move || -> Result<ingest::Drive> {
        crate::runtime()?.block_on(ingest::drive(&url, 2, ingest_run))
    });
    std::thread::sleep(Duration::from_millis(500));
    let profile = Profile::start(cp.pid(), "dashboard-busy");
    let mut busy = rt.block_on(reads(cp.grpc, cp.http, per_sec, run, &pids))?;
    profile.finish();
    let drive = ingest
        .join()
        .map_err(|_| anyhow::anyhow!("ingest thread panicked"))??;
    cp.stop()?;
    fake.proc.stop(Duration::from_secs(10))?;
    seed::remove_db(&ctx.path("dashboard.db"));
    eprintln!(
        "  dashboard: gRPC p99 {} idle, {} under ingest; REST p99 {} idle, {} under ingest",
        ms(idle.grpc.p99()),
        ms(busy.grpc.p99()),
        ms(idle.rest.p99()),
        ms(busy.rest.p99())
    );

    let mut t = Table::new(&[
        "read",
        "condition",
        "reads",
        "p50",
        "p99",
        "max",
        "≥ 40 ms",
        "p99 vs. idle",
        "other load",
    ]);
    let idle_grpc_p99 = idle.grpc.p99().as_secs_f64();
    let idle_rest_p99 = idle.rest.p99().as_secs_f64();
    let during = format!("during ingest of {} records/s", rate(drive.rate()));
    for (r, cond) in [
        (&mut idle, "no ingest (baseline)".to_string()),
        (&mut busy, during),
    ] {
        let other = format!("{:.2} cores", r.other_load);
        let grpc_p99 = r.grpc.p99();
        let rest_p99 = r.rest.p99();
        t.row(vec![
            format!("gRPC `GetOverview` ({} KiB)", r.grpc_bytes / 1024),
            cond.clone(),
            count(r.grpc.len() as u64),
            ms(r.grpc.p50()),
            ms(grpc_p99),
            ms(r.grpc.max()),
            count(r.grpc.count_at_least(STALL) as u64),
            ratio(grpc_p99.as_secs_f64(), idle_grpc_p99),
            other.clone(),
        ]);
        t.row(vec![
            format!(
                "REST `/api/dashboard/overview` ({} KiB)",
                r.rest_bytes / 1024
            ),
            cond,
            count(r.rest.len() as u64),
            ms(r.rest.p50()),
            ms(rest_p99),
            ms(r.rest.max()),
            count(r.rest.count_at_least(STALL) as u64),
            ratio(rest_p99.as_secs_f64(), idle_rest_p99),
            other,
        ]);
    }
    let mut body = String::new();
    let _ = writeln!(
        body,
        "Setup: the database of workload 3 (1,000 endpoints × 4 models, every key with TPS \
         state, so an overview holds 1,000 endpoint entries and 4,000 model entries). One client \
         reads one overview at a time, alternating gRPC and REST, {per_sec} reads/s each, for \
         {:.0} s: first with nothing else running (baseline), then while 2 simulated proxies \
         stream stats as in workload 3. Latency = request sent → last byte of the reply \
         received; the client does not decode (raw gRPC codec, REST body read as bytes). \
         *≥ 40 ms* counts reads that took 40 ms or more: the delayed-ACK timeout of Linux, the \
         signature of a server socket without `TCP_NODELAY`.\n",
        run.as_secs_f64()
    );
    body.push_str(&t.render());
    let busy_grpc = busy.grpc.p99();
    let busy_rest = busy.rest.p99();
    ctx.report.goal(
        "5 dashboard",
        "gRPC GetOverview p99 during ingest",
        "≤ 2 ms",
        format!("{} (idle {})", ms(busy_grpc), ms(idle.grpc.p99())),
        Some(busy_grpc <= GOAL),
    );
    ctx.report.goal(
        "5 dashboard",
        "REST overview p99 during ingest",
        "≤ 2 ms",
        format!("{} (idle {})", ms(busy_rest), ms(idle.rest.p99())),
        Some(busy_rest <= GOAL),
    );
    Ok(Section {
        title: "5. Dashboard reads".into(),
        body,
    })
}
