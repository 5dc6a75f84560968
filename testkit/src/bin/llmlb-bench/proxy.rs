//! Workload 1: proxy overhead — the same small chat completion served by a
//! static nginx backend, asked directly (baseline), through `llmlb-proxy`
//! (with `llmlb-control` and stats streaming on) and through nginx as a
//! keep-alive reverse proxy; at a fixed offered rate (added p50/p99) and at
//! saturation (`wrk`), with each proxy's CPU time per request read from
//! `/proc/PID/stat` (utime + stime) before and after.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use llmlb_proto::v1 as pb;

use crate::http1::{self, Conn};
use crate::load::{self, OpenLoop, Wrk};
use crate::procs::{addr_in, children_of, cpu_time_sum, Interference, Proc, Profile};
use crate::report::{Section, Table};
use crate::samples::{count, ms, ms_f, rate, ratio, us};
use crate::{seed, ControlPlane, Ctx};

/// Model the backends serve.
pub const MODEL: &str = "bench-model";
/// The request every run sends.
pub const REQUEST: &str =
    r#"{"model":"bench-model","messages":[{"role":"user","content":"hello"}]}"#;
/// What the static backend answers.
const REPLY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}"#;
const MODELS_REPLY: &str =
    r#"{"object":"list","data":[{"id":"bench-model","object":"model","owned_by":"bench"}]}"#;
/// Connections of the load generators.
const CONNS: usize = 16;
/// Goal: added p99 at the fixed rate.
const GOAL_ADDED_P99_MS: f64 = 1.0;

