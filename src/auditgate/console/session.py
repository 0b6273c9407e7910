"""Console sessions: who is signed in, carried in one signed, HttpOnly, SameSite=Strict cookie.

Signing in trades a gateway API key (checked by the gateway's :class:`~auditgate.auth.keys.KeyRing`,
once) for a :class:`Viewer`; the cookie holds the viewer, an expiry and a random session id,
signed with HMAC-SHA256 under a secret of the console's (``AUDITGATE_UI_SECRET``, else random
per process, so a restart signs everyone out).  The key itself is never stored: not in the
cookie, not in a URL, not in the browser's storage.

Writes (metadata edit, verify run, sign-out) carry a CSRF token, an HMAC of the session id: a
page of another origin cannot read it, and the cookie is not even sent on its requests
(SameSite=Strict).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import secrets
import time
from typing import Any, Final

COOKIE: Final = "auditgate_session"
"""The session cookie's name."""
LIFETIME_S: Final = 8 * 3600
"""How long a session lasts after sign-in (a working day)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking, and what they may see."""

    name: str
    """The key's name (or ``open`` when the gateway runs without keys)."""
    tenant: str | None
    """The tenant whose records a user sees; ``None`` for an admin (or open mode)."""
    admin: bool
    """Whether they see every tenant and may edit metadata."""
    session_id: str = dataclasses.field(default="", repr=False)
    """Random id of the session: the CSRF token is derived from it."""


class Sessions:
    """Issues and checks session cookies and CSRF tokens under one secret."""

    def __init__(self, secret: bytes | None = None, *, lifetime_s: int = LIFETIME_S) -> None:
        self._secret = secret if secret else secrets.token_bytes(32)
        self.lifetime_s = lifetime_s

    def __repr__(self) -> str:
        return f"Sessions(lifetime_s={self.lifetime_s})"

    def issue(self, viewer: Viewer, *, now: float | None = None) -> str:
        """A cookie value for ``viewer`` (a new session id), valid for :attr:`lifetime_s`."""
        expires = int((time.time() if now is None else now) + self.lifetime_s)
        payload = {
            "n": viewer.name,
            "t": viewer.tenant,
            "a": viewer.admin,
            "x": expires,
            "s": secrets.token_urlsafe(16),
        }
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}"

    def viewer(self, cookie: str | None, *, now: float | None = None) -> Viewer | None:
        """The viewer of a cookie value, or ``None`` when it is absent, forged or expired."""
        if not cookie:
            return None
        body, _, signature = cookie.partition(".")
        if not _same(signature, self._sign(body)):
            return None
        try:
            payload: Any = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        if not isinstance(payload, dict) or not _valid(payload):
            return None
        if payload["x"] <= (time.time() if now is None else now):
            return None
        return Viewer(payload["n"], payload["t"], payload["a"], payload["s"])

    def csrf(self, viewer: Viewer) -> str:
        """The CSRF token of ``viewer``'s session."""
        return self._mac(b"csrf:" + viewer.session_id.encode())[:32]

    def csrf_ok(self, viewer: Viewer, token: str | None) -> bool:
        """Whether ``token`` is the CSRF token of ``viewer``'s session."""
        return bool(token) and _same(str(token), self.csrf(viewer))

    def _sign(self, body: str) -> str:
        return self._mac(b"session:" + body.encode())

    def _mac(self, data: bytes) -> str:
        return _b64(hmac.new(self._secret, data, hashlib.sha256).digest())


def _same(given: str, expected: str) -> bool:
    """Constant-time equality of a value a client sent and the one expected.  As bytes:
    compare_digest raises TypeError for a str beyond ASCII, which a forged cookie or token may
    hold (the expected value never does, so such a value never matches)."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def _valid(payload: dict[str, Any]) -> bool:
    return (
        isinstance(payload.get("n"), str)
        and (payload.get("t") is None or isinstance(payload.get("t"), str))
        and isinstance(payload.get("a"), bool)
        and type(payload.get("x")) is int
        and isinstance(payload.get("s"), str)
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
