"""The stored-completions API's parameters: any text, on either store, is answered alike.

Two in-process gateways serve the same records, one from a SQLite file and one from a PostgreSQL
database of this module's own, both started once for the module.  Every request goes to both,
through the official SDK (or raw HTTP for percent-escapes the SDK would encode), and both must
answer the same way: never a 5xx, every 4xx OpenAI's error JSON, and the same status and body.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from auditgate.audit.record import AuditRecord, Envelope
from auditgate.sinks.postgres import PostgresSink
from auditgate.sinks.sqlite import SqliteSink
from tests.conftest import PG_ADMIN_DSN
from tests.store.records import make_record, nul_record
from tests.support.postgres import create_database, drop_database
from tests.support.server import TestGateway, gateway

KEPT = 5
"""Records 0-4 are read and updated; the others are there to be deleted."""
RECORDS: list[AuditRecord] = [
    *(
        make_record(i, model="mock" if i % 2 else "other", metadata={"team": "ab"[i % 2]})
        for i in range(KEPT - 1)
    ),
    nul_record(KEPT - 1),  # NUL in its model and metadata: stored scrubbed, read back exactly
    *(make_record(i) for i in range(KEPT, KEPT + 4)),
]
IDS = [str(r.response["id"]) for r in RECORDS]  # type: ignore[index]
MESSAGE_IDS = [f"{i}-{n}" for i in IDS[:KEPT] for n in range(2)]

EXAMPLES = 100
"""Examples per property: a few seconds each on a loaded two-core machine."""
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None)


@dataclasses.dataclass
class Stores:
    """The two gateways, an SDK client for each, and an HTTP client for raw requests."""

    gateways: dict[str, TestGateway]
    clients: dict[str, openai.OpenAI]
    http: httpx.Client


async def _fill(sink: SqliteSink | PostgresSink) -> None:
    await sink.open()
    try:
        await sink.write([Envelope(r) for r in RECORDS])
    finally:
        await sink.close()


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    """Gateways over a SQLite file and a PostgreSQL database holding :data:`RECORDS`."""
    path = Path(tmp_path_factory.mktemp("params")) / "store.db"
    name = f"ag_test_{uuid.uuid4().hex[:12]}"
    dsn = asyncio.run(create_database(PG_ADMIN_DSN, name))
    try:
        asyncio.run(_fill(SqliteSink(str(path))))
        asyncio.run(_fill(PostgresSink(dsn)))
        with (
            gateway({"AUDITGATE_STORE_URL": f"sqlite:///{path}"}) as lite,
            gateway({"AUDITGATE_STORE_URL": dsn}) as pg,
        ):
            gateways = {"sqlite": lite, "postgres": pg}
            clients = {
                k: openai.OpenAI(base_url=g.base_url, api_key="sk-test", max_retries=0)
                for k, g in gateways.items()
            }
            with httpx.Client(timeout=10) as http:
                try:
                    yield Stores(gateways, clients, http)
                finally:
                    for client in clients.values():
                        client.close()
    finally:
        asyncio.run(drop_database(PG_ADMIN_DSN, name))


Outcome = tuple[int, Any]
"""A response's status and its JSON body."""


ERROR_SHAPES = [
    {"error": {"message": "str", "type": "str", "param": param, "code": code}}
    for param in ("str", "NoneType")
    for code in ("str", "NoneType")
]
"""OpenAI's error JSON, as the types of its fields."""


def outcome(response: Any) -> Outcome:
    """The status and JSON body of an httpx (or the SDK's httpx2) response; a 4xx must be
    OpenAI's error JSON, a 5xx fails the test."""
    assert response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json", response.headers
    body = response.json()
    if response.status_code >= 400:
        shape = {"error": {k: type(v).__name__ for k, v in body["error"].items()}}
        assert shape in ERROR_SHAPES, body
    return response.status_code, body


def via_sdk(call: Callable[[openai.OpenAI], Any]) -> Callable[[openai.OpenAI], Outcome]:
    """``call`` made with ``with_raw_response`` as the SDK's user sees it: a response or an
    ``APIStatusError``; the SDK refusing the input itself is an outcome too."""

    def run(api: openai.OpenAI) -> Outcome:
        try:
            return outcome(call(api).http_response)
        except openai.APIStatusError as exc:
            return outcome(exc.response)
        except ValueError as exc:  # the SDK's own refusal: an empty id, an id ".."
            return -1, type(exc).__name__

    return run


