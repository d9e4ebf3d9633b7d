import assert from "node:assert/strict";
import {
  type CompareOptions,
  DEFAULT_MAX_TOKENS,
  DEFAULT_PROMPT,
  formatReport,
  parseCompareArgs,
  runCompare,
} from "../lib/cli/compare.ts";
import { RELATIVE_ERROR } from "../lib/stats/histogram.ts";
import { schedule } from "../lib/replay/pace.ts";
import { truncateAtMaxTokens } from "../lib/replay/rewrite.ts";
import { pickFixture } from "../lib/replay/select.ts";
import { decodeAll } from "../lib/stream/sse.ts";
import { projectFixtures } from "./helpers.ts";
import { expectedFor, PACE, timedStatsApp } from "./stats_support.ts";

type App = Awaited<ReturnType<typeof timedStatsApp>>["app"];

function optionsFor(app: App, clock: { now(): number }, extra: Partial<CompareOptions> = {}) {
  return {
    url: "http://sluice.test",
    runs: 3,
    model: "claude-test-model",
    maxTokens: DEFAULT_MAX_TOKENS,
    prompt: DEFAULT_PROMPT,
    fetch: (input: RequestInfo | URL, init?: RequestInit) =>
      Promise.resolve(app.request(new Request(input, init))),
    clock,
    ...extra,
  } satisfies CompareOptions;
}

Deno.test("compare measures the tutorial's prompt streaming and not, interleaved", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const { app, stats, clock } = await timedStatsApp({ kv });
    const options = optionsFor(app, clock);
    const seen: string[] = [];
    const results = await runCompare(options, (r) => seen.push(`${r.run}:${r.streaming}`));
    assert.deepEqual(seen, ["1:true", "1:false", "2:false", "2:true", "3:true", "3:false"]);

    // The fixture replay picks for this request, cut at its max_tokens (the tutorial's 500),
    // and what it implies.
    const set = await projectFixtures();
    const fixture = pickFixture(set, {
      max_tokens: options.maxTokens,
      messages: [{ role: "user", content: options.prompt }],
    })!;
    const served = {
      name: fixture.name,
      sse: truncateAtMaxTokens(fixture.sse!, options.maxTokens) ?? fixture.sse,
    };
    const chunks = schedule(served, PACE);
    const firstDelta = chunks.find((c) =>
      decodeAll(c.bytes).some((e) => e.event === "content_block_delta")
    )!;
    const streamed = {
      usage: {
        output_tokens: Math.min(
          options.maxTokens,
          (await expectedFor(fixture.name, true, 200, new Uint8Array())).usage.output_tokens,
        ),
      },
    };
    for (const r of results) {
      assert.equal(r.status, 200);
      assert.equal(r.error, null);
      assert.equal(r.outputTokens, streamed.usage.output_tokens);
      assert.equal(r.totalMs, chunks.at(-1)!.atMs);
      assert.equal(r.ttftMs, r.streaming ? firstDelta.atMs : chunks.at(-1)!.atMs);
    }

    const report = formatReport(results, options);
    const ratio = (chunks.at(-1)!.atMs / firstDelta.atMs).toFixed(1);
    assert.match(report, new RegExp(`time to first token .* streaming ${ratio}x sooner`));
    assert.match(report, /total time .* about the same/);
    assert.match(report, new RegExp(`output tokens +${streamed.usage.output_tokens} +`));
    // claude-test-model has no price: no cost is made up.
    for (const r of results) assert.equal(r.costUsd, null);
    assert.match(report, /cost +- +- +no price for claude-test-model/);

    // sluice measured the same requests the same way.
    await stats.flush();
    const server = await stats.report();
    assert.equal(server.requests.streaming, 3);
    assert.equal(server.requests.non_streaming, 3);
    const p50 = server.ttft_ms.streaming.p50!;
    assert.ok(Math.abs(p50 - firstDelta.atMs) <= firstDelta.atMs * RELATIVE_ERROR + 0.01);
  } finally {
    kv.close();
  }
});

Deno.test("compare reports errors instead of figures when sluice refuses the requests", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const { app, clock, stats } = await timedStatsApp({ kv, env: { SLUICE_API_KEYS: "gk-1" } });
    const options = optionsFor(app, clock, { runs: 1 });
    const refused = await runCompare(options);
    assert.deepEqual(refused.map((r) => r.status), [401, 401]);
    assert.ok(refused.every((r) => r.error?.startsWith("authentication_error")));
    assert.match(formatReport(refused, options), /nothing to compare/);

    const allowed = await runCompare({ ...options, key: "gk-1" });
    assert.deepEqual(allowed.map((r) => r.error), [null, null]);
    await stats.flush(); // the requests' stats are written before the test ends
  } finally {
    kv.close();
  }
});

Deno.test("compare's command line has the tutorial's defaults and rejects bad numbers", () => {
  const defaults = parseCompareArgs([], "model-x");
  assert.ok(!("help" in defaults));
  assert.deepEqual(
    { ...defaults },
    {
      url: "http://localhost:8000",
      key: undefined,
      runs: 3,
      model: "model-x",
      maxTokens: DEFAULT_MAX_TOKENS,
      prompt: DEFAULT_PROMPT,
    },
  );
  const custom = parseCompareArgs(
    ["Tell", "me", "a", "story", "--runs", "5", "--key", "k", "--max-tokens", "64"],
    "m",
  );
  assert.ok(!("help" in custom));
  assert.equal(custom.prompt, "Tell me a story");
  assert.equal(custom.runs, 5);
  assert.equal(custom.key, "k");
  assert.equal(custom.maxTokens, 64);
  assert.deepEqual(parseCompareArgs(["--help"], "m"), { help: true });
  assert.throws(() => parseCompareArgs(["--runs", "0"], "m"), /--runs/);
  assert.throws(() => parseCompareArgs(["--max-tokens", "x"], "m"), /--max-tokens/);
  assert.throws(() => parseCompareArgs(["--url", "not a url"], "m"), /--url/);
});

Deno.test("compare prices each answer from its own usage", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const { app, clock } = await timedStatsApp({ kv });
    const options = optionsFor(app, clock, { runs: 1, model: "claude-sonnet-5-5" });
    const results = await runCompare(options);
    for (const r of results) {
      // claude-sonnet-5-5: $2 per Mtok in, $10 out.
      assert.equal(r.costUsd, (r.inputTokens! * 2 + r.outputTokens! * 10) / 1e6);
    }
    const usd = `$${results[0].costUsd!.toFixed(6)}`;
    assert.match(formatReport(results, options), new RegExp(`cost +\\${usd} +\\${usd}`));
  } finally {
    kv.close();
  }
});
