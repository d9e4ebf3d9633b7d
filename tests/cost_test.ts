import assert from "node:assert/strict";
import { costOf, roundUsd } from "../lib/stats/cost.ts";
import { loadPrices, priceTable, PriceTableError, shippedPrices } from "../lib/stats/prices.ts";
import type { TokenUsage, UsageDetail } from "../lib/stats/request_summary.ts";
import { tokenUsage, usageDetail } from "../lib/stats/request_summary.ts";
import { accumulate } from "./sdk_agreement.ts";
import { readFixture } from "./helpers.ts";
import { ConfigError, parseConfig } from "../lib/config.ts";

// Every expected figure below is worked out by hand from the published prices per million
// tokens (the arithmetic is in the comments), not by calling the code under test.

const usage = (u: Partial<TokenUsage>): TokenUsage => ({
  input_tokens: 0,
  output_tokens: 0,
  cache_creation_input_tokens: 0,
  cache_read_input_tokens: 0,
  ...u,
});

/** Cost with the shipped table, in USD. */
function usd(model: string, u: Partial<TokenUsage>, detail?: UsageDetail): number | null {
  const cost = costOf(shippedPrices(), { model, usage: usage(u), detail });
  return cost.priced ? cost.usd : null;
}

Deno.test("the prompt-cache fixture is priced from every usage field, streamed or whole", async (t) => {
  // claude-opus-5-5: input $4, output $20, 5m write $5, 1h write $8, read $0.20 per Mtok;
  // web search $0.01 per call.
  //   1200 input × 4 / 1e6     = 0.0048
  //   10000 5m writes × 5 / 1e6 = 0.05
  //   20000 1h writes × 8 / 1e6 = 0.16
  //   250000 reads × 0.2 / 1e6  = 0.05
  //   412 output × 20 / 1e6     = 0.00824
  //   2 searches × 0.01         = 0.02
  //   total                     = 0.29304
  const expected = 0.29304;
  await t.step("from the stream's accumulated message", async () => {
    const message = accumulate([await readFixture("prompt-cache.sse")]).message!;
    const u = message.usage as unknown;
    const cost = costOf(shippedPrices(), {
      model: message.model,
      usage: tokenUsage(u),
      detail: usageDetail(u),
    });
    assert.ok(cost.priced);
    assert.equal(cost.usd, expected);
    assert.deepEqual(cost.parts, {
      input: 0.0048,
      output: 0.00824,
      cache_write_5m: 0.05,
      cache_write_1h: 0.16,
      cache_read: 0.05,
      server_tools: 0.02,
    });
  });
  await t.step("from the non-streamed body", async () => {
    const body = JSON.parse(new TextDecoder().decode(await readFixture("prompt-cache.json")));
    const cost = costOf(shippedPrices(), {
      model: body.model,
      usage: tokenUsage(body.usage),
      detail: usageDetail(body.usage),
    });
    assert.ok(cost.priced);
    assert.equal(cost.usd, expected);
  });
});

Deno.test("cache reads are priced at the cache-read price, never as input", () => {
  // claude-sonnet-5-5: 1,000,000 cache reads × $0.10 = $0.10 (as input it would be $2).
  assert.equal(usd("claude-sonnet-5-5", { cache_read_input_tokens: 1_000_000 }), 0.1);
  // claude-haiku-4-5: read $0.10 = 0.1 × input $1.
  assert.equal(usd("claude-haiku-4-5", { cache_read_input_tokens: 1_000_000 }), 0.1);
});

Deno.test("cache writes without a lifetime split count as 5-minute writes", () => {
  // claude-sonnet-4-6: 100000 × $3.75 / 1e6 = 0.375.
  assert.equal(usd("claude-sonnet-4-6", { cache_creation_input_tokens: 100_000 }), 0.375);
  // With a split: 40000 1h × $6 + 60000 5m × $3.75 = 0.24 + 0.225 = 0.465.
  assert.equal(
    usd("claude-sonnet-4-6", { cache_creation_input_tokens: 100_000 }, {
      cache_creation: { ephemeral_5m_input_tokens: 60_000, ephemeral_1h_input_tokens: 40_000 },
    }),
    0.465,
  );
});

Deno.test("batch halves token prices; web search is still a cent a call", () => {
  // claude-opus-4-8 batch: (1000 × 5 + 1000 × 25) / 1e6 × 0.5 = 0.015; + 3 searches = 0.045.
  assert.equal(
    usd("claude-opus-4-8", { input_tokens: 1000, output_tokens: 1000 }, {
      service_tier: "batch",
      server_tool_use: { web_search_requests: 3 },
    }),
    0.045,
  );
  // Standard and priority tiers are list price: 0.03.
  assert.equal(
    usd("claude-opus-4-8", { input_tokens: 1000, output_tokens: 1000 }, {
      service_tier: "priority",
    }),
    0.03,
  );
});

