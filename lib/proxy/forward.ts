/**
 * Forwards any Messages API call that is not a message (`count_tokens`, batches, files, models,
 * and whatever `/v1/*` path the API adds next): the caller's method, path, query string, body
 * and API headers go upstream through the same SDK client as messages, with the server's key;
 * the answer comes back with its status and the headers a client acts on.
 *
 * Bodies stream both ways: a large upload is sent upstream as it arrives and a download (a file's
 * content, a batch's JSONL results) reaches the client chunk by chunk, so neither is held in
 * memory. Only small bodies are read whole: a request body of at most {@link BUFFER_BYTES} (so
 * the SDK can retry it) and a JSON answer (so a body cut mid-answer becomes a clear 502 rather
 * than a truncated document). No accumulator: these calls produce no tokens and no time to first
 * token; each is recorded with its endpoint, status, outcome and time to its answer.
 */
import { readOrRefuse } from "../http/request_body.ts";
import { bufferedResponse } from "../http/response_end.ts";
import type { Clock } from "../clock.ts";
import { shutdownRefusal, SluiceError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { errorTypeOf, safeParse, sendWatched, unreadBody, type Watched } from "./call_parts.ts";
import { clientHeaders, upstreamHeaders } from "./pass_headers.ts";
import { type RequestSummary, tokenUsage } from "../stats/request_summary.ts";
import { readBodyWithin } from "../stream/tap.ts";
import type { Upstream, UpstreamMethod } from "./upstream.ts";

/** Request bodies up to this size are read whole, so the SDK can retry them (1 MiB). */
export const BUFFER_BYTES = 1024 * 1024;

const METHODS: readonly string[] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/** Options for {@link forward}. */
export interface ForwardOptions {
  upstream: Upstream;
  clock: Clock;
  logger: Logger;
  /** The caller's request (its body is read here, once, unless `body` is given). */
  request: Request;
  /** The body, when the middleware already read it whole (lib/http/body_deadline.ts). */
  body?: Uint8Array;
  /** Request arrival on `clock`. */
  startedAt: number;
  requestId: string;
  keyId?: string;
  authStyle?: "bearer" | "x-api-key";
  /**
   * The upstream's base URL. A batch names its results by an absolute `results_url` on the
   * upstream, which the SDK then fetches; sluice points it at itself, or the caller would go
   * around sluice with a gateway key the API does not know.
   */
  upstreamBaseUrl?: string;
  /** Graceful shutdown's cut: a call still waiting for its answer is aborted and refused (503). */
  cut?: AbortSignal;
}

/** The client's response, and the request's summary once its body has been sent. */
export interface Forwarded {
  response: Response;
  finished: Promise<RequestSummary>;
}

/** Sends the caller's request upstream and returns the upstream's answer for the client. */
export async function forward(options: ForwardOptions): Promise<Forwarded> {
  const { request, clock, startedAt } = options;
  const url = new URL(request.url);
  const method = request.method.toUpperCase();
  if (!METHODS.includes(method)) {
    throw new SluiceError(405, "not_found_error", `sluice does not forward ${method} requests`);
  }
  const path = checkedPath(url, request.url);
  const endpoint = endpointLabel(method, url.pathname);

  const summary = (fields: Partial<RequestSummary>): RequestSummary => ({
    id: options.requestId,
    endpoint,
    streaming: false,
    model: null,
    outcome: "ok",
    status: 200,
    retries: 0,
    startedAt,
    ttftMs: null,
    totalMs: clock.now() - startedAt,
    upstreamTtftMs: null,
    usage: tokenUsage(undefined),
    stopReason: null,
    events: {},
    keyId: options.keyId,
    ...fields,
  });

  const watched = await sendWatched(
    options.upstream,
    {
      method: method as UpstreamMethod,
      path,
      body: options.body ?? await requestBody(request),
      stream: false,
      headers: upstreamHeaders(request.headers),
      authStyle: options.authStyle,
      requestId: options.requestId,
    },
    request.signal,
    options.cut,
  );
  if (!watched) {
    const gone = summary({ outcome: "client_aborted", status: 499 });
    return { response: new Response(null, { status: 499 }), finished: Promise.resolve(gone) };
  }
  const { response } = watched.sent;
  if (/json/i.test(response.headers.get("content-type") ?? "") || !response.body) {
    return await forwardWhole(options, watched, { url, endpoint, summary });
  }

  // Any other body (a file's content, a batch's JSONL results) is handed over untouched, so Deno
  // pipes it to the client without JavaScript touching a chunk: watching its end here would
  // copy every chunk through a JS stream (a 100 MB download left ~65 MB of garbage at peak,
  // tests/upload_memory_test.ts). So the call is recorded when its headers arrive.
  watched.waiting.unwatch();
  const headers = clientHeaders(response.headers);
  return {
    response: new Response(redactedEvents(response, options.upstream), {
      status: response.status,
      headers,
    }),
    finished: Promise.resolve(summary(answerFields(watched, options.requestId))),
  };
}

/**
 * The body of a non-JSON answer: an event stream (no endpoint forwarded today streams, but one
 * may) with the server's key removed as it passes, as `/v1/messages` does; anything else (a
 * download: the caller's own file, a batch's results) as it is, piped without JavaScript.
 */
function redactedEvents(response: Response, upstream: Upstream): ReadableStream<Uint8Array> | null {
  const redact = upstream.redact.chunks();
  const type = response.headers.get("content-type") ?? "";
  if (!redact || !response.body || !/text\/event-stream/i.test(type)) return response.body;
  return response.body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        const out = redact.push(chunk);
        if (out.length > 0) controller.enqueue(out);
      },
      flush(controller) {
        const rest = redact.end();
        if (rest.length > 0) controller.enqueue(rest);
      },
    }),
  );
}

