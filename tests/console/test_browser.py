"""The console in a real browser: headless Debian chromium driven by Playwright, against a real
``auditgate serve`` writing SQLite or PostgreSQL, records made with the official ``openai`` SDK.

One browser and one gateway per store (module-scoped); each test signs in in a fresh browser
context, as a new visitor would.  The last test stops the gateway's NATS sink's server, so it
runs last.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from auditgate.audit.record import AuditRecord, Envelope
from auditgate.auth.keys import add_key
from tests.conftest import PG_ADMIN_DSN
from tests.support.gateway import Gateway, clean_env, start_gateway
from tests.support.nats import NatsServer

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
FITS = "document.documentElement.scrollWidth <= window.innerWidth"
"""Whether the page fits its 1280 px window without scrolling sideways."""
CAPACITY = 128
"""Each sink's queue bound (``DYN_AUDIT_CAPACITY``)."""
FILLER = 55
"""Plain records made by the admin: more than one page of the list."""


@dataclass
class Site:
    """One running gateway with its keys and the records the tests look for."""

    gateway: Gateway
    nats: NatsServer
    store: str
    admin_key: str
    acme_key: str
    globex_key: str
    tool_record: str = ""
    """Request id of acme's streamed completion with a tool call and reasoning."""
    script_record: str = ""
    """Request id of acme's completion whose prompt holds HTML and markdown."""
    globex_record: str = ""
    """Request id of globex's completion."""
    ids: dict[str, str] = field(default_factory=dict)
    store_url: str = ""
    """The store the gateway writes (``sqlite:///…`` or ``postgresql://…``)."""

    @property
    def ui(self) -> str:
        return self.gateway.url + "/ui"

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.base_url, api_key=key, max_retries=0)


def _run(coroutine: Any) -> Any:
    """Run ``coroutine`` on a loop of its own thread (Playwright's sync API holds this one's)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _request_id(completion_id: str) -> str:
    return completion_id.removeprefix("chatcmpl-")


def _fill(site: Site) -> None:
    """The records the tests read, made as clients make them."""
    acme = site.client(site.acme_key)
    stream = acme.chat.completions.create(
        model="mock",
        messages=[{"role": "user", "content": "What is the weather in Paris? zebracorn"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        reasoning_effort="low",
        stream=True,
        store=True,
        metadata={"team": "red"},
    )
    ids = {chunk.id for chunk in stream}
    site.tool_record = _request_id(ids.pop())
    scripted = acme.chat.completions.create(
        model="mock",
        messages=[
            {"role": "system", "content": "Be **brief**."},
            {"role": "user", "content": "<script>window.pwned=1</script> [x](javascript:alert(1))"},
        ],
        store=True,
    )
    site.script_record = _request_id(scripted.id)
    globex = site.client(site.globex_key).chat.completions.create(
        model="mock-large",
        messages=[{"role": "user", "content": "globex banana secret"}],
        store=True,
    )
    site.globex_record = _request_id(globex.id)
    admin = site.client(site.admin_key)
    for i in range(FILLER):
        admin.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": f"filler {i}"}], store=True
        )
    _wait_stored(admin, FILLER + 3)
    admin.close()
    acme.close()


def _wait_stored(client: openai.OpenAI, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        seen = sum(1 for _ in client.chat.completions.list(limit=100))
        if seen >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{seen} of {count} records stored in {timeout}s")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """A gateway with keys for an admin and two tenants, filled with records."""
    from tests.support.postgres import create_database, drop_database

    store: str = request.param
    root = tmp_path_factory.mktemp(f"console-{store}")
    keys = str(root / "keys.json")
    admin = add_key(keys, name="boss", tenant="acme", role="admin")
    acme = add_key(keys, name="ann", tenant="acme", role="user")
    globex = add_key(keys, name="gil", tenant="globex", role="user")
    nats = NatsServer(root)
    nats.start()
    env = {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_NATS_URL": nats.url,
        "DYN_AUDIT_NATS_SUBJECT": "console.audit",
        "DYN_AUDIT_NATS_STREAM": "CONSOLE_AUDIT",
        # Small queues: once the NATS server is stopped, its sink drops (and counts) soon; large
        # enough that the store's sink keeps up with the tests' requests on a busy machine.
        "DYN_AUDIT_CAPACITY": str(CAPACITY),
        "DYN_AUDIT_INTEGRITY": "1",
        "DYN_AUDIT_INTEGRITY_KEY": "console-test-key",
        "AUDITGATE_API_KEYS_FILE": keys,
        "AUDITGATE_MODELS": "mock,mock-large",
    }
    database = ""
    if store == "sqlite":
        env |= {"DYN_AUDIT_SINKS": "sqlite,nats", "DYN_AUDIT_SQLITE_PATH": str(root / "a.db")}
        store_url = f"sqlite:///{root / 'a.db'}"
    else:
        # Unique across processes: other checkouts run these tests on the same server.
        database = f"ag_console_{store}_{uuid.uuid4().hex[:12]}"
        store_url = dsn = _run(create_database(PG_ADMIN_DSN, database))
        env |= {"DYN_AUDIT_SINKS": "postgres,nats", "DYN_AUDIT_POSTGRES_URL": dsn}
    gateway = start_gateway(env, log_dir=root)
    try:
        built = Site(gateway, nats, store, admin, acme, globex, store_url=store_url)
        _fill(built)
        yield built
    finally:
        gateway.stop()
        nats.stop()
        if database:
            _run(drop_database(PG_ADMIN_DSN, database))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium for the module."""
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh context (no cookies) and page, at 1280 px."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def sign_in(page: Any, site: Site, key: str) -> None:
    page.goto(site.ui + "/records")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/ui/records"))


