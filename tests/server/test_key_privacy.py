"""The gateway's own API keys never reach a sink, in messages or in captured headers."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from auditgate.auth.keys import add_key
from tests.server.test_privacy import _nats_bytes, _postgres_bytes
from tests.support.server import gateway

# Hand-made and written to an old-format (unsalted SHA-256) keys file: not shaped like the keys
# ``auditgate keys add`` makes, so only the exact match on the request's own key redacts it.
LEGACY_KEY = "legacy-team-blue-7Hq2"


def keys_file(path: str) -> tuple[str, str]:
    """A keys file with two new keys (tenants ``a`` and ``b``) and an old-format entry for
    LEGACY_KEY (tenant ``old``); returns the two new keys."""
    a = add_key(path, name="a", tenant="a", role="user")
    b = add_key(path, name="b", tenant="b", role="user")
    data = json.loads(Path(path).read_text())
    digest = hashlib.sha256(LEGACY_KEY.encode()).hexdigest()
    data["keys"].append({"name": "old", "tenant": "old", "role": "user", "sha256": digest})
    Path(path).write_text(json.dumps(data))
    return a, b


def chat(base_url: str, key: str, header: str, team: str, content: str, stream: bool) -> None:
    """One stored completion with the official SDK, as a client that leaks keys would send it."""
    api = openai.OpenAI(
        base_url=base_url,
        api_key=key,
        default_headers={"X-Auth": header, "X-Team": team},
        max_retries=0,
    )
    messages: Any = [{"role": "user", "content": content}]
    if stream:
        for _ in api.chat.completions.create(
            model="mock", messages=messages, store=True, stream=True
        ):
            pass
    else:
        api.chat.completions.create(model="mock", messages=messages, store=True)


async def test_gateway_keys_redacted_in_every_sink(
    workdir: str,
    pg_dsn: str,
    nats_url: str,
    nats_names: tuple[str, str],
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    """With redaction on (only ``email`` chosen), every configured key a client puts in a
    message or in a listed header whose name hides it (``x-auth``) is ``[REDACTED:api_key]``
    in stderr, jsonl, sqlite, postgres and nats, and counted."""
    stream, subject = nats_names
    path = f"{workdir}/keys.json"
    a, b = keys_file(path)
    env = {
        "AUDITGATE_API_KEYS_FILE": path,
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "stderr,jsonl,sqlite,postgres,nats",
        "DYN_AUDIT_REDACT": "email",
        "DYN_AUDIT_HTTP_HEADER_CAPTURE_LIST": "x-auth,x-team",
        "DYN_AUDIT_OUTPUT_PATH": f"{workdir}/audit.jsonl",
        "DYN_AUDIT_SQLITE_PATH": f"{workdir}/audit.db",
        "DYN_AUDIT_JSONL_FLUSH_INTERVAL_MS": "10",
        "DYN_AUDIT_POSTGRES_URL": pg_dsn,
        "DYN_AUDIT_NATS_URL": nats_url,
        "DYN_AUDIT_NATS_STREAM": stream,
        "DYN_AUDIT_NATS_SUBJECT": subject,
    }

    def run() -> tuple[list[Any], str]:
        with gateway(env, configured_sinks=True) as g:
            chat(g.base_url, a, b, "blue", f"mine {a}, theirs {b}, mail x@y.org", False)
            chat(g.base_url, LEGACY_KEY, LEGACY_KEY, "old", f"old key {LEGACY_KEY}.", True)
            records = g.records(2)
            auth = {"Authorization": f"Bearer {a}"}
            metrics = httpx.get(g.url + "/metrics", headers=auth, timeout=10).text
        return records, metrics

    records, metrics = await asyncio.to_thread(run)
    stores: dict[str, bytes] = {
        "stderr": capfdbinary.readouterr().err,
        "jsonl": Path(f"{workdir}/audit.jsonl").read_bytes(),
        "sqlite": b"".join(p.read_bytes() for p in Path(workdir).glob("audit.db*")),
        "postgres": await _postgres_bytes(pg_dsn),
        "nats": await _nats_bytes(nats_url, stream),
    }
    secrets = (a, b, LEGACY_KEY)
    leaks = {name: [s for s in secrets if s.encode() in data] for name, data in stores.items()}
    marked = {name: data.count(b"[REDACTED:api_key]") >= 5 for name, data in stores.items()}
    assert ({n: [] for n in stores}, {n: True for n in stores}) == (leaks, marked)
    seen = sorted(
        (r.tenant, r.request["messages"][0]["content"], r.http_request_headers) for r in records
    )
    assert seen == [
        (
            "a",
            "mine [REDACTED:api_key], theirs [REDACTED:api_key], mail [REDACTED:email]",
            {"x-auth": "[REDACTED:api_key]", "x-team": "blue"},
        ),
        ("old", "old key [REDACTED:api_key].", {"x-auth": "[REDACTED:api_key]", "x-team": "old"}),
    ]
    counted = sorted(line for line in metrics.splitlines() if "redactions_total{" in line)
    assert counted == [
        'auditgate_audit_redactions_total{kind="api_key"} 5.0',
        'auditgate_audit_redactions_total{kind="email"} 1.0',
    ]


def test_gateway_key_in_header_redacted_without_body_redaction(workdir: str) -> None:
    """With no redaction detector chosen, a listed header carrying a gateway key is still
    ``[REDACTED:api_key]`` (header capture never stores credentials), while message bodies
    are stored as sent."""
    path = f"{workdir}/keys.json"
    a, b = keys_file(path)
    env = {
        "AUDITGATE_API_KEYS_FILE": path,
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_HTTP_HEADER_CAPTURE_LIST": "x-auth,x-team",
    }
    with gateway(env) as g:
        chat(g.base_url, a, b, "blue", "nothing secret", False)
        chat(g.base_url, LEGACY_KEY, f"k={LEGACY_KEY}", "old", "still nothing", False)
        records = g.records(2)
        lines = b"\n".join(g.sink.lines)
    seen = sorted((r.tenant, r.http_request_headers) for r in records)
    assert (seen, b.encode() in lines, LEGACY_KEY.encode() in lines) == (
        [
            ("a", {"x-auth": "[REDACTED:api_key]", "x-team": "blue"}),
            ("old", {"x-auth": "k=[REDACTED:api_key]", "x-team": "old"}),
        ],
        False,
        False,
    )
