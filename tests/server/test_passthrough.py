"""Pass-through behind the real server: paths the gateway does not serve reach the upstream as
they are, and its answers come back as they are (tests/support's fake upstream echoes them)."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import openai
import pytest
from starlette.applications import Starlette

from auditgate.auth.keys import add_key
from auditgate.config import Settings
from auditgate.server.app import create_app
from tests.support.gateway import free_port
from tests.support.server import TestGateway, audit_env, gateway
from tests.support.upstream import (
    Behaviour,
    Echo,
    FakeUpstream,
    pattern,
    pattern_sha256,
    upstream_in_thread,
)

PREFIX = "/vllm"
"""The fake upstream is mounted under this prefix: ``{url}/vllm/v1`` is the upstream URL."""


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with upstream_in_thread() as u:
        yield u


def upstream_env(upstream: FakeUpstream, **extra: str) -> dict[str, str]:
    env = {
        "AUDITGATE_ENGINE": "openai",
        "AUDITGATE_UPSTREAM_URL": f"{upstream.url}{PREFIX}/v1",
        "DYN_AUDIT_FORCE_LOGGING": "1",  # were a pass-through audited, it would show
    }
    return audit_env(**(env | extra))


@pytest.fixture
def g(upstream: FakeUpstream) -> Iterator[TestGateway]:
    with gateway(upstream_env(upstream)) as running:
        yield running


def echo(response: httpx.Response) -> Echo:
    return msgspec.json.decode(response.content, type=Echo)


def passed(upstream: FakeUpstream) -> list[str]:
    """``METHOD path`` of every request the upstream received but its start-up model list."""
    return [f"{r.method} {r.path}" for r in upstream.received if r.path != f"{PREFIX}/v1/models"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
def test_method_path_query_and_body_reach_the_upstream(
    g: TestGateway, upstream: FakeUpstream, method: str
) -> None:
    """Method, path under the upstream's prefix, raw query and body arrive unchanged."""
    body = b'{"prompt": "caf\xc3\xa9", "n": 2}' if method != "GET" else b""
    query = "?model=m&text=a%20b&flag&x=%2F&x=2"
    response = httpx.request(method, g.url + "/v1/audio/echo" + query, content=body, timeout=10)
    assert response.status_code == 200
    seen = echo(response)
    expected = (method, f"{PREFIX}/v1/audio/echo{query}", len(body), sha256(body))
    assert (seen.method, seen.path, seen.body_bytes, seen.body_sha256) == expected


def test_head_gets_the_head_alone(g: TestGateway, upstream: FakeUpstream) -> None:
    """A HEAD request's answer has the upstream's headers, ``Content-Length`` too, no body."""
    got = httpx.get(g.url + "/echo", timeout=10)
    head = httpx.head(g.url + "/echo", timeout=10)
    length = str(len(got.content) + 1)  # the method's name is one letter longer
    assert (head.status_code, head.headers["content-length"], head.content) == (200, length, b"")
    assert passed(upstream) == ["GET /vllm/echo", "HEAD /vllm/echo"]


def test_paths_at_the_root_and_unserved_methods_of_served_paths(
    g: TestGateway, upstream: FakeUpstream
) -> None:
    """``/tokenize``-like paths go to the upstream's root (its URL without ``/v1``); a method a
    gateway route does not take (``DELETE /v1/models/x``) is passed through too."""
    root = httpx.post(g.url + "/echo", json={"prompt": "hi"}, timeout=10)
    model = httpx.delete(g.url + "/v1/models/echo", timeout=10)
    assert [echo(root).path, echo(model).path] == [f"{PREFIX}/echo", f"{PREFIX}/v1/models/echo"]


