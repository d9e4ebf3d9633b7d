/**
 * The upstream a configuration asks for: the live API, or the recorded fixtures (replay), with
 * the retry, timeout and stream settings from the environment. One place, so `main.ts` and the
 * gateway bench run exactly the same wiring.
 */
import type { Config } from "../config.ts";
import { loadFixtures } from "../replay/fixtures.ts";
import { createReplayFetch } from "../replay/replay.ts";
import { createUpstream, type Upstream } from "./upstream.ts";

/** Builds the upstream `config` describes (reads the fixtures folder in replay mode). */
export async function createUpstreamFromConfig(config: Config): Promise<Upstream> {
  const streamPolicy = {
    idleTimeoutMs: config.idleTimeoutMs,
    keepAliveMs: config.keepAliveMs,
    maxEventChars: config.maxSseEventChars,
  };
  if (config.upstream === "live") {
    return createUpstream({
      mode: "live",
      apiKey: config.anthropicApiKey!,
      baseURL: config.anthropicBaseUrl,
      maxRetries: config.maxRetries,
      retryMaxWaitMs: config.retryMaxWaitMs,
      timeoutMs: config.firstByteTimeoutMs,
      streamPolicy,
    });
  }
  return createUpstream({
    mode: "replay",
    apiKey: "replay",
    baseURL: "http://replay.sluice.invalid",
    fetch: createReplayFetch(await loadFixtures(config.fixturesDir), { pace: config.replay }),
    maxRetries: 0,
    streamPolicy,
  });
}