def listed_ids(page: Any) -> list[str]:
    hrefs = page.locator("table.records tbody a").evaluate_all("els => els.map(e => e.href)")
    return [h.rsplit("/", 1)[-1] for h in hrefs]


def test_sign_in_refuses_a_wrong_key_and_lists_every_tenant_for_an_admin(
    site: Site, page: Any
) -> None:
    """A wrong key stays on the sign-in page; the admin sees both tenants' records, newest first,
    one page of 50 and an older page, no record twice; the session is an HttpOnly cookie."""
    page.goto(site.ui + "/records")
    page.get_by_label("API key").fill("ag-wrong")
    page.get_by_role("button", name="Sign in").click()
    refused = page.get_by_role("alert").inner_text()
    sign_in(page, site, site.admin_key)
    first = listed_ids(page)
    fits = page.evaluate(FITS)
    page.get_by_role("link", name="Older →").click()
    second = listed_ids(page)
    cookies = page.context.cookies()
    assert (
        refused,
        len(first),
        len(set(first) | set(second)),
        site.globex_record in first + second,
        [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies],
        any(site.admin_key in c["value"] for c in cookies),
        fits,
    ) == (
        "Wrong API key.",
        50,
        FILLER + 3,
        True,
        [("auditgate_session", True, "Strict")],
        False,
        True,
    )


def test_filters_and_full_text_search(site: Site, page: Any) -> None:
    """Model, tenant, metadata and full-text filters narrow the list on the server."""
    sign_in(page, site, site.admin_key)
    results = {}
    for name, fields in {
        "model": {"Model": "mock-large"},
        "tenant": {"Tenant": "acme", "Search prompts and answers": "zebracorn"},
        "metadata": {"Metadata": "team=red"},
        "text": {"Search prompts and answers": "banana secret"},
        "nothing": {"Search prompts and answers": "banana zebracorn"},
    }.items():
        page.goto(site.ui + "/records")
        for label, value in fields.items():
            page.get_by_label(label).fill(value)
        page.get_by_role("button", name="Apply").click()
        page.wait_for_load_state()
        results[name] = listed_ids(page)
    assert results == {
        "model": [site.globex_record],
        "tenant": [site.tool_record],
        "metadata": [site.tool_record],
        "text": [site.globex_record],
        "nothing": [],
    }


def test_a_streamed_record_shows_its_tool_call_reasoning_and_escaped_text(
    site: Site, page: Any
) -> None:
    """The tenant's user opens the streamed record: the tool call with its JSON arguments, the
    reasoning apart; another record's HTML prompt is shown as text, never run."""
    sign_in(page, site, site.acme_key)
    page.get_by_label("Search prompts and answers").fill("zebracorn")
    page.get_by_role("button", name="Apply").click()
    page.locator("table.records tbody a").first.click()
    page.wait_for_url(re.compile(site.tool_record))
    call = page.locator(".tool-call").first
    tool = call.locator(".tool-name code").inner_text()
    arguments = json.loads(call.locator("pre").inner_text())
    reasoning_hidden = page.locator(".reasoning pre").is_visible()
    page.locator(".reasoning summary").click()
    reasoning = page.locator(".reasoning pre").inner_text()
    integrity = page.locator(".integrity").inner_text()
    fits = page.evaluate(FITS)
    page.goto(f"{site.ui}/records/{site.script_record}")
    user_text = page.locator(".turn.user .content").inner_text()
    system_bold = page.locator(".turn.system .content strong").inner_text()
    pwned = page.evaluate("window.pwned === undefined")
    js_links = page.locator(".turn.user .content a").count()
    assert (
        tool,
        sorted(arguments),
        reasoning_hidden,
        bool(reasoning.strip()),
        integrity,
        user_text.strip(),
        system_bold,
        pwned,
        js_links,
        fits,
    ) == (
        "get_weather",
        ["city"],
        False,
        True,
        "intact",
        "<script>window.pwned=1</script> [x](javascript:alert(1))",
        "brief",
        True,
        0,
        True,
    )


