/**
 * Replay: recorded streams served as if they came from the API. This is sluice's embedded
 * default upstream (no `ANTHROPIC_API_KEY` needed) and the tests' network-free upstream.
 *
 * `createReplayFetch` returns a `fetch` that answers `POST /v1/messages` from a fixture set. It is
 * injected into the same SDK client live mode uses, so replay exercises the same code path. It
 * also answers `GET /v1/models` (the manifest's `models`), `POST /v1/messages/count_tokens`
 * (an estimate: see {@link estimateInputTokens}) and `GET /v1/replay/fixtures` (what there is and
 * how to ask for it: see {@link describeFixtures}).
 *
 * The rest of replay lives beside it: fixtures.ts (the set and its files), select.ts (which
 * fixture answers), rewrite.ts (max_tokens cut, model echo), synthesize.ts (answers to tool
 * results), pace.ts (timing and the paced body), body.ts (reading the request).
 */
import { EventAccumulator } from "../stream/accumulator.ts";
import { errorBody, statusForErrorType } from "../errors.ts";
import { createSseDecoder } from "../stream/sse.ts";
import { isObject } from "./body.ts";
import type { Fixture, FixtureSet, ModelInfo } from "./fixtures.ts";
import { describeFixtures } from "./fixtures.ts";
import type { Pace } from "./pace.ts";
import { abortableSleep, pacedStream, schedule } from "./pace.ts";
import { endsInsideEvent, rewriteModel, truncateAtMaxTokens, withModel } from "./rewrite.ts";
import { selectFixture, SELECTION_RULES } from "./select.ts";
import { synthesizeStream, toolResultAnswer } from "./synthesize.ts";
import { chatCompletionsReplay } from "../openai/replay.ts";

const encoder = new TextEncoder();

