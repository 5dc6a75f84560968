//! `llmlb-bench`: the benchmarks behind `make bench` (scripts/bench.sh).
//!
//! Each workload starts the real release binaries (taken from the directory
//! this binary lives in), measures them beside a baseline taken in the same
//! run, and writes a Markdown section; `--out` collects the sections, the
//! machine description and a table of every figure against its goal.
//! Benchmarks report, they never fail on a figure: the exit code is non-zero
//! only when a workload could not run at all.
#![forbid(unsafe_code)]

mod dashboard;
mod grpc_raw;
mod http1;
mod ingest;
mod load;
mod machine;
mod procs;
mod proxy;
mod report;
mod restore;
mod samples;
mod seed;
mod streams;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use procs::{addr_in, Proc};
use report::{Report, Section};

/// Benchmarks of llmlb; writes a Markdown report.
#[derive(Debug, Parser)]
#[command(name = "llmlb-bench")]
struct Cli {
    /// Smaller data sets and shorter runs (for a quick look; figures are noisier).
    #[arg(long, env = "BENCH_QUICK", value_parser = clap::builder::BoolishValueParser::new())]
    quick: bool,
    /// Work directory: databases, configs, logs of the children.
    #[arg(long, env = "BENCH_WORK", default_value = "target/bench")]
    work: PathBuf,
    /// Write the full report here; otherwise the sections go to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Workloads to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ingest,dashboard,restore,proxy,streams"
    )]
    only: Vec<Workload>,
    /// Rows of request history for the restore workload, comma-separated
    /// (default 0,1000000,10000000; quick 0,100000,1000000).
    #[arg(long, env = "BENCH_RESTORE_ROWS", value_delimiter = ',')]
    restore_rows: Option<Vec<u64>>,
    /// Concurrent streams of the streaming workload.
    #[arg(long, env = "BENCH_STREAMS", default_value_t = 1000)]
    streams: usize,
    /// Offered rate of the fixed-rate proxy runs, requests per second.
    #[arg(long, env = "BENCH_RATE", default_value_t = 2000)]
    rate: u32,
    /// How the report says it was produced.
    #[arg(long, env = "BENCH_COMMAND", default_value = "make bench")]
    command: String,
    /// A note on the machine for the report (e.g. that it was shared).
    #[arg(long, env = "BENCH_MACHINE_NOTE")]
    machine_note: Option<String>,
}

/// The workloads of issue 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// 3. Stats ingest.
    Ingest,
    /// 5. Dashboard reads.
    Dashboard,
    /// 4. Restore time.
    Restore,
    /// 1. Proxy overhead.
    Proxy,
    /// 2. Streaming.
    Streams,
}

impl Workload {
    /// Section heading, numbered as in issue 5.
    fn title(self) -> &'static str {
        match self {
            Workload::Proxy => "1. Proxy overhead",
            Workload::Streams => "2. Streaming",
            Workload::Ingest => "3. Stats ingest",
            Workload::Restore => "4. Restore time",
            Workload::Dashboard => "5. Dashboard reads",
        }
    }
}

/// Durations and sizes of one run.
#[derive(Clone, Debug)]
pub struct Scale {
    /// Quick mode.
    pub quick: bool,
    /// Request-history sizes of the restore workload.
    pub restore_rows: Vec<u64>,
    /// Boots measured per size.
    pub restore_boots: usize,
    /// Length of one ingest run.
    pub ingest_run: Duration,
    /// Length of the dashboard runs.
    pub dashboard_run: Duration,
    /// Dashboard reads per second per protocol.
    pub dashboard_rate: u32,
    /// Length of one fixed-rate proxy run.
    pub fixed_run: Duration,
    /// Offered rate.
    pub fixed_rate: u32,
    /// Length of one saturation run.
    pub saturation_run: Duration,
    /// Concurrent SSE streams.
    pub streams: usize,
}

impl Scale {
    fn new(cli: &Cli) -> Scale {
        let q = cli.quick;
        let secs = |full: u64, quick: u64| Duration::from_secs(if q { quick } else { full });
        Scale {
            quick: q,
            restore_rows: cli.restore_rows.clone().unwrap_or_else(|| {
                if q {
                    vec![0, 100_000, 1_000_000]
                } else {
                    vec![0, 1_000_000, 10_000_000]
                }
            }),
            restore_boots: if q { 3 } else { 7 },
            ingest_run: secs(10, 3),
            dashboard_run: secs(15, 4),
            dashboard_rate: 50,
            fixed_run: secs(15, 3),
            fixed_rate: cli.rate,
            saturation_run: secs(12, 3),
            streams: cli.streams,
        }
    }
}

/// What every workload needs.
pub struct Ctx {
    /// Directory of the release binaries.
    pub bins: PathBuf,
    /// Work directory.
    pub work: PathBuf,
    /// Sizes and durations.
    pub scale: Scale,
    /// The report being written.
    pub report: Report,
}

