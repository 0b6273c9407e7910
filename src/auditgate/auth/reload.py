"""SIGHUP: re-read the API keys file at once, as daemons do with their configuration.

The ring also follows the file by itself (see :class:`~auditgate.auth.keys.KeyRing`); the
signal is for an operator who wants the change in force now, or who edited the file in a way
that kept its inode, size and mtime.  With ``--workers N`` send it to every worker (or to the
uvicorn supervisor, which answers SIGHUP by restarting its workers: they read the file anew).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from auditgate.auth.keys import KeyRing

log = logging.getLogger("auditgate.auth")


class SighupReload:
    """A SIGHUP handler on the running event loop that reloads one key ring."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @classmethod
    def install(cls, keys: KeyRing) -> SighupReload | None:
        """Reload ``keys`` on SIGHUP from now on; None (and a warning) where the platform or
        the thread cannot take signal handlers (an app run outside the main thread)."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, cls._reload, keys)
        except (ValueError, RuntimeError, NotImplementedError, AttributeError) as exc:
            log.warning("API keys: no SIGHUP reload here (%s); the file is still followed", exc)
            return None
        return cls(loop)

    @staticmethod
    def _reload(keys: KeyRing) -> None:
        log.info("API keys: SIGHUP, reloading the keys file")
        keys.reload()

    def remove(self) -> None:
        """Give SIGHUP back its previous disposition."""
        self._loop.remove_signal_handler(signal.SIGHUP)
