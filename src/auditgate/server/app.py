"""The app factory: builds one gateway (engine, audit bus, pipeline, routes) from settings.

All state lives on the :class:`Gateway` built here; importing this module has no side effects.
``POST /v1/chat/completions`` is dispatched straight to the raw-ASGI chat handler (``POST
/v1/completions`` and ``/v1/embeddings`` to its siblings in :mod:`auditgate.server.legacy`);
every other route goes through Starlette, whose last route, in front of an upstream, passes
whatever no other route serves through to it (:mod:`auditgate.server.passthrough`).
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.multiprocess import mark_process_dead
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from auditgate.audit.metrics import AuditMetrics, exposition, multiprocess
from auditgate.audit.runtime import AuditRuntime
from auditgate.audit.sink import Sink
from auditgate.auth.keys import KeyRing, Principal
from auditgate.auth.reload import SighupReload
from auditgate.config import GatewaySettings, Settings
from auditgate.endpoints.completions import CompletionsPipeline
from auditgate.endpoints.embeddings import EmbeddingsPipeline
from auditgate.endpoints.responses.service import ResponsesService
from auditgate.endpoints.responses.stored import RecentResponses, StoredResponses
from auditgate.engines.base import Engine
from auditgate.errors import APIError, ConfigError, InvalidRequestError, NotFoundError
from auditgate.pipeline.chat import ChatPipeline
from auditgate.server.completions import CompletionsAPI
from auditgate.server.guard import ErrorGuard
from auditgate.server.handler import ENDPOINT, ChatHandler
from auditgate.server.headers import HeaderCapture
from auditgate.server.legacy import CompletionsHandler, EmbeddingsHandler
from auditgate.server.metrics import HttpMetrics, PassThroughMetrics
from auditgate.server.passthrough import PassThrough
from auditgate.server.responses import PATH as RESPONSES
from auditgate.server.responses import ResponsesAPI, ResponsesHandler
from auditgate.server.wire import (
    ASGIApp,
    BodyDeadlines,
    Receive,
    Scope,
    Send,
    header,
    send_error,
)
from auditgate.store.queries import Store
from auditgate.store.url import open_store

if TYPE_CHECKING:
    from auditgate.console import Console
    from auditgate.endpoints.responses.passthrough import ResponsesPassthrough
    from auditgate.grpc import GrpcFrontend

log = logging.getLogger("auditgate")

PRINCIPAL = "auditgate.principal"
"""Scope key of the authenticated :class:`Principal` (absent in open mode)."""


def principal_of(scope: Scope) -> Principal | None:
    """The caller, when API keys are configured."""
    value = scope.get(PRINCIPAL)
    return value if isinstance(value, Principal) else None


def store_url_of(settings: Settings) -> str | None:
    """``AUDITGATE_STORE_URL``, else the ``sqlite`` sink's file, else the ``postgres`` sink's."""
    if settings.gateway.store_url:
        return settings.gateway.store_url
    audit = settings.audit
    if "sqlite" in audit.sinks:
        return audit.sqlite_path
    if "postgres" in audit.sinks and audit.postgres_url is not None:
        return audit.postgres_url.reveal()
    return None


def build_engine(settings: GatewaySettings) -> Engine:
    """The engine the settings name."""
    if settings.engine == "openai":
        from auditgate.engines.openai_http import OpenAIEngine

        return OpenAIEngine(
            settings.upstream_url,
            routes=settings.upstream_routes,
            api_key=settings.upstream_api_key,
            key_passthrough=settings.upstream_key_passthrough,
            timeout_s=settings.upstream_timeout_s,
            connect_timeout_s=settings.upstream_connect_timeout_s,
        )
    from auditgate.engines.mock import MockEngine

    return MockEngine(
        settings.models, ttft_s=settings.mock_ttft_ms / 1000.0, itl_s=settings.mock_itl_ms / 1000.0
    )


def build_passthrough(settings: GatewaySettings) -> ResponsesPassthrough | None:
    """The upstream ``/v1/responses`` relay when ``AUDITGATE_RESPONSES=passthrough`` in front of
    an upstream; ``None``: Responses requests are translated to chat completions (always with
    the mock engine, which has no ``/v1/responses`` of its own)."""
    if settings.engine != "openai" or settings.responses != "passthrough":
        return None
    from auditgate.endpoints.responses.passthrough import ResponsesPassthrough

    return ResponsesPassthrough(settings)


class Gateway:
    """One gateway process's state: settings, engine, audit runtime, store, keys and metrics."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        sinks: Sequence[Sink] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.audit_metrics = AuditMetrics(self.registry)
        self.http_metrics = HttpMetrics(self.registry)
        self.engine = engine if engine is not None else build_engine(settings.gateway)
        self.audit = AuditRuntime(
            settings.audit,
            self.audit_metrics,
            engine=self.engine.name,
            sinks=sinks,
            workers=settings.gateway.workers,
        )
        self.pipeline = ChatPipeline(self.engine, self.audit.auditor)
        self.header_capture = HeaderCapture.build(settings.audit.header_capture)
        self.body_deadlines = BodyDeadlines(settings.gateway.body_timeout_s)
        keys_file = settings.gateway.api_keys_file
        self.keys: KeyRing | None = (
            KeyRing.load(keys_file, registry=self.registry) if keys_file else None
        )
        self._sighup: SighupReload | None = None
        url = store_url_of(settings)
        self.store: Store | None = open_store(url) if url else None
        self.stored_responses = StoredResponses(self.store, RecentResponses())
        self.responses = ResponsesService(
            self.engine,
            self.audit.auditor,
            self.stored_responses,
            passthrough=build_passthrough(settings.gateway),
        )
        self.grpc: GrpcFrontend | None = None
        self.passthrough = PassThrough.build(settings.gateway, PassThroughMetrics(self.registry))
        """Where the requests no route serves go (None: they are 404s)."""

    async def start(self) -> None:
        """Start the engine, the pass-through, the audit runtime (opening every sink), the
        store and gRPC."""
        await self.engine.start()
        await self.responses.start()
        if self.passthrough is not None:
            await self.passthrough.start()
            log.info("pass-through on: paths no route serves go to %r", self.passthrough)
        await self.audit.start()
        if self.store is not None:
            await self.store.open()
            log.info("stored completions: %r", self.store)
        gw = self.settings.gateway
        if gw.grpc_port is not None:
            from auditgate.grpc import GrpcFrontend, InferenceServicer

            servicer = InferenceServicer(
                self.pipeline,
                keys=self.keys,
                models=self.engine.models,
                capture_headers=self.header_capture,
            )
            # With --workers N each worker serves gRPC on the shared port (SO_REUSEPORT).
            self.grpc = GrpcFrontend(
                servicer,
                host=gw.host,
                port=gw.grpc_port,
                reuse_port=gw.workers > 1,
                max_message_bytes=gw.max_body_bytes,
            )
            await self.grpc.start()
        if self.keys is None:
            log.warning(
                "OPEN MODE: no API keys configured (AUDITGATE_API_KEYS_FILE); anyone who can reach "
                "this port can call every endpoint and read every stored completion"
            )
        else:
            log.info(
                "API keys: %d configured; every endpoint but /health needs one", len(self.keys)
            )
            self._sighup = SighupReload.install(self.keys)
        if not self.audit.enabled:
            log.info("audit off (set DYN_AUDIT_ENABLED=1 to record chat completions)")

    async def stop(self) -> None:
        """Stop gRPC, close the engine and the store, then drain the audit bus in the deadline."""
        if self._sighup is not None:
            self._sighup.remove()
        try:
            try:
                try:
                    if self.grpc is not None:
                        # Running calls get the drain deadline, then are cancelled (and recorded).
                        await self.grpc.stop(self.settings.gateway.drain_timeout_s)
                finally:
                    try:
                        await self.engine.close()
                    finally:
                        try:
                            await self.responses.close()
                        finally:
                            if self.passthrough is not None:
                                await self.passthrough.close()
            finally:
                await self.stored_responses.close()
                if self.store is not None:
                    await self.store.close()
        finally:
            await self.audit.stop(self.settings.gateway.drain_timeout_s)


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    sinks: Sequence[Sink] | None = None,
) -> GatewayApp:
    """Build the ASGI app for ``settings``; ``engine``/``sinks`` replace the configured ones."""
    return GatewayApp(Gateway(settings, engine=engine, sinks=sinks))


