"""The console served alone (``auditgate ui``): a store, optionally keys and a gateway's metrics.

For an analyst's box that reads a store the gateways write: nothing here publishes records.  The
store is opened at startup (a store that cannot be opened fails the startup with one line) and
closed at shutdown; ``/`` leads to the console.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from typing import Any, Final

from starlette.responses import RedirectResponse

from auditgate.auth.keys import KeyRing
from auditgate.auth.reload import SighupReload
from auditgate.console.app import PREFIX, Console, ConsoleConfig, MetricsSource
from auditgate.errors import ConfigError
from auditgate.store.url import open_store

log = logging.getLogger("auditgate.console")

_METRICS_TIMEOUT_S: Final = 5.0


def metrics_from(url: str) -> MetricsSource:
    """A metrics source that fetches a gateway's ``/metrics`` (``None`` when it cannot)."""

    def fetch() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=_METRICS_TIMEOUT_S) as response:
                return str(response.read().decode("utf-8", "replace"))
        except OSError as exc:
            log.warning("console: cannot read metrics from %s: %s", url, exc)
            return None

    async def source() -> str | None:
        return await asyncio.to_thread(fetch)

    return source


class StandaloneConsole:
    """An ASGI app: the console plus the lifespan that opens and closes its store."""

    def __init__(
        self,
        store_url: str,
        *,
        keys_file: str | None,
        metrics_url: str | None,
        integrity_key: str | None,
        secret: bytes | None,
    ) -> None:
        self.store = open_store(store_url, must_exist=True)
        config = ConsoleConfig(
            store_url=store_url,
            keys=KeyRing.load(keys_file) if keys_file else None,
            metrics=metrics_from(metrics_url) if metrics_url else None,
            integrity_key=integrity_key,
            live=True,
            secret=secret,
        )
        self.console = Console(config, self.store)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http" and not scope["path"].startswith(PREFIX):
            await RedirectResponse(PREFIX + "/records", status_code=303)(scope, receive, send)
        else:
            await self.console(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        await receive()  # lifespan.startup
        try:
            await self.store.open()
        except ConfigError as exc:
            await send({"type": "lifespan.startup.failed", "message": f"auditgate ui: {exc}"})
            return
        if self.console.config.keys is None:
            log.warning(
                "console in OPEN MODE: no --api-keys-file; anyone who can reach it is admin"
            )
        keys = self.console.config.keys
        sighup = SighupReload.install(keys) if keys is not None else None
        await self.console.start()
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        if sighup is not None:
            sighup.remove()
        await self.console.stop()
        await self.store.close()
        await send({"type": "lifespan.shutdown.complete"})