/// A free loopback port (bound and released; nginx binds it right after).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running nginx (master in its own process group, workers with it).
pub struct Nginx {
    proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Nginx {
    /// Master and worker pids.
    pub fn pids(&self) -> Vec<i32> {
        let mut p = children_of(self.proc.pid());
        p.push(self.proc.pid());
        p
    }

    fn start(ctx: &Ctx, name: &str, workers: usize, server: &str) -> Result<Nginx> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let prefix = ctx.path(&format!("nginx-{name}"));
        std::fs::create_dir_all(&prefix)?;
        let conf = format!(
            "worker_processes {workers};\n\
             daemon off;\n\
             pid nginx.pid;\n\
             error_log stderr warn;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n\
               access_log off;\n\
               keepalive_requests 10000000;\n\
               keepalive_timeout 300s;\n\
               client_body_temp_path tmp-body;\n\
               proxy_temp_path tmp-proxy;\n\
               fastcgi_temp_path tmp-fastcgi;\n\
               uwsgi_temp_path tmp-uwsgi;\n\
               scgi_temp_path tmp-scgi;\n\
               {server}\n\
               server {{ listen 127.0.0.1:{port}; {locations} }}\n\
             }}\n",
            server = if server.starts_with("upstream") {
                server
            } else {
                ""
            },
            locations = if server.starts_with("upstream") {
                "location / { proxy_pass http://backend; proxy_http_version 1.1; \
                 proxy_set_header Connection \"\"; }"
                    .to_string()
            } else {
                server.to_string()
            },
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg("stderr")
            .arg("-c")
            .arg(&conf_path);
        let proc = Proc::spawn(
            &format!("nginx {name}"),
            cmd,
            &ctx.path(&format!("nginx-{name}.log")),
        )
        .context("start nginx (installed by scripts/bench.sh)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "nginx {name} does not listen on {addr}; see {}",
                    proc.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx { proc, addr })
    }

    /// The static backend: one worker, a fixed chat completion for any POST.
    pub fn backend(ctx: &Ctx) -> Result<Nginx> {
        let locations = format!(
            "location = /v1/models {{ default_type application/json; return 200 '{MODELS_REPLY}'; }} \
             location / {{ default_type application/json; return 200 '{REPLY}'; }}"
        );
        Nginx::start(ctx, "backend", 1, &locations)
    }

    /// nginx as a keep-alive reverse proxy to `backend`, 2 workers (one per
    /// core, like llmlb-proxy's worker threads).
    pub fn reverse_proxy(ctx: &Ctx, backend: SocketAddr) -> Result<Nginx> {
        let upstream = format!(
            "upstream backend {{ server {backend}; keepalive 64; keepalive_requests 10000000; }}"
        );
        Nginx::start(ctx, "proxy", 2, &upstream)
    }

    /// SIGTERM.
    pub fn stop(self) -> Result<()> {
        self.proc.stop(Duration::from_secs(10))
    }
}

/// `llmlb-control` + one `llmlb-proxy`, with one endpoint registered.
pub struct Stack {
    /// The control plane.
    pub control: ControlPlane,
    /// The proxy.
    pub proxy: Proc,
    /// The proxy's listener.
    pub addr: SocketAddr,
    db: PathBuf,
}

impl Stack {
    /// Starts both on a fresh database, registers `backend_url` serving
    /// [`MODEL`], and waits until a request through the proxy succeeds.
    pub fn start(ctx: &Ctx, name: &str, backend_url: &str) -> Result<Stack> {
        let db = ctx.path(&format!("{name}.db"));
        seed::remove_db(&db);
        let control = ControlPlane::start(ctx, &db, &format!("{name}-control.log"), &[])?;
        // BENCH_PROXY_WRAP runs the proxy under a tool, e.g.
        // `valgrind --tool=massif` (for profiling; the figures then mean little).
        let wrap: Vec<String> = std::env::var("BENCH_PROXY_WRAP")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        let mut cmd = match wrap.split_first() {
            Some((tool, args)) => {
                let mut c = Command::new(tool);
                c.args(args).arg(ctx.bin("llmlb-proxy")?);
                c
            }
            None => Command::new(ctx.bin("llmlb-proxy")?),
        };
        cmd.args(["--listen", "127.0.0.1:0", "--control-plane"])
            .arg(control.grpc_url())
            .args(["--proxy-id", "bench-proxy"])
            .env(
                "RUST_LOG",
                std::env::var("BENCH_RUST_LOG").unwrap_or("info".into()),
            );
        let mut proxy = Proc::spawn("llmlb-proxy", cmd, &ctx.path(&format!("{name}-proxy.log")))?;
        let (line, _) = proxy.wait_line("llmlb-proxy listening", Duration::from_secs(60))?;
        let addr = addr_in(&line, "http")?;
        let grpc = control.grpc_url();
        let backend_url = backend_url.to_string();
        crate::runtime()?.block_on(async move {
            let mut c = pb::endpoint_service_client::EndpointServiceClient::new(
                tonic::transport::Endpoint::from_shared(grpc)?
                    .connect()
                    .await?,
            );
            c.create_endpoint(pb::CreateEndpointRequest {
                name: "bench-backend".into(),
                base_url: backend_url,
                api_key: None,
                models: vec![MODEL.into()],
                health_path: None,
            })
            .await?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ok = async {
                    let mut conn = Conn::connect(addr).await?;
                    conn.call(http1::post(
                        addr,
                        "/v1/chat/completions",
                        Bytes::from_static(REQUEST.as_bytes()),
                    ))
                    .await
                }
                .await;
                if matches!(ok, Ok((200, _))) {
                    return Ok::<_, anyhow::Error>(());
                }
                if Instant::now() > deadline {
                    bail!("the proxy does not route to the backend within 30 s: {ok:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })?;
        Ok(Stack {
            control,
            proxy,
            addr,
            db,
        })
    }

    /// Stops both and removes the database.
    pub fn stop(self) -> Result<()> {
        self.proxy.stop(Duration::from_secs(30))?;
        self.control.stop()?;
        seed::remove_db(&self.db);
        Ok(())
    }
}

/// One path's figures, summed over the rounds.
#[derive(Default)]
struct PathResult {
    name: &'static str,
    fixed: OpenLoop,
    fixed_cpu: Duration,
    fixed_cp_cpu: Duration,
    fixed_other: f64,
    sat_wrk: Vec<Wrk>,
    sat_requests: u64,
    sat_errors: u64,
    sat_secs: f64,
    sat_cpu: Duration,
    sat_cp_cpu: Duration,
    sat_other: f64,
}

impl PathResult {
    /// Requests per second over all saturation rounds.
    fn sat_rps(&self) -> f64 {
        let secs: f64 = self
            .sat_wrk
            .iter()
            .map(|w| w.requests as f64 / w.rps.max(1e-9))
            .sum();
        self.sat_requests as f64 / secs.max(1e-9)
    }

    /// Median over the rounds of wrk's own percentile.
    fn sat_latency(&self, pick: fn(&Wrk) -> Duration) -> Duration {
        let mut v: Vec<Duration> = self.sat_wrk.iter().map(pick).collect();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }
}

/// Turns each path takes, at the fixed rate and at saturation.
const ROUNDS: u32 = 3;

fn per_request(cpu: Duration, n: u64) -> Duration {
    cpu / (n.max(1) as u32)
}

/// Runs the workload.
pub fn run(ctx: &mut Ctx) -> Result<Section> {
    let rate_rps = ctx.scale.fixed_rate;
    let backend = Nginx::backend(ctx)?;
    let nginx = Nginx::reverse_proxy(ctx, backend.addr)?;
    let stack = Stack::start(ctx, "proxy", &format!("http://{}", backend.addr))?;
    let script = ctx.path("post.lua");
    load::write_wrk_script(&script, REQUEST)?;
    let body = Bytes::from_static(REQUEST.as_bytes());
    let path = "/v1/chat/completions";

    let paths: [(&'static str, SocketAddr); 3] = [
        ("direct → backend (baseline)", backend.addr),
        ("llmlb-proxy", stack.addr),
        ("nginx reverse proxy", nginx.addr),
    ];
    let ours: Vec<i32> = [
        backend.pids(),
        nginx.pids(),
        vec![stack.proxy.pid(), stack.control.pid()],
    ]
    .concat();
    let cp_pid = [stack.control.pid()];
    // The processes whose CPU is "the proxy's" on each path.
    let proxy_pids: Vec<Vec<i32>> = vec![backend.pids(), vec![stack.proxy.pid()], nginx.pids()];
    // Warm-up: connections, pools, caches.
    for (addr, _) in paths.iter().map(|(_, a)| (a, ())) {
        load::open_loop(
            *addr,
            path,
            body.clone(),
            rate_rps,
            Duration::from_secs(1),
            CONNS,
        )?;
    }
    let mut results: Vec<PathResult> = paths
        .iter()
        .map(|(name, _)| PathResult {
            name,
            ..PathResult::default()
        })
        .collect();
    // The paths take turns, ROUNDS times, so that a burst of load from other
    // users of the machine does not land on one path only.
    let fixed_part = ctx.scale.fixed_run / ROUNDS;
    let sat_part = ctx.scale.saturation_run / ROUNDS;
    for round in 0..ROUNDS {
        for (i, (_, addr)) in paths.iter().enumerate() {
            let r = &mut results[i];
            let other = Interference::start(&ours);
            let (c0, k0) = (cpu_time_sum(&proxy_pids[i]), cpu_time_sum(&cp_pid));
            let profile = Profile::start(proxy_pids[i][0], &format!("proxy-fixed-{i}-{round}"));
            let fixed = load::open_loop(*addr, path, body.clone(), rate_rps, fixed_part, CONNS)?;
            profile.finish();
            r.fixed_cpu += cpu_time_sum(&proxy_pids[i]).saturating_sub(c0);
            r.fixed_cp_cpu += cpu_time_sum(&cp_pid).saturating_sub(k0);
            r.fixed_other += other.finish() * fixed_part.as_secs_f64();
            r.fixed.samples.extend(fixed.samples);
            r.fixed.errors += fixed.errors;
            if r.fixed.first_error.is_none() {
                r.fixed.first_error = fixed.first_error;
            }
        }
    }
    for round in 0..ROUNDS {
        for (i, (_, addr)) in paths.iter().enumerate() {
            let r = &mut results[i];
            let url = format!("http://{addr}{path}");
            let other = Interference::start(&ours);
            let (c0, k0) = (cpu_time_sum(&proxy_pids[i]), cpu_time_sum(&cp_pid));
            let profile = Profile::start(proxy_pids[i][0], &format!("proxy-sat-{i}-{round}"));
            let started = Instant::now();
            let w = load::wrk(&script, &url, CONNS, sat_part)?;
            profile.finish();
            r.sat_secs += started.elapsed().as_secs_f64();
            r.sat_cpu += cpu_time_sum(&proxy_pids[i]).saturating_sub(c0);
            r.sat_cp_cpu += cpu_time_sum(&cp_pid).saturating_sub(k0);
            r.sat_other += other.finish() * sat_part.as_secs_f64();
            r.sat_requests += w.requests;
            r.sat_errors += w.errors;
            r.sat_wrk.push(w);
        }
    }
    for r in &mut results {
        r.fixed_other /= ctx.scale.fixed_run.as_secs_f64().max(1e-9);
        r.sat_other /= ctx.scale.saturation_run.as_secs_f64().max(1e-9);
        eprintln!(
            "  proxy: {}: p50 {} p99 {} at {rate_rps}/s, {} req/s saturated",
            r.name,
            ms(r.fixed.samples.p50()),
            ms(r.fixed.samples.p99()),
            rate(r.sat_rps())
        );
    }
    // Let the last stats batches land, then read what the control plane counted.
    std::thread::sleep(Duration::from_millis(500));
    let counted = crate::runtime()?
        .block_on(crate::ingest::total_requests(&stack.control.grpc_url()))
        .unwrap_or(0);
    stack.stop()?;
    nginx.stop()?;
    backend.stop()?;

    let (d50, d99, d_rps) = {
        let d = &mut results[0];
        (d.fixed.samples.p50(), d.fixed.samples.p99(), d.sat_rps())
    };
    let mut fixed_t = Table::new(&[
        "path",
        "requests",
        "errors",
        "p50",
        "p99",
        "max",
        "added p50",
        "added p99",
        "proxy CPU / request",
        "other load",
    ]);
    let mut sat_t = Table::new(&[
        "path",
        "requests/s",
        "vs. direct",
        "wrk p50",
        "wrk p99",
        "errors",
        "proxy CPU / request",
        "proxy cores used",
        "other load",
    ]);
    for r in &mut results {
        let n = r.fixed.samples.len() as u64;
        let p50 = r.fixed.samples.p50();
        let p99 = r.fixed.samples.p99();
        let added = |a: Duration, b: Duration| ms_f((a.as_secs_f64() - b.as_secs_f64()) * 1000.0);
        let is_base = r.name.starts_with("direct");
        let cpu_label = |cpu: Duration, n: u64| {
            if is_base {
                format!("({} backend)", us(per_request(cpu, n)))
            } else {
                us(per_request(cpu, n))
            }
        };
        fixed_t.row(vec![
            r.name.to_string(),
            count(n),
            count(r.fixed.errors),
            ms(p50),
            ms(p99),
            ms(r.fixed.samples.max()),
            if is_base {
                "–".into()
            } else {
                added(p50, d50)
            },
            if is_base {
                "–".into()
            } else {
                added(p99, d99)
            },
            cpu_label(r.fixed_cpu, n),
            format!("{:.2} cores", r.fixed_other),
        ]);
        sat_t.row(vec![
            r.name.to_string(),
            rate(r.sat_rps()),
            ratio(r.sat_rps(), d_rps),
            ms(r.sat_latency(|w| w.p50)),
            ms(r.sat_latency(|w| w.p99)),
            count(r.sat_errors),
            cpu_label(r.sat_cpu, r.sat_requests),
            format!("{:.2}", r.sat_cpu.as_secs_f64() / r.sat_secs.max(1e-9)),
            format!("{:.2} cores", r.sat_other),
        ]);
    }
    // Signed: on a noisy machine the baseline's tail can exceed the proxy's.
    let added_p99 = (results[1].fixed.samples.p99().as_secs_f64() - d99.as_secs_f64()) * 1000.0;
    let llmlb = &results[1];
    let ngx = &results[2];
    let llmlb_fixed_n = llmlb.fixed.samples.len() as u64;
    let cp_fixed = per_request(llmlb.fixed_cp_cpu, llmlb_fixed_n);
    let cp_sat = per_request(llmlb.sat_cp_cpu, llmlb.sat_requests);

    let mut body_md = String::new();
    let _ = writeln!(
        body_md,
        "Setup: backend = nginx with one worker answering every POST with a fixed 290-byte chat \
         completion (`return 200`), `keepalive_requests` unlimited. Paths: the backend directly \
         (baseline); `llmlb-proxy` (release, default `--workers`: one worker thread per core, 2) with `llmlb-control` on a fresh \
         database, the backend registered as its only endpoint, stats streaming on; nginx \
         (2 workers) as a keep-alive reverse proxy (`proxy_http_version 1.1`, upstream \
         `keepalive 64`). Request: `POST /v1/chat/completions` with \
         `{REQUEST}`. Each path is warmed up for 1 s first. *Proxy CPU / request* = utime + stime \
         of the proxy's processes (llmlb-proxy; nginx master + workers; for the baseline, the \
         backend's) over the run / requests completed.\n"
    );
    let _ = writeln!(
        body_md,
        "The paths take turns: {ROUNDS} rounds of direct → llmlb-proxy → nginx, so that a burst \
         of load from other users of the machine does not fall on one path only; figures are over \
         all rounds.\n\n\
         **Fixed rate**: {rate_rps} requests/s offered for {:.0} s per path ({ROUNDS} × {:.1} s) \
         over {CONNS} keep-alive connections by `llmlb-bench`'s open-loop generator (latency from \
         the intended send time; see `testkit/src/bin/llmlb-bench/load.rs` for why not wrk or \
         oha).\n",
        ctx.scale.fixed_run.as_secs_f64(),
        ctx.scale.fixed_run.as_secs_f64() / f64::from(ROUNDS),
    );
    body_md.push_str(&fixed_t.render());
    let _ = writeln!(
        body_md,
        "\n**Saturation**: `wrk -t1 -c{CONNS} -d{}s --latency -s post.lua URL` (closed loop), \
         {ROUNDS} rounds per path; requests/s = all requests / all time, wrk's percentiles are the \
         median over the rounds.\n",
        (ctx.scale.saturation_run / ROUNDS).as_secs().max(1)
    );
    body_md.push_str(&sat_t.render());
    let _ = writeln!(
        body_md,
        "\nThe control plane's CPU for ingesting the proxy's stats records: {} per request at \
         {rate_rps}/s, {} per request at saturation. It counted {} requests in total \
         (warm-ups, fixed-rate and saturation runs through llmlb-proxy).",
        us(cp_fixed),
        us(cp_sat),
        count(counted),
    );
    for r in &results {
        if let Some(e) = &r.fixed.first_error {
            let _ = writeln!(body_md, "\nFirst error on {}: `{e}`.", r.name);
        }
    }

    let ngx_fixed = per_request(ngx.fixed_cpu, ngx.fixed.samples.len() as u64);
    let llmlb_fixed = per_request(llmlb.fixed_cpu, llmlb_fixed_n);
    let ngx_sat = per_request(ngx.sat_cpu, ngx.sat_requests);
    let llmlb_sat = per_request(llmlb.sat_cpu, llmlb.sat_requests);
    ctx.report.goal(
        "1 proxy",
        &format!("added p99 at {rate_rps} req/s"),
        "≤ 1 ms",
        ms_f(added_p99),
        Some(added_p99 <= GOAL_ADDED_P99_MS),
    );
    ctx.report.goal(
        "1 proxy",
        &format!("proxy CPU / request at {rate_rps} req/s (nginx)"),
        "≤ nginx's",
        format!("{} ({})", us(llmlb_fixed), us(ngx_fixed)),
        Some(llmlb_fixed <= ngx_fixed),
    );
    ctx.report.goal(
        "1 proxy",
        "proxy CPU / request at saturation (nginx)",
        "≤ nginx's",
        format!("{} ({})", us(llmlb_sat), us(ngx_sat)),
        Some(llmlb_sat <= ngx_sat),
    );
    ctx.report.goal(
        "1 proxy",
        "max throughput (direct / nginx)",
        "–",
        format!(
            "{} req/s ({} / {})",
            rate(llmlb.sat_rps()),
            rate(d_rps),
            rate(ngx.sat_rps())
        ),
        None,
    );
    Ok(Section {
        title: "1. Proxy overhead".into(),
        body: body_md,
    })
}
