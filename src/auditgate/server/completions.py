"""OpenAI's stored-completions API over the store (``/v1/chat/completions`` reads and edits).

Routes, as OpenAI defines them (openai-python ``resources/chat/completions``):

- ``GET /v1/chat/completions``: ``model``, ``metadata[key]=value`` (several are ANDed), ``after``,
  ``limit`` (1-100, default 20), ``order`` (``asc`` default, ``desc``); a cursor page.
- ``GET /v1/chat/completions/{id}``: one stored completion.
- ``GET /v1/chat/completions/{id}/messages``: its request messages, ids ``<id>-<n>``, paged.
- ``POST /v1/chat/completions/{id}``: ``{"metadata": {...}}`` replaces the metadata.
- ``DELETE /v1/chat/completions/{id}``: ``chat.completion.deleted``; the id is 404 afterwards.

Only ``full`` chat records with a response are stored completions: the Responses API's records
(ids ``resp_...``) are its stored responses, never listed or found here.  A user key sees and
changes only its tenant's rows (any other id is a 404, never a 403); admin keys and open mode
see all.
Parameters are checked once, by :mod:`auditgate.server.params`, before any store sees them, so
every store answers the same input alike.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from auditgate.auth.keys import Principal
from auditgate.errors import InvalidRequestError
from auditgate.server.params import (
    bad_after,
    not_found,
    parse_completion_id,
    parse_list_query,
    parse_messages_query,
    parse_update,
)
from auditgate.server.wire import BodyDeadlines, ClientGone, read_body
from auditgate.store.queries import CursorNotFound, Filter, Store, Stored

# Request parameters OpenAI echoes on a stored completion (null when the request left them out).
# Not ``service_tier``: that is the tier that served the response, so the stored copy shows the
# response's own (null when it had none), never the request's wish.
_ECHOED: Final = (
    "tool_choice",
    "tools",
    "seed",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
)


CHAT_ENDPOINT: Final = "chat.completions"
_RESPONSE_PREFIX: Final = "resp_"
"""Ids of the Responses API's stored responses: never a chat completion's."""


def completion_id_of(raw: str) -> str:
    """A ``completion_id`` a stored completion can have; any other is a 404 (unknown id)."""
    if raw.startswith(_RESPONSE_PREFIX):
        raise not_found(raw)
    return parse_completion_id(raw)


def tenant_scope(principal: Principal | None) -> str | None:
    """The tenant a caller is confined to; ``None`` (everything) for admins and open mode."""
    if principal is None or principal.is_admin:
        return None
    return principal.tenant


def completion_object(stored: Stored) -> dict[str, Any]:
    """The stored completion OpenAI returns: the response the client saw, plus what the store
    adds (current ``metadata``, ``request_id``, echoed request parameters, ``usage``), and the
    fields the specification requires that a response from an upstream (or an older mock) may
    lack: ``service_tier`` and every message's ``refusal``, ``null``."""
    record = stored.record
    out: dict[str, Any] = dict(record["response"])
    out["id"] = stored.response_id
    out.setdefault("object", "chat.completion")
    out.setdefault("service_tier", None)
    out["choices"] = [_with_refusal(choice) for choice in out.get("choices") or ()]
    request = record.get("request")
    request = request if isinstance(request, dict) else {}
    out["metadata"] = record.get("metadata") or {}
    out["request_id"] = record["request_id"]
    for name in _ECHOED:
        out.setdefault(name, request.get(name))
    out.setdefault("input_user", request.get("user"))
    if out.get("usage") is None:
        out["usage"] = record.get("usage")
    return out


def _with_refusal(choice: Any) -> Any:
    """``choice`` with ``message.refusal`` (``null`` when absent); copies, never edits a record."""
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict) or "refusal" in message:
        return choice
    return {**choice, "message": {**message, "refusal": None}}


