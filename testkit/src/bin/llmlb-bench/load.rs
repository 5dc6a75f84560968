//! Load generators for workload 1.
//!
//! - [`open_loop`]: a fixed offered rate, open loop. `wrk` cannot hold a
//!   rate, `wrk2` is not packaged by Debian and `oha` takes minutes to build
//!   on this machine, so this small generator does it: a pacer thread
//!   releases one request every `1/rate` s (nanosleep with 1 ns timer
//!   slack), a pool of keep-alive connections on one single-threaded runtime
//!   sends them, and each latency is measured from the request's *intended*
//!   send time — a request that waits for a free connection or a late pacer
//!   counts that wait (no coordinated omission, as in wrk2). Every latency is
//!   kept, percentiles are exact.
//! - [`wrk`]: saturation with `wrk` and a Lua script for the POST body.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio::sync::{mpsc, Mutex};

use crate::http1::{self, Conn};
use crate::samples::Samples;

/// Result of a fixed-rate run.
#[derive(Debug, Default)]
pub struct OpenLoop {
    /// Intended send time → last byte of the response, of every 2xx.
    pub samples: Samples,
    /// Requests that failed or answered non-2xx.
    pub errors: u64,
    /// First error seen, for the report.
    pub first_error: Option<String>,
}

/// Offers `rate` POSTs per second of `body` to `addr` `path` for `run`
/// over `conns` keep-alive connections.
pub fn open_loop(
    addr: SocketAddr,
    path: &'static str,
    body: Bytes,
    rate: u32,
    run: Duration,
    conns: usize,
) -> Result<OpenLoop> {
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let total = (run.as_secs_f64() * f64::from(rate)) as u64;
    let pacer = std::thread::spawn(move || {
        let _ = nix::sys::prctl::set_timerslack(1);
        let start = Instant::now() + Duration::from_millis(20);
        for i in 0..total {
            let due = start + period * i as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send(due).is_err() {
                break;
            }
        }
    });
    let rt = crate::runtime()?;
    let out = rt.block_on(async move {
        let rx = Arc::new(Mutex::new(rx));
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let rx = rx.clone();
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = OpenLoop::default();
                let mut conn: Option<Conn> = None;
                loop {
                    let due = {
                        let mut rx = rx.lock().await;
                        match rx.recv().await {
                            Some(due) => due,
                            None => break,
                        }
                    };
                    let result = async {
                        if conn.is_none() {
                            conn = Some(Conn::connect(addr).await?);
                        }
                        let c = conn.as_mut().context("connection")?;
                        c.call(http1::post(addr, path, body.clone())).await
                    }
                    .await;
                    match result {
                        Ok((status, _)) if (200..300).contains(&status) => {
                            out.samples.push(due.elapsed());
                        }
                        Ok((status, _)) => {
                            out.errors += 1;
                            out.first_error.get_or_insert(format!("HTTP {status}"));
                        }
                        Err(e) => {
                            out.errors += 1;
                            out.first_error.get_or_insert(format!("{e:#}"));
                            conn = None;
                        }
                    }
                }
                out
            }));
        }
        let mut all = OpenLoop::default();
        for t in tasks {
            let o = t.await.unwrap_or_default();
            all.samples.extend(o.samples);
            all.errors += o.errors;
            if all.first_error.is_none() {
                all.first_error = o.first_error;
            }
        }
        all
    });
    let _ = pacer.join();
    Ok(out)
}

/// What `wrk` reported.
#[derive(Clone, Debug, Default)]
pub struct Wrk {
    /// Completed requests.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles (wrk's own, closed loop).
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Non-2xx/3xx responses and socket errors.
    pub errors: u64,
}

fn parse_wrk_duration(s: &str) -> Option<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    let secs = match unit {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// Parses wrk's `--latency` output.
pub fn parse_wrk(out: &str) -> Result<Wrk> {
    let mut w = Wrk::default();
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.contains("requests in") {
            w.requests = words.first().and_then(|v| v.parse().ok()).unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().unwrap_or(0.0);
        } else if line.starts_with("50%") {
            w.p50 = words
                .get(1)
                .and_then(|v| parse_wrk_duration(v))
                .unwrap_or_default();
        } else if line.starts_with("99%") {
            w.p99 = words
                .get(1)
                .and_then(|v| parse_wrk_duration(v))
                .unwrap_or_default();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            w.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // connect 0, read 0, write 0, timeout 0
            w.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if w.requests == 0 {
        bail!("cannot read wrk's output:\n{out}");
    }
    Ok(w)
}

/// The Lua script that makes wrk POST `body` as JSON.
pub fn write_wrk_script(path: &Path, body: &str) -> Result<()> {
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.body = '{body}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
    );
    std::fs::write(path, lua)?;
    Ok(())
}

/// Runs `wrk` (1 thread, `conns` connections) for `run` against `url`.
pub fn wrk(script: &Path, url: &str, conns: usize, run: Duration) -> Result<Wrk> {
    let out = Command::new("wrk")
        .args(["-t1", "-c", &conns.to_string()])
        .arg(format!("-d{}s", run.as_secs().max(1)))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .context("run wrk (installed by scripts/bench.sh)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_parsed() {
        let out = "Running 3s test @ http://127.0.0.1:1/v1/chat/completions
  1 threads and 16 connections
  Latency Distribution
     50%  161.00us
     75%  200.00us
     90%  300.00us
     99%    1.23ms
  123456 requests in 3.00s, 45.60MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec:  41152.00
Transfer/sec:     15.20MB
";
        let w = parse_wrk(out).unwrap();
        assert_eq!(w.requests, 123_456);
        assert_eq!(w.errors, 15);
        assert!((w.rps - 41152.0).abs() < 1e-6);
        assert_eq!(w.p50, Duration::from_micros(161));
        assert_eq!(w.p99, Duration::from_micros(1230));
    }
}
