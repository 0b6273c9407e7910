"""Redaction detectors and the redaction processor."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from auditgate.audit.processors import RedactProcessor
from auditgate.audit.redact import (
    GATEWAY_KEY,
    Detector,
    Redactor,
    builtin,
    load_patterns,
    luhn,
    with_gateway_keys,
)
from auditgate.audit.redact import _card as _card_check
from auditgate.audit.redact import _ipv4 as _ipv4_check
from auditgate.audit.redact import _ipv6 as _ipv6_check
from auditgate.auth.keys import generate_key
from auditgate.errors import ConfigError
from tests.store.records import make_record

ALL = ("email", "api_key", "card", "ip")
GW_KEY = "ag-" + "Zq9_-" * 8 + "abc"  # the shape of auditgate's own keys: "ag-" + 43 characters


def redact(text: str, names: tuple[str, ...] = ALL) -> tuple[str, dict[str, int]]:
    counts: Counter[str] = Counter()
    out = Redactor(builtin(names), lambda kind: counts.update([kind])).text(text)
    return out, dict(counts)


def _count(counts: Counter[str]) -> None:
    raise AssertionError(counts)


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("mail alice.b+x@example.co.uk now", "mail [REDACTED:email] now", "email"),
        ("key sk-proj-AbCdEf0123456789xyz!", "key [REDACTED:api_key]!", "api_key"),
        ("Authorization: Bearer abc.DEF-123_xyz", "Authorization: [REDACTED:api_key]", "api_key"),
        ("aws AKIAABCDEFGHIJKLMNOP", "aws [REDACTED:api_key]", "api_key"),
        ("gh ghp_" + "a" * 36, "gh [REDACTED:api_key]", "api_key"),
        (f"use {GW_KEY}, thanks", "use [REDACTED:api_key], thanks", "api_key"),
        (f"x-auth={GW_KEY}-suffix", "x-auth=[REDACTED:api_key]-suffix", "api_key"),
        ("card 4111 1111 1111 1111.", "card [REDACTED:card].", "card"),
        ("card 5500-0000-0000-0004", "card [REDACTED:card]", "card"),
        ("from 192.168.1.20:80", "from [REDACTED:ip]:80", "ip"),
        ("v6 2001:db8::ff00:42:8329 here", "v6 [REDACTED:ip] here", "ip"),
        ("loopback ::1", "loopback [REDACTED:ip]", "ip"),
    ],
)
def test_detects(text: str, expected: str, kind: str) -> None:
    """Each built-in detector replaces what it finds with its marker and counts it."""
    assert (expected, {kind: 1}) == redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112 failed",  # fails Luhn
        "timestamp 1758740068123 ms",  # 13 digits, Luhn or not: starts with 1
        "at 12:30:45 on std::vector and a::b::c",
        "version 1.2.3.4.5 and 300.1.1.1",
        "task-abcdefghijklmnopqrstuvwxyz and the bearer of news",
        "ag-grid-community and tag-" + "x" * 43 + " and ag-" + "y" * 42,
        "no secrets here @ all",
    ],
)
def test_leaves_lookalikes(text: str) -> None:
    """Text that only looks like a secret is returned as the same object, uncounted."""
    out, counts = redact(text)
    assert (out is text, counts) == (True, {})


def test_luhn() -> None:
    """The Luhn check accepts valid numbers only."""
    assert [luhn("4111111111111111"), luhn("4111111111111112"), luhn("0")] == [True, False, True]


def test_only_chosen_detectors() -> None:
    """Detectors not chosen in DYN_AUDIT_REDACT leave their kind alone."""
    assert redact("a@b.io 10.0.0.1", ("ip",)) == ("a@b.io [REDACTED:ip]", {"ip": 1})


def test_custom_patterns(tmp_path: Path) -> None:
    """A patterns file adds detectors of its own kinds; a bad line is a startup error."""
    good = tmp_path / "patterns"
    good.write_text("# employee ids\nemployee EMP-\\d{6}\n\nproject (?i)project\\s+falcon\n")
    counts: Counter[str] = Counter()
    out = Redactor(load_patterns(str(good)), lambda kind: counts.update([kind])).text(
        "EMP-123456 on Project Falcon"
    )
    assert (
        out,
        dict(counts),
    ) == ("[REDACTED:employee] on [REDACTED:project]", {"employee": 1, "project": 1})
    bad = tmp_path / "bad"
    bad.write_text("employee (unclosed\n")
    with pytest.raises(ConfigError, match=r"bad:1: bad regular expression"):
        load_patterns(str(bad))


def test_processor_covers_messages_tools_and_response() -> None:
    """Message strings and text parts, tool-call arguments and the response are redacted;
    the client's own objects are not mutated."""
    record = make_record(1)
    request = {
        "model": "mock",
        "messages": [
            {"role": "user", "content": "I am bob@example.com"},
            {"role": "user", "content": [{"type": "text", "text": "card 4111111111111111"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"ip": "10.1.2.3"}'},
                    }
                ],
            },
        ],
    }
    response = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "sk-" + "x" * 20}}]
    }
    original = repr((request, response))
    record.request, record.response = request, response
    counts: Counter[str] = Counter()
    out = RedactProcessor(Redactor(builtin(ALL), lambda kind: counts.update([kind])))(record)
    assert isinstance(out.request, dict) and isinstance(out.response, dict)
    messages = out.request["messages"]
    assert [
        "I am [REDACTED:email]",
        [{"type": "text", "text": "card [REDACTED:card]"}],
        '{"ip": "[REDACTED:ip]"}',
        "[REDACTED:api_key]",
        {"email": 1, "card": 1, "ip": 1, "api_key": 1},
        original,
    ] == [
        messages[0]["content"],
        messages[1]["content"],
        messages[2]["tool_calls"][0]["function"]["arguments"],
        out.response["choices"][0]["message"]["content"],
        dict(counts),
        repr((request, response)),
    ]


