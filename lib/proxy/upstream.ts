/**
 * The upstream: `POST /v1/messages` (and every other API call sluice forwards) to Anthropic with
 * `fetch`, each attempt within a first-byte time limit, retried with backoff that honours
 * `retry-after` as the official SDK does (see retry_policy.ts). The raw `Response` is returned, so
 * stream bytes and JSON bodies pass through untouched.
 *
 * Hand-written rather than the SDK's `client.request(...).asResponse()`, which sluice used before:
 * sluice needs only the SDK's transport (headers, a timeout, retries), not its types or parsing,
 * and the SDK's per-request work (building its options, ~15 headers, an abort signal and a timer
 * per attempt, its response wrapping) was the largest item on the request path's profile:
 * ~160 µs to build the request and ~250 µs more in `fetch` and the response handling, per request
 * (docs/performance.md). The SDK's retry rules are kept line for line in retry_policy.ts.
 *
 * Live and replay differ only in the `fetch` given: replay's `fetch` answers from fixtures (see
 * replay.ts), tests give a fake one. The routes never know which they have.
 */
import { createRedactor, type Redactor } from "../redact.ts";
import { retryWaitMs, shouldRetry, sleep } from "./retry_policy.ts";
import { errorAnswer, type NoAnswer, noAnswerResponse } from "./upstream_errors.ts";

/** One request to the upstream. */
export interface UpstreamRequest {
  /**
   * The API path with the caller's query string, verbatim; `/v1/messages` by default. Any
   * `/v1/*` path may be sent (see forward.ts).
   */
  path?: string;
  /** `POST` by default. */
  method?: UpstreamMethod;
  /**
   * The caller's body, byte for byte: bytes (retried when an attempt fails), a stream (a large
   * upload, sent as it arrives and therefore never retried: it cannot be read twice), or none.
   */
  body: Uint8Array | ReadableStream<Uint8Array> | null;
  stream: boolean;
  /**
   * The caller's headers the API reads, already filtered by pass_headers.ts; they win over the
   * defaults (`accept`, `anthropic-version`, `content-type`).
   */
  headers?: Record<string, string>;
  /** Forwarded verbatim when present (for callers that build a request, like `/chat`). */
  anthropicVersion?: string;
  anthropicBeta?: string;
  /**
   * How to present the server's key: SDK 1.x style (`Authorization: Bearer`) or 0.x style
   * (`x-api-key`). sluice mirrors the style its caller used, so the upstream sees what the
   * caller's SDK would have sent.
   */
  authStyle?: "bearer" | "x-api-key";
  signal?: AbortSignal;
  /** Replay only: the fixture to serve (the caller's `x-sluice-fixture`); ignored when live. */
  fixture?: string;
  /**
   * sluice's id of the caller's request: the `request_id` of the error answers made for it when
   * the upstream gave none, or gave one without an id of its own.
   */
  requestId?: string;
  /**
   * Pass an upstream HTTP error back with its own body bytes and content type (the server's key
   * still redacted) instead of in Anthropic's error shape. For endpoints whose errors have
   * another shape that their clients parse: `/v1/chat/completions` answers OpenAI's.
   */
  rawErrors?: boolean;
}

/** The methods sluice forwards (the ones the API's clients send). */
export type UpstreamMethod = "GET" | "POST" | "PUT" | "PATCH" | "DELETE";

/** The upstream's answer: a raw response (success or HTTP error) and how many retries it took. */
export interface UpstreamResult {
  response: Response;
  retries: number;
  /**
   * True when sluice made the answer itself because the upstream gave none (a timeout, a failed
   * connection): its body is in Anthropic's error shape whatever `rawErrors` says.
   */
  local?: boolean;
}

/** How long a streamed answer may stay silent, and how the client is kept company meanwhile. */
export interface StreamPolicy {
  /** Silence from the upstream (ms) after which the stream is cut with an error event; 0: never. */
  idleTimeoutMs: number;
  /** Silence towards the client (ms) after which an SSE comment is sent; 0: never. */
  keepAliveMs: number;
  /**
   * Most characters sluice parses of one upstream SSE event (see `createSseDecoder`): a larger
   * one still reaches the client byte for byte, but is not held in memory to be parsed.
   */
  maxEventChars: number;
}

