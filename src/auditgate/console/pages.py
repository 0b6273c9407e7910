"""The console's pages: records, a record, usage, pipeline health, integrity, export.

Each handler: the session (or the sign-in page), one or two store calls, a template.  The list
walks pages by keyset (``after`` = the last row's id), never counting the table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from auditgate.console.conversation import conversation
from auditgate.console.filters import (
    ENDPOINTS,
    MODES,
    PAGE_SIZE,
    STATUSES,
    RecordQuery,
    parse_query,
)
from auditgate.console.health import parse_health
from auditgate.console.integrity import SHOWN_FINDINGS, IntegrityRuns, record_integrity
from auditgate.console.session import Viewer
from auditgate.console.usage import usage_view
from auditgate.datasets import responses_line, to_lines
from auditgate.endpoints.responses.stored import RecentResponses, StoredResponses
from auditgate.errors import InvalidRequestError
from auditgate.pipeline.request import validate_metadata
from auditgate.store.queries import CursorNotFound, Filter, IndexLag, text_words
from auditgate.store.schema import record_dict_from_row

if TYPE_CHECKING:
    from auditgate.console.app import Console

_EXPORT_FORMATS: Final = ("finetune", "eval", "raw")
_WAIT_FOR_INDEXING_ROWS: Final = 5000
"""A search waits for the indexer when at most this many rows are not indexed (~1 s of work)."""
_WAIT_FOR_INDEXING_S: Final = 3.0
"""The longest a search waits for the indexer; past it, it answers from the index as it is."""
_encoder: Final = msgspec.json.Encoder()


class Pages:
    """The page handlers of one :class:`~auditgate.console.app.Console`."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.integrity = IntegrityRuns()

    def routes(self, prefix: str) -> list[Route]:
        """The pages' routes under ``prefix``."""
        return [
            Route(prefix + "/records", self.records, methods=["GET"]),
            Route(prefix + "/records/{request_id}", self.record, methods=["GET"]),
            Route(prefix + "/records/{request_id}/raw.json", self.raw, methods=["GET"]),
            Route(prefix + "/records/{request_id}/metadata", self.edit_metadata, methods=["POST"]),
            Route(prefix + "/usage", self.usage, methods=["GET"]),
            Route(prefix + "/health", self.health, methods=["GET"]),
            Route(prefix + "/verify", self.verify_page, methods=["GET"]),
            Route(prefix + "/verify", self.verify_run, methods=["POST"]),
            Route(prefix + "/export", self.export, methods=["GET"]),
        ]

    # -- records -------------------------------------------------------------------------------

    async def records(self, request: Request) -> Response:
        console = self.console
        viewer = console.viewer(request)
        if viewer is None:
            return console.to_login(request)
        query = parse_query(request.query_params, viewer)
        store = console.store
        rows: list[dict[str, Any]] = []
        has_more = False
        errors = list(query.errors)
        index_lag = await self._index_lag(query.where)
        if store is None:
            errors.append("No store is configured: records cannot be listed.")
        else:
            try:
                page = await store.list(
                    query.where, after=query.after, limit=PAGE_SIZE, order="desc"
                )
            except CursorNotFound:
                errors.append("That page no longer exists; showing the newest records.")
                page = await store.list(query.where, after=None, limit=PAGE_SIZE, order="desc")
            rows = [stored.record for stored in page.records]
            has_more = page.has_more
        next_link = (
            query.link(after=page.records[-1].response_id) if has_more and store is not None else ""
        )
        return console.render(
            request,
            "records.html",
            viewer,
            query=query,
            rows=rows,
            next_link=next_link,
            index_lag=index_lag,
            errors=errors,
            statuses=STATUSES,
            modes=MODES,
            endpoints=ENDPOINTS,
            formats=_EXPORT_FORMATS,
        )

    async def _index_lag(self, where: Filter) -> IndexLag | None:
        """For a search, before it reads: how far the full-text index is behind (shown on the
        page); ``None`` without a search.  When it is behind, the background indexer is woken;
        by a few rows only (what was stored since its last round), the search waits for it a
        moment, so a record just stored is found; by more (a bulk load), it does not wait."""
        store = self.console.store
        if store is None or not text_words(where.text):
            return None
        lag: IndexLag = await store.text_index_lag()
        indexer = self.console.indexer
        if lag.pending and indexer is not None:
            if lag.pending <= _WAIT_FOR_INDEXING_ROWS and not lag.more:
                if await indexer.catch_up(_WAIT_FOR_INDEXING_S):
                    lag = await store.text_index_lag()
            else:
                indexer.wake()
        return lag

    async def _row(self, request: Request, viewer: Viewer) -> Any:
        """The row (every column) of the record in the URL, if ``viewer`` may see it."""
        store = self.console.store
        if store is None:
            return None
        where = Filter(
            request_id=request.path_params["request_id"],
            tenant=viewer.tenant,
            stored_only=False,
            live_only=True,
        )
        async for row in store.scan(where, chunk=1):
            return row
        return None

    async def record(self, request: Request) -> Response:
        console = self.console
        viewer = console.viewer(request)
        if viewer is None:
            return console.to_login(request)
        row = await self._row(request, viewer)
        if row is None:
            return console.not_found(request, viewer)
        record = record_dict_from_row(row)
        editable = (
            viewer.admin and record.get("mode") == "full" and record.get("response") is not None
        )
        return console.render(
            request,
            "record.html",
            viewer,
            record=record,
            response_id=row["response_id"],
            turns=conversation(record),
            params=_params(record),
            integrity=record_integrity(row),
            raw=json.dumps(record, indent=2, ensure_ascii=False),
            metadata_text="\n".join(f"{k}={v}" for k, v in (record.get("metadata") or {}).items()),
            editable=editable,
            saved=request.query_params.get("saved") == "1",
            error=request.query_params.get("error", "")[:300],
        )

    async def raw(self, request: Request) -> Response:
        console = self.console
        viewer = console.viewer(request)
        if viewer is None:
            return console.to_login(request)
        row = await self._row(request, viewer)
        if row is None:
            return console.not_found(request, viewer)
        record = record_dict_from_row(row)
        name = f"record-{record['request_id']}.json"
        return Response(
            json.dumps(record, indent=2, ensure_ascii=False) + "\n",
            media_type="application/json",
            headers={"content-disposition": f'attachment; filename="{_filename(name)}"'},
        )

    async def edit_metadata(self, request: Request) -> Response:
        console = self.console
        viewer = console.viewer(request)
        if viewer is None:
            return console.to_login(request)
        form = await console.form(request)
        if not console.sessions.csrf_ok(viewer, form.get("csrf")):
            return console.render(
                request, "error.html", viewer, status=403, message="Bad form token."
            )
        if not viewer.admin:
            return console.render(
                request, "error.html", viewer, status=403, message="Only admins edit metadata."
            )
        row = await self._row(request, viewer)
        if row is None:
            return console.not_found(request, viewer)
        target = f"{request.url.path.rsplit('/', 1)[0]}"
        try:
            metadata = parse_metadata(form.get("metadata", ""))
            stored = await console.store.update_metadata(row["response_id"], None, metadata)
        except InvalidRequestError as exc:
            query = {"error": exc.message}
            return RedirectResponse(f"{target}?{_urlencode(query)}", status_code=303)
        if stored is None:
            query = {"error": "Only stored completions (mode full, with a response) take edits."}
            return RedirectResponse(f"{target}?{_urlencode(query)}", status_code=303)
        return RedirectResponse(f"{target}?saved=1", status_code=303)

    # -- usage and health ----------------------------------------------------------------------

    async def usage(self, request: Request) -> Response:
        console = self.console
        viewer = console.viewer(request)
        if viewer is None:
            return console.to_login(request)
        query = parse_query(request.query_params, viewer)
        errors = list(query.errors)
        view = None
        index_lag = await self._index_lag(query.where)
        if console.store is None:
            errors.append("No store is configured.")
        else:
            view = await usage_view(console.store, query.where, now_ms=int(time.time() * 1000))
        return console.render(
            request,
            "usage.html",
            viewer,
            query=query,
            view=view,
            index_lag=index_lag,
            chart_data=view.charts if view else {},
            errors=errors,
            statuses=STATUSES,
            modes=MODES,
            endpoints=ENDPOINTS,
        )

    async def health(self, request: Request) -> Response:
        console = self.console
        viewer = console.viewer(request)
        if viewer is None:
            return console.to_login(request)
        source = console.config.metrics
        text = await source() if source is not None else None
        health = parse_health(text) if text is not None else None
        return console.render(request, "health.html", viewer, health=health)

    # -- integrity -----------------------------------------------------------------------------

    async def verify_page(self, request: Request) -> Response:
        console = self.console
        viewer = console.viewer(request)
        if viewer is None:
            return console.to_login(request)
        return console.render(
            request,
            "verify.html",
            viewer,
            run=self.integrity.last,
            running=self.integrity.busy,
            shown=SHOWN_FINDINGS,
        )

    async def verify_run(self, request: Request) -> Response:
        console = self.console
        viewer = console.viewer(request)
        if viewer is None:
            return console.to_login(request)
        form = await console.form(request)
        if not console.sessions.csrf_ok(viewer, form.get("csrf")):
            return console.render(
                request, "error.html", viewer, status=403, message="Bad form token."
            )
        if not viewer.admin:
            # The trail is every tenant's: its findings name other tenants' records.
            return console.render(
                request, "error.html", viewer, status=403, message="Only admins run verify."
            )
        config = console.config
        if config.store_url is None:
            return console.render(
                request, "error.html", viewer, status=409, message="No store is configured."
            )
        await self.integrity.run(config.store_url, config.integrity_key, live=config.live)
        return RedirectResponse(request.url.path, status_code=303)

    # -- export --------------------------------------------------------------------------------

    async def export(self, request: Request) -> Response:
        console = self.console
        viewer = console.viewer(request)
        if viewer is None:
            return console.to_login(request)
        fmt = request.query_params.get("format", "finetune")
        if fmt not in _EXPORT_FORMATS or console.store is None:
            return console.render(
                request, "error.html", viewer, status=400, message="Unknown export format."
            )
        query = parse_query(request.query_params, viewer)
        if fmt != "raw":  # datasets: stored completions only, as `auditgate export` does
            query = _stored(query)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return StreamingResponse(
            _lines(console.store, query.where, fmt),
            media_type="application/x-ndjson",
            headers={
                "content-disposition": f'attachment; filename="auditgate-{fmt}-{stamp}.jsonl"'
            },
        )