/** The summary fields of an upstream answer: its id, status, retries and outcome. */
function answerFields(
  { sent }: Watched,
  requestId: string,
  body?: Uint8Array,
): Partial<RequestSummary> {
  const { response } = sent;
  return {
    id: response.headers.get("request-id") ?? requestId,
    status: response.status,
    retries: sent.retries,
    outcome: response.ok
      ? "ok"
      : errorTypeOf(body ? safeParse(body) : null) ?? `http_${response.status}`,
  };
}

/** A JSON (or empty) answer, read whole: a body cut mid-answer becomes a clear 5xx. */
async function forwardWhole(
  options: ForwardOptions,
  watched: Watched,
  { url, endpoint, summary }: {
    url: URL;
    endpoint: string;
    summary: (fields: Partial<RequestSummary>) => RequestSummary;
  },
): Promise<Forwarded> {
  const { sent, controller, waiting } = watched;
  const { response } = sent;
  const fields = answerFields(watched, options.requestId);
  const headers = clientHeaders(response.headers);
  try {
    // A JSON answer (a model list, a token count, a batch) comes with its headers: whole within
    // the idle timeout, read without a JavaScript stream (see readBodyWithin).
    let body = options.upstream.redact.bytes(
      await readBodyWithin(
        response,
        options.upstream.streamPolicy.idleTimeoutMs,
        controller.signal,
        () => controller.abort(),
      ),
    );
    waiting.unwatch();
    if (options.upstreamBaseUrl && endpoint.includes("/v1/messages/batches")) {
      body = pointResultsAtSluice(body, options.upstreamBaseUrl, url.origin);
    }
    return {
      response: bufferedResponse(body, { status: response.status, headers }),
      finished: Promise.resolve(summary(answerFields(watched, options.requestId, body))),
    };
  } catch (error) {
    waiting.unwatch();
    if (waiting.cause === "shutdown") throw shutdownRefusal();
    options.logger.warn("upstream body failed", { id: fields.id, error: String(error) });
    const unread = unreadBody(error, fields.id);
    headers.set("content-type", "application/json");
    return {
      response: Response.json(unread.body, { status: unread.status, headers }),
      finished: Promise.resolve(
        summary({ ...fields, status: unread.status, outcome: "incomplete" }),
      ),
    };
  }
}

/**
 * The path and query string to send upstream. Dot segments (`.`, `..`, encoded or not),
 * backslashes and percent-encoded slashes, backslashes and dots are refused, as the caller sent
 * them (`raw`, the request's URL before parsing: `Deno.serve` hands it over unresolved, while
 * `new URL` would quietly resolve `/v1/models/../files` to `/v1/files`): a caller must not walk
 * the upstream's paths with the server's key.
 */