def test_the_gateway_routes_are_not_shadowed(g: TestGateway, upstream: FakeUpstream) -> None:
    """/health, /metrics, /v1/models, stored completions and the audited endpoints stay the
    gateway's own: each audited call yields its record, which a pass-through never would."""
    api = openai.OpenAI(base_url=g.base_url, api_key="sk-client", max_retries=0)
    completion = api.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "hi"}]
    )
    api.completions.create(model="fake-model", prompt="hi")
    api.embeddings.create(model="fake-model", input="hi")
    endpoints = sorted(record.endpoint for record in g.records(3))
    statuses = [
        httpx.get(g.url + "/health", timeout=10).status_code,
        httpx.get(g.url + "/metrics", timeout=10).status_code,
        httpx.get(g.base_url + "/models", timeout=10).status_code,
        httpx.get(g.base_url + "/models/fake-model", timeout=10).status_code,
    ]
    stored = httpx.get(g.base_url + "/chat/completions", timeout=10)  # no store: the gateway's 400
    assert (completion.object, statuses) == ("chat.completion", [200, 200, 200, 200])
    assert "this gateway has no store" in stored.json()["error"]["message"]
    assert endpoints == ["chat.completions", "completions", "embeddings"]
    assert passed(upstream) == [
        f"POST {PREFIX}/v1/chat/completions",
        f"POST {PREFIX}/v1/completions",
        f"POST {PREFIX}/v1/embeddings",
    ]


def test_the_passthrough_route_is_the_last_one(upstream: FakeUpstream) -> None:
    """Routes are matched in order: one added after the pass-through would never be reached."""
    settings = Settings.from_env(upstream_env(upstream))
    router = create_app(settings, sinks=[]).router
    assert isinstance(router, Starlette)
    paths = [getattr(route, "path", None) for route in router.routes]
    assert (paths[-1], paths.count("/{path:path}")) == ("/{path:path}", 1)


def test_request_headers_lose_only_hop_by_hop_ones(g: TestGateway, upstream: FakeUpstream) -> None:
    """Every end-to-end header goes upstream as sent (none added); hop-by-hop ones, those that
    ``Connection`` names, ``Host``, ``Expect`` and the client's ``Authorization`` do not."""
    kept = [
        ("content-type", "application/x-custom"),
        ("x-custom", "one"),
        ("x-custom", "two"),
        ("cookie", "a=b"),
        ("x-request-id", "client-id-1"),
        ("accept-encoding", "zstd"),
    ]
    dropped = [
        ("connection", "keep-alive, X-Client-Hop"),
        ("x-client-hop", "gone"),
        ("keep-alive", "timeout=30"),
        ("te", "trailers"),
        ("proxy-authorization", "Basic cHJveHk6c2VjcmV0"),
        ("authorization", "Bearer sk-client-secret"),
    ]
    status, _, body = raw_request(g.server.port, "POST", "/echo", [*kept, *dropped], b"payload")
    host = f"127.0.0.1:{upstream.port}"
    expected = [*kept, ("content-length", "7"), ("host", host)]
    assert (status, sorted(msgspec.json.decode(body, type=Echo).headers)) == (200, sorted(expected))


def test_response_headers_lose_only_hop_by_hop_ones(g: TestGateway, upstream: FakeUpstream) -> None:
    """The upstream's headers reach the client but ``Keep-Alive`` and what its ``Connection``
    names; its status and body are relayed as they are."""
    response = httpx.get(g.url + "/echo?status=418", timeout=10)
    names = {name.lower() for name in response.headers}
    assert response.status_code == 418
    assert (response.headers["x-upstream-echo"], response.headers["set-cookie"]) == (
        "yes",
        "upstream-session=s3cr3t; Path=/",
    )
    assert names.isdisjoint({"keep-alive", "x-upstream-hop"})
    assert "x-upstream-hop" not in response.headers.get("connection", "").lower()


def test_upstream_errors_are_relayed_as_they_are(g: TestGateway, upstream: FakeUpstream) -> None:
    """An upstream 404 for a path it does not know reaches the client unchanged."""
    response = httpx.get(g.url + "/no/such/thing?q=1", timeout=10)
    expected = {
        "error": {
            "message": f"no route GET {PREFIX}/no/such/thing?q=1",
            "type": "invalid_request_error",
        }
    }
    assert (response.status_code, response.json()) == (404, expected)


