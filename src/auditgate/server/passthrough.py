"""Pass-through: every path and method the gateway does not serve goes to the upstream as it is.

With the openai engine, a request no route of the gateway serves (``/tokenize``,
``/v1/audio/speech``, ``DELETE /v1/models/x``, …) is proxied to the upstream (see
:class:`~auditgate.server.forwarding.Target`) and its answer relayed back, byte for byte and
never audited:

- method, path and query as the client sent them; the request body and the response body are
  streamed in both directions, one network read at a time, never held whole (so their size has
  no limit here; memory stays bounded by the socket buffers and aiohttp's read buffer);
- headers both ways minus the hop-by-hop ones (:func:`~auditgate.server.forwarding.hop_by_hop`);
  ``Host`` is the upstream's; ``Expect`` is not forwarded (the gateway's server already answered
  it); no header is added — not ``User-Agent``, ``Accept-Encoding`` or ``Content-Type``; only
  a body-less ``POST``/``PUT``/``PATCH`` gets ``Content-Length: 0`` — and compressed bodies are
  relayed compressed;
- credentials as for chat: the client's ``Authorization`` is forwarded only with
  ``AUDITGATE_UPSTREAM_KEY_PASSTHROUGH``; otherwise ``AUDITGATE_UPSTREAM_API_KEY`` is sent, if
  set.  With API keys configured the caller was authenticated before anything is forwarded;
  cookies the upstream sets are never kept (one client's cookie never reaches another);
- failures before the response head are OpenAI errors: unreachable 502
  ``upstream_unreachable``, out of time (``AUDITGATE_UPSTREAM_TIMEOUT`` covers the whole
  exchange, bodies included, as for chat) 504 ``upstream_timeout``; after the head the client's
  connection is closed without the end of the body, so a cut response never looks whole;
- the client going away (also mid-upload) closes the upstream connection, which aborts the
  upstream's work; so does a client whose body stalls for ``AUDITGATE_BODY_TIMEOUT`` (a 408);
- every request is counted in ``auditgate_passthrough_requests_total{path,method,status}``
  (bounded labels; 499: client gone; 502/504: the upstream failed, also after the head).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
from yarl import URL

from auditgate.config import GatewaySettings, Secret
from auditgate.engines.upstream import incomplete, unreachable
from auditgate.errors import APIError, InvalidRequestError, RequestTimeoutError, UpstreamError
from auditgate.logs import RateLimitedLog
from auditgate.server.disconnect import Watching
from auditgate.server.forwarding import PathLabels, Target, hop_by_hop, method_label
from auditgate.server.metrics import PassThroughMetrics
from auditgate.server.wire import ClientGone, Receive, Scope, Send, header, send_error

_NOT_FORWARDED: Final = frozenset({b"host", b"expect", b"authorization"})
"""Request headers the gateway itself answers or replaces (besides the hop-by-hop ones)."""
_NO_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
"""Headers aiohttp would add on its own: the upstream gets the client's, or none."""
# As for the engine's pool: below uvicorn's (hence vLLM's) 5 s keep-alive.
_KEEPALIVE_S: Final = 4.0


class _Client:
    """The client side of one pass-through: streams its request body, then watches for its
    disconnect, which cancels the proxying task while ``active``."""

    __slots__ = ("_idle_s", "_receive", "active", "body_read", "gone", "stalled", "task")

    def __init__(self, receive: Receive, *, has_body: bool, idle_s: float) -> None:
        self._receive = receive
        self._idle_s = idle_s
        self.active = True
        self.gone = False
        self.stalled = False
        self.task = asyncio.current_task()
        self.body_read = asyncio.Event()
        if not has_body:
            self.body_read.set()

    async def body(self) -> AsyncIterator[bytes]:
        """The request body, one ASGI message at a time (aiohttp writes each as it comes).

        A client that sends nothing for ``idle_s`` (``AUDITGATE_BODY_TIMEOUT``) is dropped: it
        would hold an upstream connection until the upstream timeout.  A slow client that keeps
        sending is not: a body streamed has no size from which to set a total deadline."""
        while True:
            try:
                async with asyncio.timeout(self._idle_s):
                    message = await self._receive()
            except TimeoutError:
                # Not a TimeoutError out of here: aiohttp would take it for the upstream's.
                self.stalled = True
                raise ClientGone from None
            if message["type"] == "http.disconnect":
                self.gone = True
                raise ClientGone
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                break
        self.body_read.set()

    def failure(self) -> APIError | ClientGone | None:
        """What to raise when the upload failed because of the client, if it did."""
        if self.stalled:
            return RequestTimeoutError(
                f"The request body stalled for {self._idle_s:g} seconds.", code="request_timeout"
            )
        return ClientGone() if self.gone else None

    async def watch(self) -> None:
        """Once the body is read, wait for ``http.disconnect`` and cancel the task."""
        await self.body_read.wait()
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                if self.active and self.task is not None:
                    self.task.cancel()
                return


