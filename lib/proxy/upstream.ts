/**
 * The upstream: `POST /v1/messages` (and the few other Messages API calls sluice forwards) to
 * Anthropic through the official SDK's client, which brings base URL handling, authentication
 * headers, timeouts and retries with backoff that honours `retry-after`. The raw `Response` is
 * kept (`asResponse()`), so stream bytes and JSON bodies pass through untouched.
 *
 * Live and replay differ only in the `fetch` the client is given: replay's `fetch` answers from
 * fixtures (see replay.ts), tests give a fake one. The routes never know which they have.
 */
import Anthropic, {
  APIConnectionError,
  APIConnectionTimeoutError,
  APIError,
  APIUserAbortError,
} from "@anthropic-ai/sdk";
import { errorBody, errorTypeForStatus } from "../errors.ts";
import { clientHeaders } from "./pass_headers.ts";
import { readBody } from "../stream/tap.ts";
import { createRedactor, type Redactor } from "../redact.ts";

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
   * The caller's body, byte for byte: bytes (retried like any SDK call), a stream (a large
   * upload, sent as it arrives and therefore never retried: it cannot be read twice), or none.
   */
  body: Uint8Array | ReadableStream<Uint8Array> | null;
  stream: boolean;
  /**
   * The caller's headers the API reads, already filtered by pass_headers.ts; they win over the
   * client's defaults (`anthropic-version`, `user-agent`, `x-stainless-*`).
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
   * Pass an upstream HTTP error back with its own body bytes and content type (the server's key
   * still redacted) instead of in Anthropic's error shape. For endpoints whose errors have
   * another shape that their clients parse: `/v1/chat/completions` answers OpenAI's.
   */
  rawErrors?: boolean;
}

/** The methods sluice forwards (the ones the SDK's client sends). */
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
  /** The fetch the SDK uses: the real one, replay's, or a test's fake. */
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
  const ledger: AttemptLedger = {
    attempts: new WeakMap(),
    original: new WeakMap(),
    errorBytes: new WeakMap(),
    lastAttempt: new Map(),
    calls: 0,
  };
  const maxRetries = options.maxRetries ?? 2;
  const idleTimeoutMs = options.streamPolicy?.idleTimeoutMs ?? 0;
  // The SDK reads an error body with no time limit of its own; a stalled one must not hang
  // the request, so sluice reads it first, within the idle timeout (or the attempt's limit).
  const errorBodyLimitMs = idleTimeoutMs > 0 ? idleTimeoutMs : options.timeoutMs ?? 600_000;
  // Replay's placeholder is no secret: its fixtures may say "replay" in their answers.
  const redact = createRedactor(options.mode === "live" ? [options.apiKey] : []);
  const client = new Anthropic({
    apiKey: options.apiKey,
    baseURL: options.baseURL,
    fetch: countingFetch(options.fetch ?? globalThis.fetch, ledger, redact, {
      maxRetries,
      maxWaitMs: options.retryMaxWaitMs ?? 10_000,
      errorBodyLimitMs,
    }),
    maxRetries,
    timeout: options.timeoutMs ?? 600_000,
    logLevel: "off",
  });

  return {
    mode: options.mode,
    redact,
    streamPolicy: {
      idleTimeoutMs: options.streamPolicy?.idleTimeoutMs ?? 0,
      keepAliveMs: options.streamPolicy?.keepAliveMs ?? 0,
      maxEventChars: options.streamPolicy?.maxEventChars ?? DEFAULT_MAX_SSE_EVENT_CHARS,
    },
    send: (request) => sendRequest(client, ledger, redact, options, request),
  };
}

/** What one upstream remembers of the SDK's attempts, shared by its fetch and its `send`. */
interface AttemptLedger {
  /**
   * The SDK numbers its attempts in `x-stainless-retry-count`; remember it per response so the
   * route can report retries. Keyed by the Headers object, which APIError also carries.
   */
  attempts: WeakMap<Headers, number>;
  /** Headers as the upstream sent them, for responses whose retry-after was clamped. */
  original: WeakMap<Headers, Headers>;
  /** Error bodies as the upstream sent them (for `rawErrors`), keyed like `attempts`. */
  errorBytes: WeakMap<Headers, Uint8Array<ArrayBuffer>>;
  /**
   * The last attempt of each call in flight, by the call's id (`CALL_HEADER`): an attempt that
   * gets no response (a timeout, a connection error, garbage instead of HTTP) has no headers to
   * key `attempts` by, and its retries were reported as 0.
   */
  lastAttempt: Map<string, number>;
  /** Calls sent so far: the last call's id. */
  calls: number;
}

/** The limits {@link countingFetch} applies to each attempt's answer. */
interface AttemptLimits {
  maxRetries: number;
  /** Longest wait between attempts (ms) that an answer's retry-after may ask for. */
  maxWaitMs: number;
  /** Time limit for reading an error body (ms). */
  errorBodyLimitMs: number;
}

/**
 * The fetch the SDK is given: `baseFetch` with each attempt counted in `ledger`, the server's key
 * redacted from the answer's headers, retry-after clamped and error bodies read in advance.
 */