def test_an_admin_edits_metadata(site: Site, page: Any) -> None:
    """The admin replaces a record's metadata from its page; the API then reads it, a malformed
    line is refused with a message, and the record stays intact."""
    sign_in(page, site, site.admin_key)
    page.goto(f"{site.ui}/records/{site.script_record}")
    page.get_by_label("One key=value a line").fill("reviewed=yes\npriority = high")
    page.get_by_role("button", name="Save metadata").click()
    saved = page.get_by_role("status").inner_text()
    page.get_by_label("One key=value a line").fill("no equals sign")
    page.get_by_role("button", name="Save metadata").click()
    refused = page.get_by_role("alert").inner_text()
    integrity = page.locator(".integrity").inner_text()
    client = site.client(site.admin_key)
    stored = client.chat.completions.retrieve("chatcmpl-" + site.script_record)
    assert (saved, refused, integrity, stored.metadata) == (
        "Metadata saved.",
        "Line 1: expected key=value.",
        "intact",
        {"reviewed": "yes", "priority": "high"},
    )


def test_a_user_cannot_edit_metadata_or_see_another_tenant(site: Site, page: Any) -> None:
    """A tenant's key: no edit form, another tenant's record is the 404 page, its rows are not
    listed and a tenant filter in the URL does not widen the list."""
    sign_in(page, site, site.acme_key)
    page.goto(f"{site.ui}/records/{site.tool_record}")
    forms = page.locator("textarea#metadata").count()
    response = page.goto(f"{site.ui}/records/{site.globex_record}")
    heading = page.locator("h1").inner_text()
    page.goto(f"{site.ui}/records?tenant=globex&q=banana")
    listed = listed_ids(page)
    raw = page.goto(f"{site.ui}/records/{site.globex_record}/raw.json")
    assert (forms, response.status, heading, listed, raw.status) == (0, 404, "Not found.", [], 404)


def test_export_of_the_current_filter_downloads_jsonl(site: Site, page: Any) -> None:
    """The finetune export of a filter is a download of one JSON line per matching completion,
    each ending with the assistant's message."""
    sign_in(page, site, site.admin_key)
    page.get_by_label("Search prompts and answers").fill("filler")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_load_state()
    with page.expect_download() as info:
        page.get_by_role("link", name="finetune JSONL").click()
    download = info.value
    lines = [json.loads(line) for line in Path(download.path()).read_text().splitlines()]
    prompts = sorted(line["messages"][0]["content"] for line in lines)
    assert (
        download.suggested_filename.startswith("auditgate-finetune-"),
        len(lines),
        prompts == sorted(f"filler {i}" for i in range(FILLER)),
        {line["messages"][-1]["role"] for line in lines},
    ) == (True, FILLER, True, {"assistant"})


def test_usage_charts_and_verify(site: Site, page: Any) -> None:
    """The usage page draws its charts (uPlot canvases) and totals by model; verify on the live
    store finds every chain intact; both pages fit 1280 px."""
    sign_in(page, site, site.admin_key)
    page.get_by_role("link", name="Usage").click()
    page.wait_for_selector(".chart canvas")
    charts = page.locator(".chart .uplot").count()
    first_table = page.locator("table.summary").first
    by_model = first_table.locator("tbody tr td:first-child").all_inner_texts()
    scroll = page.evaluate(FITS)
    page.get_by_role("link", name="Integrity").click()
    page.get_by_role("button", name="Run verify").click()
    verdict = page.get_by_role("status").inner_text()
    verify_fits = page.evaluate(FITS)
    assert (charts, by_model, scroll, verdict, verify_fits) == (
        7,
        ["mock", "mock-large"],
        True,
        "INTACT",
        True,
    )


