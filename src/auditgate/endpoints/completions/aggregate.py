"""Stream aggregation for legacy completions: the ``text_completion`` a stream amounts to.

Pure and cheap per chunk, like the chat aggregator (:mod:`auditgate.audit.aggregate`).  Rules,
per ``choice.index``:

- ``text``: concatenated.
- ``logprobs``: each list it carries (``tokens``, ``token_logprobs``, ``top_logprobs``,
  ``text_offset``, and any other) concatenated in stream order; ``null`` when no chunk of the
  choice carried a logprobs object.
- ``finish_reason``: the last non-null.  Other choice-level fields (vLLM's ``stop_reason``,
  ``prompt_logprobs``): the last non-null, present if any chunk carried the key.

Per completion: ``usage`` is the last non-null one a chunk carried (``null`` if none did);
``id``, ``model``, ``created``, ``system_fingerprint`` and any other top-level field take the
first non-null value; ``object`` is ``"text_completion"``.  Choices come out in ``index``
order.  For the mock engine the aggregate of a stream equals its non-stream response.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

__all__ = ["TextCompletionAggregator"]

_TOP_SETTLED: Final = frozenset({"choices", "usage", "object"})
_PLAIN_CHOICE: Final = frozenset({"text", "index", "logprobs", "finish_reason"})
"""The keys of a usual stream choice."""


class _Choice:
    """Everything accumulated for one ``choice.index``."""

    __slots__ = ("extras", "finish_reason", "index", "logprobs", "text")

    def __init__(self, index: int) -> None:
        self.index = index
        self.text: list[str] = []
        self.logprobs: dict[str, Any] | None = None
        self.finish_reason: Any = None
        self.extras: dict[str, Any] = {}

    def feed(self, choice: dict[str, Any]) -> None:
        for key, value in choice.items():
            if key == "text":
                if type(value) is str:
                    self.text.append(value)
            elif key == "logprobs":
                if type(value) is dict:
                    self._feed_logprobs(value)
            elif key == "finish_reason":
                if value is not None:
                    self.finish_reason = value
            elif key != "index" and (value is not None or key not in self.extras):
                self.extras[key] = value

    def _feed_logprobs(self, logprobs: dict[str, Any]) -> None:
        merged = self.logprobs
        if merged is None:
            merged = self.logprobs = {}
        for key, value in logprobs.items():
            if type(value) is list:
                current = merged.get(key)
                if type(current) is list:
                    current.extend(value)
                else:
                    merged[key] = list(value)  # copied: the chunk's own list is never extended
            elif value is not None or key not in merged:
                merged[key] = value

    def render(self) -> dict[str, Any]:
        out = {
            "text": "".join(self.text),
            "index": self.index,
            "logprobs": self.logprobs,
            "finish_reason": self.finish_reason,
        }
        out.update(self.extras)
        return out


class TextCompletionAggregator:
    """Feed every chunk a client received, in order; :meth:`finish` gives the completion.

    Chunks are read, never modified; :meth:`finish` may be called at any point (a client gone
    mid-stream gets the partial completion).
    """

    __slots__ = ("_choices", "_fed", "_settled", "_top", "_usage")

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self._top: dict[str, Any] = {}
        """Top-level fields other than ``choices``/``usage``: the first non-null of each."""
        self._settled: set[str] = set(_TOP_SETTLED)
        """Keys whose value is final (or handled elsewhere)."""
        self._usage: dict[str, Any] | None = None
        self._fed = False

    def feed(self, chunk: dict[str, Any]) -> None:
        """One chunk, as the client received it."""
        self.feed_all((chunk,))

    def feed_all(self, chunks: Iterable[dict[str, Any]]) -> None:
        """Chunks in order.  Runs for every chunk of every stored stream: the usual choice
        (text, no logprobs, nothing else) is handled inline; anything else takes
        :meth:`_Choice.feed`."""
        settled, states = self._settled, self._choices
        for chunk in chunks:
            self._fed = True
            if not chunk.keys() <= settled:  # top-level fields settle after the first chunk
                self._feed_top(chunk)
            choices = chunk.get("choices")
            if choices:
                for choice in choices:
                    if type(choice) is not dict:
                        continue
                    index = choice.get("index", 0)
                    state = states.get(index)
                    if state is None:
                        if type(index) is not int:
                            continue
                        state = states[index] = _Choice(index)
                    text = choice.get("text")
                    if (
                        choice.keys() <= _PLAIN_CHOICE
                        and type(text) is str
                        and choice.get("logprobs") is None
                    ):
                        state.text.append(text)
                        finish_reason = choice.get("finish_reason")
                        if finish_reason is not None:
                            state.finish_reason = finish_reason
                    else:
                        state.feed(choice)
            usage = chunk.get("usage")
            if usage is not None:
                self._usage = usage

    def _feed_top(self, chunk: dict[str, Any]) -> None:
        top, settled = self._top, self._settled
        for key, value in chunk.items():
            if key not in settled:
                if top.get(key) is None:
                    top[key] = value  # first non-null wins; a null only marks the key present
                if value is not None:
                    settled.add(key)

    def finish(self) -> dict[str, Any] | None:
        """The ``text_completion`` so far; ``None`` when no chunk was fed."""
        if not self._fed:
            return None
        top = self._top
        out: dict[str, Any] = {}
        for key in ("id", "object", "created", "model"):
            if key in top:
                out[key] = top[key]
        out["object"] = "text_completion"
        out["choices"] = [self._choices[i].render() for i in sorted(self._choices)]
        out["usage"] = self._usage
        for key, value in top.items():
            if key not in out:
                out[key] = value
        return out
