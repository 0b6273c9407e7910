"""``auditgate ui`` follows the API keys file as the gateway does: a revoked key can no longer
sign in and a key added later can, without a restart; SIGHUP reloads at once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from auditgate.auth.keys import add_key, revoke_keys
from auditgate.store.url import open_store
from tests.support.gateway import clean_env, free_port

UI = (sys.executable, "-m", "auditgate", "ui")


def sign_in(port: int, key: str) -> int:
    """The status of a sign-in with ``key``: 303 (in) or 401 (wrong key)."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        return client.post("/ui/login", data={"key": key, "next": "/ui/records"}).status_code


def until_status(port: int, key: str, status: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while sign_in(port, key) != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"sign-in never answered {status} within {timeout}s")
        time.sleep(0.05)


async def empty_store(db: Path) -> None:
    store = open_store(f"sqlite:///{db}")
    await store.open()
    await store.close()


def test_ui_follows_the_keys_file(tmp_path: Path) -> None:
    keys = str(tmp_path / "keys.json")
    old = add_key(keys, name="boss", tenant="acme", role="admin")
    db = tmp_path / "a.db"
    asyncio.run(empty_store(db))
    port = free_port()
    log = tmp_path / "ui.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*UI, "--port", str(port), "--store", f"sqlite:///{db}", "--api-keys-file", keys],
            env=clean_env({}),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                first = sign_in(port, old)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError(log.read_text()) from None
                time.sleep(0.1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as session:
            signed = session.post("/ui/login", data={"key": old, "next": "/ui/records"})
            before = session.get("/ui/records").status_code
            revoke_keys(keys, "boss")
            until_status(port, old, 401)
            # The session signed in with the revoked key is over too: back to the sign-in page.
            after = session.get("/ui/records")
        new = add_key(keys, name="ann", tenant="acme", role="user")
        until_status(port, new, 303)
        revoke_keys(keys, "ann")
        process.send_signal(signal.SIGHUP)
        until_status(port, new, 401)
        alive = process.poll() is None
    finally:
        process.terminate()
        process.wait(10)
    text = log.read_text()
    assert (first, signed.status_code, before, alive) == (303, 303, 200, True)
    assert (after.status_code, after.headers["location"]) == (303, "/ui/login?next=/ui/records")
    assert "SIGHUP" in text and old not in text and new not in text
