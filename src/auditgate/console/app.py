"""The console's ASGI app: server-rendered pages under ``/ui``.

:class:`Console` is built from what it reads (a :class:`~auditgate.store.queries.Store`, the
gateway's keys, a source of metrics text) and is mounted by the gateway
(:func:`auditgate.server.app.GatewayApp`) or served alone by ``auditgate ui``.  Every page checks
the session on the server (:mod:`auditgate.console.session`); a user's reads are pinned to their
tenant (:mod:`auditgate.console.filters`), and a record of another tenant is the same 404 page as
a record that does not exist.
"""

from __future__ import annotations

import dataclasses
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from auditgate.auth.keys import KeyRing
from auditgate.console import pages
from auditgate.console.filters import format_time
from auditgate.console.indexer import TextIndexer
from auditgate.console.session import COOKIE, Sessions, Viewer
from auditgate.errors import APIError

log = logging.getLogger("auditgate.console")

PREFIX: Final = "/ui"
"""Where the console is mounted."""
_HERE: Final = Path(__file__).parent
_FORM_MAX: Final = 64 * 1024
"""The largest form body a page accepts (a metadata edit is at most ~9 KiB)."""
_SECURITY_HEADERS: Final = {
    # No inline script anywhere: chart data travels as JSON in a non-executable <script> tag.
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}

MetricsSource = Callable[[], Awaitable[str | None]]
"""Returns the gateway's Prometheus text, or ``None`` when there is no gateway to ask."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleConfig:
    """What the console reads and how."""

    store_url: str | None
    """The store's URL (what the verify page checks); ``None``: no store configured."""
    keys: KeyRing | None
    """The gateway's API keys; ``None`` is open mode (everyone is an admin, as at the API)."""
    metrics: MetricsSource | None = None
    """Where pipeline health comes from; ``None``: no gateway (the page says so)."""
    integrity_key: str | None = dataclasses.field(default=None, repr=False)
    """The checkpoint HMAC key, for the verify page's signature checks."""
    live: bool = True
    """Whether the trail's writers may still be running (verify's ``--live``)."""
    secret: bytes | None = dataclasses.field(default=None, repr=False)
    """Session signing secret (``AUDITGATE_UI_SECRET``); random per process when ``None``."""
    index_interval_s: float = 30.0
    """How often the full-text index catches up in the background (0: only when a search finds
    it behind)."""