def both(stores: Stores, call: Callable[[openai.OpenAI], Outcome]) -> Outcome:
    """The outcome of ``call`` on each store; they must be equal."""
    lite, pg = (call(stores.clients[k]) for k in ("sqlite", "postgres"))
    assert lite == pg
    return lite


def _long(char: str, size: int) -> str:
    return char * size


# Text of every kind, NUL included (the SDK and HTTP carry it as %00).  Lone surrogates are not
# generated: no URL or JSON body encodes them (the SDK raises before sending); the raw-escape
# test below sends their UTF-8 look-alikes.
TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="\x00\ufffd%/?#&=[] .é🚀a", max_size=12),
    st.sampled_from(["%00", "%ED%A0%80", "%zz", "%", "%2F", "chatcmpl-", "\ufffd"]),
    st.builds(_long, st.characters(codec="utf-8"), st.integers(200, 3000)),
)
ANY = st.none() | TEXT
LIMIT = st.none() | st.integers(-5, 150) | TEXT
ORDER = st.none() | st.sampled_from(["asc", "desc"]) | TEXT
METADATA = st.none() | st.dictionaries(
    st.sampled_from(["team", "k\ufffd", "plain"]) | TEXT,
    st.sampled_from(["a", "b", "ok", "v\ufffd"]) | TEXT,
    max_size=3,
)


def given_or_omitted(**params: Any) -> dict[str, Any]:
    """The SDK's keyword arguments: a ``None`` parameter is left out of the request."""
    return {k: v for k, v in params.items() if v is not None}


@PROPERTY
@given(
    model=ANY | st.sampled_from(["mock", "other"]),
    after=ANY | st.sampled_from(IDS),
    limit=LIMIT,
    order=ORDER,
    metadata=METADATA,
)
@example(model="\x00", after=None, limit=None, order=None, metadata=None)
@example(model=None, after="\x00", limit=None, order=None, metadata=None)
@example(model=None, after=None, limit=None, order=None, metadata={"k": "\x00"})
@example(model=None, after=None, limit=None, order=None, metadata={"\x00": "x"})
def test_list_parameters(
    stores: Stores, model: Any, after: Any, limit: Any, order: Any, metadata: Any
) -> None:
    """Any model, after, limit, order and metadata filter: both stores answer alike, no 5xx."""
    params = given_or_omitted(model=model, after=after, limit=limit, order=order)
    if metadata is not None:
        params["metadata"] = metadata
    both(stores, via_sdk(lambda api: api.chat.completions.with_raw_response.list(**params)))


ID = TEXT | st.sampled_from(IDS[:KEPT])


@PROPERTY
@given(completion_id=ID)
@example(completion_id="a\x00b")
def test_retrieve_id(stores: Stores, completion_id: str) -> None:
    """Any id: both stores answer a retrieve alike (a 404 for an id no completion has)."""
    both(
        stores,
        via_sdk(lambda api: api.chat.completions.with_raw_response.retrieve(completion_id)),
    )


@PROPERTY
@given(
    completion_id=ID,
    after=ANY | st.sampled_from(MESSAGE_IDS),
    limit=LIMIT,
    order=ORDER,
)
@example(completion_id="a\x00b", after=None, limit=None, order=None)
def test_messages_parameters(
    stores: Stores, completion_id: str, after: Any, limit: Any, order: Any
) -> None:
    """Any id, after, limit and order: both stores list a completion's messages alike."""
    params = given_or_omitted(after=after, limit=limit, order=order)
    both(
        stores,
        via_sdk(
            lambda api: api.chat.completions.messages.with_raw_response.list(
                completion_id, **params
            )
        ),
    )


@PROPERTY
@given(completion_id=ID, metadata=st.dictionaries(TEXT, TEXT, max_size=3))
@example(completion_id="a\x00b", metadata={"k": "v"})
@example(completion_id=IDS[0], metadata={"k\x00": "v\x00"})
def test_update_id_and_metadata(stores: Stores, completion_id: str, metadata: Any) -> None:
    """Any id and metadata: both stores answer an update alike, and store the same metadata."""
    updated = both(
        stores,
        via_sdk(
            lambda api: api.chat.completions.with_raw_response.update(
                completion_id, metadata=metadata
            )
        ),
    )
    if updated[0] == 200:
        assert updated[1]["metadata"] == metadata


@PROPERTY
@given(completion_id=TEXT | st.sampled_from(IDS[KEPT:]))
@example(completion_id="a\x00b")
def test_delete_id(stores: Stores, completion_id: str) -> None:
    """Any id: both stores answer a delete alike (deleting the same completions)."""
    both(stores, via_sdk(lambda api: api.chat.completions.with_raw_response.delete(completion_id)))


