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
    """Feed every chunk a client received, in order; :meth:`finish` gives the completion."""

    __slots__ = ("_choices", "_seen", "_top", "_usage")

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self._top: dict[str, Any] = {}
        self._usage: dict[str, Any] | None = None
        self._seen = False

    def feed(self, chunk: dict[str, Any]) -> None:
        """One chunk, as the client received it."""
        self._seen = True
        top = self._top
        for key, value in chunk.items():
            if key not in _TOP_SETTLED and top.get(key) is None:
                top[key] = value  # first non-null wins; a null only marks the key present
        usage = chunk.get("usage")
        if usage is not None:
            self._usage = usage
        choices = chunk.get("choices")
        if type(choices) is list:
            for choice in choices:
                if type(choice) is not dict:
                    continue
                index = choice.get("index", 0)
                if type(index) is not int:
                    continue
                state = self._choices.get(index)
                if state is None:
                    state = self._choices[index] = _Choice(index)
                state.feed(choice)

    def feed_all(self, chunks: Iterable[dict[str, Any]]) -> None:
        """Several chunks, in order."""
        for chunk in chunks:
            self.feed(chunk)

    def finish(self) -> dict[str, Any] | None:
        """The ``text_completion`` so far; ``None`` when no chunk was fed."""
        if not self._seen:
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
