"""Fixtures that start the real llmlb binaries (built by `make test`) and the
fake OpenAI backend, each in its own process group."""

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("LLMLB_BIN_DIR", ROOT / "target" / "debug"))


def spawn(name, *args, ready_prefix):
    """Starts a binary; returns (process, the rest of its ready line)."""
    path = BIN / name
    assert path.exists(), f"{path} missing: run `cargo build --workspace --bins` (make test does)"
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    proc = subprocess.Popen(
        [str(path), *args], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{name} exited before it was ready (code {proc.poll()})")
        if line.startswith(ready_prefix):
            return proc, line[len(ready_prefix):].strip()
    raise RuntimeError(f"{name} not ready within 30 s")


def pairs(rest):
    """`a=1 b=2` → {'a': '1', 'b': '2'}."""
    return dict(kv.split("=", 1) for kv in rest.split() if "=" in kv)


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def http_json(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def eventually(check, what, timeout=20.0):
    """Polls `check` until it returns something truthy (poll with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="session")
def llmlb():
    """Control plane + fake backend (model `demo`) + one proxy."""
    tmp = tempfile.TemporaryDirectory()
    procs = []
    try:
        cp, line = spawn(
            "llmlb-control",
            "--database", f"{tmp.name}/llmlb.db",
            "--grpc-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",
            "--health-check-interval", "200ms",
            ready_prefix="llmlb-control listening",
        )
        procs.append(cp)
        cp_addrs = pairs(line)
        fake, fake_url = spawn(
            "fake-openai", "--listen", "127.0.0.1:0", "--models", "demo", "--tokens", "5",
            ready_prefix="listening on",
        )
        procs.append(fake)
        rest = f"http://{cp_addrs['http']}"
        endpoint = http_json("POST", f"{rest}/api/endpoints", {"name": "fake", "baseUrl": fake_url})
        proxy, line = spawn(
            "llmlb-proxy", "--listen", "127.0.0.1:0", "--control-plane", f"http://{cp_addrs['grpc']}",
            ready_prefix="llmlb-proxy listening",
        )
        procs.append(proxy)
        base = f"http://{pairs(line)['http']}"

        def routable():
            try:
                models = http_json("GET", f"{base}/v1/models")
            except OSError:
                return False
            return any(m["id"] == "demo" for m in models["data"])

        eventually(routable, "the proxy to route model demo")
        yield {"proxy": base, "rest": rest, "endpoint": endpoint}
    finally:
        for p in reversed(procs):
            stop(p)
        tmp.cleanup()
