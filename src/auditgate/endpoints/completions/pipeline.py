"""Legacy completions through the chat pipeline: same capture, durability and stream relay.

A text completion has chat's shape (``choices``, chunks, ``usage``), so it runs through
:class:`~auditgate.pipeline.chat.ChatPipeline` itself: the capture opens with ``endpoint:
"completions"`` and the :class:`TextCompletionAggregator`, the engine's ``complete_text`` /
``stream_text`` produce the answer, the client's id is ``cmpl-<request_id>`` (the engine's kept
as ``engine_response_id``), usage is asked for and stripped when the client did not ask, and a
durable record is committed before the end of the response — exactly as for chat.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any, ClassVar, Final

from auditgate.audit.capture import Aggregator
from auditgate.endpoints.completions.aggregate import TextCompletionAggregator
from auditgate.engines.base import EngineRequest
from auditgate.pipeline.chat import ChatCall, ChatPipeline

__all__ = ["ENDPOINT", "ID_PREFIX", "CompletionsPipeline"]

ENDPOINT: Final = "completions"
"""The record's ``endpoint``."""
ID_PREFIX: Final = "cmpl-"
"""The client's completion id is this and the request id (OpenAI's legacy ids look alike)."""


class CompletionsPipeline(ChatPipeline):
    """Runs legacy completions through an engine with audit capture (see the module doc)."""

    aggregator: ClassVar[type[Aggregator]] = TextCompletionAggregator

    def produce(self, request: EngineRequest) -> Awaitable[dict[str, Any]]:
        """The engine's ``text_completion``."""
        return self.engine.complete_text(request)

    def produce_stream(self, request: EngineRequest) -> AsyncIterator[list[dict[str, Any]]]:
        """The engine's ``text_completion`` chunks, in batches."""
        return self.engine.stream_text(request)

    def single_choice(self, call: ChatCall) -> bool:
        """One choice: ``n`` is 1 and there is one prompt (each prompt gets ``n`` choices)."""
        prompt = call.body.get("prompt")
        # A list of strings or of token lists is several prompts; a list of ints is one.
        several = isinstance(prompt, list) and len(prompt) > 1 and not isinstance(prompt[0], int)
        return super().single_choice(call) and not several
