"""The console's forms over plain HTTP: a body larger than any form is not read into memory
(before signing in, any client can send one)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx

from tests.console.test_http import served
from tests.support.gateway import Gateway

__all__ = ["served"]  # the module-scoped fixture, shared with test_http

MIB = 1 << 20


def peak_rss_mib(pid: int) -> int:
    """The process's peak resident set size (VmHWM), MiB."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) // 1024


def body(mib: int) -> Iterator[bytes]:
    """``mib`` MiB of form data, sent as it is made."""
    for _ in range(mib):
        yield b"key=" + b"a" * (MIB - 4)


def test_a_huge_sign_in_body_is_refused_without_being_buffered(
    served: tuple[Gateway, str, str, str],
) -> None:
    """A 300 MiB sign-in form gets no session and leaves the gateway's peak memory where it
    was (before, the whole body was read, then found too large: +800 MiB); the gateway still
    serves."""
    gateway, _, _, _ = served
    pid = gateway.process.pid
    before = peak_rss_mib(pid)
    try:
        answer = httpx.post(
            gateway.url + "/ui/login",
            content=body(300),
            headers={"content-type": "application/x-www-form-urlencoded"},
            timeout=60,
        ).status_code
    except httpx.TransportError:  # the server answered and closed before the upload ended
        answer = 0
    grown = peak_rss_mib(pid) - before
    health = httpx.get(gateway.url + "/health", timeout=10).status_code
    assert (answer in (0, 401), grown < 64, health) == (True, True, 200), (answer, grown)
