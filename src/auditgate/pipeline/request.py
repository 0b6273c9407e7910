"""Parsing and validating a chat completion request, for every transport.

The body stays the client's JSON (a dict, unknown fields kept and forwarded); validation checks
the fields the gateway reads or that an engine would choke on, and turns every problem into an
OpenAI-style 400 naming the parameter.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from typing import Any, Final

import msgspec

from auditgate.errors import InvalidRequestError

METADATA_MAX_PAIRS: Final = 16
METADATA_MAX_KEY: Final = 64
METADATA_MAX_VALUE: Final = 512
_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class Message(msgspec.Struct):
    role: str
    content: str | list[Any] | None = None
    """Text, or an array of content parts (checked by the engine), or absent/null."""


class ChatParams(msgspec.Struct, kw_only=True):
    """The fields of a chat request the gateway reads; the rest passes through untouched."""

    model: str
    messages: list[Message]
    stream: bool | None = None
    store: bool | None = None
    n: int | None = None
    stream_options: StreamOptions | None = None
    metadata: dict[str, str] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None


_params_decoder: Final = msgspec.json.Decoder()

NESTING_HEADROOM: Final = 64
"""Recursion levels a request body must leave unused.  msgspec's nesting limit is what is left
of the interpreter's recursion limit where it runs (on Python 3.11: ~985 levels here); the
body's record nests a level deeper and is encoded and decoded again on deeper stacks (the
durable spool's append on the request path, sink threads, the store's reads).  Without this
margin a body nested ~980 levels passed here and failed with a 500 when its record was
encoded.  (On 3.12+ msgspec counts C recursion, which Python frames do not use, so the sites
differ by little and this margin only lowers the limit.)"""


def parse_body(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be one JSON object, nested at most ~900 levels."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit - NESTING_HEADROOM)  # 45 ns; no other thread runs meanwhile
    try:
        body = _params_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        text = str(exc)
        if "UTF-8" in text:
            raise InvalidRequestError(
                "The request body is not valid UTF-8.", code="invalid_encoding"
            ) from None
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request: {text}.", code="invalid_json"
        ) from None
    except RecursionError:
        raise InvalidRequestError(
            "We could not parse the JSON body of your request: it is nested too deeply.",
            code="invalid_json",
        ) from None
    finally:
        sys.setrecursionlimit(limit)
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    return body


def validate_chat(body: dict[str, Any]) -> ChatParams:
    """The one validation of a chat request body, for every transport (HTTP, gRPC, the
    middleware's tap): check the types and ranges of the fields we read and the rules between
    them; raise a 400 naming the parameter."""
    try:
        params = msgspec.convert(body, ChatParams)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    if not params.messages:
        raise InvalidRequestError(
            "'messages' must contain at least one message.", param="messages", code="invalid_value"
        )
    if params.n is not None and not 1 <= params.n <= 128:
        raise InvalidRequestError(
            f"{params.n} is not a valid value for 'n': expected 1 to 128.",
            param="n",
            code="invalid_value",
        )
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(params, name)
        if value is not None and value < 1:
            raise InvalidRequestError(
                f"{value} is not a valid value for '{name}': expected at least 1.",
                param=name,
                code="invalid_value",
            )
    if params.metadata is not None:
        validate_metadata(params.metadata)
    if params.stream_options is not None and not params.stream:
        # OpenAI refuses it too.
        raise InvalidRequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )
    return params


def validate_metadata(metadata: dict[str, str]) -> None:
    """OpenAI's metadata limits: 16 pairs, keys up to 64 chars, values up to 512."""
    if len(metadata) > METADATA_MAX_PAIRS:
        raise InvalidRequestError(
            f"Invalid 'metadata': too many properties. Expected at most {METADATA_MAX_PAIRS}, "
            f"but got {len(metadata)}.",
            param="metadata",
            code="invalid_value",
        )
    for key, value in metadata.items():
        if len(key) > METADATA_MAX_KEY:
            raise InvalidRequestError(
                f"Invalid 'metadata': key {key[:80]!r} is longer than "
                f"{METADATA_MAX_KEY} characters.",
                param="metadata",
                code="invalid_value",
            )
        if len(value) > METADATA_MAX_VALUE:
            raise InvalidRequestError(
                f"Invalid 'metadata': the value of {key!r} is longer than "
                f"{METADATA_MAX_VALUE} characters.",
                param="metadata",
                code="invalid_value",
            )


def validate_client_request_id(value: str) -> str:
    """A client's own ``X-Request-Id``: at most 128 characters of ``[A-Za-z0-9._:-]``."""
    if not _CLIENT_ID.fullmatch(value):
        raise InvalidRequestError(
            "Invalid 'X-Request-Id' header: expected 1 to 128 characters of A-Z a-z 0-9 . _ : -",
            param="X-Request-Id",
            code="invalid_value",
        )
    return value


class _RandomPool:
    """Cryptographically random bytes from ``os.urandom``, drawn 4 KiB at a time.

    Why a pool: ``os.urandom`` releases the GIL around its ``getrandom`` syscall, and a request
    that releases the GIL on the event loop hands it to whichever thread waits for it (a sink's
    writer thread) and then waits up to a switch interval to get it back.  Once per request, that
    hand-off showed as the gateway's hottest frame under py-spy.  One syscall per 409 IDs keeps
    the IDs unguessable (a client sees its own) without the hand-off.  Thread-safe; a forked
    child starts with an empty pool, so parent and child never share bytes.
    """

    REFILL = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._pos = 0
        os.register_at_fork(after_in_child=self._forget)

    def take(self, size: int) -> bytes:
        with self._lock:
            pos = self._pos
            if pos + size > len(self._buffer):
                self._buffer, pos = os.urandom(max(self.REFILL, size)), 0
            self._pos = pos + size
            return self._buffer[pos : pos + size]

    def _forget(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._buffer, self._pos = b"", 0


_RANDOM = _RandomPool()


def new_request_id() -> str:
    """A time-ordered UUIDv7 (RFC 9562): 48-bit Unix ms, version 7, 74 random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(_RANDOM.take(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= (rand >> 62 & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def validation_error(text: str) -> InvalidRequestError:
    """The 400 for a msgspec validation message, naming the parameter it is about."""
    # msgspec says e.g. "Expected `int`, got `str` - at `$.n`" or
    # "Object missing required field `messages`".
    param = None
    message, sep, where = text.partition(" - at `$")
    if sep:
        path = where.rstrip("`")
        # "$.messages[0].role" -> "messages[0].role"; dict keys show as "[...]": dropped.
        param = path.replace("[...]", "").lstrip(".") or None
        message = f"Invalid type for '{param}': {message[0].lower()}{message[1:]}."
    elif "missing required field" in text:
        param = text.rsplit("`", 2)[-2] if text.count("`") >= 2 else None
        message = f"Missing required parameter: '{param}'."
        return InvalidRequestError(message, param=param, code="missing_required_parameter")
    return InvalidRequestError(message, param=param, code="invalid_type")
