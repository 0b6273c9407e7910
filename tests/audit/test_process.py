"""The audit process (``DYN_AUDIT_PROCESS=1``) through the real HTTP server and the openai SDK:
the same records as in-process, its bounds, and SIGKILL of either process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.process.link import AuditProcess, AuditProcessError
from auditgate.audit.runtime import AuditRuntime
from auditgate.config import Settings
from auditgate.server.app import GatewayApp, create_app
from tests.support.gateway import start_gateway
from tests.support.server import ServerThread

KEY = "sk-test-not-a-secret"
MESSAGES = [{"role": "user", "content": "Mail me at jane.doe@example.com: what is 10 + 10?"}]
VARIABLE = ("request_id", "created_at", "completed_at", "ttft_ms", "duration_ms", "writer", "seq")


def audit_env(path: Path, process: bool, **extra: str) -> dict[str, str]:
    return {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "jsonl",
        "DYN_AUDIT_OUTPUT_PATH": str(path),
        "DYN_AUDIT_PROCESS": "1" if process else "0",
        **extra,
    }


class Served:
    """A gateway in this process's test thread, its sinks the configured ones."""

    def __init__(self, server: ServerThread, app: GatewayApp, path: Path) -> None:
        self.server = server
        self.app = app
        self.path = path
        self.client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)

    @property
    def process(self) -> AuditProcess:
        process = self.app.gateway.audit.process
        assert process is not None
        return process

    def flush(self) -> None:
        audit = self.app.gateway.audit
        assert self.server.call(lambda: audit.flush(10.0), 15)

    def lines(self) -> list[dict[str, Any]]:
        self.flush()
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def dropped(self, reason: str) -> float:
        value = self.app.gateway.registry.get_sample_value(
            "auditgate_audit_dropped_total", {"sink": "*", "reason": reason}
        )
        return value or 0.0


@contextlib.contextmanager
def served(env: dict[str, str], path: Path) -> Iterator[Served]:
    app = create_app(Settings.from_env(env))
    server = ServerThread(app)
    server.start()
    try:
        yield Served(server, app, path)
    finally:
        server.stop()


def exchanges(client: openai.OpenAI) -> None:
    """One of each audited endpoint, stored, as a user makes them."""
    client.chat.completions.create(model="mock", messages=MESSAGES, store=True, seed=7)
    stream = client.chat.completions.create(
        model="mock", messages=MESSAGES, store=True, seed=8, stream=True
    )
    assert [chunk for chunk in stream]
    client.chat.completions.create(model="mock", messages=MESSAGES, seed=9)  # usage_only
    first = client.responses.create(model="mock", input="Hello from jane.doe@example.com")
    client.responses.create(model="mock", input="And then?", previous_response_id=first.id)
    assert [event for event in client.responses.create(model="mock", input="Go", stream=True)]
    client.embeddings.create(model="mock", input=["one", "two"])
    client.completions.create(model="mock", prompt="Say this", max_tokens=5)
    # Stored, non-stream: the request body goes over as the bytes received, the answer as sent.
    client.completions.create(
        model="mock", prompt="Say th\u00efs \U0001f642", max_tokens=5, extra_body={"store": True}
    )
    client.embeddings.create(model="mock", input=["thr\u00e9e"], extra_body={"store": True})
    assert [c for c in client.completions.create(model="mock", prompt="x", stream=True)]


def comparable(record: dict[str, Any]) -> str:
    """A record as JSON without what differs between two runs of the same exchange: ids,
    times, writer, seq, the chain."""
    record = dict(record)
    request_id = record["request_id"]
    for key in (*VARIABLE, "integrity"):
        record.pop(key, None)
    text = json.dumps(record, sort_keys=False).replace(request_id, "<id>")
    text = re.sub(r'"(created|created_at|completed_at)": \d+', r'"\1": 0', text)
    # A Responses continuation names the previous response, whose id differs per run.
    return re.sub(r"resp_[0-9a-f-]{36}", "resp_<id>", text)


def test_records_are_the_same_built_in_the_audit_process(tmp_path: Path) -> None:
    """Chat (json, stream, usage only), Responses (a continuation, a stream), embeddings and
    legacy completions (each usage only and stored) yield, field for field, the records the
    in-process path builds, with redaction, header capture and the integrity chain on."""
    extra = {
        "DYN_AUDIT_REDACT": "email",
        "DYN_AUDIT_INTEGRITY": "1",
        "DYN_AUDIT_HTTP_HEADER_CAPTURE_LIST": "user-agent,authorization",
    }
    records = {}
    for process in (False, True):
        path = tmp_path / f"process-{process}.jsonl"
        env = audit_env(path, process, DYN_AUDIT_SINKS="jsonl,sqlite", **extra)
        env["DYN_AUDIT_SQLITE_PATH"] = str(tmp_path / f"process-{process}.db")
        with served(env, path) as gw:
            exchanges(gw.client)
            records[process] = [r for r in gw.lines() if r["mode"] != "checkpoint"]
    expected = [comparable(r) for r in records[False]]
    assert expected == [comparable(r) for r in records[True]]
    assert len(expected) == 11
    stored = [r for r in records[True] if r["mode"] == "full" and "request" in r]
    assert sorted(r["endpoint"] for r in stored if r["endpoint"] != "responses") == [
        "chat.completions",
        "chat.completions",
        "completions",
        "embeddings",
    ]
    assert "jane.doe@example.com" not in "".join(expected)
    chained = records[True]
    assert [r["seq"] for r in chained] == list(range(len(chained)))
    assert all("integrity" in r for r in chained)


