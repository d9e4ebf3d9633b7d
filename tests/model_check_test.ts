/**
 * The start-up check of SLUICE_DEFAULT_MODEL against the API's model list (live mode).
 */
import assert from "node:assert/strict";
import type { Logger } from "../lib/log.ts";
import { checkDefaultModel } from "../lib/proxy/model_check.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import { startFakeUpstream, TEST_SERVER_KEY } from "./helpers.ts";

/** A logger that keeps its warnings. */
function recordingLogger(): Logger & { warnings: string[] } {
  const warnings: string[] = [];
  const none = () => {};
  return { warnings, debug: none, info: none, error: none, warn: (m) => void warnings.push(m) };
}

/** A fake models list served two ids a page, as the API pages it. */
function modelsUpstream(ids: string[], status = 200) {
  return startFakeUpstream((req) => {
    if (status !== 200) {
      return Response.json({ type: "error", error: { type: "api_error", message: "down" } }, {
        status,
      });
    }
    const after = new URL(req.url).searchParams.get("after_id");
    const start = after ? ids.indexOf(after) + 1 : 0;
    const page = ids.slice(start, start + 2);
    return Response.json({
      data: page.map((id) => ({ type: "model", id })),
      has_more: start + 2 < ids.length,
    });
  });
}

const upstreamAt = (url: string) =>
  createUpstream({ mode: "live", apiKey: TEST_SERVER_KEY, baseURL: url, maxRetries: 0 });

Deno.test("a default model the API lists passes quietly, by id or as an alias of a dated id", async () => {
  const fake = modelsUpstream([
    "claude-opus-5-5",
    "claude-haiku-4-5-20251001",
    "claude-sonnet-5-5-20261101",
  ]);
  try {
    const logger = recordingLogger();
    const check = await checkDefaultModel(upstreamAt(fake.url), "claude-sonnet-5-5", logger);
    assert.deepEqual(check, { status: "available", id: "claude-sonnet-5-5-20261101" });
    assert.deepEqual(logger.warnings, []);
    assert.equal(fake.requests.length, 2, "both pages were read");
    assert.equal(fake.requests[0].search, "?limit=1000");
  } finally {
    await fake.close();
  }
});

Deno.test("a default model the API no longer lists is named in a warning with what is available", async () => {
  const fake = modelsUpstream(["claude-opus-5-5", "claude-sonnet-5-5"]);
  try {
    const logger = recordingLogger();
    const check = await checkDefaultModel(
      upstreamAt(fake.url),
      "claude-sonnet-4-5-20250929",
      logger,
    );
    assert.equal(check.status, "missing");
    assert.equal(logger.warnings.length, 1);
    assert.match(logger.warnings[0], /SLUICE_DEFAULT_MODEL claude-sonnet-4-5-20250929/);
    assert.match(logger.warnings[0], /claude-opus-5-5, claude-sonnet-5-5/);
  } finally {
    await fake.close();
  }
});

Deno.test("a models list that cannot be read leaves a warning, not a crash", async () => {
  const fake = modelsUpstream([], 500);
  try {
    const logger = recordingLogger();
    const check = await checkDefaultModel(upstreamAt(fake.url), "claude-sonnet-5-5", logger);
    assert.equal(check.status, "unknown");
    assert.match(logger.warnings[0], /could not check SLUICE_DEFAULT_MODEL/);
  } finally {
    await fake.close();
  }
});
