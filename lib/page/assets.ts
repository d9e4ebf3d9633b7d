/**
 * The chat page's files (this folder), read once on first use and kept in memory. They are read
 * lazily rather than at import time so that importing the app costs nothing and needs no read
 * permission until the page is asked for.
 */

/** The files of the page, by name. */
export const pageAssetNames = [
  "index.html",
  "chat.js",
  "markdown.js",
  "stream.js",
  "follow.js",
  "chat.css",
  // Built by `deno task build:page` from npm packages (lib/page/build/), committed.
  "vendor.js",
  "vendor.css",
] as const;

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
};

/** One file of the page. */
export interface PageAsset {
  body: Uint8Array<ArrayBuffer>;
  contentType: string;
}

const cache = new Map<string, Promise<PageAsset>>();

/** Reads a page file (one of {@link pageAssetNames}). */
export function pageAsset(name: (typeof pageAssetNames)[number]): Promise<PageAsset> {
  let asset = cache.get(name);
  if (!asset) {
    asset = Deno.readFile(new URL(`./${name}`, import.meta.url)).then((body) => ({
      body,
      contentType: TYPES[name.split(".").pop()!],
    }));
    // A failed read is not cached, so a transient error does not stick.
    asset.catch(() => cache.delete(name));
    cache.set(name, asset);
  }
  return asset;
}
