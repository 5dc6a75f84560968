"""Conformance: real clients × real third-party servers, direct and through llmlb.

For every client (openai-python sync and async, LangChain's ChatOpenAI, the
openai Node SDK) × server (LiteLLM's proxy, mock-ai-api) × kind of call the
server has (thirdparty.MODELS), the same call is made against the server
directly and through llmlb-proxy:

- the client sees the same thing both ways (text, finish reason, tool calls,
  usage), except that usage reaches a streaming client only when it asked
  for it (`stream_options.include_usage`);
- the dashboard (`/api/dashboard/stats` and `/api/dashboard/endpoints`) moves
  by exactly one attempt, one success, no failure, and the tokens the server
  reported for that request (read from a direct call with usage asked for).

docs/compatibility.md lists the matrix and what each server does.
"""

import json
import urllib.request

import pytest

import clients
import thirdparty
from conftest import eventually, http_json

CASES = [
    pytest.param(server, client, kind, id=f"{server}-{client}-{kind}")
    for server, models in thirdparty.MODELS.items()
    for kind in clients.KINDS
    if kind in models
    for client in clients.CLIENTS
]

# Tokens each server reports per (server, kind): measured once per session.
_truth = {}


def figures(world, server):
    """The dashboard's counters: the totals and the server's endpoint entry."""
    stats = http_json("GET", f"{world['rest']}/api/dashboard/stats")
    entries = http_json("GET", f"{world['rest']}/api/dashboard/endpoints")["endpoints"]
    entry = next(e for e in entries if e["id"] == world["endpoints"][server])
    keys = ["totalRequests", "successfulRequests", "failedRequests", "totalInputTokens", "totalOutputTokens"]
    return {
        "stats": [int(stats.get(k, 0)) for k in keys],
        "endpoint": [int(entry.get(k, 0)) for k in keys],
    }


def server_usage(server, kind, model):
    """[input, output] tokens the server reports for this call, asked directly
    with usage on (what the proxy asks for on a stream)."""
    key = (server.name, kind)
    if key in _truth:
        return _truth[key]
    url, body = f"{server.url}/v1/chat/completions", {"model": model, "messages": clients.MESSAGES}
    if kind in ("chat_tools", "chat_stream_tools"):
        body["tools"] = [clients.TOOL]
    if kind in clients.STREAMS and kind.startswith("chat"):
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    if kind.startswith("completions"):
        url, body = f"{server.url}/v1/completions", {"model": model, "prompt": clients.PROMPT}
        if kind == "completions_stream":
            body |= {"stream": True, "stream_options": {"include_usage": True}}
    if kind == "embeddings":
        url, body = f"{server.url}/v1/embeddings", {"model": model, "input": ["a", "b"]}
    if kind.startswith("responses"):
        url, body = f"{server.url}/v1/responses", {"model": model, "input": clients.PROMPT}
        if kind == "responses_stream":
            body["stream"] = True
    headers = {"content-type": "application/json"}
    if server.api_key:
        headers["authorization"] = f"Bearer {server.api_key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read().decode()
    usage = None
    if body.get("stream"):
        for line in raw.splitlines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            u = event.get("usage") or (event.get("response") or {}).get("usage")
            if u:
                usage = u
    else:
        usage = json.loads(raw).get("usage")
    assert usage, f"{server.name} reported no usage for {kind}: {raw[:500]}"
    tokens = [
        usage.get("prompt_tokens", usage.get("input_tokens", 0)),
        usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0,
    ]
    _truth[key] = tokens
    return tokens


def both_ways(client, kind, server, proxy, model):
    """(direct, via llmlb) as the client sees them."""
    if client == "openai-node":  # one node process for both calls
        return tuple(clients.node_batch([
            {"kind": kind, "base": server.url, "apiKey": server.api_key, "model": model},
            {"kind": kind, "base": proxy, "apiKey": None, "model": model},
        ]))
    direct = clients.run(client, kind, server.url, server.api_key, model)
    return direct, clients.run(client, kind, proxy, None, model)


@pytest.mark.parametrize(("server_name", "client", "kind"), CASES)
def test_client_sees_the_server_and_the_dashboard_counts_it(world, server_name, client, kind):
    server = world["servers"][server_name]
    model = server.models[kind]
    tokens_in, tokens_out = server_usage(server, kind, model)
    before = figures(world, server_name)

    direct, via = both_ways(client, kind, server, world["proxy"], model)

    # What the client sees, and what the dashboard counts: one attempt, a
    # success, the server's tokens. Both are checked, and reported together.
    problems = []
    if kind in clients.USAGE_NOT_ASKED:
        if via.usage is not None or via.usage_events:
            problems.append(f"usage the client did not ask for reached it: {via}")
        via.usage, via.usage_events = None, 0
        direct.usage, direct.usage_events = None, 0  # some servers send it unasked: see docs
    if via.to_dict() != direct.to_dict():
        problems.append(f"the client saw\n  direct:    {direct}\n  via llmlb: {via}")
    if kind == "chat_stream_usage" and via.usage_events != 1:
        problems.append(f"one usage chunk expected, got {via.usage_events}")

    delta = [1, 1, 0, tokens_in, tokens_out]

    def moved():
        now = figures(world, server_name)
        return now if now["stats"][0] > before["stats"][0] else None

    after = eventually(moved, "the request on the dashboard", timeout=10)
    for part in ("stats", "endpoint"):
        got = [a - b for a, b in zip(after[part], before[part])]
        if got != delta:
            problems.append(
                f"dashboard {part} moved by {got} (attempts, successes, failures, input, output "
                f"tokens), expected {delta}"
            )
    assert not problems, "\n".join(problems)
