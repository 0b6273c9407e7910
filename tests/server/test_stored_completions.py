"""OpenAI's stored-completions API through the real server and the official SDK, on both stores."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from auditgate.audit.record import AuditRecord, Envelope
from auditgate.config import Settings
from auditgate.sinks import build_sinks
from auditgate.sinks.sqlite import SqliteSink
from tests.store.records import make_record
from tests.support.server import TestGateway, audit_env, gateway

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 10 + 10?"},
]


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, workdir: str) -> dict[str, str]:
    """Settings for a gateway whose sink and store are SQLite or PostgreSQL (a fresh database)."""
    env = audit_env(AUDITGATE_MODELS="mock,other")
    if request.param == "sqlite":
        env.update(DYN_AUDIT_SINKS="sqlite", DYN_AUDIT_SQLITE_PATH=f"{workdir}/store.db")
    else:
        dsn = request.getfixturevalue("pg_dsn")
        env.update(DYN_AUDIT_SINKS="postgres", DYN_AUDIT_POSTGRES_URL=dsn)
    return env


def store_gateway(env: dict[str, str]) -> contextlib.AbstractContextManager[TestGateway]:
    """A gateway whose configured store sink runs next to the test's memory sink."""
    return gateway(env, sinks=build_sinks(Settings.from_env(env).audit))


@pytest.fixture
def gw(store_env: dict[str, str]) -> Iterator[TestGateway]:
    with store_gateway(store_env) as g:
        yield g


def client(g: TestGateway, key: str = "sk-test-not-a-secret") -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0)


def dump(model: Any) -> dict[str, Any]:
    """An SDK model as the JSON the server sent."""
    return json.loads(model.model_dump_json(exclude_unset=True))


def wait_listed(api: openai.OpenAI, count: int, timeout: float = 10.0) -> None:
    """Wait until the store lists ``count`` completions (the store sink lags the memory sink)."""
    deadline = time.monotonic() + timeout
    while len(api.chat.completions.list(limit=100).data) < count:
        assert time.monotonic() < deadline, "the store did not catch up"
        time.sleep(0.01)


def ordered(records: list[AuditRecord], *, full_only: bool = True) -> list[str]:
    """Response ids in the API's order: by (created_at, request_id)."""
    chosen = [r for r in records if r.mode == "full" or not full_only]
    chosen.sort(key=lambda r: (r.created_at, r.request_id))
    return [r.response["id"] for r in chosen]  # type: ignore[index]


def create(api: openai.OpenAI, model: str = "mock", **metadata: str) -> Any:
    return api.chat.completions.create(
        model=model, messages=MESSAGES, store=True, metadata=metadata or None
    )


def test_list_pages_in_both_orders_with_filters(gw: TestGateway) -> None:
    """Auto-pagination walks every stored completion in both orders; filters AND together."""
    api = client(gw)
    for i in range(7):
        create(api, "other" if i == 3 else "mock", batch="ab"[i % 2], n=str(i))
    api.chat.completions.create(model="mock", messages=MESSAGES)  # not stored: usage_only
    records = gw.records(8)
    wait_listed(api, 7)
    asc = ordered(records)
    by_n = {r.metadata.get("n"): r.response["id"] for r in records if r.mode == "full"}  # type: ignore[index]
    page = api.chat.completions.list(limit=3)
    walked_asc = [c.id for c in api.chat.completions.list(limit=2)]
    walked_desc = [c.id for c in api.chat.completions.list(limit=2, order="desc")]
    batch_a = [c.id for c in api.chat.completions.list(metadata={"batch": "a"}, limit=1)]
    a_and_n2 = [c.id for c in api.chat.completions.list(metadata={"batch": "a", "n": "2"})]
    other = [c.id for c in api.chat.completions.list(model="other")]
    assert (asc[:3], asc[0], asc[2], True) == (
        [c.id for c in page.data],
        page.first_id,  # type: ignore[attr-defined]
        page.last_id,  # type: ignore[attr-defined]
        page.has_more,
    )
    assert (asc, asc[::-1]) == (walked_asc, walked_desc)
    expected_a = [i for i in asc if i in {by_n[str(n)] for n in (0, 2, 4, 6)}]
    assert (expected_a, [by_n["2"]], [by_n["3"]]) == (batch_a, a_and_n2, other)


