#!/usr/bin/env python3
"""RSS and CPU of llmlb-proxy under the attacks of docs/bad-input.md rows 100-111.

Run by hand (not part of `make test`):

    scripts/attack_figures.py PROXY_BINARY [ATTACK ...]

ATTACK is any of silent, stalled, unread, fds, drain, sseline, bigjson
(default: all). Each
attack gets a fresh proxy with default flags (fds: under
`prlimit --nofile=1024:1024`), against fake-openai and llmlb-control from
target/debug. Prints one line per attack: the proxy's RSS (VmRSS) and CPU
(user + system) and what the attack achieved. Pass an older binary to get
the figures from before a fix.
"""

import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG = os.path.join(ROOT, "target", "debug")
MIB = 1 << 20


def spawn(args, prefix, log=None):
    """Starts `args`, returns (process, the stdout line starting with prefix)."""
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=log or subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    for line in proc.stdout:
        if line.startswith(prefix):
            return proc, line.strip()
    raise RuntimeError(f"{args[0]} exited without `{prefix}`")


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http(method, url, body=None, timeout=5):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def is_closed(sock):
    """Whether the peer closed `sock` (non-blocking peek)."""
    try:
        sock.setblocking(False)
        data = sock.recv(1, socket.MSG_PEEK)
        return data == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Stack:
    """fake-openai + llmlb-control with the fake registered."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="llmlb-attack-")
        self.fake, line = spawn(
            [os.path.join(DEBUG, "fake-openai"), "--models", "m", "--tokens", "64"],
            "listening on",
        )
        self.fake_url = line.split()[-1]
        self.cp, line = spawn(
            [
                os.path.join(DEBUG, "llmlb-control"),
                "--database", os.path.join(self.dir, "db.sqlite"),
                "--grpc-listen", "127.0.0.1:0",
                "--http-listen", "127.0.0.1:0",
                "--health-check-interval", "200ms",
            ],
            "llmlb-control listening",
        )
        pairs = dict(kv.split("=", 1) for kv in line.split()[2:])
        self.grpc = "http://" + pairs["grpc"]
        self.http = pairs["http"]
        self.huge = None
        http("POST", f"http://{pairs['http']}/api/endpoints",
             {"name": "fake", "baseUrl": self.fake_url, "models": ["m"]})

    def proxy(self, binary, prlimit=None):
        args = [binary, "--listen", "127.0.0.1:0", "--control-plane", self.grpc]
        args += os.environ.get("ATTACK_PROXY_FLAGS", "").split()
        if prlimit:
            args = ["prlimit", f"--nofile={prlimit}:{prlimit}"] + args
        log = open(os.path.join(self.dir, f"proxy-{time.time()}.log"), "w+")
        env_log = dict(os.environ, RUST_LOG="info")
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True,
                                start_new_session=True, env=env_log)
        for line in proc.stdout:
            if line.startswith("llmlb-proxy listening"):
                break
        addr = re.search(r"http=(\S+)", line).group(1)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                _, body = http("GET", f"http://{addr}/v1/models")
                if b'"m"' in body:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        return proc, addr, log

    def stop(self):
        if self.huge is not None:
            self.huge.stop()
        for proc in (self.fake, self.cp):
            proc.kill()
            proc.wait()


def connect(addr):
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def post_head(length):
    return (f"POST /v1/chat/completions HTTP/1.1\r\nhost: p\r\ncontent-type: application/json\r\n"
            f"content-length: {length}\r\n\r\n").encode()


def silent(stack, binary):
    proc, addr, _ = stack.proxy(binary)
    rss0, cpu0 = rss_mib(proc.pid), cpu_s(proc.pid)
    socks = [connect(addr) for _ in range(1000)]
    time.sleep(5)
    rss1 = rss_mib(proc.pid)
    time.sleep(40)
    still = sum(not is_closed(s) for s in socks)
    rss2, cpu = rss_mib(proc.pid), cpu_s(proc.pid) - cpu0
    proc.kill()
    return (f"1000 silent connections: RSS {rss0:.0f} -> {rss1:.0f} MiB at 5 s, {rss2:.0f} MiB at 45 s; "
            f"{still} still open at 45 s; CPU {cpu:.2f} s")


def stalled(stack, binary):
    proc, addr, _ = stack.proxy(binary)
    rss0, cpu0 = rss_mib(proc.pid), cpu_s(proc.pid)
    socks = []
    chunk = b" " * MIB
    for _ in range(16):
        s = connect(addr)
        s.sendall(post_head(8 * MIB))
        for _ in range(7):
            s.sendall(chunk)
        s.sendall(chunk[:-1])
        socks.append(s)
    time.sleep(3)
    rss1 = rss_mib(proc.pid)
    time.sleep(62)
    answered = sum(is_closed(s) or _peek(s) for s in socks)
    rss2, cpu = rss_mib(proc.pid), cpu_s(proc.pid) - cpu0
    proc.kill()
    return (f"16 bodies stalled 1 byte short of 8 MiB: RSS {rss0:.0f} -> {rss1:.0f} MiB at 3 s, "
            f"{rss2:.0f} MiB at 65 s; {answered} of 16 answered or closed by then; CPU {cpu:.2f} s")


def _peek(sock):
    try:
        sock.setblocking(False)
        return sock.recv(12, socket.MSG_PEEK).startswith(b"HTTP/1.1 408")
    except OSError:
        return False


def upstream_conns(fake_url, pid):
    port = fake_url.rsplit(":", 1)[1]
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"dport = :{port}"],
                         capture_output=True, text=True).stdout
    return sum(f"pid={pid}," in line for line in out.splitlines())


def unread(stack, binary):
    proc, addr, _ = stack.proxy(binary)
    rss0, cpu0 = rss_mib(proc.pid), cpu_s(proc.pid)
    body = json.dumps({"model": "m", "stream": True, "max_tokens": 5_000_000}).encode()
    socks = []
    for _ in range(10):
        s = connect(addr)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(post_head(len(body)) + body)
        socks.append(s)
    time.sleep(5)
    rss1, open1 = rss_mib(proc.pid), upstream_conns(stack.fake_url, proc.pid)
    cpu1 = cpu_s(proc.pid) - cpu0
    wait = float(os.environ.get("ATTACK_UNREAD_WAIT", "85"))
    time.sleep(wait)
    rss2, open2 = rss_mib(proc.pid), upstream_conns(stack.fake_url, proc.pid)
    cpu = cpu_s(proc.pid) - cpu0
    proc.kill()
    return (f"10 clients that never read a long stream: RSS {rss0:.0f} -> {rss1:.0f} MiB at 5 s, "
            f"{rss2:.0f} MiB at {5 + wait:.0f} s; upstream connections open {open1} at 5 s, "
            f"{open2} at {5 + wait:.0f} s; CPU {cpu1:.2f} s in the first 5 s, {cpu:.2f} s in all")


def fds(stack, binary):
    proc, addr, log = stack.proxy(binary, prlimit=1024)
    rss0, cpu0 = rss_mib(proc.pid), cpu_s(proc.pid)
    socks = [connect(addr) for _ in range(1030)]
    time.sleep(1)
    served, took = 0, []
    for _ in range(5):
        started = time.time()
        try:
            status, _ = http("POST", f"http://{addr}/v1/chat/completions",
                             {"model": "m", "messages": []}, timeout=5)
            served += status == 200
        except OSError:
            pass
        took.append(time.time() - started)
    time.sleep(2)
    rss1, cpu = rss_mib(proc.pid), cpu_s(proc.pid) - cpu0
    proc.kill()
    log.seek(0)
    text = log.read()
    warnings = text.count("accept failed")
    return (f"1030 silent connections, 1024 descriptors: {served} of 5 requests served "
            f"(slowest {max(took):.2f} s); {warnings} 'accept failed' log lines; "
            f"RSS {rss0:.0f} -> {rss1:.0f} MiB; CPU {cpu:.2f} s")


def drain(stack, binary):
    proc, addr, log = stack.proxy(binary)
    body = json.dumps({"model": "m", "stream": True, "max_tokens": 10_000}).encode()
    stream = connect(addr)
    stream.sendall(post_head(len(body)) + body)
    stalled = connect(addr)
    stalled.sendall(post_head(1000) + b'{"model":')
    time.sleep(0.5)
    started = time.time()
    proc.send_signal(15)
    proc.wait(timeout=60)
    took = time.time() - started
    log.seek(0)
    stopped = re.search(r"aborted_connections=(\d+)", log.read())
    return (f"SIGTERM with a stream and a stalled body: exit after {took:.1f} s (grace 30 s), "
            f"aborted_connections={stopped.group(1) if stopped else '?'}")


class HugeServer:
    """An upstream serving model `big` with answers no real server should
    send: a 20 MiB SSE line written 4 KiB at a time (streams), a 16 MiB JSON
    body with its usage at the end (anything else)."""

    SSE_LINE = 20 * MIB

    def __init__(self):
        import http.server
        import threading

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                body = b'{"object":"list","data":[{"id":"big","object":"model"}]}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                request = json.loads(self.rfile.read(length))
                try:
                    if request.get("stream"):
                        outer.sse(self)
                    else:
                        outer.json(self)
                except OSError:
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def _chunk(handler, data):
        handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def sse(self, handler):
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        self._chunk(handler, b'data: {"x":"')
        piece = b"a" * 4096
        for _ in range(self.SSE_LINE // 4096):
            self._chunk(handler, piece)
        self._chunk(handler, b'"}\n\ndata: [DONE]\n\n')
        handler.wfile.write(b"0\r\n\r\n")

    def json(self, handler):
        item = b'{"object":"embedding","embedding":[' + b"0.125," * 1000 + b"0.5]},"
        count = 16 * MIB // len(item)
        head, tail = b'{"object":"list","data":[', b'{}],"usage":{"prompt_tokens":7,"total_tokens":7}}'
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(head) + count * len(item) + len(tail)))
        handler.end_headers()
        handler.wfile.write(head)
        for _ in range(count):
            handler.wfile.write(item)
        handler.wfile.write(tail)

    def stop(self):
        self.server.shutdown()


def _huge(stack):
    if getattr(stack, "huge", None) is None:
        stack.huge = HugeServer()
        http("POST", f"http://{stack.http}/api/endpoints",
             {"name": "huge", "baseUrl": stack.huge.url, "models": ["big"]})
        time.sleep(1)
    return stack.huge


def _wait_model(addr, model):
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if f'"{model}"'.encode() in http("GET", f"http://{addr}/v1/models")[1]:
                return
        except OSError:
            pass
        time.sleep(0.2)


def sseline(stack, binary):
    _huge(stack)
    proc, addr, _ = stack.proxy(binary)
    _wait_model(addr, "big")
    rss0, cpu0 = rss_mib(proc.pid), cpu_s(proc.pid)
    body = json.dumps({"model": "big", "stream": True, "messages": []}).encode()
    s = connect(addr)
    s.settimeout(120)
    s.sendall(post_head(len(body)) + body)
    received, started = 0, time.time()
    while True:
        data = s.recv(1 << 16)
        if not data:
            break
        received += len(data)
        if data.endswith(b"0\r\n\r\n"):
            break
    took = time.time() - started
    rss1, cpu = rss_mib(proc.pid), cpu_s(proc.pid) - cpu0
    proc.kill()
    return (f"one 20 MiB SSE line in 4 KiB writes: client got {received / MIB:.1f} MiB in {took:.1f} s; "
            f"proxy CPU {cpu:.2f} s; RSS {rss0:.0f} -> {rss1:.0f} MiB")


def bigjson(stack, binary):
    _huge(stack)
    proc, addr, _ = stack.proxy(binary)
    _wait_model(addr, "big")
    rss0, cpu0 = rss_mib(proc.pid), cpu_s(proc.pid)
    body = json.dumps({"model": "big", "input": "x"}).encode()
    head = post_head(len(body)).replace(b"/v1/chat/completions", b"/v1/embeddings")
    socks = []
    for _ in range(10):
        s = connect(addr)
        s.settimeout(20)
        s.sendall(head + body)
        got = 0
        while got < 14 * MIB:
            data = s.recv(1 << 16)
            if not data:
                break
            got += len(data)
        socks.append(s)
    time.sleep(3)
    rss1, cpu = rss_mib(proc.pid), cpu_s(proc.pid) - cpu0
    proc.kill()
    return (f"10 clients that stop reading 2 MiB before the end of a 16 MiB JSON answer: "
            f"RSS {rss0:.0f} -> {rss1:.0f} MiB; CPU {cpu:.2f} s")


ATTACKS = {"silent": silent, "stalled": stalled, "unread": unread, "fds": fds, "drain": drain,
           "sseline": sseline, "bigjson": bigjson}


def main():
    binary = sys.argv[1]
    chosen = sys.argv[2:] or list(ATTACKS)
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    stack = Stack()
    try:
        for name in chosen:
            print(f"{name}: {ATTACKS[name](stack, binary)}", flush=True)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
