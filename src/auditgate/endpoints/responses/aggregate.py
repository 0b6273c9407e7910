"""The final ``response`` a Responses stream amounts to, for an upstream that speaks the API.

In passthrough mode the gateway relays the upstream's own events; each one the client received
is fed here, and :meth:`ResponsesStreamAggregator.finish` gives the object for the record:

- the ``response`` of the terminal event (``response.completed`` / ``response.incomplete`` /
  ``response.failed``) when one came: exactly what the client was told;
- otherwise — the stream was cut: the client went away, the upstream failed or closed early — a
  partial object: the last lifecycle ``response`` (``response.created`` /
  ``response.in_progress`` / ``response.queued``) with the output seen so far.  Items that were
  done are as ``response.output_item.done`` carried them; open ones are their
  ``output_item.added`` form with the parts and deltas seen applied, status ``incomplete``.
  The status is ``failed`` (with ``error``: the caller's, else an ``error`` event's) when the
  stream failed, ``cancelled`` when the client went away, else ``incomplete``.

Pure: no I/O, events are read and never changed (the result may share objects with them).  Per
event, one dict lookup and an append; text is joined once, in :meth:`finish`.  Event types it
does not know (hosted tools' progress events) carry nothing the final items lack and are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from auditgate.endpoints.responses.objects import error_object
from auditgate.errors import APIError

__all__ = ["ResponsesStreamAggregator"]

Event = dict[str, Any]


class _Open:
    """An output item that was added and is not done yet."""

    __slots__ = ("arguments", "content", "fragments", "item", "summary", "summary_fragments")

    def __init__(self, item: dict[str, Any]) -> None:
        self.item = item
        self.content: dict[int, dict[str, Any]] = {}
        """Parts by ``content_index``, as added (or done)."""
        self.fragments: dict[int, list[str]] = {}
        """Text deltas by ``content_index`` since the part was added."""
        self.summary: dict[int, dict[str, Any]] = {}
        self.summary_fragments: dict[int, list[str]] = {}
        self.arguments: list[str] = []

    def render(self) -> dict[str, Any]:
        item = dict(self.item)
        kind = item.get("type")
        if kind == "function_call":
            item["arguments"] = "".join(self.arguments)
        elif self.content or self.fragments:
            item["content"] = _parts(self.content, self.fragments)
        if self.summary or self.summary_fragments:
            item["summary"] = _parts(self.summary, self.summary_fragments, "summary_text")
        item["status"] = "incomplete"
        return item


def _parts(
    parts: dict[int, dict[str, Any]], fragments: dict[int, list[str]], kind: str | None = None
) -> list[dict[str, Any]]:
    out = []
    for index in sorted(parts.keys() | fragments.keys()):
        part = dict(parts.get(index) or {"type": kind or "output_text", "text": ""})
        texts = fragments.get(index)
        if texts is not None:
            part["refusal" if part.get("type") == "refusal" else "text"] = "".join(texts)
        out.append(part)
    return out


class ResponsesStreamAggregator:
    """Accumulates the events of one Responses stream (see the module docstring)."""

    __slots__ = ("_done", "_error", "_lifecycle", "_open", "_terminal", "skipped")

    def __init__(self) -> None:
        self.skipped = 0
        """Events skipped because they lacked a field their type requires."""
        self._lifecycle: dict[str, Any] | None = None
        self._terminal: dict[str, Any] | None = None
        self._done: dict[int, dict[str, Any]] = {}
        self._open: dict[int, _Open] = {}
        self._error: dict[str, Any] | None = None

    @property
    def usage(self) -> dict[str, Any] | None:
        """The terminal response's ``usage``, or ``None``."""
        return self._terminal.get("usage") if self._terminal is not None else None

    def feed(self, event: Event) -> None:
        """Accumulate one event, as the client received it."""
        self.feed_all((event,))

    def feed_all(self, events: Iterable[Event]) -> None:
        """Accumulate events in order.  An event without the fields its type requires is
        skipped and counted in :attr:`skipped`: the relay goes on whatever the upstream sends."""
        handlers = _HANDLERS
        for event in events:
            try:
                handler = handlers.get(event.get("type", ""))
                if handler is not None:
                    handler(self, event)
            except (KeyError, TypeError, AttributeError):
                self.skipped += 1

    def finish(
        self, *, failure: APIError | None = None, cancelled: bool = False
    ) -> dict[str, Any] | None:
        """The final ``response``; ``None`` when no event carried one.

        ``failure``: the stream failed (the upstream's error); ``cancelled``: the client went
        away.  Both only matter when no terminal event came.
        """
        if self._terminal is not None:
            return self._terminal
        if self._lifecycle is None:
            return None
        output = []
        for index in sorted(self._done.keys() | self._open.keys()):
            done = self._done.get(index)
            output.append(done if done is not None else self._open[index].render())
        response = dict(self._lifecycle)
        response["output"] = output
        if failure is not None or self._error is not None:
            response["status"] = "failed"
            response["error"] = error_object(failure) if failure is not None else self._error
        else:
            response["status"] = "cancelled" if cancelled else "incomplete"
        return response

    # Handlers, one per event type (the table is ``_HANDLERS``).

    def _lifecycle_event(self, event: Event) -> None:
        self._lifecycle = event.get("response") or self._lifecycle

    def _terminal_event(self, event: Event) -> None:
        self._terminal = event.get("response")

    def _error_event(self, event: Event) -> None:
        self._error = {"code": event.get("code") or "server_error", "message": event.get("message")}

    def _item_added(self, event: Event) -> None:
        self._open[event["output_index"]] = _Open(event["item"])

    def _item_done(self, event: Event) -> None:
        index = event["output_index"]
        self._done[index] = event["item"]
        self._open.pop(index, None)

    def _part(self, event: Event) -> None:
        item = self._open.get(event["output_index"])
        if item is not None:
            index = event["content_index"]
            item.content[index] = event["part"]
            item.fragments.pop(index, None)

    def _text_delta(self, event: Event) -> None:
        item = self._open.get(event["output_index"])
        if item is not None:
            item.fragments.setdefault(event["content_index"], []).append(event["delta"])

    def _text_done(self, event: Event) -> None:
        item = self._open.get(event["output_index"])
        if item is not None:
            text = event.get("text", event.get("refusal"))
            item.fragments[event["content_index"]] = [text or ""]

    def _summary_part(self, event: Event) -> None:
        item = self._open.get(event["output_index"])
        if item is not None:
            index = event["summary_index"]
            item.summary[index] = event["part"]
            item.summary_fragments.pop(index, None)

    def _summary_delta(self, event: Event) -> None:
        item = self._open.get(event["output_index"])
        if item is not None:
            item.summary_fragments.setdefault(event["summary_index"], []).append(event["delta"])

    def _summary_done(self, event: Event) -> None:
        item = self._open.get(event["output_index"])
        if item is not None:
            item.summary_fragments[event["summary_index"]] = [event.get("text") or ""]

    def _arguments_delta(self, event: Event) -> None:
        item = self._open.get(event["output_index"])
        if item is not None:
            item.arguments.append(event["delta"])

    def _arguments_done(self, event: Event) -> None:
        item = self._open.get(event["output_index"])
        if item is not None:
            item.arguments[:] = [event.get("arguments") or ""]


