/**
 * The js-copy yardstick's body: `body` again, every chunk through a pull-based JavaScript stream,
 * as in any gateway that reads the bytes (bench/gateways.ts's `js-copy` path, and the stage
 * bench's). What a byte costs when JavaScript touches it, before a gateway does anything with it.
 */
export function jsCopyBody(body: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { value, done } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
}
