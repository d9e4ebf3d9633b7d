"""The official Python SDK (anthropic, pinned in .ci/install_clients) against one base URL.

Usage: python python_sdk.py BASE_URL. Prints one JSON object: what each call returned, as a
client sees it, so tests/python_sdk_test.ts can compare a run through sluice with a run against
the upstream directly. Model names pick the fake upstream's fixture (`fixture/NAME`).
"""

import json
import sys

import anthropic


def main() -> None:
    client = anthropic.Anthropic(base_url=sys.argv[1], api_key="sk-ant-caller-key-python", max_retries=0)
    out = {}

    # messages.stream: the text as text_stream yields it, and the final message.
    with client.messages.stream(
        model="fixture/three-words",
        max_tokens=100,
        messages=[{"role": "user", "content": "Write me a 3 word sentence"}],
    ) as stream:
        out["text_stream"] = list(stream.text_stream)
        out["final_message"] = stream.get_final_message().model_dump(mode="json")

    # A tool call, streamed: the accumulated tool_use input is what a client acts on.
    with client.messages.stream(
        model="fixture/tool-use-split",
        max_tokens=100,
        tools=[
            {
                "name": "get_weather",
                "description": "The weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    ) as stream:
        message = stream.get_final_message()
        out["tool_message"] = message.model_dump(mode="json")
        out["tool_uses"] = [
            {"name": block.name, "input": block.input} for block in message.content if block.type == "tool_use"
        ]

    # messages.create, not streamed.
    created = client.messages.create(
        model="fixture/three-words",
        max_tokens=100,
        messages=[{"role": "user", "content": "Write me a 3 word sentence"}],
    )
    out["create"] = created.model_dump(mode="json")

    print(json.dumps(out))


if __name__ == "__main__":
    main()
