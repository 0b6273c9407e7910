"""50 MB each way through a real ``auditgate serve`` process: pass-through streams bodies.

The gateway's peak resident memory (``VmHWM``, reset through ``/proc/PID/clear_refs`` before the
transfer) may grow by at most :data:`ALLOWED` over its resident size before it, a fraction of the
body: a gateway that held either body whole would grow by at least :data:`SIZE`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from tests.support.gateway import Gateway, running_gateway
from tests.support.upstream import (
    MAX_CHUNK,
    Echo,
    FakeUpstream,
    pattern,
    pattern_sha256,
    upstream_in_thread,
)

SIZE = 50 << 20
"""Bytes of each body."""
ALLOWED = 12 << 20
"""Growth of the gateway's resident memory allowed over its size before a transfer."""


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with upstream_in_thread() as u:
        yield u


@pytest.fixture
def served(upstream: FakeUpstream, tmp_path: Path) -> Iterator[Gateway]:
    env = {"AUDITGATE_ENGINE": "openai", "AUDITGATE_UPSTREAM_URL": upstream.base_url}
    with running_gateway(env, log_dir=tmp_path) as gateway:
        yield gateway


class PeakGrowth:
    """How much the gateway's peak resident memory rose over its resident size while a
    ``with`` block ran (the kernel's high-water mark, so no sampling can miss the peak)."""

    def __init__(self, gateway: Gateway) -> None:
        self.proc = Path(f"/proc/{gateway.process.pid}")
        self.before = 0
        self.growth = 0

    def _status(self, field: str) -> int:
        [line] = [x for x in (self.proc / "status").read_text().splitlines() if x.startswith(field)]
        return int(line.split()[1]) * 1024

    def __enter__(self) -> PeakGrowth:
        (self.proc / "clear_refs").write_text("5")  # VmHWM := VmRSS
        self.before = self._status("VmRSS:")
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth = self._status("VmHWM:") - self.before


def body_parts() -> Iterator[bytes]:
    for offset in range(0, SIZE, MAX_CHUNK):
        yield pattern(offset, min(MAX_CHUNK, SIZE - offset))


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_50mb_upload_is_streamed(served: Gateway, framing: str) -> None:
    """A 50 MB request body reaches the upstream whole and unchanged, and the gateway never
    holds it: with ``Content-Length`` and chunked."""
    headers = {"Content-Length": str(SIZE)} if framing == "content-length" else {}
    with PeakGrowth(served) as memory:
        response = httpx.put(
            served.url + "/v1/audio/echo", content=body_parts(), headers=headers, timeout=120
        )
    seen = msgspec.json.decode(response.content, type=Echo)
    sent_length = [value for name, value in seen.headers if name == "content-length"]
    assert (response.status_code, seen.body_bytes, seen.body_sha256) == (
        200,
        SIZE,
        pattern_sha256(SIZE),
    )
    assert sent_length == ([str(SIZE)] if framing == "content-length" else [])
    assert memory.growth < ALLOWED, f"gateway grew {memory.growth / 2**20:.1f} MiB"


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_50mb_response_is_streamed(served: Gateway, framing: str) -> None:
    """A 50 MB response body reaches the client unchanged, and the gateway never holds it,
    also while the client reads nothing for a while (the upstream is kept waiting, not read)."""
    digest = hashlib.sha256()
    size = 0
    url = served.url + f"/bytes?n={SIZE}&framing={framing}"
    with PeakGrowth(served) as memory, httpx.stream("GET", url, timeout=120) as response:
        for part in response.iter_raw():
            if size == 0:
                time.sleep(0.5)  # a gateway ignoring backpressure would buffer meanwhile
            digest.update(part)
            size += len(part)
    assert (response.status_code, size, digest.hexdigest()) == (200, SIZE, pattern_sha256(SIZE))
    assert memory.growth < ALLOWED, f"gateway grew {memory.growth / 2**20:.1f} MiB"
    assert response.headers.get("content-length") == (str(SIZE) if framing == "length" else None)