def test_pagination_survives_new_records(gw: TestGateway) -> None:
    """A cursor taken before new completions arrive still yields the rest, then the new ones."""
    api = client(gw)
    for _ in range(3):
        create(api)
    wait_listed(api, 3)
    first = api.chat.completions.list(limit=2)
    for _ in range(2):
        create(api)
    records = gw.records(5)
    wait_listed(api, 5)
    rest = api.chat.completions.list(limit=100, after=first.data[-1].id)
    assert ordered(records)[2:] == [c.id for c in rest.data]


def test_retrieve_is_the_response_plus_stored_fields(gw: TestGateway) -> None:
    """retrieve returns the completion the client saw plus metadata and echoed parameters."""
    api = client(gw)
    created = api.chat.completions.create(
        model="mock", messages=MESSAGES, store=True, metadata={"k": "v"}, seed=7, temperature=0.5
    )
    (record,) = gw.records(1)
    wait_listed(api, 1)
    got = api.chat.completions.retrieve(created.id)
    expected = dump(created) | {
        "metadata": {"k": "v"},
        "request_id": record.request_id,
        "tool_choice": None,
        "tools": None,
        "seed": 7,
        "temperature": 0.5,
        "top_p": None,
        "presence_penalty": None,
        "frequency_penalty": None,
        "response_format": None,
        "service_tier": dump(created).get("service_tier"),
        "input_user": None,
    }
    assert expected == dump(got)


def test_messages_list_pages_in_both_orders(gw: TestGateway) -> None:
    """messages.list returns the request messages with ids <id>-<n>, paged both ways."""
    api = client(gw)
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": "20"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "and "}, {"type": "text", "text": "10 + 11?"}],
        },
    ]
    created = api.chat.completions.create(model="mock", messages=messages, store=True)  # type: ignore[arg-type]
    wait_listed(api, 1)
    asc = list(api.chat.completions.messages.list(created.id, limit=3))
    desc = list(api.chat.completions.messages.list(created.id, limit=3, order="desc"))
    ids = [f"{created.id}-{n}" for n in range(4)]
    expected_last = {
        "id": ids[3],
        "role": "user",
        "content": "and 10 + 11?",
        "content_parts": messages[3]["content"],
        "refusal": None,
    }
    assert (ids, ids[::-1]) == ([m.id for m in asc], [m.id for m in desc])
    assert (
        {"id": ids[0], "content_parts": None, "refusal": None, **MESSAGES[0]},
        expected_last,
    ) == (
        dump(asc[0]),
        dump(asc[3]),
    )


def test_update_replaces_metadata(gw: TestGateway) -> None:
    """update replaces the metadata, and metadata filters see the new value only."""
    api = client(gw)
    created = create(api, tag="old")
    wait_listed(api, 1)
    updated = api.chat.completions.update(created.id, metadata={"tag": "new", "x": "\u00e9"})
    new = [c.id for c in api.chat.completions.list(metadata={"tag": "new"})]
    old = [c.id for c in api.chat.completions.list(metadata={"tag": "old"})]
    got = api.chat.completions.retrieve(created.id).metadata
    assert ({"tag": "new", "x": "\u00e9"}, [created.id], [], updated.metadata) == (
        got,
        new,
        old,
        {"tag": "new", "x": "\u00e9"},
    )