def test_a_record_downloads_and_copies_as_json(site: Site, page: Any) -> None:
    """The record page's download is the record as JSON; its copy button puts the request id on
    the clipboard."""
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(page, site, site.acme_key)
    page.goto(f"{site.ui}/records/{site.tool_record}")
    with page.expect_download() as info:
        page.get_by_role("link", name="Download JSON").click()
    record = json.loads(Path(info.value.path()).read_text())
    page.get_by_role("button", name="Copy request id").click()
    page.get_by_role("button", name="Copied").wait_for()
    clipboard = page.evaluate("navigator.clipboard.readText()")
    assert (record["request_id"], record["tenant"], record["metadata"], clipboard) == (
        site.tool_record,
        "acme",
        {"team": "red"},
        site.tool_record,
    )


BULK = 50_000
"""Records bulk-loaded by ``auditgate import`` behind the running console's back: indexing them
all takes several seconds on SQLite and tens of seconds on PostgreSQL."""


def test_a_search_after_a_bulk_load_answers_at_once_and_finds_them_soon(
    site: Site, page: Any, tmp_path: Path
) -> None:
    """``auditgate import`` stores 50,000 records while the console runs: a search right after
    answers at once (saying how many records are not searchable yet, unless the background
    indexer already caught up), and finds the oldest and the newest of them soon after."""
    now = int(time.time() * 1000)
    lines = []
    for i in range(BULK):
        word = "quokka" if i in (0, BULK - 1) else f"bulk{i % 97}"
        record = chat_record(i, f"imported {word}", now - 3_600_000 + i, tenant="acme")
        lines.append(Envelope(record).json)
    path = tmp_path / "bulk.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    imported = subprocess.run(
        [
            sys.executable,
            "-m",
            "auditgate",
            "import",
            str(path),
            "--to",
            site.store_url,
            "--no-state",
            "--no-progress",
        ],
        env=clean_env({}),
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr.decode()
    sign_in(page, site, site.admin_key)
    started = time.monotonic()
    page.goto(site.ui + "/records?q=quokka")
    first_answer_s = time.monotonic() - started
    notice = page.locator("#index-lag")
    behind = notice.inner_text() if notice.count() else ""
    found = first = listed_ids(page)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(found) < 2:
        page.reload()
        found = listed_ids(page)
    found_after_s = time.monotonic() - started
    assert (
        first_answer_s < 3,
        "not searchable yet" in behind or len(first) == 2,
        len(found),
        page.locator("#index-lag").count(),
        found_after_s < 120,
    ) == (True, True, 2, 0, True), (first_answer_s, behind, found_after_s)


def chat_record(seq: int, prompt: str, created_at: int, *, tenant: str) -> AuditRecord:
    """A stored chat completion of ``prompt``, as a gateway of another host wrote it."""
    request_id = str(uuid.uuid4())
    return AuditRecord(
        request_id=request_id,
        requested_streaming=False,
        mode="full",
        model="mock",
        usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        request={"model": "mock", "messages": [{"role": "user", "content": prompt}]},
        response={
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion",
            "created": created_at // 1000,
            "model": "mock",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "noted"},
                    "finish_reason": "stop",
                }
            ],
        },
        engine="mock",
        status="completed",
        complete=True,
        created_at=created_at,
        completed_at=created_at + 5,
        ttft_ms=1.0,
        duration_ms=5.0,
        tenant=tenant,
        writer="bulk:1:00000000",
        seq=seq,
    )


def test_drops_appear_after_a_sink_is_stopped(site: Site, page: Any) -> None:
    """With the NATS sink's server stopped, the pipeline page shows that sink's drops rising,
    with their reason, next to the store's sink (and fits 1280 px)."""
    sign_in(page, site, site.admin_key)
    page.get_by_role("link", name="Pipeline").click()
    before = int(page.locator('[data-dropped="nats"]').inner_text())
    site.nats.stop()
    client = site.client(site.admin_key)
    for i in range(CAPACITY + 60):
        client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": f"during outage {i}"}], store=True
        )
    deadline = time.monotonic() + 20
    after = before
    while time.monotonic() < deadline and after == before:
        page.reload()
        after = int(page.locator('[data-dropped="nats"]').inner_text())
    sinks = page.locator("table.health tbody td:first-child").all_inner_texts()
    reasons = page.locator("tr.bad", has_text="nats").locator("td").last.inner_text()
    fits = page.evaluate(FITS)
    assert (before, after > 0, sorted(sinks), "queue_full" in reasons, fits) == (
        0,
        True,
        sorted(["nats", site.store]),
        True,
        True,
    )
