/**
 * The dashboard's files (this folder and vendor/, uPlot from npm:uplot), read once on first use
 * and kept in memory; read lazily so that importing the app needs no read permission.
 */

/** The files of the dashboard, by path under `/dashboard/` (`index.html` is `/dashboard`). */
export const dashboardAssetNames = [
  "index.html",
  "dashboard.js",
  "dashboard.css",
  "vendor/uPlot.iife.min.js",
  "vendor/uPlot.min.css",
] as const;

/** A dashboard file's name. */
export type DashboardAssetName = (typeof dashboardAssetNames)[number];

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
};

const cache = new Map<string, Promise<{ body: Uint8Array<ArrayBuffer>; contentType: string }>>();

/** Reads a dashboard file. */
export function dashboardAsset(
  name: DashboardAssetName,
): Promise<{ body: Uint8Array<ArrayBuffer>; contentType: string }> {
  let asset = cache.get(name);
  if (!asset) {
    asset = Deno.readFile(new URL(`./${name}`, import.meta.url)).then((body) => ({
      body,
      contentType: TYPES[name.split(".").pop()!],
    }));
    asset.catch(() => cache.delete(name)); // a failed read is tried again next time
    cache.set(name, asset);
  }
  return asset;
}