def console_of(gateway: Gateway) -> Console:
    """The web console at ``/ui``, reading this gateway's store, keys and metrics."""
    from auditgate.console import Console, ConsoleConfig

    async def metrics() -> str | None:
        gateway.audit_metrics.refresh()
        return exposition(gateway.registry).decode()

    settings = gateway.settings
    key, secret = settings.audit.integrity_key, settings.gateway.ui_secret
    config = ConsoleConfig(
        store_url=store_url_of(settings),
        keys=gateway.keys,
        metrics=metrics,
        integrity_key=key.reveal() if key is not None else None,
        live=True,
        secret=secret.reveal().encode() if secret is not None else None,
    )
    return Console(config, gateway.store)


class GatewayApp:
    """The ASGI app: the chat fast path, the lifespan (gateway start and stop), then Starlette
    for everything else."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

        def handler(kind: type[ChatHandler], pipeline: ChatPipeline) -> ChatHandler:
            return kind(
                pipeline,
                max_body_bytes=gateway.settings.gateway.max_body_bytes,
                deadlines=gateway.body_deadlines,
                capture_headers=gateway.header_capture,
                metrics=gateway.http_metrics,
            )

        auditor, engine = gateway.audit.auditor, gateway.engine
        self.chat = handler(ChatHandler, gateway.pipeline)
        self.posts: dict[str, ChatHandler] = {
            posts.path: posts
            for posts in (
                handler(CompletionsHandler, CompletionsPipeline(engine, auditor)),
                handler(EmbeddingsHandler, EmbeddingsPipeline(engine, auditor)),
            )
        }
        """The other raw-ASGI ``POST`` routes, by path."""
        self.responses = ResponsesHandler(gateway, gateway.responses)
        self.stored_responses = ResponsesAPI(gateway.stored_responses, principal_of)
        self.completions = CompletionsAPI(
            gateway.store,
            principal_of,
            max_body_bytes=gateway.settings.gateway.max_body_bytes,
            deadlines=gateway.body_deadlines,
        )
        self.router = self._router()
        self.console = console_of(gateway) if gateway.settings.gateway.ui else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if self.console is not None and (path == "/ui" or path.startswith("/ui/")):
                await self.console(scope, receive, send)  # its own sign-in and sessions
                return
            keys = self.gateway.keys
            if keys is not None and scope["path"] != "/health":
                try:
                    scope[PRINCIPAL] = await keys.authenticate(header(scope, b"authorization"))
                except APIError as exc:
                    await send_error(send, exc)
                    return
            if scope["method"] == "POST":
                path = scope["path"]
                if path == ENDPOINT:
                    await self.chat(scope, receive, send)
                    return
                if path == RESPONSES:
                    await self.responses(scope, receive, send)
                    return
                handler = self.posts.get(path)
                if handler is not None:
                    await handler(scope, receive, send)
                    return
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.router(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol: start the gateway, serve until shutdown, stop it.

        A :class:`ConfigError` while starting (a sink's database missing, a stream that does not
        capture the subject, a bad credential) fails startup with its one-line message: it is
        the operator's to fix, and a traceback would bury it.  Anything else keeps its traceback.
        """
        gateway = self.gateway
        await receive()  # lifespan.startup
        try:
            await gateway.start()
        except ConfigError as exc:
            await send({"type": "lifespan.startup.failed", "message": f"auditgate: {exc}"})
            return
        except BaseException:
            await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
            raise
        if self.console is not None:
            await self.console.start()
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            if self.console is not None:
                await self.console.stop()
            await gateway.stop()
        except BaseException:
            await send({"type": "lifespan.shutdown.failed", "message": traceback.format_exc()})
            raise
        finally:
            if multiprocess():  # this process's live gauges leave the sums
                mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
        await send({"type": "lifespan.shutdown.complete"})

    def _router(self) -> ASGIApp:
        app = Starlette(
            routes=[
                Route("/health", self._health, methods=["GET"]),
                Route("/metrics", self._metrics, methods=["GET"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/models/{model:path}", self._model, methods=["GET"]),
                Route(ENDPOINT, self.completions.list, methods=["GET"]),
                Route(f"{ENDPOINT}/{{completion_id}}", self.completions.retrieve, methods=["GET"]),
                Route(f"{ENDPOINT}/{{completion_id}}", self.completions.update, methods=["POST"]),
                Route(f"{ENDPOINT}/{{completion_id}}", self.completions.delete, methods=["DELETE"]),
                Route(
                    f"{ENDPOINT}/{{completion_id}}/messages",
                    self.completions.messages,
                    methods=["GET"],
                ),
                *self._responses_routes(),
            ],
            exception_handlers={
                APIError: self._api_error,
                HTTPException: self._http_error,
            },
            # Between Starlette's plain-text 500 and the handlers above: any other exception
            # is logged and answered with OpenAI's 500 JSON.
            middleware=[Middleware(ErrorGuard)],
        )
        if self.gateway.passthrough is not None:
            # Last, and after every route above (so no route added there is shadowed): the
            # router takes the first route matching path *and* method, so this one gets every
            # unknown path and every method a known path does not take.
            app.router.routes.append(Route("/{path:path}", self.gateway.passthrough))
        return app

    def _responses_routes(self) -> list[Route]:
        api = self.stored_responses
        return [
            Route(f"{RESPONSES}/{{response_id}}", api.retrieve, methods=["GET"]),
            Route(f"{RESPONSES}/{{response_id}}", api.delete, methods=["DELETE"]),
            Route(f"{RESPONSES}/{{response_id}}/input_items", api.input_items, methods=["GET"]),
        ]

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _metrics(self, request: Request) -> Response:
        """This process's metrics; with ``--workers N`` those of every worker, summed."""
        self.gateway.audit_metrics.refresh()  # multiprocess: this worker's gauges exact
        return Response(exposition(self.gateway.registry), media_type=CONTENT_TYPE_LATEST)

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": self.gateway.engine.models()})

    async def _model(self, request: Request) -> Response:
        wanted = request.path_params["model"]
        for model in self.gateway.engine.models():
            if model.get("id") == wanted:
                return JSONResponse(model)
        raise NotFoundError(
            f"The model '{wanted}' does not exist", param="model", code="model_not_found"
        )

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        headers = {"connection": "close"} if exc.close_connection else None
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error: APIError
        if exc.status_code == 404:
            error = NotFoundError(f"Unknown route: {request.method} {request.url.path}")
        else:
            error = InvalidRequestError(str(exc.detail), status_code=exc.status_code)
        headers: dict[str, Any] = dict(exc.headers or {})
        return JSONResponse(error.to_dict(), status_code=exc.status_code, headers=headers)
