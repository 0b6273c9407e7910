"""The Engine protocol: what produces chat completions (and legacy text completions and
embeddings) behind the gateway.

An engine receives the request body (the client's JSON, possibly adjusted by the pipeline — for
streams, ``stream_options.include_usage`` is always set so usage can be audited) and returns
OpenAI ``chat.completion`` / ``chat.completion.chunk`` dicts.  Contracts:

- ``complete`` returns one ``chat.completion`` dict.
- ``stream`` yields *batches*: lists of ``chat.completion.chunk`` dicts that were available at the
  same moment.  The transport writes one batch with one socket write, so an engine that has
  several chunks ready (a fast mock, a network read holding several SSE events) should yield them
  together; an engine that produces tokens over time yields each as it comes.
- ``complete_text`` / ``stream_text`` do the same for legacy completions (``text_completion``
  objects and chunks, same batching); ``embed`` returns an embeddings ``list``.  Every chunk carries
  ``id``, ``object``, ``created``, ``model`` and ``choices`` (possibly empty, on the final usage
  chunk).
- Failures are raised as :class:`~auditgate.errors.APIError` subclasses: ``NotFoundError`` for an
  unknown model, ``InvalidRequestError`` for a request the engine rejects, ``UpstreamError`` for
  everything that went wrong upstream (before or during a stream).  Nothing else escapes.
- Cancellation (the client went away) arrives as ``asyncio.CancelledError``; the engine must
  release what it holds (e.g. abort the upstream request) and let it propagate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class EngineRequest:
    """One chat completion to produce."""

    body: dict[str, Any]
    """The request body to send; engines must not mutate it."""
    request_id: str
    """Gateway request id, for logs and upstream correlation headers."""
    response_id: str
    """The id the client will see (``chatcmpl-<request_id>``); engines may use it directly."""
    authorization: str | None = dataclasses.field(default=None, repr=False)
    """The client's ``Authorization`` header; only used when key passthrough is configured."""


class Engine(Protocol):
    """Something that produces chat completions."""

    name: str
    """``mock`` or ``openai``; the record's ``engine`` field."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def models(self) -> list[dict[str, Any]]:
        """OpenAI model objects for ``GET /v1/models``."""
        ...

    async def complete(self, request: EngineRequest) -> dict[str, Any]: ...

    def stream(self, request: EngineRequest) -> AsyncIterator[list[dict[str, Any]]]: ...

    async def complete_text(self, request: EngineRequest) -> dict[str, Any]:
        """A legacy ``text_completion`` (``POST /v1/completions``), as :meth:`complete`."""
        ...

    def stream_text(self, request: EngineRequest) -> AsyncIterator[list[dict[str, Any]]]:
        """Batches of legacy ``text_completion`` chunks, as :meth:`stream`."""
        ...

    async def embed(self, request: EngineRequest) -> dict[str, Any]:
        """An embeddings ``list`` (``POST /v1/embeddings``); errors as :meth:`complete`."""
        ...
