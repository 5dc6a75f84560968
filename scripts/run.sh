#!/usr/bin/env bash
# Starts llmlb-control and one llmlb-proxy on localhost and prints how to use
# them. Ctrl-C stops both. Usage: scripts/run.sh <target dir with the binaries>
set -euo pipefail
bin=${1:-target/debug}
grpc=${LLMLB_GRPC_LISTEN:-127.0.0.1:50051}
http=${LLMLB_HTTP_LISTEN:-127.0.0.1:8080}
proxy=${LLMLB_LISTEN:-127.0.0.1:8000}

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$bin/llmlb-control" --grpc-listen "$grpc" --http-listen "$http" --database "${LLMLB_DATABASE:-./llmlb.db}" &
pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://$http/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
"$bin/llmlb-proxy" --listen "$proxy" --control-plane "http://$grpc" &
pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://$proxy/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

cat <<MSG

llmlb is running:
  control plane gRPC   $grpc        (grpcurl -plaintext $grpc list)
  control plane HTTP   http://$http  (dashboard page, REST gateway /api/..., /metrics)
  proxy (OpenAI API)   http://$proxy
  database             ${LLMLB_DATABASE:-./llmlb.db}

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
wait -n "${pids[@]}"
