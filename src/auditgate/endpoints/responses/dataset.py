"""A stored Responses conversation as a chat example (``auditgate export``).

A turn's record holds its own request and response; the conversation before it is the chain of
``previous_response_id`` (:meth:`~.stored.StoredResponses.chain` gives it, oldest first).  The
example is what the chat engine was (or would have been) sent for the last turn —
:func:`~.translate.to_chat_body` of it after the earlier turns: ``instructions`` as the system
message, every turn's items as chat messages, tools and ``parallel_tool_calls`` in chat's shape —
followed by the assistant message its ``output`` amounts to (text joined, refusals joined,
function calls as ``tool_calls``; reasoning is not part of a chat example).  So a three-turn
conversation exports as three examples, each ending with one of its answers, as three stored
chat completions would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from auditgate.endpoints.responses.history import Turn, context_items
from auditgate.endpoints.responses.items import parse_items
from auditgate.endpoints.responses.protocol import validate_responses
from auditgate.endpoints.responses.translate import chat_messages, to_chat_body
from auditgate.errors import InvalidRequestError

__all__ = ["ChatExample", "chat_example"]


@dataclasses.dataclass(frozen=True, slots=True)
class ChatExample:
    """One conversation in chat terms."""

    messages: list[dict[str, Any]]
    """What the model was given, in chat messages."""
    reply: dict[str, Any]
    """The assistant message it answered (``role``, ``content`` and/or ``refusal`` and/or
    ``tool_calls``)."""
    tools: list[dict[str, Any]] | None
    """The request's function tools in chat's shape, if any."""
    parallel_tool_calls: bool | None
    """The request's ``parallel_tool_calls``, if set."""


def chat_example(chain: Sequence[Turn]) -> ChatExample | None:
    """The example of the last turn of ``chain``; ``None`` when it has no answer (no text and
    no function call) or its stored request is not one the gateway reads."""
    if not chain:
        return None
    body, response = chain[-1]
    try:
        request = validate_responses({**body, "stream": False})
        chat = to_chat_body(request, context_items(chain[:-1]))
        output = parse_items(list(response.get("output") or ()), "output")
    except InvalidRequestError:
        return None
    reply: dict[str, Any] = {"role": "assistant"}
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[dict[str, Any]] = []
    for message in chat_messages(None, output):
        if message.get("content"):
            texts.append(message["content"])
        if message.get("refusal"):
            refusals.append(message["refusal"])
        calls.extend(message.get("tool_calls") or ())
    if texts:
        reply["content"] = "".join(texts)
    if refusals:
        reply["refusal"] = "".join(refusals)
    if calls:
        reply["tool_calls"] = calls
    if len(reply) == 1:
        return None
    return ChatExample(
        messages=chat["messages"],
        reply=reply,
        tools=chat.get("tools"),
        parallel_tool_calls=chat.get("parallel_tool_calls"),
    )
