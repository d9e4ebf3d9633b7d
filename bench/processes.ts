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
