/**
 * The start-up check of the default model in live mode: `/chat` sends `SLUICE_DEFAULT_MODEL`
 * when a caller names none, and a model past its end of life would fail every such request. One
 * `GET /v1/models` at start-up says whether the API still serves it; sluice warns if not (it
 * does not refuse to start: the API may be unreachable for a moment, and `/v1/*` needs no
 * default).
 */
import type { Logger } from "../log.ts";
import type { Upstream } from "./upstream.ts";

/** What the check found. */
export type ModelCheck =
  | { status: "available"; id: string }
  | { status: "missing"; models: string[] }
  | { status: "unknown"; reason: string };

/**
 * Whether `model` is in the upstream's model list, by id or as an alias of a dated id
 * (`claude-sonnet-5-5` names `claude-sonnet-5-5-20261101`). Logs a warning unless available.
 */
export async function checkDefaultModel(
  upstream: Upstream,
  model: string,
  logger: Logger,
): Promise<ModelCheck> {
  const check = await listModels(upstream).then(
    (ids): ModelCheck => {
      const id = ids.find((id) => id === model || id.startsWith(`${model}-`));
      return id ? { status: "available", id } : { status: "missing", models: ids };
    },
    (error): ModelCheck => ({ status: "unknown", reason: String(error?.message ?? error) }),
  );
  if (check.status === "missing") {
    logger.warn(
      `SLUICE_DEFAULT_MODEL ${model} is not in the API's model list; /chat requests that name ` +
        `no model will fail. Available: ${check.models.slice(0, 8).join(", ")}`,
    );
  } else if (check.status === "unknown") {
    logger.warn(`could not check SLUICE_DEFAULT_MODEL ${model} against GET /v1/models`, {
      reason: check.reason,
    });
  }
  return check;
}

/** Every model id the upstream lists, following its pages. */
async function listModels(upstream: Upstream): Promise<string[]> {
  const ids: string[] = [];
  let after: string | null = null;
  for (let page = 0; page < 20; page++) {
    const query: string = after ? `&after_id=${encodeURIComponent(after)}` : "";
    const { response } = await upstream.send({
      method: "GET",
      path: `/v1/models?limit=1000${query}`,
      body: null,
      stream: false,
    });
    if (!response.ok) {
      await response.body?.cancel();
      throw new Error(`GET /v1/models answered ${response.status}`);
    }
    const body = await response.json() as { data?: { id?: unknown }[]; has_more?: boolean };
    for (const model of body.data ?? []) if (typeof model.id === "string") ids.push(model.id);
    if (!body.has_more || ids.length === 0) break;
    after = ids.at(-1)!;
  }
  return ids;
}
