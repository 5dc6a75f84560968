//! Workload 2: 1,000 concurrent SSE streams (100 tokens at 20 ms/token from
//! `fake-openai`) through one `llmlb-proxy`: added time-to-first-token p99
//! against the same streams asked directly (baseline), and the proxy's RSS
//! per open stream (peak VmRSS during the plateau minus idle VmRSS, / N).
//!
//! Each stream opens its own connection; starts are spread evenly over 1 s
//! so that all N are open together from then until the first ends (each
//! lasts about 2 s). TTFT = start of the request (connect included) → first
//! body bytes.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::BodyExt;

use crate::http1::{self, Conn};
use crate::procs::{cpu_time, rss_kib, Interference, Profile, RssPeak};
use crate::proxy::{Stack, MODEL};
use crate::report::{Section, Table};
use crate::samples::{count, mib, ms, ms_f, Samples};
use crate::{Ctx, Fake};

/// Tokens per stream and their interval.
const TOKENS: u32 = 100;
const TOKEN_INTERVAL_MS: u64 = 20;
/// SSE events the proxy reads per stream: one per token, the finishing
/// chunk, the usage chunk it asks for (and strips), `[DONE]`.
const EVENTS: u32 = TOKENS + 3;
/// Streams of the light-load reference run.
const LIGHT: usize = 100;
/// Starts are spread over this.
const RAMP: Duration = Duration::from_secs(1);
/// Goals.
const GOAL_TTFT_MS: f64 = 1.0;
const GOAL_RSS_KIB: f64 = 32.0;

#[derive(Default)]
struct Run {
    ttft: Samples,
    total: Samples,
    ok: u64,
    failed: u64,
    first_error: Option<String>,
    other_load: f64,
    /// CPU seconds per core-second of `pids` (in order) and of this process.
    cores: Vec<f64>,
}

async fn one_stream(addr: SocketAddr, at: Instant) -> Result<(Duration, Duration)> {
    tokio::time::sleep_until(at.into()).await;
    let started = Instant::now();
    let mut conn = Conn::connect(addr).await?;
    let body = format!(
        r#"{{"model":"{MODEL}","stream":true,"messages":[{{"role":"user","content":"hello"}}]}}"#
    );
    let resp = conn
        .send(http1::post(addr, "/v1/chat/completions", Bytes::from(body)))
        .await?;
    if resp.status() != 200 {
        anyhow::bail!("HTTP {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut ttft = None;
    let mut done = false;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            if ttft.is_none() && !data.is_empty() {
                ttft = Some(started.elapsed());
            }
            if data.windows(6).any(|w| w == b"[DONE]") {
                done = true;
            }
        }
    }
    if !done {
        anyhow::bail!("stream ended without [DONE]");
    }
    Ok((ttft.context("no body")?, started.elapsed()))
}

/// Runs `n` streams against `addr`, starts spread over [`RAMP`].
fn streams(addr: SocketAddr, n: usize, pids: &[i32]) -> Result<Run> {
    let rt = crate::runtime()?;
    rt.block_on(async {
        let other = Interference::start(pids);
        let mut all: Vec<i32> = pids.to_vec();
        all.push(std::process::id() as i32);
        let cpu0: Vec<Duration> = all
            .iter()
            .map(|p| cpu_time(*p).unwrap_or_default())
            .collect();
        let began = Instant::now();
        let t0 = Instant::now() + Duration::from_millis(50);
        let step = RAMP / n.max(1) as u32;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                tokio::spawn(tokio::time::timeout(
                    Duration::from_secs(60),
                    one_stream(addr, t0 + step * i as u32),
                ))
            })
            .collect();
        let mut run = Run::default();
        for t in tasks {
            match t.await {
                Ok(Ok(Ok((ttft, total)))) => {
                    run.ok += 1;
                    run.ttft.push(ttft);
                    run.total.push(total);
                }
                Ok(Ok(Err(e))) => {
                    run.failed += 1;
                    run.first_error.get_or_insert(format!("{e:#}"));
                }
                Ok(Err(_)) => {
                    run.failed += 1;
                    run.first_error.get_or_insert("timed out".into());
                }
                Err(e) => {
                    run.failed += 1;
                    run.first_error.get_or_insert(e.to_string());
                }
            }
        }
        run.other_load = other.finish();
        let secs = began.elapsed().as_secs_f64();
        run.cores = all
            .iter()
            .zip(cpu0)
            .map(|(p, c0)| {
                (cpu_time(*p).unwrap_or_default().saturating_sub(c0)).as_secs_f64() / secs
            })
            .collect();
        Ok(run)
    })
}

