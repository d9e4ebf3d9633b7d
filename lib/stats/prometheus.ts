/**
 * `GET /metrics`: the all-time stats in Prometheus' text exposition format (version 0.0.4), so
 * existing scrapers and dashboards can read sluice.
 *
 * Written by hand rather than with prom-client: prom-client keeps metrics in the process that
 * serves them, while sluice's figures are the sums every isolate wrote into Deno KV; rendering
 * those rows is a few lines of text formatting.
 *
 * Every series has the labels `endpoint`, `model`, `streaming` and `outcome`. Latency histograms
 * use a subset of the stats histogram's own bucket edges (3 per decade, 1 ms to 1000 s), so each
 * cumulative `_bucket` count is exact, not interpolated.
 */
import type { Histogram } from "./histogram.ts";
import { BUCKETS_PER_DECADE, bucketUpperMs, cumulativeCounts } from "./histogram.ts";
import type { LatencyName, Row, SeriesLabels } from "./kv_layout.ts";
import { histogramOf } from "./report.ts";
import { PICO_PER_USD } from "./cost.ts";

/** The content type Prometheus expects for the text format. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Histogram bucket indexes exported as `le` edges: 1 ms … 1000 s, 3 per decade. */
export const EXPORTED_EDGES: number[] = (() => {
  const first = 3 * BUCKETS_PER_DECADE; // 1 ms
  const last = 9 * BUCKETS_PER_DECADE; // 10^6 ms = 1000 s
  const edges: number[] = [];
  for (let k = first; k <= last; k += BUCKETS_PER_DECADE / 3) edges.push(k);
  return edges;
})();

const HISTOGRAMS: { name: LatencyName; metric: string; help: string }[] = [
  {
    name: "ttft",
    metric: "sluice_ttft_seconds",
    help: "Time from request arrival to the first content sent to the client " +
      "(non-streaming: to the whole body).",
  },
  {
    name: "total",
    metric: "sluice_request_duration_seconds",
    help: "Time from request arrival to the end of the response.",
  },
  {
    name: "upstream_ttft",
    metric: "sluice_upstream_ttft_seconds",
    help: "Time from the upstream call to the first content delta received from it.",
  },
];

const TOKEN_TYPES = ["input", "output", "cache_creation_input", "cache_read_input"];

/** Rows of one label set. */
interface Series {
  labels: SeriesLabels;
  rows: Row[];
}

/** Renders all-time rows (and this instance's failed writes) as Prometheus text. */
export function renderPrometheus(rows: Row[], options: { writeFailures?: number } = {}): string {
  const series = seriesOf(rows);
  const out: string[] = [];
  countFamilies(out, series);
  labelledCountFamilies(out, series);
  costFamilies(out, rows);
  histogramFamilies(out, series);
  family(
    out,
    "sluice_stats_write_failures_total",
    "counter",
    "Stats writes to Deno KV that failed in this instance (they are retried).",
  );
  out.push(`sluice_stats_write_failures_total ${options.writeFailures ?? 0}`);
  return out.join("\n") + "\n";
}

/** The rows grouped by label set, in the order of their label text. */
function seriesOf(rows: Row[]): Series[] {
  const bySeries = new Map<string, Series>();
  for (const row of rows) {
    const id = JSON.stringify(row.labels);
    const group = bySeries.get(id) ?? { labels: row.labels, rows: [] };
    group.rows.push(row);
    bySeries.set(id, group);
  }
  return [...bySeries.values()].sort((a, b) =>
    labelText(a.labels).localeCompare(labelText(b.labels))
  );
}

function family(out: string[], name: string, type: string, help: string): void {
  out.push(`# HELP ${name} ${escapeHelp(help)}`, `# TYPE ${name} ${type}`);
}

function sumOf(group: Row[], test: (metric: Row["metric"]) => boolean): number {
  return group.filter((row) => test(row.metric)).reduce((sum, row) => sum + row.value, 0);
}

/** Requests, retries and tokens by type. */
function countFamilies(out: string[], series: Series[]): void {
  family(out, "sluice_requests_total", "counter", "Requests that reached a model endpoint.");
  for (const { labels, rows } of series) {
    out.push(sample("sluice_requests_total", labels, {}, sumOf(rows, (m) => m[0] === "requests")));
  }

  family(out, "sluice_retries_total", "counter", "Upstream retries made for requests.");
  for (const { labels, rows } of series) {
    out.push(sample("sluice_retries_total", labels, {}, sumOf(rows, (m) => m[0] === "retries")));
  }

  family(out, "sluice_tokens_total", "counter", "Tokens used, by type (cumulative usage rule).");
  for (const { labels, rows } of series) {
    for (const type of TOKEN_TYPES) {
      const n = sumOf(rows, (m) => m[0] === "tokens" && m[1] === type);
      out.push(sample("sluice_tokens_total", labels, { type }, n));
    }
  }
}

