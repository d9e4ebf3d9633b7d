/**
 * Bench subprocesses: every path under test and the fake upstream run in their own `deno`
 * process, so each one's CPU time and memory are its own.
 */

const CONFIG = new URL("../deno.json", import.meta.url).pathname;

/** A bench subprocess and the URL it listens on. */
export interface Child {
  url: string;
  process: Deno.ChildProcess;
}

/** Starts a bench subprocess and waits for the `{"port":N}` line it prints when listening. */
export async function spawn(
  script: string,
  args: string[],
  permissions: string[],
  env?: Record<string, string>,
): Promise<Child> {
  const process = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--config",
      CONFIG,
      ...permissions,
      new URL(script, import.meta.url).pathname,
      ...args,
    ],
    env,
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = process.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  while (!buffered.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${script} exited before listening`);
    buffered += value;
  }
  const { port } = JSON.parse(buffered.slice(0, buffered.indexOf("\n")));
  // Keep draining, so a chatty child never blocks on a full pipe.
  (async () => {
    while (!(await reader.read().catch(() => ({ done: true }))).done) { /* discard */ }
  })();
  return { url: `http://127.0.0.1:${port}`, process };
}

/**
 * Starts sluice as `deno task start` does (main.ts, `SLUICE_WORKERS` isolates) on the
 * environment given, and waits for its "listening on" line.
 */
export async function spawnMain(env: Record<string, string>): Promise<Child> {
  const process = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--config",
      CONFIG,
      "--allow-net",
      "--allow-env",
      "--allow-read",
      "--allow-write",
      new URL("../main.ts", import.meta.url).pathname,
    ],
    env: { PORT: "0", HOSTNAME: "127.0.0.1", SLUICE_LOG_LEVEL: "info", ...env },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = process.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  let url: string | undefined;
  while (!url) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`main.ts exited before listening: ${seen}`);
    seen += value;
    url = /listening on (http:\/\/[^\s]+)/.exec(seen)?.[1];
  }
  (async () => {
    while (!(await reader.read().catch(() => ({ done: true }))).done) { /* discard */ }
  })();
  return { url, process };
}

/**
 * CPU time (user + system, µs) and RSS of a process, from /proc (every thread: all of main.ts's
 * workers). Read with `cat`: Deno opens /proc files only with --allow-all.
 */
export async function processUsage(
  pid: number,
): Promise<{ cpuMicros: number; rss: number; heapUsed: number }> {
  const read = async (file: string) =>
    new TextDecoder().decode(
      (await new Deno.Command("cat", { args: [`/proc/${pid}/${file}`], stdout: "piped" }).output())
        .stdout,
    );
  const stat = await read("stat");
  // Fields after the command name (which may hold spaces): utime and stime are the 12th and
  // 13th, in clock ticks (100 a second on Linux).
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  const rssKib = Number(/VmRSS:\s+(\d+)/.exec(await read("status"))?.[1] ?? NaN);
  return { cpuMicros: ticks * 10_000, rss: rssKib * 1024, heapUsed: NaN };
}