class PassThrough:
    """Proxies the requests the gateway does not serve to one upstream (see the module)."""

    def __init__(
        self,
        target: Target,
        metrics: PassThroughMetrics,
        *,
        api_key: Secret | None = None,
        key_passthrough: bool = False,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        body_idle_s: float = 60.0,
        max_connections: int = 256,
    ) -> None:
        self.target = target
        self._body_idle_s = body_idle_s
        self.metrics = metrics
        self._labels = PathLabels()
        self._log = RateLimitedLog()
        self._key_passthrough = key_passthrough
        self._authorization = (
            None if key_passthrough or api_key is None else f"Bearer {api_key.reveal()}"
        )
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def build(cls, settings: GatewaySettings, metrics: PassThroughMetrics) -> PassThrough | None:
        """The pass-through the settings ask for, or None (see :meth:`Target.of`)."""
        target = Target.of(settings)
        if target is None:
            return None
        return cls(
            target,
            metrics,
            api_key=settings.upstream_api_key,
            key_passthrough=settings.upstream_key_passthrough,
            timeout_s=settings.upstream_timeout_s,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            body_idle_s=settings.body_timeout_s,
        )

    def __repr__(self) -> str:
        return f"PassThrough(upstream={self.target.upstream.label!r})"

    async def start(self) -> None:
        """Open the connection pool."""
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, keepalive_timeout=_KEEPALIVE_S
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,  # byte for byte: the client decompresses if it asked to
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_NO_AUTO_HEADERS,
        )

    async def close(self) -> None:
        """Close the pool (requests in flight fail)."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        status = 499
        try:
            status = await self._forward(scope, receive, send)
        except APIError as exc:
            status = exc.status_code
            await send_error(send, exc)
        except ClientGone:
            status = 499
        finally:
            self.metrics.observe(self._labels(scope["path"]), method_label(method), status)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Proxy one request; returns the status to count."""
        url = self.target.url(scope)
        client = _Client(receive, has_body=_has_body(scope), idle_s=self._body_idle_s)
        response: aiohttp.ClientResponse | None = None
        finished = False
        try:
            async with Watching(client, client.watch()):
                response = await self._request(scope, url, client)
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status,
                        "headers": _response_headers(response.raw_headers),
                    }
                )
                failure = await self._relay(response, send)
                if failure is not None:
                    cause = client.failure()  # the upload broke because of the client
                    if cause is not None:
                        return cause.status_code if isinstance(cause, APIError) else 499
                    self._log_cut(scope, failure)
                    return failure.status_code
                client.active = False
                await send({"type": "http.response.body", "body": b""})
                finished = True
                return response.status
            return 499
        finally:
            # Without a response, aiohttp has closed the connection of the failed request.
            if response is not None and finished:
                response.release()
            elif response is not None:
                response.close()  # aborts the upstream's work

    async def _request(self, scope: Scope, url: URL, client: _Client) -> aiohttp.ClientResponse:
        """The upstream's response head (its body not read yet)."""
        session = self._session
        if session is None:
            raise UpstreamError("the pass-through is not started", code="engine_not_started")
        has_body = not client.body_read.is_set()
        send = functools.partial(
            session.request,
            scope["method"],
            url,
            headers=self._request_headers(scope),
            data=client.body() if has_body else None,
            allow_redirects=False,
        )
        upstream = self.target.upstream
        try:
            try:
                return await send()
            except aiohttp.ServerDisconnectedError:
                if has_body:
                    raise  # the body is consumed: it cannot be sent again
                # A pooled connection closed by the upstream as the request went out on it: the
                # upstream answered nothing, so one retry on a fresh connection is safe.
                return await send()
        except TimeoutError as exc:  # before aiohttp.ClientError: its timeouts are both
            raise self._timed_out() from exc
        except aiohttp.ClientError as exc:
            cause = client.failure()  # the upload broke because of the client
            if cause is not None:
                raise cause from exc
            raise unreachable(upstream, exc) from exc
        except ValueError as exc:
            # aiohttp refuses control characters in header values; the gateway's HTTP server
            # normally rejects them first.
            raise InvalidRequestError(
                "a request header cannot be forwarded upstream", code="invalid_header"
            ) from exc

    def _request_headers(self, scope: Scope) -> list[tuple[str, str]]:
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        dropped = hop_by_hop(raw) | _NOT_FORWARDED
        headers = [
            (bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
            for name, value in raw
            if name.lower() not in dropped
        ]
        if self._key_passthrough:
            headers.extend(
                ("Authorization", bytes(value).decode("latin-1"))
                for name, value in raw
                if name.lower() == b"authorization"
            )
        elif self._authorization is not None:
            headers.append(("Authorization", self._authorization))
        return headers

    async def _relay(self, response: aiohttp.ClientResponse, send: Send) -> UpstreamError | None:
        """Send the response body on as it arrives; the failure that cut it, if one did."""
        content = response.content
        try:
            while data := await content.readany():
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except TimeoutError:
            return self._timed_out()
        except aiohttp.ClientError as exc:
            return incomplete(self.target.upstream, exc)
        return None

    def _timed_out(self) -> UpstreamError:
        return UpstreamError(
            f"upstream {self.target.upstream.label} timed out (limit {self._timeout_s:g}s)",
            code="upstream_timeout",
            status_code=504,
        )

    def _log_cut(self, scope: Scope, failure: UpstreamError) -> None:
        # The status is sent: closing the connection without the body's end is all that can
        # tell the client (uvicorn logs that the response was not completed).
        self._log.warning(
            f"passthrough-{failure.code}",
            "pass-through %s %r cut mid-response: %s",
            scope["method"],
            scope["path"],
            failure,
        )


def _has_body(scope: Scope) -> bool:
    """Whether the request has a body to forward (a non-zero length, or chunked)."""
    length = header(scope, b"content-length")
    if length is not None:
        return length.strip() not in (b"", b"0")
    return header(scope, b"transfer-encoding") is not None


def _response_headers(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers minus the hop-by-hop ones, names lower-case (ASGI)."""
    dropped = hop_by_hop(raw)
    return [(name.lower(), value) for name, value in raw if name.lower() not in dropped]
