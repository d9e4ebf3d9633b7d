/**
 * Errors at sluice's edge, and the one place they become HTTP responses.
 *
 * Every error a client sees has Anthropic's shape, so the official SDKs raise their usual error
 * classes against sluice: `{"type":"error","error":{"type":"…","message":"…"},"request_id":"…"}`.
 */

/** The `error.type` values Anthropic documents (and the SDKs map to classes). */
export type AnthropicErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "permission_error"
  | "not_found_error"
  | "request_too_large"
  | "rate_limit_error"
  | "api_error"
  | "overloaded_error"
  | "timeout_error";

/** The JSON body of an error response. */
export interface AnthropicErrorBody {
  type: "error";
  error: { type: string; message: string };
  request_id?: string;
}

/** An error that sluice raises on purpose; `status` and `type` say how it reaches the client. */
export class SluiceError extends Error {
  readonly status: number;
  readonly type: AnthropicErrorType;
  readonly headers: Record<string, string>;

  constructor(
    status: number,
    type: AnthropicErrorType,
    message: string,
    headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "SluiceError";
    this.status = status;
    this.type = type;
    this.headers = headers;
  }
}

/** The HTTP status the API gives a request that fails with an error of `type`. */
export function statusForErrorType(type: string): number {
  const statuses: Record<string, number> = {
    invalid_request_error: 400,
    authentication_error: 401,
    permission_error: 403,
    not_found_error: 404,
    request_too_large: 413,
    rate_limit_error: 429,
    api_error: 500,
    timeout_error: 504,
    overloaded_error: 529,
  };
  return statuses[type] ?? 500;
}

/** The error type Anthropic uses for an HTTP status, for errors sluice makes itself. */
export function errorTypeForStatus(status: number): AnthropicErrorType {
  switch (status) {
    case 401:
      return "authentication_error";
    case 403:
      return "permission_error";
    case 404:
    case 405:
      return "not_found_error";
    case 408:
    case 504:
      return "timeout_error";
    case 413:
      return "request_too_large";
    case 429:
      return "rate_limit_error";
    case 529:
      return "overloaded_error";
    default:
      return status >= 500 ? "api_error" : "invalid_request_error";
  }
}

/** Builds the body of an error response. */
export function errorBody(type: string, message: string, requestId?: string): AnthropicErrorBody {
  const body: AnthropicErrorBody = { type: "error", error: { type, message } };
  if (requestId) body.request_id = requestId;
  return body;
}

/** Where an error response goes besides its body: its request id and extra headers. */
export interface ErrorResponseOptions {
  requestId?: string;
  headers?: HeadersInit;
}

/**
 * A JSON error response with a ready-made error `body` (Anthropic's shape, OpenAI's, or an
 * upstream's own), labelled and carrying the request id.
 */
export function errorBodyResponse(
  status: number,
  body: unknown,
  options: ErrorResponseOptions,
): Response {
  const headers = new Headers(options.headers);
  headers.set("content-type", "application/json");
  if (options.requestId) headers.set("request-id", options.requestId);
  return new Response(JSON.stringify(body), { status, headers });
}

/** Builds an error response in Anthropic's shape. */
export function errorResponse(
  status: number,
  type: string,
  message: string,
  options: ErrorResponseOptions = {},
): Response {
  return errorBodyResponse(status, errorBody(type, message, options.requestId), options);
}

/**
 * A whole HTTP/1.1 error response as bytes, for the connection guard, which answers on a raw
 * socket before (or instead of) any request reaching the app: the API's error shape, JSON, and
 * `connection: close` (the guard closes the connection after it).
 */
export function rawErrorResponse(
  status: number,
  reason: string,
  type: AnthropicErrorType,
  message: string,
): Uint8Array {
  const body = new TextEncoder().encode(JSON.stringify(errorBody(type, message)));
  const head = `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\n` +
    `content-length: ${body.length}\r\nconnection: close\r\n\r\n`;
  const encodedHead = new TextEncoder().encode(head);
  const bytes = new Uint8Array(encodedHead.length + body.length);
  bytes.set(encodedHead);
  bytes.set(body, encodedHead.length);
  return bytes;
}

/** Formats one SSE `error` event, as the API sends it mid-stream. */
export function sseErrorEvent(type: string, message: string): string {
  return `event: error\ndata: ${JSON.stringify({ type: "error", error: { type, message } })}\n\n`;
}

/**
 * The reason sluice gives when it ends a running stream itself because it is shutting down:
 * the stream is then recorded as `incomplete`, not as the client's abort.
 */
export class ServerShutdownError extends Error {
  constructor(message = "sluice is shutting down") {
    super(message);
    this.name = "ServerShutdownError";
  }
}

/**
 * The refusal for a request still waiting for its answer when graceful shutdown's grace period
 * ends (for upstream headers, a retry, a whole body): a 503, which the official SDKs retry, so a
 * client behind a load balancer lands on another instance.
 */
export function shutdownRefusal(): SluiceError {
  return new SluiceError(503, "api_error", "sluice is shutting down; retry the request");
}

/**
 * The JSON body of an error in OpenAI's shape, which OpenAI clients parse (`error.message`,
 * `error.type`, `error.code`, `error.param`). sluice answers `/v1/chat/completions` with it.
 */
export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** Builds the body of an error in OpenAI's shape; `type` keeps Anthropic's names. */
export function openaiErrorBody(type: string, message: string): OpenAIErrorBody {
  return { error: { message, type, param: null, code: null } };
}

/** Builds an error response in OpenAI's shape (see {@link openaiErrorBody}). */
export function openaiErrorResponse(
  status: number,
  type: string,
  message: string,
  options: ErrorResponseOptions = {},
): Response {
  return errorBodyResponse(status, openaiErrorBody(type, message), options);
}

/** Formats one mid-stream error as OpenAI streams carry it: a `data:` line with `error`. */
export function openaiSseError(type: string, message: string): string {
  return `data: ${JSON.stringify(openaiErrorBody(type, message))}\n\n`;
}
