"""One audit core for every transport (issue 16): the gateway's HTTP, its KServe gRPC frontend
and the ASGI middleware, all with redaction, integrity and durable mode on, write the same
record for the same exchange, each trail passes ``auditgate verify``, and each holds the end of
its response until the record is in the spool."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import tritonclient.grpc as tg

from auditgate.audit.record import AuditRecord, encode_record
from auditgate.audit.sink import MemorySink
from auditgate.config import Settings
from auditgate.engines.mock import MockEngine
from auditgate.middleware import AuditMiddleware
from auditgate.sinks import build_sinks
from tests.middleware.test_middleware import openai_app
from tests.support.gateway import clean_env, free_port
from tests.support.server import ServerThread, gateway

KEY = "one-core-key"
PROMPT = "mail alice@example.com the sum of 10 + 10"
BODY = {
    "model": "mock",
    "messages": [{"role": "user", "content": PROMPT}],
    "max_tokens": 5,
    "seed": 3,
    "store": True,
}
# What differs between two runs of one exchange, or names the transport that carried it.
VOLATILE = (
    "request_id",
    "created_at",
    "completed_at",
    "ttft_ms",
    "duration_ms",
    "writer",
    "seq",
    "engine_response_id",
    "transport",
    "endpoint",
    "integrity",
)


def env_for(tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    """Redaction, integrity and durable mode on; a jsonl trail and a spool of ``name``'s own."""
    return {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_REDACT": "email",
        "DYN_AUDIT_INTEGRITY": "1",
        "DYN_AUDIT_INTEGRITY_KEY": KEY,
        "DYN_AUDIT_DURABILITY": "durable",
        "DYN_AUDIT_SPOOL_DIR": str(tmp_path / name / "spool"),
        "DYN_AUDIT_SINKS": "jsonl",
        "DYN_AUDIT_OUTPUT_PATH": str(tmp_path / name / "audit.jsonl"),
        **extra,
    }


def comparable(record: AuditRecord) -> dict[str, Any]:
    """The record as JSON without what differs between runs or transports."""
    data: dict[str, Any] = json.loads(encode_record(record))
    for key in VOLATILE:
        data.pop(key, None)
    data["response"] = {k: v for k, v in data["response"].items() if k not in ("id", "created")}
    return data


def verify(trail: Path) -> dict[str, Any]:
    """``auditgate verify --json TRAIL`` with the checkpoint key; fails unless it exits 0."""
    run = subprocess.run(
        [sys.executable, "-m", "auditgate", "verify", "--json", str(trail)],
        env=clean_env({"DYN_AUDIT_INTEGRITY_KEY": KEY}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def through_http(tmp_path: Path) -> AuditRecord:
    with gateway(env_for(tmp_path, "http"), configured_sinks=True) as g:
        api = openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0)
        api.chat.completions.create(**BODY)
        [record] = g.records(1)
    return record


def through_grpc(tmp_path: Path) -> AuditRecord:
    env = env_for(tmp_path, "grpc", AUDITGATE_GRPC_PORT=str(free_port()))
    with gateway(env, configured_sinks=True) as g:
        port = g.app.gateway.settings.gateway.grpc_port
        client = tg.InferenceServerClient(url=f"127.0.0.1:{port}")
        try:
            text = tg.InferInput("text_input", [1], "BYTES")
            text.set_data_from_numpy(np.array([PROMPT.encode()], dtype=np.object_))
            tokens = tg.InferInput("max_tokens", [1], "INT32")
            tokens.set_data_from_numpy(np.array([5], dtype=np.int32))
            client.infer("mock", [text, tokens], parameters={"store": True, "seed": 3})
        finally:
            client.close()
        [record] = g.records(1)
    return record


@contextlib.contextmanager
def middleware(tmp_path: Path) -> Iterator[tuple[ServerThread, AuditMiddleware, MemorySink]]:
    settings = Settings.from_env(env_for(tmp_path, "asgi"))
    memory = MemorySink()
    sinks = [memory, *build_sinks(settings.audit)]
    app = AuditMiddleware(openai_app(MockEngine(("mock",))), settings, sinks=sinks, engine="mock")
    server = ServerThread(app)
    server.start()
    try:
        yield server, app, memory
    finally:
        server.stop()


def through_middleware(tmp_path: Path) -> AuditRecord:
    with middleware(tmp_path) as (server, app, memory):
        api = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        api.chat.completions.create(**BODY)
        assert server.call(app.flush)
        [record] = memory.records
    return record


def test_every_transport_writes_the_same_redacted_chained_durable_record(
    tmp_path: Path,
) -> None:
    """HTTP, gRPC and the middleware: equal records (but for ids, times, transport), the email
    redacted in each, and each trail verified intact and sealed by its final checkpoint."""
    records = {
        "http": through_http(tmp_path),
        "grpc": through_grpc(tmp_path),
        "asgi": through_middleware(tmp_path),
    }
    expected = comparable(records["http"])
    assert expected["request"]["messages"] == [
        {"role": "user", "content": "mail [REDACTED:email] the sum of 10 + 10"}
    ]
    assert {name: comparable(r) for name, r in records.items()} == dict.fromkeys(records, expected)
    assert {name: r.transport for name, r in records.items()} == {
        "http": "http",
        "grpc": "grpc",
        "asgi": "http",
    }
    for name in records:
        report = verify(tmp_path / name / "audit.jsonl")
        assert (report["intact"], report["invalid"]) == (True, [])
        assert [w["final"] for w in report["writers"]] == [True]
        text = (tmp_path / name / "audit.jsonl").read_text()
        assert "alice@example.com" not in text


async def test_the_middleware_refuses_to_start_on_a_spool_it_cannot_use(tmp_path: Path) -> None:
    """Durable mode promises that no answer ends unaudited: a spool directory that is a file
    fails the app's startup with one line naming the setting, not a degraded serve."""
    (tmp_path / "file").write_text("not a directory")
    env = env_for(tmp_path, "asgi", DYN_AUDIT_SPOOL_DIR=str(tmp_path / "file"))
    app = AuditMiddleware(openai_app(MockEngine(("mock",))), Settings.from_env(env))
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    failed = sent[0]
    assert failed["type"] == "lifespan.startup.failed"
    assert failed["message"].startswith("auditgate: DYN_AUDIT_SPOOL_DIR=")
    assert "\n" not in failed["message"]