def store_message(response_id: str, index: int, message: Any) -> dict[str, Any]:
    """One request message as OpenAI lists it: id ``<id>-<index>``; array content is given as
    ``content_parts`` with its text joined in ``content``; ``refusal`` (which the specification
    requires) ``null`` unless the message has one."""
    out: dict[str, Any] = dict(message) if isinstance(message, dict) else {"content": message}
    out["id"] = f"{response_id}-{index}"
    out.setdefault("refusal", None)
    content = out.get("content")
    if isinstance(content, list):
        out["content_parts"] = content
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        out["content"] = "".join(t for t in texts if isinstance(t, str)) if texts else None
    else:
        out.setdefault("content_parts", None)
    return out


class CompletionsAPI:
    """Route handlers; ``store`` is ``None`` when no store is configured (every call is a 400)."""

    def __init__(
        self,
        store: Store | None,
        principal_of: Any,
        *,
        max_body_bytes: int,
        deadlines: BodyDeadlines,
    ) -> None:
        self.store = store
        self._principal_of = principal_of
        self._max_body_bytes = max_body_bytes
        self._deadlines = deadlines

    def _open(self, request: Request) -> tuple[Store, str | None]:
        if self.store is None:
            raise InvalidRequestError(
                "Stored completions are not available: this gateway has no store. Configure "
                "AUDITGATE_STORE_URL, or the sqlite or postgres audit sink.",
                code="store_not_configured",
            )
        return self.store, tenant_scope(self._principal_of(request.scope))

    async def list(self, request: Request) -> Response:
        store, tenant = self._open(request)
        query = parse_list_query(request.query_params)
        # Stored legacy completions, embeddings and responses are records too, not chat
        # completions.
        where = Filter(
            tenant=tenant, model=query.model, metadata=query.metadata, endpoint=CHAT_ENDPOINT
        )
        try:
            page = await store.list(where, after=query.after, limit=query.limit, order=query.order)
        except CursorNotFound:
            raise bad_after(query.after or "") from None
        data = [completion_object(s) for s in page.records]
        return JSONResponse(_list_body(data, page.has_more))

    async def retrieve(self, request: Request) -> Response:
        store, tenant = self._open(request)
        completion_id = completion_id_of(request.path_params["completion_id"])
        stored = await store.get(completion_id, tenant)
        if stored is None:
            raise not_found(completion_id)
        return JSONResponse(completion_object(stored))

    async def messages(self, request: Request) -> Response:
        store, tenant = self._open(request)
        completion_id = completion_id_of(request.path_params["completion_id"])
        query = parse_messages_query(request.query_params)
        messages = await store.messages(completion_id, tenant)
        if messages is None:
            raise not_found(completion_id)
        listed = [store_message(completion_id, i, m) for i, m in enumerate(messages)]
        if query.order == "desc":
            listed.reverse()
        if query.after is not None:
            ids = [m["id"] for m in listed]
            if query.after not in ids:
                raise bad_after(query.after)
            listed = listed[ids.index(query.after) + 1 :]
        return JSONResponse(_list_body(listed[: query.limit], len(listed) > query.limit))

    async def update(self, request: Request) -> Response:
        store, tenant = self._open(request)
        try:
            raw = await read_body(
                request.scope, request.receive, self._max_body_bytes, self._deadlines
            )
        except ClientGone:
            return Response(status_code=499)  # nobody to answer: no error, no log
        metadata = parse_update(raw)
        completion_id = completion_id_of(request.path_params["completion_id"])
        stored = await store.update_metadata(completion_id, tenant, metadata)
        if stored is None:
            raise not_found(completion_id)
        return JSONResponse(completion_object(stored))

    async def delete(self, request: Request) -> Response:
        store, tenant = self._open(request)
        completion_id = completion_id_of(request.path_params["completion_id"])
        if not await store.delete(completion_id, tenant):
            raise not_found(completion_id)
        return JSONResponse(
            {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}
        )


def _list_body(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    # The specification types first_id / last_id as required strings: "" on an empty page.
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else "",
        "last_id": data[-1]["id"] if data else "",
        "has_more": has_more,
    }
