"""Third-party OpenAI-compatible servers from PyPI, run locally with no network.

Both are uvicorn servers, started once per session, each in its own process
group, on a free port (uvicorn binds port 0 and prints the one it got). Their
logs go to files in the session's temporary directory; a server that does not
come up fails with the end of its log.

- LiteLLM's proxy (`litellm[proxy]`): models with `mock_response` /
  `mock_tool_calls` answer without calling anyone. It needs a master key,
  which clients (and llmlb, as the endpoint's `apiKey`) send as Bearer.
- mock-ai-api: canned answers chosen by the model name (`gpt-4.1`,
  `gpt-4.1:mock-tool-call`, ...). Installed in a folder of its own by
  scripts/test-deps.sh (see there why), put on PYTHONPATH here.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

VENV = Path(os.environ.get("LLMLB_VENV") or sys.prefix)
LITELLM_KEY = "sk-llmlb-conformance"

LITELLM_CONFIG = """
model_list:
  - model_name: ll-chat
    litellm_params:
      model: openai/ll-chat
      api_key: none
      mock_response: "Hello from LiteLLM mock"
  - model_name: ll-tools
    litellm_params:
      model: openai/ll-tools
      api_key: none
      mock_tool_calls:
        - id: call_1
          type: function
          function: {name: get_weather, arguments: '{"city": "Paris"}'}
  - model_name: ll-embed
    litellm_params:
      model: openai/text-embedding-3-small
      api_key: none
      mock_response: [0.1, 0.2, 0.3]
  # Rate limited: each call raises a RateLimitError (429). With two
  # deployments LiteLLM's router cools them down after a failure, and while
  # both are cooling down it answers 429 with `Retry-After` (cooldown_time).
  - model_name: ll-ratelimited
    litellm_params:
      model: openai/ll-ratelimited-a
      api_key: none
      mock_response: litellm.RateLimitError
  - model_name: ll-ratelimited
    litellm_params:
      model: openai/ll-ratelimited-b
      api_key: none
      mock_response: litellm.RateLimitError
router_settings:
  num_retries: 0
  allowed_fails: 0
  cooldown_time: 2
"""

# Model to call per kind of call, for each server: the kinds a server lacks
# are left out (LiteLLM's mock: no tool calls in streams, and a streamed
# /v1/responses answers an error event).
LITELLM_MODELS = {
    "chat": "ll-chat", "chat_tools": "ll-tools", "chat_stream": "ll-chat",
    "chat_stream_usage": "ll-chat", "completions": "ll-chat", "completions_stream": "ll-chat",
    "embeddings": "ll-embed", "responses": "ll-chat",
}
MOCK_AI_API_MODELS = {
    "chat": "gpt-4.1", "chat_tools": "gpt-4.1:mock-tool-call", "chat_stream": "gpt-4.1",
    "chat_stream_usage": "gpt-4.1", "chat_stream_tools": "gpt-4.1:mock-tool-stream",
    "completions": "gpt-3.5-turbo-instruct", "completions_stream": "gpt-3.5-turbo-instruct",
    "embeddings": "text-embedding-3-small",
    "responses": "gpt-4.1", "responses_stream": "gpt-4.1",
}
MODELS = {"litellm": LITELLM_MODELS, "mock-ai-api": MOCK_AI_API_MODELS}

READY = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


class Server:
    """A started third-party server: its base URL (no /v1), key and models by kind."""

    def __init__(self, name, proc, log, url, api_key, models):
        self.name, self.proc, self.log, self.url = name, proc, log, url
        self.api_key, self.models = api_key, models

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def _launch(args, log, env):
    out = open(log, "w")
    return subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        env={**os.environ, **env}, start_new_session=True,
    )


def _wait_url(name, proc, log, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = Path(log).read_text(errors="replace")
        if m := READY.search(text):
            return m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = Path(log).read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{name} did not come up (exit code {proc.poll()}); its log ends:\n{tail}")


def start_litellm(tmp):
    config = Path(tmp, "litellm.yaml")
    config.write_text(LITELLM_CONFIG)
    log = Path(tmp, "litellm.log")
    proc = _launch(
        [str(VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", "0",
         "--num_workers", "1"],
        log,
        # No network here: without LITELLM_LOCAL_MODEL_COST_MAP it spends ~8 s
        # failing to download its model price list before it starts.
        {"LITELLM_MASTER_KEY": LITELLM_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    return lambda: Server("litellm", proc, log, _wait_url("litellm", proc, log), LITELLM_KEY, LITELLM_MODELS)


def start_mock_ai_api(tmp):
    log = Path(tmp, "mock-ai-api.log")
    proc = _launch(
        [str(VENV / "bin" / "python"), "-m", "uvicorn", "app.openai_app:app",
         "--host", "127.0.0.1", "--port", "0"],
        log,
        {"PYTHONPATH": str(VENV / "mock-ai-api")},
    )
    return lambda: Server(
        "mock-ai-api", proc, log, _wait_url("mock-ai-api", proc, log), None, MOCK_AI_API_MODELS
    )
