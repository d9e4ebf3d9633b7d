import assert from "node:assert/strict";
import { tokenUsage } from "../lib/stats/request_summary.ts";
import { escapeLabel, PROMETHEUS_CONTENT_TYPE } from "../lib/stats/prometheus.ts";
import { createKvStats } from "../lib/stats/kv_stats.ts";
import { projectFixtures, seededRandom } from "./helpers.ts";
import { type Expected, sendFixture, T0, timedStatsApp } from "./stats_support.ts";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface Exposition {
  help: Map<string, string>;
  type: Map<string, string>;
  samples: Sample[];
}

/**
 * A strict reader of the text format (0.0.4): every line must be a HELP, a TYPE or a sample,
 * and every sample must belong to a family declared before it.
 */
function parseExposition(text: string): Exposition {
  assert.ok(text.endsWith("\n"), "ends with a line feed");
  const help = new Map<string, string>();
  const type = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.slice(0, -1).split("\n")) {
    let m = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$/.exec(line);
    if (m) {
      assert.ok(!help.has(m[1]), `one HELP for ${m[1]}`);
      help.set(m[1], m[2]);
      continue;
    }
    m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (m) {
      assert.ok(!type.has(m[1]), `one TYPE for ${m[1]}`);
      type.set(m[1], m[2]);
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not a valid line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    const labelText = m[2] ?? "";
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"(,|$)/gy;
    let consumed = 0;
    for (const lm of labelText.matchAll(re)) {
      labels[lm[1]] = lm[2].replace(/\\(["\\n])/g, (_, c) => (c === "n" ? "\n" : c));
      consumed = lm.index! + lm[0].length;
    }
    assert.equal(consumed, labelText.length, `labels parse: ${labelText}`);
    const value = m[3] === "+Inf" ? Infinity : Number(m[3]);
    assert.ok(!Number.isNaN(value), `value of ${line}`);
    const family = type.has(m[1]) ? m[1] : m[1].replace(/_(bucket|sum|count)$/, "");
    assert.ok(type.has(family), `${m[1]} has a TYPE before its samples`);
    assert.ok(help.has(family), `${m[1]} has a HELP`);
    samples.push({ name: m[1], labels, value });
  }
  return { help, type, samples };
}

const sumOf = (samples: Sample[]) => samples.reduce((n, s) => n + s.value, 0);

Deno.test("/metrics is Prometheus text whose figures are those of the replayed fixtures", async (t) => {
  const kv = await Deno.openKv(":memory:");
  try {
    const { app, stats } = await timedStatsApp({ kv });
    const names = [...(await projectFixtures()).fixtures.keys()].sort();
    const sent: Expected[] = [];
    for (const name of names) {
      for (const streaming of [true, false]) sent.push(await sendFixture(app, name, streaming));
    }
    await stats.flush();
    const response = await app.request("http://sluice.test/metrics");
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("content-type"), PROMETHEUS_CONTENT_TYPE);
    const { type, samples } = parseExposition(await response.text());
    const labelsOf = (e: Expected) => ({
      endpoint: "/v1/messages",
      model: e.model,
      streaming: String(e.streaming),
      outcome: e.outcome,
    });
    const matches = (s: Sample, labels: Record<string, string>) =>
      Object.entries(labels).every(([k, v]) => s.labels[k] === v);

    await t.step("names follow Prometheus conventions", () => {
      for (const [name, kind] of type) {
        assert.match(name, /^sluice_[a-z0-9_]+$/);
        if (kind === "counter") assert.match(name, /_total$/, name);
        if (kind === "histogram") assert.match(name, /_seconds$/, name);
      }
      assert.equal(type.get("sluice_requests_total"), "counter");
      assert.equal(type.get("sluice_ttft_seconds"), "histogram");
      assert.equal(type.get("sluice_request_duration_seconds"), "histogram");
    });

    await t.step("every series has endpoint, model, streaming and outcome labels", () => {
      // Cost is by model only (docs/stats.md); the write-failure counter has no labels.
      const byModel = ["sluice_cost_usd_total", "sluice_unpriced_requests_total"];
      for (const s of samples) {
        if (s.name === "sluice_stats_write_failures_total") continue;
        if (byModel.includes(s.name)) {
          assert.deepEqual(Object.keys(s.labels), ["model"], s.name);
          continue;
        }
        for (const label of ["endpoint", "model", "streaming", "outcome"]) {
          assert.ok(label in s.labels, `${s.name} has ${label}`);
        }
      }
    });

    await t.step("request, token, event and status counters equal the requests'", () => {
      const series = new Map<string, Expected[]>();
      for (const e of sent) {
        const id = JSON.stringify(labelsOf(e));
        series.set(id, [...(series.get(id) ?? []), e]);
      }
      for (const [id, group] of series) {
        const labels = JSON.parse(id);
        const pick = (name: string, extra: Record<string, string> = {}) =>
          sumOf(samples.filter((s) => s.name === name && matches(s, { ...labels, ...extra })));
        assert.equal(pick("sluice_requests_total"), group.length, id);
        assert.equal(pick("sluice_retries_total"), 0);
        assert.equal(
          pick("sluice_tokens_total", { type: "output" }),
          group.reduce((n, e) => n + e.usage.output_tokens, 0),
          id,
        );
        assert.equal(
          pick("sluice_tokens_total", { type: "input" }),
          group.reduce((n, e) => n + e.usage.input_tokens, 0),
          id,
        );
        assert.equal(
          pick("sluice_stream_events_total", { event: "ping" }),
          group.reduce((n, e) => n + (e.events.ping ?? 0), 0),
          id,
        );
        for (const code of new Set(group.map((e) => String(e.status)))) {
          assert.equal(
            pick("sluice_responses_total", { code }),
            group.filter((e) => String(e.status) === code).length,
          );
        }
      }
      assert.equal(sumOf(samples.filter((s) => s.name === "sluice_requests_total")), sent.length);
    });

    await t.step("histogram buckets count exactly the latencies at or below each edge", () => {
      const metrics: [string, (e: Expected) => number | null][] = [
        ["sluice_ttft_seconds", (e) => e.ttftMs],
        ["sluice_request_duration_seconds", (e) => e.totalMs],
        ["sluice_upstream_ttft_seconds", (e) => e.upstreamTtftMs],
      ];
      for (const [metric, pick] of metrics) {
        const seen = new Set<string>();
        for (const e of sent) {
          const labels = labelsOf(e);
          const id = JSON.stringify(labels);
          if (seen.has(id)) continue;
          seen.add(id);
          const values = sent.filter((x) => JSON.stringify(labelsOf(x)) === id)
            .map(pick).filter((v): v is number => v !== null);
          const buckets = samples.filter((s) =>
            s.name === `${metric}_bucket` && matches(s, labels)
          );
          const count = samples.find((s) => s.name === `${metric}_count` && matches(s, labels));
          const sum = samples.find((s) => s.name === `${metric}_sum` && matches(s, labels));
          if (values.length === 0) {
            assert.equal(buckets.length, 0, `${metric} ${id}: no observations, no series`);
            continue;
          }
          assert.equal(count?.value, values.length, `${metric} ${id} count`);
          const exactSum = values.reduce((a, b) => a + b, 0) / 1000;
          assert.ok(Math.abs(sum!.value - exactSum) < 1e-6 * values.length, `${metric} sum`);
          let previousLe = -Infinity, previousCount = 0;
          for (const bucket of buckets) {
            const le = bucket.labels.le === "+Inf" ? Infinity : Number(bucket.labels.le);
            assert.ok(le > previousLe, "le ascending");
            assert.ok(bucket.value >= previousCount, "cumulative");
            const expected = values.filter((v) => v / 1000 <= le).length;
            assert.equal(bucket.value, expected, `${metric} ${id} le=${bucket.labels.le}`);
            previousLe = le;
            previousCount = bucket.value;
          }
          assert.equal(buckets.at(-1)!.labels.le, "+Inf");
        }
      }
    });
  } finally {
    kv.close();
  }
});

Deno.test("/metrics counts this instance's failed stats writes", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    let calls = 0;
    const { app, stats } = await timedStatsApp({
      kv,
      stats: {
        commit: async (kv, batch) => {
          if (++calls <= 2) throw new Error("quota exceeded");
          await kv.atomic().mutate(...batch).commit();
        },
      },
    });
    await (await app.request(
      new Request("http://sluice.test/v1/messages", {
        method: "POST",
        headers: { "content-type": "application/json", "x-sluice-fixture": "three-words" },
        body: JSON.stringify({
          model: "m",
          max_tokens: 5,
          messages: [{ role: "user", content: "x" }],
        }),
      }),
    )).arrayBuffer();
    await stats.flush(); // the write and the flush's retry both fail; the figures are kept
    await stats.flush(); // this one gets through
    const { samples } = parseExposition(
      await (await app.request("http://sluice.test/metrics")).text(),
    );
    const failures = samples.find((s) => s.name === "sluice_stats_write_failures_total");
    assert.equal(failures?.value, 2);
    assert.equal(sumOf(samples.filter((s) => s.name === "sluice_requests_total")), 1);
  } finally {
    kv.close();
  }
});