function checkedPath(url: URL, raw: string): string {
  const rawPath = raw.replace(/^[a-z][a-z0-9+.-]*:\/\/[^/]*/i, "").split(/[?#]/, 1)[0];
  if (/(^|\/)(\.|%2e){1,2}(\/|$)|\\/i.test(rawPath)) {
    throw new SluiceError(
      400,
      "invalid_request_error",
      "the path holds a dot segment or a backslash; sluice does not forward it",
    );
  }
  // The API has nothing at `/v1/` itself, so nothing is sent.
  if (/^\/v1\/?$/.test(url.pathname)) {
    throw new SluiceError(404, "not_found_error", `no API endpoint at ${url.pathname}`);
  }
  if (/%(2f|5c|2e)/i.test(url.pathname)) {
    throw new SluiceError(
      400,
      "invalid_request_error",
      "the path holds an encoded slash, backslash or dot; sluice does not forward it",
    );
  }
  return url.pathname + url.search;
}

/** The caller's body: none, bytes when small enough to retry, else the stream itself. */
async function requestBody(
  request: Request,
): Promise<Uint8Array | ReadableStream<Uint8Array> | null> {
  if (!request.body || request.method === "GET" || request.method === "DELETE") return null;
  const length = Number(request.headers.get("content-length") ?? NaN);
  if (Number.isFinite(length) && length <= BUFFER_BYTES) {
    return new Uint8Array(await readOrRefuse(request.arrayBuffer()));
  }
  return request.body;
}

/** The API's endpoints, as stats labels: ids become `:id`, so the label set stays small. */
const ENDPOINTS: [RegExp, string][] = [
  [/^\/v1\/messages\/count_tokens$/, "/v1/messages/count_tokens"],
  [/^\/v1\/messages\/batches$/, "/v1/messages/batches"],
  [/^\/v1\/messages\/batches\/[^/]+$/, "/v1/messages/batches/:id"],
  [/^\/v1\/messages\/batches\/[^/]+\/cancel$/, "/v1/messages/batches/:id/cancel"],
  [/^\/v1\/messages\/batches\/[^/]+\/results$/, "/v1/messages/batches/:id/results"],
  [/^\/v1\/models$/, "/v1/models"],
  [/^\/v1\/models\/[^/]+$/, "/v1/models/:id"],
  [/^\/v1\/files$/, "/v1/files"],
  [/^\/v1\/files\/[^/]+$/, "/v1/files/:id"],
  [/^\/v1\/files\/[^/]+\/content$/, "/v1/files/:id/content"],
];

/**
 * The stats label of a forwarded call: `METHOD:template`, e.g. `GET:/v1/models/:id`; a path the
 * list does not know is `METHOD:/v1/other` (it is still forwarded; only its label is grouped).
 */
export function endpointLabel(method: string, pathname: string): string {
  const template = ENDPOINTS.find(([pattern]) => pattern.test(pathname))?.[1] ?? "/v1/other";
  return `${method.toUpperCase()}:${template}`;
}

/**
 * `body` with every batch's `results_url` on `upstreamBase` moved to `origin` (sluice), for a
 * batch or a page of batches; any other body is returned as it is, byte for byte.
 */
export function pointResultsAtSluice(
  body: Uint8Array<ArrayBuffer>,
  upstreamBase: string,
  origin: string,
): Uint8Array<ArrayBuffer> {
  const text = new TextDecoder().decode(body);
  if (!text.includes('"results_url"')) return body;
  const from = upstreamBase.replace(/\/+$/, "") + "/";
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    return body;
  }
  const batches = Array.isArray(json?.data) ? json.data : [json];
  let changed = false;
  for (const batch of batches) {
    const results = batch?.results_url;
    if (typeof results === "string" && results.startsWith(from)) {
      batch.results_url = origin + "/" + results.slice(from.length);
      changed = true;
    }
  }
  return changed ? new TextEncoder().encode(JSON.stringify(json)) : body;
}
