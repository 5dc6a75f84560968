#!/usr/bin/env bash
# Starts llmlb-control and one llmlb-proxy on localhost, prints how to use them
# once both answer, then watches them until Ctrl-C (which stops both).
#
#   scripts/run.sh [DIR]   DIR holds the binaries; default: cargo's target
#                          directory (CARGO_TARGET_DIR honoured) + /debug
#
# - A binary that does not come up (port taken, bad database, ...): no banner,
#   the reason on stderr, exit 1.
# - The control plane exits while the proxy runs (`kill -9`, walkthrough step
#   6): the proxy keeps serving with its last routing table and buffers its
#   stats; the control plane is started again after LLMLB_RESTART_DELAY
#   seconds (default 5) on the same database, and the proxy delivers the
#   buffered stats to it.
# - The proxy exits: the control plane is stopped too; exit with the proxy's code.
#
# The control plane's pid is in ./llmlb-control.pid (LLMLB_PID_DIR to move it),
# rewritten on each restart.
set -euo pipefail

target_dir() {
  cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}

bin=${1:-$(target_dir)/debug}
grpc=${LLMLB_GRPC_LISTEN:-127.0.0.1:50051}
http=${LLMLB_HTTP_LISTEN:-127.0.0.1:8080}
proxy=${LLMLB_LISTEN:-127.0.0.1:8000}
database=${LLMLB_DATABASE:-./llmlb.db}
restart_delay=${LLMLB_RESTART_DELAY:-5}
pid_file=${LLMLB_PID_DIR:-.}/llmlb-control.pid

for name in llmlb-control llmlb-proxy; do
  [ -x "$bin/$name" ] || { echo "run.sh: $bin/$name missing: build first (make run does)" >&2; exit 1; }
done

cp_pid=
proxy_pid=
cleanup() {
  trap - EXIT INT TERM
  kill $cp_pid $proxy_pid 2>/dev/null || true
  wait 2>/dev/null || true
  rm -f "$pid_file"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_ready NAME PID URL: returns once URL answers 2xx; exits 1 with the
# reason if the process exits first or nothing answers within 30 s.
wait_ready() {
  local name=$1 pid=$2 url=$3 code
  for _ in $(seq 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
      code=0
      wait "$pid" 2>/dev/null || code=$?
      echo "run.sh: $name exited with code $code before it was ready (its log is above)" >&2
      exit 1
    fi
    curl -sf --max-time 1 -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "run.sh: $name did not answer on $url within 30 s" >&2
  exit 1
}

start_control() {
  "$bin/llmlb-control" --grpc-listen "$grpc" --http-listen "$http" --database "$database" &
  cp_pid=$!
  echo "$cp_pid" >"$pid_file"
  wait_ready llmlb-control "$cp_pid" "http://$http/healthz"
}

start_control
"$bin/llmlb-proxy" --listen "$proxy" --control-plane "http://$grpc" &
proxy_pid=$!
wait_ready llmlb-proxy "$proxy_pid" "http://$proxy/healthz"

cat <<MSG

llmlb is running:
  control plane gRPC   $grpc        (grpcurl -plaintext $grpc list)
  control plane HTTP   http://$http  (dashboard page, REST gateway /api/..., /metrics)
  proxy (OpenAI API)   http://$proxy
  database             $database
  control plane pid    in $pid_file (killed, it is started again after ${restart_delay} s)

Register an inference server (any OpenAI-compatible base URL), e.g.:
  grpcurl -plaintext -d '{"name": "local", "baseUrl": "http://127.0.0.1:9000"}' $grpc llmlb.v1.EndpointService/CreateEndpoint

Then send a request through the proxy:
  curl -s http://$proxy/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model": "demo", "messages": [{"role": "user", "content": "hello"}]}'

And read the dashboard:
  curl -s http://$http/api/dashboard/stats

No inference server at hand? Start the fake one in another terminal:
  $bin/fake-openai --listen 127.0.0.1:9000 --models demo

Ctrl-C stops both.
MSG

while true; do
  exited=
  code=0
  wait -n -p exited "$cp_pid" "$proxy_pid" || code=$?
  if [ "$exited" = "$proxy_pid" ]; then
    echo "run.sh: llmlb-proxy exited with code $code; stopping the control plane" >&2
    exit $((code == 0 ? 1 : code))
  elif [ "$exited" = "$cp_pid" ]; then
    echo "run.sh: llmlb-control exited with code $code; the proxy keeps serving;" \
      "starting the control plane again in $restart_delay s" >&2
    cp_pid=
    sleep "$restart_delay"
    start_control
    echo "run.sh: llmlb-control is back (pid $cp_pid)" >&2
  fi
done
