"""Bad input gets a clear OpenAI error, never a crash, a hang or a corrupt record."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.gateway import running_gateway
from tests.support.server import TestGateway, audit_env, gateway


@pytest.fixture(scope="module")
def gw() -> Iterator[TestGateway]:
    with gateway(audit_env(AUDITGATE_MAX_BODY_BYTES="4096")) as g:
        yield g


def post(gw: TestGateway, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/chat/completions",
        content=content,
        headers={"content-type": "application/json", **headers},
        timeout=10,
    )


@pytest.mark.parametrize(
    ("content", "param", "code", "fragment"),
    [
        (b'{"model": "mock", "messages": [', None, "invalid_json", "could not parse the JSON"),
        (  # deeper than msgspec (the interpreter's recursion limit) decodes: was a 500
            b'{"model": "mock", "messages": [{"role": "user"}], "x": '
            + b"[" * 1_500  # this gateway's body limit is 4 KiB
            + b"]" * 1_500
            + b"}",
            None,
            "invalid_json",
            "nested too deeply",
        ),
        (b'["not", "an", "object"]', None, "invalid_json", "must be a JSON object"),
        (
            b'{"model": "mock", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
            None,
            "invalid_encoding",
            "not valid UTF-8",
        ),
        (b'{"model": "mock"}', "messages", "missing_required_parameter", "messages"),
        (
            b'{"messages": [{"role": "user", "content": "x"}]}',
            "model",
            "missing_required_parameter",
            "model",
        ),
        (
            b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}',
            "model",
            "invalid_type",
            "expected `str`",
        ),
        (b'{"model": "mock", "messages": "hi"}', "messages", "invalid_type", "expected `array`"),
        (b'{"model": "mock", "messages": []}', "messages", "invalid_value", "at least one"),
        (
            b'{"model": "mock", "messages": [{"role": "user"}], "n": "2"}',
            "n",
            "invalid_type",
            "expected `int",
        ),
        (b'{"model": "mock", "messages": [{"role": "user"}], "n": 0}', "n", "invalid_value", "'n'"),
        (
            b'{"model": "mock", "messages": [{"role": "user"}], "stream": "yes"}',
            "stream",
            "invalid_type",
            "expected `bool",
        ),
        (
            b'{"model": "mock", "messages": [{"role": "user"}], "max_tokens": -1}',
            "max_tokens",
            "invalid_value",
            "max_tokens",
        ),
        (
            b'{"model": "mock", "messages": [{"role": "user"}], '
            b'"stream_options": {"include_usage": true}}',
            "stream_options",
            "invalid_value",
            "only allowed when 'stream'",
        ),
        (
            b'{"model": "mock", "messages": [{"role": "user"}], "metadata": {"k": 1}}',
            "metadata",
            "invalid_type",
            "expected `str`",
        ),
        (
            b'{"model": "mock", "messages": [{"role": 7}]}',
            "messages[0].role",
            "invalid_type",
            "expected `str`",
        ),
        (
            b'{"model": "mock", "messages": [{"role": "user", "content": "a"}, '
            b'{"role": "user", "content": 5}]}',
            "messages[1].content",
            "invalid_type",
            "expected `str | array | null`",
        ),
    ],
)
def test_malformed_requests_get_400(
    gw: TestGateway, content: bytes, param: str | None, code: str, fragment: str
) -> None:
    """Each kind of malformed body is a 400 naming the parameter and the problem."""
    response = post(gw, content)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert fragment in error["message"]
    assert response.headers["x-request-id"]


def test_too_many_metadata_pairs_is_a_400(gw: TestGateway) -> None:
    """Metadata follows OpenAI's limits (16 pairs)."""
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        c.chat.completions.create(
            model="mock",
            messages=[{"role": "user", "content": "x"}],
            store=True,
            metadata={f"k{i}": "v" for i in range(17)},
        )
    assert caught.value.param == "metadata"


def test_oversized_body_gets_413(gw: TestGateway) -> None:
    """A body over the configured limit is refused, declared length or not."""
    big = b'{"model": "mock", "messages": [{"role": "user", "content": "' + b"x" * 8000 + b'"}]}'
    assert post(gw, big).status_code == 413

    def chunks() -> Iterator[bytes]:
        yield big[:3000]
        yield big[3000:]

    response = httpx.post(gw.base_url + "/chat/completions", content=chunks(), timeout=10)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_bad_input_leaves_no_record_and_the_server_alive(gw: TestGateway) -> None:
    """After every kind of bad input, the next good request is served and recorded intact."""
    before = len(gw.sink.records)
    post(gw, b"\x00\x01garbage")
    post(gw, b"{" * 10000)
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    completion = c.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "still there?"}], store=True
    )
    records = gw.records(before + 1)
    assert records[-1].response is not None
    assert records[-1].response["id"] == completion.id


def test_unknown_route_and_method_are_openai_errors(gw: TestGateway) -> None:
    """Routes that do not exist answer with OpenAI's error JSON."""
    response = httpx.get(gw.url + "/v1/nothing")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    response = httpx.put(gw.base_url + "/models")
    assert response.status_code == 405
    assert "error" in response.json()


@pytest.mark.parametrize("stream", [False, True])
def test_the_deepest_body_accepted_is_stored_and_readable(tmp_path: Path, stream: bool) -> None:
    """Nesting: a body the gateway accepts has its record spooled, stored and read back; one
    nested deeper is a 400 — never a 500 (the record nests a level deeper than the body and
    is encoded on a deeper stack than the body was decoded: it used to fail there)."""
    env = {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "sqlite",
        "DYN_AUDIT_SQLITE_PATH": str(tmp_path / "audit.db"),
        "DYN_AUDIT_DURABILITY": "durable",
        "DYN_AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
    }
    with running_gateway(env, log_dir=tmp_path) as gw, httpx.Client(timeout=30) as http:

        def send(depth: int) -> httpx.Response:
            body = (
                b'{"model": "mock", "store": true, "stream": %s, "messages": [{"role": "user", '
                b'"content": "deep %d"}], "x": '
                % (b"true" if stream else b"false", depth)
                + b"[" * depth
                + b"]" * depth
                + b"}"
            )
            return http.post(gw.base_url + "/chat/completions", content=body)

        low, high = 100, 5_000  # accepted, refused: bisect to the boundary
        first = send(low)
        assert first.status_code == 200
        deepest = first.headers["x-request-id"]  # of the deepest body answered 200
        refused = send(high)
        assert refused.status_code == 400 and "nested too deeply" in refused.text, refused.text
        while high - low > 1:
            middle = (low + high) // 2
            response = send(middle)
            assert response.status_code in (200, 400), (middle, response.text)
            if response.status_code == 200:
                low, deepest = middle, response.headers["x-request-id"]
            else:
                high = middle
        assert low > 800  # ~920 on Python 3.11: every realistic body is far below
        request_id = deepest
        api = openai.OpenAI(base_url=gw.base_url, api_key="unused")
        deadline = time.monotonic() + 10
        while True:
            try:
                stored = api.chat.completions.retrieve("chatcmpl-" + request_id)
                break
            except openai.NotFoundError:
                assert time.monotonic() < deadline, "the deepest accepted record was not stored"
                time.sleep(0.05)
        assert stored.id == "chatcmpl-" + request_id
        assert [m.content for m in api.chat.completions.messages.list(stored.id)] == [f"deep {low}"]
    assert "Traceback" not in gw.log()
