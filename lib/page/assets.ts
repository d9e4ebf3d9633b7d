/**
 * The chat page's files (this folder), read once on first use and kept in memory. They are read
 * lazily rather than at import time so that importing the app costs nothing and needs no read
 * permission until the page is asked for.
 */
import type { StaticFile } from "../http/static_files.ts";
import { createFileReader } from "../http/static_files.ts";

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

/** One file of the page. */
export type PageAsset = StaticFile;

/** Reads a page file (one of {@link pageAssetNames}). */
export const pageAsset: (name: (typeof pageAssetNames)[number]) => Promise<PageAsset> =
  createFileReader(new URL("./", import.meta.url));
