"""The clients of the conformance matrix, each reduced to what its user sees.

`run(client, kind, base, api_key, model)` makes one call of `kind` with one
client and returns a `Seen`: the text, finish reason, tool calls and usage
as that client exposes them (ids and timestamps left out: they differ on
every call). The same function is called against a server directly and
through llmlb, and the two are compared.
"""

import asyncio
import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import openai

CLIENTS = ["openai-sync", "openai-async", "langchain", "openai-node"]

# Every kind of call; a server lists the ones it has (thirdparty.MODELS).
KINDS = [
    "chat", "chat_tools", "chat_stream", "chat_stream_usage", "chat_stream_tools",
    "completions", "completions_stream", "embeddings", "responses", "responses_stream",
]
STREAMS = {"chat_stream", "chat_stream_usage", "chat_stream_tools", "completions_stream", "responses_stream"}
# Streams whose client did not ask for usage: the proxy asks for it and must
# hide it.
USAGE_NOT_ASKED = {"chat_stream", "chat_stream_tools", "completions_stream"}

PROMPT = "hi"
MESSAGES = [{"role": "user", "content": PROMPT}]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
NODE_CLIENT = Path(__file__).parent / "node" / "client.cjs"
NODE_MODULES = Path(os.environ.get("LLMLB_NODE") or Path.home() / ".cache" / "llmlb-node") / "node_modules"


@dataclass
class Seen:
    content: str | None = None
    finish_reason: str | None = None
    tool_calls: list = field(default_factory=list)  # [name, parsed arguments]
    usage: list | None = None  # [input tokens, output tokens] as the client shows them
    usage_events: int = 0  # stream events that carried usage
    embeddings: list | None = None  # [count, dimensions, first value]

    def to_dict(self):
        return asdict(self)


def _usage(u):
    if u is None:
        return None
    if hasattr(u, "prompt_tokens"):
        return [u.prompt_tokens, u.completion_tokens]
    return [u.input_tokens, u.output_tokens]


def _tool_calls(calls):
    return [[c.function.name, json.loads(c.function.arguments)] for c in calls or []]


def _merge_stream(seen, chunks):
    """Chat-completion chunks → what a client assembles from them."""
    text, calls = [], {}
    for c in chunks:
        if c.usage is not None:
            seen.usage = _usage(c.usage)
            seen.usage_events += 1
        for choice in c.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, ["", ""])
                if tc.function and tc.function.name:
                    entry[0] = tc.function.name
                if tc.function and tc.function.arguments:
                    entry[1] += tc.function.arguments
            if choice.finish_reason:
                seen.finish_reason = choice.finish_reason
    seen.content = "".join(text) or None
    seen.tool_calls = [[n, json.loads(a)] for _, (n, a) in sorted(calls.items())]
    return seen


def _merge_completion_stream(seen, chunks):
    """Legacy completion chunks → the text, finish reason and usage."""
    text = []
    for c in chunks:
        if c.usage is not None:
            seen.usage = _usage(c.usage)
            seen.usage_events += 1
        for choice in c.choices or []:
            if choice.text:
                text.append(choice.text)
            if choice.finish_reason:
                seen.finish_reason = choice.finish_reason
    seen.content = "".join(text) or None
    return seen


def _response_events(seen, events):
    text = []
    for e in events:
        if e.type == "response.output_text.delta":
            text.append(e.delta)
        elif e.type in ("response.completed", "response.failed", "response.incomplete"):
            seen.finish_reason = e.response.status
            if e.response.usage is not None:
                seen.usage = _usage(e.response.usage)
                seen.usage_events += 1
    seen.content = "".join(text) or None
    return seen


def _chat(seen, r):
    choice = r.choices[0]
    seen.content = choice.message.content
    seen.finish_reason = choice.finish_reason
    seen.tool_calls = _tool_calls(choice.message.tool_calls)
    seen.usage = _usage(r.usage)
    return seen


def _embeddings(seen, r):
    seen.embeddings = [len(r.data), len(r.data[0].embedding), r.data[0].embedding[0]]
    seen.usage = [r.usage.prompt_tokens, 0] if r.usage else None
    return seen


def _response(seen, r):
    seen.content = r.output_text or None
    seen.finish_reason = r.status
    seen.usage = _usage(r.usage)
    return seen


# === openai-python, sync ===


