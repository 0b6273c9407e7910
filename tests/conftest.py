"""Fixtures shared by the whole suite: the machine's PostgreSQL and NATS, isolated per test.

Every test gets its own database / stream / subject names and cleans up after itself, so tests
never depend on leftovers.  The shared servers are the ones ``.ci/run`` starts; tests that stop
and restart a server start their own (``tests/support``).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

PG_ADMIN_DSN = os.environ.get("AUDITGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
NATS_URL = os.environ.get("AUDITGATE_TEST_NATS", "nats://127.0.0.1:4222")


@pytest.fixture(autouse=True)
def _close_sdk_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every ``openai.OpenAI`` client a test made, so its pooled sockets are released at
    the end of that test rather than by a later garbage collection (a ResourceWarning there)."""
    import openai

    created: list[openai.OpenAI] = []
    original = openai.OpenAI.__init__

    def init(self: openai.OpenAI, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(openai.OpenAI, "__init__", init)
    yield
    for client in created:
        client.close()


@pytest.fixture
def unique() -> str:
    """A short unique token for names of databases, streams, subjects and files."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
async def pg_dsn(unique: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL database on the shared server, dropped after the test."""
    from tests.support.postgres import create_database, drop_database

    name = f"ag_test_{unique}"
    yield await create_database(PG_ADMIN_DSN, name)
    await drop_database(PG_ADMIN_DSN, name)


@pytest.fixture
def nats_url() -> str:
    """URL of the shared NATS server (JetStream on)."""
    return NATS_URL


@pytest.fixture
async def nats_names(unique: str) -> AsyncIterator[tuple[str, str]]:
    """A (stream, subject) pair of unique names; the stream is deleted after the test."""
    import nats

    stream, subject = f"AGTEST_{unique.upper()}", f"agtest.{unique}.audit"
    yield stream, subject
    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(stream)
    finally:
        await nc.close()


@pytest.fixture
def workdir(tmp_path: os.PathLike[str]) -> Iterator[str]:
    """A temporary directory for files a test's gateway writes."""
    yield str(tmp_path)
