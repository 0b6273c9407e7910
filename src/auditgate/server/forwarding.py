"""What a pass-through request is forwarded to, with which headers, and how it is counted.

- :class:`Target`: the upstream root a path the gateway does not serve is appended to — the
  upstream URL without its final ``/v1`` (so ``/tokenize`` reaches vLLM's ``/tokenize`` and
  ``/v1/audio/speech`` its ``/v1/audio/speech``, also under a path prefix), or
  ``AUDITGATE_PASSTHROUGH_URL`` verbatim.
- :func:`hop_by_hop`: the header names that belong to one connection and are never forwarded,
  either way (RFC 9110 §7.6.1: ``Connection`` and every name it lists, ``Proxy-Connection``,
  ``Keep-Alive``, ``TE``, ``Transfer-Encoding``, ``Upgrade``; and ``Trailer``,
  ``Proxy-Authenticate``, ``Proxy-Authorization``, which concern this hop only).
- :class:`PathLabels`: the bounded ``path`` label of the pass-through metric.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Final

from yarl import URL

from auditgate.config import GatewaySettings
from auditgate.engines.upstream import Upstream, parse_upstream
from auditgate.errors import InvalidRequestError
from auditgate.server.wire import Scope

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
"""Header names (lower-case) never forwarded, whatever ``Connection`` says."""

OFF: Final = "off"
"""``AUDITGATE_PASSTHROUGH_URL`` value that turns pass-through off."""


def hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """:data:`HOP_BY_HOP` plus every name the ``Connection`` headers of ``headers`` list,
    lower-case."""
    listed = [
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    ]
    return HOP_BY_HOP.union(token for token in listed if token) if listed else HOP_BY_HOP


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """The upstream root that pass-through paths are appended to."""

    root: str
    """``scheme://host:port[/prefix]``, percent-encoded, no trailing slash, no query."""
    upstream: Upstream
    """The same upstream parsed, for the ``host:port`` label of messages and logs."""

    @classmethod
    def of(cls, settings: GatewaySettings) -> Target | None:
        """Where the settings send pass-through requests; None when it is off (the mock engine,
        ``AUDITGATE_PASSTHROUGH_URL=off``, or an openai engine with routes and no default URL).
        A malformed URL is a :class:`~auditgate.errors.ConfigError`."""
        if settings.engine != "openai":
            return None
        configured = settings.passthrough_url
        if configured is not None and configured.lower() == OFF:
            return None
        base = configured or settings.upstream_url
        if base is None:
            return None
        upstream = parse_upstream(base)  # checks scheme, host, no credentials
        root = str(URL(base.rstrip("/")).with_query(None).with_fragment(None))
        if configured is None and root.endswith("/v1"):
            root = root.removesuffix("/v1")
        return cls(root=root, upstream=upstream)

    def url(self, scope: Scope) -> URL:
        """The upstream URL of a request: the root, the path and the query exactly as the client
        sent them (not re-encoded).  A path with a ``.`` or ``..`` segment is a 400: resolved
        by the upstream or a proxy before it, it could leave the root's prefix; so is a request
        target that is not a path (``OPTIONS *``)."""
        path: str = scope["path"]
        if "/." in path and any(part in (".", "..") for part in path.split("/")):
            raise InvalidRequestError(
                "A path with '.' or '..' segments cannot be passed through.", code="invalid_path"
            )
        raw = scope.get("raw_path") or path.encode()
        if not raw.startswith(b"/"):  # OPTIONS *, or an absolute URL: never another host
            raise InvalidRequestError(
                "Only a path starting with '/' can be passed through.", code="invalid_path"
            )
        query = scope.get("query_string") or b""
        target = self.root + raw.decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        return URL(target, encoded=True)


_VERSION: Final = re.compile(r"v[0-9]+[a-z0-9]*")
"""A first segment that names an API version (``v1``, ``v2beta``): the label keeps one more."""
_SEGMENT: Final = re.compile(r"[A-Za-z0-9._~-]{1,64}")
"""A segment kept in a label as it is; any other becomes ``*``."""
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods counted under their own name; any other is ``OTHER``."""
OTHER: Final = "other"
"""The label of every path past :data:`MAX_LABELS` distinct ones."""
MAX_LABELS: Final = 64
"""Distinct path labels one process reports; later ones are :data:`OTHER`."""


def path_label(path: str) -> str:
    """The first segment of ``path`` (two when the first names a version), then ``/*`` if
    there is more: ``/tokenize``, ``/v1/audio/*``, ``/v1/models/*``, ``/prefix/*``."""
    segments = path.split("/")[1:]
    depth = 2 if segments and _VERSION.fullmatch(segments[0]) else 1
    head = [s if not s or _SEGMENT.fullmatch(s) else "*" for s in segments[:depth]]
    return "/" + "/".join(head) + ("/*" if len(segments) > depth else "")


def method_label(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`, else ``OTHER``."""
    return method if method in METHODS else "OTHER"


class PathLabels:
    """:func:`path_label`, bounded: paths are the client's text, so after ``limit`` distinct
    labels every new one is reported as :data:`OTHER` (a metric's series stay few)."""

    def __init__(self, limit: int = MAX_LABELS) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, path: str) -> str:
        label = path_label(path)
        if label in self._seen:
            return label
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(label)
        return label
