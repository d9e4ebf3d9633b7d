/**
 * Forwards a Messages API call that is not a message (`count_tokens`, `models`): the caller's
 * bytes go upstream through the same SDK client, the whole JSON answer comes back with its
 * status and the headers a client acts on. No accumulator and no stats: these calls produce no
 * tokens and no time to first token.
 */
import { errorBody } from "./errors.ts";
import { PASS_HEADERS } from "./messages_call.ts";
import { readBody, UpstreamIdleError } from "./sse.ts";
import type { Upstream, UpstreamRequest } from "./upstream.ts";

/** Sends `request` upstream and returns the upstream's answer for the client. */
export async function forwardJson(
  upstream: Upstream,
  request: Omit<UpstreamRequest, "stream">,
): Promise<Response> {
  const { response } = await upstream.send({ ...request, stream: false });
  const headers = new Headers({ "content-type": "application/json" });
  response.headers.forEach((value, key) => {
    if (PASS_HEADERS.test(key)) headers.set(key, value);
  });
  try {
    const body = await readBody(response.body, upstream.streamPolicy.idleTimeoutMs);
    return new Response(body, { status: response.status, headers });
  } catch (error) {
    // The headers came but the body did not: a clear 5xx in Anthropic's shape.
    const idle = error instanceof UpstreamIdleError;
    const body = errorBody(
      idle ? "timeout_error" : "api_error",
      idle
        ? `the upstream sent nothing for ${error.idleMs} ms while sending its answer`
        : "the upstream connection dropped before the whole answer arrived",
      response.headers.get("request-id") ?? undefined,
    );
    return Response.json(body, { status: idle ? 504 : 502, headers });
  }
}