def test_processor_copies_nothing_when_clean() -> None:
    """A record with nothing to redact keeps its very request and response objects."""
    record = make_record(2)
    request, response = record.request, record.response
    out = RedactProcessor(Redactor(builtin(ALL), _count))(record)
    assert (out.request is request, out.response is response) == (True, True)


def test_bearer_in_any_case() -> None:
    """A bearer token is found whatever the case of the word ``bearer``."""
    assert redact("auth: BeArEr abcdefgh12345") == ("auth: [REDACTED:api_key]", {"api_key": 1})


def test_narrow_keeps_only_detectors_that_match() -> None:
    """Narrowing a clean text leaves no detector; a text with an e-mail keeps just that one."""
    redactor = Redactor(builtin(ALL), _count)
    clean = redactor.narrow("A plain answer: 3 apples, well-known_names and the bearer of news.")
    counts: Counter[str] = Counter()
    mail = Redactor(builtin(ALL), lambda kind: counts.update([kind])).narrow("to a@b.io\n10.0")
    assert mail is not None
    assert (clean, mail.text("10.0.0.1 a@b.io"), dict(counts)) == (
        None,
        "10.0.0.1 [REDACTED:email]",
        {"email": 1},
    )


def test_processor_applies_anchored_custom_patterns_per_text(tmp_path: Path) -> None:
    """A custom pattern anchored at the end of a text matches each message on its own,
    not only the last of the record's texts."""
    patterns = tmp_path / "patterns"
    patterns.write_text("tail code-\\d+$\n")
    record = make_record(3)
    record.request = {
        "messages": [
            {"role": "user", "content": "ends with code-42"},
            {"role": "user", "content": "and this one too code-7"},
        ]
    }
    counts: Counter[str] = Counter()
    detectors = builtin(ALL) + load_patterns(str(patterns))
    redactor = Redactor(detectors, lambda kind: counts.update([kind]))
    out = RedactProcessor(redactor)(record)
    assert isinstance(out.request, dict)
    assert (
        [m["content"] for m in out.request["messages"]],
        dict(counts),
    ) == (["ends with [REDACTED:tail]", "and this one too [REDACTED:tail]"], {"tail": 2})


# The detectors as first written: one plain pattern per kind, searched in every text.  The
# fast ones (hints, gates, patterns led by a character class) must replace exactly the same.
_REFERENCE = (
    ("email", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", None),
    (
        "api_key",
        r"(?i:\bbearer)\s+[A-Za-z0-9._~+/=-]{8,}|\bsk-[A-Za-z0-9_-]{16,}"
        r"|\bgh[opusr]_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{30,}|\bAKIA[0-9A-Z]{16}\b"
        r"|\bAIza[0-9A-Za-z_-]{35}|\bxox[abprs]-[A-Za-z0-9-]{10,}|\bhf_[A-Za-z0-9]{30,}"
        r"|\bglpat-[A-Za-z0-9_-]{20,}|\bgsk_[A-Za-z0-9]{40,}|\bnvapi-[A-Za-z0-9_-]{30,}"
        r"|(?<![A-Za-z0-9])ag-[A-Za-z0-9_-]{43}",
        None,
    ),
    ("card", r"[2-6](?<![\d-][2-6])(?:[ -]?\d){12,18}(?!\d)", "card"),
    ("ip", r"\d(?<![\d.]\d)\d{0,2}(?:\.\d{1,3}){3}(?!\.?\d)", "ipv4"),
    ("ip", r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])", "ipv6"),
)

