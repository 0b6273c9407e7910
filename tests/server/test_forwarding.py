"""The pass-through's pure parts: its target URL, the hop-by-hop headers, the metric's labels."""

from __future__ import annotations

import dataclasses

import pytest

from auditgate.config import GatewaySettings
from auditgate.errors import ConfigError, InvalidRequestError
from auditgate.server.forwarding import (
    HOP_BY_HOP,
    OTHER,
    PathLabels,
    Target,
    hop_by_hop,
    method_label,
    path_label,
)


def settings(**fields: object) -> GatewaySettings:
    return dataclasses.replace(GatewaySettings(), **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("upstream", "passthrough", "root"),
    [
        ("http://10.0.0.1:9000/v1", None, "http://10.0.0.1:9000"),
        ("http://h:9000/vllm/v1/", None, "http://h:9000/vllm"),
        ("https://h/api?x=1", None, "https://h/api"),
        ("http://h:9000/v1", "http://other:81/base/v1", "http://other:81/base/v1"),
    ],
)
def test_target_root(upstream: str, passthrough: str | None, root: str) -> None:
    """The upstream URL without its final ``/v1`` (and query), or the pass-through URL as is."""
    target = Target.of(
        settings(engine="openai", upstream_url=upstream, passthrough_url=passthrough)
    )
    assert target is not None and target.root == root


@pytest.mark.parametrize(
    "fields",
    [
        {"engine": "mock"},
        {"engine": "openai", "upstream_url": "http://h/v1", "passthrough_url": "OFF"},
        {"engine": "openai", "upstream_routes": (("m", "http://h/v1"),)},
    ],
    ids=["mock", "off", "routes-only"],
)
def test_no_target(fields: dict[str, object]) -> None:
    """No pass-through for the mock engine, when turned off, or without a default upstream."""
    assert Target.of(settings(**fields)) is None


def test_a_bad_passthrough_url_is_a_config_error() -> None:
    """Credentials in the URL are refused as for the upstream URL, without echoing them."""
    with pytest.raises(ConfigError) as caught:
        Target.of(settings(engine="openai", passthrough_url="http://u:pw@h/v1"))
    assert "pw" not in str(caught.value)


def test_target_url_keeps_path_and_query_bytes() -> None:
    """The client's raw path and query are appended, not decoded or re-encoded."""
    target = Target.of(settings(engine="openai", upstream_url="http://h:1/p/v1"))
    assert target is not None
    scope = {"path": "/a b/é", "raw_path": b"/a%20b/%C3%A9", "query_string": b"q=%2F+x&y"}
    assert str(target.url(scope)) == "http://h:1/p/a%20b/%C3%A9?q=%2F+x&y"


@pytest.mark.parametrize("path", ["/..", "/v1/../admin", "/./x", "/a/%2e%2e/b"])
def test_dot_segments_are_refused(path: str) -> None:
    """Any ``.`` or ``..`` segment of the decoded path is a 400."""
    target = Target.of(settings(engine="openai", upstream_url="http://h:1/p/v1"))
    assert target is not None
    decoded = path.replace("%2e", ".")
    with pytest.raises(InvalidRequestError):
        target.url({"path": decoded, "raw_path": path.encode(), "query_string": b""})


@pytest.mark.parametrize("raw", [b"*", b"http://elsewhere/x", b"@elsewhere/x"])
def test_a_target_that_is_not_a_path_is_refused(raw: bytes) -> None:
    """Whatever the server hands over, the URL keeps the upstream's host."""
    target = Target.of(settings(engine="openai", upstream_url="http://h:1/v1"))
    assert target is not None
    with pytest.raises(InvalidRequestError):
        target.url({"path": raw.decode(), "raw_path": raw, "query_string": b""})


def test_dotted_names_are_not_dot_segments() -> None:
    """``/.well-known`` or ``/a/..b`` are ordinary names."""
    target = Target.of(settings(engine="openai", upstream_url="http://h:1/v1"))
    assert target is not None
    urls = [
        str(target.url({"path": p, "raw_path": p.encode(), "query_string": b""}))
        for p in ("/.well-known/x", "/a/..b")
    ]
    assert urls == ["http://h:1/.well-known/x", "http://h:1/a/..b"]


def test_hop_by_hop_adds_what_connection_names() -> None:
    """Every ``Connection`` header's tokens, trimmed and lower-cased, join the fixed set."""
    headers = [(b"Connection", b"Keep-Alive, X-Hop ,"), (b"connection", b"x-other"), (b"a", b"b")]
    assert hop_by_hop(headers) == HOP_BY_HOP | {b"keep-alive", b"x-hop", b"x-other"}
    assert hop_by_hop([(b"a", b"b")]) == HOP_BY_HOP


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/tokenize", "/tokenize"),
        ("/", "/"),
        ("/v1/audio/transcriptions", "/v1/audio/*"),
        ("/v1/models/org/model", "/v1/models/*"),
        ("/v2beta/files", "/v2beta/files"),
        ("/prefix/health", "/prefix/*"),
        ("/v1", "/v1"),
        ("/tokenize/", "/tokenize/*"),
        ("/caf\u00e9", "/*"),
        ("/" + "x" * 65, "/*"),
    ],
)
def test_path_label(path: str, label: str) -> None:
    """The first segment (two after a version), ``*`` for a deeper path or an odd segment."""
    assert path_label(path) == label


def test_path_labels_are_bounded() -> None:
    """After ``limit`` distinct labels, new paths are ``other``; known ones keep theirs."""
    labels = PathLabels(limit=3)
    seen = [labels(p) for p in ("/a", "/b", "/a/x", "/c", "/d", "/a", "/b/y")]
    assert seen == ["/a", "/b", "/a/*", OTHER, OTHER, "/a", OTHER]


def test_method_label() -> None:
    """Usual methods are their own label; any other is ``OTHER``."""
    assert [method_label(m) for m in ("GET", "PATCH", "PROPFIND")] == ["GET", "PATCH", "OTHER"]
