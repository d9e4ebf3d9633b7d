/**
 * Loopback-only serving: in live mode without gateway keys, sluice would let anyone who can
 * reach it spend the server's Anthropic key, so it answers only callers on the same machine.
 */
import type { MiddlewareHandler } from "hono";
import { SluiceError } from "../errors.ts";

/** Whether `hostname` is a loopback address (127.0.0.0/8, ::1, or IPv4-mapped 127.x). */
export function isLoopback(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  if (host === "::1" || host === "0:0:0:0:0:0:0:1") return true;
  const v4 = host.startsWith("::ffff:") ? host.slice(7) : host;
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(v4);
}

/**
 * Refuses (403 `permission_error`) callers whose address is not loopback. The address comes
 * from `Deno.serve`'s handler info, which Hono passes as `c.env` (`app.fetch(req, info)`).
 * Read directly rather than with `hono/deno`'s `getConnInfo`, which is deprecated and throws
 * when there is no connection info. Without info (in-process `app.request`, which only code
 * in this process can call) or on a Unix socket, the caller is local by construction.
 */
export function loopbackOnly(): MiddlewareHandler {
  return async (c, next) => {
    const addr = (c.env as { remoteAddr?: Deno.Addr } | undefined)?.remoteAddr;
    if (addr && (addr.transport === "tcp" || addr.transport === "udp")) {
      if (!isLoopback(addr.hostname)) {
        throw new SluiceError(
          403,
          "permission_error",
          "this sluice runs in live mode without SLUICE_API_KEYS and answers only callers on " +
            "its own machine; its operator must set SLUICE_API_KEYS to serve others",
        );
      }
    }
    await next();
  };
}
