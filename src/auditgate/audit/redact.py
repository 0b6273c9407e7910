"""Secret and personal-data detectors, and the :class:`Redactor` that applies them to text.

Built-in detectors (``DYN_AUDIT_REDACT``, DESIGN §2):

- ``email``: e-mail addresses;
- ``api_key``: ``Bearer`` tokens, provider API keys (OpenAI/Anthropic ``sk-…``, GitHub
  ``ghp_…``/``github_pat_…``, AWS ``AKIA…``, Google ``AIza…``, Slack ``xox?-…``, Hugging Face
  ``hf_…``, GitLab ``glpat-…``, Groq ``gsk_…``, NVIDIA ``nvapi-…``) and the gateway's own keys
  (:data:`GATEWAY_KEY`, also on whenever any detector is);
- ``card``: 13 to 19 digit card numbers (spaces or dashes allowed between digits) that start like
  a card of the major networks (2-6) and pass the Luhn check — so timestamps and ids rarely match;
- ``ip``: IPv4 and IPv6 addresses (IPv6 candidates are checked with :mod:`ipaddress`).

Custom detectors come from a file (``DYN_AUDIT_REDACT_PATTERNS_FILE``): one ``KIND REGEX`` per
line, ``KIND`` a lower-case name (``[a-z][a-z0-9_]*``), then whitespace, then a Python regular
expression (the rest of the line); blank lines and lines starting with ``#`` are ignored.

Every match is replaced by ``[REDACTED:<kind>]``.

The gateway's own keys.  The gateway holds only hashes of its keys, so it cannot search a text
for "any configured key".  Two things find them instead: their shape (:data:`GATEWAY_KEY`:
``ag-`` and 43 URL-safe characters, as ``auditgate keys add`` makes every key), and the exact
key the request authenticated with, which the transport hands to :meth:`Redactor.narrow` (see
``keys``) so that a key of any shape — one hashed by hand into an old keys file — is found
wherever the client repeats its own key.  A hand-made key of *another* tenant that a client
pastes is beyond both; ``auditgate keys add`` never makes one.

Speed (this runs on every record, and most texts hold nothing to redact): a built-in detector
carries *hints*, strings one of which occurs in every text it matches.  :meth:`Redactor.narrow`
finds whose hints occur in a text with a few C-speed passes: one ``bytes.translate`` over the
UTF-8 form keeps only the one-character hints (``@ : - _ A`` and digits), and the lower-cased
text is searched for the longer ones (``bearer``).  A text without hints is never searched by a
regular expression at all (``re`` costs 4-6 ns a character for a pattern that starts with a
character class; these passes well under one).  The processor narrows once per record, over all
its texts joined.  A text nothing matched is returned as the same object, uncopied.
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
    """ASCII strings one of which occurs in every text the pattern matches in: a one-character
    hint as is, a longer one in the lower-cased text (write it in lower case).
    Empty: always search."""
    valid: Callable[[str], bool] | None = None
    """Second check of a match (Luhn, address syntax); a match it rejects is kept."""
    gates: tuple[Callable[[bytes], object], ...] = ()
    """Tried once a hint was found, on the *folded* text (UTF-8, every ASCII digit written as
    ``0``, ASCII letters in lower case): one of them returns a true value wherever ``pattern``
    matches.  Mostly the ``search`` of a byte pattern that starts with a literal, which ``re``
    skips ahead to at memchr-like speed.  Empty: none."""


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


_DIGITS: Final = tuple("0123456789")
# Every ASCII digit written as 0, for the gates: one literal stands for any digit.
_FOLD: Final = bytes.maketrans(
    b"123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"000000000abcdefghijklmnopqrstuvwxyz"
)
_CARD_GATE: Final = re.compile(rb"0(?:[ -]?0){12}")


def _card_gate(folded: bytes) -> bool:
    # Thirteen digits at least, counted at C speed before looking for them in a row.
    return folded.count(b"0") >= 13 and _CARD_GATE.search(folded) is not None


# Patterns start with a plain character class or a literal (lookbehinds come after it): Python's
# re then skips ahead to candidate characters instead of trying every position, and a lookbehind
# right after the first character rejects a start inside a run at once.  Digits are ASCII
# ([0-9], not \d): the Luhn and octet checks read ASCII digits, and hints and gates are ASCII.
GATEWAY_KEY: Final = Detector(
    "api_key",
    # auditgate.auth.keys.generate_key: "ag-" + secrets.token_urlsafe(32), 43 characters.  No
    # look-ahead: a key glued to the text after it is still a key.  The look-behind keeps words
    # ending in "ag" ("tag-", "drag-") out; 43 characters of the alphabet after "ag-" are rare
    # in prose and code (a hyphenated name that long is redacted, a key stored never is).
    re.compile(r"a(?<![A-Za-z0-9]a)g-[A-Za-z0-9_-]{43}"),
    ("-",),
    gates=(re.compile(rb"-(?<=ag-)[a-z0-9_-]{43}").search,),
)
"""The gateway's own API keys, by shape (``api_key`` kind)."""

