"""Every response shape the gateway produces conforms to OpenAI's published specification.

Each body is what the real server sent (the official SDK's raw responses, or plain HTTP where no
SDK call exists), validated against the schema the pinned specification gives that operation:
chat completions, every stream chunk, the stored-completion list / retrieve / update / delete /
messages objects on both stores, the models list, and error bodies (``ErrorResponse``), in
stream error events too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from auditgate.config import Settings
from auditgate.sinks import build_sinks
from tests.conformance.spec import error_body_errors, response_errors
from tests.support.server import TestGateway, audit_env, gateway
from tests.support.upstream import Behaviour, upstream_in_thread

MESSAGES: list[Any] = [
    {"role": "developer", "content": "Be brief."},
    {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
    {"role": "user", "content": "What time is it in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
     "function": {"name": "clock", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "content": "12:00", "tool_call_id": "call_1"},
    {"role": "user", "content": [{"type": "text", "text": "And "}, {"type": "text", "text": "?"}]},
]  # fmt: skip
CLOCK = {"type": "function", "function": {"name": "clock", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}},
    "required": ["city"]}}}  # fmt: skip
SEARCH = {"type": "function", "function": {"name": "search", "strict": True, "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"],
    "additionalProperties": False}}}  # fmt: skip
PERSON = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": {
    "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"], "additionalProperties": False}}}  # fmt: skip
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "n2-stop": {"n": 2, "stop": ["e"]},
    "length": {"max_completion_tokens": 3},
    "parallel-tools": {"tools": [CLOCK, SEARCH], "seed": 1},
    "named-tool": {"tools": [CLOCK, SEARCH], "tool_choice": {"type": "function",
                                                             "function": {"name": "search"}}},
    "reasoning": {"reasoning_effort": "low"},
    "logprobs": {"logprobs": True, "top_logprobs": 3},
    "json-schema": {"response_format": PERSON},
    "json-object": {"response_format": {"type": "json_object"}},
    "service-tier": {"service_tier": "auto", "temperature": 0.2, "top_p": 0.9},
}  # fmt: skip


def client(g: TestGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key="sk-test-not-a-secret", max_retries=0)


@pytest.fixture(params=["sqlite", "postgres"])
def stored(request: pytest.FixtureRequest, workdir: str) -> Iterator[TestGateway]:
    """A mock gateway whose store is SQLite or PostgreSQL (a fresh database)."""
    env = audit_env()
    if request.param == "sqlite":
        env.update(DYN_AUDIT_SINKS="sqlite", DYN_AUDIT_SQLITE_PATH=f"{workdir}/store.db")
    else:
        dsn = request.getfixturevalue("pg_dsn")
        env.update(DYN_AUDIT_SINKS="postgres", DYN_AUDIT_POSTGRES_URL=dsn)
    with gateway(env, sinks=build_sinks(Settings.from_env(env).audit)) as g:
        yield g


def create(api: openai.OpenAI, **body: Any) -> dict[str, Any]:
    """The JSON body the server sent for a non-stream chat completion."""
    raw = api.chat.completions.with_raw_response.create(model="mock", messages=MESSAGES, **body)
    return raw.http_response.json()  # type: ignore[no-any-return]


def stream_events(api: openai.OpenAI, **body: Any) -> list[Any]:
    """Every ``data:`` event of a streamed chat completion, decoded (``[DONE]`` left out)."""
    events = []
    with api.chat.completions.with_streaming_response.create(
        model="mock", messages=MESSAGES, stream=True, **body
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: ") :]))
    return events


def test_chat_completions_conform() -> None:
    """Non-stream chat completions of every kind the mock makes conform to the specification."""
    with gateway() as g:
        api = client(g)
        found = {name: response_errors("createChatCompletion", create(api, **body))
                 for name, body in VARIANTS.items()}  # fmt: skip
    assert {name: [] for name in VARIANTS} == found


def test_stream_chunks_conform() -> None:
    """Every chunk of every kind of stream conforms to the specification's chunk schema."""
    with gateway() as g:
        api = client(g)
        found = {}
        for name, body in VARIANTS.items():
            options = {"stream_options": {"include_usage": True}} if name != "plain" else {}
            found[name] = sorted({
                error
                for chunk in stream_events(api, **body, **options)
                for error in response_errors(
                    "createChatCompletion", chunk, media_type="text/event-stream"
                )
            })  # fmt: skip
    assert {name: [] for name in VARIANTS} == found


