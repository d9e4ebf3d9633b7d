/**
 * `405 Method Not Allowed` for sluice's own paths: `GET /chat` says to use POST (with an `Allow`
 * header) instead of a bare 404 that reads as if the path did not exist. Built from the app's
 * own route table, so it cannot drift from the routes. Hono answers an unmatched method with its
 * not-found handler and has no 405 of its own; `/v1/*` never gets here (every method goes
 * upstream).
 */

/** A route as Hono lists it in `app.routes`. */
export interface RouteEntry {
  method: string;
  path: string;
}

/**
 * The methods each path is served with, from `routes` (middleware, listed as `ALL`, is left
 * out); a GET route answers HEAD too, as Hono does. Returns a lookup of a request path's methods
 * (none when sluice serves the path with no method at all).
 */
export function allowedMethods(routes: readonly RouteEntry[]): (path: string) => string[] {
  const table = new Map<string, { pattern: RegExp; methods: Set<string> }>();
  for (const { method, path } of routes) {
    if (method === "ALL") continue;
    const entry = table.get(path) ?? { pattern: pathPattern(path), methods: new Set<string>() };
    entry.methods.add(method);
    if (method === "GET") entry.methods.add("HEAD");
    table.set(path, entry);
  }
  return (path) => {
    const methods = new Set<string>();
    for (const entry of table.values()) {
      if (entry.pattern.test(path)) { for (const method of entry.methods) methods.add(method); }
    }
    return [...methods].sort();
  };
}

/** A Hono path (`/conversations/:id`, `/page/*`) as a regular expression of whole paths. */
function pathPattern(path: string): RegExp {
  const source = path
    .split("/")
    .map((part) =>
      part.startsWith(":")
        ? "[^/]+"
        : part === "*"
        ? ".*"
        : part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")
    )
    .join("/");
  return new RegExp(`^${source}/?$`);
}