def test_a_stored_response_is_continued_at_once(tmp_path: Path) -> None:
    """A response stored through the audit process can be read and continued before its
    record reaches the store (the capture builds the redacted record locally for that)."""
    path = tmp_path / "a.jsonl"
    env = audit_env(path, True, DYN_AUDIT_SINKS="jsonl,sqlite", DYN_AUDIT_REDACT="email")
    env["DYN_AUDIT_SQLITE_PATH"] = str(tmp_path / "a.db")
    with served(env, path) as gw:
        first = gw.client.responses.create(model="mock", input="I am jane.doe@example.com")
        held = gw.client.responses.retrieve(first.id)
        second = gw.client.responses.create(
            model="mock", input="More", previous_response_id=first.id
        )
        assert held.id == first.id
        assert second.id != first.id
        lines = gw.lines()
    assert [r["response"]["id"] for r in lines] == [first.id, second.id]
    assert "jane.doe@example.com" not in path.read_text()


def test_sigkill_of_the_audit_process_counts_its_records_and_restarts_it(tmp_path: Path) -> None:
    """Records the audit process had not stored when it was killed are counted as
    ``audit_process_lost``; a new process (a new writer, seq from 0) takes the next ones."""
    path = tmp_path / "a.jsonl"
    # The jsonl sink lingers a minute: what the killed process received is still in memory.
    env = audit_env(path, True, DYN_AUDIT_JSONL_FLUSH_INTERVAL_MS="60000")
    with served(env, path) as gw:
        for seed in range(12):
            gw.client.chat.completions.create(model="mock", messages=MESSAGES, seed=seed)
        first = gw.process
        writer, pid = first.writer, first.pid
        deadline = time.monotonic() + 10
        while first.received < 12 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert (first.received, first.acknowledged) == (12, 0)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while first.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (first.restarts, gw.dropped("audit_process_lost")) == (1, 12.0)
        for seed in range(3):
            gw.client.chat.completions.create(model="mock", messages=MESSAGES, seed=seed)
        lines = gw.lines()
        assert first.writer != writer
    assert [(r["writer"], r["seq"]) for r in lines] == [(first.writer, s) for s in range(3)]


def test_a_full_hand_over_queue_drops_counted(tmp_path: Path) -> None:
    """While the audit process reads nothing, at most ``DYN_AUDIT_CAPACITY`` records wait for
    it; the rest are dropped, counted (``audit_process_full``), and the others delivered."""
    path = tmp_path / "a.jsonl"
    with served(audit_env(path, True, DYN_AUDIT_CAPACITY="4"), path) as gw:
        pid = gw.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            for seed in range(10):
                gw.client.chat.completions.create(model="mock", messages=MESSAGES, seed=seed)
        finally:
            os.kill(pid, signal.SIGCONT)
        lines = gw.lines()
        full = gw.dropped("audit_process_full")
        written = gw.app.gateway.registry.get_sample_value(
            "auditgate_audit_written_total", {"sink": "jsonl"}
        )
    assert (len(lines), full, written) == (4, 6.0, 4.0)


def test_the_audit_process_delivers_everything_when_the_gateway_is_killed(
    tmp_path: Path,
) -> None:
    """SIGKILL of the gateway: the audit process writes every record it had received, then
    exits."""
    path = tmp_path / "a.jsonl"
    env = audit_env(path, True, DYN_AUDIT_JSONL_FLUSH_INTERVAL_MS="60000")
    gateway = start_gateway(env, log_dir=tmp_path)
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
        for seed in range(7):
            client.chat.completions.create(model="mock", messages=MESSAGES, seed=seed)
        children = Path(f"/proc/{gateway.process.pid}/task/{gateway.process.pid}/children")
        (helper,) = [int(pid) for pid in children.read_text().split()]
        # The audit process has them all once its records counter (mirrored into the
        # gateway's /metrics) says so; nothing is in a sink yet (it lingers a minute).
        deadline = time.monotonic() + 20
        while published(gateway.url) < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert published(gateway.url) == 7
        assert not path.exists() or path.read_text() == ""
        gateway.process.send_signal(signal.SIGKILL)
        gateway.process.wait(10)
        deadline = time.monotonic() + 20
        while Path(f"/proc/{helper}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not Path(f"/proc/{helper}").exists()
    finally:
        if gateway.process.poll() is None:
            gateway.process.kill()
    assert len(path.read_text().splitlines()) == 7


def published(url: str) -> float:
    """``auditgate_audit_records_total`` summed over modes, from a gateway's ``/metrics``."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("auditgate_audit_records_total{")
    )


def test_durable_mode_keeps_the_records_in_the_serving_process(tmp_path: Path) -> None:
    """Durable mode with ``DYN_AUDIT_PROCESS`` builds its records in-process (for now), and
    still answers only once its record is spooled."""
    path = tmp_path / "a.jsonl"
    env = audit_env(path, True, DYN_AUDIT_DURABILITY="durable")
    env["DYN_AUDIT_SPOOL_DIR"] = str(tmp_path / "spool")
    with served(env, path) as gw:
        assert gw.app.gateway.audit.process is None
        gw.client.chat.completions.create(model="mock", messages=MESSAGES, store=True)
        assert len(gw.lines()) == 1


async def test_an_audit_process_that_cannot_open_its_sinks_fails_the_start(
    tmp_path: Path,
) -> None:
    """Sinks the audit process cannot open fail the gateway's start, as in-process."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = Settings.from_env(audit_env(blocker / "sub" / "a.jsonl", True)).audit
    runtime = AuditRuntime(settings, AuditMetrics(), engine="mock")
    with pytest.raises(AuditProcessError, match="ConfigError: cannot create directory"):
        await runtime.start()
    assert runtime.process is not None
    assert runtime.process.pid is None
