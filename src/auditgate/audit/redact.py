"""Secret and personal-data detectors, and the :class:`Redactor` that applies them to text.

Built-in detectors (``DYN_AUDIT_REDACT``, DESIGN §2):

- ``email``: e-mail addresses;
- ``api_key``: ``Bearer`` tokens and provider API keys (OpenAI/Anthropic ``sk-…``, GitHub
  ``ghp_…``/``github_pat_…``, AWS ``AKIA…``, Google ``AIza…``, Slack ``xox?-…``, Hugging Face
  ``hf_…``, GitLab ``glpat-…``, Groq ``gsk_…``, NVIDIA ``nvapi-…``);
- ``card``: 13 to 19 digit card numbers (spaces or dashes allowed between digits) that start like
  a card of the major networks (2-6) and pass the Luhn check — so timestamps and ids rarely match;
- ``ip``: IPv4 and IPv6 addresses (IPv6 candidates are checked with :mod:`ipaddress`).

Custom detectors come from a file (``DYN_AUDIT_REDACT_PATTERNS_FILE``): one ``KIND REGEX`` per
line, ``KIND`` a lower-case name (``[a-z][a-z0-9_]*``), then whitespace, then a Python regular
expression (the rest of the line); blank lines and lines starting with ``#`` are ignored.

Every match is replaced by ``[REDACTED:<kind>]``.  Speed (this runs on every record): patterns
are compiled once, a detector with literal hints is skipped unless one hint occurs in the text (a
C-speed substring test), and a text nothing matched is returned as the same object, uncopied.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

from auditgate.errors import ConfigError

_KIND: Final = re.compile(r"[a-z][a-z0-9_]*")


def replacement(kind: str) -> str:
    """The text that replaces a match of ``kind``."""
    return f"[REDACTED:{kind}]"


@dataclasses.dataclass(frozen=True, slots=True)
class Detector:
    """One pattern of one kind."""

    kind: str
    """Name in ``[REDACTED:<kind>]`` and in the ``kind`` label of the redaction counter."""
    pattern: re.Pattern[str]
    """What to look for."""
    hints: tuple[str, ...] = ()
    """Substrings one of which every match contains; empty: always search."""
    valid: Callable[[str], bool] | None = None
    """Second check of a match (Luhn, address syntax); a match it rejects is kept."""


def luhn(digits: str) -> bool:
    """Whether the digit string passes the Luhn checksum."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card(match: str) -> bool:
    digits = match.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn(digits)


def _ipv4(match: str) -> bool:
    return all(int(octet) <= 255 for octet in match.split("."))


def _ipv6(match: str) -> bool:
    if not any(c not in ":." for c in match):
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


_KEY_HINTS: Final = (
    "sk-",
    "earer",
    "EARER",
    "gh",
    "github_pat_",
    "AKIA",
    "AIza",
    "xox",
    "hf_",
    "glpat-",
    "gsk_",
    "nvapi-",
)

BUILTIN: Final[dict[str, tuple[Detector, ...]]] = {
    "email": (
        Detector(
            "email",
            re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
            ("@",),
        ),
    ),
    "api_key": (
        Detector(
            "api_key",
            re.compile(
                r"(?i:\bbearer)\s+[A-Za-z0-9._~+/=-]{8,}"
                r"|\bsk-[A-Za-z0-9_-]{16,}"
                r"|\bgh[opusr]_[A-Za-z0-9]{30,}"
                r"|\bgithub_pat_[A-Za-z0-9_]{30,}"
                r"|\bAKIA[0-9A-Z]{16}\b"
                r"|\bAIza[0-9A-Za-z_-]{35}"
                r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
                r"|\bhf_[A-Za-z0-9]{30,}"
                r"|\bglpat-[A-Za-z0-9_-]{20,}"
                r"|\bgsk_[A-Za-z0-9]{40,}"
                r"|\bnvapi-[A-Za-z0-9_-]{30,}"
            ),
            _KEY_HINTS,
        ),
    ),
    "card": (
        Detector("card", re.compile(r"[2-6](?<![\d-][2-6])(?:[ -]?\d){12,18}(?!\d)"), (), _card),
    ),
    "ip": (
        # Patterns start with a plain character class (lookbehinds come after it): Python's re
        # then skips ahead to candidate characters instead of trying every position.
        # Four dotted numbers, octets checked after the match.
        Detector(
            "ip", re.compile(r"\d(?<![\d.]\d)\d{0,2}(?:\.\d{1,3}){3}(?!\.?\d)"), (".",), _ipv4
        ),
        Detector(
            "ip",
            re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"),
            ("::", ":"),
            _ipv6,
        ),
    ),
}
"""The built-in detectors by ``DYN_AUDIT_REDACT`` name."""


def builtin(names: Iterable[str]) -> tuple[Detector, ...]:
    """The built-in detectors for these names (see :data:`BUILTIN`)."""
    return tuple(d for name in names for d in BUILTIN[name])


def load_patterns(path: str) -> tuple[Detector, ...]:
    """Custom detectors from a ``KIND REGEX`` file (module docstring); ConfigError if bad."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"DYN_AUDIT_REDACT_PATTERNS_FILE={path!r}: cannot read: {exc}") from exc
    detectors: list[Detector] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        kind, _, regex = stripped.partition(" ")
        regex = regex.strip()
        where = f"DYN_AUDIT_REDACT_PATTERNS_FILE {path}:{number}"
        if not _KIND.fullmatch(kind) or not regex:
            raise ConfigError(f"{where}: expected 'KIND REGEX' with KIND like [a-z][a-z0-9_]*")
        try:
            pattern = re.compile(regex)
        except re.error as exc:
            raise ConfigError(f"{where}: bad regular expression: {exc}") from None
        if pattern.search("") is not None:
            raise ConfigError(f"{where}: the expression matches the empty string")
        detectors.append(Detector(kind, pattern))
    return tuple(detectors)


class Redactor:
    """Replaces what its detectors find in a text; calls ``count(kind)`` per replacement."""

    __slots__ = ("_count", "_detectors")

    def __init__(self, detectors: Sequence[Detector], count: Callable[[str], None]) -> None:
        self._detectors = tuple(detectors)
        self._count = count

    def __bool__(self) -> bool:
        return bool(self._detectors)

    def text(self, value: str) -> str:
        """``value`` with every match replaced; the same object when nothing matched."""
        out = value
        for detector in self._detectors:
            hints = detector.hints
            if hints and not any(hint in out for hint in hints):
                continue
            if detector.pattern.search(out) is None:
                continue
            new = detector.pattern.sub(self._replacer(detector), out)
            if new != out:  # every match rejected by ``valid``: keep the uncopied original
                out = new
        return out

    def _replacer(self, detector: Detector) -> Callable[[re.Match[str]], str]:
        text = replacement(detector.kind)
        valid, count, kind = detector.valid, self._count, detector.kind

        def replace(match: re.Match[str]) -> str:
            found = match.group()
            if valid is not None and not valid(found):
                return found
            count(kind)
            return text

        return replace
