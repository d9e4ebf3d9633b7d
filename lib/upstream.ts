/**
 * The upstream: one `POST /v1/messages` to Anthropic through the official SDK's client, which
 * brings base URL handling, authentication headers, timeouts and retries with backoff that honours
 * `retry-after`. The raw `Response` is kept (`asResponse()`), so stream bytes and JSON bodies
 * pass through untouched.
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
import { errorBody } from "./errors.ts";

/** One request to the upstream. */
export interface UpstreamRequest {
  /** The caller's JSON body, byte for byte. */
  body: Uint8Array;
  stream: boolean;
  /** Forwarded verbatim when present. */
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
}

/** The upstream's answer: a raw response (success or HTTP error) and how many retries it took. */
export interface UpstreamResult {
  response: Response;
  retries: number;
}

/** Sends Messages requests upstream. */
export interface Upstream {
  readonly mode: "live" | "replay";
  send(request: UpstreamRequest): Promise<UpstreamResult>;
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
  /** Time limit for an attempt to get response headers, in ms. */
  timeoutMs?: number;
}

/** Response headers an SDK client acts on; kept when an upstream error is passed back. */
const ERROR_HEADERS =
  /^(request-id|retry-after|retry-after-ms|x-should-retry|anthropic-ratelimit-.*|anthropic-organization-id|anthropic-workspace-id)$/i;

/** Creates the upstream client. */
export function createUpstream(options: UpstreamOptions): Upstream {
  const baseFetch = options.fetch ?? globalThis.fetch;
  // The SDK numbers its attempts in `x-stainless-retry-count`; remember it per response so the
  // route can report retries. Keyed by the Headers object, which APIError also carries.
  const attempts = new WeakMap<Headers, number>();
  const countingFetch: typeof fetch = async (input, init) => {
    const response = await baseFetch(input, init);
    const retry = new Headers(init?.headers).get("x-stainless-retry-count");
    attempts.set(response.headers, Number(retry ?? 0) || 0);
    return response;
  };
  const client = new Anthropic({
    apiKey: options.apiKey,
    baseURL: options.baseURL,
    fetch: countingFetch,
    maxRetries: options.maxRetries ?? 2,
    timeout: options.timeoutMs ?? 600_000,
    logLevel: "off",
  });

  return {
    mode: options.mode,
    async send(request) {
      const headers: Record<string, string | null> = { "content-type": "application/json" };
      if (request.anthropicVersion) headers["anthropic-version"] = request.anthropicVersion;
      if (request.anthropicBeta) headers["anthropic-beta"] = request.anthropicBeta;
      if (options.mode === "replay" && request.fixture) {
        headers["x-sluice-fixture"] = request.fixture;
      }
      if (request.authStyle === "x-api-key") {
        headers["x-api-key"] = options.apiKey;
        headers["authorization"] = null;
      }
      try {
        const response = await client.post("/v1/messages", {
          body: request.body,
          stream: request.stream,
          headers,
          signal: request.signal,
        }).asResponse();
        return { response, retries: attempts.get(response.headers) ?? 0 };
      } catch (error) {
        if (error instanceof APIUserAbortError) throw error;
        const failed = upstreamFailure(error);
        if (!failed) throw error;
        return failed(attempts);
      }
    },
  };
}

/** Turns an SDK error into the response the client should get, or undefined to rethrow. */
function upstreamFailure(
  error: unknown,
): ((attempts: WeakMap<Headers, number>) => UpstreamResult) | undefined {
  if (error instanceof APIConnectionTimeoutError) {
    return () => ({
      response: jsonResponse(
        504,
        errorBody("timeout_error", "the upstream API did not answer in time"),
      ),
      retries: 0,
    });
  }
  if (error instanceof APIConnectionError) {
    return () => ({
      response: jsonResponse(502, errorBody("api_error", "could not connect to the upstream API")),
      retries: 0,
    });
  }
  if (error instanceof APIError && typeof error.status === "number") {
    return (attempts) => {
      const headers = new Headers();
      const upstreamHeaders = error.headers as Headers | undefined;
      upstreamHeaders?.forEach((value: string, key: string) => {
        if (ERROR_HEADERS.test(key)) headers.set(key, value);
      });
      // The SDK parsed the body; a non-JSON body (an HTML page from a proxy) becomes one.
      const body = error.error && typeof error.error === "object" ? error.error : errorBody(
        `${error.status >= 500 ? "api_error" : "invalid_request_error"}`,
        `upstream answered ${error.status} without a JSON error body`,
      );
      return {
        response: jsonResponse(error.status as number, body, headers),
        retries: upstreamHeaders ? attempts.get(upstreamHeaders) ?? 0 : 0,
      };
    };
  }
  return undefined;
}

function jsonResponse(status: number, body: unknown, headers = new Headers()): Response {
  headers.set("content-type", "application/json");
  return new Response(JSON.stringify(body), { status, headers });
}
