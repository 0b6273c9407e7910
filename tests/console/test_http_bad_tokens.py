"""The console over plain HTTP, given session cookies and CSRF tokens no browser would send:
a forged cookie of any bytes is no session (a sign-in page), a token of any bytes is a 403."""

from __future__ import annotations

import httpx

from auditgate.console.session import COOKIE
from tests.console.test_http import csrf_of, served, signed_in, wait_listed
from tests.support.gateway import Gateway

__all__ = ["served"]  # the module-scoped fixture, shared with test_http


def test_a_cookie_with_non_ascii_bytes_is_no_session(
    served: tuple[Gateway, str, str, str],
) -> None:
    """A cookie whose signature (or body) holds bytes beyond ASCII sends the visitor to sign in,
    like any forged cookie, instead of failing the request."""
    gateway, _, _, _ = served
    answers = []
    for value in (b"e30.\xe9\xe9", b"\xe9.abc", b"e30.sig"):
        cookie = b"%s=%s" % (COOKIE.encode(), value)
        response = httpx.get(gateway.url + "/ui/records", headers=[(b"cookie", cookie)])
        answers.append((response.status_code, response.headers.get("location", "")[:9]))
    assert answers == [(303, "/ui/login")] * 3


def test_a_csrf_token_with_non_ascii_characters_is_refused(
    served: tuple[Gateway, str, str, str],
) -> None:
    """A write whose token holds characters beyond ASCII is a 403 and changes nothing."""
    gateway, admin, _, request_id = served
    with signed_in(gateway, admin) as client:
        csrf_of(wait_listed(client, request_id))
        path = f"/ui/records/{request_id}/metadata"
        results = [
            client.post(path, data={"metadata": "b=1", "csrf": "\u00e9" * 8}).status_code,
            client.post("/ui/verify", data={"csrf": "\u2603"}).status_code,
            client.post("/ui/logout", data={"csrf": "\u00e9"}).status_code,
            "b=1" in client.get(f"/ui/records/{request_id}").text,
        ]
    assert results == [403, 403, 403, False]
