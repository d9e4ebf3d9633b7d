/**
 * The bounded label sets of the stats. Every label value becomes KV keys that never expire (the
 * all-time counters) and a `/metrics` series, so a value a caller or an upstream can choose
 * freely (`"model":"m-$i"`) would grow the store and every scrape without bound. Each label is
 * one of a known set, else `other`.
 */
import type Anthropic from "@anthropic-ai/sdk";
import type { RequestSummary } from "./request_summary.ts";

/** The literal model names of the SDK's `Model` union (without its `string & {}` escape). */
type SdkModel = Anthropic.Model extends infer T
  ? T extends string ? string extends T ? never : T : never
  : never;

/**
 * The models the SDK knows, as a record so that the type checker holds it to the SDK's list: an
 * SDK upgrade that adds or drops a model fails `deno check` until this list follows.
 */
const SDK_MODELS: Record<SdkModel, true> = {
  "claude-fable-5-2": true,
  "claude-mythos-5-2": true,
  "claude-haiku-5-5": true,
  "claude-sonnet-5-5": true,
  "claude-fable-5-1": true,
  "claude-opus-5-5": true,
  "claude-mythos-5-1": true,
  "claude-sonnet-5": true,
  "claude-fable-5": true,
  "claude-mythos-5": true,
  "claude-opus-5": true,
  "claude-opus-4-8": true,
  "claude-opus-4-7": true,
  "claude-mythos-preview": true,
  "claude-opus-4-6": true,
  "claude-sonnet-4-6": true,
  "claude-haiku-4-5": true,
  "claude-haiku-4-5-20251001": true,
  "claude-opus-4-5": true,
  "claude-opus-4-5-20251101": true,
  "claude-sonnet-4-5": true,
  "claude-sonnet-4-5-20250929": true,
};

/** The SDK's models. */
export const KNOWN_MODELS: readonly string[] = Object.keys(SDK_MODELS);

/** What sluice itself records as outcomes, besides the API's error types and `http_NNN`. */
const OUTCOMES = new Set([
  "ok",
  "incomplete",
  "client_aborted",
  "invalid_request",
  // Anthropic's error types (and OpenAI's, for /v1/chat/completions, where they differ).
  "invalid_request_error",
  "authentication_error",
  "permission_error",
  "not_found_error",
  "request_too_large",
  "rate_limit_error",
  "api_error",
  "overloaded_error",
  "timeout_error",
  "billing_error",
  "server_error",
  "insufficient_quota",
]);

/** Builds the model label: a known model (or a dated id of one), else `other`. */
export function modelLabeller(extra: readonly (string | undefined)[] = []) {
  const known = new Set([...KNOWN_MODELS, ...extra.filter((m): m is string => !!m)]);
  return (model: string | null): string | null => {
    if (model === null) return null;
    if (known.has(model)) return model;
    // The API answers with dated ids (`claude-sonnet-5-5-20261101`) of the aliases callers send.
    const dated = /^(.+)-\d{8}$/.exec(model);
    return dated && known.has(dated[1]) ? model : "other";
  };
}

/**
 * `summary` with the labels a caller or an upstream error body can choose in their bounded sets:
 * the model (see {@link modelLabeller}) and the outcome; unknown values become `other`. (Event
 * names come from the upstream's stream and stay as they are, so a new event type is counted by
 * name; `cleanLabel` in kv_layout.ts still keeps each one a short identifier.)
 */
export function boundLabels(
  summary: RequestSummary,
  modelLabel: (model: string | null) => string | null,
): RequestSummary {
  const outcome = OUTCOMES.has(summary.outcome) || /^http_\d{3}$/.test(summary.outcome)
    ? summary.outcome
    : "other";
  return { ...summary, model: modelLabel(summary.model), outcome };
}
