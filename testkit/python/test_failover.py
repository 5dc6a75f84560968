"""A rate-limited endpoint next to a healthy one: no request is lost.

LiteLLM's `ll-ratelimited` model answers 429 (`mock_response:
litellm.RateLimitError`), and 429 with `Retry-After: 2` while its router has
both deployments of the model cooling down (thirdparty.LITELLM_CONFIG). A fake-openai serves the same model name and
is healthy. Every request through llmlb must succeed, and the dashboard must
show each attempt where it happened: the failures on the rate-limited
endpoint, the successes on the healthy one.
"""

import tempfile
import urllib.error
import urllib.request

import openai

from conftest import eventually, http_json, spawn, start_control_plane, start_proxy, stop
import thirdparty

REQUESTS = 20


def counters(rest):
    """Stats and endpoint figures from one overview: one consistent read."""
    overview = http_json("GET", f"{rest}/api/dashboard/overview")
    return overview["stats"], {e["name"]: e for e in overview["endpoints"]}


def direct_answers(litellm, n=6):
    """(status, Retry-After) of n direct calls to the rate-limited model."""
    seen = []
    for _ in range(n):
        req = urllib.request.Request(
            f"{litellm.url}/v1/chat/completions",
            data=b'{"model": "ll-ratelimited", "messages": [{"role": "user", "content": "hi"}]}',
            headers={"content-type": "application/json", "authorization": f"Bearer {litellm.api_key}"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                seen.append((resp.status, resp.headers.get("retry-after")))
        except urllib.error.HTTPError as e:
            seen.append((e.code, e.headers.get("retry-after")))
    return seen


def test_every_request_succeeds_next_to_a_rate_limited_endpoint(servers):
    litellm = servers["litellm"]
    answers = direct_answers(litellm)
    assert all(status == 429 for status, _ in answers), answers
    assert any(retry for _, retry in answers), f"LiteLLM sent no Retry-After: {answers}"

    tmp = tempfile.TemporaryDirectory()
    procs = []
    try:
        cp = start_control_plane(procs, tmp.name)
        rest = f"http://{cp['http']}"
        # The healthy endpoint answers after 600 ms: slower than the latency
        # the balancer assumes of an endpoint it has not measured (500 ms), so
        # the rate-limited one, whose 429s are no latency sample, stays the
        # cheaper pick and is tried whenever its cool-down allows. With a fast
        # healthy endpoint the balancer may never try the other one, and the
        # test would prove nothing (seen once in eight runs).
        fake, fake_url = spawn(
            "fake-openai", "--listen", "127.0.0.1:0", "--models", "ll-ratelimited", "--tokens", "5",
            "--latency", "600ms",
            ready_prefix="listening on",
        )
        procs.append(fake)
        http_json("POST", f"{rest}/api/endpoints", {
            "name": "litellm-ratelimited", "baseUrl": litellm.url, "apiKey": thirdparty.LITELLM_KEY,
            "models": ["ll-ratelimited"],
        })
        http_json("POST", f"{rest}/api/endpoints", {"name": "healthy", "baseUrl": fake_url})
        eventually(
            lambda: all(e["status"] == "ENDPOINT_STATUS_ONLINE" for e in counters(rest)[1].values()),
            "both endpoints ONLINE",
        )
        proxy = start_proxy(procs, cp)
        client = openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0, timeout=30)
        eventually(lambda: "ll-ratelimited" in [m.id for m in client.models.list()], "the proxy routes it")

        failed = []
        for i in range(REQUESTS):
            try:
                reply = client.chat.completions.create(
                    model="ll-ratelimited", messages=[{"role": "user", "content": f"hello {i}"}]
                )
                assert reply.choices[0].message.content
            except openai.APIStatusError as e:
                failed.append(e.status_code)
        assert not failed, f"{len(failed)} of {REQUESTS} requests failed: {failed}"

        def settled():
            # Wait until the attempts add up (the last 429's record may
            # still be on its way when the last success is counted).
            stats, entries = counters(rest)
            attempts = sum(int(e.get("totalRequests", 0)) for e in entries.values())
            done = int(entries["healthy"].get("successfulRequests", 0)) == REQUESTS
            return (stats, entries) if done and int(stats["totalRequests"]) == attempts else None

        stats, entries = eventually(settled, "the successes on the dashboard", timeout=10)
        limited, healthy = entries["litellm-ratelimited"], entries["healthy"]
        attempts_429 = int(limited.get("totalRequests", 0))
        print(f"{REQUESTS} requests: {attempts_429} attempts on the rate-limited endpoint, "
              f"{healthy.get('totalRequests')} on the healthy one")
        assert attempts_429 >= 1, "no request reached the rate-limited endpoint: the test proved nothing"
        assert int(limited.get("failedRequests", 0)) == attempts_429
        assert int(limited.get("successfulRequests", 0)) == 0
        assert int(healthy.get("totalRequests", 0)) == REQUESTS
        assert int(healthy.get("failedRequests", 0)) == 0
        assert int(stats["totalRequests"]) == REQUESTS + attempts_429
        assert int(stats["successfulRequests"]) == REQUESTS
        assert int(stats.get("failedRequests", 0)) == attempts_429
        assert int(stats["totalOutputTokens"]) == 5 * REQUESTS
    finally:
        for p in reversed(procs):
            stop(p)
        tmp.cleanup()
