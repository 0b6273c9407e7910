"""Embeddings through the audit capture: a record for every call, never the vectors.

Modes follow the capture's rules (DESIGN §2, §3): ``store: true`` or force logging makes a
``full`` record, which holds the request (the inputs); otherwise a ``usage_only`` record, which
does not.  Either way the record's ``response`` is the :func:`~.summary.summarize` of what the
client received — vector count and length, usage — because it holds no client content.
Durable mode, sampling, redaction, integrity and header capture apply as for chat.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from auditgate.audit.capture import outcome
from auditgate.audit.commit import committed
from auditgate.endpoints.embeddings.summary import summarize
from auditgate.engines.base import EngineRequest
from auditgate.pipeline.chat import ChatCall, ChatPipeline

__all__ = ["ENDPOINT", "EmbeddingsPipeline"]

ENDPOINT: Final = "embeddings"
"""The record's ``endpoint``."""


class EmbeddingsPipeline(ChatPipeline):
    """Runs embeddings through an engine with audit capture (see the module doc)."""

    async def complete(self, call: ChatCall) -> dict[str, Any]:
        """The engine's embeddings ``list``, unchanged; raises :class:`APIError` on failure."""
        capture = self._open(call, streaming=False)
        request = EngineRequest(call.body, call.request_id, call.response_id, call.authorization)
        with outcome(capture):
            result = await self.engine.embed(request)
            if capture is not None:
                capture.summary(summarize(result))
        if capture is not None and capture.commit is not None:
            await committed(capture.commit)
        return result

    async def complete_json(
        self, call: ChatCall, encode: Callable[[dict[str, Any]], bytes]
    ) -> bytes:
        """:meth:`complete` encoded: the record keeps a summary, not the bytes sent."""
        return encode(await self.complete(call))