/// One size: both paths and the proxy's memory and CPU.
struct Size {
    n: usize,
    direct: Run,
    proxied: Run,
    idle: u64,
    peak: u64,
    cpu: Duration,
}

impl Size {
    fn per_stream_kib(&self) -> f64 {
        self.peak.saturating_sub(self.idle) as f64 / self.n.max(1) as f64
    }
}

/// `a − b` in milliseconds, signed.
fn added_ms(a: Duration, b: Duration) -> f64 {
    (a.as_secs_f64() - b.as_secs_f64()) * 1000.0
}

/// Runs the workload.
pub fn run(ctx: &mut Ctx) -> Result<Section> {
    let n = ctx.scale.streams;
    let fake = Fake::start(
        ctx,
        "streams-fake.log",
        &[
            "--models",
            MODEL,
            "--tokens",
            &TOKENS.to_string(),
            "--token-interval",
            &format!("{TOKEN_INTERVAL_MS}ms"),
        ],
    )?;
    let fake_addr: SocketAddr = fake.url.trim_start_matches("http://").parse()?;
    let stack = Stack::start(ctx, "streams", &fake.url)?;
    let pid = stack.proxy.pid();
    let ours = [fake.proc.pid(), pid, stack.control.pid()];

    // Warm the proxy up with a few streams.
    streams(stack.addr, 20.min(n), &ours)?;
    // A light load first (CPU to spare), then the N of the goal; each size:
    // baseline straight to the backend, then through the proxy.
    let mut sizes = vec![LIGHT.min(n), n];
    sizes.dedup();
    let mut measured = Vec::new();
    for &size in &sizes {
        let direct = streams(fake_addr, size, &ours)?;
        std::thread::sleep(Duration::from_millis(500));
        let idle = rss_kib(pid)?;
        let cpu0 = cpu_time(pid)?;
        let peak = RssPeak::start(pid);
        let profile = Profile::start(pid, &format!("streams-{size}"));
        let proxied = streams(stack.addr, size, &ours)?;
        profile.finish();
        let peak = peak.finish();
        let cpu = cpu_time(pid)?.saturating_sub(cpu0);
        measured.push(Size {
            n: size,
            direct,
            proxied,
            idle,
            peak,
            cpu,
        });
    }
    stack.stop()?;
    fake.proc.stop(Duration::from_secs(10))?;

    let mut t = Table::new(&[
        "streams",
        "path",
        "ok / failed",
        "TTFT p50",
        "TTFT p99",
        "TTFT max",
        "added TTFT p50",
        "added TTFT p99",
        "stream duration p50",
        "CPU: fake-openai / proxy / control plane / load generator / other",
    ]);
    let mut mem = Table::new(&[
        "streams",
        "proxy VmRSS idle",
        "peak",
        "per open stream",
        "proxy CPU",
        "per relayed event",
    ]);
    for m in &mut measured {
        let d50 = m.direct.ttft.p50();
        let d99 = m.direct.ttft.p99();
        eprintln!(
            "  streams: {}: TTFT p99 {} direct, {} proxied; {:.1} KiB per stream",
            m.n,
            ms(d99),
            ms(m.proxied.ttft.p99()),
            m.per_stream_kib()
        );
        let n = m.n;
        for (name, r) in [
            ("direct → fake-openai (baseline)", &mut m.direct),
            ("llmlb-proxy", &mut m.proxied),
        ] {
            let base = name.starts_with("direct");
            let added =
                |a: Duration, b: Duration| ms_f((a.as_secs_f64() - b.as_secs_f64()) * 1000.0);
            let p50 = r.ttft.p50();
            let p99 = r.ttft.p99();
            t.row(vec![
                count(n as u64),
                name.into(),
                format!("{} / {}", count(r.ok), count(r.failed)),
                ms(p50),
                ms(p99),
                ms(r.ttft.max()),
                if base { "–".into() } else { added(p50, d50) },
                if base { "–".into() } else { added(p99, d99) },
                ms(r.total.p50()),
                format!(
                    "{} / {:.2} cores",
                    r.cores
                        .iter()
                        .map(|c| format!("{c:.2}"))
                        .collect::<Vec<_>>()
                        .join(" / "),
                    r.other_load
                ),
            ]);
        }
        let events = n as f64 * f64::from(EVENTS);
        mem.row(vec![
            count(n as u64),
            mib(m.idle),
            mib(m.peak),
            format!("{:.1} KiB", m.per_stream_kib()),
            format!("{:.2} s", m.cpu.as_secs_f64()),
            format!("{:.1} µs", m.cpu.as_secs_f64() * 1e6 / events.max(1.0)),
        ]);
    }
    let mut body = String::new();
    let _ = writeln!(
        body,
        "Setup: `fake-openai` (release) streaming {TOKENS} tokens at {TOKEN_INTERVAL_MS} ms/token \
         (first token after {TOKEN_INTERVAL_MS} ms; {EVENTS} SSE events per stream from upstream \
         with the finishing chunk, the usage chunk and `[DONE]`); each stream on its own connection, starts spread evenly over \
         {:.0} s so that all are open together for about a second; `llmlb-proxy` with \
         `llmlb-control` as in workload 1, warmed up with 20 streams. Baseline: the same streams \
         straight to `fake-openai`, just before. TTFT = request start (connect included) → first \
         body bytes. {LIGHT} streams are run first as a light-load reference.\n",
        RAMP.as_secs_f64()
    );
    body.push_str(&t.render());
    let _ = writeln!(
        body,
        "\nProxy memory and CPU (*per open stream* = (peak − idle VmRSS) / streams; idle is \
         taken after the baseline run, peak sampled every 20 ms):\n"
    );
    body.push_str(&mem.render());
    for m in &measured {
        for (name, r) in [("direct", &m.direct), ("llmlb-proxy", &m.proxied)] {
            if let Some(e) = &r.first_error {
                let _ = writeln!(body, "\nFirst failure ({name}, {} streams): `{e}`.", m.n);
            }
        }
    }
    let full = measured.last_mut().context("no run")?;
    let added_p99 = added_ms(full.proxied.ttft.p99(), full.direct.ttft.p99());
    ctx.report.goal(
        "2 streaming",
        &format!("added TTFT p99, {n} streams"),
        "≤ 1 ms",
        ms_f(added_p99),
        Some(added_p99 <= GOAL_TTFT_MS && full.proxied.failed == 0),
    );
    ctx.report.goal(
        "2 streaming",
        &format!("proxy RSS per open stream, {n} streams"),
        "≤ 32 KiB",
        format!("{:.1} KiB", full.per_stream_kib()),
        Some(full.per_stream_kib() <= GOAL_RSS_KIB),
    );
    if measured.len() > 1 {
        let light = &mut measured[0];
        let added = added_ms(light.proxied.ttft.p99(), light.direct.ttft.p99());
        ctx.report.goal(
            "2 streaming",
            &format!("added TTFT p99, {} streams (light load)", light.n),
            "–",
            ms_f(added),
            None,
        );
    }
    Ok(Section {
        title: "2. Streaming".into(),
        body,
    })
}
