/**
 * OpenTelemetry through Deno's own exporter: main.ts runs as a process with `OTEL_DENO=true`,
 * exporting OTLP `http/json` to a receiver this test runs on 127.0.0.1. The spans and metrics
 * sluice sends must follow the GenAI conventions, carry the whole answer's usage (so the span
 * ended with the stream, not at its headers), and never the prompt or the answer.
 */
import assert from "node:assert/strict";
import { startMain } from "./helpers.ts";

interface OtlpAttribute {
  key: string;
  value: Record<string, unknown>;
}

/** An OTLP/JSON attribute list as a plain object (`intValue` comes as a string). */
function attrs(list: OtlpAttribute[] = []): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const { key, value } of list) {
    if ("stringValue" in value) out[key] = value.stringValue;
    else if ("intValue" in value) out[key] = Number(value.intValue);
    else if ("doubleValue" in value) out[key] = value.doubleValue;
    else if ("boolValue" in value) out[key] = value.boolValue;
    else if ("arrayValue" in value) {
      const values = (value.arrayValue as { values?: Record<string, unknown>[] }).values ?? [];
      out[key] = values.map((v) => v.stringValue ?? v.intValue);
    }
  }
  return out;
}

function startReceiver() {
  const bodies: { path: string; body: string }[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    bodies.push({ path: new URL(req.url).pathname, body: await req.text() });
    return Response.json({});
  });
  return { url: `http://127.0.0.1:${server.addr.port}`, bodies, close: () => server.shutdown() };
}

const PROMPT = "a question nobody else may read";
/** main.ts runs on this test's Deno; 2.5's OTLP exporter leaves array attributes out. */
const ARRAYS_EXPORTED = !Deno.version.deno.startsWith("2.5.");

Deno.test("OTEL_DENO=true exports a chat span and gen_ai metrics per upstream call", async (t) => {
  const receiver = startReceiver();
  const main = await startMain({
    OTEL_DENO: "true",
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_SERVICE_NAME: "sluice-test",
    SLUICE_KV_PATH: ":memory:",
    // Paced: the first text 200 ms after the headers, so a span that ended at the headers
    // would end before the answer's first chunk.
    SLUICE_REPLAY_TTFT_MS: "200",
    SLUICE_REPLAY_TOKENS_PER_SECOND: "2000",
  });
  let answer = "";
  try {
    for (const stream of [true, false]) {
      const response = await fetch(`${main.url}/v1/messages`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-sluice-fixture": "prompt-cache" },
        body: JSON.stringify({
          model: "claude-opus-5-5",
          max_tokens: 1024,
          stream,
          messages: [{ role: "user", content: PROMPT }],
        }),
      });
      const text = await response.text();
      if (!stream) answer = JSON.parse(text).content[0].text;
    }
  } finally {
    // Deno flushes what it has not exported yet when the process exits.
    await main.stop();
  }
  await receiver.close();

  const traces = receiver.bodies.filter((b) => b.path === "/v1/traces").map((b) =>
    JSON.parse(b.body)
  );
  const metricBodies = receiver.bodies.filter((b) => b.path === "/v1/metrics")
    .map((b) => JSON.parse(b.body));
  // deno-lint-ignore no-explicit-any
  const spans: any[] = traces.flatMap((b) =>
    // deno-lint-ignore no-explicit-any
    b.resourceSpans.flatMap((r: any) => r.scopeSpans.flatMap((s: any) => s.spans))
  );
  const chats = spans.filter((s) => s.name === "chat claude-opus-5-5");

  await t.step("one client span per call, named chat {model}, with gen_ai attributes", () => {
    assert.equal(chats.length, 2, `spans: ${spans.map((s) => s.name).join(", ")}`);
    for (const span of chats) {
      assert.equal(span.kind, 3); // SPAN_KIND_CLIENT
      const a = attrs(span.attributes);
      assert.equal(a["gen_ai.operation.name"], "chat");
      assert.equal(a["gen_ai.provider.name"], "anthropic");
      assert.equal(a["gen_ai.request.model"], "claude-opus-5-5");
      assert.equal(a["gen_ai.response.model"], "claude-opus-5-5");
      assert.equal(a["gen_ai.response.id"], "msg_01PromptCacheHandWritten01");
      // Deno 2.5's exporter drops array-valued attributes (sluice sets it on every version).
      if (ARRAYS_EXPORTED) assert.deepEqual(a["gen_ai.response.finish_reasons"], ["end_turn"]);
      else assert.equal(a["gen_ai.response.finish_reasons"], undefined);
      // The fixture's final usage (message_delta): only known once the stream has ended.
      // Input counts cache tokens too: 1200 + 30000 + 250000.
      assert.equal(a["gen_ai.usage.input_tokens"], 281200);
      assert.equal(a["gen_ai.usage.output_tokens"], 412);
      assert.equal(a["gen_ai.usage.cache_read.input_tokens"], 250000);
      assert.equal(a["gen_ai.usage.cache_creation.input_tokens"], 30000);
    }
    const streamed = chats.find((s) => attrs(s.attributes)["sluice.streaming"] === true);
    assert.equal(
      typeof attrs(streamed.attributes)["gen_ai.response.time_to_first_chunk"],
      "number",
    );
  });

  await t.step("the span sits under the request's server span and ends with the stream", () => {
    for (const span of chats) {
      const parent = spans.find((s) => s.spanId === span.parentSpanId);
      assert.ok(parent, "a parent span was exported");
      assert.equal(parent.traceId, span.traceId);
      assert.equal(parent.kind, 2); // SPAN_KIND_SERVER: Deno.serve's own span
      const a = attrs(span.attributes);
      if (a["sluice.streaming"] !== true) continue;
      // Ended after the answer's first chunk (paced 200 ms after the headers), not at headers.
      const lasted = Number(BigInt(span.endTimeUnixNano) - BigInt(span.startTimeUnixNano)) / 1e9;
      assert.ok(lasted >= Number(a["gen_ai.response.time_to_first_chunk"]), `${lasted} s`);
    }
  });

  await t.step("gen_ai metrics: token usage by type, durations, time to first token", () => {
    // deno-lint-ignore no-explicit-any
    const all: any[] = metricBodies.flatMap((b) =>
      // deno-lint-ignore no-explicit-any
      b.resourceMetrics.flatMap((r: any) => r.scopeMetrics.flatMap((s: any) => s.metrics))
    );
    const named = (name: string) => all.filter((m) => m.name === name);
    const tokens = named("gen_ai.client.token.usage");
    assert.ok(tokens.length > 0, `metrics: ${[...new Set(all.map((m) => m.name))].join(", ")}`);
    // deno-lint-ignore no-explicit-any
    const points: any[] = tokens.flatMap((m) => m.histogram.dataPoints);
    const sumFor = (type: string) =>
      points.filter((p) => attrs(p.attributes)["gen_ai.token.type"] === type)
        .reduce((max, p) => Math.max(max, Number(p.sum)), 0);
    // Cumulative histograms: the last export's sum is both calls'.
    assert.equal(sumFor("input"), 2 * 281200);
    assert.equal(sumFor("output"), 2 * 412);
    assert.ok(named("gen_ai.client.operation.duration").length > 0);
    assert.ok(named("gen_ai.server.time_to_first_token").length > 0);
    assert.ok(named("gen_ai.server.time_per_output_token").length > 0);
  });

  await t.step("no prompt or answer is exported", () => {
    assert.ok(answer.length > 10);
    for (const { body } of receiver.bodies) {
      assert.ok(!body.includes(PROMPT));
      assert.ok(!body.includes(answer));
    }
  });
});
