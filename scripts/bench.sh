#!/usr/bin/env bash
# `make bench`: installs the load tools the benchmarks drive (wrk, nginx from
# Debian packages), builds the release binaries, runs every workload of
# docs/benchmarks.md and rewrites that file.
#
#   BENCH_QUICK=1      small data sets and short runs (a few minutes; noisier)
#   BENCH_PERF=DIR     also record `perf` profiles of the systems under test into DIR
#   BENCH_MACHINE_NOTE a sentence for the report, e.g. that the machine was shared
#
# Extra arguments go to llmlb-bench, e.g. `scripts/bench.sh --only ingest,restore`
# (`target/release/llmlb-bench --help` lists them). Benchmarks report; they never
# fail on a figure. Only loopback addresses are used.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
if [ -n "${BENCH_PERF:-}" ] && ! perf --version >/dev/null 2>&1; then need+=(linux-perf); fi
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]} (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The Debian package may start a system nginx on port 80; the benchmarks
  # start their own instances, so stop that one again.
  if [[ " ${need[*]} " == *" nginx "* ]] && [ -s /run/nginx.pid ]; then
    $sudo nginx -s quit 2>/dev/null || true
  fi
fi

# 1,000 concurrent streams need ~2,000 descriptors in the proxy and as many
# in the load generator.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "bench: building release binaries"
cargo build --release --workspace --bins

mkdir -p docs
exec target/release/llmlb-bench --out docs/benchmarks.md "$@"
