/**
 * Counts the KV writes of one resumable answer (the default fixture at the default replay pace),
 * as `/chat` SSE and as `/v1/messages` with `x-sluice-resumable: true`: the figures in
 * docs/chat.md. Not a test; run it by hand:
 *
 *   deno run --allow-read --allow-env bench/resume_writes_bench.ts
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
/** One answer on `path`; what it cost in KV. */
async function measure(path: string, headers: Record<string, string>, body: unknown) {
  commits = sets = eventBytes = 0;
  const started = performance.now();
  const response = await app.request(path, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  await new Promise((resolve) => setTimeout(resolve, 300)); // the last commit
  return {
    path,
    answerMs: Math.round(performance.now() - started),
    responseBytes: new TextEncoder().encode(text).length,
    events: text.match(/^id:/gm)?.length ?? 0,
    commits,
    sets,
    eventBytes,
  };
}

console.log(JSON.stringify(
  await measure("/chat", { accept: "text/event-stream" }, { message: "Tell me about sluice" }),
));
console.log(JSON.stringify(
  await measure("/v1/messages", { "x-sluice-resumable": "true" }, {
    model: config.defaultModel,
    max_tokens: 1024,
    stream: true,
    messages: [{ role: "user", content: "Tell me about sluice" }],
  }),
));
kv.close();
