"""The console over plain HTTP: what the server refuses (no session, CSRF, roles, bad filters),
and ``auditgate ui`` serving a store on its own."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from auditgate.auth.keys import add_key
from tests.support.gateway import Gateway, clean_env, free_port, start_gateway


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str, str, str]]:
    """A gateway on SQLite with an admin and a user key, holding one stored completion."""
    root = tmp_path_factory.mktemp("console-http")
    keys = str(root / "keys.json")
    admin = add_key(keys, name="boss", tenant="acme", role="admin")
    user = add_key(keys, name="ann", tenant="acme", role="user")
    env = {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "sqlite",
        "DYN_AUDIT_SQLITE_PATH": str(root / "a.db"),
        "AUDITGATE_API_KEYS_FILE": keys,
    }
    gateway = start_gateway(env, log_dir=root)
    try:
        client = openai.OpenAI(base_url=gateway.base_url, api_key=user, max_retries=0)
        done = client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "hi"}], store=True
        )
        client.close()
        yield gateway, admin, user, done.id.removeprefix("chatcmpl-")
    finally:
        gateway.stop()


@contextlib.contextmanager
def signed_in(gateway: Gateway, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url) as client:
        response = client.post("/ui/login", data={"key": key, "next": "/ui/records"})
        assert response.status_code == 303, response.text
        yield client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


def wait_listed(client: httpx.Client, request_id: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        page = client.get(f"/ui/records/{request_id}")
        if page.status_code == 200:
            return page.text
        time.sleep(0.05)
    raise AssertionError("record never stored")


def test_pages_need_a_session(served: tuple[Gateway, str, str, str]) -> None:
    """Without a session every page leads to sign-in, and the API key is not accepted as a
    bearer token by the console (it is for the API)."""
    gateway, admin, _, request_id = served
    with httpx.Client(base_url=gateway.url) as client:
        statuses = [
            (r.status_code, r.headers.get("location"))
            for r in (
                client.get("/ui/records"),
                client.get(
                    f"/ui/records/{request_id}", headers={"authorization": f"Bearer {admin}"}
                ),
                client.get("/ui/export?format=raw"),
            )
        ]
    assert statuses == [
        (303, "/ui/login?next=/ui/records"),
        (303, f"/ui/login?next=/ui/records/{request_id}"),
        (303, "/ui/login?next=/ui/export"),
    ]


def test_writes_need_the_sessions_csrf_token(served: tuple[Gateway, str, str, str]) -> None:
    """A metadata edit or a verify run without the token, or with another session's, is a 403
    and changes nothing; with it, the edit is saved."""
    gateway, admin, _, request_id = served
    with signed_in(gateway, admin) as first, signed_in(gateway, admin) as second:
        page = wait_listed(first, request_id)
        token = csrf_of(page)
        other = csrf_of(wait_listed(second, request_id))
        path = f"/ui/records/{request_id}/metadata"
        results = [
            first.post(path, data={"metadata": "a=1"}).status_code,
            first.post(path, data={"metadata": "a=1", "csrf": other}).status_code,
            first.post("/ui/verify", data={}).status_code,
            "a=1" in first.get(f"/ui/records/{request_id}").text,
            first.post(path, data={"metadata": "a=2", "csrf": token}).headers["location"],
        ]
    assert results == [403, 403, 403, False, f"/ui/records/{request_id}?saved=1"]


def test_a_user_may_not_edit_or_verify(served: tuple[Gateway, str, str, str]) -> None:
    """A user's session, with its own valid token, is refused both writes."""
    gateway, _, user, request_id = served
    with signed_in(gateway, user) as client:
        token = csrf_of(wait_listed(client, request_id))
        edit = client.post(
            f"/ui/records/{request_id}/metadata", data={"metadata": "a=1", "csrf": token}
        )
        verify = client.post("/ui/verify", data={"csrf": token})
    assert (edit.status_code, verify.status_code) == (403, 403)


def test_bad_filters_are_explained_not_crashes(served: tuple[Gateway, str, str, str]) -> None:
    """An unreadable time, an unknown status, a NUL, a stale cursor: the page answers 200 and
    says what it ignored; an unknown export format is a 400 page."""
    gateway, admin, _, _ = served
    with signed_in(gateway, admin) as client:
        pages = [
            client.get("/ui/records", params={"since": "yesterday"}),
            client.get("/ui/records", params={"status": "weird"}),
            client.get("/ui/records", params={"model": "a\x00b"}),
            client.get("/ui/records", params={"after": "chatcmpl-nope"}),
            client.get("/ui/usage", params={"q": "x" * 5000}),
        ]
        export = client.get("/ui/export", params={"format": "csv"})
    alerts = [re.findall(r'role="alert">([^<]+)<', p.text) for p in pages]
    assert ([p.status_code for p in pages], alerts, export.status_code) == (
        [200] * 5,
        [
            ["since: &#39;yesterday&#39; is not a date and time (YYYY-MM-DDTHH:MM, UTC)"],
            ["status: &#39;weird&#39; is not one of completed, cancelled, error"],
            ["a filter holds a NUL character: filters ignored"],
            ["That page no longer exists; showing the newest records."],
            [],
        ],
        400,
    )


def test_auditgate_ui_serves_a_store(served: tuple[Gateway, str, str, str], tmp_path: Path) -> None:
    """``auditgate ui --store`` signs in with the same keys and lists the store's records;
    without a store it exits 2, with one that does not exist 3."""
    gateway, admin, _, request_id = served
    db = gateway.log_path.parent / "a.db"
    keys = gateway.log_path.parent / "keys.json"
    port = free_port()
    command = [sys.executable, "-m", "auditgate", "ui", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--store", f"sqlite:///{db}", "--api-keys-file", str(keys)],
        env=clean_env({}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/ui/login", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            login = client.post("/ui/login", data={"key": admin, "next": "/ui/records"})
            listed = client.get("/ui/records").text
    finally:
        process.terminate()
        process.wait(10)
        assert process.stderr is not None
        process.stderr.close()
    missing = subprocess.run(
        command, env=clean_env({}), capture_output=True, text=True, timeout=60, check=False
    )
    absent = subprocess.run(
        [*command, "--store", f"sqlite:///{tmp_path / 'none.db'}"],
        env=clean_env({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (
        login.status_code,
        f"/ui/records/{request_id}" in listed,
        missing.returncode,
        absent.returncode,
        "does not exist" in absent.stderr,
    ) == (303, True, 2, 3, True)


async def test_the_console_can_be_switched_off() -> None:
    """``AUDITGATE_UI=0``: ``/ui`` is an unknown route (OpenAI's 404 JSON), not the console."""
    from auditgate.config import Settings
    from auditgate.server.app import create_app

    on = create_app(Settings.from_env({}))
    off = create_app(Settings.from_env({"AUDITGATE_UI": "0"}))
    answers = []
    for app in (on, off):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            response = await client.get("/ui/records")
            answers.append((response.status_code, response.headers.get("location")))
    assert answers == [(303, "/ui/records"), (404, None)]
