/**
 * Counts the KV writes of one resumable `/chat` SSE answer (the default fixture at the default
 * replay pace), the figures in docs/chat.md. Not a test; run it by hand:
 *
 *   deno run --allow-read --allow-env tests/measure_resume_writes.ts
 */
import { createApp } from "../lib/app.ts";
import { parseConfig } from "../lib/config.ts";
import { silentLogger } from "../lib/log.ts";
import { loadFixtures } from "../lib/replay/fixtures.ts";
import { createReplayFetch } from "../lib/replay/replay.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";

const config = parseConfig({ SLUICE_LOG_LEVEL: "silent" });
const kv = await Deno.openKv(":memory:");
let commits = 0;
let sets = 0;
let eventBytes = 0;
const atomic = kv.atomic.bind(kv);
// Wraps each atomic operation to count what lands under ["sluice", "streams"].
kv.atomic = () => {
  const op = atomic();
  const set = op.set.bind(op);
  const commit = op.commit.bind(op);
  let streams = false;
  op.set = (key, value, options) => {
    if (key[1] === "streams") {
      streams = true;
      sets++;
      const bytes = (value as { bytes?: Uint8Array }).bytes;
      if (bytes) eventBytes += bytes.length;
    }
    return set(key, value, options);
  };
  op.commit = () => {
    if (streams) commits++;
    return commit();
  };
  return op;
};
const upstream = createUpstream({
  mode: "replay",
  apiKey: "replay",
  baseURL: "http://replay.test",
  maxRetries: 0,
  fetch: createReplayFetch(await loadFixtures(config.fixturesDir), { pace: config.replay }),
});
const app = createApp({ config, upstream, logger: silentLogger, kv });
const started = performance.now();
const response = await app.request("/chat", {
  method: "POST",
  headers: { accept: "text/event-stream" },
  body: JSON.stringify({ message: "Tell me about sluice" }),
});
const body = await response.text();
await new Promise((resolve) => setTimeout(resolve, 300)); // the last commit
console.log(JSON.stringify({
  answerMs: Math.round(performance.now() - started),
  responseBytes: new TextEncoder().encode(body).length,
  events: body.match(/^id:/gm)?.length ?? 0,
  commits,
  sets,
  eventBytes,
}));
kv.close();