Deno.test("US-only inference costs 1.1 times on every token category", () => {
  // claude-sonnet-5-5: (1e6 × 2 + 1e6 × 10) / 1e6 × 1.1 = 13.2.
  assert.equal(
    usd("claude-sonnet-5-5", { input_tokens: 1e6, output_tokens: 1e6 }, { inference_geo: "us" }),
    13.2,
  );
});

Deno.test("a prompt over a model's long-context threshold is priced at that band", () => {
  // claude-haiku-5-5, 100000 prompt tokens: at the threshold, not over: 100000 × 0.1 = 0.01.
  assert.equal(usd("claude-haiku-5-5", { input_tokens: 100_000 }), 0.01);
  // 60000 input + 50000 cache reads = 110000 > 100000: 60000 × 0.5 + 50000 × 0.05 + 100 × 2.5
  // = 0.03 + 0.0025 + 0.00025 = 0.03275.
  assert.equal(
    usd("claude-haiku-5-5", {
      input_tokens: 60_000,
      cache_read_input_tokens: 50_000,
      output_tokens: 100,
    }),
    0.03275,
  );
});

Deno.test("a dated snapshot matches its alias; anything else is unpriced", async (t) => {
  await t.step("snapshots of an alias", () => {
    // claude-haiku-4-5: 1000 × 1 + 1000 × 5 = 0.006.
    assert.equal(
      usd("claude-haiku-4-5-20251001", { input_tokens: 1000, output_tokens: 1000 }),
      0.006,
    );
    assert.equal(usd("claude-opus-4-5@20251101", { input_tokens: 1000 }), 0.005);
    const hit = shippedPrices().lookup("claude-sonnet-5-5-20261001");
    assert.equal(hit?.id, "claude-sonnet-5-5");
  });
  await t.step("never a neighbour's price", () => {
    assert.equal(usd("claude-sonnet-5-6", { input_tokens: 1000 }), null);
    assert.equal(usd("claude-sonnet-5-5-turbo", { input_tokens: 1000 }), null);
    assert.equal(usd("claude-test-model", { input_tokens: 1000 }), null);
    assert.equal(costOf(shippedPrices(), { model: null, usage: usage({}) }).priced, false);
  });
});

Deno.test("every current model of the SDK's list has a price; retired ones are not required", () => {
  const current = [
    "claude-fable-5-2",
    "claude-mythos-5-2",
    "claude-haiku-5-5",
    "claude-sonnet-5-5",
    "claude-fable-5-1",
    "claude-opus-5-5",
    "claude-mythos-5-1",
    "claude-sonnet-5",
    "claude-fable-5",
    "claude-mythos-5",
    "claude-opus-5",
    "claude-opus-4-8",
    "claude-opus-4-7",
    "claude-opus-4-6",
    "claude-sonnet-4-6",
    "claude-haiku-4-5",
    "claude-haiku-4-5-20251001",
    "claude-opus-4-5",
    "claude-sonnet-4-5",
  ];
  for (const model of current) assert.ok(shippedPrices().lookup(model), model);
});

Deno.test("SLUICE_PRICES overrides entries inline or from a file, and a bad one names itself", async (t) => {
  await t.step("inline JSON replaces one model, keeps the others, fills cache defaults", () => {
    const table = loadPrices('{"claude-sonnet-5-5": {"input": 1, "output": 4}}');
    // 1e6 × 1 + 1e6 5m writes × 1.25 + 1e6 1h × 2 + 1e6 reads × 0.1 + 1e6 × 4 = 8.35.
    const cost = costOf(table, {
      model: "claude-sonnet-5-5",
      usage: usage({
        input_tokens: 1e6,
        cache_creation_input_tokens: 2e6,
        cache_read_input_tokens: 1e6,
        output_tokens: 1e6,
      }),
      detail: {
        cache_creation: { ephemeral_5m_input_tokens: 1e6, ephemeral_1h_input_tokens: 1e6 },
      },
    });
    assert.ok(cost.priced);
    assert.equal(roundUsd(cost.usd), 8.35);
    assert.ok(table.lookup("claude-opus-5-5"));
  });
  await t.step("a path is read", () => {
    const table = loadPrices("/prices.json", (path) => {
      assert.equal(path, "/prices.json");
      return '{"my-model": {"input": 10, "output": 10}}';
    });
    assert.ok(table.lookup("my-model"));
  });
  await t.step("bad values stop the config with the variable's name", () => {
    const bad = [
      "{not json",
      '{"claude-x": {"input": -1, "output": 1}}',
      '{"claude-x": {"input": 1}}',
      '{"claude-x": {"input": 1, "output": 1, "cache_reed": 1}}',
      "[1]",
      "/no/such/file.json",
    ];
    for (const value of bad) {
      assert.throws(
        () =>
          parseConfig({ SLUICE_PRICES: value }, {
            readTextFile: () => Deno.readTextFileSync(value),
          }),
        (error: unknown) => error instanceof ConfigError && /^SLUICE_PRICES: /.test(error.message),
        value,
      );
    }
    assert.throws(() => priceTable({ "claude-x": { input: "1", output: 1 } }), PriceTableError);
  });
});
