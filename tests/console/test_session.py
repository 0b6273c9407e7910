"""Console sessions: signed cookies that carry no key, expire, and resist forgery."""

from __future__ import annotations

from auditgate.console.session import Sessions, Viewer


def test_a_cookie_round_trips_its_viewer() -> None:
    """The viewer a cookie was issued for comes back from it, session id included."""
    sessions = Sessions(b"k" * 32)
    viewer = sessions.viewer(sessions.issue(Viewer("ann", "acme", False)))
    assert viewer is not None
    assert (viewer.name, viewer.tenant, viewer.admin, len(viewer.session_id) > 10) == (
        "ann",
        "acme",
        False,
        True,
    )


def test_forged_expired_and_foreign_cookies_are_refused() -> None:
    """A changed payload, an expired cookie and one signed under another secret all read as no
    session at all."""
    sessions = Sessions(b"k" * 32)
    cookie = sessions.issue(Viewer("ann", "acme", False), now=1000.0)
    _, signature = cookie.split(".")
    admin_body = Sessions(b"x" * 32).issue(Viewer("ann", None, True)).split(".")[0]
    results = [
        sessions.viewer(f"{admin_body}.{signature}", now=1001.0),
        sessions.viewer(cookie, now=1000.0 + sessions.lifetime_s + 1),
        Sessions(b"other" * 8).viewer(cookie, now=1001.0),
        sessions.viewer("garbage", now=1001.0),
        sessions.viewer(None),
        sessions.viewer(cookie, now=1001.0) is not None,
    ]
    assert results == [None, None, None, None, None, True]


def test_csrf_tokens_belong_to_one_session() -> None:
    """A session's CSRF token passes for it and for no other session."""
    sessions = Sessions(b"k" * 32)
    first = sessions.viewer(sessions.issue(Viewer("a", None, True)))
    second = sessions.viewer(sessions.issue(Viewer("a", None, True)))
    assert first is not None and second is not None
    token = sessions.csrf(first)
    assert (
        sessions.csrf_ok(first, token),
        sessions.csrf_ok(second, token),
        sessions.csrf_ok(first, ""),
        sessions.csrf_ok(first, None),
    ) == (True, False, False, False)


def test_reprs_hold_no_secret() -> None:
    """Neither the sessions object nor a viewer shows the secret or the session id."""
    sessions = Sessions(b"supersecret" * 3)
    viewer = Viewer("ann", "acme", False, session_id="sid-123456")
    assert ("supersecret" in repr(sessions), "sid-123456" in repr(viewer)) == (False, False)
