/**
 * sluice's own static pages (the chat page, the dashboard): files of one folder, read once on
 * first use and kept in memory, served with one strict policy. Read lazily rather than at import
 * time, so that importing the app costs nothing and needs no read permission until a page is
 * asked for. (Hono's serveStatic reads from the working directory on every request and sets no
 * CSP; these are a handful of known files shipped beside the code.)
 */
import { Hono } from "hono";
import { etag } from "hono/etag";
import type { AppEnv } from "../app_env.ts";

/** One file, as served. */
export interface StaticFile {
  body: Uint8Array<ArrayBuffer>;
  contentType: string;
}

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
};

/** A reader of the files under `folder`: each read once, a failed read tried again next time. */
export function createFileReader<Name extends string>(
  folder: URL,
): (name: Name) => Promise<StaticFile> {
  const cache = new Map<string, Promise<StaticFile>>();
  return (name) => {
    let file = cache.get(name);
    if (!file) {
      file = Deno.readFile(new URL(`./${name}`, folder)).then((body) => ({
        body,
        contentType: TYPES[name.split(".").pop()!],
      }));
      file.catch(() => cache.delete(name)); // a transient error does not stick
      cache.set(name, file);
    }
    return file;
  };
}

/**
 * The pages talk only to sluice: scripts, styles and requests from this origin, nothing inline
 * but data: images (the favicon), no framing.
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

/** Options for {@link staticFilesRoute}. */
export interface StaticFilesOptions<Name extends string> {
  /** Where `index.html` is served (`/`, `/dashboard`). */
  indexPath: string;
  /** Where the other files are served, `${prefix}/${name}`. */
  prefix: string;
  names: readonly Name[];
  read: (name: Name) => Promise<StaticFile>;
}

/** Mounts `GET indexPath` (index.html) and `GET prefix/<name>` for the other files. */
export function staticFilesRoute<Name extends string>(
  options: StaticFilesOptions<Name>,
): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.use(options.indexPath, etag());
  app.use(`${options.prefix}/*`, etag());
  const serve = async (name: Name) => {
    const file = await options.read(name);
    return new Response(file.body, {
      headers: {
        "content-type": file.contentType,
        // Revalidate every time (the ETag makes it cheap), so an upgrade is seen at once.
        "cache-control": "no-cache",
        "content-security-policy": CONTENT_SECURITY_POLICY,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
      },
    });
  };
  app.get(options.indexPath, () => serve("index.html" as Name));
  for (const name of options.names) {
    if (name !== "index.html") app.get(`${options.prefix}/${name}`, () => serve(name));
  }
  return app;
}
