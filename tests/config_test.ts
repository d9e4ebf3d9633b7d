import assert from "node:assert/strict";
import { ConfigError, ENV_VARIABLES, parseConfig } from "../lib/config.ts";

Deno.test("with nothing set, sluice listens on 8000 and replays fixtures", () => {
  const config = parseConfig({});
  assert.equal(config.port, 8000);
  assert.equal(config.upstream, "replay");
  assert.equal(config.anthropicBaseUrl, "https://api.anthropic.com");
  assert.deepEqual(config.apiKeys, []);
});

Deno.test("an API key switches to live mode, and SLUICE_UPSTREAM can force replay", () => {
  assert.equal(parseConfig({ ANTHROPIC_API_KEY: "sk-ant-x" }).upstream, "live");
  assert.equal(
    parseConfig({ ANTHROPIC_API_KEY: "sk-ant-x", SLUICE_UPSTREAM: "replay" }).upstream,
    "replay",
  );
});

Deno.test("gateway keys are read as a comma-separated list, trimmed", () => {
  assert.deepEqual(parseConfig({ SLUICE_API_KEYS: " a, b ,,c " }).apiKeys, ["a", "b", "c"]);
});

Deno.test("empty values count as unset", () => {
  assert.equal(parseConfig({ PORT: "", ANTHROPIC_API_KEY: "" }).upstream, "replay");
});

Deno.test("a bad value stops start-up with a message that names the variable", async (t) => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ PORT: "eighty" }, /PORT/],
    [{ PORT: "70000" }, /PORT/],
    [{ ANTHROPIC_BASE_URL: "not a url" }, /ANTHROPIC_BASE_URL/],
    [{ SLUICE_UPSTREAM: "mirror" }, /SLUICE_UPSTREAM/],
    [{ SLUICE_REPLAY_SPEED: "-1" }, /SLUICE_REPLAY_SPEED/],
    [{ SLUICE_UPSTREAM: "live" }, /ANTHROPIC_API_KEY/],
  ];
  for (const [env, pattern] of cases) {
    await t.step(JSON.stringify(env), () => {
      assert.throws(
        () => parseConfig(env),
        (e: unknown) => e instanceof ConfigError && pattern.test(e.message),
      );
    });
  }
});

Deno.test("the error for a bad value never echoes the API key", () => {
  try {
    parseConfig({ ANTHROPIC_API_KEY: "sk-ant-very-secret", PORT: "x" });
    assert.fail("expected a ConfigError");
  } catch (error) {
    assert.ok(!(error as Error).message.includes("sk-ant-very-secret"));
  }
});

Deno.test("a trailing slash on the base URL is dropped", () => {
  assert.equal(
    parseConfig({ ANTHROPIC_BASE_URL: "http://127.0.0.1:9/" }).anthropicBaseUrl,
    "http://127.0.0.1:9",
  );
});

Deno.test("Deno Deploy is detected from its environment", () => {
  assert.equal(parseConfig({}).onDeploy, false);
  assert.equal(parseConfig({ DENO_DEPLOYMENT_ID: "abc" }).onDeploy, true);
});

Deno.test("every variable sluice reads is documented in the README and in .env.example", async () => {
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const example = await Deno.readTextFile(new URL("../.env.example", import.meta.url));
  assert.ok(ENV_VARIABLES.length >= 20);
  for (const name of ENV_VARIABLES) {
    assert.ok(readme.includes(`\`${name}\``), `README.md does not list ${name}`);
    assert.match(example, new RegExp(`^# ${name}=`, "m"), `.env.example does not list ${name}`);
  }
});
