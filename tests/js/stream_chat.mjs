// One streamed hybrid/auto chat through the OpenAI JavaScript SDK, sent the way
// an agent sends it. The endpoint and key come from OPENAI_BASE_URL and
// OPENAI_API_KEY (what `hybrid-compute dev endpoint` prints). Prints what arrived
// as one JSON line, then exits non-zero unless more than one content chunk, the
// usage and the router's route headers came.
import assert from "node:assert/strict";

import OpenAI from "openai";
import { VERSION } from "openai/version";

const client = new OpenAI({ maxRetries: 0, timeout: 120_000 });
const { data: stream, response } = await client.chat.completions
  .create({
    model: "hybrid/auto",
    messages: [{ role: "user", content: "Say hello." }],
    max_tokens: 16,
    stream: true,
    stream_options: { include_usage: true },
  })
  .withResponse();

const contents = [];
let usage = null;
for await (const chunk of stream) {
  const content = chunk.choices[0]?.delta?.content;
  if (content) contents.push(content);
  if (chunk.usage) usage = chunk.usage;
}

const seen = {
  sdkVersion: VERSION,
  nodeVersion: process.versions.node,
  status: response.status,
  route: response.headers.get("x-hybrid-route"),
  servedBy: response.headers.get("x-hybrid-model"),
  contentChunks: contents.length,
  usage,
};
console.log(JSON.stringify(seen));

assert.equal(seen.route, "local", "x-hybrid-route");
assert.equal(seen.servedBy, "local/fast", "x-hybrid-model");
assert.ok(contents.length > 1, `more than one content chunk, got ${contents.length}`);
assert.ok(usage && usage.completion_tokens >= 1, "usage with completion tokens at the end");
