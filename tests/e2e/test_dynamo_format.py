"""`auditgate serve` configured with Dynamo 1.4+'s names and DYN_AUDIT_FORMAT=dynamo-request-trace:
its file and its NATS messages are Dynamo's rows, which read back as what the SDK got."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import nats
import openai

from auditgate.dynamo import DynamoReader, InputFormat, detect
from tests.support.gateway import running_gateway


async def stream_messages(nats_url: str, stream: str) -> list[tuple[str, Any]]:
    """(Nats-Msg-Id, decoded row) of every message in ``stream``."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out = []
        for seq in range(1, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            out.append(((msg.headers or {}).get("Nats-Msg-Id", ""), json.loads(msg.data or b"")))
        return out
    finally:
        await nc.close()


def answers_of(rows: list[Any]) -> dict[str, str | None]:
    """Response id -> content of every record Dynamo's reader makes of ``rows``."""
    reader: DynamoReader[int] = DynamoReader()
    records = [c.record for i, row in enumerate(rows) for c in reader.feed(row, i)]
    records += [c.record for c in reader.drain()]
    return {
        r.response["id"]: r.response["choices"][0]["message"]["content"]
        for r in records
        if r.response is not msgspec.UNSET
    }


async def test_dynamo_names_and_rows_end_to_end(
    nats_url: str, nats_names: tuple[str, str], tmp_path: Path
) -> None:
    """Settings under Dynamo's names; the file and NATS hold one Dynamo row per line/message."""
    stream, subject = nats_names
    trace = tmp_path / "trace.jsonl"
    env = {
        "DYN_REQUEST_TRACE": "1",
        "DYN_AUDIT_FORMAT": "dynamo-request-trace",
        "DYN_REQUEST_TRACE_SINKS": "file,nats",
        "DYN_REQUEST_TRACE_FILE_FORMAT": "jsonl",
        "DYN_REQUEST_TRACE_FILE_PATH": str(trace),
        "DYN_REQUEST_TRACE_FILE_FLUSH_INTERVAL_MS": "50",
        "DYN_REQUEST_TRACE_NATS_SUBJECT": subject,
        "DYN_AUDIT_NATS_URL": nats_url,
        "DYN_AUDIT_NATS_STREAM": stream,
    }
    with running_gateway(env, log_dir=tmp_path) as gateway:
        with openai.OpenAI(base_url=gateway.base_url, api_key="unused") as client:
            messages = [{"role": "user", "content": "What is 10 + 10?"}]
            plain = client.chat.completions.create(model="mock", messages=messages, store=True)
            chunks = list(
                client.chat.completions.create(
                    model="mock", messages=messages, store=True, stream=True
                )
            )
        assert gateway.stop() == 0
    want = {
        plain.id: plain.choices[0].message.content,
        chunks[0].id: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
    }
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    published = await stream_messages(nats_url, stream)
    rows = [row for _, row in published]
    assert {detect(row) for row in lines + rows} == {InputFormat.DYNAMO_TRACE}
    assert (
        sorted(row["event_type"] for row in lines) == ["request_end"] * 2 + ["request_payload"] * 2
    )
    assert answers_of(lines) == want
    assert answers_of(rows) == want
    keys = sorted(key for key, _ in published)
    ids = sorted(i.removeprefix("chatcmpl-") for i in want)
    assert keys == sorted(f"{i}:{kind}" for i in ids for kind in ("request_end", "request_payload"))