def test_upstream_cookies_are_not_kept_between_clients(upstream: FakeUpstream) -> None:
    """A cookie the upstream set for one client is never sent with another's request (the
    upstream named by host name: a cookie jar ignores cookies of IP addresses)."""
    env = upstream_env(upstream, AUDITGATE_UPSTREAM_URL=f"http://localhost:{upstream.port}/v1")
    with gateway(env) as g:
        first = httpx.get(g.url + "/echo", timeout=10)
        second = httpx.get(g.url + "/echo", timeout=10)  # a new client: no cookie of its own
    assert "set-cookie" in first.headers
    assert [name for name, _ in echo(second).headers if name == "cookie"] == []


def test_the_sdk_calls_an_unserved_endpoint(g: TestGateway, upstream: FakeUpstream) -> None:
    """``client.post`` of the official SDK on a path the gateway does not serve gets the
    upstream's answer, and nothing is audited."""
    api = openai.OpenAI(base_url=g.base_url, api_key="sk-client", max_retries=0)
    answer: Any = api.post("/audio/echo", cast_to=object, body={"input": "hello"})
    assert (answer["method"], answer["path"]) == ("POST", f"{PREFIX}/v1/audio/echo")
    time.sleep(0.1)
    assert g.sink.records == []


def test_chunked_bodies_arrive_whole(g: TestGateway, upstream: FakeUpstream) -> None:
    """A chunked upstream answer reaches the client byte for byte (re-chunked by the server)."""
    size = 300_000
    with httpx.stream("GET", g.url + f"/bytes?n={size}&framing=chunked", timeout=10) as response:
        data = b"".join(response.iter_raw())
    assert (response.status_code, len(data), sha256(data)) == (200, size, pattern_sha256(size))


def test_compressed_bodies_are_relayed_compressed(g: TestGateway, upstream: FakeUpstream) -> None:
    """Nothing is decompressed on the way: the client gets the upstream's gzip bytes and
    ``Content-Encoding``, and decompresses them itself."""
    with httpx.stream("GET", g.url + "/echo?gzip=1", timeout=10) as response:
        raw = b"".join(response.iter_raw())
    seen = msgspec.json.decode(gzip.decompress(raw), type=Echo)
    assert (response.headers["content-encoding"], response.headers["content-length"]) == (
        "gzip",
        str(len(raw)),
    )
    assert seen.path == f"{PREFIX}/echo?gzip=1"


def test_dot_segments_are_refused(g: TestGateway, upstream: FakeUpstream) -> None:
    """A path that could climb out of the upstream's prefix is a 400, not forwarded."""
    status, _, body = raw_request(g.server.port, "GET", "/v1/../../admin/echo", [], b"")
    assert (status, msgspec.json.decode(body)["error"]["code"]) == (400, "invalid_path")
    assert passed(upstream) == []


def test_a_target_that_is_not_a_path_is_not_forwarded(
    g: TestGateway, upstream: FakeUpstream
) -> None:
    """``OPTIONS *`` names no path under the upstream's root: the gateway's own 404."""
    status, _, body = raw_request(g.server.port, "OPTIONS", "*", [], b"")
    assert (status, msgspec.json.decode(body)["error"]["type"]) == (404, "invalid_request_error")
    assert passed(upstream) == []


