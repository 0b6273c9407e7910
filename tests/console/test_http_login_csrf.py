"""Signing in to the console over plain HTTP from another site is refused (login CSRF: a page
elsewhere posting its own key would sign the visitor's browser in as that key)."""

from __future__ import annotations

import httpx

from auditgate.console.session import COOKIE
from tests.console.test_http import served
from tests.support.gateway import Gateway

__all__ = ["served"]  # the module-scoped fixture, shared with test_http


def test_a_sign_in_posted_from_another_site_sets_no_session(
    served: tuple[Gateway, str, str, str],
) -> None:
    """The same valid key: from a page the browser says is of another site (or a sibling
    subdomain), a 403 and no cookie; from the console's own page, or a client that is not a
    browser (no Sec-Fetch-Site), a session."""
    gateway, admin, _, _ = served
    host = gateway.url.removeprefix("http://")
    form = {"key": admin, "next": "/ui/records"}
    answers = []
    for headers in (
        {"sec-fetch-site": "cross-site", "origin": "http://evil.example"},
        {"sec-fetch-site": "same-site", "origin": "null"},
        {"origin": f"http://{host}", "sec-fetch-site": "same-origin"},
        {},
    ):
        response = httpx.post(gateway.url + "/ui/login", data=form, headers=headers)
        answers.append((response.status_code, COOKIE in response.cookies))
    assert answers == [(403, False), (403, False), (303, True), (303, True)]
