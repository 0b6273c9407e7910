"""A fake OpenAI-compatible upstream: a small, fast HTTP/1.1 server for tests and benchmarks.

It serves ``POST …/chat/completions`` (JSON or SSE with chunked transfer, keep-alive), the
legacy ``POST …/completions`` and ``POST …/embeddings`` (:mod:`tests.support.upstream_legacy`),
``POST …/responses`` (:mod:`tests.support.upstream_responses`) and ``GET …/models`` on
127.0.0.1, inside the caller's event loop (``async with FakeUpstream() as upstream``) or in a
thread with its own loop (``with upstream_in_thread() as upstream`` — for sync tests and
subprocess gateways).  What it does is chosen by :attr:`FakeUpstream.behaviour`, which a
test may change at any time (plain attribute assignment, also across threads):

- :meth:`Behaviour.normal` — ``chunks`` content pieces, deterministic (see :func:`completion` and
  :func:`stream_chunks`, which tests use to build the expected values); a usage chunk when the
  request sets ``stream_options.include_usage``; optional delays before the head, between
  stream events, and between ``[DONE]`` and the end of the body;
- :meth:`Behaviour.http_error` — a status with an OpenAI error body (or any raw body);
- :meth:`Behaviour.slow` — wait before answering (for timeouts);
- :meth:`Behaviour.drop` — close the connection after ``after`` stream events (or half a JSON body);
- :meth:`Behaviour.reset` — close the connection as soon as the request arrived, answering nothing;
- :meth:`Behaviour.stream_error` — ``after`` chunks, then an in-stream ``{"error": …}`` event;
- :meth:`Behaviour.garbage` — a 200 whose body is the given bytes.

Routes for pass-through tests, under any path prefix (the path's last segment chooses), any
method; the behaviours ``reset``, ``http_error`` and a ``delay_s`` apply to them too:

- ``…/echo[?status=N][&gzip=1]`` — a JSON :class:`Echo` of the request as received (its body
  only counted and hashed, so a huge upload is never held; gzip-encoded with ``gzip``), with
  status N (default 200), the response header
  ``X-Upstream-Echo: yes``, a cookie, and hop-by-hop headers a proxy must drop (``Keep-Alive``,
  ``X-Upstream-Hop``, which ``Connection`` names);
- ``…/bytes?n=N[&chunk=C][&delay_ms=D][&framing=chunked][&cut=K]`` — N bytes of
  :func:`pattern`, C at a time (default 65 536), D ms apart, with ``Content-Length`` (or
  chunked), honouring the client's flow control (written no faster than read); with ``cut``, the
  connection is closed once K bytes (rounded up to a chunk) are sent.

Every request is recorded (:attr:`FakeUpstream.received`, the last 10 000) with its headers, so
tests can assert what credentials went upstream.  :attr:`FakeUpstream.aborted` counts responses
the client walked away from mid-way.  Run ``python -m tests.support.upstream --port N`` for a
standalone server (benchmarks).  Pipelined requests are not supported (no client here pipelines).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import functools
import gzip
import hashlib
import http
import threading
import urllib.parse
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Literal, cast

import httptools
import msgspec

from tests.support import upstream_legacy, upstream_responses

CREATED = 1_700_000_000
"""``created`` of every completion and chunk."""
RESPONSE_ID = "chatcmpl-fake"
"""``id`` of every completion and chunk."""

Kind = Literal["normal", "http_error", "drop", "reset", "stream_error", "garbage"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Behaviour:
    """What the fake answers; build one with the class methods."""

    kind: Kind = "normal"
    """Which answer."""
    chunks: int = 4
    """Content pieces of a normal answer (and of the stream part before a drop/error)."""
    delay_s: float = 0.0
    """Wait before sending the response head."""
    chunk_delay_s: float = 0.0
    """Wait between stream events (0: the whole stream goes out in one write)."""
    done_delay_s: float = 0.0
    """Wait between ``data: [DONE]`` and the end of the chunked body."""
    status: int = 500
    """``http_error``: the status."""
    body: bytes = b""
    """``http_error``/``garbage``: the raw response body."""
    after: int = 2
    """``drop``/``stream_error``: stream events sent before failing."""
    content_type: str | None = None
    """``garbage``: the Content-Type (default: what the request asked for)."""

    @classmethod
    def normal(
        cls,
        chunks: int = 4,
        *,
        delay_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        done_delay_s: float = 0.0,
    ) -> Behaviour:
        """A well-formed completion of ``chunks`` content pieces."""
        return cls(
            chunks=chunks, delay_s=delay_s, chunk_delay_s=chunk_delay_s, done_delay_s=done_delay_s
        )

    @classmethod
    def slow(cls, delay_s: float) -> Behaviour:
        """A normal answer that starts after ``delay_s``."""
        return cls(delay_s=delay_s)

    @classmethod
    def http_error(
        cls,
        status: int,
        message: str = "fake upstream failure",
        *,
        error_type: str = "server_error",
        param: str | None = None,
        code: str | None = None,
        body: bytes | None = None,
    ) -> Behaviour:
        """``status`` with OpenAI's error body, or with ``body`` verbatim when given."""
        if body is None:
            error = {"message": message, "type": error_type, "param": param, "code": code}
            body = msgspec.json.encode({"error": error})
        return cls(kind="http_error", status=status, body=body)

    @classmethod
    def drop(cls, after: int = 2, *, chunks: int = 4) -> Behaviour:
        """Close the connection after ``after`` stream events (non-stream: after half the body)."""
        return cls(kind="drop", after=after, chunks=chunks)

    @classmethod
    def reset(cls) -> Behaviour:
        """Close the connection without answering."""
        return cls(kind="reset")

    @classmethod
    def stream_error(
        cls, after: int = 2, message: str = "fake in-stream failure", *, chunks: int = 4
    ) -> Behaviour:
        """``after`` stream events, then ``data: {"error": {...}}`` and ``[DONE]``."""
        error = {"message": message, "type": "server_error", "param": None, "code": None}
        return cls(
            kind="stream_error",
            after=after,
            chunks=chunks,
            body=msgspec.json.encode({"error": error}),
        )

    @classmethod
    def garbage(cls, body: bytes, *, content_type: str | None = None) -> Behaviour:
        """200 with ``body`` as the whole body (``text/event-stream`` for stream requests)."""
        return cls(kind="garbage", body=body, content_type=content_type)


