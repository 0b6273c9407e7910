"""``auditgate export`` over both stores: every format and filter, validated line by line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from auditgate.audit.record import AuditRecord, Envelope
from auditgate.cli.main import main
from auditgate.sinks.postgres import PostgresSink
from auditgate.sinks.sqlite import SqliteSink
from auditgate.store.queries import Filter
from auditgate.store.schema import record_dict_from_row
from auditgate.store.url import open_store
from tests.conftest import PG_ADMIN_DSN
from tests.store.records import make_record, minimal_record

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
TOOL_CALLS = [
    {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
]


def dataset() -> list[AuditRecord]:
    """Records covering every case the export distinguishes (see each comment)."""
    r0 = make_record(0)
    tool_request = dict(r0.request) | {"tools": TOOLS, "parallel_tool_calls": False}  # type: ignore[arg-type]
    tool_response = dict(r0.response)  # type: ignore[arg-type]
    tool_response["id"] = "chatcmpl-tool-call"
    tool_response["choices"] = [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "tool_calls": TOOL_CALLS},
            "finish_reason": "tool_calls",
        }
    ]
    return [
        r0,
        # another model, tenant and status, one day later
        make_record(
            1, model="other", tenant="t2", status="error", created_at=r0.created_at + 86_400_000
        ),
        # a tool call, with the request's tools
        make_record(2, request=tool_request, response=tool_response, metadata={"team": "b"}),
        # the same prompt as r0: --dedupe drops it
        make_record(3, request=r0.request),
        # usage_only: raw only
        minimal_record(4),
        # full but nothing produced: raw only
        make_record(5, response=msgspec.UNSET, status="error"),
        # deleted through the API: never exported
        make_record(6),
    ]


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, workdir: str) -> str:
    """The URL of an empty SQLite file path or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{workdir}/store.db"
    return str(request.getfixturevalue("pg_dsn"))


def sink_for(url: str) -> Any:
    """The audit sink that writes the store at ``url``."""
    if url.startswith("sqlite:///"):
        return SqliteSink(url[len("sqlite:///") :])
    return PostgresSink(url)


@pytest.fixture
async def filled(store_url: str) -> AsyncIterator[tuple[str, list[AuditRecord]]]:
    """A store URL holding :func:`dataset` (record 6 deleted), and the live records in order."""
    url = store_url
    sink = sink_for(url)
    records = dataset()
    await sink.open()
    await sink.write([Envelope(r) for r in records])
    await sink.close()
    store = open_store(url)
    await store.open()
    assert await store.delete(records[6].response["id"], None)  # type: ignore[index]
    await store.close()
    live = sorted(records[:6], key=lambda r: (r.created_at, r.request_id))
    yield url, live


async def export(url: str, workdir: str, *args: str) -> tuple[int, list[Any]]:
    """Run ``auditgate export`` (off the event loop, as the CLI runs its own); exit code, lines."""
    out = Path(workdir) / "out.jsonl"
    code = await asyncio.to_thread(main, ["export", "--store", url, "-o", str(out), *args])
    lines = out.read_text(encoding="utf-8").splitlines() if out.exists() else []
    return code, [json.loads(line) for line in lines]


def assistant(record: AuditRecord) -> dict[str, Any]:
    message = record.response["choices"][0]["message"]  # type: ignore[index]
    return {k: v for k, v in message.items() if v is not None}


def finetune_line(record: AuditRecord) -> dict[str, Any]:
    request: dict[str, Any] = record.request  # type: ignore[assignment]
    line: dict[str, Any] = {"messages": [*request["messages"], assistant(record)]}
    if "tools" in request:
        line |= {"tools": request["tools"], "parallel_tool_calls": request["parallel_tool_calls"]}
    return line


def stored(records: list[AuditRecord]) -> list[AuditRecord]:
    return [r for r in records if r.mode == "full" and r.response is not msgspec.UNSET]


def check_finetune_example(line: dict[str, Any]) -> list[str]:
    """Problems of one chat fine-tuning example (the checks of OpenAI's format cookbook)."""
    problems = []
    if set(line) - {"messages", "tools", "parallel_tool_calls"}:
        problems.append("unexpected keys")
    messages = line.get("messages")
    if not isinstance(messages, list) or not messages:
        return ["no messages"]
    for message in messages:
        if message.get("role") not in ("system", "user", "assistant", "tool"):
            problems.append(f"bad role {message.get('role')!r}")
        if "content" not in message and "tool_calls" not in message:
            problems.append("message without content or tool_calls")
        for call in message.get("tool_calls", []):
            json.loads(call["function"]["arguments"])
    if messages[-1]["role"] != "assistant":
        problems.append("does not end with an assistant message")
    for tool in line.get("tools", []):
        if tool.get("type") != "function" or "name" not in tool.get("function", {}):
            problems.append("bad tool")
    return problems


