"""uvicorn's httptools protocol with bounds on a request's head, answering in OpenAI's shape.

httptools, and uvicorn on top of it, accept a request line and headers of any size and buffer
them until the blank line that ends them: one client sending a header that never ends grew the
gateway by as much as it sent (measured: 300 MiB of one header, +350 MB resident).  Nor does
uvicorn time a head out: a connection that sends nothing, or half a request line, stays open
for ever (its keep-alive timer runs only between requests), so a few thousand of them use up
the process's file descriptors.  uvicorn's h11 protocol bounds the size but parses several
times slower.  So ``serve`` runs :class:`BoundedHttpToolsProtocol`:

- a request whose head is longer than ``AUDITGATE_MAX_HEADER_BYTES`` gets a 431 in OpenAI's
  error shape and the connection is closed; a head of exactly the limit is served.  The head
  is the request line, the header lines and the blank line that ends them, every CRLF
  included; the empty lines a client may send before a request line (RFC 9112 §2.2) are
  skipped, not counted;
- a head not complete ``AUDITGATE_HEADER_TIMEOUT`` seconds after the connection opened or the
  head's first bytes came gets a 408 (a connection that sent nothing is just closed);
- what the parser refuses gets OpenAI's error JSON (:func:`~auditgate.server.http_errors.
  parse_error`), not uvicorn's plain-text ``400 Invalid HTTP request received.``;
- an error is answered in order: after the responses still owed to the requests before it on
  the connection (HTTP/1.1 has no other way to say which request an answer is for), never in
  the middle of one;
- an ``Upgrade`` request is served as the HTTP/1.1 request it also is, body included
  (:mod:`auditgate.server.upgrade`), and the connection read on after it.

Where each head ends is found before the parser sees it, so no request over the limit ever
starts: just past the first blank line after its first byte.  Where a head begins follows from
the request before it (:mod:`auditgate.server.framing`): the protocol feeds the parser up to
each point where that request may have ended, and asks it (uvicorn's request cycle) whether
it did.  The usual read, one head and perhaps its body, is fed whole after a count of its
blank lines, and starts no timer.  This
reads ``HttpToolsProtocol``'s own attributes (``scope``, ``cycle``, ``headers``, ``pipeline``,
``parser``, ``loop``, ``client``, ``transport``, ``server_state``): written against uvicorn
0.55 and httptools 0.9; the tests in ``tests/server/test_request_heads.py`` and
``test_http_errors.py`` fail if a release changes them.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Callable
from typing import Any, Final

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from auditgate.errors import APIError, HeaderFieldsTooLargeError, RequestTimeoutError
from auditgate.server.deadlines import Deadlines
from auditgate.server.framing import (
    BLANK_LINE,
    EMPTY_LINE_BYTES,
    blank_line_end,
    content_length,
    last3,
    piece,
)
from auditgate.server.http_errors import ErrorApp, JsonErrorCycle, error_response, parse_error
from auditgate.server.upgrade import UpgradeBody, declared_body

log = logging.getLogger("auditgate.server")

DEFAULT_MAX_HEAD_BYTES: Final = 64 << 10
"""``AUDITGATE_MAX_HEADER_BYTES`` by default (Node.js: 16 KiB; nginx: 4 × 8 KiB buffers)."""
DEFAULT_HEAD_TIMEOUT_S: Final = 30.0
"""``AUDITGATE_HEADER_TIMEOUT`` by default."""

# What the next bytes on a connection are (BoundedHttpToolsProtocol._mode).
_HEAD: Final = 0
"""A request head, begun (``_head`` bytes so far) or not; empty lines before it are skipped."""
_LENGTH: Final = 1
"""The next ``_left`` bytes of a request's ``Content-Length`` body."""
_CHUNKED: Final = 2
"""A chunked request body."""
_IGNORE: Final = 3
"""Nothing: the connection ends once the answers owed on it are out."""


