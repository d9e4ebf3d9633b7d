/**
 * `/conversations`: create, list, read and delete the histories `/chat` keeps. Each is visible
 * only to the gateway key that made it (another key gets the same 404 as for a missing one).
 */
import { Hono } from "hono";
import { z } from "zod";
import type { AppEnv, RouteDeps } from "../lib/app_env.ts";
import { parseJsonObject } from "../lib/chat/request.ts";
import {
  conversationJson,
  ConversationQuotaError,
  conversationStoreFor,
  conversationSummaryJson,
  ConversationTooLargeError,
  InvalidCursorError,
} from "../lib/chat/conversations.ts";
import { SluiceError } from "../lib/errors.ts";
import { kvUnavailable } from "../lib/kv.ts";
import { describeIssues } from "../lib/http/validate.ts";
import { requestText } from "../lib/http/request_body.ts";

/** `POST /conversations` body: optional defaults for every `/chat` on the conversation. */
const createBody = z.strictObject({
  system: z.string().optional(),
  model: z.string().min(1).optional(),
});

/** `GET /conversations` query: a page size and the cursor of an earlier page. */
const listQuery = z.strictObject({
  limit: z.coerce.number().int().min(1).max(100).default(20),
  cursor: z.string().min(1).max(1000).optional(),
});

/**
 * Mounts `POST /conversations`, `GET /conversations` (the caller's, paged),
 * `GET /conversations/:id` and `DELETE /conversations/:id`.
 */
export function conversationsRoute(deps: RouteDeps): Hono<AppEnv> {
  const store = conversationStoreFor(deps);
  const need = () => {
    if (!store) throw kvUnavailable("conversations", deps.kvFault);
    return store;
  };
  const notFound = (id: string) =>
    new SluiceError(404, "not_found_error", `conversation ${JSON.stringify(id)} not found`);

  const app = new Hono<AppEnv>();
  app.post("/conversations", async (c) => {
    // Read as JSON whatever the content type, like /chat; an empty body is `{}`.
    const value = parseJsonObject(await requestText(c), '{"system":"Answer briefly."}', {
      emptyIsObject: true,
    });
    const parsed = createBody.safeParse(value);
    if (!parsed.success) {
      throw new SluiceError(400, "invalid_request_error", describeIssues(parsed.error.issues));
    }
    try {
      const conversation = await need().create(c.get("keyId"), parsed.data);
      c.header("location", `/conversations/${conversation.id}`);
      return c.json(conversationJson(conversation), 201);
    } catch (error) {
      if (error instanceof ConversationTooLargeError) {
        throw new SluiceError(413, "request_too_large", error.message);
      }
      // The key's budget: a count is a permission matter (deleting one helps, waiting does not
      // until one expires); bytes are a size matter, like the bound of one conversation.
      if (error instanceof ConversationQuotaError) {
        throw error.kind === "bytes"
          ? new SluiceError(413, "request_too_large", error.message)
          : new SluiceError(403, "permission_error", error.message);
      }
      throw error;
    }
  });
  app.get("/conversations", async (c) => {
    const parsed = listQuery.safeParse(c.req.query());
    if (!parsed.success) {
      throw new SluiceError(
        400,
        "invalid_request_error",
        describeIssues(parsed.error.issues, "query"),
      );
    }
    try {
      const page = await need().list(c.get("keyId"), parsed.data);
      return c.json({
        data: page.conversations.map(conversationSummaryJson),
        has_more: page.nextCursor !== null,
        next_cursor: page.nextCursor,
      });
    } catch (error) {
      if (error instanceof InvalidCursorError) {
        throw new SluiceError(400, "invalid_request_error", `cursor: ${error.message}`);
      }
      throw error;
    }
  });
  app.get("/conversations/:id", async (c) => {
    const id = c.req.param("id");
    const conversation = await need().get(c.get("keyId"), id);
    if (!conversation) throw notFound(id);
    return c.json(conversationJson(conversation));
  });
  app.delete("/conversations/:id", async (c) => {
    const id = c.req.param("id");
    if (!(await need().delete(c.get("keyId"), id))) throw notFound(id);
    return c.body(null, 204);
  });
  return app;
}