function countingFetch(
  baseFetch: typeof fetch,
  ledger: AttemptLedger,
  redact: Redactor,
  limits: AttemptLimits,
): typeof fetch {
  return async (input, init) => {
    // The SDK passes a Headers object: read it as it is rather than copying it (a copy per
    // request showed in the gateway bench's profile).
    const sent = init?.headers instanceof Headers ? init.headers : new Headers(init?.headers);
    const attempt = Number(sent.get("x-stainless-retry-count") ?? 0) || 0;
    const call = sent.get(CALL_HEADER);
    if (call !== null) {
      sent.delete(CALL_HEADER); // sluice's own bookkeeping: never sent upstream
      ledger.lastAttempt.set(call, attempt);
      if (!(init?.headers instanceof Headers)) init = { ...init, headers: sent };
    }
    let response = redactHeaders(await baseFetch(input, init), redact);
    // Only an attempt that may be followed by another has its wait clamped; the last answer
    // reaches the client with the upstream's own retry-after.
    if (!response.ok && attempt < limits.maxRetries) {
      const clamped = clampRetryAfter(response, limits.maxWaitMs);
      if (clamped !== response) ledger.original.set(clamped.headers, response.headers);
      response = clamped;
    }
    if (!response.ok && response.body) {
      response = await bufferErrorBody(response, response.body, limits.errorBodyLimitMs, ledger);
    }
    ledger.attempts.set(response.headers, attempt);
    return response;
  };
}

/**
 * `response` with its error `body` read within `limitMs` (no body if that failed), its
 * upstream headers and body bytes noted in `ledger` under the new response's headers.
 */
