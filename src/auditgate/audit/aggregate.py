"""Stream aggregation: the ``chat.completion`` that a stream of chunk dicts amounts to.

The aggregator is pure (no I/O) and runs on the hot path for every streamed chunk of every stored
request, so per-chunk work is a few dict lookups and list appends: string fragments are collected
in lists and joined once, in :meth:`StreamAggregator.finish`.  Nothing is deep-copied; the result
shares leaf objects (``usage``, logprob entries, unknown non-string values) with the chunks fed,
so callers must treat both as read-only.

Rules (DESIGN §3), per ``choice.index``:

- ``content``, ``reasoning_content``, ``refusal`` and every other *string* delta field (vLLM's
  ``reasoning``, ...) are concatenated.  A field no delta carried stays absent; one carried only
  as ``null`` is ``null``.  ``content`` is ``null`` when the message has tool calls and no delta
  carried a non-empty content string (OpenAI's non-stream shape).
- ``role``: the first one a delta carries, ``"assistant"`` if none did.
- ``tool_calls``: merged by their ``index``; ``id``, ``type`` and ``function.name`` come from the
  first fragment that has them, ``function.arguments`` is concatenated.  The list is sorted by
  ``index`` and the ``index`` key dropped, as OpenAI's non-stream message has none.  Other nested
  objects (``function_call``, ``audio``) merge the same way: ``id``/``type``/``name`` first, strings
  concatenated, lists extended, other values last non-null.
- ``logprobs.content`` / ``logprobs.refusal``: the lists carried, concatenated (``null`` when no
  chunk carried one); ``logprobs`` is ``null`` when no chunk of the choice carried any.
- ``finish_reason``: the last non-null.  Other choice-level fields (vLLM's ``stop_reason``): the
  last non-null value, present if any chunk carried the key.

Per completion: ``usage`` is the last non-null ``usage`` a chunk carried (normally the final
chunk, whose ``choices`` is empty), ``null`` if none did.  ``id``, ``model``, ``created``,
``system_fingerprint``, ``service_tier`` and any other top-level field take the *first non-null*
value a chunk carried — they are constant across a stream, and the first is what describes the
response from its start (``created`` especially); a key no chunk carried stays absent.
``object`` becomes ``"chat.completion"`` and OpenAI's per-chunk ``obfuscation`` padding is dropped.

Compared with the official SDK's accumulator (``openai.lib.streaming.chat.
ChatCompletionStreamState``) on OpenAI-shaped streams the result is equal, except where the SDK
departs from OpenAI's non-stream response: it adds ``message.parsed``, fills every message field
it knows (``refusal``, ``audio``, ``annotations``, ``function_call``, ``tool_calls``) with null,
keeps ``index`` and adds ``function.parsed_arguments`` on tool calls, concatenates ``role``,
``id`` and ``name`` when a server repeats them, keeps ``content: ""`` beside tool calls, sums
numbers, takes ``usage`` and ``system_fingerprint`` from the *last* chunk (even when null),
decides ``[]`` vs ``null`` for a logprobs list by the first chunk that carries logprobs, counts
logprobs twice when a choice's first chunk (other than the stream's first chunk) carries them, and
requires choices and tool calls to first appear in ``index`` order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

__all__ = ["StreamAggregator"]

_FIRST_WINS: Final = frozenset({"role", "id", "type", "name", "index"})
"""Keys that identify rather than stream: kept from the first fragment that has them."""
_TOP_SETTLED: Final = frozenset({"choices", "usage", "object", "obfuscation"})
"""Top-level keys never taken into the completion's top-level fields as they stand."""
_PLAIN_CHOICE: Final = frozenset({"index", "delta", "logprobs", "finish_reason"})
"""The keys of a usual stream choice (one that needs no extras)."""


class _Parts(list[str]):
    """String fragments to be joined at finish; a distinct type so it is never mistaken for a
    list value that a delta carried."""

    __slots__ = ()