class Console:
    """The console app (see the module docstring)."""

    def __init__(self, config: ConsoleConfig, store: Any) -> None:
        self.config = config
        self.store = store
        self.sessions = Sessions(config.secret)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,
        )
        self.templates.filters["time"] = format_time
        self.pages = pages.Pages(self)
        self.indexer = TextIndexer(store, config.index_interval_s) if store is not None else None
        self.app = Starlette(
            routes=[
                Route(PREFIX, self._home, methods=["GET"]),
                Route(PREFIX + "/", self._home, methods=["GET"]),
                Route(PREFIX + "/login", self._login_page, methods=["GET"]),
                Route(PREFIX + "/login", self._login, methods=["POST"]),
                Route(PREFIX + "/logout", self._logout, methods=["POST"]),
                *self.pages.routes(PREFIX),
                Mount(PREFIX + "/static", StaticFiles(directory=_HERE / "static"), name="static"),
            ],
            exception_handlers={404: self._not_found, APIError: self._api_error},
        )

    async def start(self) -> None:
        """Start the background work (the full-text indexer); the store must be open."""
        if self.indexer is not None:
            self.indexer.start()

    async def stop(self) -> None:
        """Stop the background work, before the store closes."""
        if self.indexer is not None:
            await self.indexer.stop()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in _SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, secured)

    # -- sessions ------------------------------------------------------------------------------

    def viewer(self, request: Request) -> Viewer | None:
        """The signed-in viewer of ``request`` (``None``: sign in first), as long as a key
        that grants it is still configured: a session does not outlive its key's revocation."""
        viewer = self.sessions.viewer(request.cookies.get(COOKIE))
        keys = self.config.keys
        if (
            viewer is not None
            and keys is not None
            and not keys.holds(viewer.name, viewer.tenant, viewer.admin)
        ):
            log.info("console: a session of a revoked key was refused")
            return None
        return viewer

    def signed_in(self, response: Response, viewer: Viewer) -> Response:
        """``response`` setting a new session cookie for ``viewer``."""
        response.set_cookie(
            COOKIE,
            self.sessions.issue(viewer),
            max_age=self.sessions.lifetime_s,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=False,  # served on loopback HTTP too; a TLS front sets Secure by itself
        )
        return response

    def to_login(self, request: Request) -> Response:
        """Where a request without a session goes: the sign-in page (or, in open mode, a new
        open session for the same page)."""
        if self.config.keys is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            viewer = Viewer("open", None, True)
            return self.signed_in(RedirectResponse(target, status_code=303), viewer)
        next_path = urllib.parse.quote(request.url.path)
        return RedirectResponse(f"{PREFIX}/login?next={next_path}", status_code=303)

    async def form(self, request: Request) -> dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body (each field's first value); ``{}`` for
        one over :data:`_FORM_MAX` bytes, which is not read further (anyone may post to the
        sign-in page: the whole body used to be read into memory before its size was checked)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > _FORM_MAX:
                return {}
            chunks.append(chunk)
        body = b"".join(chunks)
        pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        form: dict[str, str] = {}
        for key, value in pairs:
            form.setdefault(key, value)
        return form

    def render(
        self, request: Request, name: str, viewer: Viewer | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        """The page ``name`` rendered for ``viewer``."""
        template = self.templates.get_template(name)
        html = template.render(
            prefix=PREFIX,
            viewer=viewer,
            csrf=self.sessions.csrf(viewer) if viewer is not None else "",
            open_mode=self.config.keys is None,
            path=request.url.path,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    # -- sign-in -------------------------------------------------------------------------------

    async def _home(self, request: Request) -> Response:
        return RedirectResponse(PREFIX + "/records", status_code=303)

    async def _login_page(self, request: Request) -> Response:
        if self.config.keys is None:
            return self.to_login(request)
        return self.render(request, "login.html", None, next=_safe_next(request), error="")

    async def _login(self, request: Request) -> Response:
        keys = self.config.keys
        if keys is None:
            return RedirectResponse(PREFIX + "/records", status_code=303)
        if _cross_site(request):
            # Login CSRF: a page elsewhere posting its own key would sign this browser in as it.
            log.info("console: a sign-in posted from another site was refused")
            return self.render(
                request, "login.html", None, status=403, next=PREFIX, error="Sign in here."
            )
        form = await self.form(request)
        key = form.get("key", "").strip()
        next_path = _safe_next(request, form.get("next"))
        try:
            principal = await keys.authenticate(b"Bearer " + key.encode("utf-8", "replace"))
        except APIError:
            log.info("console: a sign-in with a wrong key was refused")
            return self.render(
                request, "login.html", None, status=401, next=next_path, error="Wrong API key."
            )
        tenant = None if principal.is_admin else principal.tenant
        viewer = Viewer(principal.name, tenant, principal.is_admin)
        return self.signed_in(RedirectResponse(next_path, status_code=303), viewer)

    async def _logout(self, request: Request) -> Response:
        viewer = self.viewer(request)
        form = await self.form(request)
        if viewer is not None and not self.sessions.csrf_ok(viewer, form.get("csrf")):
            return self.render(request, "error.html", viewer, status=403, message="Bad form token.")
        response = RedirectResponse(PREFIX + "/login", status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    # -- errors --------------------------------------------------------------------------------

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return self.not_found(request, self.viewer(request))

    def not_found(self, request: Request, viewer: Viewer | None) -> Response:
        """The 404 page (also for a record the viewer may not see)."""
        return self.render(request, "error.html", viewer, status=404, message="Not found.")

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return self.render(
            request,
            "error.html",
            self.viewer(request),
            status=exc.status_code,
            message=exc.message,
        )


def _cross_site(request: Request) -> bool:
    """Whether the browser says ``request`` was not sent by a page of the console's own origin
    (``Sec-Fetch-Site``, which every current browser sends; clients without it, such as
    scripts, are not a browser posting a form from elsewhere).  ``Origin`` is not compared
    with ``Host``: behind a proxy that rewrites ``Host`` every sign-in would be refused."""
    site = request.headers.get("sec-fetch-site")
    return site is not None and site not in ("same-origin", "none")


def _safe_next(request: Request, value: str | None = None) -> str:
    """The page to go to after sign-in: a path of the console's own, never another site."""
    target = value if value is not None else request.query_params.get("next", "")
    if target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX + "/records"
