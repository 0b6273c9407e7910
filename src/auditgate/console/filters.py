"""The records filter: the list page's form, as query parameters, to a store :class:`Filter`.

One :class:`RecordQuery` drives the records list, its next-page link, the usage charts and the
export, so all of them select the same records.  Tenant scoping is applied here, on the server:
a user's query is pinned to their own tenant whatever the URL says.
"""

from __future__ import annotations

import dataclasses
import datetime
import urllib.parse
from collections.abc import Mapping
from typing import Final

from auditgate.console.session import Viewer
from auditgate.store.queries import Filter

PAGE_SIZE: Final = 50
"""Records per page of the list."""
STATUSES: Final = ("completed", "cancelled", "error")
MODES: Final = ("full", "usage_only", "checkpoint")
ENDPOINTS: Final = ("chat.completions", "responses", "completions", "embeddings")
_FIELDS: Final = ("since", "until", "model", "tenant", "endpoint", "status", "mode", "meta", "q")
_MAX_FIELD: Final = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class RecordQuery:
    """The filter form's values as typed (``""`` when empty) and what they mean."""

    values: dict[str, str]
    """Each of the form's fields as the user typed it (re-displayed in the form)."""
    where: Filter
    """What the store selects."""
    after: str | None
    """The page cursor: response id of the last record of the previous page."""
    errors: list[str]
    """Why some fields were ignored (shown above the list)."""

    def link(self, **changes: str | None) -> str:
        """The query string of this filter with ``changes`` (``None`` removes a field)."""
        params = {k: v for k, v in self.values.items() if v}
        for key, value in changes.items():
            if value:
                params[key] = value
            else:
                params.pop(key, None)
        return urllib.parse.urlencode(params)


def parse_query(params: Mapping[str, str], viewer: Viewer) -> RecordQuery:
    """The :class:`RecordQuery` of a request's query parameters, scoped to ``viewer``."""
    values = {name: params.get(name, "").strip()[:_MAX_FIELD] for name in _FIELDS}
    errors: list[str] = []
    since = _time(values, "since", errors)
    until = _time(values, "until", errors)
    metadata: dict[str, str] = {}
    if values["meta"]:
        key, sep, value = values["meta"].partition("=")
        if sep and key.strip():
            metadata[key.strip()] = value.strip()
        else:
            errors.append("metadata filter: expected key=value")
    for name, allowed in (("status", STATUSES), ("mode", MODES), ("endpoint", ENDPOINTS)):
        if values[name] and values[name] not in allowed:
            errors.append(f"{name}: {values[name]!r} is not one of {', '.join(allowed)}")
            values[name] = ""
    if "\x00" in "".join(values.values()):
        errors.append("a filter holds a NUL character: filters ignored")
        values = dict.fromkeys(_FIELDS, "")
        metadata = {}
        since = until = None
    # A user sees their tenant only: the tenant field is theirs, whatever was sent.
    tenant = viewer.tenant if not viewer.admin else (values["tenant"] or None)
    if not viewer.admin:
        values["tenant"] = ""
    where = Filter(
        tenant=tenant,
        model=values["model"] or None,
        metadata=metadata,
        since_ms=since,
        until_ms=until,
        status=values["status"] or None,
        endpoint=values["endpoint"] or None,
        mode=values["mode"] or None,
        text=values["q"] or None,
        stored_only=False,
        live_only=True,
    )
    after = params.get("after") or None
    return RecordQuery(values, where, after, errors)


def _time(values: dict[str, str], name: str, errors: list[str]) -> int | None:
    """Unix ms of a ``datetime-local`` field (UTC), ``None`` when empty or unreadable."""
    text = values[name]
    if not text:
        return None
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        errors.append(f"{name}: {text!r} is not a date and time (YYYY-MM-DDTHH:MM, UTC)")
        values[name] = ""
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1000)


def format_time(ms: int | None) -> str:
    """``YYYY-MM-DD HH:MM:SS`` (UTC) of Unix ms; empty for ``None``."""
    if ms is None:
        return ""
    when = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S")
