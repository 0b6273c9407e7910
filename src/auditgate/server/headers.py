"""Request header capture (``DYN_AUDIT_HTTP_HEADER_CAPTURE_LIST``).

Only allow-listed headers are copied into the record; a credential-bearing header is always
stored as ``<redacted>`` even when listed, so no sink ever sees a secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from auditgate.server.wire import Scope

REDACTED: Final = "<redacted>"
_CREDENTIAL_NAMES: Final = frozenset(
    {"authorization", "cookie", "x-api-key", "proxy-authorization"}
)
_CREDENTIAL_PARTS: Final = ("token", "secret", "key", "password")


def is_credential(name: str) -> bool:
    """True for headers that may carry a secret (by name, case-insensitive)."""
    lowered = name.lower()
    return lowered in _CREDENTIAL_NAMES or any(part in lowered for part in _CREDENTIAL_PARTS)


class HeaderCapture:
    """Copies allow-listed request headers, redacting credentials."""

    def __init__(self, allow: Sequence[str]) -> None:
        self._allow = {name.lower().encode("latin-1"): name.lower() for name in allow}

    @classmethod
    def build(cls, allow: Sequence[str]) -> HeaderCapture | None:
        return cls(allow) if allow else None

    def __call__(self, scope: Scope) -> dict[str, str] | None:
        captured: dict[str, str] = {}
        for key, value in scope["headers"]:
            name = self._allow.get(bytes(key).lower())
            if name is None:
                continue
            text = REDACTED if is_credential(name) else bytes(value).decode("latin-1")
            # Repeated headers are joined as HTTP allows (RFC 9110 §5.3).
            captured[name] = f"{captured[name]}, {text}" if name in captured else text
        return captured or None