async def test_finetune_lines_are_valid_examples(
    filled: tuple[str, list[AuditRecord]], workdir: str
) -> None:
    """finetune writes request messages + assistant message, tools kept, each a valid example."""
    url, live = filled
    code, lines = await export(url, workdir, "--format", "finetune")
    expected = [finetune_line(r) for r in stored(live)]
    assert (0, expected, [[]] * len(expected)) == (
        code,
        lines,
        [check_finetune_example(x) for x in lines],
    )


async def test_eval_and_raw_lines(filled: tuple[str, list[AuditRecord]], workdir: str) -> None:
    """eval pairs input messages with the reference reply; raw is every live record as stored."""
    url, live = filled
    _, evals = await export(url, workdir, "--format", "eval")
    _, raws = await export(url, workdir, "--format", "raw")
    expected_eval = [
        {"input": r.request["messages"], "reference": assistant(r)}  # type: ignore[index]
        for r in stored(live)
    ]
    assert (expected_eval, [msgspec.to_builtins(r) for r in live]) == (evals, raws)


@pytest.mark.parametrize(
    ("args", "seqs"),
    [
        (["--model", "other"], [1]),
        (["--metadata", "team=b"], [2]),
        (["--metadata", "team=a", "--metadata", "run=3"], [3]),
        (["--tenant", "t2"], [1]),
        (["--status", "error"], [1]),
        (["--since", "1758740068125", "--until", "2025-09-24T18:54:28.127"], [2, 3]),
        (["--since", "2025-09-25T00:00:00+00:00"], [1]),
        (["--dedupe"], [0, 2, 1]),
    ],
)
async def test_filters(
    filled: tuple[str, list[AuditRecord]], workdir: str, args: list[str], seqs: list[int]
) -> None:
    """Each filter (and --dedupe) keeps exactly the matching completions, in order."""
    url, live = filled
    _, lines = await export(url, workdir, "--format", "finetune", *args)
    by_seq = {r.seq: r for r in live}
    assert [finetune_line(by_seq[s]) for s in seqs] == lines


async def test_export_is_deterministic_and_chunked(
    filled: tuple[str, list[AuditRecord]], workdir: str
) -> None:
    """Two exports are byte-identical, and a walk in chunks of 2 sees every row once, in order."""
    url, live = filled
    out = Path(workdir) / "out.jsonl"
    await export(url, workdir, "--format", "raw")
    first = out.read_bytes()
    await export(url, workdir, "--format", "raw")
    store = open_store(url)
    await store.open()
    walked = [
        record_dict_from_row(row) async for row in store.scan(Filter(stored_only=False), chunk=2)
    ]
    await store.close()
    assert (first, [msgspec.to_builtins(r) for r in live]) == (out.read_bytes(), walked)


@pytest.mark.parametrize(
    ("command", "where"),
    [("export", "database"), ("stats", "database"), ("export", "role"), ("stats", "role")],
)
async def test_a_postgres_store_that_refuses_is_one_line_and_exit_2(
    workdir: str, unique: str, capsys: pytest.CaptureFixture[str], command: str, where: str
) -> None:
    """A database that does not exist, or a role the server does not know, is exit code 2 and
    one line naming it (it was a traceback at the first query)."""
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    url = (
        f"{base}/ag_missing_{unique}"
        if where == "database"
        else base.replace("postgres@", f"ag_nobody_{unique}@", 1) + "/postgres"
    )
    args = [command, "--store", url] + (
        ["--format", "raw", "-o", f"{workdir}/o"] if command == "export" else []
    )
    code = await asyncio.to_thread(main, args)
    err = capsys.readouterr().err
    expected = (
        f'database "ag_missing_{unique}"' if where == "database" else f'role "ag_nobody_{unique}"'
    )
    assert (code, len(err.strip().splitlines()), expected in err) == (2, 1, True), err


async def test_missing_store_is_an_error(workdir: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A SQLite file that does not exist is exit code 2 with a message, and is not created."""
    url = f"sqlite:///{workdir}/nope.db"
    code, lines = await export(url, workdir, "--format", "raw")
    message = capsys.readouterr().err
    assert (
        code,
        lines,
        "does not exist" in message,
        Path(f"{workdir}/nope.db").exists(),
    ) == (2, [], True, False)