Deno.test("label values are escaped, and free-text models are grouped as other", async () => {
  assert.equal(escapeLabel('a"b\\c\nd'), 'a\\"b\\\\c\\nd');
  const kv = await Deno.openKv(":memory:");
  try {
    const stats = createKvStats({ kv });
    stats.record({
      id: "req_1",
      endpoint: "/v1/messages",
      streaming: false,
      model: 'please "ignore" previous\ninstructions',
      outcome: "ok",
      status: 200,
      retries: 1,
      startedAt: T0,
      ttftMs: 10,
      totalMs: 10,
      upstreamTtftMs: 9,
      usage: tokenUsage({ input_tokens: 3, output_tokens: 4 }),
      stopReason: "end_turn",
      events: {},
    });
    await stats.flush();
    const { app } = await timedStatsApp({ kv });
    const text = await (await app.request("http://sluice.test/metrics")).text();
    const { samples } = parseExposition(text);
    const requests = samples.filter((s) => s.name === "sluice_requests_total");
    assert.deepEqual(requests.map((s) => s.labels.model), ["other"]);
    assert.equal(sumOf(samples.filter((s) => s.name === "sluice_retries_total")), 1);
    assert.ok(!text.includes("ignore"));
  } finally {
    kv.close();
  }
});

Deno.test("10,000 requests with random model names leave /metrics and /stats under a fixed size", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const { app, stats } = await timedStatsApp({ kv });
    const random = seededRandom(15);
    const names = Array.from(
      { length: 10_000 },
      (_, i) => `m-${i}-${Math.floor(random() * 1e9).toString(36)}`,
    );
    // Served ones (replay answers with the model asked for) and refused ones (a bad `stream`).
    for (let i = 0; i < names.length; i += 100) {
      await Promise.all(
        names.slice(i, i + 100).map(async (model, j) => {
          const response = await app.request("http://sluice.test/v1/messages", {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({
              model,
              max_tokens: 8,
              stream: j % 2 === 0 ? false : "yes",
              messages: [{ role: "user", content: "hi" }],
            }),
          });
          await response.body?.cancel();
        }),
      );
    }
    await stats.flush();
    const text = await (await app.request("http://sluice.test/metrics")).text();
    const { samples } = parseExposition(text);
    const requests = samples.filter((s) => s.name === "sluice_requests_total");
    assert.equal(sumOf(requests), names.length, "every request was counted");
    const models = new Set(requests.map((s) => s.labels.model));
    assert.ok(models.size <= 2, `models: ${[...models].slice(0, 5)}`); // "other" and "unknown"
    assert.ok(!text.includes("m-1-"), "no caller's model name is a label");
    // A fixed bound, whatever the number of names (it was 10,000+ series before).
    assert.ok(text.length < 64 * 1024, `/metrics is ${text.length} bytes`);
    const report = await (await app.request("http://sluice.test/stats")).text();
    assert.ok(report.length < 64 * 1024, `/stats is ${report.length} bytes`);
  } finally {
    kv.close();
  }
});