/** Options for {@link createReplayFetch}. */
export interface ReplayOptions {
  pace: Pace;
  /** Waits `ms` or until `signal` aborts; injectable for tests. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

/** Creates the replay `fetch`: answers `POST …/v1/messages` from `set`. */
export function createReplayFetch(set: FixtureSet, options: ReplayOptions): typeof fetch {
  const sleep = options.sleep ?? abortableSleep;
  let counter = 0;
  return async (input, init) => {
    const request = new Request(input, init);
    const url = new URL(request.url);
    const requestId = () => `req_replay_${(++counter).toString(36).padStart(6, "0")}`;
    if (request.method === "GET" && url.pathname.startsWith("/v1/models")) {
      return modelsAnswer(set.models, url, requestId());
    }
    if (request.method === "POST" && url.pathname.endsWith("/v1/chat/completions")) {
      return chatCompletionsReplay(request, {
        messages: createReplayFetch(set, options),
        requestId: requestId(),
      });
    }
    if (request.method === "GET" && url.pathname === "/v1/replay/fixtures") {
      return json(200, { selection: SELECTION_RULES, fixtures: describeFixtures(set) }, {
        "request-id": requestId(),
      });
    }
    if (request.method === "POST" && url.pathname.endsWith("/v1/messages/count_tokens")) {
      try {
        const input_tokens = estimateInputTokens(await request.json());
        return json(200, { input_tokens }, { "request-id": requestId() });
      } catch {
        return replayError(
          400,
          "invalid_request_error",
          "request body is not valid JSON",
          requestId(),
        );
      }
    }
    if (request.method !== "POST" || !url.pathname.endsWith("/v1/messages")) {
      return replayError(
        404,
        "not_found_error",
        "replay serves POST /v1/messages, POST /v1/messages/count_tokens, " +
          "POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id} " +
          "and GET /v1/replay/fixtures",
        requestId(),
      );
    }
    return await messagesAnswer(
      request,
      requestId(),
      set,
      options.pace,
      sleep,
      init?.signal ?? undefined,
    );
  };
}

/** `POST /v1/messages`: the selected fixture, cut, renamed and paced as the request asks. */
async function messagesAnswer(
  request: Request,
  requestId: string,
  set: FixtureSet,
  pace: Pace,
  sleep: (ms: number, signal?: AbortSignal) => Promise<void>,
  signal: AbortSignal | undefined,
): Promise<Response> {
  let body: Record<string, unknown>;
  try {
    body = await request.json();
  } catch {
    return replayError(400, "invalid_request_error", "request body is not valid JSON", requestId);
  }
  if (!isObject(body)) {
    return replayError(
      400,
      "invalid_request_error",
      "the request body must be a JSON object",
      requestId,
    );
  }
  const selection = selectFixture(set, body, request.headers.get("x-sluice-fixture"));
  const id = requestId;
  if (selection.kind === "missing") {
    const names = [...set.fixtures.keys()].sort().join(", ");
    return replayError(
      404,
      "not_found_error",
      `no fixture named "${selection.name}"; have: ${names}`,
      id,
    );
  }
  const model = typeof body.model === "string" && body.model !== "" ? body.model : undefined;
  let served: Fixture;
  if (selection.kind === "tool-result") {
    served = {
      name: "tool-result",
      sse: synthesizeStream({
        id: `msg_replay_${id.slice("req_replay_".length)}`,
        model: model ?? "claude-replay",
        text: toolResultAnswer(body),
        inputTokens: estimateInputTokens(body),
      }),
    };
  } else {
    served = selection.fixture;
    if (served.http) {
      return json(served.http.status, served.http.body, {
        ...served.http.headers,
        "request-id": served.http.headers["request-id"] ?? id,
      });
    }
  }
  // A fixture asked for by name is served as recorded; any other answer keeps to the
  // request's max_tokens as the API would.
  if (selection.kind !== "named" && served.sse && typeof body.max_tokens === "number") {
    const cut = truncateAtMaxTokens(served.sse, body.max_tokens);
    if (cut) served = { name: served.name, sse: cut };
  }
  // The answer names the model that was asked for (stats by model show what callers use).
  if (model) served = withModel(served, model);
  const chunks = schedule(served, pace);
  const headers = { "request-id": id, "x-sluice-fixture": served.name };
  if (body.stream === true) {
    const cut = endsInsideEvent(served.sse ?? new Uint8Array());
    return new Response(pacedStream(chunks, sleep, signal, cut), {
      headers: { ...headers, "content-type": "text/event-stream; charset=utf-8" },
    });
  }
  // Non-streaming waits as long as the whole stream would have taken: that is the point the
  // tutorial makes about time to first token.
  await sleep(chunks.at(-1)?.atMs ?? 0, signal);
  return nonStreamingAnswer(served, headers, model);
}

/** `GET /v1/models` (paged with `limit`, `after_id`, `before_id`) and `GET /v1/models/{id}`. */
function modelsAnswer(models: ModelInfo[], url: URL, requestId: string): Response {
  const headers = { "request-id": requestId };
  const raw = url.pathname.slice("/v1/models".length).replace(/^\//, "");
  if (raw) {
    let id = raw;
    try {
      id = decodeURIComponent(raw);
    } catch {
      // Malformed percent-encoding names no model: the same 404 as any unknown id.
    }
    const model = models.find((m) => m.id === id);
    return model
      ? json(200, model, headers)
      : replayError(404, "not_found_error", `model: ${id}`, requestId);
  }
  const limitText = url.searchParams.get("limit") ?? "20";
  const limit = Number(limitText);
  if (!/^\d+$/.test(limitText) || limit < 1 || limit > 1000) {
    return replayError(
      400,
      "invalid_request_error",
      "limit: expected an integer from 1 to 1000",
      requestId,
    );
  }
  const after = url.searchParams.get("after_id");
  const before = url.searchParams.get("before_id");
  let start = 0;
  let end = models.length;
  if (after !== null) start = models.findIndex((m) => m.id === after) + 1;
  if (before !== null) end = Math.max(0, models.findIndex((m) => m.id === before));
  const page = before !== null && after === null
    ? models.slice(Math.max(start, end - limit), end)
    : models.slice(start, Math.min(end, start + limit));
  return json(200, {
    data: page,
    has_more: before !== null && after === null ? end - limit > start : start + limit < end,
    first_id: page[0]?.id ?? null,
    last_id: page.at(-1)?.id ?? null,
  }, headers);
}

/**
 * Replay's answer to `count_tokens`: about one token per four characters of the request's
 * system prompt, messages and tools as JSON (at least 1). Replay has no tokenizer; the figure
 * only has to be plausible, and it grows with the request as the real one does.
 */
export function estimateInputTokens(body: unknown): number {
  const request = (body && typeof body === "object" ? body : {}) as Record<string, unknown>;
  const text = JSON.stringify([request.system ?? "", request.messages ?? [], request.tools ?? []]);
  return Math.max(1, Math.ceil(text.length / 4));
}

function nonStreamingAnswer(
  fixture: Fixture,
  headers: Record<string, string>,
  model: string | undefined,
): Response {
  if (fixture.json) {
    const bytes = encoder.encode(fixture.json);
    const body = (model ? rewriteModel(bytes, model)?.bytes : undefined) ?? bytes;
    return new Response(body as BodyInit, {
      headers: { ...headers, "content-type": "application/json" },
    });
  }
  const accumulator = new EventAccumulator();
  const decoder = createSseDecoder((event) => accumulator.push(event));
  decoder.feed(fixture.sse ?? new Uint8Array());
  decoder.end();
  const result = accumulator.end();
  if (result.error) {
    // The recorded stream's error event, as the API answers it without streaming.
    return json(
      statusForErrorType(result.error.type),
      errorBody(result.error.type, result.error.message, headers["request-id"]),
      headers,
    );
  }
  if (!result.complete || !result.message) {
    // A recording that breaks off: what sluice answers when an upstream body breaks off (see
    // unreadBody in lib/proxy/call_parts.ts), never a 500.
    return json(
      502,
      errorBody(
        "api_error",
        "the upstream connection dropped before the whole answer arrived",
        headers["request-id"],
      ),
      headers,
    );
  }
  return json(200, result.message, headers);
}
/** An error replay makes itself, in the API's shape: its body and header name the request. */
function replayError(status: number, type: string, message: string, requestId: string): Response {
  return json(status, errorBody(type, message, requestId), { "request-id": requestId });
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { ...headers, "content-type": "application/json" },
  });
}