def _openai_sync(kind, base, api_key, model):
    c = openai.OpenAI(base_url=f"{base}/v1", api_key=api_key or "unused", max_retries=0, timeout=30)
    seen = Seen()
    match kind:
        case "chat":
            return _chat(seen, c.chat.completions.create(model=model, messages=MESSAGES))
        case "chat_tools":
            return _chat(seen, c.chat.completions.create(model=model, messages=MESSAGES, tools=[TOOL]))
        case "chat_stream" | "chat_stream_tools":
            extra = {"tools": [TOOL]} if kind == "chat_stream_tools" else {}
            return _merge_stream(seen, c.chat.completions.create(model=model, messages=MESSAGES, stream=True, **extra))
        case "chat_stream_usage":
            return _merge_stream(seen, c.chat.completions.create(
                model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
        case "completions":
            r = c.completions.create(model=model, prompt=PROMPT)
            seen.content, seen.finish_reason = r.choices[0].text, r.choices[0].finish_reason
            seen.usage = _usage(r.usage)
            return seen
        case "completions_stream":
            return _merge_completion_stream(seen, c.completions.create(model=model, prompt=PROMPT, stream=True))
        case "embeddings":
            return _embeddings(seen, c.embeddings.create(model=model, input=["a", "b"]))
        case "responses":
            return _response(seen, c.responses.create(model=model, input=PROMPT))
        case "responses_stream":
            return _response_events(seen, c.responses.create(model=model, input=PROMPT, stream=True))
    raise ValueError(kind)


# === openai-python, async ===


async def _openai_async(kind, base, api_key, model):
    c = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=api_key or "unused", max_retries=0, timeout=30)
    seen = Seen()
    async with c:
        match kind:
            case "chat":
                return _chat(seen, await c.chat.completions.create(model=model, messages=MESSAGES))
            case "chat_tools":
                return _chat(seen, await c.chat.completions.create(model=model, messages=MESSAGES, tools=[TOOL]))
            case "chat_stream" | "chat_stream_usage" | "chat_stream_tools":
                extra = {"tools": [TOOL]} if kind == "chat_stream_tools" else {}
                if kind == "chat_stream_usage":
                    extra["stream_options"] = {"include_usage": True}
                stream = await c.chat.completions.create(model=model, messages=MESSAGES, stream=True, **extra)
                return _merge_stream(seen, [chunk async for chunk in stream])
            case "completions":
                r = await c.completions.create(model=model, prompt=PROMPT)
                seen.content, seen.finish_reason = r.choices[0].text, r.choices[0].finish_reason
                seen.usage = _usage(r.usage)
                return seen
            case "completions_stream":
                stream = await c.completions.create(model=model, prompt=PROMPT, stream=True)
                return _merge_completion_stream(seen, [chunk async for chunk in stream])
            case "embeddings":
                return _embeddings(seen, await c.embeddings.create(model=model, input=["a", "b"]))
            case "responses":
                return _response(seen, await c.responses.create(model=model, input=PROMPT))
            case "responses_stream":
                stream = await c.responses.create(model=model, input=PROMPT, stream=True)
                return _response_events(seen, [e async for e in stream])
    raise ValueError(kind)


# === LangChain ===


def _lc_message(seen, m, chunks=None):
    seen.content = m.text if isinstance(m.text, str) else m.text()
    seen.content = seen.content or None
    seen.finish_reason = m.response_metadata.get("finish_reason") or m.response_metadata.get("status")
    seen.tool_calls = [[tc["name"], tc["args"]] for tc in m.tool_calls]
    if m.usage_metadata:
        seen.usage = [m.usage_metadata["input_tokens"], m.usage_metadata["output_tokens"]]
    seen.usage_events = sum(1 for c in chunks if c.usage_metadata) if chunks is not None else int(bool(m.usage_metadata))
    return seen


def _langchain(kind, base, api_key, model):
    from langchain_openai import ChatOpenAI, OpenAI, OpenAIEmbeddings

    common = {"model": model, "base_url": f"{base}/v1", "api_key": api_key or "unused", "max_retries": 0,
              "timeout": 30}
    seen = Seen()
    match kind:
        case "chat":
            return _lc_message(seen, ChatOpenAI(**common).invoke(PROMPT))
        case "chat_tools":
            return _lc_message(seen, ChatOpenAI(**common).bind_tools([TOOL]).invoke(PROMPT))
        case "chat_stream" | "chat_stream_usage" | "chat_stream_tools":
            llm = ChatOpenAI(**common, stream_usage=kind == "chat_stream_usage")
            if kind == "chat_stream_tools":
                llm = llm.bind_tools([TOOL])
            chunks = list(llm.stream(PROMPT))
            merged = chunks[0]
            for c in chunks[1:]:
                merged = merged + c
            return _lc_message(seen, merged, chunks)
        case "completions":
            r = OpenAI(**common).generate([PROMPT])
            gen = r.generations[0][0]
            seen.content, seen.finish_reason = gen.text, (gen.generation_info or {}).get("finish_reason")
            u = (r.llm_output or {}).get("token_usage") or {}
            seen.usage = [u["prompt_tokens"], u["completion_tokens"]] if u else None
            return seen
        case "completions_stream":
            # LangChain's LLM.stream yields text only.
            seen.content = "".join(OpenAI(**common).stream(PROMPT)) or None
            return seen
        case "embeddings":
            e = OpenAIEmbeddings(**common, check_embedding_ctx_length=False).embed_documents(["a", "b"])
            seen.embeddings = [len(e), len(e[0]), e[0][0]]
            return seen
        case "responses" | "responses_stream":
            llm = ChatOpenAI(**common, use_responses_api=True)
            if kind == "responses":
                return _lc_message(seen, llm.invoke(PROMPT))
            chunks = list(llm.stream(PROMPT))
            merged = chunks[0]
            for c in chunks[1:]:
                merged = merged + c
            return _lc_message(seen, merged, chunks)
    raise ValueError(kind)


# === openai (Node) ===


def node_batch(jobs):
    """Runs [{kind, base, apiKey, model}] in one `node` process; one Seen each."""
    assert NODE_MODULES.is_dir(), f"{NODE_MODULES} missing: run scripts/test-deps.sh (make test does)"
    out = subprocess.run(
        ["node", str(NODE_CLIENT)], input=json.dumps(jobs), capture_output=True, text=True, timeout=120,
        env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
    )
    assert out.returncode == 0, f"node client failed:\n{out.stderr[-3000:]}"
    results = json.loads(out.stdout)
    for r in results:
        if "error" in r:
            raise RuntimeError(f"openai-node: {r['error']}")
    return [Seen(**r) for r in results]


def run(client, kind, base, api_key, model):
    match client:
        case "openai-sync":
            return _openai_sync(kind, base, api_key, model)
        case "openai-async":
            return asyncio.run(_openai_async(kind, base, api_key, model))
        case "langchain":
            return _langchain(kind, base, api_key, model)
        case "openai-node":
            return node_batch([{"kind": kind, "base": base, "apiKey": api_key, "model": model}])[0]
    raise ValueError(client)