@dataclasses.dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request the fake received."""

    method: str
    """``GET`` or ``POST``."""
    path: str
    """Path and query as sent."""
    headers: dict[str, str]
    """Headers, names lower-cased (a repeated header keeps its last value)."""
    body: bytes
    """The raw body (empty for the pass-through routes, which only count and hash it)."""
    body_size: int = 0
    """Bytes of body received."""
    body_sha256: str = ""
    """SHA-256 of the body (hex), pass-through routes only."""

    def json(self) -> Any:
        """The body, decoded."""
        return msgspec.json.decode(self.body)


PASSTHROUGH_ROUTES = frozenset({"echo", "bytes"})
"""Last path segments of the pass-through test routes."""
_BLOCK = bytes(range(256)) * 257
"""256 periods of :func:`pattern` plus one, so any 64 KiB slice of it starts anywhere."""
MAX_CHUNK = 1 << 16
"""Largest ``chunk`` of the ``bytes`` route."""


class Echo(msgspec.Struct, frozen=True):
    """What the ``echo`` route answers: the request as the fake received it."""

    method: str
    path: str
    """Path and query, as sent."""
    headers: list[tuple[str, str]]
    """Every header, names lower-cased, in order (repeated ones repeated)."""
    body_bytes: int
    body_sha256: str


def pattern(offset: int, size: int) -> bytes:
    """``size`` bytes of the ``bytes`` route's body from ``offset``: byte ``i`` is ``i % 256``."""
    out = []
    while size > 0:
        part = min(size, MAX_CHUNK)
        start = offset % 256
        out.append(_BLOCK[start : start + part])
        offset, size = offset + part, size - part
    return b"".join(out)


def pattern_sha256(size: int) -> str:
    """SHA-256 (hex) of the first ``size`` bytes of :func:`pattern`."""
    digest = hashlib.sha256()
    for offset in range(0, size, MAX_CHUNK):
        digest.update(pattern(offset, min(MAX_CHUNK, size - offset)))
    return digest.hexdigest()