/** Stream events by name and responses by status code: labels only the rows name. */
function labelledCountFamilies(out: string[], series: Series[]): void {
  family(out, "sluice_stream_events_total", "counter", "Server-sent events seen, by event name.");
  for (const { labels, rows } of series) {
    const names = new Set(rows.filter((r) => r.metric[0] === "events").map((r) => r.metric[1]));
    for (const event of [...names].map(String).sort()) {
      const n = sumOf(rows, (m) => m[0] === "events" && m[1] === event);
      out.push(sample("sluice_stream_events_total", labels, { event }, n));
    }
  }

  family(out, "sluice_responses_total", "counter", "Responses, by HTTP status code.");
  for (const { labels, rows } of series) {
    const codes = new Set(rows.filter((r) => r.metric[0] === "status").map((r) => r.metric[1]));
    for (const code of [...codes].map(String).sort()) {
      const n = sumOf(rows, (m) => m[0] === "status" && String(m[1]) === code);
      out.push(sample("sluice_responses_total", labels, { code }, n));
    }
  }
}

/** Cost and unpriced requests, by model. */
function costFamilies(out: string[], rows: Row[]): void {
  // Cost has the model label only: `sum by (model)` is what a bill is read by, and per-series
  // cost would multiply the series for no question anyone asks.
  const byModel = new Map<string, { pico: number; unpriced: number }>();
  for (const row of rows) {
    if (row.metric[0] !== "cost") continue;
    const figures = byModel.get(row.labels.model) ?? { pico: 0, unpriced: 0 };
    if (row.metric[1] === "pusd") figures.pico += row.value;
    else if (row.metric[1] === "unpriced") figures.unpriced += row.value;
    byModel.set(row.labels.model, figures);
  }
  const models = [...byModel.keys()].sort();
  family(
    out,
    "sluice_cost_usd_total",
    "counter",
    "What requests cost in USD, from their usage and the price table (lib/stats/prices.json).",
  );
  for (const model of models) {
    const usd = byModel.get(model)!.pico / PICO_PER_USD;
    out.push(`sluice_cost_usd_total{model="${escapeLabel(model)}"} ${formatNumber(usd)}`);
  }
  family(
    out,
    "sluice_unpriced_requests_total",
    "counter",
    "Requests that used tokens of a model with no price (not in sluice_cost_usd_total).",
  );
  for (const model of models) {
    const n = byModel.get(model)!.unpriced;
    out.push(`sluice_unpriced_requests_total{model="${escapeLabel(model)}"} ${n}`);
  }
}

/** The latency histograms, one series per label set that has any sample. */
function histogramFamilies(out: string[], series: Series[]): void {
  for (const { name, metric, help } of HISTOGRAMS) {
    family(out, metric, "histogram", help);
    for (const { labels, rows } of series) {
      const histogram = histogramOf(rows, name);
      if (histogram.count === 0) continue;
      out.push(...histogramSamples(metric, labels, histogram));
    }
  }
}

function histogramSamples(metric: string, labels: SeriesLabels, histogram: Histogram): string[] {
  const counts = cumulativeCounts(histogram, EXPORTED_EDGES);
  const lines = EXPORTED_EDGES.map((edge, i) =>
    sample(`${metric}_bucket`, labels, { le: formatNumber(bucketUpperMs(edge) / 1000) }, counts[i])
  );
  lines.push(sample(`${metric}_bucket`, labels, { le: "+Inf" }, histogram.count));
  lines.push(sample(`${metric}_sum`, labels, {}, histogram.sumMs / 1000));
  lines.push(sample(`${metric}_count`, labels, {}, histogram.count));
  return lines;
}

function sample(
  name: string,
  labels: SeriesLabels,
  extra: Record<string, string>,
  value: number,
): string {
  return `${name}{${labelText(labels, extra)}} ${formatNumber(value)}`;
}

function labelText(labels: SeriesLabels, extra: Record<string, string> = {}): string {
  const all: [string, string][] = [
    ["endpoint", labels.endpoint],
    ["model", labels.model],
    ["streaming", String(labels.streaming)],
    ["outcome", labels.outcome],
    ...Object.entries(extra),
  ];
  return all.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",");
}

/** Escapes a label value: backslash, double quote and line feed. */
export function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function escapeHelp(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function formatNumber(n: number): string {
  if (n === Infinity) return "+Inf";
  if (Number.isInteger(n)) return String(n);
  return String(Number(n.toPrecision(9)));
}
