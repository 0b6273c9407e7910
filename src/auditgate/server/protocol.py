"""uvicorn's httptools protocol with a bound on the size of a request's head.

httptools, and uvicorn on top of it, accept a request line and headers of any size and buffer
them until the blank line that ends them: one client sending a header that never ends grew the
gateway by as much as it sent (measured: 300 MiB of one header, +350 MB resident).  uvicorn's
h11 protocol has a limit but parses several times slower.  So ``serve`` runs this subclass: once
the bytes of a head that is not complete yet pass ``AUDITGATE_MAX_HEADER_BYTES``, the client
gets a 431 in OpenAI's error shape and the connection is closed.

Counting happens per received chunk, after the parser took it: a chunk after which the head is
still incomplete was head (apart from the end of a previous request's body sent in the same
chunk by a pipelining client, counted too: the limit is far above any real head for that), and
a chunk that completes the head is not counted at all, so a large body sent right behind its
headers is never mistaken for them.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from auditgate.errors import APIError
from auditgate.server.asgi import encode_json

log = logging.getLogger("auditgate.server")

DEFAULT_MAX_HEAD_BYTES: Final = 64 << 10
"""``AUDITGATE_MAX_HEADER_BYTES`` by default (Node.js: 16 KiB; nginx: 4 × 8 KiB buffers)."""


class HeaderFieldsTooLargeError(APIError):
    """A request head (request line and headers) over the limit (431)."""

    status_code = 431
    error_type = "invalid_request_error"
    close_connection = True


class GatewayConfig(uvicorn.Config):
    """uvicorn's config plus the head limit :class:`BoundedHttpToolsProtocol` reads (a class
    at module level: ``serve --workers N`` sends the config to its worker processes)."""

    def __init__(self, *args: Any, max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_head_bytes = max_head_bytes


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses a request head over ``config.max_head_bytes``."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.max_head_bytes: int = getattr(config, "max_head_bytes", DEFAULT_MAX_HEAD_BYTES)
        self._counted: object = None
        """The scope of the request whose head :attr:`_head_bytes` counts."""
        self._head_bytes = 0

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A request has begun (uvicorn made its scope) and its head is not complete (no
        # request cycle for that scope yet).  Read from uvicorn's state rather than by
        # overriding its parser callbacks: two Python calls fewer per request.
        scope, cycle = self.scope, self.cycle
        if scope is None or (cycle is not None and cycle.scope is scope):
            return
        if scope is not self._counted:
            self._counted, self._head_bytes = scope, 0
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            self._refuse_head()

    def _refuse_head(self) -> None:
        if self.transport.is_closing():
            return
        error = HeaderFieldsTooLargeError(
            f"The request line and headers are larger than the {self.max_head_bytes}-byte "
            "limit of this gateway.",
            code="request_header_fields_too_large",
        )
        body = encode_json(error.to_dict())
        log.warning(
            "request head over %d bytes from %s: 431, connection closed",
            self.max_head_bytes,
            self.client[0] if self.client else "?",
        )
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()
