/**
 * Gateway authentication: callers present sluice's own keys (never Anthropic's), in either
 * header the official SDKs use: `x-api-key` (SDK 0.x) or `Authorization: Bearer` (SDK 1.x).
 */
import type { MiddlewareHandler } from "hono";
import { timingSafeEqual } from "hono/utils/buffer";
import { SluiceError } from "../errors.ts";

/** What the auth middleware leaves on the context. */
export interface AuthVariables {
  /** A short hash of the caller's key ("anonymous" when none), safe to store and show. */
  keyId: string;
  /** Which header the caller used, mirrored upstream. */
  authStyle: "bearer" | "x-api-key";
}

/** Reads the caller's key and which header carried it. */
export function callerKey(
  headers: Headers,
): { key: string | null; style: AuthVariables["authStyle"] } {
  const apiKey = headers.get("x-api-key");
  if (apiKey) return { key: apiKey.trim(), style: "x-api-key" };
  const authorization = headers.get("authorization");
  const match = authorization ? /^Bearer\s+(.+)$/i.exec(authorization.trim()) : null;
  return { key: match ? match[1].trim() : null, style: "bearer" };
}

// Recent key ids: hashing is an async crypto op that was about an eighth of a request's CPU time
// in the gateway benchmark's profile, and callers send the same key again and again. Bounded,
// because with no gateway keys configured any key is accepted.
const keyIds = new Map<string, string>();
const KEY_ID_CACHE_SIZE = 1024;

/** A short, stable, non-reversible id for a key. */
export async function keyIdOf(key: string): Promise<string> {
  const cached = keyIds.get(key);
  if (cached !== undefined) return cached;
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(key));
  const id = Array.from(new Uint8Array(digest).slice(0, 8), (b) => b.toString(16).padStart(2, "0"))
    .join("");
  if (keyIds.size >= KEY_ID_CACHE_SIZE) keyIds.clear();
  keyIds.set(key, id);
  return id;
}

/**
 * Checks the caller's key against `keys`. With no keys configured, any key (or none) is let
 * through and the caller is identified by the key it sent, if any.
 */
export function gatewayAuth(keys: string[]): MiddlewareHandler<{ Variables: AuthVariables }> {
  // Keys that passed the comparison once. Hono's `timingSafeEqual` hashes both strings (two
  // async SHA-256 digests per configured key), the largest cost of a request in production
  // configuration in the request bench's profile. A key seen valid before is known by a map
  // lookup, which tells nothing about how near a wrong key came to a right one; only wrong and
  // new keys pay the comparison. Bounded like the key-id cache.
  const accepted = new Set<string>();
  return async (c, next) => {
    const { key, style } = callerKey(c.req.raw.headers);
    if (keys.length > 0) {
      if (!key) {
        throw new SluiceError(
          401,
          "authentication_error",
          "missing API key: send sluice's gateway key in x-api-key or Authorization: Bearer",
        );
      }
      if (!accepted.has(key)) {
        let ok = false;
        // Compare against every key, so the time taken does not tell which one nearly matched.
        for (const candidate of keys) {
          if (await timingSafeEqual(candidate, key)) ok = true;
        }
        if (!ok) throw new SluiceError(401, "authentication_error", "invalid API key");
        if (accepted.size >= KEY_ID_CACHE_SIZE) accepted.clear();
        accepted.add(key);
      }
    }
    c.set("keyId", key ? keyIds.get(key) ?? await keyIdOf(key) : "anonymous");
    c.set("authStyle", style);
    await next();
  };
}