def passthrough_route(path: str) -> str | None:
    """The pass-through test route a request path (with its query) names, if any."""
    name = path.split("?", maxsplit=1)[0].rsplit("/", 1)[-1]
    return name if name in PASSTHROUGH_ROUTES else None


def _text(chunks: int) -> list[str]:
    return [f"tok{i} " for i in range(chunks)]


def prompt_tokens(body: dict[str, Any]) -> int:
    """The fake's prompt token count: words in the string contents of ``messages``."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(
        len(m["content"].split())
        for m in messages
        if isinstance(m, dict) and isinstance(m.get("content"), str)
    )


def _usage(body: dict[str, Any], chunks: int) -> dict[str, int]:
    prompt = prompt_tokens(body)
    return {"prompt_tokens": prompt, "completion_tokens": chunks, "total_tokens": prompt + chunks}


def completion(body: dict[str, Any], chunks: int = 4) -> dict[str, Any]:
    """The ``chat.completion`` a normal answer to ``body`` is."""
    message = {"role": "assistant", "content": "".join(_text(chunks))}
    return {
        "id": RESPONSE_ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": body.get("model", "fake-model"),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(body, chunks),
    }


def stream_chunks(body: dict[str, Any], chunks: int = 4) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` events of a normal streamed answer, without ``[DONE]``."""
    model = body.get("model", "fake-model")

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        head = {"id": RESPONSE_ID, "object": "chat.completion.chunk", "created": CREATED}
        return {**head, "model": model, "choices": choices}

    def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    events = [chunk([choice({"role": "assistant", "content": ""})])]
    events += [chunk([choice({"content": piece})]) for piece in _text(chunks)]
    events.append(chunk([choice({}, "stop")]))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        events.append({**chunk([]), "usage": _usage(body, chunks)})
    return events


@functools.lru_cache(maxsize=256)
def _sse_events(raw_body: bytes, chunks: int, legacy: bool = False) -> tuple[bytes, ...]:
    """Encoded ``data:`` events for one request body (cached: benchmarks repeat bodies);
    ``legacy``: of a ``…/completions`` request."""
    body = msgspec.json.decode(raw_body)
    produce = upstream_legacy.text_stream_chunks if legacy else stream_chunks
    encoded = [b"data: " + msgspec.json.encode(c) + b"\n\n" for c in produce(body, chunks)]
    return (*encoded, b"data: [DONE]\n\n")


def _head(status: int, content_type: str, length: int | None, keep_alive: bool) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Status"
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    connection = "" if keep_alive else "Connection: close\r\n"
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n{framing}\r\n"
        f"{connection}\r\n"
    ).encode()


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


_LAST_CHUNK = b"0\r\n\r\n"


