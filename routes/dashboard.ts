/**
 * `GET /dashboard`: charts of what `/stats` and `/metrics` hold (lib/dashboard/). The page itself
 * is public and holds nothing; the figures it draws come from `/stats` and `/metrics`, which need
 * the admin key (the page asks for it and keeps it in sessionStorage).
 */
import { Hono } from "hono";
import { etag } from "hono/etag";
import type { AppEnv } from "../lib/app_env.ts";
import type { DashboardAssetName } from "../lib/dashboard/assets.ts";
import { dashboardAsset, dashboardAssetNames } from "../lib/dashboard/assets.ts";

/** Scripts, styles and requests from this origin only; no framing. */
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

/** Mounts `GET /dashboard` and `GET /dashboard/<asset>`. */
export function dashboardRoute(): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.use("/dashboard", etag());
  app.use("/dashboard/*", etag());
  const serve = async (name: DashboardAssetName) => {
    const asset = await dashboardAsset(name);
    return new Response(asset.body, {
      headers: {
        "content-type": asset.contentType,
        "cache-control": "no-cache",
        "content-security-policy": CONTENT_SECURITY_POLICY,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
      },
    });
  };
  app.get("/dashboard", () => serve("index.html"));
  for (const name of dashboardAssetNames) {
    if (name !== "index.html") app.get(`/dashboard/${name}`, () => serve(name));
  }
  return app;
}
