"""uvicorn's httptools protocol with bounds on a request's head: its size and its time.

httptools, and uvicorn on top of it, accept a request line and headers of any size and buffer
them until the blank line that ends them: one client sending a header that never ends grew the
gateway by as much as it sent (measured: 300 MiB of one header, +350 MB resident).  Nor does
uvicorn time a head out: a connection that sends nothing, or half a request line, stays open
for ever (its keep-alive timer runs only between requests), so a few thousand of them use up
the process's file descriptors.  uvicorn's h11 protocol bounds the size but parses several
times slower.  So ``serve`` runs :class:`BoundedHttpToolsProtocol`:

- once the bytes of a head that is not complete yet pass ``AUDITGATE_MAX_HEADER_BYTES``, the
  client gets a 431 in OpenAI's error shape and the connection is closed;
- a head not complete ``AUDITGATE_HEADER_TIMEOUT`` seconds after the connection opened or the
  head's first bytes came gets a 408 (a connection that sent nothing is just closed);
- what the parser refuses gets OpenAI's error JSON (:func:`~auditgate.server.http_errors.
  parse_error`), not uvicorn's plain-text ``400 Invalid HTTP request received.``.

The head bounds are read from uvicorn's state after each received chunk: a request has begun
(uvicorn made its scope) and its head is not complete (no request cycle for it yet).  A chunk that
completes its head is not counted, so a body sent right behind its headers is never taken for
them (bytes of a previous request's body in the same chunk as the next head, from a pipelining
client, are counted: the limit is far above any real head).  A head that arrives whole in one
chunk, the usual case, costs one check and no timer.  This reads ``HttpToolsProtocol``'s own
attributes (``scope``, ``cycle``, ``loop``, ``client``, ``transport``): written against uvicorn
0.55; the tests in ``tests/server/test_request_heads.py`` fail if a release changes them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from auditgate.errors import APIError, HeaderFieldsTooLargeError, RequestTimeoutError
from auditgate.server.deadlines import Deadlines
from auditgate.server.http_errors import error_response, parse_error

log = logging.getLogger("auditgate.server")

DEFAULT_MAX_HEAD_BYTES: Final = 64 << 10
"""``AUDITGATE_MAX_HEADER_BYTES`` by default (Node.js: 16 KiB; nginx: 4 × 8 KiB buffers)."""
DEFAULT_HEAD_TIMEOUT_S: Final = 30.0
"""``AUDITGATE_HEADER_TIMEOUT`` by default."""


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


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses a request head over ``config.max_head_bytes`` or
    slower than ``config.head_timeout_s``."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.max_head_bytes: int = getattr(config, "max_head_bytes", DEFAULT_MAX_HEAD_BYTES)
        timeout_s: float = getattr(config, "head_timeout_s", DEFAULT_HEAD_TIMEOUT_S)
        self._heads = _heads(timeout_s)
        self._waiting = False
        """Whether this connection's head deadline runs."""
        self._counted: object = None
        """The scope of the request whose head :attr:`_head_bytes` counts."""
        self._head_bytes = 0
        self._received = False
        """Whether any byte came on this connection (a silent one is closed without a 408)."""

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
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._refuse(parse_error(exc, self.parser.get_method()))
            return
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # serve runs with ws="none"
        scope, cycle = self.scope, self.cycle
        if scope is None or (cycle is not None and cycle.scope is scope):
            if scope is not None and self._waiting:  # its head is complete
                self._heads.stop(self)
                self._waiting = False
            return
        if scope is not self._counted:
            self._counted, self._head_bytes = scope, 0
            if not self._waiting:  # a later request's head came in part
                self._wait_for_head()
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            self._refuse(
                HeaderFieldsTooLargeError(
                    f"The request line and headers are larger than the {self.max_head_bytes}-"
                    "byte limit of this gateway.",
                    code="request_header_fields_too_large",
                )
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
        """Answer ``error`` in OpenAI's shape and close: no request cycle exists for it."""
        if self._waiting:
            self._heads.stop(self)
            self._waiting = False
        self._counted = None
        if self.transport.is_closing():
            return
        log.warning(
            "request from %s: %d %s, connection closed",
            self.client[0] if self.client else "?",
            error.status_code,
            error.message,
        )
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
