"""An exception no handler expects is OpenAI's 500 error JSON, logged, never plain text."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg
import openai
import pytest

from auditgate.store.schema import TABLE
from tests.support.server import gateway


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, workdir: str) -> str:
    """A store of the test's own: a SQLite file or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{workdir}/store.db"
    return str(request.getfixturevalue("pg_dsn"))


def drop_table(url: str) -> None:
    """Drop the stored-completions table behind the gateway's back."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute(f"DROP TABLE {TABLE}")
        return

    async def drop() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"DROP TABLE {TABLE}")
        finally:
            await conn.close()

    asyncio.run(drop())


def test_unexpected_error_is_a_logged_openai_500(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A store whose table was dropped under the gateway makes the list fail unexpectedly: the
    client gets OpenAI's 500 error JSON, the log the traceback (it was a plain-text 500)."""
    with gateway({"AUDITGATE_STORE_URL": store_url}) as g:
        drop_table(store_url)
        api = openai.OpenAI(base_url=g.base_url, api_key="sk-test", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            api.chat.completions.list()
    response = info.value.response
    error = {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert (500, "application/json", {"error": error}) == (
        response.status_code,
        response.headers["content-type"],
        response.json(),
    )
    kind = "OperationalError" if store_url.startswith("sqlite") else "UndefinedTableError"
    logged = [
        (r.name, r.levelname, r.getMessage(), r.exc_info[0].__name__)
        for r in caplog.records
        if r.exc_info is not None and r.exc_info[0] is not None
    ]
    message = "unexpected error answering GET '/v1/chat/completions'"
    assert [("auditgate", "ERROR", message, kind)] == logged
