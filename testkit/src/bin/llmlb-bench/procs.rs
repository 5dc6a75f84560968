//! Child processes of a benchmark, and what `/proc` says about them.
//!
//! Every child runs in its own process group and is killed with it when its
//! handle drops, so an aborted benchmark leaves nothing running. Stdout lines
//! are timestamped as they arrive (boot-to-ready is measured on them);
//! stderr goes to a log file in the work directory.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// A child process in its own process group.
pub struct Proc {
    child: Option<Child>,
    name: String,
    lines: mpsc::Receiver<(Instant, String)>,
    /// When `spawn` was called.
    pub spawned_at: Instant,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` (stdout piped, stderr to `log`).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let err = File::create(log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .process_group(0);
        let spawned_at = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("spawn {name}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            child: Some(child),
            name: name.to_string(),
            lines,
            spawned_at,
            log: log.to_path_buf(),
        })
    }

    /// Process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest of
    /// the line and when it arrived.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Result<(String, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok((rest.trim().to_string(), at));
                    }
                }
                Err(_) => {
                    let status = self
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten());
                    bail!(
                        "{}: no `{prefix}` line within {timeout:?} (exit: {status:?}); see {}",
                        self.name,
                        self.log.display()
                    );
                }
            }
        }
    }

    /// SIGTERM to the group; SIGKILL if it has not exited within `grace`.
    pub fn stop(mut self, grace: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pgid = Pid::from_raw(child.id() as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                let _ = killpg(pgid, Signal::SIGKILL);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = child.wait();
        Err(anyhow!("{} did not stop within {grace:?}", self.name))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// `key=value` of a startup line such as `grpc=127.0.0.1:1234 http=...`.
pub fn addr_in(line: &str, key: &str) -> Result<SocketAddr> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim_start_matches("http://").parse().ok())
        .ok_or_else(|| anyhow!("no {key}=ADDR in `{line}`"))
}

// === /proc ===

fn clock_ticks_per_sec() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process (all its threads), from `/proc/PID/stat`.
pub fn cpu_time(pid: i32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(Duration::from_secs_f64(
        (utime + stime) as f64 / clock_ticks_per_sec(),
    ))
}

/// Summed CPU time of several processes (missing ones count zero).
pub fn cpu_time_sum(pids: &[i32]) -> Duration {
    pids.iter().filter_map(|p| cpu_time(*p).ok()).sum()
}

/// Resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")
}

/// Direct children of a process (e.g. nginx workers of their master).
pub fn children_of(pid: i32) -> Vec<i32> {
    let direct = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
    if let Ok(list) = direct {
        return list
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|v| v.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Samples VmRSS of a process every 20 ms in a thread and keeps the peak.
pub struct RssPeak {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl RssPeak {
    /// Starts sampling `pid`.
    pub fn start(pid: i32) -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak.max(rss_kib(pid).unwrap_or(0))
        });
        RssPeak {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns the peak in KiB.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Busy CPU time of the whole machine, from `/proc/stat`.
#[derive(Clone, Copy, Debug)]
pub struct MachineCpu {
    busy: f64,
}

impl MachineCpu {
    /// Now.
    pub fn now() -> MachineCpu {
        let line = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let v: Vec<f64> = line
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: f64 = v.iter().take(8).sum();
        // idle + iowait
        let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
        let hz = clock_ticks_per_sec();
        MachineCpu {
            busy: (total - idle) / hz,
        }
    }

    /// CPU seconds the machine was busy since `earlier`.
    pub fn busy_since(&self, earlier: &MachineCpu) -> f64 {
        self.busy - earlier.busy
    }
}

/// Measures how much CPU processes other than `ours` (and this one) used
/// during a phase: the noise of a shared machine.
pub struct Interference {
    machine: MachineCpu,
    ours: Duration,
    pids: Vec<i32>,
    started: Instant,
}

impl Interference {
    /// Starts measuring; `pids` are the processes that belong to the benchmark.
    pub fn start(pids: &[i32]) -> Interference {
        let mut pids = pids.to_vec();
        pids.push(std::process::id() as i32);
        Interference {
            machine: MachineCpu::now(),
            ours: cpu_time_sum(&pids),
            pids,
            started: Instant::now(),
        }
    }

    /// Other processes' CPU during the phase, in cores (1.0 = one core busy).
    pub fn finish(&self) -> f64 {
        let machine = MachineCpu::now().busy_since(&self.machine);
        let ours = cpu_time_sum(&self.pids)
            .saturating_sub(self.ours)
            .as_secs_f64();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        ((machine - ours) / secs).max(0.0)
    }
}

/// `perf record` of a process while a phase runs, when `BENCH_PERF` names a
/// directory (profiles are an aid for reading figures, off by default).
pub struct Profile {
    proc: Option<Proc>,
}

impl Profile {
    /// Starts `perf record` on `pid` into `$BENCH_PERF/<name>.data`.
    pub fn start(pid: i32, name: &str) -> Profile {
        let Some(dir) = std::env::var_os("BENCH_PERF").map(PathBuf::from) else {
            return Profile { proc: None };
        };
        let _ = std::fs::create_dir_all(&dir);
        let mut cmd = Command::new("perf");
        cmd.args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "499",
            "--call-graph",
            "dwarf,32768",
        ])
        .arg("-o")
        .arg(dir.join(format!("{name}.data")))
        .args(["-p", &pid.to_string()]);
        let proc = Proc::spawn("perf", cmd, &dir.join(format!("{name}.perf.log"))).ok();
        // perf needs a moment to attach.
        std::thread::sleep(Duration::from_millis(300));
        Profile { proc }
    }

    /// Stops recording (SIGINT lets perf write its file).
    pub fn finish(mut self) {
        if let Some(p) = self.proc.take() {
            let _ = killpg(Pid::from_raw(p.pid()), Signal::SIGINT);
            let _ = p.stop(Duration::from_secs(60));
        }
    }
}
