"""The Responses API's objects conform to OpenAI's published specification (pinned cut):
``POST /v1/responses`` (the object, and every streamed event, with reasoning, tools, logprobs,
a length limit and structured output), retrieve, the input items list, and error bodies — what
the real server sent, validated against the schema the specification gives each operation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from auditgate.config import Settings
from auditgate.sinks import build_sinks
from tests.conformance.spec import error_body_errors, response_errors
from tests.endpoints.responses.sdk import decode_sse
from tests.endpoints.responses.test_server import WEATHER
from tests.support.server import TestGateway, audit_env, gateway

PERSON = {
    "type": "json_schema",
    "name": "person",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"instructions": "Be brief.", "metadata": {"k": "v"}},
    "items": {
        "input": [
            {"role": "developer", "content": "Be brief."},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Hello"}],
            },
        ]
    },
    "length": {"max_output_tokens": 3},
    "tools": {"tools": [WEATHER], "tool_choice": "required"},
    "named-tool": {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "weather"}},
    "reasoning": {"reasoning": {"effort": "low"}},
    "reasoning-summary": {"reasoning": {"effort": "low", "summary": "detailed"}},
    "logprobs": {"include": ["message.output_text.logprobs"], "top_logprobs": 2},
    "json-schema": {"text": {"format": PERSON}},
    "service-tier": {"service_tier": "auto", "temperature": 0.2, "top_p": 0.9, "user": "u"},
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestGateway]:
    path = tmp_path_factory.mktemp("conformance") / "store.db"
    env = audit_env(DYN_AUDIT_SINKS="sqlite", DYN_AUDIT_SQLITE_PATH=str(path))
    with gateway(env, sinks=build_sinks(Settings.from_env(env).audit)) as g:
        yield g


def body(variant: str, **extra: Any) -> dict[str, Any]:
    return {"model": "mock", "input": "Tell me about Ada.", **VARIANTS[variant], **extra}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_created_responses_conform(gw: TestGateway, variant: str) -> None:
    """Each variant's ``response`` object is the specification's ``Response``, and so is the
    stored copy ``GET /v1/responses/{id}`` returns."""
    created = httpx.post(f"{gw.base_url}/responses", json=body(variant), timeout=10)
    assert created.status_code == 200, created.text
    assert response_errors("createResponse", created.json()) == []
    stored = httpx.get(f"{gw.base_url}/responses/{created.json()['id']}", timeout=10)
    assert response_errors("getResponse", stored.json()) == []


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_stream_event_conforms(gw: TestGateway, variant: str) -> None:
    """Every event of each variant's stream is one of the specification's
    ``ResponseStreamEvent``s."""
    with httpx.stream(
        "POST", f"{gw.base_url}/responses", json=body(variant, stream=True), timeout=10
    ) as streamed:
        data = streamed.read()
    events = [event for _, event in decode_sse(data)]
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    found = {
        f"{e['type']}: {problem}"
        for e in events
        for problem in response_errors("createResponse", e, "200", "text/event-stream")
    }
    assert found == set()


def test_input_items_and_delete_conform(gw: TestGateway) -> None:
    """The input items list (a conversation of messages, a function call and its output) is
    the specification's ``ResponseItemList``; a deletion answers 200."""
    first = httpx.post(f"{gw.base_url}/responses", json=body("tools"), timeout=10).json()
    call = next(item for item in first["output"] if item["type"] == "function_call")
    second = httpx.post(
        f"{gw.base_url}/responses",
        json={
            "model": "mock",
            "previous_response_id": first["id"],
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "x"}],
        },
        timeout=10,
    ).json()
    listed = httpx.get(f"{gw.base_url}/responses/{second['id']}/input_items", timeout=10)
    assert len(listed.json()["data"]) == 3
    assert response_errors("listInputItems", listed.json()) == []
    empty = httpx.get(
        f"{gw.base_url}/responses/{second['id']}/input_items",
        params={"after": listed.json()["last_id"]},
        timeout=10,
    )
    assert (empty.json()["data"], response_errors("listInputItems", empty.json())) == ([], [])
    deleted = httpx.delete(f"{gw.base_url}/responses/{second['id']}", timeout=10)
    assert deleted.status_code == 200


def test_error_bodies_conform(gw: TestGateway) -> None:
    """A bad request, an unknown id, a bad page parameter: OpenAI's ``ErrorResponse``."""
    answers = [
        httpx.post(f"{gw.base_url}/responses", json={"model": "mock"}, timeout=10),
        httpx.post(f"{gw.base_url}/responses", content=b"{", timeout=10),
        httpx.get(f"{gw.base_url}/responses/resp_nope", timeout=10),
        httpx.get(f"{gw.base_url}/responses/resp_nope/input_items", timeout=10),
        httpx.delete(f"{gw.base_url}/responses/resp_nope", timeout=10),
        httpx.get(f"{gw.base_url}/responses/x/input_items", params={"limit": 0}, timeout=10),
    ]
    assert [a.status_code for a in answers] == [400, 400, 404, 404, 404, 400]
    assert [error_body_errors(json.loads(a.content)) for a in answers] == [[]] * 6
