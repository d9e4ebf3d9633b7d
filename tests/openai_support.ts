/**
 * The `openai` SDK's client for tests that reach sluice (or a fake upstream) over loopback.
 */
import OpenAI from "openai";
import { ownConnections } from "./helpers.ts";

/**
 * An OpenAI client for `url` whose connections are never pooled. The SDK stops reading a stream
 * at `data: [DONE]`, before the body's end; under Deno 2.5 a pooled connection left so keeps
 * `Deno.serve`'s shutdown waiting for ~90 s. `close()` releases the HTTP client.
 */
export function openaiClient(
  url: string,
  apiKey: string,
): { client: OpenAI; close(): void } {
  const http = ownConnections({ poolMaxIdlePerHost: 0 });
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey, maxRetries: 0, fetch: http.fetch });
  return { client, close: http.close };
}