BUILTIN: Final[dict[str, tuple[Detector, ...]]] = {
    "email": (
        Detector(
            "email",
            re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
            ("@",),
            gates=(re.compile(rb"@(?<=[a-z0-9._%+-]@)[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]").search,),
        ),
    ),
    "api_key": (
        # One kind, three detectors, so each has hints that are cheap to look for.  Bearer
        # first: a bearer token that is itself a provider key is one replacement.
        Detector(
            "api_key",
            re.compile(r"[Bb](?<![\w][Bb])(?i:earer)\s+[A-Za-z0-9._~+/=-]{8,}"),
            ("bearer",),
        ),
        Detector(
            "api_key",
            re.compile(
                r"[sghxn](?<![\w][sghxn])"
                r"(?:k-[A-Za-z0-9_-]{16,}"
                r"|h[opusr]_[A-Za-z0-9]{30,}"
                r"|ithub_pat_[A-Za-z0-9_]{30,}"
                r"|ox[abprs]-[A-Za-z0-9-]{10,}"
                r"|f_[A-Za-z0-9]{30,}"
                r"|lpat-[A-Za-z0-9_-]{20,}"
                r"|sk_[A-Za-z0-9]{40,}"
                r"|vapi-[A-Za-z0-9_-]{30,})"
            ),
            ("-", "_"),
            gates=(
                re.compile(rb"-(?:(?<=sk-)|(?<=xox[abprs]-)|(?<=glpat-)|(?<=nvapi-))").search,
                re.compile(rb"_(?:(?<=gh[opusr]_)|(?<=hf_)|(?<=gsk_)|(?<=github_))").search,
            ),
        ),
        Detector(
            "api_key",
            re.compile(r"A(?<![\w]A)(?:KIA[0-9A-Z]{16}\b|Iza[0-9A-Za-z_-]{35})"),
            # "A", not "akia"/"aiza": a search for a longer hint costs ~0.4 us a KiB, and a
            # pattern that starts with a literal is about as cheap on texts with capital A's.
            ("A",),
        ),
        GATEWAY_KEY,
    ),
    "card": (
        Detector(
            "card",
            re.compile(r"[2-6](?<![0-9-][2-6])(?:[ -]?[0-9]){12,18}(?![0-9])"),
            _DIGITS,
            _card,
            gates=(_card_gate,),
        ),
    ),
    "ip": (
        # Four dotted numbers, octets checked after the match.
        Detector(
            "ip",
            re.compile(r"[0-9](?<![0-9.][0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?!\.?[0-9])"),
            _DIGITS,
            _ipv4,
            gates=(re.compile(rb"00{0,2}\.0{1,3}\.0{1,3}\.0").search,),
        ),
        # Two to seven colon-ended hex groups (a group may be empty: "::1") and a last group,
        # written so that it starts with a character class: the first character is a colon
        # (an empty first group) or the first of one to four hex digits.
        Detector(
            "ip",
            re.compile(
                r"[0-9A-Fa-f:](?<![\w:.][0-9A-Fa-f:])"
                r"(?:(?<=:)|(?<=[0-9A-Fa-f])[0-9A-Fa-f]{0,3}:)"
                r"(?:[0-9A-Fa-f]{0,4}:){1,6}[0-9A-Fa-f]{0,4}(?![\w:])"
            ),
            (":",),
            _ipv6,
            gates=(re.compile(rb":[0-9a-f]{0,4}:").search,),
        ),
    ),
}
"""The built-in detectors by ``DYN_AUDIT_REDACT`` name."""


def builtin(names: Iterable[str]) -> tuple[Detector, ...]:
    """The built-in detectors for these names (see :data:`BUILTIN`)."""
    return tuple(d for name in names for d in BUILTIN[name])


