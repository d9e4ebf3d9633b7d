/**
 * The `replay` and `record` commands, run as a user runs them (subprocesses), against a fake
 * upstream on 127.0.0.1.
 */
import assert from "node:assert/strict";
import { EventAccumulator } from "../lib/stream/accumulator.ts";
import { loadFixtures } from "../lib/replay/fixtures.ts";
import { createReplayFetch } from "../lib/replay/replay.ts";
import { createSseDecoder } from "../lib/stream/sse.ts";
import { clean, readFixture, sdkOracle, sseResponse, startFakeUpstream } from "./helpers.ts";

const CLI = (name: string) => new URL(`../lib/cli/${name}.ts`, import.meta.url).pathname;

async function run(args: string[], env: Record<string, string> = {}) {
  const output = await new Deno.Command(Deno.execPath(), {
    args,
    env: { NO_COLOR: "1", ...env },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return {
    code: output.code,
    stdout: dec.decode(output.stdout),
    stderr: dec.decode(output.stderr),
  };
}

Deno.test("replay --json prints one object whose message matches the SDK's", async (t) => {
  for (
    const name of ["essay", "overloaded-mid-stream", "connection-cut", "tool-max-tokens-no-stop"]
  ) {
    await t.step(name, async () => {
      const path = new URL(`../fixtures/${name}.sse`, import.meta.url).pathname;
      const { code, stdout } = await run([
        "run",
        "--allow-read",
        "--allow-env",
        CLI("replay"),
        path,
        "--json",
      ]);
      assert.equal(code, 0);
      const out = JSON.parse(stdout);
      for (const key of ["message", "error", "incomplete", "events", "metrics"]) {
        assert.ok(key in out, key);
      }
      const sdk = await sdkOracle([await Deno.readFile(path)]);
      assert.deepEqual(out.message, sdk.finalMessage ?? sdk.lastSnapshot);
      assert.equal(out.incomplete, sdk.finalMessage === null);
      assert.equal(out.error?.type ?? null, sdk.error?.type ?? null);
    });
  }
});

Deno.test("replay without --json prints the text, then TTFT, total time and tokens", async () => {
  const path = new URL("../fixtures/three-words.sse", import.meta.url).pathname;
  const { code, stdout } = await run([
    "run",
    "--allow-read",
    "--allow-env",
    CLI("replay"),
    path,
    "--speed",
    "0",
  ]);
  assert.equal(code, 0);
  const accumulator = new EventAccumulator();
  const decoder = createSseDecoder((e) => accumulator.push(e));
  decoder.feed(await Deno.readFile(path));
  decoder.end();
  const message = accumulator.end().message!;
  const text = (message.content[0] as { text: string }).text;
  assert.ok(stdout.startsWith(text), "the text comes first");
  assert.match(stdout, /Time to first token: \d+\.\d{3} seconds/);
  assert.match(stdout, /Total time: \d+\.\d{3} seconds/);
  assert.match(stdout, new RegExp(`Output tokens: ${message.usage.output_tokens}\\b`));
  // claude-haiku-4-5-20251001 is priced as claude-haiku-4-5: 24 × $1 + 6 × $5 per Mtok.
  assert.match(stdout, /Cost: \$0\.000054 \(claude-haiku-4-5 prices\)/);
});

Deno.test("replay --list names every fixture, says which are on request only and how to ask for each", async (t) => {
  const fixtures = new URL("../fixtures/", import.meta.url).pathname;
  const set = await loadFixtures(fixtures);
  const args = ["run", "--allow-read", "--allow-env", CLI("replay"), "--list"];
  const env = { SLUICE_FIXTURES_DIR: fixtures };
  await t.step("as text", async () => {
    const { code, stdout } = await run(args, env);
    assert.equal(code, 0);
    for (const name of set.fixtures.keys()) {
      assert.match(stdout, new RegExp(`^${name} \\((stream|http)\\)`, "m"), name);
      assert.ok(stdout.includes(`"x-sluice-fixture: ${name}" or "[fixture:${name}]"`), name);
    }
    assert.match(stdout, /^connection-cut .*\n {2}served for: on request only$/m);
  });
  await t.step("as JSON", async () => {
    const { code, stdout } = await run([...args, "--json"], env);
    assert.equal(code, 0);
    const listed = JSON.parse(stdout).fixtures as { name: string; served_when: string | null }[];
    assert.deepEqual(listed.map((f) => f.name), [...set.fixtures.keys()].sort());
    const ruled = new Set([set.defaultFixture, ...set.rules.map((r) => r.fixture)]);
    for (const f of listed) assert.equal(f.served_when === null, !ruled.has(f.name), f.name);
  });
});

Deno.test("record writes the upstream's exact bytes with timing, and the result replays byte for byte", async () => {
  const bytes = await readFixture("essay.sse");
  const upstream = startFakeUpstream(() => sseResponse(bytes, { chunkSize: 512 }));
  const dir = await Deno.makeTempDir();
  try {
    const { code, stdout, stderr } = await run(
      [
        "run",
        "--allow-net=127.0.0.1",
        "--allow-env",
        "--allow-read",
        `--allow-write=${dir}`,
        CLI("record"),
        "my-essay",
        "--prompt",
        "An essay please",
        "--out",
        dir,
      ],
      {
        ANTHROPIC_API_KEY: "sk-ant-fake",
        ANTHROPIC_BASE_URL: upstream.url,
        SLUICE_LOG_LEVEL: "silent",
      },
    );
    assert.equal(code, 0, stderr);
    assert.match(stdout, /recorded sse/);
    assert.deepEqual(await Deno.readFile(`${dir}/my-essay.sse`), bytes);
    const timing = JSON.parse(await Deno.readTextFile(`${dir}/my-essay.timing.json`)).chunks;
    assert.equal(timing.reduce((n: number, c: { bytes: number }) => n + c.bytes, 0), bytes.length);
    for (let i = 1; i < timing.length; i++) assert.ok(timing[i].at_ms >= timing[i - 1].at_ms);
    const sent = JSON.parse(upstream.requests[0].body);
    assert.equal(sent.stream, true);
    assert.equal(sent.messages[0].content, "An essay please");
    assert.equal(upstream.requests[0].headers.get("authorization"), "Bearer sk-ant-fake");

    const fetch = createReplayFetch(await loadFixtures(dir), {
      pace: { ttftMs: 0, tokensPerSecond: 1, speed: 0 },
    });
    const replayed = await fetch("http://replay.test/v1/messages", {
      method: "POST",
      headers: { "x-sluice-fixture": "my-essay" },
      body: JSON.stringify({ stream: true }),
    });
    assert.deepEqual(new Uint8Array(await replayed.arrayBuffer()), bytes);
  } finally {
    await upstream.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("record --no-stream writes the JSON body; an API error is written as an HTTP fixture", async () => {
  const json = await Deno.readTextFile(new URL("../fixtures/three-words.json", import.meta.url));
  let fail = false;
  const upstream = startFakeUpstream(() =>
    fail
      ? Response.json(
        { type: "error", error: { type: "overloaded_error", message: "Overloaded" } },
        { status: 529, headers: { "request-id": "req_529", "x-should-retry": "false" } },
      )
      : new Response(json, { headers: { "content-type": "application/json" } })
  );
  const dir = await Deno.makeTempDir();
  const env = {
    ANTHROPIC_API_KEY: "sk-ant-fake",
    ANTHROPIC_BASE_URL: upstream.url,
    SLUICE_MAX_RETRIES: "0",
  };
  const args = (name: string, ...extra: string[]) => [
    "run",
    "--allow-net=127.0.0.1",
    "--allow-env",
    "--allow-read",
    `--allow-write=${dir}`,
    CLI("record"),
    name,
    "--out",
    dir,
    ...extra,
  ];
  try {
    const ok = await run(args("short", "--no-stream"), env);
    assert.equal(ok.code, 0, ok.stderr);
    assert.deepEqual(
      JSON.parse(await Deno.readTextFile(`${dir}/short.json`)),
      clean(JSON.parse(json)),
    );
    const again = await run(args("short", "--no-stream"), env);
    assert.equal(again.code, 1, "an existing fixture is not overwritten without --force");
    fail = true;
    const failed = await run(args("busy"), env);
    assert.equal(failed.code, 1);
    const http = JSON.parse(await Deno.readTextFile(`${dir}/busy.http.json`));
    assert.equal(http.status, 529);
    assert.equal(http.body.error.type, "overloaded_error");
    assert.equal(http.headers["request-id"], "req_529");
    const replayed = await run(
      ["run", "--allow-read", "--allow-env", CLI("replay"), `${dir}/busy.http.json`],
    );
    assert.equal(replayed.code, 0, replayed.stderr);
    assert.match(replayed.stdout, /status 529\nError: overloaded_error: Overloaded\n/);
  } finally {
    await upstream.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("record without ANTHROPIC_API_KEY refuses with a clear message", async () => {
  const { code, stderr } = await run(["run", "--allow-env", "--allow-read", CLI("record"), "x"]);
  assert.equal(code, 2);
  assert.match(stderr, /ANTHROPIC_API_KEY/);
});

Deno.test("replay and record --help print their usage and exit 0; a bad option is a one-line error, the usage and exit 2, never a stack trace", async (t) => {
  const commands = {
    replay: ["run", "--allow-read", "--allow-env", CLI("replay")],
    record: ["run", "--allow-read", "--allow-env", CLI("record")],
  };
  for (const [name, command] of Object.entries(commands)) {
    await t.step(`${name} --help and -h`, async () => {
      for (const flag of ["--help", "-h"]) {
        const { code, stdout, stderr } = await run([...command, flag]);
        assert.equal(code, 0, stderr);
        assert.ok(stdout.startsWith(`usage: deno task ${name} `), stdout);
        assert.equal(stderr, "");
      }
    });
    await t.step(`${name} --bogus`, async () => {
      const { code, stdout, stderr } = await run([...command, "--bogus", "x"]);
      assert.equal(code, 2);
      assert.equal(stdout, "");
      const [first, blank, usage] = stderr.split("\n");
      assert.match(first, new RegExp(`^${name}: Unknown option '--bogus'`));
      assert.equal(blank, "");
      assert.match(usage, new RegExp(`^usage: deno task ${name} `));
      assert.doesNotMatch(stderr, /Uncaught|^\s+at /m);
    });
  }
});

Deno.test("record refuses a --max-tokens that is not a positive whole number, before sending anything", async () => {
  const upstream = startFakeUpstream(() => new Response("{}"));
  try {
    for (const bad of ["0", "many", "2.5"]) {
      const { code, stderr } = await run(
        ["run", "--allow-net=127.0.0.1", "--allow-env", "--allow-read", CLI("record"), "x"]
          .concat(["--max-tokens", bad]),
        { ANTHROPIC_API_KEY: "sk-ant-fake", ANTHROPIC_BASE_URL: upstream.url },
      );
      assert.equal(code, 2, bad);
      assert.match(stderr, new RegExp(`^record: --max-tokens must be .* \\(got ${bad}\\)`));
    }
    assert.equal(upstream.requests.length, 0);
  } finally {
    await upstream.close();
  }
});

Deno.test("replay takes a fixture NAME as --list shows it; a path that exists wins, and an unknown name says so and lists the names", async (t) => {
  const fixtures = new URL("../fixtures/", import.meta.url).pathname;
  const replay = (arg: string, env: Record<string, string>) =>
    run(["run", "--allow-read", "--allow-env", CLI("replay"), arg, "--json"], env);
  const messageOf = async (path: string) =>
    (await sdkOracle([await Deno.readFile(path)])).finalMessage;
  // INIT_CWD is where `deno task` was run from: an empty folder, so no file is named three-words.
  const caller = await Deno.makeTempDir();
  try {
    await t.step("a name from the bundled fixtures replays that fixture", async () => {
      const { code, stdout, stderr } = await replay("three-words", { INIT_CWD: caller });
      assert.equal(code, 0, stderr);
      assert.deepEqual(JSON.parse(stdout).message, await messageOf(`${fixtures}three-words.sse`));
    });
    await t.step("a name from SLUICE_FIXTURES_DIR, the folder --list shows", async () => {
      const dir = `${caller}/mine`;
      await Deno.mkdir(dir);
      await Deno.copyFile(`${fixtures}essay.sse`, `${dir}/my-essay.sse`);
      await Deno.copyFile(`${fixtures}three-words.json`, `${dir}/short.json`);
      const env = { INIT_CWD: caller, SLUICE_FIXTURES_DIR: dir };
      const { code, stdout, stderr } = await replay("my-essay", env);
      assert.equal(code, 0, stderr);
      assert.deepEqual(JSON.parse(stdout).message, await messageOf(`${fixtures}essay.sse`));
      const unstreamed = await replay("short", env);
      assert.equal(unstreamed.code, 1);
      assert.equal(
        unstreamed.stderr,
        "replay: the fixture short has no stream to replay (no short.sse)\n",
      );
    });
    await t.step("a file named like a fixture is replayed as the file", async () => {
      await Deno.copyFile(`${fixtures}essay.sse`, `${caller}/three-words`);
      const { code, stdout, stderr } = await replay("three-words", { INIT_CWD: caller });
      assert.equal(code, 0, stderr);
      assert.deepEqual(JSON.parse(stdout).message, await messageOf(`${fixtures}essay.sse`));
      await Deno.remove(`${caller}/three-words`);
    });
    await t.step("an unknown name is one line that says so and lists every name", async () => {
      const { code, stdout, stderr } = await replay("three-wordz", { INIT_CWD: caller });
      assert.equal(code, 1);
      assert.equal(stdout, "");
      const names = [...(await loadFixtures(fixtures)).fixtures.keys()].sort();
      assert.equal(
        stderr,
        `replay: no file three-wordz, and no fixture of that name in ${fixtures}; ` +
          `the fixtures are: ${names.join(", ")}\n`,
      );
    });
  } finally {
    await Deno.remove(caller, { recursive: true });
  }
});

Deno.test("replay shows an HTTP error fixture as what it is: its status, error and retry-after, none of a stream's lines, exit 0", async (t) => {
  const fixtures = new URL("../fixtures/", import.meta.url).pathname;
  const replay = (...args: string[]) =>
    run(["run", "--allow-read", "--allow-env", CLI("replay"), ...args]);
  const recorded = async (name: string) =>
    JSON.parse(await Deno.readTextFile(`${fixtures}${name}.http.json`));
  await t.step(
    "a file: the status and the body's error, no text, timings, tokens or cost",
    async () => {
      const { code, stdout, stderr } = await replay(`${fixtures}overloaded.http.json`);
      assert.equal(code, 0, stderr);
      const { body } = await recorded("overloaded");
      assert.equal(
        stdout,
        [
          "This fixture is an HTTP error answer, not a stream: status 529",
          "Error: overloaded_error: Overloaded",
          `Request id: ${body.request_id}`,
          "",
        ].join("\n"),
      );
      assert.doesNotMatch(stdout, /Time to first token|Total time|tokens:|Cost|Incomplete/);
    },
  );
  await t.step("a name, with the retry-after it was recorded with", async () => {
    const { code, stdout, stderr } = await replay("rate-limited");
    assert.equal(code, 0, stderr);
    const { body } = await recorded("rate-limited");
    assert.match(stdout, /^This fixture is an HTTP error answer, not a stream: status 429\n/);
    assert.ok(stdout.includes(`\nError: rate_limit_error: ${body.error.message}\n`));
    assert.ok(stdout.includes("\nRetry after: 2 seconds\n"));
  });
  await t.step(
    "--json: one object of kind http, and a stream's object is of kind stream",
    async () => {
      const { code, stdout } = await replay("invalid-request", "--json");
      assert.equal(code, 0);
      const { body } = await recorded("invalid-request");
      assert.deepEqual(JSON.parse(stdout), {
        kind: "http",
        status: 400,
        error: body.error,
        retry_after: null,
        request_id: body.request_id,
        body,
      });
      const stream = await replay("three-words", "--json");
      assert.equal(JSON.parse(stream.stdout).kind, "stream");
    },
  );
  await t.step(
    "a fixture written by hand: any header case, a body that is no API error",
    async () => {
      const dir = await Deno.makeTempDir();
      try {
        await Deno.writeTextFile(
          `${dir}/gateway.http.json`,
          JSON.stringify({ status: 502, headers: { "Retry-After": "30" }, body: "<html>" }),
        );
        const { code, stdout } = await replay(`${dir}/gateway.http.json`);
        assert.equal(code, 0);
        assert.equal(
          stdout,
          "This fixture is an HTTP error answer, not a stream: status 502\n" +
            'Body (not an API error): "<html>"\nRetry after: 30 seconds\n',
        );
        // By name, from a folder replay mode would serve: a fixture with no headers at all.
        await Deno.writeTextFile(
          `${dir}/bare.http.json`,
          JSON.stringify({ status: 503, body: { error: { type: "api_error", message: "down" } } }),
        );
        const bare = await run(
          ["run", "--allow-read", "--allow-env", CLI("replay"), "bare"],
          { SLUICE_FIXTURES_DIR: dir },
        );
        assert.equal(bare.code, 0, bare.stderr);
        assert.match(bare.stdout, /status 503\nError: api_error: down\n$/);
        await Deno.writeTextFile(`${dir}/broken.http.json`, JSON.stringify({ body: {} }));
        const broken = await replay(`${dir}/broken.http.json`);
        assert.equal(broken.code, 1);
        assert.match(
          broken.stderr,
          /^replay: cannot read .*broken\.http\.json: an HTTP fixture is/,
        );
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  );
});

Deno.test("replay refuses a fixture's NAME.json or NAME.timing.json as no stream, naming the stream to replay instead, exit 1", async (t) => {
  const root = new URL("../", import.meta.url).pathname;
  const replay = (arg: string, env: Record<string, string> = {}) =>
    run(["run", "--allow-read", "--allow-env", CLI("replay"), arg], env);
  await t.step("the bundled non-streamed body, as typed from the project folder", async () => {
    const { code, stdout, stderr } = await replay("fixtures/three-words.json", { INIT_CWD: root });
    assert.equal(code, 1);
    assert.equal(stdout, "");
    assert.equal(
      stderr,
      "replay: fixtures/three-words.json is a fixture's non-streamed body (NAME.json), not a " +
        "stream; to replay its stream: deno task replay three-words (or fixtures/three-words.sse)\n",
    );
  });
  await t.step("outside the fixtures folder: its .sse, or that there is none", async () => {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.copyFile(`${root}fixtures/essay.sse`, `${dir}/mine.sse`);
      await Deno.copyFile(`${root}fixtures/essay.json`, `${dir}/mine.json`);
      await Deno.writeTextFile(`${dir}/mine.timing.json`, '{"chunks":[{"at_ms":1,"bytes":9}]}');
      await Deno.copyFile(`${root}fixtures/three-words.json`, `${dir}/short.json`);
      const body = await replay(`${dir}/mine.json`);
      assert.equal(body.code, 1);
      assert.equal(
        body.stderr,
        `replay: ${dir}/mine.json is a fixture's non-streamed body (NAME.json), not a stream; ` +
          `to replay its stream: deno task replay ${dir}/mine.sse\n`,
      );
      const timing = await replay(`${dir}/mine.timing.json`);
      assert.equal(timing.code, 1);
      assert.match(timing.stderr, /is a fixture's recorded timing \(NAME\.timing\.json\), not a/);
      assert.ok(timing.stderr.endsWith(`deno task replay ${dir}/mine.sse\n`), timing.stderr);
      const alone = await replay(`${dir}/short.json`);
      assert.equal(alone.code, 1);
      assert.equal(
        alone.stderr,
        `replay: ${dir}/short.json is a fixture's non-streamed body (NAME.json), not a stream, ` +
          `and there is no ${dir}/short.sse beside it to replay\n`,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
  await t.step("any other JSON file, such as the manifest, is no stream either", async () => {
    const { code, stderr } = await replay(`${root}fixtures/manifest.json`);
    assert.equal(code, 1);
    assert.equal(
      stderr,
      `replay: ${root}fixtures/manifest.json is JSON, not a stream ` +
        "(a recorded stream is a NAME.sse file)\n",
    );
  });
});

Deno.test("replay prints a bad configuration value as record does, its message and exit 2, never a stack trace", async (t) => {
  const env = { SLUICE_REPLAY_SPEED: "abc" };
  const record = await run(["run", "--allow-read", "--allow-env", CLI("record"), "x"], env);
  assert.equal(record.code, 2);
  assert.match(
    record.stderr,
    /^record: invalid environment:\n {2}SLUICE_REPLAY_SPEED: .*"abc"\)\n$/,
  );
  for (const args of [["three-words"], ["--list"]]) {
    await t.step(`replay ${args.join(" ")}`, async () => {
      const replay = await run(["run", "--allow-read", "--allow-env", CLI("replay"), ...args], env);
      assert.equal(replay.code, 2);
      assert.equal(replay.stdout, "");
      assert.equal(replay.stderr, record.stderr.replace(/^record:/, "replay:"));
    });
  }
});

Deno.test("record refuses a --body file that is not a JSON object with one line naming it, exit 2, and sends nothing", async (t) => {
  const upstream = startFakeUpstream(() => new Response("{}"));
  const dir = await Deno.makeTempDir();
  const record = (file: string) =>
    run(
      ["run", "--allow-net=127.0.0.1", "--allow-env", "--allow-read", `--allow-write=${dir}`]
        .concat([CLI("record"), "x", "--body", file, "--out", dir]),
      { ANTHROPIC_API_KEY: "sk-ant-fake", ANTHROPIC_BASE_URL: upstream.url },
    );
  try {
    await t.step("not JSON: the parser's reason, kept on the one line", async () => {
      await Deno.writeTextFile(`${dir}/bad.json`, '{"model": "claude-sonnet-5-5",\n  oops\n');
      const { code, stdout, stderr } = await record(`${dir}/bad.json`);
      assert.equal(code, 2);
      assert.equal(stdout, "");
      assert.match(
        stderr,
        new RegExp(`^record: --body ${dir}/bad\\.json is not valid JSON: .+\n$`),
      );
    });
    await t.step("JSON that is not an object", async () => {
      await Deno.writeTextFile(`${dir}/list.json`, "[]");
      const { code, stderr } = await record(`${dir}/list.json`);
      assert.equal(code, 2);
      assert.equal(
        stderr,
        `record: --body ${dir}/list.json is not a JSON object (a Messages body is one)\n`,
      );
    });
    await t.step("no such file", async () => {
      const { code, stderr } = await record(`${dir}/missing.json`);
      assert.equal(code, 2);
      assert.match(stderr, new RegExp(`^record: cannot read --body ${dir}/missing\\.json: .+\n$`));
    });
    assert.equal(upstream.requests.length, 0);
    const written = [];
    for await (const entry of Deno.readDir(dir)) written.push(entry.name);
    assert.deepEqual(written.sort(), ["bad.json", "list.json"], "no fixture was written");
  } finally {
    await upstream.close();
    await Deno.remove(dir, { recursive: true });
  }
});
