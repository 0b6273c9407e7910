"""Dataset lines of audit records: what ``auditgate export`` and the console's export write.

- ``finetune`` — chat records: OpenAI's chat fine-tuning format, ``{"messages": request messages
  + the assistant message (tool calls kept), "tools": request tools (when any),
  "parallel_tool_calls": (when the request set it)}``; Responses API records: the same, their
  earlier turns (``previous_response_id``) included; legacy completions: one
  ``{"prompt", "completion"}`` per text prompt.
- ``eval`` — ``{"input": request messages (or the prompt), "reference": the answer}``.
- ``raw`` — the audit record as stored.

Embeddings records give no dataset line.
"""

from __future__ import annotations

from typing import Any, Final

from auditgate.endpoints.responses.dataset import chat_example
from auditgate.endpoints.responses.history import Turn
from auditgate.endpoints.responses.stored import StoredResponses

_ASSISTANT_FIELDS: Final = ("role", "content", "refusal", "tool_calls", "function_call")


Lookup = StoredResponses | None
"""Where a Responses turn's earlier turns are found (``None``: nowhere, a lake)."""


def to_lines(record: dict[str, Any], fmt: str) -> list[dict[str, Any]]:
    """The ``fmt`` lines of one record: one for a chat record with an assistant message,
    one per text prompt for a legacy completion, none for embeddings (see the module doc)."""
    if fmt == "raw":
        return [record]
    endpoint = record.get("endpoint")
    if endpoint == "embeddings":
        return []
    if endpoint == "completions":
        return [_pair(prompt, completion, fmt) for prompt, completion in text_pairs(record)]
    line = to_line(record, fmt)
    return [] if line is None else [line]


def text_pairs(record: dict[str, Any]) -> list[tuple[str, str]]:
    """``(prompt, completion)`` of every text prompt of a legacy completion record: its first
    choice (choice ``i * n`` answers prompt ``i``), without the echoed prompt."""
    request, response = record.get("request"), record.get("response")
    if not isinstance(request, dict) or not isinstance(response, dict):
        return []
    prompt = request.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        return []  # token ids: no text to pair
    n = request.get("n")
    if type(n) is not int or n < 1:
        n = 1
    texts: dict[int, str] = {}
    for choice in response.get("choices") or ():
        if isinstance(choice, dict) and isinstance(choice.get("text"), str):
            texts[choice.get("index", 0)] = choice["text"]
    pairs = []
    for number, text in enumerate(prompts):
        completion = texts.get(number * n)
        if completion is None:
            continue
        if request.get("echo") is True and completion.startswith(text):
            completion = completion[len(text) :]
        pairs.append((text, completion))
    return pairs


def _pair(prompt: str, completion: str, fmt: str) -> dict[str, Any]:
    if fmt == "eval":
        return {"input": prompt, "reference": completion}
    return {"prompt": prompt, "completion": completion}


async def responses_line(record: dict[str, Any], fmt: str, lookup: Lookup) -> dict[str, Any] | None:
    """The ``fmt`` line of a Responses API record (see the module docstring)."""
    request, response = record.get("request"), record.get("response")
    if not isinstance(request, dict) or not isinstance(response, dict):
        return None
    chain: list[Turn] = []
    previous = request.get("previous_response_id")
    if lookup is not None and isinstance(previous, str):
        chain = await lookup.chain(previous, None) or []
    example = chat_example([*chain, (request, response)])
    if example is None:
        return None
    if fmt == "eval":
        return {"input": example.messages, "reference": example.reply}
    line: dict[str, Any] = {"messages": [*example.messages, example.reply]}
    if example.tools:
        line["tools"] = example.tools
    if example.parallel_tool_calls is not None:
        line["parallel_tool_calls"] = example.parallel_tool_calls
    return line


def to_line(record: dict[str, Any], fmt: str) -> dict[str, Any] | None:
    """The ``fmt`` line of one record, or ``None`` when it has no assistant message."""
    if fmt == "raw":
        return record
    request = record.get("request") if isinstance(record.get("request"), dict) else {}
    assert isinstance(request, dict)
    messages = request.get("messages")
    reply = assistant_message(record.get("response"))
    if reply is None or not isinstance(messages, list):
        return None
    if fmt == "eval":
        return {"input": messages, "reference": reply}
    line: dict[str, Any] = {"messages": [*messages, reply]}
    if request.get("tools"):
        line["tools"] = request["tools"]
    if "parallel_tool_calls" in request:
        line["parallel_tool_calls"] = request["parallel_tool_calls"]
    return line


def assistant_message(response: Any) -> dict[str, Any] | None:
    """The first choice's message, with only the fields a chat example holds (nulls dropped)."""
    if not isinstance(response, dict):
        return None
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    if not isinstance(message, dict):
        return None
    reply = {k: message[k] for k in _ASSISTANT_FIELDS if message.get(k) is not None}
    reply["role"] = "assistant"
    if "content" not in reply and "tool_calls" not in reply and "function_call" not in reply:
        return None
    return reply