class GatewayConfig(uvicorn.Config):
    """uvicorn's config plus the head bounds :class:`BoundedHttpToolsProtocol` reads (a class
    at module level: ``serve --workers N`` sends the config to its worker processes)."""

    def __init__(
        self,
        *args: Any,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
        head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes = max_head_bytes
        self.head_timeout_s = head_timeout_s


def _making(cycle: type[RequestResponseCycle], method: Callable[..., None]) -> Any:
    """uvicorn's ``method`` as it is, but making a ``cycle`` where it makes a
    ``RequestResponseCycle`` (it names the class from its module's globals).  Changing each
    cycle's class once uvicorn had made it cost 14,000 instructions a request more (valgrind,
    ``bench.protocol``; 9 % of a GET there)."""
    names = {**method.__globals__, RequestResponseCycle.__name__: cycle}
    return types.FunctionType(method.__code__, names, method.__name__, method.__defaults__)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses a request head over ``config.max_head_bytes`` or
    slower than ``config.head_timeout_s``, and answers every error it finds in OpenAI's
    shape."""

    on_headers_complete = _making(JsonErrorCycle, HttpToolsProtocol.on_headers_complete)
    """uvicorn's, making each request's cycle a :class:`JsonErrorCycle`."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.max_head_bytes: int = getattr(config, "max_head_bytes", DEFAULT_MAX_HEAD_BYTES)
        timeout_s: float = getattr(config, "head_timeout_s", DEFAULT_HEAD_TIMEOUT_S)
        self._heads = _heads(timeout_s)
        self._waiting = False
        """Whether this connection's head deadline runs."""
        self._received = False
        """Whether any byte came on this connection (a silent one is closed without a 408)."""
        self._mode = _HEAD
        self._head = 0
        """Bytes of the head begun and not complete yet (0: none begun)."""
        self._left = 0
        """Bytes of a ``Content-Length`` body still to come."""
        self._tail = b""
        """The last (up to 3) bytes of an incomplete head or chunked body: a blank line may
        begin in one read and end in the next."""
        self._upgraded = False
        """The parser stopped after the head it just read: an ``Upgrade`` request's."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for_head()  # the first head's clock starts with the connection

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiting:
            self._heads.stop(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._received = True
        self._unset_keepalive_if_required()
        mode = self._mode
        if mode == _LENGTH:
            left = self._left - len(data)
            if left >= 0:  # more of a body, and no more than it
                self._left = left
                if not left:
                    self._mode = _HEAD
                try:
                    self.parser.feed_data(data)
                except httptools.HttpParserError as exc:
                    self._refuse(parse_error(exc, self.parser.get_method()))
                return
        elif (
            mode == _HEAD
            and not self._head
            and len(data) <= self.max_head_bytes
            and data[0] not in EMPTY_LINE_BYTES
            and data.count(BLANK_LINE) == 1
        ):
            # The usual read: one head, then perhaps its body.  Every head in it fits (the
            # read does); one blank line means one whole head, and neither another one nor
            # the end of a chunked body (which is a blank line) after it.
            before = self.cycle
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:  # it stopped at the head's end
                self._upgraded = True
                self._head_done()
                self._walk(data, int(exc.args[0]))  # and reads on from there
                return
            except httptools.HttpParserError as exc:
                self._refuse(parse_error(exc, self.parser.get_method()))
                return
            if self._waiting:
                self._heads.stop(self)
                self._waiting = False
            cycle = self.cycle
            if cycle is before:
                self._head_missing(data)
                return
            if self.scope is not cycle.scope:  # another request began after its body
                self._begun(data, data.find(BLANK_LINE) + 4 + len(cycle.body))
            elif cycle.more_body:
                self._expect_body(data, len(cycle.body))
            return
        self._walk(data, 0)

    def _begun(self, data: bytes, pos: int) -> None:
        """A request head began at ``pos`` (or after empty lines there) and goes on past
        ``data``, which is no longer than the limit: count its bytes, and start its clock."""
        while data[pos] in EMPTY_LINE_BYTES:
            pos += 1
        self._head, self._tail = len(data) - pos, last3(b"", data, pos)
        if not self._waiting:
            self._wait_for_head()

    def _expect_body(self, data: bytes, received: int) -> None:
        """The one request in ``data`` (a head, then the first ``received`` bytes of its body)
        has more body to come."""
        length = content_length(self.headers)
        if length is None:  # chunked: a blank line may begin in the body's last bytes here
            self._mode, self._tail = _CHUNKED, last3(b"", data, data.find(BLANK_LINE) + 4)
        else:
            self._mode, self._left = _LENGTH, length - received

    def _head_missing(self, data: bytes) -> None:
        """The parser took ``data`` without making a request of it: it ignores what follows
        a connection's last request, and HTTP/2's preface goes on past its first blank line."""
        before = self.cycle
        if before is not None and not before.keep_alive:
            self._mode = _IGNORE
        else:
            self._begun(data, 0)

    def _walk(self, data: bytes, pos: int) -> None:
        """Read ``data`` from ``pos`` piece by piece, whatever it holds."""
        size = len(data)
        while 0 <= pos < size:
            mode = self._mode
            if mode == _HEAD:
                pos = self._read_head(data, pos)
            elif mode == _LENGTH:
                pos = self._read_length(data, pos)
            elif mode == _CHUNKED:
                pos = self._read_chunked(data, pos)
            else:
                return

    def _read_head(self, data: bytes, pos: int) -> int:
        """At ``pos`` a request head begins or goes on: refuse it if it ends past the limit,
        else give it to the parser.  The position to go on from, or -1 after an answer."""
        size = len(data)
        if not self._head:
            cycle = self.cycle
            if cycle is not None and not cycle.keep_alive:
                # The connection's last request (Connection: close, HTTP/1.0): the parser ignores
                # what follows it and uvicorn closes the connection after the response.
                self._mode = _IGNORE
                return size
            while pos < size and data[pos] in EMPTY_LINE_BYTES:
                pos += 1
            if pos == size:  # only empty lines: a head is still owed, and its clock runs
                if not self._waiting:
                    self._wait_for_head()
                return size
        room = self.max_head_bytes - self._head
        end = blank_line_end(self._tail, data, pos, pos + room)
        if end < 0:  # the head goes on in a later read, if the limit leaves room for it
            if size - pos > room:
                self._refuse(self._too_large())
                return -1
            self._head += size - pos
            self._tail = last3(self._tail, data, pos)
            if not self._waiting:
                self._wait_for_head()
            return size if self._feed(piece(data, pos, size)) >= 0 else -1
        if self._feed(piece(data, pos, end)) < 0:
            return -1
        cycle = self.cycle
        if cycle is None or cycle.scope is not self.scope:
            # The parser wants more: only HTTP/2's preface, "PRI * HTTP/2.0" and a blank line,
            # goes on (to "SM" and another), and is refused there.
            self._head += end - pos
            self._tail = data[end - 3 : end]
            if not self._waiting:
                self._wait_for_head()
            return end
        self._head, self._tail = 0, b""
        self._head_done()
        return end

    def _head_done(self) -> None:
        """The parser has read a whole head: stop its clock, and learn whether the request's
        body follows, and how it is framed."""
        if self._waiting:
            self._heads.stop(self)
            self._waiting = False
        if self._upgraded:  # a body it declared is read all the same (server/upgrade.py)
            self._upgraded = False
            framing = declared_body(self.headers)
            if framing is not None:
                UpgradeBody(self, framing)
        if self.cycle.more_body:
            length = content_length(self.headers)
            if length is None:
                self._mode = _CHUNKED
            else:
                self._mode, self._left = _LENGTH, length

    def _read_length(self, data: bytes, pos: int) -> int:
        """The body's next ``_left`` bytes, or as many of them as this read has."""
        end = min(len(data), pos + self._left)
        if self._feed(piece(data, pos, end)) < 0:
            return -1
        self._left -= end - pos
        if not self._left:
            self._mode = _HEAD
        return end

    def _read_chunked(self, data: bytes, pos: int) -> int:
        """A chunked body can end only just past a blank line (its last chunk's, or its
        trailers'): feed the parser up to the next one and see whether it did."""
        size = len(data)
        end = blank_line_end(self._tail, data, pos, size)
        if end < 0:
            self._tail = last3(self._tail, data, pos)
            return size if self._feed(piece(data, pos, size)) >= 0 else -1
        self._tail = b""
        if self._feed(piece(data, pos, end)) < 0:
            return -1
        cycle = self.cycle
        if not cycle.more_body:
            self._mode = _HEAD
        elif cycle.response_complete:
            return self._probe(data, end)
        return end

    def _probe(self, data: bytes, pos: int) -> int:
        """Whether a chunked body ended at ``pos`` when uvicorn no longer says (it stops
        following a body once the app has answered): feed byte by byte.  The parser skips empty
        lines between requests; the first other byte begins a new request (a new scope) or is
        more of the body."""
        scope, size = self.scope, len(data)
        while pos < size:
            byte = data[pos]
            if self._feed(data[pos : pos + 1]) < 0:
                return -1
            pos += 1
            if self.scope is not scope:
                self._mode, self._head, self._tail = _HEAD, 1, data[pos - 1 : pos]
                return pos
            if byte not in EMPTY_LINE_BYTES:
                return pos
        self._tail = last3(b"", data, max(0, size - 3))
        return size

    def _feed(self, piece: bytes | memoryview) -> int:
        """Give the parser ``piece``; how many of its bytes it took (all, but where it stops
        after an ``Upgrade`` request's head), or -1 if it refused them (they are answered)."""
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded = True
            return int(exc.args[0])
        except httptools.HttpParserError as exc:
            self._refuse(parse_error(exc, self.parser.get_method()))
            return -1
        return len(piece)

    def _too_large(self) -> APIError:
        return HeaderFieldsTooLargeError(
            f"The request line and headers are larger than the {self.max_head_bytes}-byte "
            "limit of this gateway.",
            code="request_header_fields_too_large",
        )

    def _wait_for_head(self) -> None:
        self._waiting = True
        self._heads.start(self, self.loop)

    def _head_timed_out(self) -> None:
        self._waiting = False
        if not self._received:
            self.transport.close()  # nothing sent: nobody to answer
            return
        error = RequestTimeoutError(
            f"The request line and headers did not arrive within {self._heads.timeout_s:g} "
            "seconds.",
            code="request_timeout",
        )
        self._refuse(error)

    def _refuse(self, error: APIError) -> None:
        """Answer ``error`` in OpenAI's shape and close the connection, reading no more of it;
        if an answer to an earlier request is still owed, after that one."""
        cycle = self.cycle
        # Where the error is: in the body of the last request whose head was read, or in a
        # new request's head.
        own_body = cycle is not None and cycle.scope is self.scope and cycle.more_body
        self._mode = _IGNORE
        if self._waiting:
            self._heads.stop(self)
            self._waiting = False
        if self.transport.is_closing():
            return
        log.warning(
            "request from %s: %d %s, connection closed",
            self.client[0] if self.client else "?",
            error.status_code,
            error.message,
        )
        if cycle is not None and not cycle.response_complete:
            if not own_body:  # answered once the response before it is out
                cycle.on_response = lambda: self._answer(error)
                return
            if self.pipeline and self.pipeline[0][0] is cycle:  # it waits its turn: answer then
                self.pipeline[0] = (cycle, ErrorApp(error))  # type: ignore[assignment]
                return
            if cycle.response_started:  # its answer is going out already: close after it
                cycle.keep_alive = False
                return
        elif own_body:  # a body that was answered already: nobody waits for this answer
            self.transport.close()
            return
        self._answer(error)

    def _answer(self, error: APIError) -> None:
        if not self.transport.is_closing():
            self.transport.write(error_response(error, self.server_state.default_headers))
            self.transport.close()


_HEAD_DEADLINES: dict[float, Deadlines[BoundedHttpToolsProtocol]] = {}
"""Connections waiting for a request head, by timeout: one timer for all of them (a serving
process runs one event loop)."""


def _heads(timeout_s: float) -> Deadlines[BoundedHttpToolsProtocol]:
    deadlines = _HEAD_DEADLINES.get(timeout_s)
    if deadlines is None:
        deadlines = _HEAD_DEADLINES[timeout_s] = Deadlines(
            timeout_s, BoundedHttpToolsProtocol._head_timed_out
        )
    return deadlines