_Handler = Callable[[ResponsesStreamAggregator, Event], None]
_A = ResponsesStreamAggregator
_HANDLERS: Final[dict[str, _Handler]] = {
    "response.created": _A._lifecycle_event,
    "response.queued": _A._lifecycle_event,
    "response.in_progress": _A._lifecycle_event,
    "response.completed": _A._terminal_event,
    "response.incomplete": _A._terminal_event,
    "response.failed": _A._terminal_event,
    "error": _A._error_event,
    "response.output_item.added": _A._item_added,
    "response.output_item.done": _A._item_done,
    "response.content_part.added": _A._part,
    "response.content_part.done": _A._part,
    "response.output_text.delta": _A._text_delta,
    "response.output_text.done": _A._text_done,
    "response.refusal.delta": _A._text_delta,
    "response.refusal.done": _A._text_done,
    "response.reasoning_text.delta": _A._text_delta,
    "response.reasoning_text.done": _A._text_done,
    "response.reasoning_summary_part.added": _A._summary_part,
    "response.reasoning_summary_part.done": _A._summary_part,
    "response.reasoning_summary_text.delta": _A._summary_delta,
    "response.reasoning_summary_text.done": _A._summary_done,
    "response.function_call_arguments.delta": _A._arguments_delta,
    "response.function_call_arguments.done": _A._arguments_done,
}
