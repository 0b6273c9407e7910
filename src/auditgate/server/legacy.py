"""``POST /v1/completions`` and ``POST /v1/embeddings`` over HTTP: the chat transport, reused.

Both have chat's exchange (a JSON body in; JSON, or for completions SSE, out), so they are
:class:`~auditgate.server.handler.ChatHandler` with their own validation and pipeline
(:mod:`auditgate.endpoints.completions`, :mod:`auditgate.endpoints.embeddings`): disconnects,
durable commits, in-stream errors and metrics behave exactly as for chat.
"""

from __future__ import annotations

from typing import Any, ClassVar

from auditgate.endpoints import completions, embeddings
from auditgate.pipeline.chat import CallParams
from auditgate.server.handler import ChatHandler

__all__ = ["CompletionsHandler", "EmbeddingsHandler"]


class CompletionsHandler(ChatHandler):
    """Serves legacy text completions, stream and not."""

    path: ClassVar[str] = "/v1/completions"
    endpoint: ClassVar[str] = completions.ENDPOINT
    id_prefix: ClassVar[str] = completions.ID_PREFIX

    def validate(self, body: dict[str, Any]) -> CallParams:
        return completions.validate_completion(body)


class EmbeddingsHandler(ChatHandler):
    """Serves embeddings (never streamed)."""

    path: ClassVar[str] = "/v1/embeddings"
    endpoint: ClassVar[str] = embeddings.ENDPOINT
    id_prefix: ClassVar[str] = "emb-"

    def validate(self, body: dict[str, Any]) -> CallParams:
        return embeddings.validate_embeddings(body)
