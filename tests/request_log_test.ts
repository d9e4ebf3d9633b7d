import assert from "node:assert/strict";
import { createApp } from "../lib/app.ts";
import { keyIdOf } from "../lib/http/auth.ts";
import { createLogger } from "../lib/log.ts";
import type { RequestSummary } from "../lib/stats/request_summary.ts";
import { instantReplayUpstream, testConfig } from "./helpers.ts";

const GATEWAY_KEY = "gw-secret-key-123456";
const PROMPT = "my private question about the merger";

/** An app whose log lines are captured, and a promise per recorded request. */
async function loggedApp(format: "text" | "json") {
  const lines: string[] = [];
  const logger = createLogger({ level: "info", format, write: (_level, line) => lines.push(line) });
  const recorded: RequestSummary[] = [];
  let onRecord: () => void = () => {};
  const app = createApp({
    config: testConfig({ SLUICE_API_KEYS: GATEWAY_KEY }),
    upstream: await instantReplayUpstream(),
    logger,
    stats: {
      record(summary) {
        recorded.push(summary);
        onRecord();
      },
    },
  });
  const send = async (stream: boolean, key = GATEWAY_KEY) => {
    const done = new Promise<void>((resolve) => (onRecord = resolve));
    const response = await app.request("/v1/messages", {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "x-api-key": key,
        "x-sluice-fixture": "three-words",
      },
      body: JSON.stringify({
        model: "claude-haiku-4-5",
        max_tokens: 64,
        stream,
        messages: [{ role: "user", content: PROMPT }],
      }),
    });
    const body = await response.text();
    if (response.status !== 401) await done; // a 401 is never recorded
    onRecord = () => {};
    return { response, body };
  };
  return { lines, send, recorded };
}

Deno.test("one JSON log line per request, with its figures and no key or content", async (t) => {
  const { lines, send } = await loggedApp("json");
  const streamed = await send(true);
  const whole = await send(false);
  const requestLines = lines.map((line) => JSON.parse(line)).filter((l) => l.msg === "request");

  await t.step("exactly one line per request, each a JSON object", () => {
    assert.equal(requestLines.length, 2);
    for (const line of lines) assert.doesNotThrow(() => JSON.parse(line), line);
  });
  await t.step("the fields are the request's", async () => {
    const keyId = await keyIdOf(GATEWAY_KEY);
    for (const [line, stream] of [[requestLines[0], true], [requestLines[1], false]] as const) {
      assert.equal(line.level, "info");
      assert.match(line.time, /^\d{4}-\d\d-\d\dT/);
      assert.equal(line.key_id, keyId);
      assert.equal(line.endpoint, "/v1/messages");
      assert.equal(line.model, "claude-haiku-4-5");
      assert.equal(line.status, 200);
      assert.equal(line.streamed, stream);
      assert.equal(typeof line.ttft_ms, "number");
      assert.ok(line.duration_ms >= line.ttft_ms);
      // three-words: 24 input and 6 output tokens; on claude-haiku-4-5 ($1 / $5 per Mtok)
      // 24 + 30 = 54 / 1e6 USD.
      assert.deepEqual(line.tokens, { input: 24, output: 6, cache_write: 0, cache_read: 0 });
      assert.equal(line.cost_usd, 0.000054);
      assert.equal(line.outcome, "ok");
    }
    assert.equal(requestLines[0].request_id, streamed.response.headers.get("request-id"));
    assert.equal(requestLines[1].request_id, whole.response.headers.get("request-id"));
  });
  await t.step("no line holds the key, the prompt or the answer", () => {
    const answer = JSON.parse(whole.body).content[0].text;
    assert.ok(answer.length > 5);
    for (const line of lines) {
      assert.ok(!line.includes(GATEWAY_KEY), line);
      assert.ok(!line.includes(PROMPT), line);
      assert.ok(!line.includes(answer), line);
    }
  });
});

Deno.test("text format: one 'request' line per request, refusals included", async () => {
  const { lines, send } = await loggedApp("text");
  await send(true);
  const refused = await send(true, "not-a-gateway-key");
  assert.equal(refused.response.status, 401);
  const requestLines = lines.filter((line) => / INFO request \{/.test(line));
  // A 401 is not recorded (a caller without a key cannot write to the stats or the log).
  assert.equal(requestLines.length, 1);
  assert.match(requestLines[0], /"outcome":"ok"/);
  for (const line of lines) assert.ok(!line.includes(GATEWAY_KEY) && !line.includes(PROMPT));
});
