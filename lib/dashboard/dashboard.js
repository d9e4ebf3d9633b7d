// sluice's dashboard: reads GET /stats and GET /metrics every few seconds and draws them with
// uPlot (lib/dashboard/vendor/, npm:uplot). The page holds no data of its own: every figure is
// one /stats or /metrics holds. Tokens and cost over time are the differences between successive
// reads, kept in memory since the page opened (sluice keeps totals, not time series).
"use strict";

const POLL_MS = 2000;
const KEY_STORE = "sluice-admin-key";
const HISTORY = 300;
const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#57606a", "#e85aad"];

const status = document.getElementById("status");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("key");
let key = sessionStorage.getItem(KEY_STORE) ?? "";
/** Successive reads: time (s) and the totals that are drawn over time. */
const history = [];
const charts = new Map();

async function read(path) {
  const response = await fetch(path, {
    headers: key ? { "x-api-key": key } : {},
    cache: "no-store",
  });
  if (response.status === 401 || response.status === 403) {
    const error = new Error("the admin key is needed");
    error.auth = true;
    throw error;
  }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return path === "/metrics" ? response.text() : response.json();
}

/** Per-bucket counts of sluice_ttft_seconds (ok requests), by streaming, from /metrics. */
function ttftBuckets(text) {
  const cumulative = { true: new Map(), false: new Map() };
  for (const line of text.split("\n")) {
    if (!line.startsWith("sluice_ttft_seconds_bucket{")) continue;
    const close = line.lastIndexOf("}");
    const labels = Object.fromEntries(
      [...line.slice(27, close).matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]),
    );
    if (labels.outcome !== "ok" || labels.le === "+Inf") continue;
    const series = cumulative[labels.streaming];
    if (!series) continue;
    const le = Number(labels.le);
    series.set(le, (series.get(le) ?? 0) + Number(line.slice(close + 1)));
  }
  const edges = [...new Set([...cumulative.true.keys(), ...cumulative.false.keys()])]
    .sort((a, b) => a - b);
  const perBucket = (series) =>
    edges.map((le, i) => (series.get(le) ?? 0) - (i ? series.get(edges[i - 1]) ?? 0 : 0));
  return {
    edges,
    streaming: perBucket(cumulative.true),
    nonStreaming: perBucket(cumulative.false),
  };
}

function formatMs(ms) {
  if (ms === null || ms === undefined) return "n/a";
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

function formatEdge(seconds) {
  return seconds >= 1
    ? `≤${Number(seconds.toPrecision(3))} s`
    : `≤${Number((seconds * 1000).toPrecision(3))} ms`;
}

function renderFigures(report) {
  const figures = [
    ["requests", "requests", String(report.requests.total)],
    ["ttft-streaming", "p50 first token, streaming", formatMs(report.ttft_ms.streaming.p50)],
    [
      "ttft-non-streaming",
      "p50 first token, non-streaming",
      formatMs(report.ttft_ms.non_streaming.p50),
    ],
    [
      "speedup",
      "first token, streaming",
      report.comparison.first_token_speedup
        ? `${report.comparison.first_token_speedup}× sooner`
        : "n/a",
    ],
    ["input-tokens", "input tokens", String(report.tokens.input)],
    ["output-tokens", "output tokens", String(report.tokens.output)],
    ["cost", "cost", `$${report.cost_usd.total.toFixed(6)}`],
    ["unpriced", "unpriced requests", String(report.cost_usd.unpriced_requests)],
    ["errors", "errors", String(report.requests.errors)],
  ];
  document.getElementById("figures").replaceChildren(...figures.map(([id, label, value]) => {
    const item = document.createElement("div");
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = label;
    dd.textContent = value;
    dd.dataset.figure = id;
    item.append(dt, dd);
    return item;
  }));
}

/** Draws (or redraws) the chart in element `id`; charts are small, so each read redraws. */
function draw(id, options, data) {
  const element = document.getElementById(id);
  charts.get(id)?.destroy();
  const width = Math.max(200, element.clientWidth - 2);
  const chart = new uPlot(
    { width, height: 220, legend: { show: true }, ...options },
    data,
    element,
  );
  charts.set(id, chart);
}

/** A short number for an axis: 1.2M, 340k, 12. */
function compact(n) {
  const abs = Math.abs(n);
  if (abs >= 1e6) return `${Number((n / 1e6).toPrecision(3))}M`;
  if (abs >= 1e3) return `${Number((n / 1e3).toPrecision(3))}k`;
  return String(Number(n.toPrecision(3)));
}

function bars(labels, series) {
  return {
    legend: { show: false },
    scales: {
      x: { time: false, range: [-0.5, labels.length - 0.5] },
      y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.1)] },
    },
    axes: [
      {
        values: (_u, splits) => splits.map((i) => labels[i] ?? ""),
        space: 56,
        gap: 4,
        incrs: [1, 2, 3, 5, 10],
      },
      { size: 50, values: (_u, splits) => splits.map(compact) },
    ],
    series: [
      { label: "bucket", value: (_u, i) => labels[i] ?? "" },
      ...series.map(({ label, color }) => ({
        label,
        stroke: color,
        fill: color + "99",
        paths: uPlot.paths.bars({ size: [0.7, 60] }),
        points: { show: false },
      })),
    ],
  };
}

