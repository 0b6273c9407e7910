"""Stored responses: finding one by id, its conversation, and deleting it.

A stored response is an audit record: ``endpoint: "responses"``, ``mode: "full"``, a
``response``, and a request that did not say ``store: false`` (a force-logged ``store: false``
response is audited, not stored: OpenAI would not return it, so neither does the gateway).
Records reach the store through the audit bus, off the hot path, so a response is in the store
a moment (a sink's batch interval) after the client has it; :class:`RecentResponses` bridges that
moment in the process that served it, so a ``previous_response_id`` or a retrieve sent right
after the answer finds it.

Visibility is that of stored chat completions: a tenant sees only its own responses (another
tenant's id is a 404, exactly like an unknown id); admin keys and open mode see all.

A conversation is the chain ``previous_response_id`` links, walked from the newest turn back.
A turn that is missing (deleted, never stored, or another tenant's) ends the walk: the
conversation is what is left of it, as at OpenAI, where a deleted response is gone for good.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any, Final

import msgspec

from auditgate.audit.record import AuditRecord
from auditgate.endpoints.responses.history import Turn
from auditgate.store.queries import Store

__all__ = ["MAX_TURNS", "RecentResponses", "StoredResponses"]

log = logging.getLogger("auditgate.responses")

ENDPOINT: Final = "responses"
"""The records' ``endpoint``."""
MAX_TURNS: Final = 1000
"""The longest conversation walked back; older turns are left out (and the walk logged)."""


class _Recent:
    __slots__ = ("at", "deleted", "record")

    def __init__(self, record: AuditRecord, at: float) -> None:
        self.record = record
        self.at = at
        self.deleted = False


class RecentResponses:
    """The responses this process stored in the last ``ttl_s`` seconds, at most ``capacity``.

    It holds the published records themselves (redacted in place by the audit processors, so
    they read as the store will), and the ids deleted before their record reached the store.
    """

    def __init__(self, *, ttl_s: float = 30.0, capacity: int = 4096) -> None:
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._entries: collections.OrderedDict[str, _Recent] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, response_id: str, record: AuditRecord) -> None:
        """Remember a just-published stored response."""
        now = time.monotonic()
        self._expire(now)
        self._entries[response_id] = _Recent(record, now)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> _Recent | None:
        """The entry of ``response_id`` (deleted ones too), if still held."""
        self._expire(time.monotonic())
        return self._entries.get(response_id)

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            first = next(iter(entries.values()))
            if now - first.at <= self.ttl_s:
                return
            entries.popitem(last=False)


def visible(record: dict[str, Any], tenant: str | None) -> bool:
    """Whether ``record`` (as JSON) is a stored response the caller of ``tenant`` may see."""
    if record.get("endpoint") != ENDPOINT or record.get("mode") != "full":
        return False
    if not isinstance(record.get("response"), dict):
        return False
    request = record.get("request")
    if not isinstance(request, dict) or request.get("store") is False:
        return False
    return tenant is None or record.get("tenant") == tenant


class StoredResponses:
    """Reads stored responses (the store, bridged by :class:`RecentResponses`), deletes them."""

    def __init__(self, store: Store | None, recent: RecentResponses) -> None:
        self.store = store
        self.recent = recent
        self._deletions: set[asyncio.Task[None]] = set()

    async def get(self, response_id: str, tenant: str | None) -> dict[str, Any] | None:
        """The record (as JSON) of a stored response visible to ``tenant``, or ``None``."""
        held = self.recent.get(response_id)
        if held is not None:
            if held.deleted:
                return None
            record = msgspec.to_builtins(held.record)
            return record if visible(record, tenant) else None
        if self.store is None:
            return None
        stored = await self.store.get(response_id, tenant)
        if stored is None or not visible(stored.record, tenant):
            return None
        return stored.record

    async def chain(self, response_id: str, tenant: str | None) -> list[Turn] | None:
        """The conversation ending with ``response_id``, oldest turn first; ``None`` when
        ``response_id`` itself is not visible."""
        turns: list[Turn] = []
        wanted: str | None = response_id
        seen: set[str] = set()
        while wanted is not None and wanted not in seen:
            if len(turns) == MAX_TURNS:
                log.warning(
                    "conversation of %s: more than %d turns, the older ones left out",
                    response_id,
                    MAX_TURNS,
                )
                break
            seen.add(wanted)
            record = await self.get(wanted, tenant)
            if record is None:
                if not turns:
                    return None
                break
            request, response = record["request"], record["response"]
            turns.append((request, response))
            previous = request.get("previous_response_id")
            wanted = previous if isinstance(previous, str) else None
        turns.reverse()
        return turns

    async def delete(self, response_id: str, tenant: str | None) -> bool:
        """Delete a visible stored response; whether there was one.

        One still on its way to the store is marked deleted here at once, and deleted in the
        store as soon as its record arrives there (retried for :attr:`RecentResponses.ttl_s`).
        """
        record = await self.get(response_id, tenant)
        if record is None:
            return False
        held = self.recent.get(response_id)
        if held is not None:
            held.deleted = True
        if self.store is not None and not await self.store.delete(response_id, tenant):
            task = asyncio.get_running_loop().create_task(self._delete_later(response_id, tenant))
            self._deletions.add(task)
            task.add_done_callback(self._deletions.discard)
        return True

    @property
    def pending_deletions(self) -> int:
        """Deletions still waiting for their record to reach the store."""
        return len(self._deletions)

    async def close(self) -> None:
        """Finish the pending deletions (cancelled: they retry until the record is stored)."""
        for task in list(self._deletions):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _delete_later(self, response_id: str, tenant: str | None) -> None:
        assert self.store is not None
        deadline = time.monotonic() + self.recent.ttl_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if await self.store.delete(response_id, tenant):
                return
        log.error(
            "stored response %s was deleted before its record reached the store, and the "
            "record did not arrive within %gs: if it arrives later, it is listed again",
            response_id,
            self.recent.ttl_s,
        )
