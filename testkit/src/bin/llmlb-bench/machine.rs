//! The machine the figures come from, and the report document around the
//! sections.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use crate::procs::MachineCpu;
use crate::Ctx;

/// What the report says about the machine.
#[derive(Clone, Debug)]
pub struct Machine {
    /// `nproc`.
    pub nproc: String,
    /// CPU model name.
    pub cpu: String,
    /// Total memory.
    pub memory: String,
    /// `uname -sr`.
    pub kernel: String,
    /// `rustc --version`.
    pub rustc: String,
    /// UTC date and time of the start.
    pub date: String,
    /// Busy cores (machine-wide) over 2 s before the run: other users' load.
    pub background_cores: f64,
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Looks at the machine (takes 2 s to measure the background load).
pub fn describe() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let before = MachineCpu::now();
    std::thread::sleep(Duration::from_secs(2));
    let after = MachineCpu::now();
    Machine {
        nproc: output("nproc", &[]),
        cpu,
        memory,
        kernel: output("uname", &["-sr"]),
        rustc: output("rustc", &["--version"]),
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        background_cores: after.busy_since(&before) / 2.0,
    }
}

impl Machine {
    /// For the log.
    pub fn one_line(&self) -> String {
        format!(
            "{} × {}, {}, background load {:.2} cores",
            self.nproc, self.cpu, self.memory, self.background_cores
        )
    }
}

/// The whole `docs/benchmarks.md`.
pub fn document(
    ctx: &Ctx,
    m: &Machine,
    command: &str,
    note: Option<&str>,
    took: Duration,
) -> String {
    let mut s = String::new();
    let quick = if ctx.scale.quick {
        " with `BENCH_QUICK=1` (small sizes, short runs: indicative only)"
    } else {
        ""
    };
    let _ = writeln!(
        s,
        "# Benchmarks\n\n\
         Written by `{command}`{quick} on {date}; the run took {mins:.1} minutes. \
         `make bench` runs `scripts/bench.sh`, which installs what it needs (wrk, nginx from \
         Debian packages), builds the release binaries and runs \
         `target/release/llmlb-bench --out docs/benchmarks.md` \
         (harness source: `testkit/src/bin/llmlb-bench/`). Benchmarks report; they never fail \
         on a figure.\n",
        date = m.date,
        mins = took.as_secs_f64() / 60.0,
    );
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(s, "- CPU: {}, `nproc` = {}", m.cpu, m.nproc);
    let _ = writeln!(s, "- memory {}, {}, {}", m.memory, m.kernel, m.rustc);
    let _ = writeln!(
        s,
        "- load from other processes just before the run: {:.2} cores busy (of {})",
        m.background_cores, m.nproc
    );
    if let Some(note) = note {
        let _ = writeln!(s, "- {note}");
    } else if m.background_cores > 0.2 {
        let _ = writeln!(
            s,
            "- other processes were busy on the machine during the run (see the *other load* \
             columns): figures are noisier than on an idle machine"
        );
    }
    let _ = writeln!(
        s,
        "\nOn a 2-core machine the load generator, the system under test and its backend share \
         the same two cores, so every figure below includes that contention; each comparison is \
         made against a baseline measured in the same run under the same conditions. The \
         column *other load* (where shown) is the CPU used during the measurement by processes \
         that are not part of the benchmark — on a shared machine, the noise in that figure.\n"
    );
    let _ = writeln!(s, "## Every figure against its goal\n");
    s.push_str(&ctx.report.goals_table());
    s.push('\n');
    for section in &ctx.report.sections {
        let _ = writeln!(s, "## {}\n\n{}", section.title, section.body.trim_end());
        s.push('\n');
    }
    s.push_str(ANALYSIS);
    s
}

/// Profiles and suggested fixes, written by hand.
const ANALYSIS: &str = include_str!("analysis.md");
