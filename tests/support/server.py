"""Run a gateway app in-process under a real uvicorn server on a loopback port.

The server runs in its own thread and event loop, so tests drive it with blocking clients (the
official ``openai`` SDK) exactly as users do, and can still look at in-process state such as a
:class:`~auditgate.audit.sink.MemorySink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import uvicorn

from auditgate.audit.record import AuditRecord
from auditgate.audit.sink import MemorySink, Sink
from auditgate.config import Settings
from auditgate.engines.base import Engine
from auditgate.server.app import GatewayApp, create_app
from auditgate.sinks import build_sinks


class ServerThread:
    """A uvicorn server for one app, started on 127.0.0.1 and a free port."""

    def __init__(self, app: Any, *, http: str = "httptools") -> None:
        self.app = app
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            loop="asyncio",
            http=http,
            lifespan="on",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=10,
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())
        self.loop.close()

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("test server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        assert not self._thread.is_alive(), "test server did not stop"

    def call(self, fn: Callable[[], Any], timeout: float = 10) -> Any:
        """Run a coroutine function on the server's loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


def audit_env(**extra: str) -> dict[str, str]:
    """Settings environment with audit on (memory sink injected by the caller)."""
    env = {"DYN_AUDIT_ENABLED": "1"}
    env.update(extra)
    return env


class TestGateway:
    """An in-process gateway with a memory sink, for SDK-driven tests."""

    __test__ = False

    def __init__(self, server: ServerThread, app: GatewayApp, sink: MemorySink) -> None:
        self.server = server
        self.app = app
        self.sink = sink
        self.url = server.url
        self.base_url = server.base_url

    def records(self, count: int, timeout: float = 10.0) -> list[AuditRecord]:
        """Wait until the sink holds ``count`` records, then flush the audit runtime (every
        record accepted so far is then in the sink) and return them: "exactly ``count``"
        — zero included — is proven by the flush, not hoped for after a sleep."""
        deadline = time.monotonic() + timeout
        while len(self.sink.records) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        assert self.flush(timeout), "the audit runtime did not drain"
        assert len(self.sink.records) == count, self.sink.records
        return list(self.sink.records)

    def flush(self, timeout: float = 10.0) -> bool:
        """:meth:`~auditgate.audit.runtime.AuditRuntime.flush` on the server's loop."""
        audit = self.app.gateway.audit
        result: bool = self.server.call(lambda: audit.flush(timeout), timeout + 1)
        return result


@contextlib.contextmanager
def gateway(
    env: Mapping[str, str] | None = None,
    *,
    engine: Engine | None = None,
    sinks: Sequence[Sink] | None = None,
    configured_sinks: bool = False,
    http: str = "httptools",
) -> Iterator[TestGateway]:
    """A running in-process gateway; records go to a MemorySink, plus ``sinks``, plus (with
    ``configured_sinks``) the sinks ``DYN_AUDIT_SINKS`` names.  ``http``: uvicorn's protocol
    (``serve``'s is ``auditgate.server.protocol:BoundedHttpToolsProtocol``)."""
    memory = MemorySink()
    settings = Settings.from_env(dict(env if env is not None else audit_env()))
    extra = list(sinks or [])
    if configured_sinks:
        extra.extend(build_sinks(settings.audit))
    app = create_app(settings, engine=engine, sinks=[memory, *extra])
    server = ServerThread(app, http=http)
    server.start()
    try:
        yield TestGateway(server, app, memory)
    finally:
        server.stop()
