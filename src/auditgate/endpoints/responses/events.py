"""The Responses API's stream: chat completion chunks in, OpenAI's typed events out.

:class:`ResponseStreamWriter` turns the ``chat.completion.chunk`` dicts an engine yields, batch by
batch, into the events a Responses client expects, numbered by ``sequence_number`` from 0, in
OpenAI's order::

    response.created, response.in_progress,
    per output item: response.output_item.added,
        reasoning: content_part.added, reasoning_text.delta*, reasoning_text.done, content_part.done
        message:   per part: content_part.added, (output_text | refusal).delta*, .done,
                   content_part.done
        function call: function_call_arguments.delta*, function_call_arguments.done
      response.output_item.done,
    response.completed | response.incomplete | response.failed

Reasoning: an open-weights model's ``reasoning_content`` (or vLLM's ``reasoning``) is its raw
chain of thought, so it becomes a ``reasoning`` item whose ``content`` holds a ``reasoning_text``
part (``summary`` empty), streamed with ``response.reasoning_text.*`` — what OpenAI specifies for
gpt-oss and what vLLM emits — not as a summary, which it is not.  Unless the client asks for a
summary (``reasoning.summary``: ``auto``, ``concise``, ``detailed``): clients that show only
summaries (OpenAI's reasoning models give no raw chain of thought) then get the whole reasoning
as the item's one ``summary_text`` part, streamed with ``response.reasoning_summary_part.*`` and
``response.reasoning_summary_text.*`` — nothing is made up or left out, and ``content`` is
empty.

Items: reasoning, message text (``output_text`` then ``refusal`` parts) and each tool call (by
its ``index``) are separate items, opened in the order their first non-empty delta arrives and
closed when a delta of another item arrives (items never interleave, as at OpenAI).  Engines send
reasoning, then content, then tool calls one after the other; for such output the final object
is the same however the output is cut into chunks, and equals :func:`~auditgate.endpoints.
responses.translate.to_response` of the aggregated completion.  A delta that comes back to an
item already closed opens a new item (the stream is never rewritten): nothing is lost, and the
final object holds the items as the client saw them.  Only choice ``0`` is read (the gateway never
asks for more); ``usage``, ``model`` and ``service_tier`` come from the chunks.

Status: ``finish_reason`` ``length`` / ``content_filter`` -> ``incomplete`` (the last item too),
a missing ``finish_reason`` -> ``incomplete`` with no reason, anything else -> ``completed``;
:meth:`~ResponseStreamWriter.fail` -> ``failed`` with ``error`` set, open items ``incomplete``.

Cost: per chunk, a few dict lookups, one list append and one event dict; text is joined once per
item when it closes, and the final ``response`` is built once (:mod:`.sse` makes the bytes).
Events share objects with each other and with the final object (the ``done`` items *are* the
final output items), so every value returned is read-only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from auditgate.endpoints.responses.objects import (
    INCOMPLETE_REASONS,
    delta_logprobs,
    error_object,
    final_response,
    function_call_item,
    item_id,
    message_item,
    output_logprobs,
    reasoning_item,
    response_shell,
    text_part,
)
from auditgate.endpoints.responses.protocol import ResponsesRequest
from auditgate.errors import APIError

__all__ = ["Event", "ResponseStreamWriter"]

Event = dict[str, Any]
Chunk = dict[str, Any]

_REASONING: Final = "reasoning"
_MESSAGE: Final = "message"
_CALL: Final = "function_call"
_TEXT: Final = "output_text"
_REFUSAL: Final = "refusal"


class _Item:
    """The output item being streamed: ``fragments`` is the text of its open part (or the
    call's arguments), ``parts`` its closed parts (final), ``entries`` / ``shown`` the open text
    part's logprobs as the engine sent them / as the delta events showed them."""

    __slots__ = (
        "call_id",
        "content_index",
        "entries",
        "fragments",
        "id",
        "index",
        "kind",
        "name",
        "part",
        "parts",
        "shown",
        "tool_index",
    )

    def __init__(self, kind: str, index: int, item_id: str) -> None:
        self.kind = kind
        self.index = index
        self.id = item_id
        self.fragments: list[str] = []
        self.part: str | None = None
        self.content_index = 0
        self.parts: list[dict[str, Any]] = []
        self.entries: list[dict[str, Any]] = []
        self.shown: list[dict[str, Any]] = []
        self.tool_index = -1
        self.call_id = ""
        self.name = ""


class ResponseStreamWriter:
    """Writes one response's events from a chat completion stream (see the module docstring).

    Call :meth:`feed` with each batch of chunks, then exactly one of :meth:`finish`,
    :meth:`fail` or :meth:`cancel`; :attr:`response` is then the final object.  The opening
    events (``response.created``, ``response.in_progress``) come from :meth:`start`, or with the
    first events of whichever method is called first.
    """

    __slots__ = (
        "_finish_reason",
        "_item",
        "_model",
        "_output",
        "_request_id",
        "_response",
        "_seq",
        "_service_tier",
        "_shell",
        "_summary",
        "_usage",
    )

    def __init__(self, request: ResponsesRequest, *, request_id: str, created_at: int) -> None:
        self._request_id = request_id
        self._shell = response_shell(request, request_id=request_id, created_at=created_at)
        reasoning = request.params.reasoning
        self._summary = reasoning is not None and bool(
            reasoning.summary or reasoning.generate_summary
        )
        self._seq = 0
        self._item: _Item | None = None
        self._output: list[dict[str, Any]] = []
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None
        self._model: str | None = None
        self._service_tier: str | None = None
        self._response: dict[str, Any] | None = None

    @property
    def response(self) -> dict[str, Any] | None:
        """The final ``response`` object, once the stream has ended (``None`` before)."""
        return self._response

    @property
    def usage(self) -> dict[str, Any] | None:
        """The chat ``usage`` the chunks reported (the last non-null one), or ``None``."""
        return self._usage

    def start(self) -> list[Event]:
        """``response.created`` and ``response.in_progress`` (empty once they were written)."""
        if self._seq:
            return []
        self._seq = 2
        shell = self._shell
        return [
            {"type": "response.created", "sequence_number": 0, "response": shell},
            {"type": "response.in_progress", "sequence_number": 1, "response": shell},
        ]

    def feed(self, chunks: Iterable[Chunk]) -> list[Event]:
        """The events for one batch of ``chat.completion.chunk`` dicts (read, never changed)."""
        events = self.start() if not self._seq else []
        for chunk in chunks:
            usage = chunk.get("usage")
            if usage is not None:
                self._usage = usage
            if self._model is None:
                self._model = chunk.get("model")
                self._service_tier = chunk.get("service_tier")
            choices = chunk.get("choices")
            if not choices:
                continue
            for choice in choices:
                if choice.get("index", 0) != 0:
                    continue
                # The usual chunk (more text for the open text part, nothing else) is handled
                # here, without a call: this runs for every token of every stream.
                item = self._item
                delta = choice.get("delta")
                if (
                    item is None
                    or item.part != _TEXT
                    or not delta
                    or not delta.keys() <= _CONTENT_ONLY
                    or choice.get("logprobs") is not None
                    or choice.get("finish_reason") is not None
                ):
                    self._feed_choice(choice, events)
                    continue
                text = delta["content"]
                if text:
                    item.fragments.append(text)
                    seq = self._seq
                    self._seq = seq + 1
                    events.append(
                        {
                            "type": "response.output_text.delta",
                            "sequence_number": seq,
                            "item_id": item.id,
                            "output_index": item.index,
                            "content_index": item.content_index,
                            "delta": text,
                            "logprobs": [],
                        }
                    )
        return events

    def finish(self, *, completed_at: int) -> list[Event]:
        """Close the stream normally: ``response.completed``, or ``response.incomplete`` when
        the engine stopped at a limit (``completed_at``: the Unix time, used if completed)."""
        events = self.start()
        finish_reason = self._finish_reason
        reason = INCOMPLETE_REASONS.get(finish_reason) if finish_reason is not None else None
        status = "completed" if finish_reason is not None and reason is None else "incomplete"
        self._close(events, status)
        self._end(status, completed_at=completed_at, incomplete_reason=reason)
        events.append(self._event("response." + status, response=self._response))
        return events

    def fail(self, error: APIError) -> list[Event]:
        """Close the stream on an engine error: open items end ``incomplete``, then
        ``response.failed`` with ``error`` set."""
        events = self.start()
        self._close(events, "incomplete")
        self._end("failed", error=error_object(error))
        events.append(self._event("response.failed", response=self._response))
        return events

    def cancel(self) -> dict[str, Any]:
        """The client went away: the final object, status ``cancelled`` (no events to send)."""
        self._close([], "incomplete")
        return self._end("cancelled")

    def _end(self, status: str, **outcome: Any) -> dict[str, Any]:
        self._response = final_response(
            self._shell,
            status=status,
            output=self._output,
            usage=self._usage,
            model=self._model,
            service_tier=self._service_tier,
            **outcome,
        )
        return self._response

    def _event(self, kind: str, **fields: Any) -> Event:
        seq = self._seq
        self._seq = seq + 1
        return {"type": kind, "sequence_number": seq, **fields}

    def _feed_choice(self, choice: dict[str, Any], events: list[Event]) -> None:
        delta = choice.get("delta")
        if delta:
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                part = _SUMMARY if self._summary else "reasoning_text"
                self._text(_REASONING, part, reasoning, None, events)
            content = delta.get("content")
            if content:
                self._text(_MESSAGE, _TEXT, content, choice.get("logprobs"), events)
            refusal = delta.get("refusal")
            if refusal:
                self._text(_MESSAGE, _REFUSAL, refusal, None, events)
            calls = delta.get("tool_calls")
            if calls:
                self._calls(calls, events)
        finish_reason = choice.get("finish_reason")
        if finish_reason is not None:
            self._finish_reason = finish_reason

    def _text(
        self,
        kind: str,
        part: str,
        text: str,
        logprobs: dict[str, Any] | None,
        events: list[Event],
    ) -> None:
        """One text delta of a reasoning or message item's part."""
        item = self._item
        if item is None or item.kind != kind:
            item = self._open(kind, events)
        if item.part != part:
            self._open_part(item, part, events)
        item.fragments.append(text)
        seq = self._seq
        self._seq = seq + 1
        event = {
            "type": _DELTAS[part],
            "sequence_number": seq,
            "item_id": item.id,
            "output_index": item.index,
            _INDEX_KEYS.get(part, "content_index"): item.content_index,
            "delta": text,
        }
        if part == _TEXT:
            shown: list[dict[str, Any]] = []
            entries = logprobs.get("content") if logprobs else None
            if entries:
                item.entries.extend(entries)
                shown = delta_logprobs(entries)
                item.shown.extend(shown)
            event["logprobs"] = shown
        events.append(event)

    def _calls(self, fragments: Sequence[dict[str, Any]], events: list[Event]) -> None:
        for position, fragment in enumerate(fragments):
            index = fragment.get("index", position)
            function = fragment.get("function") or {}
            name = function.get("name")
            item = self._item
            if item is None or item.kind != _CALL or item.tool_index != index:
                item = self._open(_CALL, events, index, fragment.get("id"), name)
            elif name and not item.name:
                item.name = name  # a server that names the call after its first fragment
            arguments = function.get("arguments")
            if arguments:
                item.fragments.append(arguments)
                seq = self._seq
                self._seq = seq + 1
                events.append(
                    {
                        "type": "response.function_call_arguments.delta",
                        "sequence_number": seq,
                        "item_id": item.id,
                        "output_index": item.index,
                        "delta": arguments,
                    }
                )

    def _open(
        self,
        kind: str,
        events: list[Event],
        tool_index: int = -1,
        call_id: str | None = None,
        name: str | None = None,
    ) -> _Item:
        """Close the open item and open a new one of ``kind``."""
        self._close(events, "completed")
        index = len(self._output)
        item = self._item = _Item(kind, index, item_id(_PREFIXES[kind], self._request_id, index))
        if kind == _CALL:
            item.tool_index = tool_index
            item.call_id = call_id or item_id("call", self._request_id, index)
            item.name = name or ""
            added = function_call_item(item.id, item.call_id, item.name, "", "in_progress")
        elif kind == _MESSAGE:
            added = message_item(item.id, [], "in_progress")
        else:
            added = reasoning_item(item.id, [], "in_progress")
        events.append(self._event("response.output_item.added", output_index=index, item=added))
        return item

    def _open_part(self, item: _Item, part: str, events: list[Event]) -> None:
        if item.part is not None:
            self._close_part(item, events)
        item.part = part
        item.content_index = len(item.parts)
        item.fragments = []
        added = text_part("", []) if part == _TEXT else {"type": part, _TEXT_KEYS[part]: ""}
        where = {
            "item_id": item.id,
            "output_index": item.index,
            _INDEX_KEYS.get(part, "content_index"): item.content_index,
        }
        kind = _PART_EVENTS.get(part, "response.content_part")
        events.append(self._event(kind + ".added", **where, part=added))

    def _close_part(self, item: _Item, events: list[Event]) -> None:
        part, text = item.part, "".join(item.fragments)
        assert part is not None
        key = _TEXT_KEYS[part]
        where = {
            "item_id": item.id,
            "output_index": item.index,
            _INDEX_KEYS.get(part, "content_index"): item.content_index,
        }
        done = self._event(_DONES[part], **where, **{key: text})
        if part == _TEXT:
            done["logprobs"] = item.shown
            closed = text_part(text, output_logprobs(item.entries) if item.entries else [])
            item.entries, item.shown = [], []
        else:
            closed = {"type": part, key: text}
        events.append(done)
        kind = _PART_EVENTS.get(part, "response.content_part")
        events.append(self._event(kind + ".done", **where, part=closed))
        item.parts.append(closed)
        item.part = None

    def _close(self, events: list[Event], status: str) -> None:
        """Write the open item's closing events and add it, final, to the output."""
        item = self._item
        if item is None:
            return
        self._item = None
        if item.kind == _CALL:
            arguments = "".join(item.fragments)
            # ``name`` is in OpenAI's spec of this event, though the SDK's model leaves it out.
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=item.index,
                    arguments=arguments,
                    name=item.name,
                )
            )
            done = function_call_item(item.id, item.call_id, item.name, arguments, status)
        else:
            if item.part is not None:
                self._close_part(item, events)
            make = message_item if item.kind == _MESSAGE else reasoning_item
            done = make(item.id, item.parts, status)
        self._output.append(done)
        events.append(self._event("response.output_item.done", output_index=item.index, item=done))


_CONTENT_ONLY: Final = frozenset({"content"})
_SUMMARY: Final = "summary_text"
_PREFIXES: Final = {_REASONING: "rs", _MESSAGE: "msg", _CALL: "fc"}
_DELTAS: Final = {
    _TEXT: "response.output_text.delta",
    _REFUSAL: "response.refusal.delta",
    "reasoning_text": "response.reasoning_text.delta",
    _SUMMARY: "response.reasoning_summary_text.delta",
}
_DONES: Final = {
    _TEXT: "response.output_text.done",
    _REFUSAL: "response.refusal.done",
    "reasoning_text": "response.reasoning_text.done",
    _SUMMARY: "response.reasoning_summary_text.done",
}
_TEXT_KEYS: Final = {_TEXT: "text", _REFUSAL: "refusal", "reasoning_text": "text", _SUMMARY: "text"}
"""The key that holds a part's text, in the part and in its ``.done`` event."""
_INDEX_KEYS: Final = {_SUMMARY: "summary_index"}
"""The key of a part's index in its events, where it is not ``content_index``."""
_PART_EVENTS: Final = {_SUMMARY: "response.reasoning_summary_part"}
"""The prefix of a part's ``.added`` / ``.done`` events, where it is not ``content_part``."""
