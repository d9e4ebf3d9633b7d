/**
 * Answers written for the clients' tests (the page's and the terminal's): markdown with every
 * block, hostile HTML, forty numbered paragraphs. Served by replay as fixtures named
 * `markdown`, `hostile` and `numbered` (a prompt asks with `[fixture:NAME]`).
 */
import { synthesizeStream } from "../lib/replay/synthesize.ts";
import type { FixtureSet } from "../lib/replay/fixtures.ts";
import { projectFixtures } from "./helpers.ts";

/** A long answer with every block the page renders: headings, lists, a table, code. */
export const MARKDOWN_ANSWER = `# Sluices, locks and weirs

A **sluice** is a gate that controls how much water flows through a channel. Engineers use
them for irrigation, flood control and *navigation*; \`sluice\` is also this gateway's name.

## How a lock works

1. The boat enters the chamber and the lower gate closes.
2. The upper **sluice** opens and water fills the chamber.
3. When the levels match, the upper gate opens and the boat moves on.

Three kinds of structure:

- **Sluice gate**: a sliding gate in a channel.
- **Weir**: a low dam that water flows over.
- **Lock**: a chamber with gates at both ends.

| Structure | Moves boats | Typical height |
| --------- | ----------- | -------------- |
| Sluice    | no          | 1-3 m          |
| Weir      | no          | 0.5-5 m        |
| Lock      | yes         | 2-25 m         |

## Computing the flow

The flow under a sluice gate follows from Bernoulli's equation. In Python:

\`\`\`python
import math

def sluice_flow(width_m: float, opening_m: float, head_m: float) -> float:
    """Flow in cubic metres per second under a sluice gate."""
    discharge_coefficient = 0.61
    return discharge_coefficient * width_m * opening_m * math.sqrt(2 * 9.81 * head_m)

print(f"{sluice_flow(2.0, 0.5, 3.0):.2f} m3/s")
\`\`\`

And the same check from a shell:

\`\`\`bash
for head in 1 2 3; do
  echo "head=$head m"
done
\`\`\`

> A gate opened too fast can scour the channel bed below it.

That is the whole idea: small gates, controlled flow, and boats that climb hills of water.
`;

/** Model output that tries to run code in the page: none of it may execute. */
export const HOSTILE_ANSWER =
  `Here is a script: <script>window.__pwned = (window.__pwned || 0) + 1</script> done.

<img src="/nothing.png" onerror="window.__pwned = (window.__pwned || 0) + 1">

[a javascript link](javascript:window.__pwned=1) and <a href="javascript:window.__pwned=1">a raw one</a>.

<svg><animate onbegin="window.__pwned=1" attributeName="x" dur="1s"></animate></svg>

<iframe src="javascript:window.__pwned=1"></iframe><form action="javascript:window.__pwned=1"><button>go</button></form>

<p style="background:url(javascript:window.__pwned=1)" onclick="window.__pwned=1">still text</p>
`;

/** Forty numbered paragraphs: a dropped and resumed answer must show each exactly once. */
export const NUMBERED_ANSWER = Array.from(
  { length: 40 },
  (_, i) => `Paragraph ${i + 1} of the resumed answer says its number once.`,
).join("\n\n");

/** The project's fixtures plus these: markdown, hostile and numbered (ask `[fixture:NAME]`). */
export async function answerFixtures(): Promise<FixtureSet> {
  const base = await projectFixtures();
  const fixtures = new Map(base.fixtures);
  for (
    const [name, text] of Object.entries({
      markdown: MARKDOWN_ANSWER,
      hostile: HOSTILE_ANSWER,
      numbered: NUMBERED_ANSWER,
    })
  ) {
    const sse = synthesizeStream({
      id: `msg_${name}`,
      model: "claude-sonnet-5-5",
      text,
      inputTokens: 20,
    });
    fixtures.set(name, { name, sse });
  }
  return { ...base, fixtures };
}
