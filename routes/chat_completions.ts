/**
 * `POST /v1/chat/completions`: for OpenAI-style clients (the `openai` SDKs and what is built on
 * them). Live, the body goes byte for byte to the Anthropic API's own OpenAI-compatible endpoint
 * with the server's key; replay answers it from the fixtures as `chat.completion(.chunk)`s (see
 * lib/openai_replay.ts). Streamed answers come back byte for byte while a tap reads the chunks
 * for stats.
 *
 * sluice reads only what it needs: the body must be a JSON object, `stream` (when present) a
 * boolean and `model` (when present) a string. Everything else is the upstream's to judge, and
 * its own 400 comes back unchanged. The errors sluice makes for this path have OpenAI's shape
 * (`{"error":{"message","type","param","code"}}`, see app.ts), which OpenAI clients parse.
 */
import { Hono } from "hono";
import { z } from "zod";
import type { AppEnv, RouteDeps } from "../lib/app_env.ts";
import { CHAT_COMPLETIONS_PATH, startChatCompletionsCall } from "../lib/openai/call.ts";
import { SluiceError } from "../lib/errors.ts";
import { callContext, respondWithCall, upstreamRequestOf } from "../lib/proxy/call_http.ts";
import { describeIssues } from "../lib/http/validate.ts";
import { requestBytes } from "../lib/http/request_body.ts";

/** The fields sluice reads; everything else passes through unread. */
const chatCompletionsBody = z.looseObject({
  model: z.string().optional(),
  stream: z.boolean().optional(),
});

/** Mounts `POST /v1/chat/completions`. */
export function chatCompletionsRoute(deps: RouteDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.post(CHAT_COMPLETIONS_PATH, async (c) => {
    const raw = await requestBytes(c);
    const body = readBody(raw);
    const call = await startChatCompletionsCall({
      ...callContext(deps, c),
      model: body.model ?? null,
      request: upstreamRequestOf(c, raw, body.stream === true),
    });
    return respondWithCall(deps, call);
  });
  return app;
}

/**
 * Parses the body for the fields sluice reads. Not Hono's JSON validator: that one also requires
 * a JSON content type, which sluice does not need to read the body (the upstream may judge it).
 */
function readBody(raw: Uint8Array): z.infer<typeof chatCompletionsBody> {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder().decode(raw));
  } catch (error) {
    const detail = error instanceof SyntaxError ? `: ${error.message}` : "";
    throw new SluiceError(400, "invalid_request_error", `request body is not valid JSON${detail}`);
  }
  const parsed = chatCompletionsBody.safeParse(value);
  if (!parsed.success) {
    throw new SluiceError(400, "invalid_request_error", describeIssues(parsed.error.issues));
  }
  return parsed.data;
}
