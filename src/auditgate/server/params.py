"""The stored-completions API's parameters, parsed once into typed values for every store.

Every parameter is checked here, before a store sees it, so the SQLite and the PostgreSQL store
answer the same input alike (and each a 400 names its parameter):

- ``limit``: ASCII digits, 1-100, default 20; ``order``: ``asc`` (default) or ``desc``.
- Text no stored row holds: a NUL character or a lone surrogate.  Both stores keep such text only
  scrubbed (:func:`~auditgate.store.schema.scrub`: U+FFFD in its column, the exact value in
  ``originals``), and PostgreSQL refuses it even as a query parameter (that was a 500 in plain
  text).  So, without asking the store:

  - a ``completion_id`` holding it names no stored completion: a 404, as any unknown id is;
  - an ``after`` holding it names no row: the 400 of any unknown cursor;
  - a filter holding it (``model``, a ``metadata[key]=value`` key or value) is a 400 naming the
    parameter, not an empty list: a completion created with such metadata does exist (stored
    scrubbed), and an empty list would say it does not.

- An update body: ``{"metadata": {...} | null}``, OpenAI's metadata limits; NUL characters in it
  are stored losslessly like a created completion's.

Over HTTP a lone surrogate cannot arrive (the server decodes percent-escapes with U+FFFD for
invalid UTF-8); the check covers callers that hand the app text directly.
"""

from __future__ import annotations

import dataclasses
from typing import Final

import msgspec
from starlette.datastructures import QueryParams

from auditgate.errors import UNDECODABLE, InvalidRequestError, NotFoundError
from auditgate.pipeline.request import validate_metadata
from auditgate.store.queries import Order
from auditgate.store.schema import scrub

DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 100
_METADATA_PREFIX: Final = "metadata["


@dataclasses.dataclass(frozen=True, slots=True)
class ListQuery:
    """The query of ``GET /v1/chat/completions``, checked."""

    model: str | None
    """Only this model (``None``: every model; an empty ``model=`` means none given)."""
    metadata: dict[str, str]
    """Only completions whose metadata holds every one of these pairs."""
    after: str | None
    """The id of the row the page starts after (``None``: from the start)."""
    limit: int
    """Page size, 1-100."""
    order: Order
    """By creation time: ``asc`` or ``desc``."""


@dataclasses.dataclass(frozen=True, slots=True)
class MessagesQuery:
    """The query of ``GET /v1/chat/completions/{id}/messages``, checked.

    ``after`` is not checked here: message ids are made by the API (``<id>-<n>``), which answers
    an ``after`` that is none of them with a 400, once it knows the completion exists.
    """

    after: str | None
    """The id of the message the page starts after (``None``: from the first)."""
    limit: int
    """Page size, 1-100."""
    order: Order
    """``asc``: the request's order; ``desc``: reversed."""


def storable(text: str) -> bool:
    """Whether a store can hold ``text`` as it is (no NUL character, no lone surrogate)."""
    return scrub(text) == text


def parse_list_query(params: QueryParams) -> ListQuery:
    """The list query, or a 400 naming the first bad parameter."""
    limit = parse_limit(params.get("limit"))
    order = parse_order(params.get("order"))
    model = params.get("model") or None
    if model is not None and not storable(model):
        raise _unstorable("model")
    metadata: dict[str, str] = {}
    for key, value in params.multi_items():
        if key.startswith(_METADATA_PREFIX) and key.endswith("]"):
            name = key[len(_METADATA_PREFIX) : -1]
            if not (storable(name) and storable(value)):
                raise _unstorable("metadata")
            metadata[name] = value
    after = params.get("after") or None
    if after is not None and not storable(after):
        raise bad_after(after)
    return ListQuery(model=model, metadata=metadata, after=after, limit=limit, order=order)


def parse_messages_query(params: QueryParams) -> MessagesQuery:
    """The messages query, or a 400 naming the first bad parameter."""
    return MessagesQuery(
        after=params.get("after") or None,
        limit=parse_limit(params.get("limit")),
        order=parse_order(params.get("order")),
    )


def parse_completion_id(raw: str) -> str:
    """A ``completion_id`` a stored completion can have; any other is a 404 (unknown id)."""
    if not storable(raw):
        raise not_found(raw)
    return raw


def parse_limit(raw: str | None) -> int:
    """``limit``: an integer 1-100 in ASCII digits (default 20); else a 400 naming ``limit``."""
    if raw is None:
        return DEFAULT_LIMIT
    # int() alone would also take " 5", "1_0" and other scripts' digits, and refuse (with a
    # ValueError) more than 4300 of them; anything that is not 1-100 in digits is out of range.
    digits = raw.isascii() and raw.isdigit() and len(raw.lstrip("0")) <= 3
    limit = int(raw) if digits else 0
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(
            f"Invalid 'limit': expected an integer between 1 and {MAX_LIMIT}, got {raw[:80]!r}.",
            param="limit",
            code="invalid_value",
        )
    return limit


def parse_order(raw: str | None) -> Order:
    """``order``: ``asc`` (default) or ``desc``; else a 400 naming ``order``."""
    if raw is None or raw == "asc":
        return "asc"
    if raw == "desc":
        return "desc"
    raise InvalidRequestError(
        f"Invalid 'order': expected one of 'asc' or 'desc', got {raw[:80]!r}.",
        param="order",
        code="invalid_value",
    )


def parse_update(body: bytes) -> dict[str, str]:
    """The metadata of an update body ``{"metadata": {...} | null}``; anything else is a 400."""
    try:
        # msgspec, not json: json.loads accepts "\ud800", a lone surrogate no response or
        # database can encode; stored as metadata it turned every later read into a 500.
        data = msgspec.json.decode(body)
    except UNDECODABLE:
        raise InvalidRequestError("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    unknown = sorted(set(data) - {"metadata"})
    if unknown:
        raise InvalidRequestError(
            f"Unrecognized request argument supplied: {unknown[0]}. Only 'metadata' can be "
            "updated.",
            param=unknown[0],
            code="unknown_parameter",
        )
    if "metadata" not in data:
        raise InvalidRequestError(
            "Missing required parameter: 'metadata'.", param="metadata", code="missing_required"
        )
    metadata = data["metadata"]
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidRequestError(
            "Invalid 'metadata': expected an object of string values.",
            param="metadata",
            code="invalid_type",
        )
    validate_metadata(metadata)
    return metadata


def not_found(completion_id: str) -> NotFoundError:
    """The 404 of an id that names no stored completion visible to the caller."""
    return NotFoundError(
        f"No chat completion found with id '{completion_id}'.", param="completion_id"
    )


def bad_after(after: str) -> InvalidRequestError:
    """The 400 of an ``after`` that names no object of the list."""
    return InvalidRequestError(
        f"Invalid 'after': no object with id '{after}' in this list.",
        param="after",
        code="invalid_value",
    )


def _unstorable(param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid '{param}': NUL characters and unpaired surrogates cannot be filtered on.",
        param=param,
        code="invalid_value",
    )