RAW = ["%00", "a%00b", "%ED%A0%80", "%ED%B2%A9x", "%FF", "%C0%80", "%", "%zz", "%25", "%E2%82"]
"""Percent-escapes sent as they are: NUL, surrogates and invalid UTF-8 spelt in UTF-8 bytes."""
TARGETS = [
    "/v1/chat/completions?model={}",
    "/v1/chat/completions?after={}",
    "/v1/chat/completions?limit={}",
    "/v1/chat/completions?order={}",
    "/v1/chat/completions?metadata[team]={}",
    "/v1/chat/completions?metadata[{}]=a",
    "/v1/chat/completions/{}",
    "/v1/chat/completions/{}/messages",
    f"/v1/chat/completions/{IDS[0]}/messages?after={{}}",
    f"/v1/chat/completions/{IDS[0]}/messages?limit={{}}",
    f"/v1/chat/completions/{IDS[0]}/messages?order={{}}",
]


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
@pytest.mark.parametrize("escape", RAW)
def test_raw_percent_escapes(stores: Stores, method: str, escape: str) -> None:
    """A raw percent-escape in any parameter or id gets the same answer from both stores,
    never a 5xx (PostgreSQL answered NUL with a plain-text 500)."""
    targets = [t for t in TARGETS if method == "GET" or t == "/v1/chat/completions/{}"]
    body = {"metadata": {"k": "v"}} if method == "POST" else None

    def call(target: str) -> Callable[[openai.OpenAI], Outcome]:
        def run(api: openai.OpenAI) -> Outcome:
            url = str(api.base_url).removesuffix("/v1/") + target.format(escape)
            return outcome(stores.http.request(method, url, json=body))

        return run

    for target in targets:
        both(stores, call(target))


def _error(status: int, message: str, param: str, code: str | None) -> Outcome:
    kind = "invalid_request_error"
    return status, {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _filter_error(param: str) -> Outcome:
    message = f"Invalid '{param}': NUL characters and unpaired surrogates cannot be filtered on."
    return _error(400, message, param, "invalid_value")


_NOT_FOUND = _error(404, "No chat completion found with id 'a\x00b'.", "completion_id", None)
_BAD_AFTER = _error(
    400, "Invalid 'after': no object with id '\x00' in this list.", "after", "invalid_value"
)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda c: c.with_raw_response.list(model="\x00"), _filter_error("model")),
        (lambda c: c.with_raw_response.list(metadata={"k": "\x00"}), _filter_error("metadata")),
        (lambda c: c.with_raw_response.list(metadata={"\x00": "x"}), _filter_error("metadata")),
        (lambda c: c.with_raw_response.list(after="\x00"), _BAD_AFTER),
        (lambda c: c.with_raw_response.retrieve("a\x00b"), _NOT_FOUND),
        (lambda c: c.messages.with_raw_response.list("a\x00b"), _NOT_FOUND),
        (lambda c: c.with_raw_response.update("a\x00b", metadata={"k": "v"}), _NOT_FOUND),
        (lambda c: c.with_raw_response.delete("a\x00b"), _NOT_FOUND),
    ],
    ids=[
        "model",
        "metadata-value",
        "metadata-key",
        "after",
        "retrieve",
        "messages",
        "update",
        "delete",
    ],
)
def test_nul_answers(stores: Stores, call: Callable[[Any], Any], expected: Outcome) -> None:
    """A NUL in a filter is a 400 naming it, in ``after`` the 400 of an unknown cursor, in an id
    the 404 of an unknown id — on both stores (PostgreSQL answered a plain-text 500)."""
    assert expected == both(stores, via_sdk(lambda api: call(api.chat.completions)))


@pytest.mark.parametrize("limit", [" 5", "1_0", "\u0665", "+5", "9" * 5000, "5.0"])
def test_limit_is_ascii_digits(stores: Stores, limit: str) -> None:
    """``limit`` is 1-100 in ASCII digits: what else int() would read (spaces, underscores,
    other scripts' digits) is a 400 naming ``limit``, on both stores."""
    message = f"Invalid 'limit': expected an integer between 1 and 100, got {limit[:80]!r}."
    expected = _error(400, message, "limit", "invalid_value")
    assert expected == both(
        stores, via_sdk(lambda api: api.chat.completions.with_raw_response.list(limit=limit))
    )
