"""OpenAI-shaped answers to the errors the HTTP layer finds itself.

uvicorn answers some requests on its own, in plain text: ``400 Invalid HTTP request
received.`` for anything its parser refuses (a bad chunk size, two Content-Lengths, a NUL in a
header, a bad method or request target, HTTP/2's preface) and ``500 Internal Server Error``
when an app fails before it starts a response.  The gateway answers every error in OpenAI's
shape, ``{"error": {"message", "type", "param", "code"}}`` with a JSON content type, so a client
needs one error path; :class:`~auditgate.server.protocol.BoundedHttpToolsProtocol` answers these
with what this module builds.  (The Starlette routes have a last resort of their own,
:class:`~auditgate.server.guard.ErrorGuard`, which answers the same 500.)
"""

from __future__ import annotations

import http
import logging

import httptools
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from auditgate.errors import APIError, InvalidRequestError
from auditgate.server.guard import INTERNAL_ERROR
from auditgate.server.wire import CLOSE, JSON_TYPE, Receive, Scope, Send, encode_json

log = logging.getLogger("auditgate.server")


class HTTPVersionNotSupportedError(InvalidRequestError):
    """A request in an HTTP version the gateway does not speak (505)."""

    status_code = 505


def parse_error(exc: httptools.HttpParserError, method: bytes | None) -> APIError:
    """The answer to a request the HTTP parser refused with ``exc``: a 400 that says what was
    wrong (in llhttp's words), a 505 for HTTP/2's preface (``method`` is what the parser read
    as the method, if anything).  A failure in one of uvicorn's parser callbacks arrives as an
    :class:`httptools.HttpParserCallbackError` whose context is the real error: a request
    target that is not a URL is the client's (400); anything else is the gateway's (500)."""
    if method == b"PRI":
        return HTTPVersionNotSupportedError(
            "This gateway speaks HTTP/1.1; HTTP/2 (with prior knowledge) is not supported.",
            code="http_version_not_supported",
        )
    if isinstance(exc, httptools.HttpParserCallbackError):
        cause = exc.__context__
        if isinstance(cause, httptools.HttpParserInvalidURLError | UnicodeError):
            return InvalidRequestError(
                "Invalid HTTP request: the request target is not a valid URL.",
                code="invalid_http_request",
            )
        log.error("HTTP parser callback failed", exc_info=cause or exc)
        return INTERNAL_ERROR
    reason = str(exc).rstrip(".") or "malformed request"
    return InvalidRequestError(f"Invalid HTTP request: {reason}.", code="invalid_http_request")


def error_response(error: APIError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP/1.1 response carrying ``error``, ending the connection."""
    status = error.status_code
    body = encode_json(error.to_dict())
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode())]
    lines += [b"%s: %s\r\n" % pair for pair in default_headers]
    lines += [b"%s: %s\r\n" % pair for pair in (JSON_TYPE, CLOSE)]
    lines.append(b"content-length: %d\r\n\r\n%s" % (len(body), body))
    return b"".join(lines)


class ErrorApp:
    """An ASGI app whose answer to any request is ``error``, ending the connection: what a
    request the protocol refused runs in place of the gateway when it has to wait its turn."""

    def __init__(self, error: APIError) -> None:
        self.error = error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = encode_json(self.error.to_dict())
        headers = [JSON_TYPE, (b"content-length", b"%d" % len(body)), CLOSE]
        start = {"type": "http.response.start", "status": self.error.status_code}
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class JsonErrorCycle(RequestResponseCycle):
    """uvicorn's request cycle, whose last-resort answer, when the app raised or returned
    before it started a response, is a 500 in OpenAI's shape, not ``Internal Server Error`` in
    plain text (uvicorn has logged the cause).  The protocol makes each of its cycles one (a
    cycle's class is uvicorn's to choose)."""

    async def send_500_response(self) -> None:
        await ErrorApp(INTERNAL_ERROR)(self.scope, self.receive, self.send)  # type: ignore[arg-type]