function drawTtft(text) {
  const { edges, streaming, nonStreaming } = ttftBuckets(text);
  // The buckets from the first to the last that holds a request, the same for both charts.
  const used = edges.map((_, i) => streaming[i] + nonStreaming[i] > 0);
  const first = Math.max(0, used.indexOf(true));
  const last = Math.max(first, used.lastIndexOf(true));
  const labels = edges.slice(first, last + 1).map(formatEdge);
  const xs = labels.map((_, i) => i);
  draw("ttft-streaming", bars(labels, [{ label: "requests", color: COLORS[0] }]), [
    xs,
    streaming.slice(first, last + 1),
  ]);
  draw("ttft-non-streaming", bars(labels, [{ label: "requests", color: COLORS[1] }]), [
    xs,
    nonStreaming.slice(first, last + 1),
  ]);
}

function lines(names, unit) {
  return {
    scales: { x: { time: true } },
    axes: [{}, { size: 60, values: (_u, splits) => splits.map((v) => `${unit}${compact(v)}`) }],
    series: [
      {},
      ...names.map((name, i) => ({ label: name, stroke: COLORS[i % COLORS.length], width: 2 })),
    ],
  };
}

/** A chart of one total over time, one line per name (`pick` reads the totals of a read). */
function drawOverTime(id, pick, unit) {
  const names = [...new Set(history.flatMap((h) => Object.keys(pick(h))))].sort();
  const xs = history.map((h) => h.t);
  draw(id, lines(names, unit), [
    xs,
    ...names.map((name) => history.map((h) => pick(h)[name] ?? 0)),
  ]);
}

function remember(report) {
  const tokens = {};
  for (const [model, view] of Object.entries(report.by_model)) {
    tokens[model] = view.tokens.input + view.tokens.output + view.tokens.cache_creation_input +
      view.tokens.cache_read_input;
  }
  history.push({
    t: Date.now() / 1000,
    tokens,
    costByKey: report.cost_usd.by_key,
    costByModel: report.cost_usd.by_model,
  });
  if (history.length > HISTORY) history.shift();
}

function drawErrors(report) {
  const outcomes = { ok: report.requests.ok, ...report.errors };
  const labels = Object.keys(outcomes);
  draw("errors-chart", bars(labels, [{ label: "requests", color: COLORS[2] }]), [
    labels.map((_, i) => i),
    labels.map((name) => outcomes[name]),
  ]);
}

async function update() {
  try {
    const [report, metrics] = await Promise.all([read("/stats"), read("/metrics")]);
    keyForm.hidden = true;
    remember(report);
    renderFigures(report);
    drawTtft(metrics);
    drawOverTime("tokens-chart", (h) => h.tokens, "");
    drawOverTime("cost-key-chart", (h) => h.costByKey, "$");
    drawOverTime("cost-model-chart", (h) => h.costByModel, "$");
    drawErrors(report);
    status.textContent = `updated ${new Date().toLocaleTimeString()} · live every ${
      POLL_MS / 1000
    } s`;
    document.body.dataset.ready = "true";
  } catch (error) {
    status.textContent = error.auth
      ? "enter the admin key (SLUICE_ADMIN_KEY)"
      : String(error.message);
    if (error.auth) keyForm.hidden = false;
  }
}

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  key = keyInput.value.trim();
  sessionStorage.setItem(KEY_STORE, key);
  update();
});

async function poll() {
  await update();
  setTimeout(poll, POLL_MS);
}
poll();