def with_gateway_keys(detectors: Sequence[Detector]) -> tuple[Detector, ...]:
    """``detectors`` plus :data:`GATEWAY_KEY` when they hold any detector but not it: once
    redaction is on at all, the gateway's own credentials are never stored."""
    if not detectors or GATEWAY_KEY in detectors:
        return tuple(detectors)
    return (*detectors, GATEWAY_KEY)


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

    __slots__ = (
        "_always",
        "_by_byte",
        "_count",
        "_delete",
        "_detectors",
        "_gated",
        "_gated_bits",
        "_long",
        "_narrowed",
        "_replacers",
    )

    def __init__(self, detectors: Sequence[Detector], count: Callable[[str], None]) -> None:
        self._detectors = tuple(detectors)
        self._count = count
        self._replacers = tuple(self._replacer(d) for d in self._detectors)
        # Bit i: detector i may match.  Single-byte hints map to the detectors they wake up;
        # every other byte is deleted by ``translate`` (C speed) before looking.
        by_byte: dict[int, int] = {}
        long: list[tuple[str, int]] = []
        for index, detector in enumerate(self._detectors):
            for hint in detector.hints:
                if not hint.isascii():
                    raise ValueError(f"detector hints must be ASCII: {hint!r}")
                if len(hint) == 1:
                    by_byte[ord(hint)] = by_byte.get(ord(hint), 0) | 1 << index
                else:
                    long.append((hint, 1 << index))
        self._by_byte = by_byte
        self._delete = bytes(b for b in range(256) if b not in by_byte)
        self._long = tuple(long)
        self._gated = tuple(
            (1 << i, d.gates) for i, d in enumerate(self._detectors) if d.hints and d.gates
        )
        self._gated_bits = sum(bit for bit, _ in self._gated)
        self._always = sum(1 << i for i, d in enumerate(self._detectors) if not d.hints)
        self._narrowed: dict[int, Redactor] = {}

    def __bool__(self) -> bool:
        return bool(self._detectors)

    def _candidates(self, value: str) -> int:
        """Bit mask of the detectors that may match in ``value`` (all those without hints)."""
        try:
            data = value.encode()
        except UnicodeEncodeError:  # a lone surrogate: bytes only to look for ASCII hints in
            data = value.encode("utf-8", "surrogatepass")
        mask = 0
        for byte in set(data.translate(None, self._delete)):
            mask |= self._by_byte[byte]
        if self._long:
            # str.lower() and ``in`` on str beat the same on bytes by 2-3x.  Lower-casing other
            # scripts never makes the ASCII letters of a hint out of nothing it should not.
            lowered = value.lower()
            for hint, bit in self._long:
                if not mask & bit and hint in lowered:
                    mask |= bit
        if mask & self._gated_bits:
            folded = data.translate(_FOLD)
            for bit, gates in self._gated:
                if mask & bit:
                    for gate in gates:
                        if gate(folded):
                            break
                    else:
                        mask &= ~bit
        return mask | self._always

    def narrow(self, text: str, keys: Sequence[str] = ()) -> Redactor | None:
        """A redactor with only the detectors that may match in ``text``, all of a record's
        texts joined by newlines: those without hints, and those whose hints occur in ``text``
        and whose pattern matches in it.  It makes the same replacements as this one in each
        of the joined texts; None when there is none (a clean record, checked once).

        ``keys``: exact strings (the API key the request authenticated with) replaced as
        ``api_key`` wherever they occur, before any detector runs — so a key is one
        replacement, whatever a detector would find inside it."""
        exact = [key for key in keys if key and key in text] if keys else None
        mask = self._candidates(text)
        if not mask and not exact:
            return None
        for index, detector in enumerate(self._detectors):
            # A hinted (built-in) pattern that matches nowhere in ``text`` matches in no part of
            # it either: its lookarounds treat the newline that joins the parts like the end of
            # a part.  Patterns without hints (custom ones, which may anchor with ``^``/``$``)
            # are kept.  Gated ones are kept too: their gate passing is a strong sign, and the
            # walk looks again text by text, where each pattern meets only its gated texts.
            hinted = detector.hints and not detector.gates
            if mask >> index & 1 and hinted and detector.pattern.search(text) is None:
                mask &= ~(1 << index)
        if exact:  # rare (a client quoting its own key): built for this record only
            found = [Detector("api_key", re.compile(re.escape(key))) for key in exact]
            kept = [d for i, d in enumerate(self._detectors) if mask >> i & 1]
            return Redactor(found + kept, self._count)
        if not mask:
            return None
        narrowed = self._narrowed.get(mask)
        if narrowed is None:  # at most one per subset of detectors, built once
            kept = [d for i, d in enumerate(self._detectors) if mask >> i & 1]
            narrowed = self._narrowed[mask] = Redactor(kept, self._count)
        return narrowed

    def text(self, value: str) -> str:
        """``value`` with every match replaced; the same object when nothing matched."""
        mask = self._candidates(value)
        if not mask:
            return value
        out = value
        for index, detector in enumerate(self._detectors):
            if not mask >> index & 1 or detector.pattern.search(out) is None:
                continue
            new = detector.pattern.sub(self._replacers[index], out)
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
