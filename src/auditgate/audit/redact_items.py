"""Redaction of the Responses API's bodies: the texts of ``instructions``, ``input`` and
``output`` items, wherever the item shapes put them.

A Responses body holds its conversation in item trees, not in chat's ``messages`` /
``choices``: message content (a string, or parts whose ``text`` / ``refusal`` is the text),
function call ``arguments``, function call ``output`` (a string or parts), reasoning
``content`` / ``summary`` parts.  :func:`texts` collects every such string of a body (for the
redactor's one-pass pre-check) and :func:`redact` returns the body with each redacted,
copy-on-write: what nothing matched is not copied, and the client's objects are never mutated.
Structure (types, ids, roles, URLs, file data) is left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

__all__ = ["redact", "texts"]

_TOP: Final = ("instructions", "input", "output")
"""The body fields that hold the conversation (request: the first two; response: all)."""
_TEXT_KEYS: Final = frozenset({"text", "content", "arguments", "output", "refusal", "summary"})
"""Keys whose string value is text (and whose list or object value holds text deeper)."""


def texts(body: Any, out: list[str]) -> None:
    """Append every text of ``body`` (a request or ``response`` object) to ``out``."""
    if isinstance(body, dict):
        for key in _TOP:
            _collect(body.get(key), out)


def _collect(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for item in value:
            _collect(item, out)
    elif isinstance(value, dict):
        for key, inner in value.items():
            if key in _TEXT_KEYS:
                _collect(inner, out)


def redact(body: Any, text: Callable[[str], str]) -> dict[str, Any] | None:
    """``body`` with every text passed through ``text``; ``None`` when nothing changed."""
    if not isinstance(body, dict):
        return None
    changed: dict[str, Any] = {}
    for key in _TOP:
        if key in body:
            new = _redact(body[key], text)
            if new is not None:
                changed[key] = new
    return {**body, **changed} if changed else None


def _redact(value: Any, text: Callable[[str], str]) -> Any:
    """The redacted ``value``, or ``None`` when nothing changed."""
    if isinstance(value, str):
        new = text(value)
        return None if new is value or new == value else new
    if isinstance(value, list):
        out: list[Any] | None = None
        for index, item in enumerate(value):
            new = _redact(item, text)
            if new is not None:
                if out is None:
                    out = list(value)
                out[index] = new
        return out
    if isinstance(value, dict):
        changed = {}
        for key, inner in value.items():
            if key in _TEXT_KEYS:
                new = _redact(inner, text)
                if new is not None:
                    changed[key] = new
        return {**value, **changed} if changed else None
    return None
