#!/usr/bin/env bash
# Installs what the tests call, once, into caches reused by later runs:
#   $LLMLB_VENV (default ~/.cache/llmlb-venv): a Python venv with
#     testkit/python/requirements.txt, and mock-ai-api in its own folder
#     ($LLMLB_VENV/mock-ai-api, see below);
#   $LLMLB_NODE (default ~/.cache/llmlb-node): testkit/python/node/package.json;
#   chromium from Debian (the dashboard page test).
# A stamp in each cache records what was installed; a cache whose stamp does
# not match the lists above is completed, never trusted half-made.
# Needs only Python 3 and pip; installs python3-venv and nodejs/npm with apt
# when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${LLMLB_VENV:-$HOME/.cache/llmlb-venv}
node_dir=${LLMLB_NODE:-$HOME/.cache/llmlb-node}
python=${PYTHON:-python3}
# mock-ai-api pins fastapi==0.115.14 while litellm[proxy] needs a newer one, and
# it installs top-level modules named `app` and `server`: it goes into a folder
# of its own, without its dependencies (starlette, pydantic and uvicorn come with
# litellm[proxy]), put on PYTHONPATH only for the server process.
mock_ai_api=mock-ai-api==0.1.1

apt_install() {
  if [ -z "${apt_updated:-}" ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

want_py="$(cat testkit/python/requirements.txt) $mock_ai_api"
if [ "$(cat "$venv/.llmlb-stamp" 2>/dev/null)" != "$want_py" ]; then
  echo "test-deps: installing the Python test tools into $venv (once)"
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" 2>/dev/null || {
      rm -rf "$venv"
      apt_install python3-venv
      "$python" -m venv "$venv"
    }
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r testkit/python/requirements.txt
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
    --target "$venv/mock-ai-api" "$mock_ai_api"
  printf '%s' "$want_py" >"$venv/.llmlb-stamp"
fi

command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || apt_install nodejs npm
want_node=$(cat testkit/python/node/package.json)
if [ "$(cat "$node_dir/.llmlb-stamp" 2>/dev/null)" != "$want_node" ]; then
  echo "test-deps: installing the Node test tools into $node_dir (once)"
  mkdir -p "$node_dir"
  cp testkit/python/node/package.json "$node_dir/package.json"
  npm install --prefix "$node_dir" --no-audit --no-fund --silent
  printf '%s' "$want_node" >"$node_dir/.llmlb-stamp"
fi

command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || apt_install chromium