async function bufferErrorBody(
  response: Response,
  body: ReadableStream<Uint8Array>,
  limitMs: number,
  ledger: AttemptLedger,
): Promise<Response> {
  const bytes = await readBody(body, limitMs).catch(() => null);
  const buffered = new Response(bytes, {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
  const upstreamHeaders = ledger.original.get(response.headers);
  if (upstreamHeaders) ledger.original.set(buffered.headers, upstreamHeaders);
  if (bytes) ledger.errorBytes.set(buffered.headers, bytes);
  return buffered;
}

/** {@link Upstream.send}: one request through the SDK's client, its failures made answers. */
async function sendRequest(
  client: Anthropic,
  ledger: AttemptLedger,
  redact: Redactor,
  options: UpstreamOptions,
  request: UpstreamRequest,
): Promise<UpstreamResult> {
  const method = request.method ?? "POST";
  const hasBody = request.body !== null && method !== "GET" && method !== "DELETE";
  const headers = requestHeaders(request, options, hasBody);
  const call = String(++ledger.calls);
  headers[CALL_HEADER] = call;
  // Retries as counted by the attempts sent, whatever became of them.
  const retried = (fallback: number) => Math.max(fallback, ledger.lastAttempt.get(call) ?? 0);
  try {
    const path = request.path ?? "/v1/messages";
    const streamedBody = request.body instanceof ReadableStream;
    const response = await client.request({
      method: method.toLowerCase() as Lowercase<UpstreamMethod>,
      path,
      body: hasBody ? request.body : undefined,
      stream: request.stream,
      headers,
      signal: request.signal,
      // A body read as it arrives cannot be sent twice.
      ...(streamedBody ? { maxRetries: 0 } : {}),
    }).asResponse();
    return { response, retries: retried(ledger.attempts.get(response.headers) ?? 0) };
  } catch (error) {
    if (error instanceof APIUserAbortError) throw error;
    if (request.rawErrors) {
      const raw = rawFailure(error, ledger.original, ledger.errorBytes, redact);
      if (raw) {
        return { response: raw.response, retries: retried(ledger.attempts.get(raw.seen) ?? 0) };
      }
    }
    const failed = upstreamFailure(error, ledger.original, redact);
    if (!failed) throw error;
    const result = failed(ledger.attempts);
    return { ...result, retries: retried(result.retries) };
  } finally {
    ledger.lastAttempt.delete(call);
  }
}

/**
 * The headers sluice adds to the SDK's for `request` (null removes one of the SDK's): the
 * caller's, its API version and betas, replay's fixture, the key's style.
 */
function requestHeaders(
  request: UpstreamRequest,
  options: UpstreamOptions,
  hasBody: boolean,
): Record<string, string | null> {
  const headers: Record<string, string | null> = {
    "content-type": hasBody ? "application/json" : null,
    ...request.headers,
  };
  if (request.anthropicVersion) headers["anthropic-version"] = request.anthropicVersion;
  if (request.anthropicBeta) headers["anthropic-beta"] = request.anthropicBeta;
  if (options.mode === "replay" && request.fixture) {
    headers["x-sluice-fixture"] = request.fixture;
  }
  if (request.authStyle === "x-api-key") {
    headers["x-api-key"] = options.apiKey;
    headers["authorization"] = null;
  }
  return headers;
}

/** The header that names a call to `countingFetch`; removed before anything is sent. */
const CALL_HEADER = "x-sluice-call";

/** Turns an SDK error into the response the client should get, or undefined to rethrow. */
function upstreamFailure(
  error: unknown,
  original: WeakMap<Headers, Headers>,
  redact: Redactor,
): ((attempts: WeakMap<Headers, number>) => UpstreamResult) | undefined {
  if (error instanceof APIConnectionTimeoutError) {
    return () => ({
      response: jsonResponse(
        504,
        errorBody("timeout_error", "the upstream API did not answer in time"),
      ),
      retries: 0,
      local: true,
    });
  }
  if (error instanceof APIConnectionError) {
    return () => ({
      response: jsonResponse(502, errorBody("api_error", "could not connect to the upstream API")),
      retries: 0,
      local: true,
    });
  }
  if (error instanceof APIError && typeof error.status === "number") {
    return (attempts) => {
      const headers = new Headers();
      const seen = error.headers as Headers | undefined;
      const upstreamHeaders = seen ? original.get(seen) ?? seen : undefined;
      if (upstreamHeaders) clientHeaders(upstreamHeaders, headers);
      // The SDK parsed the body. Anthropic's error shape passes as is; anything else (an HTML
      // page or a foreign JSON shape from a proxy) becomes one, so clients can rely on it.
      const type = errorTypeForStatus(error.status);
      // Redacted before it is shortened: a key across the cut would survive in part otherwise.
      const body = isErrorShape(error.error) ? redact.value(error.error) : errorBody(
        type,
        error.error && typeof error.error === "object"
          ? `upstream answered ${error.status}: ${
            redact.text(JSON.stringify(error.error)).slice(0, 300)
          }`
          : `upstream answered ${error.status} without a JSON error body`,
      );
      return {
        response: jsonResponse(error.status as number, body, headers),
        retries: seen ? attempts.get(seen) ?? 0 : 0,
      };
    };
  }
  return undefined;
}

/**
 * An upstream HTTP error as the upstream sent it (for `rawErrors`): its status, its body bytes
 * with the server's key redacted, and the headers a client acts on (its content type too). Undefined
 * when `error` is not an HTTP error whose body sluice read; the caller falls back to
 * {@link upstreamFailure}. `seen` is the headers object the SDK kept, the key of `attempts`.
 */
function rawFailure(
  error: unknown,
  original: WeakMap<Headers, Headers>,
  errorBytes: WeakMap<Headers, Uint8Array<ArrayBuffer>>,
  redact: Redactor,
): { response: Response; seen: Headers } | undefined {
  if (!(error instanceof APIError) || typeof error.status !== "number") return undefined;
  const seen = error.headers as Headers | undefined;
  const bytes = seen ? errorBytes.get(seen) : undefined;
  if (!seen || !bytes) return undefined;
  const headers = clientHeaders(original.get(seen) ?? seen);
  const response = new Response(redact.bytes(bytes), { status: error.status, headers });
  return { response, seen };
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

function jsonResponse(status: number, body: unknown, headers = new Headers()): Response {
  headers.set("content-type", "application/json");
  return new Response(JSON.stringify(body), { status, headers });
}

/**
 * The wait an answer asks for, read as the SDK reads it: `retry-after-ms` (ms), else
 * `retry-after` (seconds or an HTTP date). Undefined when neither gives a positive number.
 */
export function requestedWaitMs(headers: Headers, now = Date.now()): number | undefined {
  const ms = parseFloat(headers.get("retry-after-ms") ?? "");
  if (Number.isFinite(ms) && ms > 0) return ms;
  const after = headers.get("retry-after");
  if (!after) return undefined;
  const seconds = parseFloat(after);
  const wait = Number.isNaN(seconds) ? Date.parse(after) - now : seconds * 1000;
  return Number.isFinite(wait) && wait > 0 ? wait : undefined;
}

/**
 * Returns `response` with its requested wait lowered to `maxWaitMs` (as `retry-after-ms`, which
 * the SDK reads first), or `response` itself when it asks for no more than that. Without a
 * header the SDK's own backoff applies (0.5 s, 1 s, 2 s … at most 8 s).
 */
export function clampRetryAfter(response: Response, maxWaitMs: number): Response {
  const wait = requestedWaitMs(response.headers);
  if (wait === undefined || wait <= maxWaitMs) return response;
  const headers = new Headers(response.headers);
  headers.delete("retry-after");
  // The SDK treats 0 as "no header" and backs off by itself; 1 ms is the smallest real wait.
  headers.set("retry-after-ms", String(Math.max(1, maxWaitMs)));
  return new Response(response.body, {
    status: response.status,
    statusText: response.statusText,
    headers,
  });
}

/** Whether `body` has Anthropic's error shape: `{type: "error", error: {type, message}}`. */
function isErrorShape(body: unknown): boolean {
  const b = body as { type?: unknown; error?: { type?: unknown; message?: unknown } } | null;
  return !!b && typeof b === "object" && b.type === "error" && typeof b.error === "object" &&
    b.error !== null && typeof b.error.type === "string" && typeof b.error.message === "string";
}