def _merge(acc: dict[str, Any], key: str, value: Any) -> None:
    """Merge one delta field into an accumulator dict (see the module rules)."""
    if value is None:
        acc.setdefault(key, None)
        return
    current = acc.get(key)
    if key in _FIRST_WINS:
        if current is None:
            acc[key] = value
    elif type(value) is str:
        if type(current) is _Parts:
            current.append(value)
        else:
            acc[key] = _Parts((value,))
    elif type(value) is dict:
        if type(current) is not dict:
            current = acc[key] = {}
        for sub_key, sub_value in value.items():
            _merge(current, sub_key, sub_value)
    elif type(value) is list:
        # Copied on first sight so the chunk's own list is never extended.
        if type(current) is list:
            current.extend(value)
        else:
            acc[key] = list(value)
    else:
        acc[key] = value


def _render(acc: dict[str, Any]) -> dict[str, Any]:
    """The plain JSON value of an accumulator dict: fragments joined, nested dicts rendered."""
    out: dict[str, Any] = {}
    for key, value in acc.items():
        if type(value) is _Parts:
            out[key] = "".join(value)
        elif type(value) is dict:
            out[key] = _render(value)
        else:
            out[key] = value
    return out


class _ChoiceState:
    """Everything accumulated for one ``choice.index``."""

    __slots__ = (
        "extras",
        "finish_reason",
        "index",
        "logprobs_content",
        "logprobs_refusal",
        "logprobs_seen",
        "message",
        "tool_calls",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.message: dict[str, Any] = {}
        """Accumulated delta fields other than ``tool_calls``, in first-seen order."""
        self.tool_calls: dict[int, dict[str, Any]] | None = None
        self.logprobs_seen = False
        self.logprobs_content: list[Any] | None = None
        self.logprobs_refusal: list[Any] | None = None
        self.finish_reason: Any = None
        self.extras: dict[str, Any] | None = None

    def feed_delta(self, delta: dict[str, Any]) -> None:
        for key, value in delta.items():
            self.feed_field(key, value)

    def feed_field(self, key: str, value: Any) -> None:
        """Merge one delta field (``tool_calls`` by call index, the rest by ``_merge``)."""
        if key == "tool_calls":
            if value is not None:
                self._feed_tool_calls(value)
        else:
            _merge(self.message, key, value)

    def _feed_tool_calls(self, fragments: list[dict[str, Any]]) -> None:
        calls = self.tool_calls
        if calls is None:
            calls = self.tool_calls = {}
        for position, fragment in enumerate(fragments):
            index = fragment.get("index", position)
            call = calls.get(index)
            if call is None:
                call = calls[index] = {}
            for key, value in fragment.items():
                _merge(call, key, value)

    def feed_logprobs(self, logprobs: dict[str, Any]) -> None:
        self.logprobs_seen = True
        content = logprobs.get("content")
        if content is not None:
            if self.logprobs_content is None:
                self.logprobs_content = list(content)
            else:
                self.logprobs_content.extend(content)
        refusal = logprobs.get("refusal")
        if refusal is not None:
            if self.logprobs_refusal is None:
                self.logprobs_refusal = list(refusal)
            else:
                self.logprobs_refusal.extend(refusal)

    def render(self) -> dict[str, Any]:
        fields = _render(self.message)
        message: dict[str, Any] = {"role": fields.pop("role", None) or "assistant"}
        if self.tool_calls:
            # OpenAI's non-stream message has ``content: null`` beside tool calls, while some
            # servers (vLLM) open a tool-call stream with ``content: ""``.
            message["content"] = fields.pop("content", None) or None
        elif "content" in fields:
            message["content"] = fields.pop("content")
        message.update(fields)
        if self.tool_calls is not None:
            tool_calls = []
            for index in sorted(self.tool_calls):
                call = _render(self.tool_calls[index])
                call.pop("index", None)
                tool_calls.append(call)
            message["tool_calls"] = tool_calls
        logprobs = (
            {"content": self.logprobs_content, "refusal": self.logprobs_refusal}
            if self.logprobs_seen
            else None
        )
        choice = {
            "index": self.index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": self.finish_reason,
        }
        if self.extras:
            choice.update(self.extras)
        return choice


class StreamAggregator:
    """Accumulates the chunks of one streamed chat completion (see the module rules).

    Feed every chunk the client received, in order, then call :meth:`finish`.  Chunks are read,
    never modified.  :meth:`finish` does not consume the state: it may be called at any point
    (e.g. on a client disconnect, for the partial response) and again after further chunks.
    """

    __slots__ = ("_choices", "_fed", "_settled", "_top", "_usage")

    def __init__(self) -> None:
        self._choices: dict[int, _ChoiceState] = {}
        self._top: dict[str, Any] = {}
        """Top-level fields other than ``choices``/``usage``: the first non-null value of each."""
        self._settled: set[str] = set(_TOP_SETTLED)
        """Keys whose value is final (or which are handled elsewhere or dropped)."""
        self._usage: dict[str, Any] | None = None
        self._fed = False

    @property
    def usage(self) -> dict[str, Any] | None:
        """The usage the stream reported (last non-null ``usage`` of a chunk), or ``None``."""
        return self._usage

    def feed(self, chunk: dict[str, Any]) -> None:
        """Accumulate one ``chat.completion.chunk`` dict, as the client received it."""
        self.feed_all((chunk,))

    def feed_all(self, chunks: Iterable[dict[str, Any]]) -> None:
        """Accumulate chunks in order: the same as :meth:`feed` for each, with less overhead.

        This runs for every streamed chunk of every stored request, so the usual chunk (one
        choice whose delta adds to string fields already seen) is handled inline, without a
        function call; anything else takes the general path.
        """
        settled, states = self._settled, self._choices
        for chunk in chunks:
            self._fed = True
            # Top-level fields are constant in practice: once each has a value, a C-level
            # subset test is all a chunk costs for them.
            if not chunk.keys() <= settled:
                self._feed_top(chunk)
            choices = chunk.get("choices")
            if choices:
                for choice in choices:
                    state = states.get(choice.get("index", 0))
                    if (
                        state is None
                        or not choice.keys() <= _PLAIN_CHOICE
                        or choice.get("logprobs") is not None
                    ):
                        self._feed_choice(choice)
                        continue
                    delta = choice.get("delta")
                    if delta:
                        message = state.message
                        for key, value in delta.items():
                            # ``_merge`` only ever stores ``_Parts`` under a concatenated key.
                            current = message.get(key)
                            if type(current) is _Parts and type(value) is str:
                                current.append(value)
                            else:
                                state.feed_field(key, value)
                    finish_reason = choice.get("finish_reason")
                    if finish_reason is not None:
                        state.finish_reason = finish_reason
            usage = chunk.get("usage")
            if usage is not None:
                self._usage = usage

    def _feed_top(self, chunk: dict[str, Any]) -> None:
        top, settled = self._top, self._settled
        for key, value in chunk.items():
            if key not in settled:
                if top.get(key) is None:
                    top[key] = value
                if value is not None:
                    settled.add(key)

    def _feed_choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _ChoiceState(index)
        for key, value in choice.items():
            if key == "delta":
                if value:
                    state.feed_delta(value)
            elif key == "finish_reason":
                if value is not None:
                    state.finish_reason = value
            elif key == "logprobs":
                if value is not None:
                    state.feed_logprobs(value)
            elif key != "index":
                extras = state.extras
                if extras is None:
                    extras = state.extras = {}
                if value is not None or key not in extras:
                    extras[key] = value

    def finish(self) -> dict[str, Any] | None:
        """The ``chat.completion`` the chunks fed so far amount to; ``None`` if none was fed."""
        if not self._fed:
            return None
        top = self._top
        completion: dict[str, Any] = {}
        if "id" in top:
            completion["id"] = top["id"]
        completion["object"] = "chat.completion"
        for key in ("created", "model"):
            if key in top:
                completion[key] = top[key]
        completion["choices"] = [self._choices[index].render() for index in sorted(self._choices)]
        completion["usage"] = self._usage
        for key, value in top.items():
            if key not in completion:
                completion[key] = value
        return completion
