"""``auditgate export`` and ``stats`` over Responses API records made by the real server: a
conversation exports as chat fine-tuning examples, and stats count the endpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest

from auditgate.cli.main import main
from tests.endpoints.responses.test_server import WEATHER
from tests.server.test_stored_completions import store_env, store_gateway

__all__ = ["store_env"]  # the fixture, imported for this module's tests


def test_a_conversation_exports_as_chat_examples(
    store_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three turns (one a tool call, one its output) and a chat completion: ``finetune`` gives
    one chat example per answer, each with the conversation before it; ``eval`` the same as
    input / reference; ``--endpoint`` selects; ``stats --by endpoint`` counts both."""
    with store_gateway(store_env) as g:
        api = openai.OpenAI(base_url=g.base_url, api_key="x", max_retries=0)
        one = api.responses.create(
            model="mock", input="Weather in Oslo?", instructions="Be terse.", tools=[WEATHER],
            tool_choice="required", parallel_tool_calls=False,
        )  # fmt: skip
        call = one.output[-1]
        assert call.type == "function_call"
        two = api.responses.create(
            model="mock", previous_response_id=one.id, tools=[WEATHER], tool_choice="none",
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}],
        )  # fmt: skip
        three = api.responses.create(model="mock", previous_response_id=two.id, input="Thanks!")
        api.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "chat"}], store=True
        )
        records = g.records(4)
        url = store_env.get("DYN_AUDIT_POSTGRES_URL") or store_env["DYN_AUDIT_SQLITE_PATH"]
        g.app.gateway.stored_responses.recent.ttl_s = 0  # from now on the store alone answers
        deadline = time.monotonic() + 10
        while len(api.chat.completions.list().data) < 1 or _count(api, three.id) < 5:
            assert time.monotonic() < deadline, "the store did not catch up"
            time.sleep(0.05)
    out = tmp_path / "ft.jsonl"
    assert main(["export", "--store", url, "--format", "finetune", "-o", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    chat_tools = [{"type": "function", "function": {k: v for k, v in WEATHER.items()
                                                    if k != "type"}}]  # fmt: skip
    arguments = call.arguments
    call_message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": "weather", "arguments": arguments},
            }
        ],
    }
    turn1 = [{"role": "system", "content": "Be terse."},
             {"role": "user", "content": "Weather in Oslo?"}]  # fmt: skip
    turn2 = [{"role": "user", "content": "Weather in Oslo?"}, call_message,
             {"role": "tool", "tool_call_id": call.call_id, "content": "rain"}]  # fmt: skip
    reply2 = {"role": "assistant", "content": two.output_text}
    turn3 = [*turn2, reply2, {"role": "user", "content": "Thanks!"}]
    assert lines[:3] == [
        {"messages": [*turn1, {"role": "assistant", "tool_calls": call_message["tool_calls"]}],
         "tools": chat_tools, "parallel_tool_calls": False},
        {"messages": [*turn2, reply2], "tools": chat_tools},
        {"messages": [*turn3, {"role": "assistant", "content": three.output_text}]},
    ]  # fmt: skip
    assert lines[3]["messages"][0] == {"role": "user", "content": "chat"}
    assert len(lines) == 4
    capsys.readouterr()
    assert main(["export", "--store", url, "--format", "eval", "--endpoint", "responses"]) == 0
    evals = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["input"] for e in evals] == [turn1, turn2, turn3]
    assert main(["stats", "--store", url, "--by", "endpoint", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    counted = {g["key"]: (g["requests"], g["prompt_tokens"]) for g in stats["groups"]}
    prompt = sum(r.usage["prompt_tokens"] for r in records if r.endpoint == "responses")  # type: ignore[index]
    assert counted["responses"] == (3, prompt)
    assert counted["chat.completions"][0] == 1


def _count(api: openai.OpenAI, response_id: str) -> int:
    """Input items the store lists for ``response_id`` (0 while it is not there yet)."""
    try:
        return len(api.responses.input_items.list(response_id, limit=100).data)
    except openai.NotFoundError:
        return 0
