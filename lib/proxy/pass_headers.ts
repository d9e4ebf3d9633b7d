/**
 * The one list of headers that cross sluice, each way.
 *
 * Towards the upstream sluice forwards the request headers the API reads and nothing that
 * belongs to the caller's connection or identity: the caller's `x-api-key`/`authorization` are
 * gateway credentials (the upstream gets the server's key instead), and cookies, `host` and the
 * hop-by-hop headers describe the caller's hop, not the upstream's.
 *
 * Back to the client sluice passes the response headers a client acts on: the request id, the
 * retry advice, rate-limit and organisation headers, and what describes the body (type,
 * disposition, length of a file download).
 */

/**
 * Request headers forwarded upstream verbatim. `x-stainless-*` are the SDKs' telemetry headers
 * (language, version, OS, runtime, helper method); the two an SDK sets per attempt of its own,
 * `x-stainless-retry-count` and `x-stainless-timeout`, describe sluice's attempts upstream and
 * are set by sluice's own client, so the caller's values of those two are not forwarded.
 * `x-app` and `x-claude-code-session-id` are how Claude Code names itself and its session.
 */
export const REQUEST_HEADERS: RegExp =
  /^(anthropic-.+|content-type|accept|idempotency-key|user-agent|x-app|x-claude-code-session-id|x-stainless-(?!retry-count$|timeout$).+)$/i;

/**
 * Response headers passed back to the client verbatim. (`x-request-id` is where OpenAI SDKs read
 * the request id, for `/v1/chat/completions`.)
 */
export const RESPONSE_HEADERS: RegExp =
  /^(request-id|x-request-id|retry-after|retry-after-ms|x-should-retry|anthropic-.+|content-type|content-disposition|x-sluice-fixture)$/i;

/** The caller's headers that go upstream (see {@link REQUEST_HEADERS}), as a plain record. */
export function upstreamHeaders(incoming: Headers): Record<string, string> {
  const out: Record<string, string> = {};
  incoming.forEach((value, key) => {
    if (REQUEST_HEADERS.test(key)) out[key] = value;
  });
  return out;
}

/** The upstream's headers a client gets (see {@link RESPONSE_HEADERS}), added to `into`. */
export function clientHeaders(upstream: Headers, into: Headers = new Headers()): Headers {
  upstream.forEach((value, key) => {
    if (RESPONSE_HEADERS.test(key)) into.set(key, value);
  });
  return into;
}

/** The SDKs' telemetry headers by name, for CORS preflights (which cannot take a pattern). */
export const STAINLESS_HEADERS: readonly string[] = [
  "x-stainless-arch",
  "x-stainless-lang",
  "x-stainless-os",
  "x-stainless-package-version",
  "x-stainless-runtime",
  "x-stainless-runtime-version",
  "x-stainless-retry-count",
  "x-stainless-timeout",
  "x-stainless-helper-method",
  "x-stainless-stream-helper",
];