def test_delete_then_404(gw: TestGateway) -> None:
    """delete answers chat.completion.deleted; afterwards the id is a 404 and is not listed."""
    api = client(gw)
    created, kept = create(api), create(api)
    wait_listed(api, 2)
    deleted = api.chat.completions.delete(created.id)
    errors = []
    for call in (api.chat.completions.retrieve, api.chat.completions.delete):
        with pytest.raises(openai.NotFoundError) as info:
            call(created.id)
        errors.append(info.value.status_code)
    listed = [c.id for c in api.chat.completions.list()]
    expected = {"id": created.id, "object": "chat.completion.deleted", "deleted": True}
    assert (expected, [404, 404], [kept.id]) == (dump(deleted), errors, listed)


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    [
        ("GET", "/v1/chat/completions?limit=0", None, "limit"),
        ("GET", "/v1/chat/completions?limit=101", None, "limit"),
        ("GET", "/v1/chat/completions?limit=x", None, "limit"),
        ("GET", "/v1/chat/completions?order=up", None, "order"),
        ("GET", "/v1/chat/completions?after=chatcmpl-nope", None, "after"),
        ("GET", "/v1/chat/completions/{id}/messages?limit=0", None, "limit"),
        ("GET", "/v1/chat/completions/{id}/messages?order=up", None, "order"),
        ("GET", "/v1/chat/completions/{id}/messages?after=nope", None, "after"),
        ("POST", "/v1/chat/completions/{id}", {"metadata": {"k": "v"}, "model": "x"}, "model"),
        ("POST", "/v1/chat/completions/{id}", {}, "metadata"),
        ("POST", "/v1/chat/completions/{id}", {"metadata": {"k": 1}}, "metadata"),
        ("POST", "/v1/chat/completions/{id}", {"metadata": {"k" * 65: "v"}}, "metadata"),
        ("POST", "/v1/chat/completions/{id}", {"metadata": {"k": "v" * 513}}, "metadata"),
        (
            "POST",
            "/v1/chat/completions/{id}",
            {"metadata": {str(i): "v" for i in range(17)}},
            "metadata",
        ),
    ],
)
def test_invalid_parameters_are_400(
    gw: TestGateway, method: str, path: str, body: Any, param: str
) -> None:
    """Every invalid parameter is an OpenAI-style 400 naming the parameter."""
    api = client(gw)
    created = create(api)
    wait_listed(api, 1)
    response = httpx.request(method, gw.url + path.format(id=created.id), json=body, timeout=10)
    error = response.json()["error"]
    assert (400, "invalid_request_error", param) == (
        response.status_code,
        error["type"],
        error["param"],
    )


@pytest.mark.parametrize(
    "content",
    [
        b"{",
        b'{"metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"[]",
        b'{"metadata": {"k": "\\ud800"}}',
    ],
    ids=["malformed", "nested-too-deeply", "not-an-object", "lone-surrogate"],
)
def test_update_with_an_unreadable_body_is_400(gw: TestGateway, content: bytes) -> None:
    """An update body that is not a readable JSON object is a 400, never a 500, and changes
    nothing (a lone surrogate, once stored, made every later read of the list a 500)."""
    api = client(gw)
    created = create(api)
    wait_listed(api, 1)
    response = httpx.post(gw.url + f"/v1/chat/completions/{created.id}", content=content)
    error = response.json()["error"]
    assert (response.status_code, error["type"]) == (400, "invalid_request_error")
    assert api.chat.completions.retrieve(created.id).metadata == {}
    assert [c.id for c in api.chat.completions.list()] == [created.id]


def test_no_store_is_a_clear_400(workdir: str) -> None:
    """Without a store every stored-completions call is a 400 saying how to configure one."""
    with gateway(audit_env()) as g, pytest.raises(openai.BadRequestError) as info:
        client(g).chat.completions.list()
    assert (info.value.code, info.value.status_code) == ("store_not_configured", 400)


async def test_store_url_reads_a_store_written_elsewhere(workdir: str) -> None:
    """AUDITGATE_STORE_URL serves a store another process's sink wrote (no local store sink)."""
    path = f"{workdir}/elsewhere.db"
    record = make_record(0)
    sink = SqliteSink(path)
    await sink.open()
    await sink.write([Envelope(record)])
    await sink.close()

    def listed() -> list[str]:
        with gateway(audit_env(AUDITGATE_STORE_URL=f"sqlite:///{path}")) as g:
            return [c.id for c in client(g).chat.completions.list()]

    assert [record.response["id"]] == await asyncio.to_thread(listed)  # type: ignore[index]


def test_unreachable_postgres_store_is_503() -> None:
    """A PostgreSQL store that refuses connections answers 503 and the gateway keeps running."""
    env = audit_env(AUDITGATE_STORE_URL="postgresql://postgres@127.0.0.1:1/nowhere")
    with gateway(env) as g:
        with pytest.raises(openai.InternalServerError) as info:
            client(g).chat.completions.list()
        health = httpx.get(g.url + "/health", timeout=10).status_code
    assert (info.value.status_code, info.value.type, health) == (503, "server_error", 200)
