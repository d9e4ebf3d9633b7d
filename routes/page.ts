/**
 * The chat page at `/`: static files from lib/page/, served by sluice itself (no external
 * network). The page is public, like any login page: it holds no data and no secret. Its API
 * calls carry the gateway key the user types, which the page keeps in localStorage.
 */
import type { Hono } from "hono";
import type { AppEnv } from "../lib/app_env.ts";
import { staticFilesRoute } from "../lib/http/static_files.ts";
import { pageAsset, pageAssetNames } from "../lib/page/assets.ts";

/** Mounts `GET /` and `GET /page/<asset>`. */
export function pageRoute(): Hono<AppEnv> {
  return staticFilesRoute({
    indexPath: "/",
    prefix: "/page",
    names: pageAssetNames,
    read: pageAsset,
  });
}