/** The default of {@link StreamPolicy.maxEventChars}: 8 Mi characters. */
export const DEFAULT_MAX_SSE_EVENT_CHARS = 8 * 1024 * 1024;

/** Sends Messages requests upstream. */
export interface Upstream {
  readonly mode: "live" | "replay";
  /** Applied to every streamed answer this upstream gives (see messages_call.ts). */
  readonly streamPolicy: StreamPolicy;
  send(request: UpstreamRequest): Promise<UpstreamResult>;
  /**
   * Removes the server's key from what came from the upstream. The headers of every answer
   * and the error bodies sluice builds are already clean; a route that reads a whole body
   * (a JSON answer) passes it through this before anyone sees it.
   */
  readonly redact: Redactor;
}

/** Options for {@link createUpstream}. */
export interface UpstreamOptions {
  mode: "live" | "replay";
  apiKey: string;
  baseURL: string;
  /** The fetch each attempt uses: the real one, replay's, or a test's fake. */
  fetch?: typeof fetch;
  /** Retries before the first byte (the SDK's policy: 408, 409, 429, 5xx, connection errors). */
  maxRetries?: number;
  /** Time limit for an attempt to get response headers, in ms (then retried; finally 504). */
  timeoutMs?: number;
  /**
   * Longest wait between attempts, in ms. The SDK honours `retry-after-ms`/`retry-after` up to
   * 24 days; a gateway holding its caller's connection must not. Default 10 000.
   */
  retryMaxWaitMs?: number;
  /** Idle timeout and keep-alives of streamed answers; both off unless given. */
  streamPolicy?: Partial<StreamPolicy>;
}

/** Creates the upstream client. */
export function createUpstream(options: UpstreamOptions): Upstream {
  const idleTimeoutMs = options.streamPolicy?.idleTimeoutMs ?? 0;
  const timeoutMs = options.timeoutMs ?? 600_000;
  // Replay's placeholder is no secret: its fixtures may say "replay" in their answers.
  const redact = createRedactor(options.mode === "live" ? [options.apiKey] : []);
  const settings: SendSettings = {
    fetch: options.fetch ?? globalThis.fetch,
    base: options.baseURL.replace(/\/+$/, ""),
    apiKey: options.apiKey,
    replay: options.mode === "replay",
    maxRetries: options.maxRetries ?? 2,
    timeoutMs,
    maxWaitMs: options.retryMaxWaitMs ?? 10_000,
    // An error body is read with a time limit of its own (the SDK's has none): a stalled one must
    // not hang the request, so it gets the idle timeout (or the attempt's limit).
    errorBodyLimitMs: idleTimeoutMs > 0 ? idleTimeoutMs : timeoutMs,
    redact,
  };
  return {
    mode: options.mode,
    redact,
    streamPolicy: {
      idleTimeoutMs,
      keepAliveMs: options.streamPolicy?.keepAliveMs ?? 0,
      maxEventChars: options.streamPolicy?.maxEventChars ?? DEFAULT_MAX_SSE_EVENT_CHARS,
    },
    send: (request) => sendRequest(settings, request),
  };
}

/** What every call of one upstream shares. */
interface SendSettings {
  fetch: typeof fetch;
  /** The base URL without a trailing slash. */
  base: string;
  apiKey: string;
  replay: boolean;
  maxRetries: number;
  /** Time limit for an attempt to get response headers (ms). */
  timeoutMs: number;
  /** Longest wait between attempts (ms) that an answer's retry-after may ask for. */
  maxWaitMs: number;
  /** Longest silence while an error body is read (ms). */
  errorBodyLimitMs: number;
  redact: Redactor;
}

/**
 * {@link Upstream.send}: `request` sent, retried while the policy says so, its last failure made
 * an answer. Throws only when `request.signal` aborts (its reason).
 */