class _Connection(asyncio.Protocol):
    """One client connection: httptools parses, :class:`FakeUpstream` answers."""

    def __init__(self, server: FakeUpstream) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_list: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._digest: Any = None
        """A pass-through route's body hash (its body is not kept)."""
        self._body_size = 0
        self._task: asyncio.Task[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self.responding = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._server._connections.add(self)
        self._server.accepted += 1

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()  # a writer waiting to drain sees the connection closed
        self._server._connections.discard(self)
        if self.responding:
            self._server.aborted += 1
        if self._task is not None:
            self._task.cancel()
        self._transport = None

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        pair = (name.decode("latin-1").lower(), value.decode("latin-1"))
        self._headers[pair[0]] = pair[1]
        self._header_list.append(pair)

    def on_headers_complete(self) -> None:
        if passthrough_route(self._url.decode("latin-1")) is not None:
            self._digest = hashlib.sha256()

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._digest is not None:
            self._digest.update(body)
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        request = ReceivedRequest(
            self._parser.get_method().decode(),
            self._url.decode("latin-1"),
            self._headers,
            b"".join(self._body),
            self._body_size,
            self._digest.hexdigest() if self._digest is not None else "",
        )
        header_list = self._header_list
        self._url, self._headers, self._header_list, self._body = b"", {}, [], []
        self._digest, self._body_size = None, 0
        keep_alive = bool(self._parser.should_keep_alive())
        self._server.received.append(request)
        behaviour = self._server.behaviour
        if request.body_sha256:
            self._task = asyncio.get_running_loop().create_task(
                self._respond_route(request, header_list, behaviour, keep_alive)
            )
            return
        if behaviour.delay_s or behaviour.chunk_delay_s or behaviour.done_delay_s:
            self._task = asyncio.get_running_loop().create_task(
                self._respond_later(request, behaviour, keep_alive)
            )
        else:
            self._server._respond_now(self, request, behaviour, keep_alive)

    # helpers used by the server
    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def drain(self) -> None:
        """Wait until the client has read enough of what was written (flow control)."""
        await self._writable.wait()

    async def _respond_route(
        self,
        request: ReceivedRequest,
        headers: list[tuple[str, str]],
        behaviour: Behaviour,
        keep_alive: bool,
    ) -> None:
        self.responding = True
        try:
            await asyncio.sleep(behaviour.delay_s)
            if behaviour.kind in ("reset", "http_error"):
                self._server._respond_now(self, request, behaviour, keep_alive)
            elif passthrough_route(request.path) == "echo":
                self._echo(request, headers, keep_alive)
            else:
                await self._bytes(request, keep_alive)
        finally:
            self.responding = False
            self._task = None

    def _echo(
        self, request: ReceivedRequest, headers: list[tuple[str, str]], keep_alive: bool
    ) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        status = int(query.get("status", ["200"])[0])
        echo = Echo(request.method, request.path, headers, request.body_size, request.body_sha256)
        payload = msgspec.json.encode(echo)
        if "gzip" in query:
            payload = gzip.compress(payload)
        extra = "Content-Encoding: gzip\r\n" if "gzip" in query else ""
        extra += (
            "X-Upstream-Echo: yes\r\nSet-Cookie: upstream-session=s3cr3t; Path=/\r\n"
            "Keep-Alive: timeout=5\r\nX-Upstream-Hop: dropped\r\n"
        )
        connection = "close, X-Upstream-Hop" if not keep_alive else "X-Upstream-Hop"
        head = _head(status, "application/json", len(payload), True).removesuffix(b"\r\n")
        body = b"" if request.method == "HEAD" else payload  # HEAD: the head of the GET
        self.write(head + f"{extra}Connection: {connection}\r\n\r\n".encode() + body)
        if not keep_alive:
            self.close()

    async def _bytes(self, request: ReceivedRequest, keep_alive: bool) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        size = int(query["n"][0])
        chunk = min(int(query.get("chunk", [str(MAX_CHUNK)])[0]), MAX_CHUNK)
        delay_s = int(query.get("delay_ms", ["0"])[0]) / 1000
        chunked = query.get("framing", [""])[0] == "chunked"
        cut = int(query.get("cut", [str(size)])[0])
        self.write(_head(200, "application/octet-stream", None if chunked else size, keep_alive))
        for offset in range(0, size, chunk):
            if delay_s and offset:
                await asyncio.sleep(delay_s)
            await self.drain()
            if not self.open:
                return
            if offset >= cut:
                self.close()
                return
            data = pattern(offset, min(chunk, size - offset))
            self.write(_chunked(data) if chunked else data)
        if chunked:
            self.write(_LAST_CHUNK)
        if not keep_alive:
            self.close()

    async def _respond_later(
        self, request: ReceivedRequest, behaviour: Behaviour, keep_alive: bool
    ) -> None:
        self.responding = True
        try:
            await asyncio.sleep(behaviour.delay_s)
            await self._server._respond_paced(self, request, behaviour, keep_alive)
        finally:
            # After a client abort, connection_lost has counted it before cancelling this task.
            self.responding = False
            self._task = None


class FakeUpstream:
    """The fake server; see the module docstring.  Lives on the loop that calls :meth:`start`."""

    def __init__(
        self, behaviour: Behaviour | None = None, *, models: tuple[str, ...] = ("fake-model",)
    ) -> None:
        self.behaviour = behaviour or Behaviour()
        """What the next request gets; assign freely."""
        self.models = models
        """Model ids ``GET /models`` lists."""
        self.received: collections.deque[ReceivedRequest] = collections.deque(maxlen=10_000)
        """The requests received, oldest first."""
        self.accepted = 0
        """Client connections accepted so far."""
        self.aborted = 0
        """Responses whose client closed the connection before the response ended."""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: what an OpenAI client or engine is given."""
        return self.url + "/v1"

    @property
    def open_connections(self) -> int:
        """Client connections currently open."""
        return len(self._connections)

    async def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1:``port`` (0: a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), "127.0.0.1", port, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening, close every connection, end every pending response."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
        tasks = [c._task for c in self._connections if c._task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_connections_closed(self, timeout: float = 5.0) -> None:
        """Wait until no client connection is open (e.g. after a client aborted a stream)."""
        async with asyncio.timeout(timeout):
            while self._connections:
                await asyncio.sleep(0.005)

    # Responses
    def _respond_now(
        self, conn: _Connection, request: ReceivedRequest, behaviour: Behaviour, keep_alive: bool
    ) -> None:
        """Answer in one write (everything but the paced behaviours)."""
        if behaviour.kind == "reset":
            conn.close()
            return
        if behaviour.kind == "http_error":  # the whole upstream is failing, every route
            self._send_json(conn, behaviour.status, behaviour.body, keep_alive)
            return
        if request.path.split("?")[0].endswith("/models") and request.method == "GET":
            data = [
                {"id": m, "object": "model", "created": CREATED, "owned_by": "fake"}
                for m in self.models
            ]
            self._send_json(
                conn, 200, msgspec.json.encode({"object": "list", "data": data}), keep_alive
            )
            return
        if request.path.split("?")[0].endswith("/responses") and request.method == "POST":
            self._respond_responses(conn, request, behaviour, keep_alive)
            return
        route = _route(request)
        if route is None:
            error = {
                "message": f"no route {request.method} {request.path}",
                "type": "invalid_request_error",
            }
            self._send_json(conn, 404, msgspec.json.encode({"error": error}), keep_alive)
            return
        try:
            body = request.json()
        except msgspec.DecodeError:
            body = None
        if not isinstance(body, dict):
            error = {"message": "body is not a JSON object", "type": "invalid_request_error"}
            self._send_json(conn, 400, msgspec.json.encode({"error": error}), keep_alive)
            return
        if route == "embeddings":
            payload = msgspec.json.encode(upstream_legacy.embeddings(body))
            self._send_json(conn, 200, payload, keep_alive)
            return
        streaming = body.get("stream") is True
        if behaviour.kind == "garbage":
            default = "text/event-stream" if streaming else "application/json"
            content_type = behaviour.content_type or default
            conn.write(_head(200, content_type, len(behaviour.body), keep_alive) + behaviour.body)
            if not keep_alive:
                conn.close()
            return
        if not streaming:
            answer = upstream_legacy.text_completion if route == "completions" else completion
            payload = msgspec.json.encode(answer(body, behaviour.chunks))
            if behaviour.kind == "drop":
                conn.write(_head(200, "application/json", len(payload), keep_alive))
                conn.write(payload[: len(payload) // 2])
                conn.close()
                return
            self._send_json(conn, 200, payload, keep_alive)
            return
        events = self._events(request, behaviour)
        conn.write(_head(200, "text/event-stream", None, keep_alive))
        if behaviour.kind == "drop":
            conn.write(b"".join(_chunked(e) for e in events))
            conn.close()
            return
        conn.write(_chunked(b"".join(events)) + _LAST_CHUNK)
        if not keep_alive:
            conn.close()

    async def _respond_paced(
        self, conn: _Connection, request: ReceivedRequest, behaviour: Behaviour, keep_alive: bool
    ) -> None:
        """Answer a stream one event per ``chunk_delay_s``; anything else as ``_respond_now``."""
        try:
            body = request.json()
        except msgspec.DecodeError:
            body = None
        if not (isinstance(body, dict) and body.get("stream") is True) or behaviour.kind in (
            "http_error",
            "garbage",
            "reset",
        ):
            self._respond_now(conn, request, behaviour, keep_alive)
            return
        events = self._events(request, behaviour)
        conn.write(_head(200, "text/event-stream", None, keep_alive))
        for i, event in enumerate(events):
            if i:
                await asyncio.sleep(behaviour.chunk_delay_s)
            if not conn.open:
                return
            conn.write(_chunked(event))
        if behaviour.kind == "drop":
            conn.close()
            return
        if behaviour.done_delay_s:
            await asyncio.sleep(behaviour.done_delay_s)
        conn.write(_LAST_CHUNK)
        if not keep_alive:
            conn.close()

    def _respond_responses(
        self, conn: _Connection, request: ReceivedRequest, behaviour: Behaviour, keep_alive: bool
    ) -> None:
        """``POST …/responses`` (:mod:`tests.support.upstream_responses`): ``normal``, ``drop``
        (after ``after`` events) and ``stream_error`` (an ``error`` event after ``after``)."""
        try:
            body = request.json()
        except msgspec.DecodeError:
            body = None
        if not isinstance(body, dict):
            error = {"message": "body is not a JSON object", "type": "invalid_request_error"}
            self._send_json(conn, 400, msgspec.json.encode({"error": error}), keep_alive)
            return
        if body.get("stream") is not True:
            answer = upstream_responses.response(body, behaviour.chunks)
            self._send_json(conn, 200, msgspec.json.encode(answer), keep_alive)
            return
        events = upstream_responses.sse(upstream_responses.events(body, behaviour.chunks))
        if behaviour.kind in ("drop", "stream_error"):
            events = events[: behaviour.after]
        if behaviour.kind == "stream_error":
            error = {"type": "error", "code": "server_error", "message": "engine fell over",
                     "param": None, "sequence_number": behaviour.after}  # fmt: skip
            events.append(b"event: error\ndata: " + msgspec.json.encode(error) + b"\n\n")
        conn.write(_head(200, "text/event-stream", None, keep_alive))
        if behaviour.kind == "drop":
            conn.write(b"".join(_chunked(e) for e in events))
            conn.close()
            return
        conn.write(_chunked(b"".join(events)) + _LAST_CHUNK)
        if not keep_alive:
            conn.close()

    def _events(self, request: ReceivedRequest, behaviour: Behaviour) -> list[bytes]:
        events = list(_sse_events(request.body, behaviour.chunks, _route(request) == "completions"))
        if behaviour.kind == "drop":
            return events[: behaviour.after]
        if behaviour.kind == "stream_error":
            return [*events[: behaviour.after], b"data: " + behaviour.body + b"\n\n", events[-1]]
        return events

    @staticmethod
    def _send_json(conn: _Connection, status: int, payload: bytes, keep_alive: bool) -> None:
        conn.write(_head(status, "application/json", len(payload), keep_alive) + payload)
        if not keep_alive:
            conn.close()


def _route(request: ReceivedRequest) -> str | None:
    """``chat``, ``completions`` or ``embeddings`` for a POST to one of them; else ``None``."""
    if request.method != "POST":
        return None
    path = request.path.split("?")[0]
    for suffix, route in (
        ("/chat/completions", "chat"),
        ("/completions", "completions"),
        ("/embeddings", "embeddings"),
    ):
        if path.endswith(suffix):
            return route
    return None


@contextlib.contextmanager
def upstream_in_thread(
    behaviour: Behaviour | None = None, *, models: tuple[str, ...] = ("fake-model",), port: int = 0
) -> Iterator[FakeUpstream]:
    """A :class:`FakeUpstream` on its own event loop in a daemon thread, for a ``with`` block."""
    loop = _new_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-upstream", daemon=True)
    thread.start()
    upstream = FakeUpstream(behaviour, models=models)
    try:
        asyncio.run_coroutine_threadsafe(upstream.start(port), loop).result(10)
        yield upstream
    finally:
        asyncio.run_coroutine_threadsafe(upstream.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main() -> None:
    """Run the fake standalone until interrupted (for benchmarks)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--chunks", type=int, default=16)
    args = parser.parse_args()

    async def serve() -> None:
        upstream = FakeUpstream(Behaviour.normal(args.chunks))
        await upstream.start(args.port)
        print(f"fake upstream on {upstream.base_url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await upstream.close()

    with contextlib.suppress(KeyboardInterrupt):
        loop = _new_loop()
        try:
            loop.run_until_complete(serve())
        finally:
            loop.close()


if __name__ == "__main__":
    main()
