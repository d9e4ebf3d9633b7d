/**
 * Forwards a Messages API call that is not a message (`count_tokens`, `models`): the caller's
 * bytes go upstream through the same SDK client, the whole JSON answer comes back with its
 * status and the headers a client acts on. No accumulator and no stats: these calls produce no
 * tokens and no time to first token.
 */
import { PASS_HEADERS, unreadBody } from "./messages_call.ts";
import { readBody } from "./sse.ts";
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
    const { status, body } = unreadBody(error, response.headers.get("request-id") ?? undefined);
    return Response.json(body, { status, headers });
  }
}