async function sendRequest(s: SendSettings, request: UpstreamRequest): Promise<UpstreamResult> {
  const method = request.method ?? "POST";
  const hasBody = request.body !== null && method !== "GET" && method !== "DELETE";
  const streamedBody = hasBody && request.body instanceof ReadableStream;
  const headers = requestHeaders(request, s, hasBody);
  const init: RequestInit = { method };
  if (hasBody) init.body = request.body as BodyInit;
  // A body read as it arrives goes out as it arrives, and cannot be sent twice.
  if (streamedBody) (init as { duplex?: string }).duplex = "half";
  const maxRetries = streamedBody ? 0 : s.maxRetries;
  const url = s.base + (request.path ?? "/v1/messages");
  for (let attempt = 0;; attempt++) {
    init.headers = { ...headers, "x-stainless-retry-count": String(attempt) };
    const answer = await attemptOnce(s, url, init, request.signal);
    const last = attempt >= maxRetries;
    if (typeof answer === "string") {
      if (last) {
        return {
          response: noAnswerResponse(answer, request.requestId),
          retries: attempt,
          local: true,
        };
      }
      await sleep(retryWaitMs({ retriesSoFar: attempt, maxWaitMs: s.maxWaitMs }), request.signal);
      continue;
    }
    const response = redactHeaders(answer, s.redact);
    if (response.ok) return { response, retries: attempt };
    if (last || !shouldRetry(response)) {
      const raw = request.rawErrors;
      const options = {
        redact: s.redact,
        bodyLimitMs: s.errorBodyLimitMs,
        raw,
        requestId: request.requestId,
      };
      return { response: await errorAnswer(response, options), retries: attempt };
    }
    await response.body?.cancel().catch(() => {}); // not needed: another attempt follows
    const wait = retryWaitMs({
      headers: response.headers,
      retriesSoFar: attempt,
      maxWaitMs: s.maxWaitMs,
    });
    await sleep(wait, request.signal);
  }
}

/**
 * One attempt: the response, or why there is none ("timeout": no headers within the limit;
 * "connection": no connection, or what came was not HTTP). Throws when `signal` aborts.
 */
async function attemptOnce(
  s: SendSettings,
  url: string,
  init: RequestInit,
  signal: AbortSignal | undefined,
): Promise<Response | NoAnswer> {
  if (signal?.aborted) throw signal.reason;
  // One controller per attempt: the time limit aborts this attempt only, the caller's signal
  // every attempt and, once the headers are in, the body (so its listener stays).
  const controller = new AbortController();
  signal?.addEventListener("abort", () => controller.abort(signal.reason), { once: true });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, s.timeoutMs);
  init.signal = controller.signal;
  try {
    return await s.fetch(url, init);
  } catch (error) {
    if (signal?.aborted) throw signal.reason ?? error;
    // As the SDK tells them apart: an abort of ours, or an error that says it timed out.
    return timedOut || /timed? ?out/i.test(String(error)) ? "timeout" : "connection";
  } finally {
    clearTimeout(timer);
  }
}

/** The header the SDK sends when its caller gives none; the API requires one. */
const DEFAULT_ANTHROPIC_VERSION = "2026-10-21";

/**
 * The headers of `request` upstream: the caller's (already filtered by pass_headers.ts) over the
 * defaults the SDK would send (`accept`, `anthropic-version`, `content-type`), the API version and
 * betas of a request sluice builds, replay's fixture, and the server's key in the caller's style.
 * A plain record of lower-case names, not a `Headers`: `fetch` validates a `Headers` it is given
 * once more as it copies it, which cost ~23 µs a request on loopback against ~1 µs for a record.
 */
function requestHeaders(
  request: UpstreamRequest,
  s: SendSettings,
  hasBody: boolean,
): Record<string, string> {
  const headers: Record<string, string> = {
    accept: "application/json",
    "anthropic-version": DEFAULT_ANTHROPIC_VERSION,
  };
  if (hasBody) headers["content-type"] = "application/json";
  for (const name in request.headers) headers[name.toLowerCase()] = request.headers[name];
  if (request.anthropicVersion) headers["anthropic-version"] = request.anthropicVersion;
  if (request.anthropicBeta) headers["anthropic-beta"] = request.anthropicBeta;
  if (s.replay && request.fixture) headers["x-sluice-fixture"] = request.fixture;
  if (request.authStyle === "x-api-key") headers["x-api-key"] = s.apiKey;
  else headers.authorization = `Bearer ${s.apiKey}`;
  headers["x-stainless-timeout"] = String(Math.trunc(s.timeoutMs / 1000));
  return headers;
}

/** `response` with the secrets removed from its headers (the same response when none holds one). */
function redactHeaders(response: Response, redact: Redactor): Response {
  const headers = redact.headers(response.headers);
  if (headers === response.headers) return response;
  return new Response(response.body, {
    status: response.status,
    statusText: response.statusText,
    headers,
  });
}
