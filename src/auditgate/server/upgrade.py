"""``Upgrade`` requests, read as the plain HTTP/1.1 requests they also are.

llhttp ends a request that asks for an ``Upgrade`` (``Connection: upgrade`` with an ``Upgrade``
header) at its head, as if it had no body, and hands the connection over to the protocol it
names.  The gateway speaks only HTTP/1.1, and a server may ignore ``Upgrade`` (RFC 9110 §7.8):
the request is served as it is, and a body it declared is its own.  ``curl --http2`` sends
exactly that for a POST to an ``http://`` URL (``Upgrade: h2c``); before, its JSON body never
reached the endpoint (a 400: the body was empty) and was then parsed as a request of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from auditgate.server.framing import content_length


def declared_body(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The framing header of the body the request's ``headers`` declare (the parser has checked
    them), or None if it has none."""
    length = content_length(headers)
    if length:
        return b"content-length: %d\r\n" % length
    if length is None and any(name == b"transfer-encoding" for name, _ in headers):
        return b"transfer-encoding: chunked\r\n"
    return None


class UpgradeBody:
    """Reads the body of an ``Upgrade`` request into it, in place of the connection's parser,
    then gives the connection its parser back.  Made once the parser has read the head; the
    protocol feeds it the body's bytes, and no more, as it feeds a body to the parser."""

    def __init__(self, protocol: HttpToolsProtocol, framing: bytes) -> None:
        self.protocol = protocol
        self.connection_parser = protocol.parser
        self.on_body = protocol.on_body
        parser = httptools.HttpRequestParser(self)
        parser.feed_data(b"POST / HTTP/1.1\r\n%s\r\n" % framing)  # framed as the request is
        protocol.cycle.more_body = True  # uvicorn took the request for complete
        protocol.parser = parser

    def on_message_complete(self) -> None:
        self.protocol.on_message_complete()
        self.protocol.parser = self.connection_parser
