"""The ``openai`` engine: any OpenAI-compatible upstream over pooled keep-alive HTTP.

One :class:`aiohttp.ClientSession` per engine (created in :meth:`OpenAIEngine.start`) sends
``POST {base}/chat/completions`` (legacy completions: ``{base}/completions``, embeddings:
``{base}/embeddings``) with the body as the pipeline made it.  The upstream is chosen by
the request's ``model``: the routing table first, then the default URL; a model neither knows is
404 ``model_not_found``.

Credentials: the configured ``api_key`` is sent as ``Authorization: Bearer``; with
``key_passthrough`` the client's own ``Authorization`` header is forwarded instead (and a request
without one is sent without credentials: the configured key is never a fallback).  The key never
appears in a repr, a log line or an error message.  ``X-Request-Id`` carries the gateway's request
id upstream.

Errors (all :class:`~auditgate.errors.APIError`, nothing else escapes):

- upstream 4xx with an OpenAI error body (also vLLM's flat ``{"object": "error", ...}``) →
  :class:`UpstreamRejection` with the upstream's status, message, type, param and code;
- upstream 5xx, a 3xx, or a 4xx without an error body → 502 naming the upstream status;
- refused / reset / unresolvable → 502 ``upstream_unreachable`` (a connection closed before any
  answer is retried once first); ``timeout_s`` covers the whole exchange, stream included, and
  running out of it → 504 ``upstream_timeout``; a body that is not the JSON promised → 502
  ``upstream_invalid_response``; a passthrough ``Authorization`` that cannot be sent → 400;
- in a stream: an event whose JSON has an ``error`` key (or an ``event: error``) → 502 with the
  upstream's message; the connection lost or the body ended before ``[DONE]`` → 502
  ``upstream_incomplete``.

Models: :meth:`OpenAIEngine.models` lists the routing table's models plus the models the default
upstream reported at :meth:`~OpenAIEngine.start` (fetched once, best effort: a failure is logged
as a warning and only the routing table is listed).  Nothing is fetched at request time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from operator import attrgetter
from typing import Any, Final

import aiohttp
import msgspec
from yarl import URL

from auditgate.config import Secret
from auditgate.engines.base import EngineRequest
from auditgate.engines.sse_decoder import SSEDecoder, SSEError
from auditgate.engines.upstream import (
    Upstream,
    UpstreamRejection,
    error_fields,
    incomplete,
    invalid,
    message_of,
    parse_upstream,
    read_bounded,
    unreachable,
)
from auditgate.errors import (
    UNDECODABLE,
    APIError,
    ConfigError,
    InvalidRequestError,
    NotFoundError,
    UpstreamError,
)

log = logging.getLogger(__name__)

_DONE: Final = b"[DONE]"
# Below the keep-alive timeout of common upstream servers (uvicorn, hence vLLM/SGLang: 5 s), so
# the pool never sends a request on a connection the server is closing at that very moment.
_KEEPALIVE_S: Final = 4.0
# After [DONE], how long a background task waits for the end of the body to keep the connection.
_DRAIN_S: Final = 5.0

_CHAT_URL: Final[Callable[[Upstream], URL]] = attrgetter("chat_url")
_COMPLETIONS_URL: Final[Callable[[Upstream], URL]] = attrgetter("completions_url")

_decode_object = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.encode


class OpenAIEngine:
    """Relays chat completions to OpenAI-compatible upstreams (see the module docstring)."""

    name = "openai"

    def __init__(
        self,
        default_url: str | None,
        *,
        routes: Sequence[tuple[str, str]] = (),
        api_key: Secret | None = None,
        key_passthrough: bool = False,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        max_connections: int = 256,
    ) -> None:
        if default_url is None and not routes:
            raise ConfigError("the openai engine needs a default upstream URL or routes")
        by_base: dict[str, Upstream] = {}
        for base in [default_url, *(url for _, url in routes)]:
            if base is not None and base not in by_base:
                by_base[base] = parse_upstream(base)
        self._default = by_base[default_url] if default_url is not None else None
        self._routes = {model: by_base[url] for model, url in routes}
        self._api_key = api_key
        self._passthrough = key_passthrough
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._drains: set[asyncio.Task[None]] = set()
        self._upstream_models: list[dict[str, Any]] = []
        self._created = int(time.time())
        auth = (
            {}
            if key_passthrough or api_key is None
            else {"Authorization": f"Bearer {api_key.reveal()}"}
        )
        # Identity: decompressing costs CPU on the hot path and gains nothing on a LAN.  aiohttp
        # still decompresses if an upstream compresses anyway (auto_decompress stays on, and it
        # costs nothing when there is no Content-Encoding).
        common = {"Content-Type": "application/json", "Accept-Encoding": "identity", **auth}
        self._json_headers = {"Accept": "application/json", **common}
        self._sse_headers = {"Accept": "text/event-stream", **common}

    def __repr__(self) -> str:
        default = self._default.label if self._default else None
        return f"OpenAIEngine(default={default!r}, routes={len(self._routes)})"

    async def start(self) -> None:
        """Open the connection pool; fetch the default upstream's model list once (best effort)."""
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, keepalive_timeout=_KEEPALIVE_S
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        if self._default is not None:
            self._upstream_models = await self._fetch_models(self._session, self._default)

    async def close(self) -> None:
        """Close the pool; in-flight drains of finished streams are cancelled."""
        for task in list(self._drains):
            task.cancel()
        if self._drains:
            await asyncio.gather(*self._drains, return_exceptions=True)
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def models(self) -> list[dict[str, Any]]:
        """The routing table's models, then those the default upstream reported at start."""
        listed = [
            {"id": model, "object": "model", "created": self._created, "owned_by": "auditgate"}
            for model in self._routes
        ]
        seen = set(self._routes)
        for model in self._upstream_models:
            if model["id"] not in seen:
                seen.add(model["id"])
                listed.append(model)
        return listed

    async def complete(self, request: EngineRequest) -> dict[str, Any]:
        """One ``chat.completion`` from the request's upstream."""
        upstream = self._route(request)
        return await self._fetch(upstream, upstream.chat_url, request, "choices")

    async def complete_text(self, request: EngineRequest) -> dict[str, Any]:
        """One legacy ``text_completion`` from the upstream's ``/completions``."""
        upstream = self._route(request)
        return await self._fetch(upstream, upstream.completions_url, request, "choices")

    async def embed(self, request: EngineRequest) -> dict[str, Any]:
        """An embeddings ``list`` from the upstream's ``/embeddings``."""
        upstream = self._route(request)
        return await self._fetch(upstream, upstream.embeddings_url, request, "data")

    def stream(self, request: EngineRequest) -> AsyncGenerator[list[dict[str, Any]], None]:
        """The upstream's ``chat.completion.chunk`` batches (see :meth:`_relay`)."""
        return self._relay(request, _CHAT_URL)

    def stream_text(self, request: EngineRequest) -> AsyncGenerator[list[dict[str, Any]], None]:
        """The upstream's legacy ``text_completion`` chunk batches (see :meth:`_relay`)."""
        return self._relay(request, _COMPLETIONS_URL)

    async def _fetch(
        self, upstream: Upstream, url: URL, request: EngineRequest, key: str
    ) -> dict[str, Any]:
        """The JSON object ``url`` answers; one without ``key`` but with ``error`` is a 502."""
        response = await self._post(upstream, url, request, self._json_headers)
        try:
            if not 200 <= response.status < 300:
                raise await self._error_from(upstream, response, request)
            try:
                body = await response.read()
            except TimeoutError as exc:
                raise self._timed_out(upstream) from exc
            except aiohttp.ClientError as exc:
                raise incomplete(upstream, exc) from exc
        finally:
            response.release()
        try:
            completion = _decode_object(body)
        except UNDECODABLE as exc:
            raise invalid(upstream, "a response that is not a JSON object") from exc
        if "error" in completion and key not in completion:
            message = self._scrub(message_of(completion["error"]), request)
            raise UpstreamError(
                f"upstream {upstream.label} error: {message}", code="upstream_error"
            )
        return completion

    async def _relay(
        self, request: EngineRequest, url_of: Callable[[Upstream], URL]
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """The upstream's chunks, one batch per network read; ends at ``[DONE]``.

        Closing the generator early (``aclose()``, or cancellation while it waits) closes the
        upstream connection, which aborts the upstream's generation.
        """
        upstream = self._route(request)
        response = await self._post(upstream, url_of(upstream), request, self._sse_headers)
        done = False
        try:
            if not 200 <= response.status < 300:
                raise await self._error_from(upstream, response, request)
            if response.content_type == "application/json":
                raise await self._error_from(upstream, response, request)  # not a stream
            decoder = SSEDecoder()
            content = response.content
            while not done:
                try:
                    data = await content.readany()
                except TimeoutError as exc:
                    raise self._timed_out(upstream) from exc
                except aiohttp.ClientError as exc:
                    raise incomplete(upstream, exc) from exc
                if not data:
                    raise UpstreamError(
                        f"upstream {upstream.label} ended the stream before [DONE]",
                        code="upstream_incomplete",
                    )
                try:
                    events = decoder.feed(data)
                except SSEError as exc:
                    raise invalid(upstream, f"a malformed event stream ({exc})") from exc
                batch: list[dict[str, Any]] = []
                failure: UpstreamError | None = None
                for event in events:
                    if event.data == _DONE:
                        done = True
                        break
                    if not event.data:
                        continue  # an empty event: a keep-alive some servers send
                    try:
                        batch.append(self._chunk(upstream, event.data, event.event, request))
                    except UpstreamError as exc:
                        failure = exc
                        break
                if batch:
                    yield batch  # the chunks before a failure still reach the client first
                if failure is not None:
                    raise failure
        finally:
            self._finish(response, done)

    def _route(self, request: EngineRequest) -> Upstream:
        model = request.body.get("model")
        upstream = self._routes.get(model) if isinstance(model, str) else None
        if upstream is not None:
            return upstream
        if self._default is not None:
            return self._default
        raise NotFoundError(
            f"The model {model!r} does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )

    async def _post(
        self, upstream: Upstream, url: URL, request: EngineRequest, base_headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        session = self._session
        if session is None:
            raise UpstreamError("the openai engine is not started", code="engine_not_started")
        headers = {**base_headers, "X-Request-Id": request.request_id}
        if self._passthrough and request.authorization:
            headers["Authorization"] = request.authorization
        send = functools.partial(
            session.post,
            url,
            data=_encode(request.body),
            headers=headers,
            allow_redirects=False,
        )
        try:
            try:
                return await send()
            except aiohttp.ServerDisconnectedError:
                # A pooled connection can be closed by the server just as a request goes out on
                # it; the server answered nothing, so one retry on a fresh connection is safe.
                return await send()
        except TimeoutError as exc:
            raise self._timed_out(upstream) from exc
        except aiohttp.ClientError as exc:
            raise unreachable(upstream, exc) from exc
        except ValueError as exc:
            # aiohttp refuses control characters in headers; only a forwarded client
            # Authorization can carry them (the gateway's HTTP server normally rejects them first).
            raise InvalidRequestError(
                "the Authorization header cannot be forwarded upstream", code="invalid_header"
            ) from exc

    def _chunk(
        self, upstream: Upstream, data: bytes, event: str | None, request: EngineRequest
    ) -> dict[str, Any]:
        try:
            chunk = _decode_object(data)
        except UNDECODABLE as exc:
            if event == "error":
                message = data.decode(errors="replace")
                raise UpstreamError(self._scrub(message, request), code="upstream_error") from exc
            raise invalid(upstream, "an event that is not a JSON object") from exc
        if "error" in chunk or event == "error":
            raise UpstreamError(
                self._scrub(message_of(chunk.get("error", chunk)), request), code="upstream_error"
            )
        if "choices" not in chunk:
            raise invalid(upstream, "an event that is not a chat.completion.chunk")
        return chunk

    def _finish(self, response: aiohttp.ClientResponse, done: bool) -> None:
        """Give the connection back: to the pool if the body ended, else abort the request."""
        if not done:
            # Error, cancellation or early stop: closing the connection aborts the upstream's work.
            response.close()
        elif response.content.is_eof():
            response.release()
        else:
            # [DONE] came before the end of the chunked body; read the rest off the hot path so
            # the connection can be reused rather than reconnected.
            task = asyncio.get_running_loop().create_task(_drain(response))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)

    async def _error_from(
        self, upstream: Upstream, response: aiohttp.ClientResponse, request: EngineRequest
    ) -> APIError:
        """The error a failed response stands for: a non-2xx, or JSON where a stream was asked."""
        status = response.status
        try:
            body = await read_bounded(response)
        except TimeoutError:
            return self._timed_out(upstream)
        except aiohttp.ClientError:
            body = b""  # the status alone still makes a useful error
        fields = error_fields(body)
        if 200 <= status < 300:
            if fields is not None:
                return UpstreamError(self._scrub(fields[0], request), code="upstream_error")
            return invalid(upstream, "JSON instead of an event stream")
        if fields is not None and 400 <= status < 500:
            message, error_type, param, code = fields
            return UpstreamRejection(
                self._scrub(message, request),
                status_code=status,
                error_type=error_type or "invalid_request_error",
                param=param,
                code=code,
            )
        detail = f": {self._scrub(fields[0], request)}" if fields else ""
        return UpstreamError(
            f"upstream {upstream.label} returned HTTP {status}{detail}", code="upstream_error"
        )

    def _timed_out(self, upstream: Upstream) -> UpstreamError:
        return UpstreamError(
            f"upstream {upstream.label} timed out (limit {self._timeout_s:g}s, "
            f"connect {self._connect_timeout_s:g}s)",
            code="upstream_timeout",
            status_code=504,
        )

    def _scrub(self, message: str, request: EngineRequest) -> str:
        """The message without any credential the gateway sent (upstreams echo odd things)."""
        for secret in (
            self._api_key.reveal() if self._api_key else None,
            request.authorization if self._passthrough else None,
        ):
            if secret:
                message = message.replace(secret, "<redacted>")
                token = secret.removeprefix("Bearer ").strip()
                if token:
                    message = message.replace(token, "<redacted>")
        return message

    async def _fetch_models(
        self, session: aiohttp.ClientSession, upstream: Upstream
    ) -> list[dict[str, Any]]:
        headers = {k: v for k, v in self._json_headers.items() if k != "Content-Type"}
        timeout = aiohttp.ClientTimeout(total=self._connect_timeout_s)
        try:
            async with session.get(
                upstream.models_url, headers=headers, timeout=timeout
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
            listed = _decode_object(body).get("data")
            if not isinstance(listed, list):
                raise ValueError("no data list")
        # msgspec's DecodeError is a ValueError.
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            log.warning(
                "could not list the models of upstream %s (%s: %s); "
                "GET /v1/models lists only the routed models",
                upstream.label,
                type(exc).__name__,
                exc,
            )
            return []
        return [m for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)]


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read a finished stream's trailing bytes so its connection returns to the pool."""
    try:
        async with asyncio.timeout(_DRAIN_S):
            while await response.content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError):
        response.close()
    finally:
        response.release()  # a no-op after close()