def test_mock_engine_answers_404() -> None:
    """Without an upstream there is nothing to pass through to: OpenAI's 404 error."""
    with gateway(audit_env()) as g:
        api = openai.OpenAI(base_url=g.base_url, api_key="sk-client", max_retries=0)
        with pytest.raises(openai.NotFoundError) as caught:
            api.post("/audio/speech", cast_to=object, body={"input": "hello"})
        response = httpx.get(g.url + "/tokenize", timeout=10)
    assert caught.value.body == {
        "message": "Unknown route: POST /v1/audio/speech",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert (response.status_code, response.json()["error"]["type"]) == (
        404,
        "invalid_request_error",
    )


def test_passthrough_can_be_turned_off(upstream: FakeUpstream) -> None:
    """``AUDITGATE_PASSTHROUGH_URL=off``: unserved paths are 404s, nothing goes upstream."""
    with gateway(upstream_env(upstream, AUDITGATE_PASSTHROUGH_URL="off")) as g:
        response = httpx.get(g.url + "/echo", timeout=10)
    assert (response.status_code, passed(upstream)) == (404, [])


def test_passthrough_url_is_used_verbatim(upstream: FakeUpstream) -> None:
    """``AUDITGATE_PASSTHROUGH_URL`` is the root paths are appended to, ``/v1`` and all."""
    env = upstream_env(upstream, AUDITGATE_PASSTHROUGH_URL=f"{upstream.url}/elsewhere/v1")
    with gateway(env) as g:
        seen = echo(httpx.get(g.url + "/echo", timeout=10))
    assert seen.path == "/elsewhere/v1/echo"


def test_upstream_down_is_502() -> None:
    """Nobody listening upstream: OpenAI's 502 ``upstream_unreachable``."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with gateway(audit_env(AUDITGATE_ENGINE="openai", AUDITGATE_UPSTREAM_URL=dead)) as g:
        response = httpx.post(g.url + "/tokenize", json={"prompt": "x"}, timeout=10)
    error = response.json()["error"]
    assert (response.status_code, error["type"], error["code"]) == (
        502,
        "api_error",
        "upstream_unreachable",
    )
    assert f"127.0.0.1:{dead.split(':')[2].split('/', maxsplit=1)[0]}" in error["message"]


def test_upstream_timeout_is_504(upstream: FakeUpstream) -> None:
    """An upstream slower than ``AUDITGATE_UPSTREAM_TIMEOUT``: OpenAI's 504."""
    upstream.behaviour = Behaviour.slow(2.0)
    with gateway(upstream_env(upstream, AUDITGATE_UPSTREAM_TIMEOUT="0.3")) as g:
        response = httpx.get(g.url + "/echo", timeout=10)
    assert (response.status_code, response.json()["error"]["code"]) == (504, "upstream_timeout")


def test_client_disconnect_aborts_the_upstream_request(
    g: TestGateway, upstream: FakeUpstream
) -> None:
    """A client that leaves mid-response closes the upstream connection too."""
    url = g.url + f"/bytes?n={1 << 30}&delay_ms=20"
    with httpx.stream("GET", url, timeout=10) as response:
        first = next(response.iter_raw())
    assert first == pattern(0, len(first))
    deadline = time.monotonic() + 5
    while (upstream.aborted, upstream.open_connections) != (1, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (upstream.aborted, upstream.open_connections) == (1, 0)


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_upstream_cut_mid_response_cuts_the_client(
    g: TestGateway, upstream: FakeUpstream, framing: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The upstream closing mid-body closes the client's connection before the body's end, so
    the client sees a broken response, never a short one that looks whole; counted as 502."""
    url = g.url + f"/bytes?n={1 << 20}&cut={1 << 19}&framing={framing}"
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url, timeout=10) as response:
        for part in response.iter_raw():
            received += part
    assert (response.status_code, bytes(received)) == (200, pattern(0, 1 << 19))
    assert counted(g) == {'{method="GET",path="/bytes",status="502"}': "1.0"}
    assert "pass-through GET '/bytes' cut mid-response" in caplog.text


def test_a_client_leaving_before_the_answer_aborts_the_upstream_request(
    g: TestGateway, upstream: FakeUpstream
) -> None:
    """A client that gives up while the upstream is still thinking closes its connection."""
    upstream.behaviour = Behaviour.slow(30.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(g.url + "/echo", timeout=0.5)
    deadline = time.monotonic() + 5
    while (upstream.aborted, upstream.open_connections) != (1, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (upstream.aborted, upstream.open_connections) == (1, 0)
    assert counted(g) == {'{method="GET",path="/echo",status="499"}': "1.0"}


def test_a_client_leaving_mid_upload_aborts_the_upstream_request(
    g: TestGateway, upstream: FakeUpstream
) -> None:
    """A client that sends part of its body and leaves: the upstream's connection is closed,
    and the request counted as 499."""
    with socket.create_connection(("127.0.0.1", g.server.port)) as sock:
        sock.sendall(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
        sock.sendall(b"x" * (1 << 20))
        deadline = time.monotonic() + 5
        while upstream.accepted < 2 and time.monotonic() < deadline:  # the models fetch, then us
            time.sleep(0.01)
    deadline = time.monotonic() + 10
    while (upstream.open_connections or not counted(g)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (upstream.open_connections, passed(upstream)) == (0, [])
    assert counted(g) == {'{method="PUT",path="/echo",status="499"}': "1.0"}


def test_a_stalled_upload_is_a_408_and_frees_the_upstream(upstream: FakeUpstream) -> None:
    """A client whose body stops coming for ``AUDITGATE_BODY_TIMEOUT`` gets a 408 and its
    connection closed; the upstream's connection is closed too."""
    with gateway(upstream_env(upstream, AUDITGATE_BODY_TIMEOUT="1")) as g:
        with socket.create_connection(("127.0.0.1", g.server.port), timeout=10) as sock:
            sock.sendall(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
            started = time.monotonic()
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            waited = time.monotonic() - started
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ") and 0.9 < waited < 5
        assert msgspec.json.decode(body)["error"]["code"] == "request_timeout"
        deadline = time.monotonic() + 10
        while upstream.open_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (upstream.open_connections, passed(upstream)) == (0, [])
        assert counted(g) == {'{method="PUT",path="/echo",status="408"}': "1.0"}


def test_keys_apply_to_passthrough(upstream: FakeUpstream, workdir: str) -> None:
    """With API keys, an unauthenticated call is a 401 and nothing is forwarded; an
    authenticated one is forwarded without the gateway key, with the upstream key instead."""
    path = f"{workdir}/keys.json"
    key = add_key(path, name="a", tenant="a", role="user")
    env = upstream_env(
        upstream, AUDITGATE_API_KEYS_FILE=path, AUDITGATE_UPSTREAM_API_KEY="sk-upstream"
    )
    with gateway(env) as g:
        refused = httpx.post(g.url + "/tokenize", json={"prompt": "x"}, timeout=10)
        wrong = httpx.get(g.url + "/echo", headers={"Authorization": "Bearer ag-wrong"})
        assert passed(upstream) == []
        api = openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0)
        answer: Any = api.post("/audio/echo", cast_to=object, body={"input": "hello"})
    assert (refused.status_code, wrong.status_code) == (401, 401)
    assert refused.json()["error"]["type"] == "invalid_request_error"
    authorization = [value for name, value in answer["headers"] if name == "authorization"]
    assert authorization == ["Bearer sk-upstream"]


def test_client_key_is_forwarded_only_with_key_passthrough(upstream: FakeUpstream) -> None:
    """``AUDITGATE_UPSTREAM_KEY_PASSTHROUGH``: the client's own ``Authorization`` goes up."""
    env = upstream_env(upstream, AUDITGATE_UPSTREAM_KEY_PASSTHROUGH="1")
    with gateway(env) as g:
        headers = {"Authorization": "Bearer sk-client-own"}
        seen = echo(httpx.get(g.url + "/echo", headers=headers, timeout=10))
    assert [v for n, v in seen.headers if n == "authorization"] == ["Bearer sk-client-own"]


def test_requests_are_counted_per_path_label(g: TestGateway, upstream: FakeUpstream) -> None:
    """``auditgate_passthrough_requests_total`` counts by bounded path label, method, status."""
    httpx.get(g.url + "/echo", timeout=10)
    httpx.get(g.url + "/echo?status=201", timeout=10)
    httpx.post(g.url + "/v1/audio/transcriptions/echo", content=b"x", timeout=10)
    httpx.post(g.url + "/v1/audio/echo", content=b"x", timeout=10)
    httpx.get(g.url + "/nothing-here", timeout=10)
    assert counted(g) == {
        '{method="GET",path="/echo",status="200"}': "1.0",
        '{method="GET",path="/echo",status="201"}': "1.0",
        '{method="POST",path="/v1/audio/*",status="200"}': "2.0",
        '{method="GET",path="/nothing-here",status="404"}': "1.0",
    }


def counted(g: TestGateway) -> dict[str, str]:
    """``auditgate_passthrough_requests_total``: value by label set."""
    metrics = httpx.get(g.url + "/metrics", timeout=10).text
    pattern = r"^auditgate_passthrough_requests_total(\{[^}]*\}) (\S+)$"
    return dict(re.findall(pattern, metrics, re.M))


def raw_request(
    port: int, method: str, path: str, headers: list[tuple[str, str]], body: bytes
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request sent exactly as given (no header added but ``Host``); status, headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if body:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()
