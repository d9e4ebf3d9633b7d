/**
 * A worker's entry point (see workers.ts): serves sluice in this isolate on the port the main
 * thread names, with `SO_REUSEPORT`, and shuts down when the main thread says so.
 */
/// <reference lib="deno.worker" />
import { parseConfig } from "../config.ts";
import { serveSluice, StartError } from "../serve.ts";
import type { ToMain, ToWorker } from "./workers.ts";

const say = (message: ToMain) => self.postMessage(message);
let stop: ((signal: string) => Promise<void>) | undefined;
let announce: (() => void) | undefined;

self.onmessage = async (event: MessageEvent<ToWorker>) => {
  const message = event.data;
  if (message.type === "shutdown") {
    // Before it listens there is nothing to drain.
    if (stop) await stop(message.signal);
    else say({ type: "stopped", code: 0 });
    return;
  }
  if (message.type === "announce") {
    announce?.();
    return;
  }
  try {
    const config = parseConfig(message.env);
    const served = await serveSluice(config, {
      port: message.port,
      reusePort: true,
      announce: false,
      workers: message.workers,
      signals: [],
      exit: (code) => say({ type: "stopped", code }),
    });
    stop = (signal) => served.shutdown.run(signal);
    announce = served.announce;
    say({ type: "listening", port: served.port });
  } catch (error) {
    // An operator's problem (a port in use) is said as it is; anything else with its type.
    say({ type: "failed", message: error instanceof StartError ? error.message : String(error) });
  }
};