_CORPUS = (
    "plain words, nothing here",
    "Mail me: Alice.B+tag@Mail.Example.COM or bob_9@x-y.io; not a@b nor @home",
    "AUTHORIZATION: BEARER abc.DEF_123-xyz= and bearer of bad news",
    "keys sk-" + "A" * 20 + " SK-" + "b" * 20 + " xsk-" + "c" * 20 + " ghp_" + "d" * 36,
    "github_pat_" + "e" * 40 + " xoxb-1234567890ab glpat-" + "f" * 20 + " gsk_" + "g" * 40,
    "hf_" + "h" * 34 + " nvapi-" + "i" * 32 + " AKIA" + "J" * 16 + " AIza" + "k" * 35,
    "cards 4111 1111 1111 1111, 5500-0000-0000-0004, 4111111111111112, 34343434343434 4",
    "ids 1758740068123 and 2024-01-31 12:30:45 and 3.14 and v1.2.3.4.5 and 300.1.1.1",
    "hosts 10.0.0.1, 192.168.1.20:80, 1.2.3 and 255.255.255.255.",
    "v6 2001:db8::ff00:42:8329, ::1, fe80::1, ::ffff:10.0.0.1, a::b::c, std::vector, 12:34:56",
    'tool {"ip": "10.1.2.3", "mail": "x@y.org", "n": [1, 2, 3]}',
    "naïve café — Grüße 世界 🚀 with 4111 1111 1111 1111 and ünï@example.com",
    "only ::1 here",
    "thirteen digits 4222222222222 alone",
    "spaced 4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
    "x@y.org",
    f"gateway {GW_KEY} tag-{GW_KEY[3:]} _{GW_KEY}x AG-{GW_KEY[3:]} ag-{GW_KEY[4:]}",
)


def _slow(names: tuple[str, ...] = ALL) -> Redactor:
    checks = {"card": _card_check, "ipv4": _ipv4_check, "ipv6": _ipv6_check}
    detectors = [
        Detector(kind, re.compile(regex), (), checks[check] if check else None)
        for kind, regex, check in _REFERENCE
        if kind in names
    ]
    return Redactor(detectors, lambda kind: None)


@pytest.mark.parametrize("text", _CORPUS)
def test_fast_detectors_replace_what_plain_patterns_do(text: str) -> None:
    """Hints, gates and the rewritten patterns change nothing: each text comes out as the
    plain, always-searched patterns make it."""
    assert _slow().text(text) == Redactor(builtin(ALL), lambda kind: None).text(text)


def test_processor_matches_plain_patterns_over_a_record() -> None:
    """Narrowing once per record finds every secret the plain patterns find, text by text."""
    record = make_record(4)
    record.request = {"messages": [{"role": "user", "content": t} for t in _CORPUS]}
    out = RedactProcessor(Redactor(builtin(ALL), lambda kind: None))(record)
    assert isinstance(out.request, dict)
    slow = _slow()
    assert [slow.text(t) for t in _CORPUS] == [m["content"] for m in out.request["messages"]]


def test_every_generated_key_has_the_gateway_shape() -> None:
    """Keys ``auditgate keys add`` makes are redacted by shape alone."""
    keys = [generate_key() for _ in range(200)]
    out = Redactor((GATEWAY_KEY,), lambda kind: None).text(" ".join(keys))
    assert out == " ".join(["[REDACTED:api_key]"] * 200)


def test_gateway_keys_join_any_redaction() -> None:
    """Any chosen detector brings the gateway-key detector along (once); none brings none."""
    email = builtin(("email",))
    assert (
        with_gateway_keys(email),
        with_gateway_keys(builtin(ALL)),
        with_gateway_keys(()),
    ) == (
        (*email, GATEWAY_KEY),
        builtin(ALL),
        (),
    )


def test_narrow_redacts_the_request_key_first() -> None:
    """The request's own key of any shape is one ``api_key`` replacement wherever it occurs,
    before detectors that would match inside it; absent, it changes nothing."""
    key = "team-key-sk-" + "x" * 20
    counts: Counter[str] = Counter()
    redactor = Redactor(builtin(("email",)), lambda kind: counts.update([kind]))
    text = f"mine is {key} and a@b.io; {key}!"
    narrowed = redactor.narrow(text, (key,))
    assert narrowed is not None
    assert (narrowed.text(text), dict(counts), redactor.narrow("clean", (key,))) == (
        "mine is [REDACTED:api_key] and [REDACTED:email]; [REDACTED:api_key]!",
        {"api_key": 2, "email": 1},
        None,
    )


def test_processor_redacts_header_values() -> None:
    """Captured header values go through the detectors and the request's own key; with
    ``bodies=False`` the messages are left as sent."""
    key = "hand-made-key-0001"
    record = make_record(5)
    record.request = {"messages": [{"role": "user", "content": f"{GW_KEY} {key}"}]}
    record.http_request_headers = {"x-auth": GW_KEY, "x-other": f"k={key}", "x-team": "blue"}
    request = record.request
    out = RedactProcessor(Redactor((GATEWAY_KEY,), _count_nothing), bodies=False)(record, (key,))
    assert (out.http_request_headers, out.request is request) == (
        {"x-auth": "[REDACTED:api_key]", "x-other": "k=[REDACTED:api_key]", "x-team": "blue"},
        True,
    )


def _count_nothing(kind: str) -> None:
    pass
