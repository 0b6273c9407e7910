"""Strings that match a JSON-schema ``pattern``, best effort.

The pattern is parsed with Python's own regular-expression parser and walked: literals are kept,
classes give one of their characters, repeats repeat a few times, alternatives pick one.  The
result is checked with :func:`re.search` (JSON Schema patterns are unanchored); a pattern this
cannot satisfy (look-arounds that contradict, back-references into alternatives, a syntax Python
does not share with ECMA-262) gives ``None`` and the caller falls back to a plain word.
"""

from __future__ import annotations

import importlib
import random
import re
from typing import Any, Final

__all__ = ["matching"]

# Python's parser is a private module without type stubs; it is stable across 3.11-3.14 and
# only this file depends on it.
_sre: Final[Any] = importlib.import_module("re._parser")
_MAX_EXTRA_REPEATS: Final = 3
_PRINTABLE: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.:/@#"
_CATEGORY_SAMPLES: Final = {
    "CATEGORY_DIGIT": "0123456789",
    "CATEGORY_NOT_DIGIT": "abcxyz",
    "CATEGORY_WORD": "abcdefghijklmnopqrstuvwxyz",
    "CATEGORY_NOT_WORD": " -.",
    "CATEGORY_SPACE": " ",
    "CATEGORY_NOT_SPACE": "abcxyz",
}
_CATEGORY_CLASSES: Final = {
    "CATEGORY_DIGIT": r"\d",
    "CATEGORY_NOT_DIGIT": r"\D",
    "CATEGORY_WORD": r"\w",
    "CATEGORY_NOT_WORD": r"\W",
    "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S",
}


def matching(pattern: str, rng: random.Random) -> str | None:
    """A string in which ``pattern`` is found, drawn with ``rng``; ``None`` if none was made."""
    try:
        parsed = _sre.parse(pattern)
        text = _Walker(rng).walk(list(parsed))
        return text if re.search(pattern, text) else None
    except (re.error, ValueError, TypeError, IndexError, KeyError, RecursionError):
        return None


class _Walker:
    __slots__ = ("groups", "rng")

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.groups: dict[int, str] = {}

    def walk(self, items: list[tuple[Any, Any]]) -> str:
        return "".join(self.item(op, av) for op, av in items)

    def item(self, op: Any, av: Any) -> str:
        name = str(op)
        if name == "LITERAL":
            return chr(av)
        if name == "NOT_LITERAL":
            return "a" if av != ord("a") else "b"
        if name == "ANY":
            return self.rng.choice("abcxyz")
        if name == "IN":
            return self.one_of(av)
        if name == "BRANCH":
            return self.walk(list(self.rng.choice(av[1])))
        if name == "SUBPATTERN":
            group, _, _, body = av
            text = self.walk(list(body))
            if group is not None:
                self.groups[group] = text
            return text
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, body = av
            top = min(high, low + _MAX_EXTRA_REPEATS)
            return "".join(self.walk(list(body)) for _ in range(self.rng.randint(low, top)))
        if name == "GROUPREF":
            return self.groups[av]
        if name == "ATOMIC_GROUP":
            return self.walk(list(av))
        # AT (anchors), ASSERT / ASSERT_NOT (look-arounds): nothing to write.
        return ""

    def one_of(self, items: list[tuple[Any, Any]]) -> str:
        """One character of a class ``[...]`` (possibly negated)."""
        if items and str(items[0][0]) == "NEGATE":
            allowed = [c for c in _PRINTABLE if not _in_class(items[1:], c)]
            return self.rng.choice(allowed)
        candidates: list[str] = []
        for op, av in items:
            name = str(op)
            if name == "LITERAL":
                candidates.append(chr(av))
            elif name == "RANGE":
                candidates.append(chr(self.rng.randint(av[0], av[1])))
            elif name == "CATEGORY":
                candidates.append(self.rng.choice(_CATEGORY_SAMPLES.get(str(av), "a")))
        return self.rng.choice(candidates)


def _in_class(items: list[tuple[Any, Any]], char: str) -> bool:
    """Whether ``char`` is one of a class's items (literals, ranges, categories)."""
    code = ord(char)
    for op, av in items:
        name = str(op)
        if (name == "LITERAL" and av == code) or (name == "RANGE" and av[0] <= code <= av[1]):
            return True
        if name == "CATEGORY" and re.fullmatch(_CATEGORY_CLASSES.get(str(av), "[^\\s\\S]"), char):
            return True
    return False
