/**
 * Recording: sends one request to the live upstream and keeps exactly what came back, with the
 * arrival time of every chunk, as a replay fixture.
 */
import { concatBytes } from "../bytes.ts";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import type { TimingChunk } from "./fixtures.ts";
import type { Upstream } from "../proxy/upstream.ts";

/** What a recording produced: the files to write, by extension. */
export interface Recording {
  /** `sse` for a stream, `json` for a non-streaming body, `http` for an HTTP error. */
  kind: "sse" | "json" | "http";
  status: number;
  /** The `.sse` bytes, or the JSON text for `json`/`http`. */
  body: Uint8Array;
  timing?: TimingChunk[];
}

/** Options for {@link record}. */
export interface RecordOptions {
  upstream: Upstream;
  /** The Messages request body. `stream` decides whether a stream or a JSON body is recorded. */
  body: Record<string, unknown>;
  clock?: Clock;
}

/** Sends the request and captures the answer. */
export async function record(options: RecordOptions): Promise<Recording> {
  const clock = options.clock ?? systemClock;
  const stream = options.body.stream === true;
  const startedAt = clock.now();
  const { response } = await options.upstream.send({
    body: new TextEncoder().encode(JSON.stringify(options.body)),
    stream,
  });
  if (!response.ok) {
    const headers: Record<string, string> = {};
    response.headers.forEach((value, key) => {
      if (key !== "content-length" && key !== "content-type") headers[key] = value;
    });
    const body = await response.json().catch(() => null);
    const text = JSON.stringify({ status: response.status, headers, body }, null, 2) + "\n";
    return { kind: "http", status: response.status, body: new TextEncoder().encode(text) };
  }
  if (!stream || !response.body) {
    const body = new Uint8Array(await response.arrayBuffer());
    return { kind: "json", status: response.status, body };
  }
  const parts: Uint8Array[] = [];
  const timing: TimingChunk[] = [];
  for await (const chunk of response.body) {
    timing.push({ at_ms: Math.round((clock.now() - startedAt) * 10) / 10, bytes: chunk.length });
    parts.push(chunk);
  }
  return { kind: "sse", status: response.status, body: concatBytes(parts), timing };
}

/** Writes a recording as fixture files `NAME.*` in `dir`; returns the paths written. */
export async function writeRecording(
  dir: string,
  name: string,
  recording: Recording,
  options: { overwrite?: boolean } = {},
): Promise<string[]> {
  const base = `${dir.replace(/\/+$/, "")}/${name}`;
  const files: [string, Uint8Array][] = recording.kind === "sse"
    ? [
      [`${base}.sse`, recording.body],
      [
        `${base}.timing.json`,
        new TextEncoder().encode(JSON.stringify({ chunks: recording.timing ?? [] }) + "\n"),
      ],
    ]
    : [[`${base}.${recording.kind === "http" ? "http.json" : "json"}`, recording.body]];
  await Deno.mkdir(dir, { recursive: true });
  for (const [path, bytes] of files) {
    await Deno.writeFile(path, bytes, { createNew: !options.overwrite });
  }
  return files.map(([path]) => path);
}
