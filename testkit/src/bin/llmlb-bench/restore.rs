//! Workload 4: control-plane boot-to-ready with 0, 1M and 10M rows of
//! request history and 1,000 endpoints × 4 models.
//!
//! Boot-to-ready is the time from spawning `llmlb-control` to its stdout
//! line `llmlb-control listening grpc=… http=…`, which it prints once the
//! dashboard state is restored and both listeners accept. Each size is booted
//! several times (SIGTERM in between); the page cache is warm (the database
//! was just written — dropping caches would disturb other users of the
//! machine). The restore step's own duration comes from the control plane's
//! `restored dashboard state … took_ms=` log line.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;

use crate::report::{Section, Table};
use crate::samples::{count, mib, ms, ms_f, ratio, Samples};
use crate::seed::{self, Spec};
use crate::{ControlPlane, Ctx};

/// History rows behind the aggregates of the 0-row database (then pruned).
const PRUNED_ROWS: u64 = 100_000;

/// Goal: boot-to-ready at most this, whatever the history size.
const GOAL: Duration = Duration::from_millis(300);

struct SizeResult {
    rows: u64,
    bytes: u64,
    seed: Duration,
    boot: Samples,
    restore_ms: Vec<f64>,
}

/// `took_ms=` of the restore log line (ANSI colours stripped).
fn restore_took_ms(log: &str) -> Option<f64> {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let line = plain
        .lines()
        .find(|l| l.contains("restored dashboard state"))?;
    let v = line.split("took_ms=").nth(1)?;
    v.split_whitespace().next()?.parse().ok()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the workload.
pub fn run(ctx: &mut Ctx) -> Result<Section> {
    let db = ctx.path("restore.db");
    let mut results = Vec::new();
    for &rows in &ctx.scale.restore_rows.clone() {
        // 0 rows: the aggregates of 100,000 rows whose history was pruned, so
        // that every size restores the same 4,000 TPS keys and only the
        // history size differs.
        let spec = Spec {
            endpoints: 1000,
            models: 4,
            rows: if rows == 0 { PRUNED_ROWS } else { rows },
            // Nothing listens there: probes fail fast; boot does not wait for them.
            base_url: "http://127.0.0.1:9".into(),
            prune_history: rows == 0,
        };
        eprintln!("  restore: seeding {} rows …", count(rows));
        let seed_took = seed::create(ctx, &db, &spec)?;
        let mut r = SizeResult {
            rows,
            bytes: seed::db_bytes(&db),
            seed: seed_took,
            boot: Samples::default(),
            restore_ms: Vec::new(),
        };
        for i in 0..ctx.scale.restore_boots {
            let log = format!("restore-{rows}-{i}.log");
            let cp = ControlPlane::start(ctx, &db, &log, &[])?;
            r.boot.push(cp.boot);
            // The log line is written before the ready line; give the
            // writer a moment to flush it.
            std::thread::sleep(Duration::from_millis(50));
            let text = std::fs::read_to_string(ctx.path(&log)).unwrap_or_default();
            if let Some(t) = restore_took_ms(&text) {
                r.restore_ms.push(t);
            }
            cp.stop()?;
        }
        eprintln!(
            "  restore: {} rows: boot p50 {}",
            count(rows),
            ms(r.boot.p50())
        );
        results.push(r);
    }
    seed::remove_db(&db);

    let base = results
        .first()
        .map(|r| r.boot.clone().p50().as_secs_f64())
        .unwrap_or(0.0);
    let mut t = Table::new(&[
        "history rows",
        "database",
        "seeded in",
        "boot-to-ready median",
        "min",
        "max",
        "restore step (log)",
        "vs. 0 rows",
    ]);
    for r in &mut results {
        t.row(vec![
            if r.rows == 0 {
                format!("0 (aggregates of {} pruned rows)", count(PRUNED_ROWS))
            } else {
                count(r.rows)
            },
            mib(r.bytes / 1024),
            format!("{:.1} s", r.seed.as_secs_f64()),
            ms(r.boot.p50()),
            ms(r.boot.quantile(0.0)),
            ms(r.boot.max()),
            if r.restore_ms.is_empty() {
                "–".into()
            } else {
                ms_f(median(&r.restore_ms))
            },
            ratio(r.boot.p50().as_secs_f64(), base),
        ]);
    }
    let worst = results
        .iter_mut()
        .map(|r| r.boot.p50())
        .max()
        .unwrap_or_default();
    let largest = results.last_mut().map(|r| (r.rows, r.boot.p50()));
    let flat = largest.map(|(_, d)| {
        let extra = d.as_secs_f64() - base;
        extra <= (base * 0.10).max(0.010)
    });

    let mut body = String::new();
    let _ = writeln!(
        body,
        "Setup: a database with 1,000 endpoints × 4 models (endpoints, `model_stats`, \
         `endpoint_daily_stats`, `request_minutes` consistent with the history) and N rows of \
         `request_history` spread over the last 6 days, generated by `llmlb-bench` (schema \
         created by `llmlb-control` itself, rows by a recursive CTE, aggregates by `GROUP BY`). \
         Each size is booted {} times: spawn `llmlb-control` → its stdout line \
         `llmlb-control listening …` (page cache warm, SIGTERM between boots). Baseline: the \
         same endpoints and aggregates with 0 history rows (generated with {} rows, then the \
         history deleted, as the retention pruner would), so every size restores the same 4,000 \
         TPS keys and only the history size differs.\n",
        ctx.scale.restore_boots,
        count(PRUNED_ROWS)
    );
    body.push_str(&t.render());
    let _ = writeln!(
        body,
        "\n\"Flat\" is taken to mean: the largest size boots within 10 % (or 10 ms) of the \
         0-row baseline."
    );
    ctx.report.goal(
        "4 restore",
        "boot-to-ready, worst median over sizes",
        "≤ 300 ms",
        ms(worst),
        Some(worst <= GOAL),
    );
    if let (Some((rows, d)), Some(flat)) = (largest, flat) {
        ctx.report.goal(
            "4 restore",
            &format!("boot-to-ready at {} rows vs. 0 rows", count(rows)),
            "flat in history size",
            format!("{} vs. {}", ms(d), ms_f(base * 1000.0)),
            Some(flat),
        );
    }
    Ok(Section {
        title: "4. Restore time".into(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restore_duration_is_read_from_a_coloured_log() {
        let log = "2025 \u{1b}[32m INFO\u{1b}[0m llmlb_control::app: restored dashboard state \
                   \u{1b}[3mtook_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m12.5\n";
        assert_eq!(restore_took_ms(log), Some(12.5));
    }
}