impl Ctx {
    /// Path of a workspace binary next to this one.
    pub fn bin(&self, name: &str) -> Result<PathBuf> {
        let p = self.bins.join(name);
        if !p.exists() {
            bail!(
                "{} is missing: build with `cargo build --release --workspace --bins`",
                p.display()
            );
        }
        Ok(p)
    }

    /// A path in the work directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }
}

// === children ===

/// A running `llmlb-control`.
pub struct ControlPlane {
    /// The process.
    pub proc: Proc,
    /// gRPC listener.
    pub grpc: SocketAddr,
    /// HTTP listener.
    pub http: SocketAddr,
    /// Spawn → `llmlb-control listening` line.
    pub boot: Duration,
}

impl ControlPlane {
    /// Starts it on `db` with OS-picked ports and waits until it listens.
    pub fn start(ctx: &Ctx, db: &Path, log: &str, extra: &[&str]) -> Result<ControlPlane> {
        let mut cmd = Command::new(ctx.bin("llmlb-control")?);
        cmd.arg("--database")
            .arg(db)
            .args([
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_RUST_LOG").unwrap_or("info".into()),
            );
        let mut proc = Proc::spawn("llmlb-control", cmd, &ctx.path(log))?;
        let (line, at) = proc.wait_line("llmlb-control listening", Duration::from_secs(120))?;
        Ok(ControlPlane {
            grpc: addr_in(&line, "grpc")?,
            http: addr_in(&line, "http")?,
            boot: at.duration_since(proc.spawned_at),
            proc,
        })
    }

    /// `http://` URL of the gRPC listener.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Process id.
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// SIGTERM and wait.
    pub fn stop(self) -> Result<()> {
        self.proc.stop(Duration::from_secs(30))
    }
}

/// A running `fake-openai`.
pub struct Fake {
    /// The process.
    pub proc: Proc,
    /// `http://ADDR`.
    pub url: String,
}

impl Fake {
    /// Starts `fake-openai` with these flags.
    pub fn start(ctx: &Ctx, log: &str, args: &[&str]) -> Result<Fake> {
        let mut cmd = Command::new(ctx.bin("fake-openai")?);
        cmd.args(["--listen", "127.0.0.1:0"]).args(args);
        let mut proc = Proc::spawn("fake-openai", cmd, &ctx.path(log))?;
        let (url, _) = proc.wait_line("listening on", Duration::from_secs(30))?;
        Ok(Fake { proc, url })
    }
}

/// A single-threaded runtime: load generators keep to one core so the
/// system under test has the other.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

// === main ===

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(2),
        Err(e) => {
            eprintln!("llmlb-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the chosen workloads; `Ok(false)` when one of them could not run.
fn run(cli: Cli) -> Result<bool> {
    let exe = std::env::current_exe().context("current exe")?;
    let bins = exe.parent().context("binary directory")?.to_path_buf();
    std::fs::create_dir_all(&cli.work).with_context(|| format!("{}", cli.work.display()))?;
    let mut ctx = Ctx {
        bins,
        work: cli.work.canonicalize()?,
        scale: Scale::new(&cli),
        report: Report::default(),
    };
    let started = Instant::now();
    let machine = machine::describe();
    eprintln!("llmlb-bench: {}", machine.one_line());
    let mut all_ran = true;
    for w in &cli.only {
        eprintln!("llmlb-bench: running {w:?} …");
        let t = Instant::now();
        let result = match w {
            Workload::Ingest => ingest::run(&mut ctx),
            Workload::Dashboard => dashboard::run(&mut ctx),
            Workload::Restore => restore::run(&mut ctx),
            Workload::Proxy => proxy::run(&mut ctx),
            Workload::Streams => streams::run(&mut ctx),
        };
        let section = match result {
            Ok(s) => s,
            Err(e) => {
                all_ran = false;
                eprintln!("llmlb-bench: {w:?} failed: {e:#}");
                ctx.report.goal(
                    w.title(),
                    "every figure",
                    "–",
                    "not measured (failed)".into(),
                    Some(false),
                );
                Section {
                    title: w.title().into(),
                    body: format!("**Not measured**: the workload failed: `{e:#}`.\n"),
                }
            }
        };
        eprintln!("llmlb-bench: {w:?} took {:.0} s", t.elapsed().as_secs_f64());
        if cli.out.is_none() {
            println!("## {}\n\n{}", section.title, section.body);
        }
        ctx.report.sections.push(section);
    }
    // Report in the order, whatever the run order was.
    ctx.report.sections.sort_by(|a, b| a.title.cmp(&b.title));
    ctx.report.goals.sort_by(|a, b| a.workload.cmp(&b.workload));
    if let Some(out) = &cli.out {
        let text = machine::document(
            &ctx,
            &machine,
            &cli.command,
            cli.machine_note.as_deref(),
            started.elapsed(),
        );
        std::fs::write(out, text).with_context(|| format!("write {}", out.display()))?;
        eprintln!("llmlb-bench: wrote {}", out.display());
    } else {
        println!("{}", ctx.report.goals_table());
    }
    Ok(all_ran)
}
