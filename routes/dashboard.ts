/**
 * `GET /dashboard`: charts of what `/stats` and `/metrics` hold (lib/dashboard/). The page itself
 * is public and holds nothing; the figures it draws come from `/stats` and `/metrics`, which need
 * the admin key (the page asks for it and keeps it in sessionStorage).
 */
import type { Hono } from "hono";
import type { AppEnv } from "../lib/app_env.ts";
import { dashboardAsset, dashboardAssetNames } from "../lib/dashboard/assets.ts";
import { staticFilesRoute } from "../lib/http/static_files.ts";

/** Mounts `GET /dashboard` and `GET /dashboard/<asset>`. */
export function dashboardRoute(): Hono<AppEnv> {
  return staticFilesRoute({
    indexPath: "/dashboard",
    prefix: "/dashboard",
    names: dashboardAssetNames,
    read: dashboardAsset,
  });
}
