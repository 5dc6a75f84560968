// The openai Node SDK side of the conformance matrix (testkit/python/clients.py).
// Reads [{kind, base, apiKey, model}] as JSON on stdin, makes each call in turn
// and prints one JSON array: per call what the SDK's user sees, in the shape of
// clients.Seen (or {error} when the call threw). Needs NODE_PATH to point at
// the node_modules holding `openai` (scripts/test-deps.sh installs it).
"use strict";
const OpenAI = require("openai");

const PROMPT = "hi";
const MESSAGES = [{ role: "user", content: PROMPT }];
const TOOL = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } } },
  },
};

function seen() {
  return { content: null, finish_reason: null, tool_calls: [], usage: null, usage_events: 0, embeddings: null };
}

function usage(u) {
  if (u == null) return null;
  if (u.prompt_tokens !== undefined) return [u.prompt_tokens, u.completion_tokens];
  return [u.input_tokens, u.output_tokens];
}

function toolCalls(calls) {
  return (calls || []).map((c) => [c.function.name, JSON.parse(c.function.arguments)]);
}

async function mergeStream(s, stream) {
  const text = [];
  const calls = new Map();
  for await (const c of stream) {
    if (c.usage != null) {
      s.usage = usage(c.usage);
      s.usage_events += 1;
    }
    for (const choice of c.choices || []) {
      if (choice.delta && choice.delta.content) text.push(choice.delta.content);
      for (const tc of (choice.delta && choice.delta.tool_calls) || []) {
        const entry = calls.get(tc.index) || ["", ""];
        if (tc.function && tc.function.name) entry[0] = tc.function.name;
        if (tc.function && tc.function.arguments) entry[1] += tc.function.arguments;
        calls.set(tc.index, entry);
      }
      if (choice.finish_reason) s.finish_reason = choice.finish_reason;
    }
  }
  s.content = text.join("") || null;
  s.tool_calls = [...calls.entries()].sort((a, b) => a[0] - b[0]).map(([, [n, a]]) => [n, JSON.parse(a)]);
  return s;
}

function chat(s, r) {
  const choice = r.choices[0];
  s.content = choice.message.content;
  s.finish_reason = choice.finish_reason;
  s.tool_calls = toolCalls(choice.message.tool_calls);
  s.usage = usage(r.usage);
  return s;
}

async function call(job) {
  const c = new OpenAI({ baseURL: `${job.base}/v1`, apiKey: job.apiKey || "unused", maxRetries: 0, timeout: 30000 });
  const model = job.model;
  const s = seen();
  switch (job.kind) {
    case "chat":
      return chat(s, await c.chat.completions.create({ model, messages: MESSAGES }));
    case "chat_tools":
      return chat(s, await c.chat.completions.create({ model, messages: MESSAGES, tools: [TOOL] }));
    case "chat_stream":
      return mergeStream(s, await c.chat.completions.create({ model, messages: MESSAGES, stream: true }));
    case "chat_stream_tools":
      return mergeStream(s, await c.chat.completions.create({ model, messages: MESSAGES, stream: true, tools: [TOOL] }));
    case "chat_stream_usage":
      return mergeStream(
        s,
        await c.chat.completions.create({ model, messages: MESSAGES, stream: true, stream_options: { include_usage: true } }),
      );
    case "completions": {
      const r = await c.completions.create({ model, prompt: PROMPT });
      s.content = r.choices[0].text;
      s.finish_reason = r.choices[0].finish_reason;
      s.usage = usage(r.usage);
      return s;
    }
    case "completions_stream": {
      const text = [];
      for await (const chunk of await c.completions.create({ model, prompt: PROMPT, stream: true })) {
        if (chunk.usage != null) {
          s.usage = usage(chunk.usage);
          s.usage_events += 1;
        }
        for (const choice of chunk.choices || []) {
          if (choice.text) text.push(choice.text);
          if (choice.finish_reason) s.finish_reason = choice.finish_reason;
        }
      }
      s.content = text.join("") || null;
      return s;
    }
    case "embeddings": {
      const r = await c.embeddings.create({ model, input: ["a", "b"], encoding_format: "float" });
      s.embeddings = [r.data.length, r.data[0].embedding.length, r.data[0].embedding[0]];
      s.usage = r.usage ? [r.usage.prompt_tokens, 0] : null;
      return s;
    }
    case "responses": {
      const r = await c.responses.create({ model, input: PROMPT });
      s.content = r.output_text || null;
      s.finish_reason = r.status;
      s.usage = usage(r.usage);
      return s;
    }
    case "responses_stream": {
      const text = [];
      for await (const e of await c.responses.create({ model, input: PROMPT, stream: true })) {
        if (e.type === "response.output_text.delta") text.push(e.delta);
        if (e.type === "response.completed" || e.type === "response.failed" || e.type === "response.incomplete") {
          s.finish_reason = e.response.status;
          if (e.response.usage != null) {
            s.usage = usage(e.response.usage);
            s.usage_events += 1;
          }
        }
      }
      s.content = text.join("") || null;
      return s;
    }
    default:
      throw new Error(`unknown kind ${job.kind}`);
  }
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const jobs = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const out = [];
  for (const job of jobs) {
    try {
      out.push(await call(job));
    } catch (e) {
      out.push({ error: `${job.kind} ${job.model} at ${job.base}: ${e && e.stack ? e.stack : e}` });
    }
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