def test_stored_completions_conform(stored: TestGateway) -> None:
    """list (a page, and an empty page), retrieve, update, messages and delete conform."""
    api = client(stored)
    ids = [create(api, store=True, metadata={"v": name}, **body)["id"]
           for name, body in VARIANTS.items()]  # fmt: skip
    stream_events(api, store=True, metadata={"v": "stream"}, tools=[CLOCK], logprobs=True)
    stored.records(len(ids) + 1)
    http = httpx.Client(base_url=stored.base_url, timeout=10)
    page = http.get("/chat/completions", params={"limit": 100}).json()
    deadline = time.monotonic() + 10
    while len(page["data"]) < len(ids) + 1:  # the store sink lags the memory sink
        assert time.monotonic() < deadline, "the store did not catch up"
        time.sleep(0.01)
        page = http.get("/chat/completions", params={"limit": 100}).json()
    bodies = {
        "list": ("listChatCompletions", page),
        "list-empty": ("listChatCompletions",
                       http.get("/chat/completions", params={"metadata[v]": "none"}).json()),
        "list-desc-page": ("listChatCompletions",
                           http.get("/chat/completions", params={"limit": 2, "order": "desc"})
                           .json()),
        "retrieve": ("getChatCompletion", http.get(f"/chat/completions/{ids[3]}").json()),
        "update": ("updateChatCompletion", http.post(f"/chat/completions/{ids[7]}",
                                                     json={"metadata": {"k": "v"}}).json()),
        "messages": ("getChatCompletionMessages",
                     http.get(f"/chat/completions/{ids[0]}/messages").json()),
        "messages-empty": ("getChatCompletionMessages",
                           http.get(f"/chat/completions/{ids[0]}/messages",
                                    params={"after": f"{ids[0]}-5"}).json()),
        "delete": ("deleteChatCompletion", http.delete(f"/chat/completions/{ids[1]}").json()),
    }  # fmt: skip
    http.close()
    found = {name: response_errors(op, body) for name, (op, body) in bodies.items()}
    assert ({name: [] for name in bodies}, len(ids) + 1) == (found, len(page["data"]))


def test_models_conform() -> None:
    """The models list and a model object conform."""
    with gateway(audit_env(AUDITGATE_MODELS="mock,other")) as g:
        found = [
            response_errors("listModels", httpx.get(f"{g.base_url}/models").json()),
            response_errors("retrieveModel", httpx.get(f"{g.base_url}/models/other").json()),
        ]
    assert found == [[], []]


ERRORS: dict[str, tuple[str, str, Any]] = {
    # name: (method, path, JSON body or raw bytes)
    "invalid-json": ("POST", "/chat/completions", b'{"model": '),
    "missing-messages": ("POST", "/chat/completions", {"model": "mock"}),
    "forbidden-value": ("POST", "/chat/completions",
                        {"model": "mock", "messages": MESSAGES, "temperature": 5}),
    "unknown-model": ("POST", "/chat/completions", {"model": "gpt-9", "messages": MESSAGES}),
    "too-large": ("POST", "/chat/completions", {"model": "mock", "messages": MESSAGES,
                                                "pad": "x" * 5000}),
    "unknown-stored-id": ("GET", "/chat/completions/chatcmpl-nope", None),
    "bad-limit": ("GET", "/chat/completions?limit=0", None),
    "unknown-model-object": ("GET", "/models/nope", None),
    "unknown-route": ("GET", "/nowhere", None),
    "bad-update": ("POST", "/chat/completions/chatcmpl-nope", {"title": "x"}),
}  # fmt: skip


def test_error_bodies_conform(workdir: str) -> None:
    """Every kind of 4xx the gateway answers has the specification's ErrorResponse body."""
    env = audit_env(
        AUDITGATE_MAX_BODY_BYTES="4096",
        DYN_AUDIT_SINKS="sqlite",
        DYN_AUDIT_SQLITE_PATH=f"{workdir}/store.db",
    )
    with gateway(env, sinks=build_sinks(Settings.from_env(env).audit)) as g:
        found = {}
        for name, (method, path, body) in ERRORS.items():
            raw = body if isinstance(body, bytes) else None
            response = httpx.request(
                method,
                g.base_url + path,
                content=raw,
                json=None if raw is not None else body,
                headers={"content-type": "application/json"},
                timeout=10,
            )
            found[name] = (response.status_code // 100, error_body_errors(response.json()))
    assert {name: (4, []) for name in ERRORS} == found


def test_stream_error_event_conforms() -> None:
    """An engine failure after a stream started is sent as an event with an ErrorResponse body."""
    with upstream_in_thread() as upstream:
        upstream.behaviour = Behaviour.stream_error(after=2)
        env = audit_env(AUDITGATE_ENGINE="openai", AUDITGATE_UPSTREAM_URL=upstream.base_url)
        with gateway(env) as g:
            events = stream_events(client(g))
    assert (
        [response_errors("createChatCompletion", e, media_type="text/event-stream")
         for e in events[:-1]],
        [error_body_errors(events[-1])],
    ) == ([[], []], [[]])  # fmt: skip
