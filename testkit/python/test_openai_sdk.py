"""The official OpenAI Python SDK against llmlb-proxy."""

import openai
import pytest

from conftest import eventually, http_json


@pytest.fixture()
def client(llmlb):
    return openai.OpenAI(base_url=f"{llmlb['proxy']}/v1", api_key="unused", max_retries=0)


def total_requests(llmlb):
    return int(http_json("GET", f"{llmlb['rest']}/api/dashboard/stats")["totalRequests"])


def test_chat_non_streaming(client, llmlb):
    before = total_requests(llmlb)
    reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 5
    eventually(lambda: total_requests(llmlb) == before + 1, "the request on the dashboard")


def test_chat_streaming_hides_the_usage_chunk_it_did_not_ask_for(client):
    chunks = list(
        client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert all(c.choices for c in chunks), "no usage-only chunk reaches a client that did not ask"


def test_chat_streaming_with_usage_when_asked(client):
    chunks = list(
        client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 5


def test_completions(client):
    reply = client.completions.create(model="demo", prompt="say hi")
    assert reply.choices[0].text
    assert reply.usage.completion_tokens == 5


def test_embeddings(client):
    reply = client.embeddings.create(model="demo", input=["a", "b"])
    assert len(reply.data) == 2
    assert len(reply.data[0].embedding) > 0


def test_models_list(client):
    assert "demo" in [m.id for m in client.models.list()]


def test_unknown_model_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404
