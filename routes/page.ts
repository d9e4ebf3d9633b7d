/**
 * The chat page at `/`: static files from lib/page/, served by sluice itself (no build step, no
 * external network). The page is public, like any login page: it holds no data and no secret.
 * Its API calls carry the gateway key the user types, which the page keeps in localStorage.
 */
import { Hono } from "hono";
import { etag } from "hono/etag";
import type { AppEnv } from "../lib/app_env.ts";
import { pageAsset, pageAssetNames } from "../lib/page/assets.ts";

/**
 * The page talks only to sluice: scripts, styles and requests from this origin, nothing inline
 * but the favicon (a data: URL), no framing.
 */
const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

/** Mounts `GET /` and `GET /page/<asset>`. */
export function pageRoute(): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.use("/", etag());
  app.use("/page/*", etag());
  const serve = async (name: (typeof pageAssetNames)[number]) => {
    const asset = await pageAsset(name);
    return new Response(asset.body, {
      headers: {
        "content-type": asset.contentType,
        // Revalidate every time (the ETag makes it cheap), so an upgrade is seen at once.
        "cache-control": "no-cache",
        "content-security-policy": CONTENT_SECURITY_POLICY,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
      },
    });
  };
  app.get("/", () => serve("index.html"));
  for (const name of pageAssetNames) {
    if (name !== "index.html") app.get(`/page/${name}`, () => serve(name));
  }
  return app;
}
