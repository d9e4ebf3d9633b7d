/**
 * OpenTelemetry, GenAI semantic conventions: one span per upstream call (`chat {model}`, kind
 * client) and the `gen_ai.client.*` / `gen_ai.server.*` metrics, through `@opentelemetry/api`.
 *
 * sluice registers no SDK: with `OTEL_DENO=true` Deno's built-in exporter provides the tracer and
 * meter providers (OTLP to `OTEL_EXPORTER_OTLP_ENDPOINT`, `http/protobuf` or `http/json`), and
 * links the span to the `Deno.serve` request span it runs under. Without it the API is a no-op.
 *
 * The span starts when the call goes upstream and ends when the answer is over (a stream's last
 * event, its cut or its client leaving), not at the response headers, so it carries the usage of
 * the whole answer. No prompt or answer content is ever set on spans or metrics.
 */
import type { Attributes, Histogram, Span } from "@opentelemetry/api";
import { metrics, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import type { RequestSummary } from "./request_summary.ts";

const SCOPE = "sluice";

interface Instruments {
  tokenUsage: Histogram;
  duration: Histogram;
  timeToFirstToken: Histogram;
  timePerOutputToken: Histogram;
}

let instruments: Instruments | undefined;

// Created on first use, not at import time: the meter provider is Deno's once OTEL_DENO is on.
function meters(): Instruments {
  if (instruments) return instruments;
  const meter = metrics.getMeter(SCOPE);
  instruments = {
    tokenUsage: meter.createHistogram("gen_ai.client.token.usage", {
      description: "Tokens used per call, by gen_ai.token.type (input includes cache tokens).",
      unit: "{token}",
    }),
    duration: meter.createHistogram("gen_ai.client.operation.duration", {
      description: "Time from the request's arrival to the end of its answer.",
      unit: "s",
    }),
    timeToFirstToken: meter.createHistogram("gen_ai.server.time_to_first_token", {
      description: "Time from the upstream call to its first content delta (streams).",
      unit: "s",
    }),
    timePerOutputToken: meter.createHistogram("gen_ai.server.time_per_output_token", {
      description: "Time per output token after the first (streams).",
      unit: "s",
    }),
  };
  return instruments;
}

/** What is known when a call starts. */
export interface CallStart {
  /** The model the request names. */
  model: string | null;
  streaming: boolean;
}

/** A call's span and metrics, ended once with its summary. */
export interface CallTelemetry {
  end(summary: RequestSummary): void;
  fail(error: unknown): void;
}

/** Starts the span of one upstream call. */
export function startCallTelemetry(start: CallStart): CallTelemetry {
  const model = start.model ?? "unknown";
  const attributes: Attributes = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "anthropic",
    "gen_ai.system": "anthropic",
    "gen_ai.request.model": model,
  };
  const span: Span = trace.getTracer(SCOPE).startSpan(`chat ${model}`, {
    kind: SpanKind.CLIENT,
    attributes,
  });
  let ended = false;
  return {
    end(summary) {
      if (ended) return;
      ended = true;
      const u = summary.usage;
      const input = u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens;
      const response: Attributes = {
        "gen_ai.response.model": summary.model ?? model,
        "gen_ai.usage.input_tokens": input,
        "gen_ai.usage.output_tokens": u.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": u.cache_read_input_tokens,
        "gen_ai.usage.cache_creation.input_tokens": u.cache_creation_input_tokens,
        "http.response.status_code": summary.status,
        "sluice.streaming": summary.streaming,
        "sluice.outcome": summary.outcome,
      };
      if (summary.messageId) response["gen_ai.response.id"] = summary.messageId;
      if (summary.stopReason) response["gen_ai.response.finish_reasons"] = [summary.stopReason];
      if (summary.upstreamTtftMs !== null && summary.streaming) {
        response["gen_ai.response.time_to_first_chunk"] = summary.upstreamTtftMs / 1000;
      }
      if (summary.outcome !== "ok") {
        response["error.type"] = summary.outcome;
        span.setStatus({ code: SpanStatusCode.ERROR, message: summary.outcome });
      }
      span.setAttributes(response);
      span.end();
      recordMetrics(summary, model, input);
    },
    fail(error) {
      if (ended) return;
      ended = true;
      span.setAttribute("error.type", (error as Error)?.name ?? "Error");
      span.setStatus({ code: SpanStatusCode.ERROR, message: String((error as Error)?.message) });
      span.end();
    },
  };
}

function recordMetrics(summary: RequestSummary, model: string, input: number): void {
  const m = meters();
  const attributes: Attributes = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "anthropic",
    "gen_ai.request.model": model,
    "gen_ai.response.model": summary.model ?? model,
  };
  if (summary.outcome !== "ok") attributes["error.type"] = summary.outcome;
  m.duration.record(summary.totalMs / 1000, attributes);
  if (summary.outcome === "ok" || input + summary.usage.output_tokens > 0) {
    m.tokenUsage.record(input, { ...attributes, "gen_ai.token.type": "input" });
    m.tokenUsage.record(summary.usage.output_tokens, {
      ...attributes,
      "gen_ai.token.type": "output",
    });
  }
  if (!summary.streaming || summary.upstreamTtftMs === null) return;
  m.timeToFirstToken.record(summary.upstreamTtftMs / 1000, attributes);
  const after = summary.usage.output_tokens - 1;
  if (after > 0 && summary.ttftMs !== null) {
    m.timePerOutputToken.record((summary.totalMs - summary.ttftMs) / 1000 / after, attributes);
  }
}
