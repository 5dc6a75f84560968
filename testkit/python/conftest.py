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


def target_dir():
    """Cargo's target directory (honours CARGO_TARGET_DIR and .cargo/config)."""
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return Path(json.loads(out)["target_directory"])


BIN = Path(os.environ.get("LLMLB_BIN_DIR") or target_dir() / "debug")


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


def http_json(method, url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
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


def start_control_plane(procs, tmp):
    """Starts llmlb-control on free ports; returns its `grpc=… http=…` pairs."""
    cp, line = spawn(
        "llmlb-control",
        "--database", f"{tmp}/llmlb.db",
        "--grpc-listen", "127.0.0.1:0",
        "--http-listen", "127.0.0.1:0",
        "--health-check-interval", "200ms",
        ready_prefix="llmlb-control listening",
    )
    procs.append(cp)
    return pairs(line)


def start_proxy(procs, cp_addrs):
    """Starts llmlb-proxy on a free port; returns its base URL."""
    proxy, line = spawn(
        "llmlb-proxy", "--listen", "127.0.0.1:0", "--control-plane", f"http://{cp_addrs['grpc']}",
        ready_prefix="llmlb-proxy listening",
    )
    procs.append(proxy)
    return f"http://{pairs(line)['http']}"


def proxy_routes(base, model):
    """True once the proxy's /v1/models lists `model`."""
    try:
        models = http_json("GET", f"{base}/v1/models")
    except OSError:
        return False
    return any(m["id"] == model for m in models["data"])


@pytest.fixture(scope="session")
def llmlb():
    """Control plane + fake backend (model `demo`) + one proxy."""
    tmp = tempfile.TemporaryDirectory()
    procs = []
    try:
        cp_addrs = start_control_plane(procs, tmp.name)
        fake, fake_url = spawn(
            "fake-openai", "--listen", "127.0.0.1:0", "--models", "demo", "--tokens", "5",
            ready_prefix="listening on",
        )
        procs.append(fake)
        rest = f"http://{cp_addrs['http']}"
        endpoint = http_json("POST", f"{rest}/api/endpoints", {"name": "fake", "baseUrl": fake_url})
        base = start_proxy(procs, cp_addrs)
        eventually(lambda: proxy_routes(base, "demo"), "the proxy to route model demo")
        yield {"proxy": base, "rest": rest, "endpoint": endpoint}
    finally:
        for p in reversed(procs):
            stop(p)
        tmp.cleanup()


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    """LiteLLM's proxy and mock-ai-api, started once per session (in parallel:
    LiteLLM takes seconds to boot)."""
    import thirdparty

    tmp = tmp_path_factory.mktemp("thirdparty")
    started = []
    try:
        waits = [thirdparty.start_litellm(tmp), thirdparty.start_mock_ai_api(tmp)]
        for wait in waits:
            started.append(wait())
        yield {s.name: s for s in started}
    finally:
        for s in started:
            s.stop()


@pytest.fixture(scope="session")
def world(servers):
    """A control plane and a proxy in front of the third-party servers (LiteLLM
    registered with its master key as the endpoint's apiKey, and its models by
    hand; mock-ai-api's models discovered)."""
    import thirdparty

    tmp = tempfile.TemporaryDirectory()
    procs = []
    try:
        cp_addrs = start_control_plane(procs, tmp.name)
        rest = f"http://{cp_addrs['http']}"
        endpoints = {}
        for name, server in servers.items():
            body = {"name": name, "baseUrl": server.url}
            if server.api_key:
                body["apiKey"] = server.api_key
            if name == "litellm":
                # Not ll-ratelimited, which the failover test gives its own endpoint.
                body["models"] = sorted(set(thirdparty.LITELLM_MODELS.values()))
            endpoints[name] = http_json("POST", f"{rest}/api/endpoints", body)["id"]
        proxy = start_proxy(procs, cp_addrs)
        for server in servers.values():
            for model in set(server.models.values()):
                eventually(lambda: proxy_routes(proxy, model), f"the proxy to route {model}", timeout=30)
        yield {"proxy": proxy, "rest": rest, "endpoints": endpoints, "servers": servers}
    finally:
        for p in reversed(procs):
            stop(p)
        tmp.cleanup()
