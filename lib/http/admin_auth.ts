/**
 * Access to the stats endpoints. They show figures about every caller, so once sluice has
 * gateway keys (or an admin key) they need `SLUICE_ADMIN_KEY`, not a gateway key. With neither
 * configured (a local sluice) they are open, like the rest of sluice.
 */
import type { MiddlewareHandler } from "hono";
import { timingSafeEqual } from "hono/utils/buffer";
import { callerKey } from "./auth.ts";
import type { Config } from "../config.ts";
import { SluiceError } from "../errors.ts";

/** Requires the admin key when `config` has gateway keys or an admin key. */
export function adminAuth(config: Pick<Config, "apiKeys" | "adminKey">): MiddlewareHandler {
  const protectedStats = config.apiKeys.length > 0 || !!config.adminKey;
  return async (c, next) => {
    if (protectedStats) {
      if (!config.adminKey) {
        throw new SluiceError(
          403,
          "permission_error",
          "stats need an admin key: set SLUICE_ADMIN_KEY and send it in x-api-key or " +
            "Authorization: Bearer",
        );
      }
      const { key } = callerKey(c.req.raw.headers);
      if (!key) {
        throw new SluiceError(
          401,
          "authentication_error",
          "missing admin key: send SLUICE_ADMIN_KEY in x-api-key or Authorization: Bearer",
        );
      }
      // Constant-time comparison, so response times do not leak how much of the key matched.
      if (!(await timingSafeEqual(config.adminKey, key))) {
        throw new SluiceError(401, "authentication_error", "invalid admin key");
      }
    }
    await next();
  };
}