async def _lines(store: Any, where: Filter, fmt: str) -> AsyncIterator[bytes]:
    """The export's lines, a store chunk at a time (memory stays flat), as ``auditgate export``
    writes them (a Responses API turn with its earlier turns)."""
    buffer: list[bytes] = []
    lookup = StoredResponses(store, RecentResponses(ttl_s=0))
    async for row in store.scan(where):
        record = record_dict_from_row(row)
        if record.get("endpoint") == "responses" and fmt != "raw":
            line = await responses_line(record, fmt, lookup)
            lines = [] if line is None else [line]
        else:
            lines = to_lines(record, fmt)
        for line in lines:
            buffer.append(_encoder.encode(line) + b"\n")
        if len(buffer) >= 256:
            yield b"".join(buffer)
            buffer.clear()
            await asyncio.sleep(0)
    if buffer:
        yield b"".join(buffer)


def _stored(query: RecordQuery) -> RecordQuery:
    return dataclasses.replace(query, where=dataclasses.replace(query.where, stored_only=True))


def parse_metadata(text: str) -> dict[str, str]:
    """The metadata of the edit form: one ``key=value`` a line; a 400-type error otherwise."""
    metadata: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise InvalidRequestError(f"Line {number}: expected key=value.", param="metadata")
        if "\x00" in line:
            raise InvalidRequestError(f"Line {number}: holds a NUL character.", param="metadata")
        metadata[key.strip()] = value.strip()
    validate_metadata(metadata)
    return metadata


_PARAM_SKIP: Final = frozenset({"messages", "input", "prompt", "instructions"})


def _params(record: dict[str, Any]) -> list[tuple[str, str]]:
    """The request's parameters (everything but the conversation), for the parameters table."""
    request = record.get("request")
    if not isinstance(request, dict):
        return []
    return [
        (key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        for key, value in request.items()
        if key not in _PARAM_SKIP
    ]


def _filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name)


def _urlencode(query: dict[str, str]) -> str:
    return urllib.parse.urlencode(query)
